#!/usr/bin/env python3
"""Sizes of the trained digits MLP's artifacts, f32 and int8, and what general-purpose
compression would make of them (docs/quantization.md, "Artifact size").

    python3 benches/artifact_sizes.py [SHARED_BYTES ...]

Splits each payload into its metadata (name, version, producer, description, class labels,
properties, sections: docs/artifact.md) and its graph, compresses each with zlib (deflate,
level 9, raw stream: the 2-byte header and 4-byte Adler-32 are not counted) and LZMA2
(preset 9, raw), and prints the int8 / f32 ratios. Each SHARED_BYTES argument adds that many
bytes of metadata shared by both files (a drift baseline and a canary input are planned) and
prints the resulting whole-file ratio.
"""
import lzma
import struct
import sys
import zlib
from pathlib import Path

DIR = Path(__file__).resolve().parent.parent / "models" / "digits-mlp-trained"
CONTAINER = 20 + 32 + 64  # header, SHA-256, signature slot


def varint(b, i):
    v, shift = 0, 0
    while True:
        byte = b[i]
        i += 1
        v |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return v, i


def skip_str(b, i):
    n, i = varint(b, i)
    return i + n


def metadata_len(p):
    i = 0
    for _ in range(2):  # name, version
        i = skip_str(p, i)
    _, i = varint(p, i)  # created_unix_s
    for _ in range(2):  # producer, description
        i = skip_str(p, i)
    n, i = varint(p, i)  # class_labels
    for _ in range(n):
        i = skip_str(p, i)
    n, i = varint(p, i)  # properties
    for _ in range(2 * n):
        i = skip_str(p, i)
    n, i = varint(p, i)  # sections: kind u32 varint, bytes
    for _ in range(n):
        _, i = varint(p, i)
        i = skip_str(p, i)
    return i


def deflate(b):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return len(c.compress(b) + c.flush())


def xz(b):
    return len(lzma.compress(b, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}]))


def parts(name):
    b = (DIR / name).read_bytes()
    (length,) = struct.unpack("<Q", b[12:20])
    p = b[20 : 20 + length]
    m = metadata_len(p)
    return {"file": len(b), "payload": p, "meta": p[:m], "graph": p[m:]}


def main():
    f32, i8 = parts("model.perch"), parts("model-int8.perch")
    print(f"{'':34} {'f32':>8} {'int8':>8} {'int8/f32':>9}")

    def row(label, a, b):
        print(f"{label:34} {a:8,} {b:8,} {b / a:9.1%}")

    row("file", f32["file"], i8["file"])
    row("  metadata", len(f32["meta"]), len(i8["meta"]))
    row("  graph", len(f32["graph"]), len(i8["graph"]))
    for label, fn in [("deflate-9", deflate), ("lzma2-9", xz)]:
        row(f"payload, {label}", fn(f32["payload"]), fn(i8["payload"]))
        row(f"  metadata, {label}", fn(f32["meta"]), fn(i8["meta"]))
        row(f"  graph, {label}", fn(f32["graph"]), fn(i8["graph"]))
        row(
            f"file, payload {label}",
            CONTAINER + fn(f32["payload"]),
            CONTAINER + fn(i8["payload"]),
        )
        row(
            f"file, metadata only {label}",
            CONTAINER + fn(f32["meta"]) + len(f32["graph"]),
            CONTAINER + fn(i8["meta"]) + len(i8["graph"]),
        )
    for extra in (int(a) for a in sys.argv[1:]):
        row(f"file + {extra:,} B shared", f32["file"] + extra, i8["file"] + extra)
    shared = CONTAINER + len(f32["meta"])
    print(
        f"30 % of the whole f32 file allows int8 parameters of at most "
        f"0.3 x (f32 graph + S) - S with S the shared bytes: "
        f"{0.3 * (len(f32['graph']) + shared) - shared:,.0f} B now (S = {shared:,} B), "
        f"int8 graph {len(i8['graph']):,} B"
    )


if __name__ == "__main__":
    main()
