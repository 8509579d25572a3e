#!/usr/bin/env bash
# Runs perch's fuzz targets, each for a fixed time, and prints the executions each made.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]      # default 25 s, every target in fuzz/Cargo.toml
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`; this script installs it when it is
# missing). cargo-fuzz passes nightly-only flags (-Zsanitizer, sanitizer coverage) to rustc;
# the machine's stable toolchain takes them with RUSTC_BOOTSTRAP=1, as cross/build.sh does
# for -Zbuild-std, so no nightly toolchain is fetched. Seed corpora: the repository's ONNX
# models for `onnx`, its .perch artifacts for `artifact`; libFuzzer grows them in
# fuzz/corpus/TARGET (not committed). A crash leaves its input in fuzz/artifacts/TARGET and
# fails the script. Builds go to $CARGO_TARGET_DIR/fuzz (default target/fuzz).
# FUZZ_SANITIZER=none builds without AddressSanitizer (faster; default: address).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-25}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^perch-fuzz$')
fi
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")/fuzz
sanitizer=${FUZZ_SANITIZER:-address}

seed() {
    local target=$1 dir=fuzz/corpus/$1
    mkdir -p "$dir"
    case "$target" in
        onnx)
            for f in tests/data/corpus/models/*/model.onnx models/*/model.onnx; do
                [[ -f $f ]] && cp "$f" "$dir/seed-$(echo "$f" | tr / _)"
            done ;;
        artifact)
            for f in models/*/*.perch tests/fixtures/*.perch; do
                [[ -f $f ]] && cp "$f" "$dir/seed-$(echo "$f" | tr / _)"
            done ;;
    esac
    return 0
}

# One build for every target (cargo-fuzz builds all bins of the fuzz crate).
cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir" 2>&1 | tail -n 3
failed=()
summary=()
for t in "${targets[@]}"; do
    seed "$t"
    log=$(mktemp)
    echo "=== fuzz $t for ${seconds}s"
    if cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        tail -n 40 "$log"
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    summary+=("$(printf '%-12s %-7s %10s runs in %ss' "$t" "$status" "$runs" "$seconds")")
    rm -f "$log"
done
echo "=== fuzz summary"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "fuzz targets that failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
