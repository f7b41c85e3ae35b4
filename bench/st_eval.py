#!/usr/bin/python3
"""Independent check of a checkpoint's accuracy with numpy (a peer
implementation of the forward pass): reads the safetensors file with the
standard library, the IDX files with gzip, and prints the accuracy of the
EMA (default) or raw weights on the t10k test set or the validation split.

usage: st_eval.py CKPT [--raw] [--data DIR] [--split test|validation]
"""
import argparse
import gzip
import json
import struct
import sys

import numpy as np


def load_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        blob = f.read()
    magic, = struct.unpack(">I", blob[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">%dI" % ndim, blob[4:4 + 4 * ndim])
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    n, = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    dt = {"F32": np.float32, "I64": np.int64, "U64": np.uint64, "U32": np.uint32}
    tensors = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        tensors[name] = np.frombuffer(data[b:e], dtype=dt[t["dtype"]]).reshape(t["shape"])
    return meta, tensors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--raw", action="store_true")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--split", default="test", choices=["test", "validation"])
    ap.add_argument("--validation-size", type=int, default=5000)
    a = ap.parse_args()
    meta, t = load_safetensors(a.ckpt)
    arch = json.loads(meta["architecture"])
    if a.split == "test":
        x = load_idx(a.data + "/t10k-images-idx3-ubyte.gz")
        y = load_idx(a.data + "/t10k-labels-idx1-ubyte.gz")
    else:
        x = load_idx(a.data + "/train-images-idx3-ubyte.gz")[:a.validation_size]
        y = load_idx(a.data + "/train-labels-idx1-ubyte.gz")[:a.validation_size]
    h = x.reshape(len(x), -1).astype(np.float32) / np.float32(255)
    layers = len(arch["hidden"]) + 1
    sfx = "" if a.raw or meta.get("frozen") == "true" else "/ExponentialMovingAverage"
    for i in range(1, layers + 1):
        h = h @ t["layer%d/weights%s" % (i, sfx)] + t["layer%d/biases%s" % (i, sfx)]
        if i < layers:
            h = np.maximum(h, 0)
    acc = float((h.argmax(1) == y).mean())
    print("%s step=%s %s accuracy=%.4f" % (a.split, meta.get("global_step"), "raw" if a.raw else "ema", acc))


if __name__ == "__main__":
    sys.exit(main())
