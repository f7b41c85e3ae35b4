"""Helpers for mnistd's end-to-end tests: tiny IDX data sets, configs,
real processes, safetensors parsing, and waiting with deadlines (never
sleeping as synchronisation)."""

import gzip
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import zlib

BUILD = os.environ.get("MN_BUILD_ROOT", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
MNISTD = os.environ.get("MN_MNISTD", os.path.join(BUILD, "daemon", "mnistd"))
MNIST_EVAL = os.environ.get("MN_MNIST_EVAL", os.path.join(BUILD, "evaluator", "mnist-eval"))
MNISTCTL = os.environ.get("MN_MNISTCTL", os.path.join(BUILD, "tools", "mnistctl"))

# Sanitizer builds are slower; deadlines scale with this.
SLOW = float(os.environ.get("MN_TEST_SLOWDOWN", "1"))

# The programs started here take their signal dispositions from this process:
# under nohup, or as a background job of a shell without job control, a stop
# signal would arrive ignored, and the tests of what it does would fail.
for _sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
    if signal.getsignal(_sig) == signal.SIG_IGN:
        signal.signal(_sig, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT})


def deadline(seconds):
    return time.monotonic() + seconds * SLOW


def wait_for(pred, timeout=30, what="condition", interval=0.01):
    """Polls pred() until it returns a true value or the deadline passes."""
    end = deadline(timeout)
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout * SLOW, what))
        time.sleep(interval)


def write_idx(path, magic, dims, data, gz=True):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + bytes(data))


def make_dataset(directory, n_train=1200, n_test=300, rows=8, cols=8, classes=10, seed=1, gz=True):
    """Writes a learnable synthetic IDX data set: each class is a fixed random
    prototype image plus noise. Returns the directory."""
    rng = random.Random(seed)
    dim = rows * cols
    protos = [[rng.randrange(256) for _ in range(dim)] for _ in range(classes)]

    def sample(n):
        images, labels = bytearray(), bytearray()
        for _ in range(n):
            c = rng.randrange(classes)
            labels.append(c)
            images.extend(min(255, max(0, p + rng.randrange(-60, 61))) for p in protos[c])
        return images, labels

    os.makedirs(directory, exist_ok=True)
    sfx = ".gz" if gz else ""
    for name, n in (("train", n_train), ("t10k", n_test)):
        images, labels = sample(n)
        write_idx(os.path.join(directory, "%s-images-idx3-ubyte%s" % (name, sfx)), 2051, (n, rows, cols), images, gz)
        write_idx(os.path.join(directory, "%s-labels-idx1-ubyte%s" % (name, sfx)), 2049, (n,), labels, gz)
    return directory


def base_config(work, data_dir, **sections):
    """A small, fast configuration rooted in the test's work directory."""
    cfg = {
        "data": {"dir": data_dir, "validation_size": 200},
        "model": {"hidden": [32], "seed": 7},
        "train": {"batch_size": 20, "learning_rate": 0.1, "max_steps": 100, "threads": 1},
        # Tiny models train faster than checkpoints are written: write_all keeps
        # every scheduled checkpoint, so tests can name the steps they expect.
        "checkpoint": {"dir": os.path.join(work, "ckpt"), "every_steps": 20, "max_to_keep": 5,
                       "write_all": True},
        "control": {"socket": os.path.join(work, "control.sock")},
        # best_dir in the work directory: the default is the system's /var/lib/mnist-eval.
        "eval": {"watch": "auto", "best_dir": os.path.join(work, "best")},
        "log": {"level": "info", "format": "text"},
    }
    for sec, vals in sections.items():
        if vals is None:
            cfg.pop(sec, None)
        else:
            cfg.setdefault(sec, {}).update(vals)
    return cfg


def write_config(path, cfg):
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def read_safetensors(path):
    """Parses a safetensors file strictly enough for tests: returns
    (header dict, data bytes)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    return header, blob[8 + n :], n


def tensor_bytes(path, name):
    header, data, _ = read_safetensors(path)
    b, e = header[name]["data_offsets"]
    return data[b:e]


def tensor_floats(path, name):
    raw = tensor_bytes(path, name)
    return struct.unpack("<%df" % (len(raw) // 4), raw)


def ckpt_steps(ckpt_dir, prefix="model.ckpt"):
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return []
    steps = []
    for n in names:
        if n.startswith(prefix + "-") and n.endswith(".safetensors"):
            mid = n[len(prefix) + 1 : -len(".safetensors")]
            if mid.isdigit():
                steps.append(int(mid))
    return sorted(steps)


class Proc:
    """A real program started as a separate process, its output in a file."""

    def __init__(self, argv, log_path, env=None):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        e = dict(os.environ)
        if env:
            e.update(env)
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=e)

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_output(self, text, timeout=30):
        return wait_for(lambda: text in self.output(), timeout, "%r in %s" % (text, self.log_path))

    def signal(self, sig):
        self.p.send_signal(sig)

    def wait(self, timeout=60):
        try:
            return self.p.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError("process %s did not exit in time; output:\n%s" % (self.p.args, self.output()))

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()


class TestCase(unittest.TestCase):
    """Gives each test a work directory, a data set and process cleanup."""

    dataset_kwargs = {}

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="mn-e2e-")
        self.data = make_dataset(os.path.join(self.work, "data"), **self.dataset_kwargs)
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            p.stop()
        if os.environ.get("MN_KEEP_WORK"):
            print("work dir kept:", self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def config(self, name="mnistd.json", **sections):
        cfg = base_config(self.work, self.data, **sections)
        return write_config(os.path.join(self.work, name), cfg), cfg

    def start(self, argv, name, env=None):
        p = Proc(argv, os.path.join(self.work, name + ".log"), env)
        self.procs.append(p)
        return p

    def small_fs(self, size="1m"):
        """A small tmpfs of its own (root only), for a full disk; unmounted at cleanup."""
        if os.geteuid() != 0:
            self.skipTest("mounting a small tmpfs needs root")
        mnt = tempfile.mkdtemp(prefix="mn-small-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            os.rmdir(mnt)
            self.skipTest("cannot mount a tmpfs here: " + r.stderr.strip())

        def unmount():
            subprocess.run(["umount", "-l", mnt])
            os.rmdir(mnt)

        self.addCleanup(unmount)
        return mnt

    def run_prog(self, argv, timeout=60, env=None):
        e = dict(os.environ)
        if env:
            e.update(env)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout * SLOW, env=e)


def request(sock, cmd, timeout=30):
    """One request on mnistd's control socket; returns its answer, parsed."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout * SLOW)
        s.connect(sock)
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError("%s closed the connection; got %r" % (sock, buf))
            buf += chunk
    finally:
        s.close()
    return json.loads(buf.split(b"\n", 1)[0])


def wait_past_step(sock, step, timeout=60):
    """Waits until mnistd has trained beyond step (its status on sock); returns
    that status. A save or a stop right after one at `step` would otherwise
    find that very state already durable and write nothing, whenever the
    training thread happened not to be scheduled in between. A socket not
    listening yet is waited for too."""
    def past():
        try:
            s = request(sock, "status")
        except (OSError, EOFError):  # not listening yet
            return None
        return s if s["step"] > step else None

    return wait_for(past, timeout, "training past step %d" % step)


def fill(path):
    """Appends to path until its file system is full (a full disk for a test on
    a small tmpfs). Called again, it takes whatever room was freed since."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (b"\0" * 4096, b"\0"):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
    finally:
        os.close(fd)


def read_text(path):
    """A text file's contents ("" if it does not exist yet); bad UTF-8 is replaced."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def read_jsonl(path):
    """The complete lines of a JSON-lines file (a metrics file), parsed; [] if there is none."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1]]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def build_preload(test, name):
    """Compiles tests/e2e/<name>.c into a library to LD_PRELOAD, in
    test.work, and returns its path; skips the test without a C compiler."""
    cc = shutil.which("cc")
    if not cc:
        test.skipTest("no C compiler")
    so = os.path.join(test.work, name + ".so")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".c")
    r = subprocess.run([cc, "-shared", "-fPIC", "-o", so, src, "-ldl"], capture_output=True, text=True)
    test.assertEqual(r.returncode, 0, r.stderr)
    return so


def gate(test, where):
    """tests/e2e/gate.c, built for test: a program started with the returned
    environment stops at `where` ("fsync", "open:SUFFIX", "rename:SUFFIX") while the gate file
    exists, and creates the held file when it gets there. Returns (env,
    gate, held)."""
    so = build_preload(test, "gate")
    path = os.path.join(test.work, "gate")
    # The sanitizer's runtime is not first in a preloaded process's libraries; that is fine here.
    env = {"LD_PRELOAD": so, "MN_GATE": path, "MN_GATE_AT": where,
           "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
    return env, path, path + ".held"
