#!/usr/bin/python3
"""Training speed in one table, measured in one run: the sgemm-only ceiling
of the step (bench/ceiling), mnistd's steady-state steps/s for several
builds, the numpy and PyTorch peers at their best thread setting, and the
ratios; every figure is the median of --runs rounds, interleaved so load on a
shared machine hits all of them alike.

mnistd's rate comes from its control socket: the step counter is read once
training has passed --warmup steps and again --seconds later, so start-up,
data loading and the final checkpoint are left out. The peers time their
loop after the same warm-up.

usage: speed.py [--builds DIR[=LABEL],...] [--threads 1,2] [--runs 3]
                [--seconds 4] [--every 1000] [--hidden 500] [--no-peers]

Builds that do not exist are set up: "build" (meson's default here,
debugoptimized), "build-release" (-Dbuildtype=release), "build-plain"
(-Dbuildtype=plain with CFLAGS=-O2, as Debian packages build).
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3"
SETUP = {
    "build": ([], {}),
    "build-release": (["-Dbuildtype=release"], {}),
    "build-plain": (["-Dbuildtype=plain"], {"CFLAGS": "-O2"}),
}


def ensure_build(build):
    path = os.path.join(ROOT, build)
    if not os.path.isdir(path):
        args, env = SETUP.get(os.path.basename(build), ([], {}))
        subprocess.run(["meson", "setup", path] + args, cwd=ROOT, check=True,
                       env=dict(os.environ, **env), stdout=subprocess.DEVNULL)
    subprocess.run(["meson", "compile", "-C", path], check=True, stdout=subprocess.DEVNULL)
    return path


def ceiling(build, threads, hidden):
    out = subprocess.run([os.path.join(build, "bench", "ceiling"), "--threads", str(threads),
                          "--hidden", hidden, "--seconds", "1", "--rounds", "3"],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split("steps_per_sec=")[1].split()[0])


def control(sock_path, request):
    """One request over mnistd's control socket, and its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def status(sock_path):
    return control(sock_path, {"cmd": "status"})


def wait_for_step(proc, work, step, timeout=300):
    """Polls the control socket of the mnistd proc running in work until
    it has trained step steps; returns that status."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit("mnistd exited early: " + open(work + "/mnistd.log").read())
        if time.monotonic() > deadline:
            raise SystemExit("mnistd did not reach step %d" % step)
        try:
            st = status(work + "/control.sock")
            if st["step"] >= step:
                return st
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)


def mnistd_rate(build, threads, hidden, seconds, warmup, every, extra_env=None, logs=None,
                info=None, train=None):
    """Steady-state steps/s of one mnistd run, from two status reads; the
    log's text is appended to logs if given; info (a dict) gets the peak RSS
    (vmhwm_kb, before the final checkpoint) and the newest checkpoint's size
    (ckpt_bytes). train (a dict) adds train.* keys."""
    with tempfile.TemporaryDirectory() as work:
        cfg = {"model": {"hidden": [int(h) for h in hidden.split(",")]},
               "train": dict({"max_steps": 10 ** 9, "threads": threads}, **(train or {})),
               "checkpoint": {"dir": work + "/ckpt", "every_steps": every, "max_to_keep": 2},
               "control": {"socket": work + "/control.sock"},
               "log": {"file": work + "/mnistd.log"}}
        with open(work + "/c.json", "w") as f:
            json.dump(cfg, f)
        env = dict(os.environ, **(extra_env or {}))
        proc = subprocess.Popen([os.path.join(build, "daemon", "mnistd"), "--config",
                                 work + "/c.json"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        try:
            st = wait_for_step(proc, work, warmup)
            t0, s0 = time.monotonic(), st["step"]
            time.sleep(seconds)
            st = status(work + "/control.sock")
            t1, s1 = time.monotonic(), st["step"]
            if info is not None:
                with open("/proc/%d/status" % proc.pid) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            info["vmhwm_kb"] = int(line.split()[1])
                files = [os.path.join(work, "ckpt", n) for n in os.listdir(work + "/ckpt")
                         if n.endswith(".safetensors")]
                if files:
                    info["ckpt_bytes"] = os.path.getsize(max(files, key=os.path.getmtime))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            if logs is not None:
                with open(work + "/mnistd.log") as f:
                    logs.append(f.read())
        return (s1 - s0) / (t1 - t0)


def peer_rate(argv, env):
    out = subprocess.run([PY] + argv, capture_output=True, text=True,
                         env=dict(os.environ, **env))
    if out.returncode != 0:
        return None
    return float(out.stdout.split("steps_per_sec=")[1].split()[0])


def peers(threads, steps, warmup, hidden):
    """{setting: steps/s} for numpy and PyTorch with up to `threads` threads."""
    res = {}
    for t in sorted({1, threads}):
        res["numpy blas=%d" % t] = peer_rate(
            [HERE + "/peer_numpy.py", "--steps", str(steps), "--warmup", str(warmup),
             "--hidden", hidden], {"OPENBLAS_NUM_THREADS": str(t)})
    if hidden == "500":
        for intra in sorted({1, threads}):
            for blas in sorted({1, threads}):
                res["torch intra=%d blas=%d" % (intra, blas)] = peer_rate(
                    [HERE + "/peer_torch.py", "--steps", str(steps), "--warmup", str(warmup),
                     "--threads", str(intra)], {"OPENBLAS_NUM_THREADS": str(blas)})
    return res


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--builds", default="build,build-release,build-plain")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--every", type=int, default=1000, help="checkpoint.every_steps")
    ap.add_argument("--hidden", default="500")
    ap.add_argument("--peer-steps", type=int, default=1500)
    ap.add_argument("--no-peers", action="store_true")
    a = ap.parse_args()
    builds = []
    for spec in a.builds.split(","):
        d, _, label = spec.partition("=")
        builds.append((ensure_build(d), label or os.path.basename(d)))
    threads = [int(t) for t in a.threads.split(",")]
    samples = {}

    def add(key, value):
        samples.setdefault(key, []).append(value)

    for r in range(a.runs):
        for t in threads:
            add(("ceiling", t), ceiling(builds[0][0], t, a.hidden))
            for path, label in builds:
                info = {}
                add((label, t), mnistd_rate(path, t, a.hidden, a.seconds, a.warmup, a.every,
                                            info=info))
                if "vmhwm_kb" in info:
                    add(("rss", label), info["vmhwm_kb"])
            if not a.no_peers:
                for k, v in peers(t, a.peer_steps, a.warmup, a.hidden).items():
                    add((k, t), v)
        print("run %d/%d done, loadavg %s" % (r + 1, a.runs, open("/proc/loadavg").read().split()[0]),
              file=sys.stderr, flush=True)

    peer_keys = sorted({k for k, _ in samples if k.startswith(("numpy", "torch"))})
    best_peer = None
    if peer_keys:
        best = max(((med(samples[(k, t)]), k, t) for k in peer_keys for t in threads
                    if (k, t) in samples and med(samples[(k, t)])), default=None)
        if best:
            best_peer = best
    labels = [label for _, label in builds]
    print("hidden=%s batch=100 every_steps=%d runs=%d (median steps/s)" % (a.hidden, a.every,
                                                                          a.runs))
    # "best peer here" is the best peer at the row's thread count; the /peer
    # ratios divide by the best peer at any thread count (the target).
    head = ["threads", "ceiling"] + labels + ["best peer here"] + \
        ["%s/ceil" % l for l in labels] + ["%s/best peer" % l for l in labels]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for t in threads:
        c = med(samples[("ceiling", t)])
        ms = [med(samples[(l, t)]) for l in labels]
        row_peers = [(med(samples[(k, t)]), k) for k in peer_keys if (k, t) in samples]
        row_peers = [p for p in row_peers if p[0]]
        bp = max(row_peers) if row_peers else None
        cells = ["%d" % t, "%.0f" % c] + ["%.0f" % m for m in ms]
        cells.append("%.0f (%s)" % bp if bp else "n/a")
        cells += ["%.2f" % (m / c) for m in ms]
        cells += ["%.2f" % (m / best_peer[0]) if best_peer else "n/a" for m in ms]
        print("| " + " | ".join(cells) + " |")
    if peer_keys:
        print("\npeers (median steps/s):")
        for k in peer_keys:
            for t in threads:
                if (k, t) in samples and med(samples[(k, t)]):
                    # Each row measures its own settings: a setting can appear in both.
                    print("  %-24s %7.0f  (row threads=%d)" % (k, med(samples[(k, t)]), t))
        if best_peer:
            print("best peer: %s at %.0f steps/s (ratios /peer use it)" % (best_peer[1],
                                                                      best_peer[0]))
    data_mb = 60000 * (784 + 1) / 2 ** 20
    sizes = [784] + [int(h) for h in a.hidden.split(",")] + [10]
    param_mb = sum(i * o + o for i, o in zip(sizes, sizes[1:])) * 4 / 2 ** 20
    print("peak RSS of mnistd (MiB, max over runs): %s; bound 1.2 x (%.1f data + 4 x %.2f params)"
          " + 16 = %.1f" % (", ".join("%s %.1f" % (l, max(samples[("rss", l)]) / 1024)
                                      for l in labels if ("rss", l) in samples),
                           data_mb, param_mb, 1.2 * (data_mb + 4 * param_mb) + 16))
    print("loadavg after: %s" % open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    sys.exit(main())
