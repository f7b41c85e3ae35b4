#!/usr/bin/python3
"""Training throughput of mnistd against the PyTorch peer (bench/peer_torch.py)
on the default recipe, both with the same thread count, in one run so the
ratio is meaningful on a noisy machine. Prints a table.

usage: train_speed.py [--build DIR] [--steps N] [--threads T ...]
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def ts(line):
    return datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")


def mnistd_rate(build, steps, threads):
    with tempfile.TemporaryDirectory() as work:
        cfg = {"train": {"max_steps": steps, "threads": threads},
               "checkpoint": {"dir": work + "/ckpt", "every_steps": 1000},
               "control": {"socket": work + "/control.sock"}}
        with open(work + "/c.json", "w") as f:
            json.dump(cfg, f)
        r = subprocess.run([build + "/daemon/mnistd", "--config", work + "/c.json"],
                           capture_output=True, text=True, check=True)
        out = (r.stdout + r.stderr).splitlines()
        lines = [l for l in out if " ready " in l or " training finished " in l]
        if len(lines) != 2:
            raise SystemExit("unexpected mnistd output:\n" + "\n".join(out))
        secs = (ts(lines[1]) - ts(lines[0])).total_seconds()
        return steps / secs


def torch_rate(steps, threads):
    out = subprocess.run(["/usr/bin/python3", HERE + "/peer_torch.py", "--steps", str(steps),
                          "--threads", str(threads)], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    fields = dict(kv.split("=") for kv in out.stdout.split()[1:])
    return float(fields["steps_per_sec"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build-release"))
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    print("%-8s %-8s %-14s %-14s %-8s" % ("threads", "steps", "mnistd st/s", "pytorch st/s", "ratio"))
    for t in a.threads:
        m = mnistd_rate(a.build, a.steps, t)
        p = torch_rate(a.steps, t)
        print("%-8d %-8d %-14.0f %-14s %-8s" % (t, a.steps, m, "%.0f" % p if p else "n/a",
                                                 "%.2f" % (m / p) if p else "n/a"))


if __name__ == "__main__":
    sys.exit(main())
