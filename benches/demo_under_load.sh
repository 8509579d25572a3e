#!/usr/bin/env bash
# Runs README's first command, `perch-host demo` (release build), RUNS times (default 20)
# while the machine is loaded: two busy processes and a cargo build of perch (debug, into a
# scratch target directory, started again whenever it ends). Prints each run's result and
# canary-gate line, then how many passed; every run's output is kept in
# target/demo_under_load/run-N.log.
#
#   bash benches/demo_under_load.sh [RUNS]
#
# Run from anywhere; needs only the Rust toolchain. The scratch build takes a few GB under
# $TMPDIR while it runs and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}

cargo build --release --bin perch-host
bin=$PWD/target/release/perch-host

logs=$PWD/target/demo_under_load
rm -rf "$logs"
mkdir -p "$logs"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/perch-demo-load.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT

# Each load runs in its own process group (set -m), so cleanup ends it with its children.
set -m
for _ in 1 2; do
    (exec yes >/dev/null) &
    pids+=($!)
done
(
    while :; do
        CARGO_TARGET_DIR=$scratch/target cargo build --lib --quiet -j 2 >/dev/null 2>&1 || true
        CARGO_TARGET_DIR=$scratch/target cargo clean -p perch --quiet >/dev/null 2>&1 || true
    done
) &
pids+=($!)
set +m
sleep 5

passed=0
for i in $(seq 1 "$runs"); do
    log=$logs/run-$i.log
    started=$(date +%s%N)
    if "$bin" demo >"$log" 2>&1; then
        result=pass
        passed=$((passed + 1))
    else
        result=FAIL
    fi
    took_ds=$((($(date +%s%N) - started) / 100000000))
    gate=$(grep -m1 '] gate:' "$log" | cut -c1-160 || true)
    [ -n "$gate" ] || gate=$(grep -m1 'error' "$log" || echo "(no gate line)")
    printf 'run %2d: %s in %d.%d s, load %s: %s\n' "$i" "$result" $((took_ds / 10)) \
        $((took_ds % 10)) "$(cut -d' ' -f1 /proc/loadavg)" "$gate"
    if [ "$result" = FAIL ]; then
        grep -E '^ +[0-9.]+s ' "$log" | sed 's/^/    /' | cut -c1-200
    fi
done
echo "$passed/$runs demo runs passed under load (two busy processes and a cargo build)"
[ "$passed" -eq "$runs" ]
