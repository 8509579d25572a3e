"""Makes the edge-CNN corpus in this folder (tests/data/edge/) from PyPI packages.

Four model classes, the shapes of the MLPerf Tiny reference models:
  kws_dscnn     keyword spotting: depthwise-separable CNN on a 49x10x1 MFCC, 12 classes
  vww_mobilenet person detection: MobileNetV1 alpha=0.25 at 96x96x3, 2 classes
  ic_resnet8    image classification: ResNet-8 at 32x32x3, 10 classes
  ad_autoencoder anomaly detection: dense autoencoder 640-128x4-8-128x4-640

Each is a Keras model trained briefly on synthetic data (every seed fixed), then exported as
  <class>_float         tf2onnx from a tf.function with a dynamic batch (+ model.tflite, float)
  <class>_tflite_int8   TFLite converter, full-integer (int8 input/output), then tf2onnx
                        (+ model.tflite, the int8 TFLite file itself)
  <class>_qdq_s8s8_pc   onnxruntime quantize_static on <class>_float: QDQ, s8 activations,
                        s8 weights per channel
  <class>_qop_u8s8      onnxruntime quantize_static on <class>_float: QOperator, u8
                        activations, s8 weights (per tensor: the quantizer's default)
  <class>_nchw          the graph torch.onnx.export writes for the same network (NCHW input,
                        Conv with bias, BatchNormalization, Relu/Clip, Gemm, Flatten...),
                        written with onnx.helper from the Keras weights
and checked: every float export against Keras and the float .tflite, every quantized model
with onnxruntime against onnx.reference (the ONNX spec's own evaluator).

Run from the repository root, in a virtual environment outside the repository:
  python3 -m venv /work/venvs/edge
  /work/venvs/edge/bin/pip install -r tests/data/edge/requirements.txt
  nice /work/venvs/edge/bin/python tests/data/edge/make_corpus.py [--only kws_dscnn,...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx.version_converter  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
import tf2onnx  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.op_run import OpRun  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 20261206
VARIANTS = ["float", "tflite_int8", "qdq_s8s8_pc", "qop_u8s8", "nchw"]
CLASSES = ["kws_dscnn", "vww_mobilenet", "ic_resnet8", "ad_autoencoder", "kws_tinyconv"]
SCRIPT = "tests/data/edge/make_corpus.py"


def versions():
    import ai_edge_litert

    return {
        "python": sys.version.split()[0],
        "tensorflow-cpu": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "ai-edge-litert": getattr(ai_edge_litert, "__version__", "2.3.0"),
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------------------------------------
# Synthetic data (fixed seeds): realistic ranges, so that calibration and int8 mean something.


def kws_data(rng, n):
    """MFCC-like 49 frames x 10 coefficients: 12 classes, each a few time-localised patterns
    over the coefficients, shifted in time, plus noise; c0 carries a large negative energy
    offset as real MFCCs do."""
    prng = np.random.default_rng(SEED + 1)
    t = np.arange(49)[:, None]
    protos = []
    for _ in range(12):
        p = np.zeros((49, 10))
        for _ in range(3):
            t0, w = prng.uniform(12, 37), prng.uniform(3, 8)
            amp = prng.normal(0, 1, 10) * np.linspace(8.0, 2.0, 10)
            p += np.exp(-(((t - t0) / w) ** 2)) * amp
        protos.append(p)
    y = rng.integers(0, 12, n)
    shift = rng.integers(-6, 7, n)
    x = np.stack([np.roll(protos[c], s, axis=0) for c, s in zip(y, shift)])
    x = x * rng.uniform(0.6, 1.4, (n, 1, 1)) + rng.normal(0, 7.0, x.shape)
    x[:, :, 0] += -25 + rng.normal(0, 4, (n, 1))
    return x[..., None].astype(np.float32), y.astype(np.int64)


def spectrogram_data(rng, n):
    """micro_speech-like 49 frames x 40 log-mel channels, non-negative (0..~26, the range of
    TFLM micro_speech's features): 4 classes, each a few time-frequency blobs, shifted in
    time, plus background noise."""
    prng = np.random.default_rng(SEED + 5)
    t, f = np.arange(49)[:, None], np.arange(40)[None, :]
    protos = []
    for _ in range(4):
        p = np.zeros((49, 40))
        for _ in range(4):
            t0, f0 = prng.uniform(12, 37), prng.uniform(3, 37)
            p += prng.uniform(6, 14) * np.exp(-(((t - t0) / prng.uniform(2, 6)) ** 2) - ((f - f0) / prng.uniform(2, 8)) ** 2)
        protos.append(p)
    y = rng.integers(0, 4, n)
    shift = rng.integers(-6, 7, n)
    x = np.stack([np.roll(protos[c], s, axis=0) for c, s in zip(y, shift)])
    x = x * rng.uniform(0.6, 1.4, (n, 1, 1)) + np.abs(rng.normal(2, 3.0, x.shape))
    return np.clip(x, 0, 26)[..., None].astype(np.float32), y.astype(np.int64)


def vww_data(rng, n):
    """96x96 RGB in [0, 1]: a smooth coloured background with clutter; class 1 ("person")
    adds an upright body-and-head shape of random place, size and colour."""
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32) / 96.0
    x = np.empty((n, 96, 96, 3), np.float32)
    y = rng.integers(0, 2, n)
    for i in range(n):
        base = rng.uniform(0.2, 0.8, 3)
        grad = rng.normal(0, 0.2, (2, 3))
        low = np.kron(rng.normal(0, 0.08, (6, 6, 3)), np.ones((16, 16, 1)))
        img = base + yy[..., None] * grad[0] + xx[..., None] * grad[1] + low
        if rng.random() < 0.6:
            r0, c0 = rng.integers(0, 70, 2)
            h, w = rng.integers(10, 40, 2)
            img[r0 : r0 + h, c0 : c0 + w] = rng.uniform(0, 1, 3)
        if y[i] == 1:
            cy, cx = rng.uniform(35, 70), rng.uniform(20, 76)
            ry = rng.uniform(14, 28)
            rx = ry * rng.uniform(0.35, 0.5)
            colour = rng.uniform(0, 1, 3)
            body = ((yy * 96 - cy) / ry) ** 2 + ((xx * 96 - cx) / rx) ** 2 < 1
            head = ((yy * 96 - (cy - ry - rx * 0.6)) ** 2 + (xx * 96 - cx) ** 2) < (rx * 0.7) ** 2
            img[body | head] = colour
        img += rng.normal(0, 0.04, img.shape)
        x[i] = np.clip(img, 0, 1)
    return x, y.astype(np.int64)


def ic_data(rng, n):
    """CIFAR-like 32x32 RGB in [0, 1]: 10 classes, each a coarse colour layout plus an
    oriented stripe texture, shifted, rescaled in brightness, with noise."""
    prng = np.random.default_rng(SEED + 3)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    protos = []
    for _ in range(10):
        layout = np.kron(prng.uniform(0.1, 0.9, (4, 4, 3)), np.ones((8, 8, 1)))
        f = prng.uniform(0.2, 0.9, 2)
        stripes = 0.15 * np.sin(f[0] * yy + f[1] * xx)[..., None] * prng.normal(0, 1, 3)
        protos.append(layout + stripes)
    y = rng.integers(0, 10, n)
    x = np.empty((n, 32, 32, 3), np.float32)
    for i in range(n):
        s = rng.integers(-4, 5, 2)
        img = np.roll(protos[y[i]], tuple(s), axis=(0, 1)) * rng.uniform(0.6, 1.3)
        x[i] = np.clip(img + rng.normal(0, 0.25, img.shape), 0, 1)
    return x, y.astype(np.int64)


def ad_data(rng, n, anomalous=None):
    """640 = 5 frames x 128 log-mel bins (dB): a smooth machine spectrum with a few
    low-rank variations shared by the frames, plus noise. Anomalous rows (label 1) add a
    tone of +12..20 dB around a random bin."""
    prng = np.random.default_rng(SEED + 4)
    bins = np.arange(128)
    env = -40 + 25 * np.exp(-bins / 60.0) + np.convolve(prng.normal(0, 4, 140), np.ones(13) / 13, "valid")[:128]
    basis = np.stack([np.sin(np.pi * (k + 1) * bins / 128) for k in range(3)])
    if anomalous is None:
        anomalous = np.zeros(n, bool)
    x = np.empty((n, 5, 128), np.float32)
    for i in range(n):
        frame = env + rng.normal(0, 3, 3) @ basis
        s = frame[None, :] + rng.normal(0, 1.0, (5, 128))
        if anomalous[i]:
            b0 = rng.integers(5, 123)
            s += rng.uniform(12, 20) * np.exp(-(((bins - b0) / 2.0) ** 2))
        x[i] = s
    return x.reshape(n, 640).astype(np.float32), anomalous.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Keras models (MLPerf Tiny reference shapes).

L = keras.layers


def tinyconv_model():
    """TFLM micro_speech's tiny_conv: Conv 8 filters 10x8 stride 2, ReLU, Dropout, Flatten of
    the 25x20x8 map, Dense 4 softmax, on a 49x40x1 spectrogram."""
    inputs = keras.Input((49, 40, 1), name="input")
    x = L.Conv2D(8, (10, 8), strides=(2, 2), padding="same", activation="relu")(inputs)
    x = L.Dropout(0.5)(x)
    x = L.Flatten()(x)
    outputs = L.Dense(4, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="kws_tinyconv")


def kws_model():
    """MLPerf Tiny KWS DS-CNN (keras_model.py, model_name='ds_cnn')."""
    inputs = keras.Input((49, 10, 1), name="input")
    x = L.Conv2D(64, (10, 4), strides=(2, 2), padding="same")(inputs)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.Dropout(0.2)(x)
    for _ in range(4):
        x = L.DepthwiseConv2D((3, 3), padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
        x = L.Conv2D(64, (1, 1), padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
    x = L.Dropout(0.4)(x)
    x = L.AveragePooling2D(pool_size=(24, 5))(x)
    x = L.Flatten()(x)
    outputs = L.Dense(12, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="kws_dscnn")


def vww_model():
    """keras.applications.MobileNet(alpha=0.25) at 96x96x3 with 2 classes: what a Keras user
    builds for person detection (ReLU6, conv without bias + BatchNormalization,
    ZeroPadding2D before each stride-2 depthwise conv, 1x1-conv classifier)."""
    return keras.applications.MobileNet(
        input_shape=(96, 96, 3), alpha=0.25, include_top=True, weights=None, classes=2, name="vww_mobilenet"
    )


def ic_model():
    """MLPerf Tiny image classification ResNet-8 (resnet_v1_eembc)."""

    def conv(n, k, s):
        return L.Conv2D(n, k, strides=s, padding="same", kernel_initializer="he_normal")

    inputs = keras.Input((32, 32, 3), name="input")
    x = conv(16, 3, 1)(inputs)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    for filters, stride in [(16, 1), (32, 2), (64, 2)]:
        y = conv(filters, 3, stride)(x)
        y = L.BatchNormalization()(y)
        y = L.Activation("relu")(y)
        y = conv(filters, 3, 1)(y)
        y = L.BatchNormalization()(y)
        if stride != 1:
            x = conv(filters, 1, stride)(x)
        x = L.add([x, y])
        x = L.Activation("relu")(x)
    x = L.AveragePooling2D(pool_size=8)(x)
    x = L.Flatten()(x)
    outputs = L.Dense(10, activation="softmax", kernel_initializer="he_normal")(x)
    return keras.Model(inputs, outputs, name="ic_resnet8")


def ad_model():
    """MLPerf Tiny anomaly detection (ToyADMOS) dense autoencoder."""
    inputs = keras.Input((640,), name="input")
    h = inputs
    for units in [128, 128, 128, 128, 8, 128, 128, 128, 128]:
        h = L.Dense(units)(h)
        h = L.BatchNormalization()(h)
        h = L.Activation("relu")(h)
    outputs = L.Dense(640)(h)
    return keras.Model(inputs, outputs, name="ad_autoencoder")


def macs_of(model):
    total = 0
    for layer in model.layers:
        if isinstance(layer, L.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw
        elif isinstance(layer, L.Conv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, L.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


CLASS_CONFIG = {
    "kws_tinyconv": dict(
        what="keyword spotting, small: TFLM micro_speech's tiny_conv (Conv 10x8/2 x8 with ReLU, "
        "Flatten of the 25x20x8 map, Dense 4 softmax) on a 49x40x1 spectrogram: Keras Flatten of a "
        "spatial map, which tf2onnx exports with a dynamic batch as Shape -> Gather -> Slice -> Concat -> Reshape",
        build=tinyconv_model,
        data=spectrogram_data,
        n_train=2000,
        n_calib=100,
        n_test=200,
        epochs=4,
        batch=32,
        label_noise=0.2,
        loss="sparse_categorical_crossentropy",
        output="probs",
        task="classification",
    ),
    "kws_dscnn": dict(
        what="keyword spotting: MLPerf Tiny DS-CNN (Conv 10x4/2 64, 4 x [depthwise 3x3, BN, ReLU, "
        "1x1 conv 64, BN, ReLU], AveragePooling 24x5, Flatten, Dense 12 softmax) on a 49x10x1 MFCC",
        build=kws_model,
        data=kws_data,
        n_train=3000,
        n_calib=100,
        n_test=200,
        epochs=6,
        batch=32,
        loss="sparse_categorical_crossentropy",
        output="probs",
        task="classification",
    ),
    "vww_mobilenet": dict(
        what="person detection: keras.applications.MobileNet(alpha=0.25, input_shape=(96, 96, 3), "
        "classes=2, weights=None): MobileNetV1 0.25 with ReLU6, 2 classes",
        build=vww_model,
        data=vww_data,
        n_train=1600,
        n_calib=16,
        n_test=32,
        eight_bit_rows=True,
        epochs=4,
        label_noise=0.2,
        bn_recalibrate=True,
        batch=32,
        loss="sparse_categorical_crossentropy",
        output="probs",
        task="classification",
    ),
    "ic_resnet8": dict(
        what="image classification: MLPerf Tiny ResNet-8 (resnet_v1_eembc: 3 residual stacks of "
        "16/32/64 filters, 1x1 stride-2 shortcuts, AveragePooling 8, Flatten, Dense 10 softmax) at 32x32x3",
        build=ic_model,
        data=ic_data,
        n_train=3000,
        n_calib=64,
        n_test=100,
        epochs=3,
        label_noise=0.2,
        batch=32,
        loss="sparse_categorical_crossentropy",
        output="probs",
        task="classification",
    ),
    "ad_autoencoder": dict(
        what="anomaly detection: MLPerf Tiny ToyADMOS dense autoencoder 640-128-128-128-128-8-128-"
        "128-128-128-640 (Dense, BatchNormalization, ReLU; linear output)",
        build=ad_model,
        data=ad_data,
        n_train=4000,
        n_calib=100,
        n_test=100,
        epochs=20,
        batch=64,
        loss="mse",
        output="reconstruction",
        task="reconstruction",
    ),
}


def make_data(cls):
    cfg = CLASS_CONFIG[cls]
    gen = cfg["data"]
    rng = np.random.default_rng(SEED + 100 + CLASSES.index(cls))
    if cls == "ad_autoencoder":
        x_train, y_train = gen(rng, cfg["n_train"])
        x_calib, _ = gen(rng, cfg["n_calib"])
        anomalous = np.arange(cfg["n_test"]) % 2 == 1
        x_test, y_test = gen(rng, cfg["n_test"], anomalous)
        return x_train, x_train, x_calib, x_test, y_test
    x_train, y_train = gen(rng, cfg["n_train"])
    x_calib, _ = gen(rng, cfg["n_calib"])
    x_test, y_test = gen(rng, cfg["n_test"])
    if cfg.get("eight_bit_rows"):
        # Camera images are 8-bit: the committed rows are k / 255, as a real pipeline feeds
        # them (and they compress 2.5x better in git).
        x_calib, x_test = (np.round(a * 255) / np.float32(255) for a in (x_calib, x_test))
        x_calib, x_test = x_calib.astype(np.float32), x_test.astype(np.float32)
    return x_train, y_train, x_calib, x_test, y_test


def noisy_labels(cls, y):
    """A share of the training labels replaced by random classes, so that the model learns
    probabilities short of 1 (else softmax outputs saturate and say little about int8 error)."""
    share = CLASS_CONFIG[cls].get("label_noise", 0.0)
    if not share:
        return y
    rng = np.random.default_rng(SEED + 200)
    n_classes = int(y.max()) + 1
    flip = rng.random(len(y)) < share
    y = y.copy()
    y[flip] = rng.integers(0, n_classes, int(flip.sum()))
    return y


def recalibrate_bn(model, x_train, rows=256):
    """Sets every BatchNormalization layer's moving statistics to those of one batch of
    training rows (one forward pass in training mode with momentum 0)."""
    bns = [l for l in model.layers if isinstance(l, L.BatchNormalization)]
    saved = [l.momentum for l in bns]
    for l in bns:
        l.momentum = 0.0
    model(x_train[:rows], training=True)
    for l, mom in zip(bns, saved):
        l.momentum = mom
    return (
        f"after fit, every BatchNormalization's moving mean and variance set from the first {rows} "
        "training rows (one forward pass in training mode, momentum 0): the few hundred steps at "
        "Keras' default momentum 0.99 had left them so far from the data's that the inference-mode "
        "output was the same for every row"
    )


def train(cls, model, x_train, y_train):
    cfg = CLASS_CONFIG[cls]
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=cfg["loss"],
        metrics=["accuracy"] if cfg["task"] == "classification" else [],
    )
    t0 = time.time()
    hist = model.fit(
        x_train, noisy_labels(cls, y_train), epochs=cfg["epochs"], batch_size=cfg["batch"], shuffle=True, verbose=0
    )
    info = {
        "optimizer": "Adam(1e-3)",
        "loss": cfg["loss"],
        "epochs": cfg["epochs"],
        "batch_size": cfg["batch"],
        "train_rows": int(len(x_train)),
        "label_noise": CLASS_CONFIG[cls].get("label_noise", 0.0),
        "seed": SEED,
        "final_train_loss": float(hist.history["loss"][-1]),
        "seconds": round(time.time() - t0, 1),
        "params": int(model.count_params()),
    }
    if "accuracy" in hist.history:
        info["final_train_accuracy"] = float(hist.history["accuracy"][-1])
    return info


# ---------------------------------------------------------------------------------------------
# Exports.


def serving_function(model, cls):
    cfg = CLASS_CONFIG[cls]
    spec = tf.TensorSpec((None,) + tuple(model.input.shape[1:]), tf.float32, name="input")

    @tf.function(input_signature=[spec])
    def serve(x):
        return {cfg["output"]: model(x, training=False)}

    return serve, spec


def tflite_converter(model):
    """The TFLite converter as a Keras user calls it. (Converting the tf.function's concrete
    function, or a SavedModel of a tf.Module holding it, leaves the Keras 3 variables as
    VAR_HANDLE/READ_VARIABLE ops that never get a value: the model outputs NaN.)"""
    return tf.lite.TFLiteConverter.from_keras_model(model)


TFLITE_CALL = "c = tf.lite.TFLiteConverter.from_keras_model(model)"


def export_float(model, cls, tflite_path):
    serve, spec = serving_function(model, cls)
    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=[spec])
    call = (
        "tf2onnx.convert.from_function(serve, input_signature=[tf.TensorSpec((None,) + "
        f"{tuple(model.input.shape[1:])}, tf.float32, name='input')])  # default opset; "
        f"serve = tf.function(lambda x: {{'{CLASS_CONFIG[cls]['output']}': model(x, training=False)}})"
    )
    tflite_path.write_bytes(tflite_converter(model).convert())
    tflite_call = TFLITE_CALL + "; c.convert()"
    return onnx_model, call, tflite_call


def export_tflite_int8(model, cls, x_calib, tflite_path):
    conv = tflite_converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x_calib[i : i + 1]] for i in range(len(x_calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    tflite_path.write_bytes(conv.convert())
    tflite_call = (
        TFLITE_CALL + "; "
        "c.optimizations = [tf.lite.Optimize.DEFAULT]; c.representative_dataset = <the calibration rows, "
        f"one at a time ({len(x_calib)})>; c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]; "
        "c.inference_input_type = tf.int8; c.inference_output_type = tf.int8; c.convert()"
    )
    onnx_model, _ = tf2onnx.convert.from_tflite(str(tflite_path))
    call = "tf2onnx.convert.from_tflite('model.tflite')  # default opset"
    return onnx_model, tflite_call, call


class RowsReader(CalibrationDataReader):
    def __init__(self, name, x):
        self.rows = iter([{name: x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.rows, None)


def export_ort(float_path, x_calib, fmt):
    tmp = Path(tempfile.mkdtemp())
    pre, out = tmp / "pre.onnx", tmp / "q.onnx"
    quant_pre_process(str(float_path), str(pre))
    name = onnx.load(str(pre)).graph.input[0].name
    if fmt == "qdq_s8s8_pc":
        kw = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        text = "quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8"
    else:
        kw = dict(quant_format=QuantFormat.QOperator, per_channel=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        text = "quant_format=QuantFormat.QOperator, per_channel=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8"
    quantize_static(str(pre), str(out), RowsReader(name, x_calib), calibrate_method=CalibrationMethod.MinMax, **kw)
    model = onnx.load(str(out))
    shutil.rmtree(tmp)
    calls = {
        "preprocess": "onnxruntime.quantization.shape_inference.quant_pre_process(float_model, pre)",
        "quantize_call": f"quantize_static(pre, out, <calibration rows, one at a time ({len(x_calib)})>, {text}, calibrate_method=CalibrationMethod.MinMax)",
    }
    return model, calls


# ---------------------------------------------------------------------------------------------
# NCHW graphs of the form torch.onnx.export writes, from the Keras weights.


class TorchStyleGraph:
    """Builds the ONNX graph a PyTorch model with the same layers exports to (opset 17):
    NCHW input, Conv (+bias where the layer has one), BatchNormalization kept as its own node,
    Relu / Clip(0, 6), Pad for asymmetric padding, AveragePool / GlobalAveragePool, Flatten,
    Gemm(transB=1), Add, Softmax."""

    def __init__(self):
        self.nodes, self.inits, self.counter = [], [], Counter()

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, scope, **attrs):
        self.counter[op] += 1
        out = f"/{scope}/{op}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/{scope}/{op}", **attrs))
        return out


def same_pads(in_size, k, s, d=1):
    out = -(-in_size // s)
    eff = (k - 1) * d + 1
    total = max((out - 1) * s + eff - in_size, 0)
    return total // 2, total - total // 2


def nchw_graph(model, cls, out_name):
    g = TorchStyleGraph()
    values = {}  # keras tensor id -> (onnx name, NHWC shape without batch)
    flattened_from = {}  # keras tensor id of a Flatten output -> the (H, W, C) map it flattened
    inp = model.inputs[0]
    shape = tuple(inp.shape[1:])
    if len(shape) == 3:
        onnx_in = [None, shape[2], shape[0], shape[1]]
    else:
        onnx_in = [None] + list(shape)
    values[id(inp)] = ("input", shape)
    idx = 0
    for layer in model.layers:
        if isinstance(layer, L.InputLayer):
            continue
        idx += 1
        scope = f"{layer.name}"
        ins = layer.input if isinstance(layer.input, list) else [layer.input]
        srcs = [values[id(t)] for t in ins]
        x, shp = srcs[0]
        out_shape = tuple(layer.output.shape[1:])
        w = layer.get_weights()
        if isinstance(layer, (L.Dropout,)):
            y = x
        elif isinstance(layer, L.ZeroPadding2D):
            (t, b), (l, r) = layer.padding
            pads = g.const(f"{scope}.pads", np.array([0, 0, t, l, 0, 0, b, r], np.int64))
            y = g.node("Pad", [x, pads], scope, mode="constant")
        elif isinstance(layer, (L.Conv2D, L.DepthwiseConv2D)):
            depthwise = isinstance(layer, L.DepthwiseConv2D)
            kh, kw = layer.kernel_size
            sh, sw = layer.strides
            dh, dw = layer.dilation_rate
            kernel = w[0]
            if depthwise:
                c = kernel.shape[2]
                weight = kernel.transpose(2, 3, 0, 1).reshape(c * kernel.shape[3], 1, kh, kw)
                group = c
            else:
                weight = kernel.transpose(3, 2, 0, 1)
                group = 1
            inputs = [x, g.const(f"{scope}.weight", weight.astype(np.float32))]
            if layer.use_bias:
                inputs.append(g.const(f"{scope}.bias", w[1].astype(np.float32)))
            pads = [0, 0, 0, 0]
            if layer.padding == "same":
                pt, pb = same_pads(shp[0], kh, sh, dh)
                pl, pr = same_pads(shp[1], kw, sw, dw)
                if pt == pb and pl == pr:
                    pads = [pt, pl, pb, pr]
                else:
                    p = g.const(f"{scope}.pad", np.array([0, 0, pt, pl, 0, 0, pb, pr], np.int64))
                    inputs[0] = g.node("Pad", [x, p], scope + "/pad", mode="constant")
            y = g.node(
                "Conv", inputs, scope, dilations=[dh, dw], group=group, kernel_shape=[kh, kw], pads=pads, strides=[sh, sw]
            )
            y = activation(g, y, layer.activation, scope)
        elif isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = w
            y = g.node(
                "BatchNormalization",
                [
                    x,
                    g.const(f"{scope}.weight", gamma),
                    g.const(f"{scope}.bias", beta),
                    g.const(f"{scope}.running_mean", mean),
                    g.const(f"{scope}.running_var", var),
                ],
                scope,
                epsilon=float(layer.epsilon),
                momentum=0.9,
            )
        elif isinstance(layer, L.Activation):
            y = activation(g, x, layer.activation, scope)
        elif isinstance(layer, L.ReLU):
            if layer.max_value is None and float(layer.negative_slope) == 0 and float(layer.threshold) == 0:
                y = g.node("Relu", [x], scope)
            elif float(layer.max_value) == 6.0 and float(layer.negative_slope) == 0:
                y = g.node("Clip", [x, g.const(f"{scope}.min", np.array(0, np.float32)), g.const(f"{scope}.max", np.array(6, np.float32))], scope)
            else:
                raise ValueError(f"unsupported ReLU config in {layer.name}")
        elif isinstance(layer, L.AveragePooling2D):
            ph, pw = layer.pool_size
            if layer.padding != "valid":
                raise ValueError("only valid average pooling")
            if (ph, pw) == tuple(shp[:2]):
                y = g.node("GlobalAveragePool", [x], scope)
            else:
                y = g.node("AveragePool", [x], scope, kernel_shape=[ph, pw], strides=list(layer.strides), pads=[0, 0, 0, 0], ceil_mode=0, count_include_pad=0)
        elif isinstance(layer, L.GlobalAveragePooling2D):
            y = g.node("GlobalAveragePool", [x], scope)
            if not layer.keepdims:
                y = g.node("Flatten", [y], scope, axis=1)
        elif isinstance(layer, (L.Flatten, L.Reshape)):
            if len(shp) == 3 and not (shp[0] == 1 and shp[1] == 1):
                if not isinstance(layer, L.Flatten):
                    raise ValueError(f"{layer.name}: reshape of a {shp} feature map")
                # torch flattens (C, H, W); Keras flattened (H, W, C): the next Linear's
                # weight columns are permuted to match, as a PyTorch port of the model would be.
                flattened_from[id(layer.output)] = shp
            y = g.node("Flatten", [x], scope, axis=1)
        elif isinstance(layer, L.Dense):
            kernel = w[0]
            if id(layer.input) in flattened_from:
                h, wd, c = flattened_from[id(layer.input)]
                kernel = kernel.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)
            y = g.node("Gemm", [x, g.const(f"{scope}.weight", kernel.T.copy()), g.const(f"{scope}.bias", w[1])], scope, alpha=1.0, beta=1.0, transB=1)
            y = activation(g, y, layer.activation, scope)
        elif isinstance(layer, L.Add):
            y = g.node("Add", [s[0] for s in srcs], scope)
        else:
            raise ValueError(f"no torch-style mapping for {type(layer).__name__} {layer.name}")
        values[id(layer.output)] = (y, out_shape)
    final, final_shape = values[id(model.outputs[0])]
    g.nodes[-1].output[0] = out_name if g.nodes[-1].output[0] == final else g.nodes[-1].output[0]
    if g.nodes[-1].output[0] != out_name:
        g.nodes.append(helper.make_node("Identity", [final], [out_name], name="/output/Identity"))
    out_dims = [None] + list(final_shape)
    graph = helper.make_graph(
        g.nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size"] + onnx_in[1:])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch_size"] + out_dims[1:])],
        g.inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="perch tests/data/edge/make_corpus.py", producer_version="torch.onnx.export form")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def activation(g, x, act, scope):
    name = getattr(act, "__name__", str(act))
    if name == "linear":
        return x
    if name == "relu":
        return g.node("Relu", [x], scope + "/act")
    if name == "relu6":
        return g.node("Clip", [x, g.const(f"{scope}.min", np.array(0, np.float32)), g.const(f"{scope}.max", np.array(6, np.float32))], scope + "/act")
    if name == "softmax":
        return g.node("Softmax", [x], scope + "/act", axis=1)
    raise ValueError(f"activation {name} in {scope}")


# ---------------------------------------------------------------------------------------------
# Running and checking.


def ort_session(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def dynamic_batch(model):
    d = model.graph.input[0].type.tensor_type.shape.dim[0]
    return not d.HasField("dim_value")


def run_ort(model, x):
    """onnxruntime's outputs on all rows: one call with the whole batch when the batch axis
    is dynamic, else one call per row. Returns (outputs by name, how)."""
    sess = ort_session(model.SerializeToString())
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    if dynamic_batch(model):
        full = sess.run(None, {name: x})
        rows = [sess.run(None, {name: x[i : i + 1]}) for i in range(len(x))]
        b1 = [np.concatenate([r[k] for r in rows]) for k in range(len(names))]
        diff = {n: max_abs(a, b) for n, a, b in zip(names, full, b1)}
        return dict(zip(names, full)), {"how": "one call with all rows (dynamic batch)", "batch1_vs_full_batch_max_abs_diff": diff}
    rows = [sess.run(None, {name: x[i : i + 1]}) for i in range(len(x))]
    return {n: np.concatenate([r[k] for r in rows]) for k, n in enumerate(names)}, {"how": "one call per row (fixed batch 1)"}


def max_abs(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _dq(x, scale, zp):
    return (x.astype(np.float32) - np.asarray(zp).astype(np.float32)) * np.asarray(scale, np.float32)


def _q(y, scale, zp):
    info = np.iinfo(np.asarray(zp).dtype)
    r = np.rint(y / np.asarray(scale, np.float32)) + np.asarray(zp).astype(np.float32)
    return np.clip(r, info.min, info.max).astype(np.asarray(zp).dtype)


class QLinearAveragePool(OpRun):
    """com.microsoft QLinearAveragePool as onnxruntime's ContribOperators.md defines it:
    dequantize X, AveragePool, quantize (round half to even, saturate)."""

    op_domain = "com.microsoft"

    def _run(self, x, xs, xz, ys, yz, auto_pad=None, ceil_mode=None, channels_last=None, count_include_pad=None, kernel_shape=None, pads=None, strides=None):
        f = _dq(x, xs, xz)
        if channels_last:
            f = np.moveaxis(f, -1, 1)
        y = _avgpool(f, auto_pad, ceil_mode, count_include_pad, kernel_shape, pads, strides)
        if channels_last:
            y = np.moveaxis(y, 1, -1)
        return (_q(y, ys, yz),)


def _avgpool(f, auto_pad, ceil_mode, count_include_pad, kernel_shape, pads, strides):
    node = helper.make_node("AveragePool", ["x"], ["y"], auto_pad=auto_pad or "NOTSET", ceil_mode=ceil_mode or 0, count_include_pad=count_include_pad or 0, kernel_shape=list(kernel_shape), pads=list(pads) if pads else [0] * (2 * len(kernel_shape)), strides=list(strides) if strides else [1] * len(kernel_shape))
    return ReferenceEvaluator(node).run(None, {"x": f})[0]


class QLinearGlobalAveragePool(OpRun):
    """com.microsoft QLinearGlobalAveragePool: dequantize, GlobalAveragePool, quantize."""

    op_domain = "com.microsoft"

    def _run(self, x, xs, xz, ys, yz, channels_last=None):
        f = _dq(x, xs, xz)
        axes = tuple(range(1, f.ndim - 1)) if channels_last else tuple(range(2, f.ndim))
        return (_q(f.mean(axis=axes, keepdims=True), ys, yz),)


class QLinearAdd(OpRun):
    """com.microsoft QLinearAdd: dequantize both inputs, add, quantize."""

    op_domain = "com.microsoft"

    def _run(self, a, as_, az, b, bs, bz, cs, cz):
        return (_q(_dq(a, as_, az) + _dq(b, bs, bz), cs, cz),)


class QLinearMul(OpRun):
    """com.microsoft QLinearMul: dequantize both inputs, multiply, quantize."""

    op_domain = "com.microsoft"

    def _run(self, a, as_, az, b, bs, bz, cs, cz):
        return (_q(_dq(a, as_, az) * _dq(b, bs, bz), cs, cz),)


class QLinearSoftmax(OpRun):
    """com.microsoft QLinearSoftmax: dequantize, Softmax over `axis`, quantize."""

    op_domain = "com.microsoft"

    def _run(self, x, xs, xz, ys, yz, axis=None, opset=None):
        f = _dq(x, xs, xz)
        ax = -1 if axis is None else axis
        e = np.exp(f - f.max(axis=ax, keepdims=True))
        return (_q(e / e.sum(axis=ax, keepdims=True), ys, yz),)


class QLinearConcat(OpRun):
    """com.microsoft QLinearConcat: Y_scale, Y_zp, then (X, scale, zp) triples."""

    op_domain = "com.microsoft"

    def _run(self, ys, yz, *xs, axis=None):
        parts = [_dq(xs[i], xs[i + 1], xs[i + 2]) for i in range(0, len(xs), 3)]
        return (_q(np.concatenate(parts, axis=axis), ys, yz),)


class QGemm(OpRun):
    """com.microsoft QGemm: Y = alpha * A' B' + C over the dequantized A and B (C int32 with
    scale a_scale * b_scale and zero point 0); quantized when y_scale is given, else float."""

    op_domain = "com.microsoft"

    def _run(self, a, as_, az, b, bs, bz, c=None, ys=None, yz=None, alpha=None, transA=None, transB=None):
        fa, fb = _dq(a, as_, az), _dq(b, bs, bz) if np.size(bs) == 1 else None
        if transA:
            fa = fa.T
        if fb is None:  # per-column scale of B (per output)
            bq = b.T if transB else b
            fb = (bq.astype(np.float32) - np.asarray(bz).astype(np.float32)) * np.asarray(bs, np.float32)
        elif transB:
            fb = fb.T
        y = (1.0 if alpha is None else alpha) * (fa.astype(np.float64) @ fb.astype(np.float64))
        if c is not None:
            y = y + c.astype(np.float64) * (np.asarray(as_, np.float64) * np.asarray(bs, np.float64))
        y = y.astype(np.float32)
        return (_q(y, ys, yz),) if ys is not None else (y,)


MS_OPS = [QGemm, QLinearAveragePool, QLinearGlobalAveragePool, QLinearAdd, QLinearMul, QLinearSoftmax, QLinearConcat]

REFERENCE_OPSET = 21
REFERENCE_NOTE = (
    "onnx.reference.ReferenceEvaluator on onnx.version_converter.convert_version(model, 21), "
    "onnxruntime's com.microsoft QLinear* ops (QOperator models) as its ContribOperators.md "
    "defines them (dequantize, the float op, quantize with round half to even and saturation: "
    "make_corpus.py's MS_OPS); "
    "onnx.reference implements QuantizeLinear/DequantizeLinear only from opset 19 on; from 13 "
    "to 21 their int8/uint8 semantics did not change (19 and 21 add float8 and block types)"
)


def run_reference(model, x):
    main_opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if main_opset < REFERENCE_OPSET:
        model = onnx.version_converter.convert_version(model, REFERENCE_OPSET)
    ref = ReferenceEvaluator(model, new_ops=MS_OPS)
    name = model.graph.input[0].name
    names = [o.name for o in model.graph.output]
    if dynamic_batch(model):
        outs = ref.run(None, {name: x})
        return dict(zip(names, outs))
    rows = [ref.run(None, {name: x[i : i + 1]}) for i in range(len(x))]
    return {n: np.concatenate([r[k] for r in rows]) for k, n in enumerate(names)}


def run_litert(path, x):
    it = Interpreter(model_path=str(path), num_threads=1)
    inp = it.get_input_details()[0]
    if list(inp["shape"]) != [1] + list(x.shape[1:]):
        it.resize_tensor_input(inp["index"], [1] + list(x.shape[1:]))
    it.allocate_tensors()
    out = it.get_output_details()[0]
    rows = []
    for i in range(len(x)):
        it.set_tensor(inp["index"], x[i : i + 1])
        it.invoke()
        rows.append(it.get_tensor(out["index"]).copy())
    return np.concatenate(rows), inp, out


def graph_info(model):
    def vi(v):
        dims = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None) for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": str(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))}

    ops = Counter((n.domain + "." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in model.graph.node)
    return {
        "ir_version": model.ir_version,
        "opset_import": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [vi(v) for v in model.graph.input],
        "outputs": [vi(v) for v in model.graph.output],
        "op_types": dict(sorted(ops.items())),
        "n_nodes": len(model.graph.node),
    }


def output_quant(model, out_name):
    """Scale and zero point of the int8/uint8 tensor an output is made from, if any."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    vals = {**inits, **consts}
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(out_name)
    hops = []
    while node is not None and node.op_type in ("Identity", "Reshape", "Flatten", "Squeeze", "Transpose"):
        hops.append(node.op_type)
        node = producer.get(node.input[0])
    if node is None:
        return None
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        s, z = vals.get(node.input[1]), vals.get(node.input[2]) if len(node.input) > 2 else None
        if s is None:
            return None
        return {
            "scale": float(np.asarray(s).reshape(-1)[0]),
            "zero_point": int(np.asarray(z).reshape(-1)[0]) if z is not None else 0,
            "from": f"{node.op_type} {node.name}" + (f" (then {', '.join(hops)})" if hops else ""),
        }
    if node.op_type.startswith("QLinear") or node.domain == "com.microsoft":
        # QOperator ops: inputs (..., y_scale, y_zero_point) are the last two for the common ops.
        for si, zi in [(-2, -1)]:
            s, z = vals.get(node.input[si]), vals.get(node.input[zi])
            if s is not None and z is not None:
                return {"scale": float(np.asarray(s).reshape(-1)[0]), "zero_point": int(np.asarray(z).reshape(-1)[0]), "from": f"{node.op_type} {node.name}"}
    return None


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_npy(path, a):
    np.save(path, np.ascontiguousarray(a))


def rel(p):
    return str(Path(p).relative_to(HERE))


def tflite_io(path):
    it = Interpreter(model_path=str(path))
    def d(t):
        q = t.get("quantization_parameters", {})
        out = {"name": t["name"], "shape": [int(v) for v in t["shape"]], "shape_signature": [int(v) for v in t["shape_signature"]], "dtype": np.dtype(t["dtype"]).name}
        if q and len(q.get("scales", [])):
            out["scale"] = float(q["scales"][0])
            out["zero_point"] = int(q["zero_points"][0])
        return out
    ops = Counter(op["op_name"] for op in it._get_ops_details())
    return {"inputs": [d(t) for t in it.get_input_details()], "outputs": [d(t) for t in it.get_output_details()], "op_types": dict(sorted(ops.items())), "bytes": Path(path).stat().st_size, "sha256": sha256(path)}


# ---------------------------------------------------------------------------------------------


def make_class(cls, vers):
    cfg = CLASS_CONFIG[cls]
    print(f"== {cls}", flush=True)
    keras.utils.set_random_seed(SEED)
    x_train, y_train, x_calib, x_test, y_test = make_data(cls)
    model = cfg["build"]()
    cache = Path(os.environ["EDGE_CORPUS_CACHE"]) if os.environ.get("EDGE_CORPUS_CACHE") else None
    if cache and (cache / f"{cls}.weights.h5").exists():
        # Development only: reuse the weights a previous run trained.
        model.load_weights(cache / f"{cls}.weights.h5")
        training = json.loads((cache / f"{cls}.training.json").read_text())
    else:
        training = train(cls, model, x_train, y_train)
        if cache:
            cache.mkdir(parents=True, exist_ok=True)
            model.save_weights(cache / f"{cls}.weights.h5")
            (cache / f"{cls}.training.json").write_text(json.dumps(training))
    if cfg.get("bn_recalibrate"):
        training["bn_recalibration"] = recalibrate_bn(model, x_train)
    keras_out = model.predict(x_test, batch_size=len(x_test), verbose=0).astype(np.float32)
    macs = macs_of(model)
    out_name = cfg["output"]
    print(f"   trained in {training['seconds']} s, loss {training['final_train_loss']:.4f}, {macs} MACs", flush=True)

    entries = []
    common = {
        "class": cls,
        "what": cfg["what"],
        "task": cfg["task"],
        "macs": macs,
        "source": {"keras_model": f"{SCRIPT}: {cfg['build'].__name__}()", "training": training, "data": f"{SCRIPT}: {cfg['data'].__name__} (synthetic, seed {SEED})"},
        "versions": vers,
    }
    if cfg["task"] == "classification":
        common["keras_test_accuracy"] = float(np.mean(keras_out.argmax(1) == y_test))
    else:
        err = np.mean((keras_out - x_test) ** 2, axis=1)
        common["keras_anomaly_auc"] = auc(err, y_test)

    dirs = {v: HERE / f"{cls}_{v}" for v in VARIANTS}
    for d in dirs.values():
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
    calib_path = HERE / "calibration" / f"{cls}.npy"
    calib_path.parent.mkdir(exist_ok=True)
    save_npy(calib_path, x_calib)

    # (a) float: tf2onnx, and the float .tflite
    d = dirs["float"]
    float_model, call, tflite_call = export_float(model, cls, d / "model.tflite")
    onnx.save(float_model, d / "model.onnx")
    ort_out, how = run_ort(float_model, x_test)
    lite_out, _, _ = run_litert(d / "model.tflite", x_test)
    checks = {
        "max_abs_diff_vs_keras": max_abs(ort_out[out_name], keras_out),
        "max_abs_diff_vs_float_tflite_litert": max_abs(ort_out[out_name], lite_out),
        "max_abs_diff_keras_vs_float_tflite": max_abs(keras_out, lite_out),
    }
    entries.append(write_model(d, cls, "float", float_model, common, x_test, y_test, ort_out, how, None, checks,
                               {"exported_with": f"tf2onnx {tf2onnx.__version__}", "export_call": call, "tflite_file": "model.tflite (float32, LiteRT runs it in the bench)", "tflite_call": tflite_call, "tflite": tflite_io(d / "model.tflite")}))

    # (b) TFLite full-integer, then tf2onnx
    d = dirs["tflite_int8"]
    q_model, tflite_call, call = export_tflite_int8(model, cls, x_calib, d / "model.tflite")
    onnx.save(q_model, d / "model.onnx")
    tio = tflite_io(d / "model.tflite")
    s_in, z_in = tio["inputs"][0]["scale"], tio["inputs"][0]["zero_point"]
    x_q = np.clip(np.round(x_test / s_in) + z_in, -128, 127).astype(np.int8)
    ort_out, how = run_ort(q_model, x_q)
    lite_q, _, lite_od = run_litert(d / "model.tflite", x_q)
    o_name = q_model.graph.output[0].name
    save_npy(d / f"output_{o_name.replace('/', '_').replace(':', '_')}.litert.npy", lite_q)
    ref_out = run_reference(q_model, x_q)
    s_out, z_out = tio["outputs"][0]["scale"], tio["outputs"][0]["zero_point"]
    deq = (lambda a: (a.astype(np.float32) - z_out) * s_out)
    checks = {
        "input_quantization": {"scale": s_in, "zero_point": z_in, "how": "input.npy = clip(round(x / scale) + zero_point, -128, 127) of the float rows"},
        "litert_output": f"output_{o_name.replace('/', '_').replace(':', '_')}.litert.npy: LiteRT {versions()['ai-edge-litert']} running model.tflite on the same int8 rows, one at a time (TFLite's integer fixed-point requantization)",
        "max_abs_diff_ort_vs_litert_codes": max_abs(ort_out[o_name], lite_q),
        "max_abs_diff_onnx_reference_vs_litert_codes": max_abs(ref_out[o_name], lite_q),
        "rows_ort_equal_litert": float(np.mean(np.all(ort_out[o_name].reshape(len(x_q), -1) == lite_q.reshape(len(x_q), -1), axis=1))),
        "max_abs_diff_dequantized_vs_keras": max_abs(deq(ort_out[o_name]), keras_out),
    }
    if cfg["task"] == "classification":
        checks["top1_agreement_litert_vs_keras"] = float(np.mean(lite_q.argmax(1) == keras_out.argmax(1)))
    entries.append(write_model(d, cls, "tflite_int8", q_model, common, x_q, y_test, ort_out, how, ref_out, checks,
                               {"tflite_call": tflite_call, "tflite": tio, "converted_with": f"tf2onnx {tf2onnx.__version__}", "convert_call": call, "tflite_file": "model.tflite (full-integer int8, LiteRT runs it in the bench)"},
                               float_out=keras_out))

    # (c) onnxruntime's quantizer on the float model
    for v in ["qdq_s8s8_pc", "qop_u8s8"]:
        d = dirs[v]
        q_model, calls = export_ort(dirs["float"] / "model.onnx", x_calib, v)
        onnx.save(q_model, d / "model.onnx")
        ort_out, how = run_ort(q_model, x_test)
        ref_out = run_reference(q_model, x_test)
        src = {"float_model": f"{cls}_float/model.onnx", "float_model_sha256": sha256(dirs["float"] / "model.onnx"), "quantized_with": f"onnxruntime.quantization (onnxruntime {ort.__version__})", **calls}
        entries.append(write_model(d, cls, v, q_model, common, x_test, y_test, ort_out, how, ref_out, {}, src, float_out=keras_out))

    # (d) torch.onnx.export-style NCHW graph from the Keras weights
    d = dirs["nchw"]
    m = nchw_graph(model, cls, "output")
    onnx.save(m, d / "model.onnx")
    x_nchw = x_test.transpose(0, 3, 1, 2).copy() if x_test.ndim == 4 else x_test
    ort_out, how = run_ort(m, x_nchw)
    checks = {"max_abs_diff_vs_keras": max_abs(ort_out["output"], keras_out), "max_abs_diff_vs_float_tflite_litert": max_abs(ort_out["output"], lite_out)}
    src = {"written_with": f"onnx.helper (onnx {onnx.__version__}) by {SCRIPT}: nchw_graph()", "form": "what torch.onnx.export(model.eval(), x, input_names=['input'], output_names=['output'], dynamic_axes={'input': {0: 'batch_size'}, 'output': {0: 'batch_size'}}, opset_version=17) gives for a PyTorch model with the same layers, BatchNormalization kept as its own node (not folded)", "weights": "the Keras model's, transposed to PyTorch's layouts (conv [out, in/groups, kh, kw], linear [out, in])", "input_layout": "NCHW: input.npy is the float rows transposed (0, 3, 1, 2)" if x_test.ndim == 4 else "[batch, features]"}
    entries.append(write_model(d, cls, "nchw", m, common, x_nchw, y_test, ort_out, how, None, checks, src))
    return entries


def auc(score, label):
    pos, neg = score[label == 1], score[label == 0]
    if not len(pos) or not len(neg):
        return None
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def write_model(d, cls, variant, model, common, x, y, ort_out, how, ref_out, checks, source, float_out=None):
    name = d.name
    save_npy(d / "input.npy", x)
    save_npy(d / "labels.npy", y)
    info = graph_info(model)
    outputs = {}
    follows = {}
    for o in info["outputs"]:
        n = o["name"]
        a = ort_out[n]
        fname = f"output_{n.replace('/', '_').replace(':', '_')}.npy"
        save_npy(d / fname, a)
        entry = {"npy": fname, "shape": list(a.shape), "dtype": a.dtype.name, "quantization": None}
        q = output_quant(model, n)
        if q is not None:
            entry["quantization"] = q
        if ref_out is not None:
            r = ref_out[n]
            diff = max_abs(a, r)
            entry["ort_vs_onnx_reference"] = {"max_abs_diff": diff, "elements_differing": int(np.sum(a != r)), "of": int(a.size)}
            if q is not None and q["scale"]:
                entry["ort_vs_onnx_reference"]["max_diff_in_quantization_steps"] = diff / q["scale"] if a.dtype.kind == "f" else diff
            if diff > 0:
                sname = fname.replace(".npy", ".spec.npy")
                save_npy(d / sname, r)
                entry["spec_npy"] = sname
                follows[n] = f"{sname} (onnx.reference, the ONNX spec's evaluator); {fname} is onnxruntime's"
            else:
                follows[n] = f"{fname}: onnxruntime and onnx.reference agree exactly"
        outputs[n] = entry
    first = info["outputs"][0]["name"]
    a = ort_out[first]
    metrics = {}
    if common["task"] == "classification":
        metrics["accuracy_on_labels"] = float(np.mean(a.argmax(1) == y))
        if float_out is not None:
            metrics["top1_agreement_with_keras_float"] = float(np.mean(a.argmax(1) == float_out.argmax(1)))
    else:
        xf = x.astype(np.float32)
        if info["outputs"][0]["dtype"] == "int8":
            qin, qout = checks["input_quantization"], outputs[first].get("quantization") or {}
            xf = (xf - qin["zero_point"]) * qin["scale"]
            a = (a.astype(np.float32) - qout.get("zero_point", 0)) * qout.get("scale", 1.0)
        err = np.mean((a - xf) ** 2, axis=1)
        metrics["anomaly_auc_mse"] = auc(err, y)
    meta = {
        "name": name,
        "class": cls,
        "variant": variant,
        "what": common["what"],
        "task": common["task"],
        "macs": common["macs"],
        "source": {**common["source"], **source},
        "graph": info,
        "file": {"path": f"{name}/model.onnx", "bytes": (d / "model.onnx").stat().st_size, "sha256": sha256(d / "model.onnx")},
        "reference": {
            "runtime": "onnxruntime CPUExecutionProvider, intra_op_num_threads=1, inter_op_num_threads=1, ORT_SEQUENTIAL, ORT_ENABLE_ALL",
            **how,
            "input": {"npy": "input.npy", "shape": list(x.shape), "dtype": x.dtype.name, "rows": f"{len(x)} held-back synthetic rows (not used in training or calibration)"},
            "outputs": outputs,
        },
        "checks": checks,
        "metrics": metrics,
        "versions": common["versions"],
    }
    if ref_out is not None:
        meta["reference"]["spec_reference"] = follows
        meta["reference"]["spec_reference_how"] = REFERENCE_NOTE
    meta["reference"]["labels"] = "labels.npy: the synthetic class of each row" if common["task"] == "classification" else "labels.npy: 1 for the anomalous rows (a tone added), 0 for the normal ones"
    if common["task"] == "classification":
        meta["keras_test_accuracy"] = common["keras_test_accuracy"]
    (d / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"   {name}: {meta['file']['bytes']} bytes, ops {info['op_types']}", flush=True)
    if ref_out is not None:
        for n, o in outputs.items():
            print(f"      ort vs onnx.reference {n}: {o['ort_vs_onnx_reference']}", flush=True)
    if checks:
        print(f"      checks {json.dumps({k: v for k, v in checks.items() if k != 'input_quantization'})}", flush=True)
    return manifest_entry(meta, d)


def manifest_entry(meta, d):
    inp = meta["graph"]["inputs"][0]
    outs = []
    for o in meta["graph"]["outputs"]:
        r = meta["reference"]["outputs"][o["name"]]
        q = r.get("quantization")
        if r["dtype"] in ("int8", "uint8"):
            tol = {"kind": "int8_codes", "max_steps": 1, "scale": q["scale"] if q else None, "zero_point": q["zero_point"] if q else None}
        elif q is not None:
            tol = {"kind": "dequantized", "max_abs": q["scale"], "scale": q["scale"], "zero_point": q["zero_point"], "note": "float output of a DequantizeLinear: one quantization step"}
        elif meta["variant"] in ("float", "nchw"):
            tol = {"kind": "float", "rel_to_max_abs_ref": 1e-4, "note": "|perch - ref| <= 1e-4 * max(1, max |ref|)"}
        else:
            tol = {"kind": "float_after_int8", "note": "float op after the last int8 op (see model.json)"}
        if "ort_vs_onnx_reference" in r:
            ovr = r["ort_vs_onnx_reference"]
            tol["onnxruntime_vs_spec"] = {
                "max_steps": round(ovr.get("max_diff_in_quantization_steps", ovr["max_abs_diff"]), 3),
                "elements_differing": ovr["elements_differing"],
                "of": ovr["of"],
            }
        litert = d / r["npy"].replace(".npy", ".litert.npy")
        outs.append({"name": o["name"], "dtype": r["dtype"], "shape": r["shape"], "npy": f"{d.name}/{r['npy']}", "spec_npy": f"{d.name}/{r['spec_npy']}" if "spec_npy" in r else None, "litert_npy": f"{d.name}/{litert.name}" if litert.exists() else None, "tolerance": tol})
    e = {
        "name": meta["name"],
        "class": meta["class"],
        "variant": meta["variant"],
        "task": meta["task"],
        "macs": meta["macs"],
        "onnx": f"{d.name}/model.onnx",
        "tflite": f"{d.name}/model.tflite" if (d / "model.tflite").exists() else None,
        "input": {"name": inp["name"], "dtype": meta["reference"]["input"]["dtype"], "shape": inp["shape"], "npy": f"{d.name}/input.npy", "rows": meta["reference"]["input"]["shape"][0]},
        "outputs": outs,
        "labels": f"{d.name}/labels.npy" if (d / "labels.npy").exists() else None,
        "onnx_bytes": meta["file"]["bytes"],
    }
    if meta["variant"] == "tflite_int8":
        e["input"]["quantization"] = {k: meta["checks"]["input_quantization"][k] for k in ("scale", "zero_point")}
    return e


def make_bench_identities(manifest):
    """Operator-free .tflite files, one per input shape and dtype of the .tflite models: the
    bench times LiteRT's empty call (set_tensor + invoke + get_tensor) on them and subtracts it."""
    out = HERE / "bench"
    out.mkdir(exist_ok=True)
    made = []
    for m in manifest["models"]:
        if not m["tflite"]:
            continue
        for t in tflite_io(HERE / m["tflite"])["inputs"]:
            shape = [1] + t["shape"][1:]
            dtype = tf.as_dtype(t["dtype"])
            path = out / f"identity_{'x'.join(map(str, shape[1:]))}_{t['dtype']}.tflite"
            if path.exists():
                continue

            ident = tf.function(tf.identity, input_signature=[tf.TensorSpec(shape, dtype, name="x")], autograph=False)
            path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([ident.get_concrete_function()]).convert())
            made.append(path.name)
    return made


def readme_table(manifest):
    rows = ["| model | class | variant | input | output | ONNX bytes | .tflite | ops (as the tool emitted them) |", "|---|---|---|---|---|---|---|---|"]
    for m in manifest["models"]:
        meta = json.loads((HERE / m["name"] / "model.json").read_text())
        ops = ", ".join(f"{k} {v}" for k, v in meta["graph"]["op_types"].items())
        tfl = (HERE / m["tflite"]).stat().st_size if m["tflite"] else ""
        i = m["input"]
        o = m["outputs"][0]
        rows.append(f"| {m['name']} | {m['class']} | {m['variant']} | {i['dtype']} {i['shape']} x {i['rows']} rows | {o['dtype']} {o['shape'][1:]} | {m['onnx_bytes']} | {tfl} | {ops} |")
    rows += ["", "Checks (figures from each model.json):", "",
             "| model | max \\|ONNX − Keras\\| | max \\|ONNX − float .tflite\\| | onnxruntime vs onnx.reference: max steps, elements differing | onnxruntime vs LiteRT (int8 codes): max, rows equal | top-1 = Keras float | accuracy on the synthetic labels / anomaly AUC |",
             "|---|---|---|---|---|---|---|"]
    for m in manifest["models"]:
        meta = json.loads((HERE / m["name"] / "model.json").read_text())
        c = meta["checks"]
        o = next(iter(meta["reference"]["outputs"].values()))
        ovr = o.get("ort_vs_onnx_reference")
        spec = f"{ovr.get('max_diff_in_quantization_steps', ovr['max_abs_diff']):.0f}, {ovr['elements_differing']} of {ovr['of']}" if ovr else ""
        lite = f"{c['max_abs_diff_ort_vs_litert_codes']:.0f}, {c['rows_ort_equal_litert']:.1%}" if "max_abs_diff_ort_vs_litert_codes" in c else ""
        k = c.get("max_abs_diff_vs_keras")
        t = c.get("max_abs_diff_vs_float_tflite_litert")
        met = meta["metrics"]
        top1 = met.get("top1_agreement_with_keras_float")
        score = met.get("accuracy_on_labels", met.get("anomaly_auc_mse"))
        rows.append(
            f"| {m['name']} | {'' if k is None else f'{k:.1e}'} | {'' if t is None else f'{t:.1e}'} | {spec} | {lite} | "
            f"{'' if top1 is None else f'{top1:.1%}'} | {'' if score is None else f'{score:.3f}'} |"
        )
    return "\n".join(rows)


def update_readme(manifest):
    path = HERE / "README.md"
    if not path.exists():
        return
    text = path.read_text()
    start, end = "<!-- models: written by make_corpus.py -->", "<!-- /models -->"
    if start in text and end in text:
        a, b = text.index(start) + len(start), text.index(end)
        path.write_text(text[:a] + "\n" + readme_table(manifest) + "\n" + text[b:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(CLASSES), help="comma-separated classes to (re)make")
    ap.add_argument("--manifest-only", action="store_true", help="rewrite manifest.json and README's table from the model folders' model.json")
    args = ap.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    vers = versions()
    manifest_path = HERE / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": []}
    for cls in args.only.split(","):
        if cls not in CLASS_CONFIG:
            sys.exit(f"unknown class {cls!r}; expected one of {', '.join(CLASSES)}")
        if args.manifest_only:
            dirs = [HERE / f"{cls}_{v}" for v in VARIANTS if (HERE / f"{cls}_{v}" / "model.json").exists()]
            entries = [manifest_entry(json.loads((d / "model.json").read_text()), d) for d in dirs]
        else:
            entries = make_class(cls, vers)
        manifest["models"] = [m for m in manifest["models"] if m["class"] != cls] + entries
    order = {c: i for i, c in enumerate(CLASSES)}
    manifest["models"].sort(key=lambda m: (order[m["class"]], VARIANTS.index(m["variant"])))
    manifest["about"] = "Edge-CNN corpus (issue 12): one folder per model; see README.md. Paths are relative to this file."
    manifest["versions"] = vers
    manifest["calibration"] = {c: f"calibration/{c}.npy" for c in CLASSES if (HERE / "calibration" / f"{c}.npy").exists()}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    make_bench_identities(manifest)
    update_readme(manifest)


if __name__ == "__main__":
    main()
