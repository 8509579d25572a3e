#!/usr/bin/env bash
# Batch-1 latency (median) and arena bytes of every edge-corpus model on perch's native
# engine, through the native-only device binary (--features device, no tract): each model
# is converted to .perch by perch-host first, as it would be for a device. The peers
# (onnxruntime, LiteRT) and perch on tract are in benches/edge_compare.sh.
#
#   bash benches/edge_native.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-2000}
nice cargo build --release --quiet --bin perch-host
CARGO_TARGET_DIR=target/native-bench nice cargo build --release --quiet \
    --no-default-features --features device --bin perch
host=target/release/perch-host
perch=target/native-bench/release/perch
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-28s %10s %12s\n' model p50_us arena_bytes
for dir in tests/data/edge/*/; do
    name=$(basename "$dir")
    [[ -f "$dir/model.onnx" ]] || continue
    "$host" convert "$dir/model.onnx" -o "$tmp/$name.perch" >/dev/null
    json=$("$perch" bench "$tmp/$name.perch" --input "$dir/input.npy" --batch 1 \
        --iterations "$iterations" --warmup 200 --json)
    arena=$("$perch" info "$tmp/$name.perch" --json | sed -n 's/.*"arena_bytes":\([0-9]*\).*/\1/p')
    p50=$(echo "$json" | sed -n 's/.*"latency_us_p50":\([0-9.]*\).*/\1/p')
    printf '%-28s %10.1f %12s\n' "$name" "$p50" "$arena"
done
