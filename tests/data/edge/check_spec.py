"""How firmly the spec fixes the int8 outputs of the corpus' quantized models.

For each model named (default: every quantized model of manifest.json) prints, in quantization
steps of the output and as a count of differing elements, how far these are from the committed
onnx.reference result (output_<name>.spec.npy, or the onnxruntime output where the two agree):
  ort none / basic / all   onnxruntime with graph optimizations off, basic, all (the committed
                           output_<name>.npy is "all")
  ref64                    onnx.reference with Conv, Gemm, MatMul, pooling, Add and Mul
                           computed in float64 (their outputs rounded to float32 as the graph's
                           types require)

    /work/venvs/edge/bin/python tests/data/edge/check_spec.py [MODEL ...]
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops import _op_list

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_corpus  # noqa: E402  (the com.microsoft ops' reference, MS_OPS)


def float64_op(name):
    candidates = [getattr(_op_list, a) for a in dir(_op_list) if a == name or a.startswith(name + "_")]
    base = max((c for c in candidates if isinstance(c, type)), key=lambda c: int(c.__name__.split("_")[1]) if "_" in c.__name__ else 0)

    def _run(self, *args, **kwargs):
        args = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32 else a for a in args]
        out = base._run(self, *args, **kwargs)
        return tuple(o.astype(np.float32) if isinstance(o, np.ndarray) and o.dtype == np.float64 else o for o in out)

    return type(name, (base,), {"_run": _run, "op_domain": ""})


WIDE = [float64_op(n) for n in ["Conv", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "Add", "Mul"]]


def run_ort(path, x, level):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = level
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def main():
    manifest = json.loads((HERE / "manifest.json").read_text())
    names = sys.argv[1:] or [m["name"] for m in manifest["models"] if m["variant"] in ("tflite_int8", "qdq_s8s8_pc", "qop_u8s8")]
    levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    for name in names:
        meta = json.loads((HERE / name / "model.json").read_text())
        out = next(iter(meta["reference"]["outputs"].values()))
        spec = np.load(HERE / name / out.get("spec_npy", out["npy"]))
        scale = (out.get("quantization") or {}).get("scale") or 1.0
        x = np.load(HERE / name / "input.npy")

        def steps(a):
            d = np.abs(a.astype(np.float64) - spec.astype(np.float64)).max()
            return f"{d / (scale if a.dtype.kind == 'f' else 1):.0f} steps on {int((a != spec).sum())}"

        figures = [f"ort {k}: {steps(run_ort(HERE / name / 'model.onnx', x, lvl))}" for k, lvl in levels.items()]
        model = onnx.version_converter.convert_version(onnx.load(HERE / name / "model.onnx"), make_corpus.REFERENCE_OPSET)
        ref64 = ReferenceEvaluator(model, new_ops=make_corpus.MS_OPS + WIDE).run(None, {model.graph.input[0].name: x})[0]
        print(f"{name:28s} of {spec.size:6d}: " + "; ".join(figures + [f"ref64: {steps(ref64)}"]), flush=True)


if __name__ == "__main__":
    main()
