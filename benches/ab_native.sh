#!/usr/bin/env bash
# Times two perch binaries against each other on edge corpus models, alternating them so
# that the shared machine's load falls on both alike; prints each pair's batch-1 figures and
# the median of the new/old ratios. AB_STAT=p10 compares 10th percentiles instead of medians
# (less moved by other load on a shared machine).
#
#   bash benches/ab_native.sh OLD_PERCH NEW_PERCH [PAIRS] MODEL_DIR...
#   e.g. bash benches/ab_native.sh /tmp/perch-base target/release/perch 5 \
#            tests/data/edge/kws_dscnn_float tests/data/edge/vww_mobilenet_float
#
# Each MODEL_DIR holds model.onnx and input.npy (tests/data/edge/*); the run is
# `perch bench MODEL.onnx --engine native --input input.npy --batch 1 --json`.
set -euo pipefail
old=$1 new=$2
shift 2
pairs=5
stat=latency_us_${AB_STAT:-p50}
if [[ ${1:-} =~ ^[0-9]+$ ]]; then pairs=$1; shift; fi
latency() {
    "$1" bench "$2/model.onnx" --engine native --input "$2/input.npy" --batch 1 \
        --iterations 2000 --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$stat'])"
}
for dir in "$@"; do
    ratios=()
    line="$(basename "$dir"):"
    for ((i = 0; i < pairs; i++)); do
        a=$(latency "$old" "$dir")
        b=$(latency "$new" "$dir")
        line+=$(printf ' %.1f/%.1f' "$a" "$b")
        ratios+=("$(python3 -c "print($b / $a)")")
    done
    med=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
    echo "$line  (old/new µs, ${stat#latency_us_})  median new/old $(printf '%.3f' "$med")"
done
