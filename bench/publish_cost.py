#!/usr/bin/python3
"""What a publish costs as a keep-all directory grows: mnistd with
checkpoint.every_steps 1 and max_to_keep 0 on a small synthetic data set
(checkpoints of a few KB, so the disk is not what is measured), run until
--count checkpoints exist; the log's write_ms (file, fsyncs, rename,
checkpoint.json, retention) and the publish rate, per window of --window
checkpoints. With the directory listed at every publish (mnistd before
hardening point 11) both got worse with every checkpoint; now the last
window should look like the first.

usage: publish_cost.py [--build build-release] [--count 20000] [--window 2000]
                       [--dir DIR]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "e2e"))
import speed  # noqa: E402
import mnlib  # noqa: E402

LINE = re.compile(r"^(\S+) info checkpoint published step=(\d+) \S+ write_ms=([0-9.]+)", re.M)


def when(stamp):
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build-release")
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--dir", help="where the work directory goes (default: $TMPDIR)")
    a = ap.parse_args()
    build = speed.ensure_build(a.build)
    work = tempfile.mkdtemp(prefix="mn-bench-publish-", dir=a.dir)
    try:
        data = mnlib.make_dataset(os.path.join(work, "data"))
        cfg = mnlib.base_config(work, data, train={"max_steps": a.count},
                                checkpoint={"every_steps": 1, "max_to_keep": 0})
        cfg["log"]["file"] = os.path.join(work, "mnistd.log")
        path = mnlib.write_config(os.path.join(work, "c.json"), cfg)
        r = subprocess.run([os.path.join(build, "daemon", "mnistd"), "--config", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise SystemExit("mnistd failed: see " + cfg["log"]["file"])
        with open(cfg["log"]["file"]) as f:
            pubs = [(int(s), when(t), float(ms)) for t, s, ms in LINE.findall(f.read())]
        size = os.path.getsize(os.path.join(cfg["checkpoint"]["dir"],
                                            "model.ckpt-%d.safetensors" % a.count))
        index = json.load(open(os.path.join(cfg["checkpoint"]["dir"], "checkpoint.json")))
        print("%s: %d checkpoints of %d bytes kept, checkpoint.json lists %d; loadavg %s"
              % (os.path.basename(os.path.abspath(build)), len(pubs), size, len(index["all"]),
                 open("/proc/loadavg").read().split()[0]))
        print("| checkpoints | write_ms p50 | write_ms p99 | publishes/s |")
        print("|---|---:|---:|---:|")
        for lo in range(0, len(pubs), a.window):
            w = pubs[lo:lo + a.window]
            if len(w) < 2:
                break
            ms = sorted(x[2] for x in w)
            rate = (len(w) - 1) / (w[-1][1] - w[0][1]) if w[-1][1] > w[0][1] else float("nan")
            print("| %d-%d | %.2f | %.2f | %.0f |" % (w[0][0], w[-1][0], statistics.median(ms),
                                                     ms[int(0.99 * (len(ms) - 1))], rate))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
