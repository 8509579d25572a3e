#!/usr/bin/env bash
# One run, one table: batch latency of perch's native engine (f32, int8, 80 %-pruned), perch
# over tract, and onnxruntime (float and its own int8 models, plus an Identity model for its
# empty-call overhead) on the digits MLPs, with the ratios the quantization issue asks for.
#
#   bash benches/compare_optimized.sh [ITERATIONS] [BATCH]
#
# Makes the optimized versions itself with perch-host in a temporary registry:
# - digits-mlp-trained: perch-host's own standardized MLP (models/train.sh's call), then
#   `optimize --quantize int8` and `optimize --prune 0.8 --finetune-epochs 30`;
# - sk_mlp_digits: the corpus' scikit-learn MLP, `optimize MODEL.onnx --quantize int8`
#   (bring your own model), against onnxruntime's quantizations of the same network.
# The machine is shared and noisy: compare the ratios, not the microseconds.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-20000}
batch=${2:-1}
corpus=${PERCH_CORPUS:-tests/data/corpus}
data=$corpus/datasets/digits
input=$corpus/models/sk_mlp_digits/input.npy

python3 -c "import onnxruntime, onnx, numpy" 2>/dev/null || python3 -m pip install -q onnx onnxruntime numpy
cargo build --release --quiet --bin perch --bin perch-host
perch=target/release/perch
host=target/release/perch-host
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
reg=(--registry "$work/r.db")

echo "making the optimized versions (registry in $work)" >&2
$host "${reg[@]}" train "$data/digits_train.csv" --target target --model mlp --scale standard \
    --hidden 64 --seed 1 --test "$data/digits_test.csv" --name trained --json > "$work/f32.json"
$host "${reg[@]}" optimize trained@1 --quantize int8 --json > "$work/int8.json"
$host "${reg[@]}" optimize trained@1 --prune 0.8 --finetune-epochs 30 --json > "$work/pruned.json"
$host "${reg[@]}" optimize "$corpus/models/sk_mlp_digits/model.onnx" --name sk --quantize int8 \
    --calibrate "$data/digits_train.csv" --test "$data/digits_test.csv" --target target \
    --json > "$work/sk-int8.json"
for v in trained@1 trained@2 trained@3 sk@1 sk@2; do
    $host "${reg[@]}" models export "$v" -o "$work/$v.perch" 2>/dev/null
done
$host "${reg[@]}" models export trained@1 --format onnx -o "$work/trained-f32.onnx" 2>/dev/null
$host "${reg[@]}" models export trained@2 --format onnx -o "$work/trained-int8.onnx" 2>/dev/null

bench() { # MODEL [perch bench args]: p50 µs
    local m=$1
    shift
    $perch bench "$m" --input "$input" --iterations "$iterations" --batch "$batch" --json "$@" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_us_p50"])'
}
ort() { # MODEL...: "p50 identity_p50" per model
    python3 benches/ort_bench.py "$iterations" "$batch" $(for m in "$@"; do echo "$m" "$input"; done) |
        python3 -c 'import json,sys
for line in sys.stdin:
    r = json.loads(line); print(r["onnxruntime_us_p50"], r["identity_us_p50"])'
}

echo "timing: $iterations iterations, batch $batch" >&2
t_f32=$(bench "$work/trained@1.perch")
t_int8=$(bench "$work/trained@2.perch")
t_pruned=$(bench "$work/trained@3.perch")
t_tract=$(bench "$work/trained-f32.onnx" --engine tract)
t_tract_int8=$(bench "$work/trained-int8.onnx" --engine tract)
t_sk_f32=$(bench "$work/sk@1.perch")
t_sk_int8=$(bench "$work/sk@2.perch")
t_sk_tract=$(bench "$corpus/models/sk_mlp_digits/model.onnx" --engine tract)
mapfile -t o < <(ort "$work/trained-f32.onnx" "$work/trained-int8.onnx" \
    "$corpus/models/sk_mlp_digits/model.onnx" \
    "$corpus/models/sk_mlp_digits_qop_u8s8_pc/model.onnx" \
    "$corpus/models/sk_mlp_digits_qdq_s8s8_pc/model.onnx")
pruned_kernels=$($perch info "$work/trained@3.perch" | grep -i "note" || true)

python3 - "$work" "$batch" "$t_f32" "$t_int8" "$t_pruned" "$t_tract" "$t_tract_int8" \
    "$t_sk_f32" "$t_sk_int8" "$t_sk_tract" "${o[@]}" <<'PY'
import json, sys
work, batch = sys.argv[1], sys.argv[2]
f32, int8, pruned, tract, tract_int8, sk_f32, sk_int8, sk_tract = map(float, sys.argv[3:11])
ort = [tuple(map(float, s.split())) for s in sys.argv[11:16]]
acc = lambda f, key="metrics": json.load(open(f"{work}/{f}"))[key].get("accuracy")
a_f32, a_int8, a_pruned = acc("f32.json"), acc("int8.json"), acc("pruned.json")
a_sk = json.load(open(f"{work}/sk-int8.json"))
ident = ort[0][1]
rows = [
    ("trained", "perch native f32", f32, a_f32),
    ("trained", "perch native int8", int8, a_int8),
    ("trained", "perch native 80% pruned + 30 ep", pruned, a_pruned),
    ("trained", "perch over tract, f32 ONNX", tract, a_f32),
    ("trained", "perch over tract, int8 QDQ ONNX", tract_int8, a_int8),
    ("trained", "onnxruntime, f32 ONNX (perch export)", ort[0][0], a_f32),
    ("trained", "onnxruntime, int8 QDQ (perch export)", ort[1][0], a_int8),
    ("sk", "perch native f32", sk_f32, a_sk["parent"]["metrics"].get("accuracy")),
    ("sk", "perch native int8", sk_int8, a_sk["metrics"].get("accuracy")),
    ("sk", "perch over tract, f32", sk_tract, None),
    ("sk", "onnxruntime f32", ort[2][0], None),
    ("sk", "onnxruntime int8 QOperator u8s8 pc", ort[3][0], None),
    ("sk", "onnxruntime int8 QDQ s8s8 pc", ort[4][0], None),
]
print(f"batch {batch}; onnxruntime's empty call (Identity model, same run): {ident:.2f} us")
print(f"{'model':8s} {'engine / variant':38s} {'p50 us':>9s} {'accuracy':>9s}")
for m, v, t, a in rows:
    print(f"{m:8s} {v:38s} {t:9.2f} {'-' if a is None else format(a, '.4f'):>9s}")
def r(name, a, b): print(f"{name:58s} {a / b:6.2f}x")
print()
r("trained: perch int8 / perch f32", int8, f32)
r("trained: perch pruned / perch f32", pruned, f32)
r("trained: perch int8 / onnxruntime int8 (same QDQ model)", int8, ort[1][0])
r("trained: perch int8 / onnxruntime f32", int8, ort[0][0])
r("trained: perch int8 / (onnxruntime int8 - Identity)", int8, max(ort[1][0] - ident, 1e-9))
r("sk: perch int8 / onnxruntime int8 QOperator", sk_int8, ort[3][0])
r("sk: perch int8 / onnxruntime f32", sk_int8, ort[2][0])
r("sk: perch int8 / (onnxruntime QOperator - Identity)", sk_int8, max(ort[3][0] - ident, 1e-9))
met = sk_int8 <= 0.5 * ort[3][0] and int8 <= 0.5 * ort[1][0]
print(f"target perch int8 <= 0.5x onnxruntime's time (int8 vs int8): {'met' if met else 'NOT met'}")
PY
echo "pruned model's kernels: ${pruned_kernels:-none reported}"
