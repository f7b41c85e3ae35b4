#!/usr/bin/python3
"""The default mnistd recipe in numpy, as a speed peer: 784-500-10 ReLU MLP,
truncated-normal(0.1) weights, zero biases, batch 100, SGD with
lr 0.8 * 0.99^(step/550), L2 1e-4 on weights, EMA with TensorFlow's
num_updates decay, pixels converted from uint8 per batch. numpy's BLAS
threads come from OPENBLAS_NUM_THREADS (set it before starting).

Prints one line: steps, seconds and steps/s of the steps after --warmup.

usage: peer_numpy.py [--steps N] [--warmup N] [--hidden H[,H...]] [--data DIR]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_eval import load_idx  # noqa: E402


def trunc_normal(rng, shape, std):
    w = rng.standard_normal(shape)
    bad = np.abs(w) > 2
    while bad.any():
        w[bad] = rng.standard_normal(bad.sum())
        bad = np.abs(w) > 2
    return (w * std).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--hidden", default="500")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    rng = np.random.default_rng(42)
    xi = load_idx(a.data + "/train-images-idx3-ubyte.gz").reshape(60000, -1)
    yi = load_idx(a.data + "/train-labels-idx1-ubyte.gz")
    x_train, y_train = xi[5000:], yi[5000:].astype(np.int64)
    sizes = [x_train.shape[1]] + [int(h) for h in a.hidden.split(",")] + [10]
    ws = [trunc_normal(rng, (i, o), 0.1) for i, o in zip(sizes, sizes[1:])]
    bs = [np.zeros(o, np.float32) for o in sizes[1:]]
    sw = [w.copy() for w in ws]
    sb = [b.copy() for b in bs]
    n, batch = len(x_train), 100
    rows = np.arange(batch)
    perm, pos = rng.permutation(n), 0
    t0 = None
    for step in range(a.steps):
        if step == a.warmup:
            t0 = time.perf_counter()
        if pos + batch > n:
            perm, pos = rng.permutation(n), 0
        idx = perm[pos:pos + batch]
        pos += batch
        x = x_train[idx].astype(np.float32)
        x /= 255
        y = y_train[idx]
        acts = [x]
        for l, (w, b) in enumerate(zip(ws, bs)):
            h = acts[-1] @ w
            h += b
            if l + 1 < len(ws):
                np.maximum(h, 0, out=h)
            acts.append(h)
        z = acts[-1]
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        d = z
        d[rows, y] -= 1
        d /= batch
        lr = np.float32(0.8 * 0.99 ** (step / 550))
        keep = np.float32(1 - lr * 1e-4)
        for l in range(len(ws) - 1, -1, -1):
            gw = acts[l].T @ d
            gb = d.sum(axis=0)
            if l > 0:
                d = d @ ws[l].T
                d *= acts[l] > 0
            ws[l] *= keep
            ws[l] -= lr * gw
            bs[l] -= lr * gb
        dec = np.float32(min(0.99, (1 + step + 1) / (10 + step + 1)))
        for s, p in zip(sw + sb, ws + bs):
            s *= dec
            s += (1 - dec) * p
    secs = time.perf_counter() - t0
    timed = a.steps - a.warmup
    print("numpy steps=%d seconds=%.2f steps_per_sec=%.1f" % (timed, secs, timed / secs))


if __name__ == "__main__":
    main()
