"""SIGKILL crash test: kill mnistd at random moments, over and over, and
check after every kill that the checkpoint directory holds nothing a reader
could trip over and that the next start resumes from the newest checkpoint.

Used by test_hardening.py (50 kills in the suite) and, as a long run, from
the command line (see tests/RELIABILITY.md and bench/README.md):

    python3 tests/e2e/crashtest.py --kills 1000 [--build build] [--seed N]

Checked after each kill:
- every file under a final name (<prefix>-<step>.safetensors) is complete:
  its header parses and its CRC-32 matches (the writer publishes by rename);
- checkpoint.json, if present, is valid JSON whose "latest" exists;
- the lock of the killed process is gone (the next start is not refused);
- the next start resumes from the newest checkpoint on disk (its step in
  the "resumed" line), so the step never goes backwards.
At the end, mnistctl verify passes on every file and a clean run finishes.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnlib  # noqa: E402

FINAL = re.compile(r"^model\.ckpt-(\d+)\.safetensors$")


def check_file(path):
    """None if the file is a complete checkpoint, else what is wrong."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        return "shorter than 8 bytes"
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        return "header length beyond the file"
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except ValueError as e:
        return "header is not JSON: %s" % e
    crc = header.get("__metadata__", {}).get("data_crc32")
    if crc is None or int(crc, 16) != zlib.crc32(blob[8 + n:]):
        return "checksum mismatch"
    return None


def check_dir(d):
    """Returns (newest step, list of problems)."""
    problems, steps = [], []
    for name in os.listdir(d):
        m = FINAL.match(name)
        if not m:
            continue
        try:
            why = check_file(os.path.join(d, name))
        except FileNotFoundError:
            continue
        if why:
            problems.append("%s: %s" % (name, why))
        else:
            steps.append(int(m.group(1)))
    index = os.path.join(d, "checkpoint.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                latest = json.load(f)["latest"]
            if not os.path.exists(os.path.join(d, latest)):
                problems.append("checkpoint.json names %s, which does not exist" % latest)
        except (ValueError, KeyError) as e:
            problems.append("checkpoint.json is not a valid index: %s" % e)
    return (max(steps) if steps else -1), problems


def run(kills, work, build_env=None, seed=1, log=None, max_delay=0.3):
    """Kills mnistd `kills` times in work; returns a summary dict. Raises
    AssertionError on the first broken invariant."""
    rng = random.Random(seed)
    data = mnlib.make_dataset(os.path.join(work, "data"), n_train=600, n_test=100)
    cfg = mnlib.base_config(work, data, train={"max_steps": 10 ** 9},
                            checkpoint={"every_steps": 1, "max_to_keep": 3})
    path = mnlib.write_config(os.path.join(work, "mnistd.json"), cfg)
    d = cfg["checkpoint"]["dir"]
    newest, started = -1, time.monotonic()
    for i in range(kills):
        out = os.path.join(work, "run.log")
        with open(out, "wb") as f:
            p = subprocess.Popen([mnlib.MNISTD, "--config", path], stdout=f, stderr=subprocess.STDOUT,
                                 env=build_env)
        try:
            # Killed at a random moment once it trains (publishing every step).
            mnlib.wait_for(lambda: p.poll() is not None or " ready " in mnlib.read_text(out),
                           120, "mnistd to start (kill %d)" % i)
            if p.poll() is not None:
                raise AssertionError("mnistd exited with %s before kill %d:\n%s"
                                     % (p.returncode, i, mnlib.read_text(out)))
            time.sleep(rng.uniform(0, max_delay * mnlib.SLOW))  # fault injection, not synchronisation
            p.send_signal(signal.SIGKILL)
            p.wait()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        text = mnlib.read_text(out)
        m = re.search(r"resumed file=\S+ step=(\d+)", text)
        if newest >= 0 and (not m or int(m.group(1)) != newest):
            raise AssertionError("kill %d: expected a resume from step %d:\n%s" % (i, newest, text))
        newest, problems = check_dir(d)
        if problems:
            raise AssertionError("kill %d left: %s" % (i, "; ".join(problems)))
        if log:
            log(i + 1, "kill %d/%d: newest step %d" % (i + 1, kills, newest))
    # Every file verifies with the real reader, and a clean run still finishes.
    names = sorted(n for n in os.listdir(d) if FINAL.match(n))
    r = subprocess.run([mnlib.MNISTCTL, "verify"] + [os.path.join(d, n) for n in names],
                       capture_output=True, text=True, env=build_env)
    if r.returncode != 0:
        raise AssertionError("mnistctl verify after the kills:\n%s%s" % (r.stdout, r.stderr))
    cfg["train"]["max_steps"] = newest + 5
    mnlib.write_config(path, cfg)
    r = subprocess.run([mnlib.MNISTD, "--config", path], capture_output=True, text=True, env=build_env,
                       timeout=300 * mnlib.SLOW)
    if r.returncode != 0:
        raise AssertionError("a clean run after the kills failed:\n%s%s" % (r.stdout, r.stderr))
    return {"kills": kills, "newest_step": newest, "seconds": round(time.monotonic() - started, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--build", default=None, help="build directory (default: $MN_BUILD_ROOT or build)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if a.build:
        root = os.path.abspath(a.build)
        mnlib.MNISTD = os.path.join(root, "daemon", "mnistd")
        mnlib.MNISTCTL = os.path.join(root, "tools", "mnistctl")
    work = tempfile.mkdtemp(prefix="mn-crash-")
    try:
        every = 1 if a.kills <= 100 else 100
        summary = run(a.kills, work, seed=a.seed,
                      log=lambda i, s: print(s, file=sys.stderr) if i % every == 0 else None)
        print(json.dumps(summary))
    finally:
        if a.keep:
            print("work dir kept:", work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
