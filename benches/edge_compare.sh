#!/usr/bin/env bash
# Batch-1, one-thread latency of perch native, perch on tract, onnxruntime and LiteRT on the
# edge-CNN corpus (tests/data/edge: keyword spotting, person detection, ResNet-8, autoencoder;
# float and int8), in one run, with the ratios. The machine is shared and noisy: compare the
# ratios, not the absolute figures.
#
#   bash benches/edge_compare.sh [--only MODEL,MODEL...] [--json FILE] [--min-iterations N] [--max-iterations N]
#
# Needs a Rust toolchain and python3 (3.10+). Makes its own Python environment with
# onnxruntime, ai-edge-litert, onnx and numpy (pinned below) in target/edge-bench-venv, or
# uses EDGE_BENCH_PYTHON if set.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${EDGE_BENCH_PYTHON:-}
if [ -z "$python" ]; then
  venv=target/edge-bench-venv
  if ! "$venv/bin/python" -c "import onnxruntime, onnx, numpy, ai_edge_litert" 2>/dev/null; then
    echo "making $venv (onnxruntime, ai-edge-litert, onnx, numpy)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q onnxruntime==1.32.0 ai-edge-litert==2.3.0 onnx==1.23.2 numpy==2.4.6
  fi
  python=$venv/bin/python
fi

nice cargo build --release --quiet --bin perch
exec "$python" benches/edge_compare.py --perch target/release/perch "$@"
