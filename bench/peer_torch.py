#!/usr/bin/python3
"""The default mnistd recipe in PyTorch, as a peer for speed and accuracy:
784-500-10 ReLU MLP, truncated-normal(0.1) weights, zero biases, batch 100,
SGD with lr 0.8 * 0.99^(step/550), L2 1e-4 on weights, EMA with TensorFlow's
num_updates decay. Prints one line: steps, seconds, steps/s, test accuracy
(EMA and raw).

--warmup N leaves the first N steps out of the timing (steady state).

usage: peer_torch.py [--steps N] [--warmup N] [--threads T] [--data DIR]
"""
import argparse
import gzip
import struct
import time

import numpy as np
import torch


def load_idx(path):
    with gzip.open(path, "rb") as f:
        blob = f.read()
    ndim = blob[3]
    dims = struct.unpack(">%dI" % ndim, blob[4:4 + 4 * ndim])
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def trunc_normal(shape, std):
    w = torch.empty(shape)
    torch.nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
    return w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    gen = torch.Generator().manual_seed(42)
    xi = load_idx(a.data + "/train-images-idx3-ubyte.gz").reshape(60000, -1)
    yi = load_idx(a.data + "/train-labels-idx1-ubyte.gz")
    x_train = torch.from_numpy(xi[5000:].copy())  # uint8, scaled per batch like mnistd
    y_train = torch.from_numpy(yi[5000:].astype(np.int64))
    x_test = torch.from_numpy(load_idx(a.data + "/t10k-images-idx3-ubyte.gz").reshape(10000, -1).astype(np.float32) / 255)
    y_test = torch.from_numpy(load_idx(a.data + "/t10k-labels-idx1-ubyte.gz").astype(np.int64))

    w1 = trunc_normal((784, 500), 0.1).requires_grad_()
    b1 = torch.zeros(500, requires_grad=True)
    w2 = trunc_normal((500, 10), 0.1).requires_grad_()
    b2 = torch.zeros(10, requires_grad=True)
    params = [w1, b1, w2, b2]
    shadow = [p.detach().clone() for p in params]
    n = len(x_train)
    perm, pos = torch.randperm(n, generator=gen), 0

    t0 = time.perf_counter()
    for step in range(a.steps):
        if step == a.warmup:
            t0 = time.perf_counter()
        if pos + 100 > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + 100]
        pos += 100
        xb = x_train[idx].float() / 255
        yb = y_train[idx]
        logits = torch.relu(xb @ w1 + b1) @ w2 + b2
        loss = torch.nn.functional.cross_entropy(logits, yb) + 1e-4 * ((w1 ** 2).sum() + (w2 ** 2).sum()) / 2
        for p in params:
            p.grad = None
        loss.backward()
        lr = 0.8 * 0.99 ** (step / 550)
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad
            d = min(0.99, (1 + step + 1) / (10 + step + 1))
            for s, p in zip(shadow, params):
                s.mul_(d).add_(p, alpha=1 - d)
    secs = time.perf_counter() - t0
    timed = a.steps - a.warmup

    def acc(ps):
        with torch.no_grad():
            out = torch.relu(x_test @ ps[0] + ps[1]) @ ps[2] + ps[3]
            return (out.argmax(1) == y_test).float().mean().item()

    print("pytorch steps=%d seconds=%.1f steps_per_sec=%.0f test_ema=%.4f test_raw=%.4f"
          % (timed, secs, timed / secs, acc(shadow), acc([p.detach() for p in params])))


if __name__ == "__main__":
    main()
