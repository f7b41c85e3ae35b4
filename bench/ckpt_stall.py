#!/usr/bin/python3
"""What checkpoints cost training: steady-state steps/s of mnistd with no
checkpoints, with one every --every steps, and with one every --every steps
on a slow disk (bench/libslowfsync.so: every fsync takes --fsync-ms longer),
median of --runs interleaved rounds. "vs none" is the median of each
round's ratio to the run without checkpoints just before it: this VM's
two-thread speed drifts by 10 % over minutes, which a ratio of medians
taken minutes apart would mistake for a checkpoint cost. And, from the log, what taking the
snapshot cost the training thread (snapshot_ms) against the median step
time, the writer's write_ms and how many snapshots were replaced while
waiting.

usage: ckpt_stall.py [--build build-release] [--threads 2] [--runs 3]
                     [--seconds 6] [--every 100] [--fsync-ms 200]
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
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--fsync-ms", type=int, default=200)
    ap.add_argument("--hidden", default="500")
    a = ap.parse_args()
    build = speed.ensure_build(a.build)
    shim = os.path.join(build, "bench", "libslowfsync.so")
    modes = [("no checkpoints", 10 ** 9, None),
             ("every %d" % a.every, a.every, None),
             ("every %d, fsync +%d ms" % (a.every, a.fsync_ms), a.every,
              {"LD_PRELOAD": shim, "MN_SLOW_FSYNC_MS": str(a.fsync_ms)})]
    rates = {m[0]: [] for m in modes}
    logs = {m[0]: [] for m in modes}
    for _ in range(a.runs):
        for name, every, env in modes:
            rates[name].append(speed.mnistd_rate(build, a.threads, a.hidden, a.seconds, 300,
                                                 every, env, logs[name]))
    none = rates[modes[0][0]]
    print("threads=%d hidden=%s runs=%d (median steady-state steps/s)" % (a.threads, a.hidden,
                                                                          a.runs))
    print("| checkpoints | steps/s | vs none (paired) | published | replaced | write_ms p50 | "
          "snapshot_ms p50 / max | step ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, _, _ in modes:
        text = "".join(logs[name])
        writes = [float(x) for x in re.findall(r"write_ms=([0-9.]+)", text)]
        snaps = [float(x) for x in re.findall(r"snapshot_ms=([0-9.]+)", text)]
        replaced = text.count("checkpoint replaced before it was written")
        r = statistics.median(rates[name])
        paired = statistics.median(x / y for x, y in zip(rates[name], none))
        print("| %s | %.0f | %.3f | %d | %d | %s | %s | %.2f |" % (
            name, r, paired, len(writes), replaced,
            "%.1f" % statistics.median(writes) if writes else "-",
            "%.2f / %.2f" % (statistics.median(snaps), max(snaps)) if snaps else "-",
            1000.0 / r))
    print("loadavg after: %s" % open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    sys.exit(main())
