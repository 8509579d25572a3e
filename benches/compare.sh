#!/usr/bin/env bash
# Times perch's native engine, perch over tract, and onnxruntime (Python, one thread) on the
# corpus MLPs in one run and prints the ratios. The machine is shared and noisy: compare the
# ratios, not the absolute figures.
#
#   bash benches/compare.sh [ITERATIONS] [BATCH]
#
# Needs: a Rust toolchain, python3 with `pip install onnx onnxruntime numpy` (installed
# here if missing), and the corpus copy in tests/data/corpus (or PERCH_CORPUS).
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-20000}
batch=${2:-1}
corpus=${PERCH_CORPUS:-tests/data/corpus}

python3 -c "import onnxruntime, onnx, numpy" 2>/dev/null || python3 -m pip install -q onnx onnxruntime numpy
cargo build --release --quiet --bin perch
perch=target/release/perch

models=(sk_mlp_digits tf_mlp_digits)
printf '%-16s %6s %12s %12s %12s %12s %10s %10s\n' model batch native_us tract_us ort_us ort_ident_us native/tract native/ort-ident
for m in "${models[@]}"; do
  onnx="$corpus/models/$m/model.onnx"
  input="$corpus/models/$m/input.npy"
  native=$($perch bench "$onnx" --engine native --input "$input" --iterations "$iterations" --batch "$batch" --json)
  tract=$($perch bench "$onnx" --engine tract --input "$input" --iterations "$iterations" --batch "$batch" --json)
  ort=$(python3 benches/ort_bench.py "$iterations" "$batch" "$onnx" "$input")
  python3 - "$m" "$batch" "$native" "$tract" "$ort" <<'PY'
import json, sys
m, batch = sys.argv[1], sys.argv[2]
n, t, o = (json.loads(a) for a in sys.argv[3:6])
nu, tu = n["latency_us_p50"], t["latency_us_p50"]
ou, iu = o["onnxruntime_us_p50"], o["identity_us_p50"]
net = max(ou - iu, 1e-9)
print(f"{m:16s} {batch:>6s} {nu:12.2f} {tu:12.2f} {ou:12.2f} {iu:12.2f} {nu/tu:10.2f} {nu/net:10.2f}")
PY
done
echo "native/ort-ident: perch native latency over onnxruntime's latency minus its empty Identity call"
