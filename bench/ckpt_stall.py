#!/usr/bin/python3
"""What checkpoints cost training, measured inside one mnistd process: its
checkpoint.every_steps is switched by config reload between a value that
never comes (no checkpoints) and --every, in windows of --seconds, and each
pair of neighbouring windows gives one ratio. Two processes per round: one
on the real disk, one on a slow disk (bench/libslowfsync.so: every fsync
takes --fsync-ms longer). "vs none" is the median of all pairs' ratios.

Why in one process: two mnistd processes started a minute apart differ by
up to 10 % on this VM (where their buffers land, what else ran), which
swamped a cost of a few percent; windows a second apart in the same process
do not: the medians of six runs of the shipped code fell within
0.948-0.962, where separate processes gave 0.93-0.99 (single pairs still
stray now and then, hence the median). The windows alternate A B B A so
a drift within the process cancels too.

From the log it also reports what taking the snapshot cost the training
thread (snapshot_ms) against the median step time, the writer's write_ms
and how many snapshots were replaced while waiting.

usage: ckpt_stall.py [--build build-release] [--threads 2] [--runs 3]
                     [--pairs 4] [--seconds 2] [--every 100] [--fsync-ms 200]
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import speed  # noqa: E402

NEVER = 10 ** 9


def windows(build, a, extra_env, log_out):
    """One mnistd process alternating between no checkpoints and every
    a.every steps: returns ([steps/s without], [steps/s with], [ratios])."""
    none, every, ratios = [], [], []
    with tempfile.TemporaryDirectory() as work:
        sock = work + "/control.sock"
        cfg = {"model": {"hidden": [int(h) for h in a.hidden.split(",")]},
               "train": {"max_steps": NEVER, "threads": a.threads},
               "checkpoint": {"dir": work + "/ckpt", "every_steps": NEVER, "max_to_keep": 2},
               "control": {"socket": sock},
               "log": {"file": work + "/mnistd.log"}}

        def configure(every_steps):
            cfg["checkpoint"]["every_steps"] = every_steps
            with open(work + "/c.json", "w") as f:
                json.dump(cfg, f)
            if os.path.exists(sock):
                answer = speed.control(sock, {"cmd": "reload"})
                if not answer.get("ok"):
                    raise SystemExit("reload refused: %s" % answer)

        def rate(every_steps):
            configure(every_steps)
            time.sleep(0.2)  # let the reload reach the training thread
            st0, t0 = speed.status(sock), time.monotonic()
            time.sleep(a.seconds)
            st1, t1 = speed.status(sock), time.monotonic()
            return (st1["step"] - st0["step"]) / (t1 - t0)

        configure(NEVER)
        proc = subprocess.Popen([os.path.join(build, "daemon", "mnistd"), "--config",
                                 work + "/c.json"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=dict(os.environ, **extra_env))
        try:
            speed.wait_for_step(proc, work, 300)
            for i in range(a.pairs):
                if i % 2 == 0:
                    r0 = rate(NEVER)
                    r1 = rate(a.every)
                else:
                    r1 = rate(a.every)
                    r0 = rate(NEVER)
                none.append(r0)
                every.append(r1)
                ratios.append(r1 / r0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            with open(work + "/mnistd.log") as f:
                log_out.append(f.read())
    return none, every, ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build-release")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="processes per disk")
    ap.add_argument("--pairs", type=int, default=4, help="pairs of windows per process")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of a window")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--fsync-ms", type=int, default=200)
    ap.add_argument("--hidden", default="500")
    a = ap.parse_args()
    build = speed.ensure_build(a.build)
    shim = os.path.join(build, "bench", "libslowfsync.so")
    disks = [("every %d" % a.every, {}),
             ("every %d, fsync +%d ms" % (a.every, a.fsync_ms),
              {"LD_PRELOAD": shim, "MN_SLOW_FSYNC_MS": str(a.fsync_ms)})]
    got = {name: ([], [], [], []) for name, _ in disks}
    for _ in range(a.runs):
        for name, env in disks:
            none, every, ratios = windows(build, a, env, got[name][3])
            got[name][0].extend(none)
            got[name][1].extend(every)
            got[name][2].extend(ratios)
    print("threads=%d hidden=%s: %d processes x %d pairs of %.0f s windows "
          "(median steady-state steps/s)" % (a.threads, a.hidden, a.runs, a.pairs, a.seconds))
    print("| checkpoints | steps/s | vs none (same process) | pairs min-max | published | "
          "replaced | write_ms p50 | snapshot_ms p50 / max | step ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    none = got[disks[0][0]][0]
    print("| no checkpoints | %.0f | 1.000 | | | | | | %.2f |" % (
        statistics.median(none), 1000.0 / statistics.median(none)))
    for name, _ in disks:
        _, every, ratios, logs = got[name]
        text = "".join(logs)
        writes = [float(x) for x in re.findall(r"write_ms=([0-9.]+)", text)]
        snaps = [float(x) for x in re.findall(r"snapshot_ms=([0-9.]+)", text)]
        replaced = text.count("checkpoint replaced before it was written")
        r = statistics.median(every)
        print("| %s | %.0f | %.3f | %.3f-%.3f | %d | %d | %s | %s | %.2f |" % (
            name, r, statistics.median(ratios), min(ratios), max(ratios), len(writes),
            replaced, "%.1f" % statistics.median(writes) if writes else "-",
            "%.2f / %.2f" % (statistics.median(snaps), max(snaps)) if snaps else "-",
            1000.0 / r))
    print("loadavg after: %s" % open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    sys.exit(main())
