#!/usr/bin/python3
"""How cost grows with the network: for each shape, the sgemm-only ceiling
and mnistd's steady-state steps/s (bench/speed.py's measurements), the
FLOPs of a step, the checkpoint's size and the writer's write_ms, median of
--runs rounds.

usage: scaling.py [--build build-release] [--threads 2] [--runs 3]
                  [--shapes 100,500,2000,4000,500+500]
"""
import argparse
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import speed  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build-release")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--shapes", default="100,500,2000,4000,500+500")
    a = ap.parse_args()
    build = speed.ensure_build(a.build)
    shapes = [s.replace("+", ",") for s in a.shapes.split(",")]
    rows = []
    for hidden in shapes:
        sizes = [784] + [int(h) for h in hidden.split(",")] + [10]
        params = sum(i * o + o for i, o in zip(sizes, sizes[1:]))
        flops = sum(2 * 100 * i * o * (3 if k else 2)
                    for k, (i, o) in enumerate(zip(sizes, sizes[1:])))
        ceil, rate, writes, size = [], [], [], 0
        for _ in range(a.runs):
            ceil.append(speed.ceiling(build, a.threads, hidden))
            logs, info = [], {}
            # A learning rate every shape trains with (0.8 sends two layers to NaN,
            # and train.stop_on_nan stops them): speed does not depend on it.
            rate.append(speed.mnistd_rate(build, a.threads, hidden, a.seconds, 100, 200,
                                          logs=logs, info=info, train={"learning_rate": 0.1}))
            writes += [float(x) for x in re.findall(r"write_ms=([0-9.]+)", logs[0])]
            size = info.get("ckpt_bytes", size)
        rows.append((hidden, params, flops, statistics.median(ceil), statistics.median(rate),
                     size, statistics.median(writes) if writes else float("nan")))
    print("threads=%d runs=%d, checkpoint every 200 steps" % (a.threads, a.runs))
    print("| hidden | parameters | MFLOP/step | ceiling steps/s | mnistd steps/s | ratio | "
          "GFLOP/s | checkpoint MB | write_ms p50 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for hidden, params, flops, c, r, size, w in rows:
        print("| %s | %d | %.1f | %.0f | %.0f | %.2f | %.0f | %.2f | %.1f |" % (
            hidden.replace(",", "+"), params, flops / 1e6, c, r, r / c, r * flops / 1e9,
            size / 2 ** 20, w))
    print("loadavg after: %s" % open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    sys.exit(main())
