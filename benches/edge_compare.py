"""Batch-1, one-thread latency of perch (native engine and tract), onnxruntime and LiteRT on the
edge-CNN corpus (tests/data/edge), in one run, with the ratios. Run it through
benches/edge_compare.sh, which builds perch in release and makes the Python environment.

For every model of tests/data/edge/manifest.json (four classes; float, TFLite full-integer,
onnxruntime QDQ and QOperator, torch-style NCHW) it prints the median latency of:
  perch native   `perch bench MODEL.onnx --engine native --json` (n/a with perch's reason when
                 the native engine cannot run it)
  perch tract    `perch bench MODEL.onnx --engine tract --json`
  onnxruntime    Python API, CPU provider, intra_op_num_threads=1, inter_op_num_threads=1,
                 ORT_SEQUENTIAL, all graph optimizations; minus the median of an Identity
                 model's call on the same input (the Python call's own cost), measured in the
                 same run
  LiteRT         ai_edge_litert Interpreter(num_threads=1) on the model's .tflite (float for
                 `float`, the full-integer file for the int8 variants: it is the one int8
                 TFLite model of the class); set_tensor + invoke + get_tensor, minus the same
                 sequence on an operator-free .tflite with the same input (tests/data/edge/bench/)
and the ratios perch native / LiteRT, perch native / onnxruntime, perch int8 / perch f32 (the
same engine's float model of the class), and the arena size perch reports, if it does.

The machine is shared and noisy: compare the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "tests" / "data" / "edge"
TARGET_SECONDS = 1.0
INT8_VARIANTS = ("tflite_int8", "qdq_s8s8_pc", "qop_u8s8")


def median_us(fn, iterations, warmup):
    for _ in range(warmup):
        fn()
    times = np.empty(iterations, np.int64)
    for i in range(iterations):
        t = time.perf_counter_ns()
        fn()
        times[i] = time.perf_counter_ns() - t
    return float(np.median(times)) / 1e3


def iterations_for(fn, lo, hi):
    """Enough calls for about TARGET_SECONDS, within [lo, hi]."""
    t = time.perf_counter()
    for _ in range(5):
        fn()
    per = (time.perf_counter() - t) / 5
    return int(min(hi, max(lo, TARGET_SECONDS / max(per, 1e-7))))


def ort_session(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8}


def ort_identity(x):
    shape = [None] + list(x.shape[1:])
    t = ONNX_TYPES[x.dtype]
    m = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "identity",
            [helper.make_tensor_value_info("x", t, shape)],
            [helper.make_tensor_value_info("y", t, shape)],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    m.ir_version = 8
    return ort_session(m.SerializeToString())


def time_ort(onnx_path, x, lo, hi):
    sess = ort_session(onnx_path.read_bytes())
    name = sess.get_inputs()[0].name
    ident = ort_identity(x)
    call = lambda: sess.run(None, {name: x})  # noqa: E731
    icall = lambda: ident.run(None, {"x": x})  # noqa: E731
    n = iterations_for(call, lo, hi)
    model_us = median_us(call, n, min(200, n))
    ident_us = median_us(icall, max(n, 2000), 200)
    return model_us, ident_us


def litert_call(path, x):
    it = Interpreter(model_path=str(path), num_threads=1)
    inp = it.get_input_details()[0]
    if list(inp["shape"]) != list(x.shape):
        it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    i, o = inp["index"], it.get_output_details()[0]["index"]

    def call():
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o)

    return call


def identity_tflite(x):
    shape = "x".join(str(d) for d in x.shape[1:])
    return EDGE / "bench" / f"identity_{shape}_{x.dtype.name}.tflite"


def time_litert(tflite_path, x, lo, hi):
    call = litert_call(tflite_path, x)
    icall = litert_call(identity_tflite(x), x)
    n = iterations_for(call, lo, hi)
    model_us = median_us(call, n, min(200, n))
    ident_us = median_us(icall, max(n, 2000), 200)
    return model_us, ident_us


def perch(perch_bin, model, engine, input_npy, lo, hi):
    """(median µs, arena bytes or None, None) or (None, None, reason)."""
    base = [str(perch_bin), "bench", str(model), "--engine", engine, "--input", str(input_npy), "--batch", "1", "--json"]
    probe = subprocess.run(base + ["--iterations", "20", "--warmup", "5"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, None, reason_of(probe.stderr)
    est = json.loads(probe.stdout)["latency_us_p50"]
    n = int(min(hi, max(lo, TARGET_SECONDS * 1e6 / max(est, 0.1))))
    run = subprocess.run(base + ["--iterations", str(n), "--warmup", str(min(200, n))], capture_output=True, text=True)
    if run.returncode != 0:
        return None, None, reason_of(run.stderr)
    report = json.loads(run.stdout)
    arena = next((v for k, v in report.items() if "arena" in k and isinstance(v, (int, float))), None)
    if arena is None:
        info = subprocess.run([str(perch_bin), "info", str(model), "--engine", engine, "--json"], capture_output=True, text=True)
        if info.returncode == 0:
            arena = find_arena(json.loads(info.stdout))
    return report["latency_us_p50"], arena, None


def find_arena(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if "arena" in k and isinstance(x, (int, float)):
                return x
            found = find_arena(x)
            if found is not None:
                return found
    if isinstance(v, list):
        for x in v:
            found = find_arena(x)
            if found is not None:
                return found
    return None


def reason_of(stderr):
    lines = [l.strip() for l in stderr.strip().splitlines() if l.strip()]
    text = " ".join(lines)
    return (text[:300] + "…") if len(text) > 300 else (text or "failed without a message")


def fmt(v, digits=1):
    return "n/a" if v is None else f"{v:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--perch", required=True, help="the perch binary (release build)")
    ap.add_argument("--min-iterations", type=int, default=300)
    ap.add_argument("--max-iterations", type=int, default=20000)
    ap.add_argument("--only", default="", help="comma-separated model names (default: all of manifest.json)")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    args = ap.parse_args()
    lo, hi = args.min_iterations, args.max_iterations

    manifest = json.loads((EDGE / "manifest.json").read_text())
    models = manifest["models"]
    if args.only:
        keep = set(args.only.split(","))
        models = [m for m in models if m["name"] in keep]
    int8_tflite = {m["class"]: EDGE / m["tflite"] for m in manifest["models"] if m["variant"] == "tflite_int8" and m["tflite"]}

    rows, reasons = [], {}
    load_start = os.getloadavg()[0]
    for m in models:
        x_all = np.load(EDGE / m["input"]["npy"])
        x = np.ascontiguousarray(x_all[:1])
        onnx_path, input_npy = EDGE / m["onnx"], EDGE / m["input"]["npy"]
        row = {"name": m["name"], "class": m["class"], "variant": m["variant"], "macs": m["macs"]}
        for engine in ("native", "tract"):
            us, arena, why = perch(args.perch, onnx_path, engine, input_npy, lo, hi)
            row[f"perch_{engine}_us"] = us
            row[f"perch_{engine}_arena_bytes"] = arena
            if why:
                row[f"perch_{engine}_reason"] = why
                reasons.setdefault(why, []).append(f"{m['name']} ({engine})")
        try:
            gross, ident = time_ort(onnx_path, x, lo, hi)
            row.update(ort_us=max(gross - ident, 0.0), ort_gross_us=gross, ort_identity_us=ident)
        except Exception as e:  # a peer that cannot run a model is a result too
            row.update(ort_us=None, ort_reason=str(e)[:200])
        tfl = EDGE / m["tflite"] if m["tflite"] else (int8_tflite.get(m["class"]) if m["variant"] in INT8_VARIANTS else None)
        if m["variant"] == "nchw":
            tfl = EDGE / f"{m['class']}_float" / "model.tflite"
        if tfl is not None:
            xl = x
            if m["variant"] in ("qdq_s8s8_pc", "qop_u8s8", "nchw"):
                # LiteRT takes the class's own .tflite input (NHWC; int8 for the int8 file).
                peer = next(p for p in manifest["models"] if p["class"] == m["class"] and EDGE / (p["tflite"] or "-") == tfl)
                xl = np.ascontiguousarray(np.load(EDGE / peer["input"]["npy"])[:1])
            gross, ident = time_litert(tfl, xl, lo, hi)
            row.update(litert_us=max(gross - ident, 0.0), litert_gross_us=gross, litert_identity_us=ident, litert_file=str(tfl.relative_to(EDGE)))
        else:
            row["litert_us"] = None
        rows.append(row)
        print(f"  measured {m['name']}", file=sys.stderr, flush=True)

    float_of = {(r["class"]): r for r in rows if r["variant"] == "float"}
    head = (
        f"{'model':<28} {'MACs':>6} {'native':>8} {'tract':>8} {'ort':>8} {'LiteRT':>8} "
        f"{'nat/Lite':>8} {'nat/ort':>8} {'trc/Lite':>8} {'trc/ort':>8} {'i8/f32 n':>8} {'i8/f32 t':>8} {'arena B':>9}"
    )
    print("batch 1, one thread, median µs (onnxruntime and LiteRT net of their empty-call cost)")
    print(head)
    print("-" * len(head))
    for r in rows:
        f = float_of.get(r["class"])
        i8 = r["variant"] in INT8_VARIANTS
        r["native_over_litert"] = ratio(r["perch_native_us"], r["litert_us"])
        r["native_over_ort"] = ratio(r["perch_native_us"], r["ort_us"])
        r["tract_over_litert"] = ratio(r["perch_tract_us"], r["litert_us"])
        r["tract_over_ort"] = ratio(r["perch_tract_us"], r["ort_us"])
        r["int8_over_f32_native"] = ratio(r["perch_native_us"], f["perch_native_us"]) if i8 and f else None
        r["int8_over_f32_tract"] = ratio(r["perch_tract_us"], f["perch_tract_us"]) if i8 and f else None
        arena = r["perch_native_arena_bytes"] or r["perch_tract_arena_bytes"]
        print(
            f"{r['name']:<28} {r['macs'] / 1e6:>5.2f}M {fmt(r['perch_native_us']):>8} {fmt(r['perch_tract_us']):>8} "
            f"{fmt(r['ort_us']):>8} {fmt(r['litert_us']):>8} {fmt(r['native_over_litert'], 2):>8} {fmt(r['native_over_ort'], 2):>8} "
            f"{fmt(r['tract_over_litert'], 2):>8} {fmt(r['tract_over_ort'], 2):>8} {fmt(r['int8_over_f32_native'], 2):>8} "
            f"{fmt(r['int8_over_f32_tract'], 2):>8} {('n/a' if arena is None else str(int(arena))):>9}"
        )
    idents = [(r["ort_identity_us"], r.get("litert_identity_us")) for r in rows if r.get("ort_identity_us") is not None]
    if idents:
        o = [a for a, _ in idents]
        lt = [b for _, b in idents if b is not None]
        print(f"\nempty-call cost subtracted: onnxruntime Identity {min(o):.1f}-{max(o):.1f} µs; LiteRT operator-free model {min(lt):.1f}-{max(lt):.1f} µs")
    print("LiteRT column: the class's float .tflite for float and nchw rows, its full-integer .tflite for the int8 rows")
    print("i8/f32: the int8 model's latency over the class's float model's, on the same perch engine (target <= 0.7 native)")
    print("targets (issue 12): native <= 1.0x LiteRT and <= 1.0x onnxruntime on every row")
    if reasons:
        print("\nperch could not run (reason, as perch printed it):")
        for why, where in reasons.items():
            print(f"  {', '.join(where)}:\n    {why}")
    print(f"\nload average (1 min) at start and end: {load_start:.1f}, {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(above the core count, long calls are preempted and their medians inflate most)")
    print(f"versions: onnxruntime {ort.__version__}, ai-edge-litert {litert_version()}, numpy {np.__version__}; cpu: {cpu_name()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def litert_version():
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:
        return "?"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    main()
