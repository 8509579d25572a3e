#!/usr/bin/env bash
# Remakes the models perch-host trained itself (models/wine-forest, models/digits-mlp-trained):
# trains each on its corpus training split with a fixed seed, exports the native artifact
# and its ONNX form, and records what `perch run` on this x86 machine predicts for the
# test split (expected.json). tests/it/cli.rs checks the device binary predicts the same, on
# x86 and under qemu on ARM (cross/test.sh); tests/it/host_cli.rs checks that training again
# here gives the same predictions.
#
#   bash models/train.sh
#
# PERCH_HOST and PERCH name the binaries to use (default: release builds made here).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${PERCH_CORPUS:-tests/data/corpus}
if [[ -z ${PERCH_HOST:-} || -z ${PERCH:-} ]]; then
    cargo build --release --quiet --bin perch-host --bin perch
fi
host=${PERCH_HOST:-target/release/perch-host}
perch=${PERCH:-target/release/perch}
registry=$(mktemp -d)
trap 'rm -rf "$registry"' EXIT

# name, dataset, training flags (each model's README.md repeats them)
train() {
    local name=$1 set=$2
    shift 2
    local dir=models/$name
    mkdir -p "$dir"
    # The dataset and flags, one per line, for tests/it/host_cli.rs to train the same way.
    printf '%s\n' "$set" "$@" > "$dir/train.args"
    "$host" --registry "$registry/r.db" train "$corpus/datasets/$set/${set}_train.csv" \
        --target target --test "$corpus/datasets/$set/${set}_test.csv" --name "$name" --json "$@" \
        > "$dir/train-report.json"
    "$host" --registry "$registry/r.db" models export "$name" --format perch -o "$dir/model.perch"
    "$host" --registry "$registry/r.db" models export "$name" --format onnx -o "$dir/model.onnx"
    # The test split's features (every column but the last, the target).
    sed 's/,[^,]*$//' "$corpus/datasets/$set/${set}_test.csv" > "$dir/sample.csv"
    "$perch" run "$dir/model.perch" --input "$dir/sample.csv" --format json > "$dir/expected.json"
    echo "train.sh: $dir: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["metrics"].get("accuracy"), "test accuracy,", r["fit_seconds"], "s")' "$dir/train-report.json")"
}

train wine-forest wine --model forest --seed 1
train digits-mlp-trained digits --model mlp --scale standard --hidden 64 --seed 1
