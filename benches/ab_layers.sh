#!/usr/bin/env bash
# Times two builds of the `kernels` criterion bench against each other on single layers,
# alternating them so that the shared machine's load falls on both alike; prints each
# layer's best f32 and int8 times per build and the new/old ratios.
#
#   bash benches/ab_layers.sh OLD_BENCH NEW_BENCH [ROUNDS] FILTER
#   e.g. cargo bench --bench kernels --no-run   # prints the bench binary's path
#        cp target/release/deps/kernels-HASH /tmp/kernels-old   # before the change
#        bash benches/ab_layers.sh /tmp/kernels-old target/release/deps/kernels-HASH 3 \
#            'layer/mobilenet/dw'
#
# FILTER is criterion's regular expression over bench names (benches/kernels.rs).
set -euo pipefail
old=$1 new=$2
shift 2
rounds=3
if [[ ${1:-} =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
filter=$1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for ((i = 0; i < rounds; i++)); do
    for side in old new; do
        bin=$old
        [[ $side == new ]] && bin=$new
        "$bin" --bench "$filter" --warm-up-time 0.3 --measurement-time 1 --noplot \
            >>"$out/$side.txt" 2>/dev/null
    done
done
python3 - "$out/old.txt" "$out/new.txt" <<'PY'
import re, sys
unit = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3}
def best(path):
    times, name = {}, None
    for line in open(path):
        s = line.strip()
        m = re.match(r"^(\S+/\S+)(?:\s+time:\s+\[(.*)\])?$", s) or re.match(r"^()time:\s+\[(.*)\]$", s)
        if not m:
            continue
        if m.group(1):
            name = m.group(1)
        if m.group(2) and name:
            parts = m.group(2).split()
            t = float(parts[2]) * unit[parts[3]]
            times[name] = min(t, times.get(name, float("inf")))
            name = None
    return times
old, new = best(sys.argv[1]), best(sys.argv[2])
for name in old:
    if name in new:
        print(f"{name:48s} old {old[name]:9.2f} µs  new {new[name]:9.2f} µs  new/old {new[name] / old[name]:.3f}")
PY
