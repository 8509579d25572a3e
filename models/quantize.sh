#!/usr/bin/env bash
# Remakes the int8 sample model: models/digits-mlp-trained/model-int8.perch, the float
# model.perch quantized statically (min-max) with the digits training split as calibration
# data, and expected-int8.json, what `perch run --format json` on this x86 machine printed
# for the test split. tests/it/cli.rs demands exactly these outputs (tolerance 0), on x86 and
# under qemu on aarch64 and armv7 (cross/test.sh).
#
#   bash models/quantize.sh
#
# PERCH names the device binary to use (default: a release build made here).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${PERCH_CORPUS:-tests/data/corpus}
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --features host --example quantize
if [[ -z ${PERCH:-} ]]; then
    cargo build --release --quiet --bin perch
fi
perch=${PERCH:-$target_dir/release/perch}
dir=models/digits-mlp-trained
"$target_dir/release/examples/quantize" "$dir/model.perch" "$dir/model-int8.perch" minmax \
    "$corpus/datasets/digits/digits_train.csv"
"$perch" run "$dir/model-int8.perch" --input "$dir/sample.csv" --format json > "$dir/expected-int8.json"
echo "quantize.sh: $dir/model-int8.perch: $(stat -c %s "$dir/model-int8.perch") bytes (float: $(stat -c %s "$dir/model.perch"))"
