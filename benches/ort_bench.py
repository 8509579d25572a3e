"""Times onnxruntime (Python, one thread) on the same models and inputs as perch bench.

Prints one JSON object per model: median call latency in microseconds, and the median of an
Identity model's call in the same run (onnxruntime's empty-call overhead from Python).
Usage: python3 benches/ort_bench.py ITERATIONS BATCH MODEL.onnx INPUT.npy [MODEL INPUT ...]
"""
import json
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def session(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def median_us(fn, iterations):
    for _ in range(min(200, iterations)):
        fn()
    times = []
    for _ in range(iterations):
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    times.sort()
    return times[len(times) // 2] / 1e3


def main():
    iterations, batch = int(sys.argv[1]), int(sys.argv[2])
    pairs = list(zip(sys.argv[3::2], sys.argv[4::2]))
    for path, inp in pairs:
        sess = session(open(path, "rb").read())
        name = sess.get_inputs()[0].name
        x = np.load(inp).astype(np.float32)
        x = np.resize(x, (batch,) + x.shape[1:])
        width = x.shape[1]
        ident = helper.make_model(
            helper.make_graph(
                [helper.make_node("Identity", ["x"], ["y"])],
                "identity",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
            ),
            opset_imports=[helper.make_opsetid("", 13)],
        )
        ident.ir_version = 8
        isess = session(ident.SerializeToString())
        model_us = median_us(lambda: sess.run(None, {name: x}), iterations)
        ident_us = median_us(lambda: isess.run(None, {"x": x}), iterations)
        print(json.dumps({"model": path, "batch": batch, "onnxruntime_us_p50": model_us,
                          "identity_us_p50": ident_us, "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
