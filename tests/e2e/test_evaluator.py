"""End-to-end tests of the real mnist-eval binary, with the real mnistd as the
trainer: following a directory that does not exist yet, bursts, bad files,
checkpoints from other writers, poll mode, --once, SIGHUP and SIGTERM."""

import gzip
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402
from mnlib import read_text  # noqa: E402
from mnlib import MNISTD, MNIST_EVAL, ckpt_steps, read_safetensors  # noqa: E402

LINE = re.compile(r" info evaluation step=(\d+) accuracy=(\d\.\d{4}) loss=(\d+\.\d{4}) ema=(yes|no) "
                  r"checkpoint=(\S+) latency_ms=(\d+\.\d) images=(\d+)")
VALIDATION = 200  # mnlib.base_config's data.validation_size


def ckpt_name(step):
    return "model.ckpt-%d.safetensors" % step


def encode_safetensors(tensors, meta):
    """tensors: [(name, dtype, shape, raw bytes)] in data order. Adds data_crc32."""
    header, data = {}, bytearray()
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    meta = dict(meta, data_crc32="%08x" % zlib.crc32(bytes(data)))
    header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(data)


def restep(src, step):
    """The bytes of checkpoint src re-labelled as global step `step`
    (metadata, global_step tensor and checksum), so copies are consistent."""
    header, data, _ = read_safetensors(src)
    meta = header.pop("__metadata__")
    data = bytearray(data)
    b, e = header["global_step"]["data_offsets"]
    data[b:e] = struct.pack("<q", step)
    meta["global_step"] = str(step)
    order = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    tensors = [(n, t["dtype"], t["shape"], bytes(data[t["data_offsets"][0]:t["data_offsets"][1]])) for n, t in order]
    return encode_safetensors(tensors, meta)


def publish(directory, name, blob):
    """Atomic publish the way the contract says any writer must: dot-file, then rename."""
    tmp = os.path.join(directory, "." + name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
    os.rename(tmp, os.path.join(directory, name))


def read_idx(path):
    with gzip.open(path, "rb") as f:
        blob = f.read()
    ndim = blob[3]
    dims = struct.unpack(">%dI" % ndim, blob[4:4 + 4 * ndim])
    return dims, blob[4 + 4 * ndim:]


metrics = mnlib.read_jsonl


class EvaluatorTest(mnlib.TestCase):
    def setUp(self):
        super().setUp()
        self.metrics_path = os.path.join(self.work, "metrics.jsonl")

    def eval_config(self, ckpt_dir, name="eval.json", **sections):
        sections["eval"] = dict({"metrics_file": self.metrics_path}, **sections.get("eval", {}))
        sections["checkpoint"] = dict({"dir": ckpt_dir, "max_to_keep": 0}, **sections.get("checkpoint", {}))
        return self.config(name, **sections)

    def start_eval(self, cfg_path, name="eval"):
        return self.start([MNIST_EVAL, "--config", cfg_path], name)

    def wait_metric(self, step, path=None, timeout=60):
        path = path or self.metrics_path
        return mnlib.wait_for(lambda: [m for m in metrics(path) if m["step"] == step], timeout,
                              "step %d in %s" % (step, path))[0]

    def real_checkpoints(self, steps=40, every=20):
        """Trains briefly with mnistd and returns the directory of its checkpoints."""
        d = os.path.join(self.work, "source")
        path, _ = self.config("source.json", train={"max_steps": steps},
                              checkpoint={"dir": d, "every_steps": every, "max_to_keep": 0})
        p = self.start([MNISTD, "--config", path], "source")
        self.assertEqual(p.wait(120), 0, p.output())
        return d

    def restepper(self):
        """blob(step): the bytes of a real checkpoint, as if written at step."""
        src = os.path.join(self.real_checkpoints(), ckpt_name(40))
        return lambda step: restep(src, step)

    def once(self, ckpt_dir, name, use_ema=True, data=None):
        """Runs --once on ckpt_dir; returns (process result, metrics lines)."""
        m = os.path.join(self.work, name + ".jsonl")
        sections = {"checkpoint": {"dir": ckpt_dir}, "eval": {"metrics_file": m, "use_ema": use_ema}}
        if data:
            sections["data"] = {"dir": data, "validation_size": VALIDATION}
        path, _ = self.config(name + ".json", **sections)
        r = self.run_prog([MNIST_EVAL, "--config", path, "--once"])
        return r, metrics(m)

    def test_follows_trainer_from_missing_directory(self):
        d = os.path.join(self.work, "not", "yet", "ckpt")
        path, _ = self.eval_config(d, train={"max_steps": 120}, checkpoint={"every_steps": 20})
        ev = self.start_eval(path)
        ev.wait_output("waiting for the checkpoint directory")
        self.assertFalse(os.path.exists(os.path.join(self.work, "not")))
        tr = self.start([MNISTD, "--config", path], "mnistd")
        self.assertEqual(tr.wait(120), 0, tr.output())
        self.assertEqual(ckpt_steps(d), [20, 40, 60, 80, 100, 120])
        self.wait_metric(120)
        ev.wait_output("checkpoint=model.ckpt-120.safetensors")
        ms = metrics(self.metrics_path)
        steps = [m["step"] for m in ms]
        self.assertEqual(steps, sorted(set(steps)), "steps must strictly increase")
        self.assertTrue(set(steps) <= {20, 40, 60, 80, 100, 120})
        for m in ms:
            self.assertEqual(set(m), {"step", "accuracy", "loss", "checkpoint", "ema", "time", "latency_ms", "images",
                                      "eval_ms", "notify_ms", "open_ms", "read_ms"})
            self.assertEqual(m["checkpoint"], ckpt_name(m["step"]))
            self.assertIs(m["ema"], True)
            self.assertEqual(m["images"], VALIDATION)
            self.assertTrue(0 <= m["accuracy"] <= 1)
            self.assertGreaterEqual(m["latency_ms"], 0)
            self.assertGreater(m["eval_ms"], 0)
            self.assertGreater(m["read_ms"], 0)
            # The parts never add up to more than the whole (a ms for ctime's coarse clock).
            parts = m["notify_ms"] + m["open_ms"] + m["read_ms"] + m["eval_ms"]
            self.assertLessEqual(parts, m["latency_ms"] + 15)
            self.assertRegex(m["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        # The synthetic data is easy: the last model must have learnt it.
        self.assertGreater(ms[-1]["accuracy"], 0.9)
        # Each logged line matches its metrics record.
        lines = {int(m.group(1)): m.groups() for m in LINE.finditer(ev.output())}
        self.assertEqual(sorted(lines), steps)
        for m in ms:
            g = lines[m["step"]]
            self.assertEqual(g[1], "%.4f" % m["accuracy"])
            self.assertEqual(g[2], "%.4f" % m["loss"])
            self.assertEqual((g[3], g[4], int(g[6])), ("yes", m["checkpoint"], VALIDATION))
        # Equal to a direct evaluation of the same files, one at a time.
        for m in ms:
            single = os.path.join(self.work, "single-%d" % m["step"])
            os.makedirs(single)
            shutil.copy(os.path.join(d, m["checkpoint"]), single)
            r, direct = self.once(single, "once-%d" % m["step"])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(len(direct), 1)
            self.assertEqual((direct[0]["step"], direct[0]["accuracy"], direct[0]["loss"]),
                             (m["step"], m["accuracy"], m["loss"]))
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())

    def test_burst_collapses_and_never_goes_back(self):
        blob = self.restepper()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        # A restart finds several checkpoints: only the newest is evaluated.
        for s in (100, 200, 300):
            publish(d, ckpt_name(s), blob(s))
        path, _ = self.eval_config(d)
        ev = self.start_eval(path)
        self.wait_metric(300)
        # A burst: prepared as dot-files, then renamed as fast as possible.
        for s in range(310, 410, 10):
            with open(os.path.join(d, ".burst-%d" % s), "wb") as f:
                f.write(blob(s))
        for s in range(310, 410, 10):
            os.rename(os.path.join(d, ".burst-%d" % s), os.path.join(d, ckpt_name(s)))
        self.wait_metric(400)
        # Older than the last evaluated, or the same step again: never evaluated.
        publish(d, ckpt_name(250), blob(250))
        publish(d, ckpt_name(400), blob(400))
        publish(d, ckpt_name(500), blob(500))
        self.wait_metric(500)
        steps = [m["step"] for m in metrics(self.metrics_path)]
        self.assertEqual(steps[0], 300)
        self.assertEqual(steps, sorted(set(steps)))
        self.assertNotIn(250, steps)
        self.assertLess(len([s for s in steps if 310 <= s <= 400]), 10, "a burst must collapse: %s" % steps)
        self.assertEqual(steps[-2:], [400, 500])
        self.assertNotIn("global_step is", ev.output())

    def test_garbage_is_logged_and_the_next_is_evaluated(self):
        src = self.real_checkpoints()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d)
        ev = self.start_eval(path)
        ev.wait_output("method=events")
        # Names that are not final checkpoint names are not even looked at.
        publish(d, "notes.txt", b"garbage")
        publish(d, "model.ckpt-07.safetensors", b"garbage")  # leading zero: not a final name
        with open(os.path.join(d, ".model.ckpt-90.safetensors.tmp"), "wb") as f:
            f.write(b"half a file")
        publish(d, ckpt_name(50), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
        ev.wait_output("invalid checkpoint checkpoint=model.ckpt-50.safetensors")
        # A file that is valid safetensors but whose checksum is wrong.
        good = bytearray(restep(os.path.join(src, ckpt_name(40)), 55))
        good[-1] ^= 0xFF
        publish(d, ckpt_name(55), bytes(good))
        ev.wait_output("invalid checkpoint checkpoint=model.ckpt-55.safetensors")
        publish(d, ckpt_name(60), restep(os.path.join(src, ckpt_name(40)), 60))
        m = self.wait_metric(60)
        out = ev.output()
        self.assertIn("checkpoint=model.ckpt-60.safetensors", out)
        self.assertRegex(out, r"model\.ckpt-50\.safetensors.*(JSON|json)")
        self.assertRegex(out, r"model\.ckpt-55\.safetensors.*(crc|CRC|checksum)")
        for other in ("notes.txt", "model.ckpt-07", "model.ckpt-90"):
            self.assertNotIn(other, out)
        self.assertEqual([x["step"] for x in metrics(self.metrics_path)], [60])
        self.assertEqual(m["checkpoint"], ckpt_name(60))
        # A bad file is reported once, not on every later look at the directory,
        # but a valid file replacing it under the same name is evaluated.
        publish(d, ckpt_name(65), b"garbage")
        ev.wait_output("invalid checkpoint checkpoint=model.ckpt-65.safetensors")
        publish(d, ckpt_name(65), restep(os.path.join(src, ckpt_name(40)), 65))
        self.wait_metric(65)
        out = ev.output()
        self.assertEqual(out.count("checkpoint=model.ckpt-50.safetensors"), 1)
        self.assertEqual(out.count("invalid checkpoint checkpoint=model.ckpt-65.safetensors"), 1)
        self.assertEqual([x["step"] for x in metrics(self.metrics_path)], [60, 65])

    def dir_with_foreign_checkpoint(self, step):
        """A fresh checkpoint directory holding one foreign checkpoint; returns
        (directory, its expected accuracy)."""
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        blob, accuracy, _ = self.foreign_checkpoint(step)
        publish(d, ckpt_name(step), blob)
        return d, accuracy

    def foreign_checkpoint(self, step, input_dim=64):
        """A checkpoint written here, not by mnistd: a linear nearest-class-mean
        model as the EMA weights, all-zero raw weights. Returns (blob, the
        validation accuracy and loss of the EMA model computed here)."""
        dims, images = read_idx(os.path.join(self.data, "train-images-idx3-ubyte.gz"))
        _, labels = read_idx(os.path.join(self.data, "train-labels-idx1-ubyte.gz"))
        dim = dims[1] * dims[2]
        self.assertEqual(dim, input_dim)
        x = [[images[i * dim + j] / 255.0 for j in range(dim)] for i in range(dims[0])]
        means = []
        for c in range(10):
            rows = [x[i] for i in range(VALIDATION, dims[0]) if labels[i] == c]
            means.append([sum(r[j] for r in rows) / len(rows) for j in range(dim)])
        f32 = lambda v: struct.unpack("<f", struct.pack("<f", v))[0]  # noqa: E731
        w = [[f32(means[c][j]) for c in range(10)] for j in range(dim)]
        b = [f32(-sum(v * v for v in means[c]) / 2) for c in range(10)]
        correct, loss, near_ties = 0, 0.0, 0
        for i in range(VALIDATION):
            z = [sum(x[i][j] * w[j][c] for j in range(dim)) + b[c] for c in range(10)]
            top = sorted(z, reverse=True)
            near_ties += top[0] - top[1] < 1e-4
            correct += max(range(10), key=lambda c: z[c]) == labels[i]
            mx = max(z)
            loss += mx + math.log(sum(math.exp(v - mx) for v in z)) - z[labels[i]]
        self.assertEqual(near_ties, 0)
        pack = lambda vals: struct.pack("<%df" % len(vals), *vals)  # noqa: E731
        flat_w = pack([w[j][c] for j in range(dim) for c in range(10)])
        tensors = [
            ("layer1/weights", "F32", [dim, 10], bytes(len(flat_w))),
            ("layer1/biases", "F32", [10], bytes(40)),
            ("layer1/weights/ExponentialMovingAverage", "F32", [dim, 10], flat_w),
            ("layer1/biases/ExponentialMovingAverage", "F32", [10], pack(b)),
            ("global_step", "I64", [], struct.pack("<q", step)),
        ]
        meta = {"format": "mnistd.checkpoint.v1", "global_step": str(step),
                "architecture": json.dumps({"input": dim, "hidden": [], "output": 10, "activation": "relu"}),
                "created": "2026-01-01T00:00:00Z"}
        return encode_safetensors(tensors, meta), correct / VALIDATION, loss / VALIDATION

    def test_published_files_are_opened_without_listing(self):
        """A look for a file an event named opens it without listing the
        directory, so in a keep-all directory of any size a look costs the
        same; deletions (retention) start no look at all."""
        strace = shutil.which("strace")
        if not strace:
            self.skipTest("needs strace (scripts/deps.sh installs it)")
        src = self.real_checkpoints(steps=20, every=20)
        base = os.path.join(src, ckpt_name(20))
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        for step in range(1, 201):
            publish(d, ckpt_name(step), restep(base, step))
        # The watch's safety net for lost events lists the directory at a tick
        # (eval.poll_interval_ms) that finds it changed: on a slow machine the
        # publishes below spanned one or more ticks (a listing each). Not the
        # looks this test counts; an hour's interval keeps ticks out of it.
        path, _ = self.eval_config(d, eval={"poll_interval_ms": 3600000})
        trace = os.path.join(self.work, "trace")
        # LeakSanitizer cannot run under ptrace.
        env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"}
        ev = self.start([strace, "-f", "-qq", "-e", "trace=getdents64", "-o", trace, MNIST_EVAL,
                         "--config", path], "eval", env)
        self.wait_metric(200)
        for step in range(201, 231):
            publish(d, ckpt_name(step), restep(base, step))
            self.wait_metric(step)
        # Retention deleting old files: no look, nothing evaluated twice.
        for step in range(1, 101):
            os.unlink(os.path.join(d, ckpt_name(step)))
        publish(d, ckpt_name(231), restep(base, 231))
        self.wait_metric(231)
        # strace does not pass SIGTERM on: stop its child, whose status it returns.
        with open("/proc/%d/task/%d/children" % (ev.p.pid, ev.p.pid)) as f:
            os.kill(int(f.read().split()[0]), signal.SIGTERM)
        self.assertEqual(ev.wait(60), 0, ev.output())
        self.assertEqual([m["step"] for m in metrics(self.metrics_path)], [200] + list(range(201, 232)))
        with open(trace) as f:
            listings = [line for line in f if "getdents64(" in line]
        # The first look lists the directory (a few calls for 200 names);
        # the 31 looks after it used to list it each time.
        self.assertLess(len(listings), 10, "".join(listings))

    def test_checkpoint_from_another_writer(self):
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d)
        ev = self.start_eval(path)
        ev.wait_output("method=events")
        blob, accuracy, loss = self.foreign_checkpoint(7)
        self.assertGreater(accuracy, 0.9)
        publish(d, ckpt_name(7), blob)
        m = self.wait_metric(7)
        self.assertEqual(m["accuracy"], accuracy)
        self.assertAlmostEqual(m["loss"], loss, delta=1e-4 * loss)
        self.assertIs(m["ema"], True)
        # eval.use_ema false restores the raw (all-zero) weights: every logit
        # ties, class 0 wins, the loss is ln 10.
        _, labels = read_idx(os.path.join(self.data, "train-labels-idx1-ubyte.gz"))
        r, raw = self.once(d, "raw", use_ema=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("ema=no", r.stdout)
        self.assertEqual(raw[0]["accuracy"], labels[:VALIDATION].count(0) / VALIDATION)
        self.assertAlmostEqual(raw[0]["loss"], math.log(10), places=5)
        self.assertIs(raw[0]["ema"], False)

    def test_input_size_mismatch_is_refused(self):
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        blob, _, _ = self.foreign_checkpoint(3)
        publish(d, ckpt_name(3), blob)
        other = mnlib.make_dataset(os.path.join(self.work, "data10"), n_train=400, n_test=10, rows=10, cols=10)
        r, ms = self.once(d, "mismatch", data=other)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(ms, [])
        out = r.stdout + r.stderr
        self.assertIn("model.ckpt-3.safetensors", out)
        self.assertIn("64 inputs", out)
        self.assertIn("100 pixels", out)

    def test_poll_mode(self):
        src = self.real_checkpoints()
        d = os.path.join(self.work, "ckpt")
        path, _ = self.eval_config(d, eval={"watch": "poll", "poll_interval_ms": 50})
        ev = self.start_eval(path)
        ev.wait_output("waiting for the checkpoint directory")
        os.makedirs(d)
        ev.wait_output("method=poll")
        self.assertIn("interval_ms=50", ev.output())
        for s in (10, 20):
            publish(d, ckpt_name(s), restep(os.path.join(src, ckpt_name(40)), s))
            self.wait_metric(s)
        self.assertNotIn("method=events", ev.output())
        # A removed directory is waited for again, then followed again.
        shutil.rmtree(d)
        ev.wait_output("checkpoint directory gone")
        os.makedirs(d)
        publish(d, ckpt_name(30), restep(os.path.join(src, ckpt_name(40)), 30))
        self.wait_metric(30)
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())

    def test_auto_polls_on_fuse(self):
        # inotify on a FUSE mount misses writes that do not go through it (as
        # NFS misses other clients'): bindfs shows a directory written behind its back.
        bindfs, fusermount = shutil.which("bindfs"), shutil.which("fusermount")
        if not bindfs or not fusermount or os.geteuid() != 0:
            self.skipTest("needs bindfs (scripts/deps.sh installs it) and root")
        src = self.real_checkpoints()
        real, mnt = os.path.join(self.work, "real"), os.path.join(self.work, "mnt")
        os.makedirs(real)
        os.makedirs(mnt)
        r = subprocess.run([bindfs, real, mnt], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("cannot mount FUSE here: " + r.stderr.strip())
        try:
            path, _ = self.eval_config(mnt, eval={"watch": "auto", "poll_interval_ms": 50})
            ev = self.start_eval(path)
            ev.wait_output("method=poll")
            self.assertIn("reason=fuse", ev.output())
            publish(real, ckpt_name(10), restep(os.path.join(src, ckpt_name(40)), 10))
            self.assertEqual(self.wait_metric(10)["checkpoint"], ckpt_name(10))
            ev.signal(signal.SIGTERM)
            self.assertEqual(ev.wait(30), 0, ev.output())
        finally:
            subprocess.run([fusermount, "-u", "-z", mnt])

    def test_directory_replaced_under_events(self):
        src = self.real_checkpoints()
        # A dot-name, so the directory's own events are not mistaken for temporaries'.
        d = os.path.join(self.work, ".ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d)
        ev = self.start_eval(path)
        publish(d, ckpt_name(10), restep(os.path.join(src, ckpt_name(40)), 10))
        self.wait_metric(10)
        os.rename(d, d + ".old")
        ev.wait_output("checkpoint directory gone")
        os.makedirs(d)
        publish(d, ckpt_name(20), restep(os.path.join(src, ckpt_name(40)), 20))
        self.wait_metric(20)
        self.assertEqual(ev.output().count("method=events"), 2)

    def test_directory_recreated_with_the_same_inode(self):
        # rm -rf and mkdir at once: ext4 (and others) hand the new directory the
        # freed inode number, so (dev, ino) alone cannot tell it from the old one,
        # whose inotify watch died with it. The evaluator is stopped meanwhile so
        # that it sees the removal only after the new directory exists.
        src = self.real_checkpoints()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d)
        ev = self.start_eval(path)
        ev.wait_output("method=events")
        publish(d, ckpt_name(10), restep(os.path.join(src, ckpt_name(40)), 10))
        self.wait_metric(10)
        old = os.stat(d).st_ino
        ev.signal(signal.SIGSTOP)
        try:
            shutil.rmtree(d)
            os.makedirs(d)
        finally:
            ev.signal(signal.SIGCONT)
        print("inode reused: %s" % (os.stat(d).st_ino == old), file=sys.stderr)
        publish(d, ckpt_name(20), restep(os.path.join(src, ckpt_name(40)), 20))
        self.wait_metric(20, timeout=30)
        self.assertEqual(ev.output().count("method=events"), 2)
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())

    def test_symlink_made_early_and_repointed(self):
        # checkpoint.dir as a "current" link, repointed atomically to a new
        # run's directory: the old directory gets no event, the path names
        # another directory, and that one's checkpoints must be evaluated.
        blob = self.restepper()
        a, b, cur = (os.path.join(self.work, n) for n in ("runs/a", "runs/b", "current"))
        os.makedirs(b)
        # The link is made before its target: making the target (in another
        # directory) sends the link's directory no event.
        os.symlink("runs/a", cur)
        path, _ = self.eval_config(cur, eval={"poll_interval_ms": 100})
        ev = self.start_eval(path)
        ev.wait_output("waiting for the checkpoint directory")
        os.makedirs(a)
        ev.wait_output("method=events")
        publish(a, ckpt_name(10), blob(10))
        self.wait_metric(10)
        os.symlink("runs/b", cur + ".new")
        os.rename(cur + ".new", cur)
        publish(b, ckpt_name(20), blob(20))
        self.wait_metric(20, timeout=30)
        self.assertEqual([m["step"] for m in metrics(self.metrics_path)], [10, 20])
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())

    def test_permissions_fixed_while_running(self):
        # What an ordinary user meets (root is run without the capabilities
        # that bypass file permissions): a checkpoint published unreadable,
        # then made readable, is evaluated; the directory made unreadable
        # (events cannot be set up: polling) then readable again goes back
        # to events rather than listing it every interval for good.
        setpriv = shutil.which("setpriv")
        if os.geteuid() == 0 and not setpriv:
            self.skipTest("needs setpriv to drop root's file-permission bypass")
        blob = self.restepper()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d, eval={"poll_interval_ms": 100})
        argv = [MNIST_EVAL, "--config", path]
        if os.geteuid() == 0:
            caps = "-dac_override,-dac_read_search"
            argv = [setpriv, "--inh-caps=" + caps, "--bounding-set=" + caps] + argv
        ev = self.start(argv, "eval")
        ev.wait_output("method=events")
        tmp = os.path.join(d, ".unreadable.tmp")
        with open(tmp, "wb") as f:
            f.write(blob(10))
        os.chmod(tmp, 0)
        os.rename(tmp, os.path.join(d, ckpt_name(10)))
        ev.wait_output("invalid checkpoint checkpoint=%s" % ckpt_name(10))
        os.chmod(os.path.join(d, ckpt_name(10)), 0o644)
        self.wait_metric(10, timeout=30)
        os.chmod(d, 0)
        ev.wait_output("method=poll")
        os.chmod(d, 0o755)
        mnlib.wait_for(lambda: ev.output().count("method=events") == 2, 30, "events again")
        publish(d, ckpt_name(20), blob(20))
        self.wait_metric(20, timeout=30)
        self.assertEqual([m["step"] for m in metrics(self.metrics_path)], [10, 20])
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())

    def test_once(self):
        src = self.real_checkpoints()
        d = os.path.join(self.work, "ckpt")
        r, _ = self.once(d, "missing")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(d, r.stdout + r.stderr)
        os.makedirs(d)
        r, _ = self.once(d, "empty")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no valid checkpoint", r.stdout + r.stderr)
        for s in (20, 40):
            shutil.copy(os.path.join(src, ckpt_name(s)), d)
        publish(d, ckpt_name(60), b"garbage")
        r, ms = self.once(d, "latest")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("model.ckpt-60.safetensors", r.stdout)  # the bad newest is reported
        m = LINE.search(r.stdout)
        self.assertIsNotNone(m, r.stdout)
        self.assertEqual((m.group(1), m.group(5)), ("40", ckpt_name(40)))
        self.assertEqual([x["step"] for x in ms], [40])
        self.assertEqual(len(LINE.findall(r.stdout)), 1)

    def test_json_log(self):
        d, accuracy = self.dir_with_foreign_checkpoint(9)
        path, _ = self.config("json.json", checkpoint={"dir": d}, log={"format": "json"})
        r = self.run_prog([MNIST_EVAL, "--config", path, "--once"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        ev = [x for x in lines if x["msg"] == "evaluation"]
        self.assertEqual(len(ev), 1, r.stdout)
        self.assertEqual((ev[0]["step"], ev[0]["ema"], ev[0]["checkpoint"], ev[0]["level"]),
                         (9, "yes", ckpt_name(9), "info"))
        self.assertEqual(ev[0]["accuracy"], round(accuracy, 4))
        self.assertIsInstance(ev[0]["latency_ms"], float)

    def test_once_prints_at_any_log_level_and_check_config(self):
        d, accuracy = self.dir_with_foreign_checkpoint(9)
        path, cfg = self.config("warn.json", checkpoint={"dir": d}, log={"level": "error"})
        r = self.run_prog([MNIST_EVAL, "--config", path, "--once"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("accuracy=%.4f" % accuracy, r.stdout)
        r = self.run_prog([MNIST_EVAL, "--config", path, "--check-config"])
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "%s: configuration is valid" % path))
        cfg["eval"]["watch"] = "sometimes"
        mnlib.write_config(path, cfg)
        r = self.run_prog([MNIST_EVAL, "--config", path, "--check-config"])
        self.assertEqual(r.returncode, 78)
        self.assertIn("eval.watch", r.stderr)

    def test_sighup_reopens_log_and_metrics(self):
        src = self.real_checkpoints()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        log = os.path.join(self.work, "eval-file.log")
        path, _ = self.eval_config(d, log={"file": log})
        ev = self.start_eval(path)
        mnlib.wait_for(lambda: "method=events" in read_text(log), 30, "watching in log file")
        publish(d, ckpt_name(10), restep(os.path.join(src, ckpt_name(40)), 10))
        self.wait_metric(10)
        # logrotate's create mode: move the files away, then SIGHUP.
        os.rename(log, log + ".1")
        os.rename(self.metrics_path, self.metrics_path + ".1")
        ev.signal(signal.SIGHUP)
        mnlib.wait_for(lambda: "configuration reloaded" in read_text(log), 30, "reopened log")
        self.assertIn("info reopened files=log.file,eval.metrics_file\n", read_text(log))
        publish(d, ckpt_name(20), restep(os.path.join(src, ckpt_name(40)), 20))
        self.wait_metric(20)
        mnlib.wait_for(lambda: "step=20" in read_text(log), 30, "step 20 in the new log")
        old = read_text(log + ".1")
        self.assertIn("step=10", old)
        self.assertNotIn("step=20", old)
        self.assertEqual([m["step"] for m in metrics(self.metrics_path + ".1")], [10])
        self.assertEqual([m["step"] for m in metrics(self.metrics_path)], [20])
        self.assertEqual(ev.output(), "")  # nothing on stdout when log.file is set

    def test_sighup_reloads_use_ema(self):
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, cfg = self.eval_config(d)
        ev = self.start_eval(path)
        ev.wait_output("method=events")
        blob, _, _ = self.foreign_checkpoint(1)
        publish(d, ckpt_name(1), blob)
        self.assertIs(self.wait_metric(1)["ema"], True)
        cfg["eval"]["use_ema"] = False
        cfg["eval"]["poll_interval_ms"] = 500  # the evaluator's, needs a restart
        cfg["model"]["hidden"] = [64]          # the trainer's, none of the evaluator's business
        mnlib.write_config(path, cfg)
        ev.signal(signal.SIGHUP)
        # The trainer's answer's fields, about the evaluator's keys: model.hidden is the
        # trainer's, seen but not used. A key left to a restart makes it a warning.
        # The whole line, newline and all: a read can catch a line half written.
        mnlib.wait_for(lambda: re.search(r"configuration reloaded .*\n", ev.output()), 30, "the reload")
        self.assertRegex(ev.output(), r"warn configuration reloaded file=\S+ applied=eval.use_ema "
                                      r"restart_required=eval.poll_interval_ms ignored=model.hidden\n")
        publish(d, ckpt_name(2), blob)
        self.assertIs(self.wait_metric(2)["ema"], False)
        # The keys it does not use were seen: the next reload does not list them again.
        cfg["train"]["learning_rate"] = 0.5
        mnlib.write_config(path, cfg)
        ev.signal(signal.SIGHUP)
        mnlib.wait_for(lambda: len(re.findall(r"configuration reloaded .*\n", ev.output())) == 2, 30,
                       "the second reload")
        self.assertRegex(ev.output(), r"warn configuration reloaded file=\S+ applied=\"\" "
                                      r"restart_required=eval.poll_interval_ms ignored=train.learning_rate\n")

    def test_sighup_while_starting_reloads(self):
        """systemd starts mnist-eval as Type=exec: a `systemctl reload` (or
        logrotate's) may come before the evaluator has set up its signal
        handling. Held in the metrics file's open, before that, a SIGHUP must
        not kill it: the reload happens once it is up, with the new
        log.level and eval.use_ema."""
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, cfg = self.eval_config(d)
        env, gate, held = mnlib.gate(self, "open:metrics.jsonl")
        open(gate, "w").close()
        ev = self.start([MNIST_EVAL, "--config", path], "eval", env=env)
        mnlib.wait_for(lambda: os.path.exists(held), 60, "mnist-eval held opening its metrics file")
        cfg["log"]["level"] = "debug"
        cfg["eval"]["use_ema"] = False
        mnlib.write_config(path, cfg)
        ev.signal(signal.SIGHUP)
        os.unlink(gate)
        mnlib.wait_for(lambda: ev.p.poll() is not None or "configuration reloaded" in ev.output(), 30,
                       "a reload, or the end of mnist-eval")
        self.assertIsNone(ev.p.poll(), "killed by SIGHUP:\n" + ev.output())
        self.assertIn("applied=eval.use_ema,log.level ", ev.output())
        blob, _, _ = self.foreign_checkpoint(1)
        publish(d, ckpt_name(1), blob)
        self.assertIs(self.wait_metric(1)["ema"], False)
        ev.wait_output("debug evaluating checkpoint=model.ckpt-1.safetensors")
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())

    def test_sighup_says_which_reopen_failed(self):
        """A file that cannot be opened again after logrotate moved it (a
        directory in its place, here) stays in use: the SIGHUP's summary
        line says which failed, and claims no reopen."""
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        log = os.path.join(self.work, "eval-file.log")
        path, _ = self.eval_config(d, log={"file": log})
        ev = self.start_eval(path)
        mnlib.wait_for(lambda: "method=events" in read_text(log), 30, "watching in log file")
        for f in (log, self.metrics_path):
            os.rename(f, f + ".1")
            os.mkdir(f)
        ev.signal(signal.SIGHUP)
        # Both failed: the lines go on to the old log file.
        mnlib.wait_for(lambda: "configuration reloaded" in read_text(log + ".1"), 30, "the reload")
        text = read_text(log + ".1")
        self.assertIn("log.file: ", text)
        self.assertIn("eval.metrics_file: ", text)
        self.assertIn('warn reopen failed, keeping the old descriptor failed=log.file,eval.metrics_file '
                      'reopened=""\n', text)
        self.assertNotIn("reopened and", text)
        self.assertNotIn("reopened files", text)
        # The metrics file did not move: a result still lands in the old one.
        blob, _, _ = self.foreign_checkpoint(1)
        publish(d, ckpt_name(1), blob)
        self.wait_metric(1, path=self.metrics_path + ".1")
        # One failed, one reopened.
        os.rmdir(log)
        ev.signal(signal.SIGHUP)
        mnlib.wait_for(lambda: "configuration reloaded" in read_text(log), 30, "the reload in a new log")
        self.assertIn("warn reopen failed, keeping the old descriptor failed=eval.metrics_file "
                      "reopened=log.file\n", read_text(log))
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())

    def test_sighup_while_stopping_is_refused(self):
        """After SIGTERM the evaluator finishes (here: a read of a checkpoint,
        held) and reloads nothing; a SIGHUP then is said to be refused, as
        mnistd says it, rather than passed over in silence."""
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, cfg = self.eval_config(d)
        env, gate, held = mnlib.gate(self, "open:" + ckpt_name(1))
        ev = self.start([MNIST_EVAL, "--config", path], "eval", env=env)
        ev.wait_output("method=events")
        open(gate, "w").close()
        blob, _, _ = self.foreign_checkpoint(1)
        publish(d, ckpt_name(1), blob)
        mnlib.wait_for(lambda: os.path.exists(held), 60, "mnist-eval held opening the checkpoint")
        ev.signal(signal.SIGTERM)
        ev.wait_output("stopping")
        cfg["log"]["level"] = "debug"
        mnlib.write_config(path, cfg)
        ev.signal(signal.SIGHUP)
        ev.wait_output("the evaluator is shutting down: the configuration is not reloaded")
        os.unlink(gate)
        self.assertEqual(ev.wait(30), 0, ev.output())
        self.assertNotIn("configuration reloaded", ev.output())
        self.assertNotIn("debug ", ev.output())

    def test_sigterm_while_starting_exits_zero(self):
        """SIGTERM exits 0 from the start: held before the event loop
        catches signals (opening the metrics file) and while loading the
        data, the evaluator stops cleanly, without going on to watch."""
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d)
        for i, where in enumerate(("open:metrics.jsonl", "open:train-images-idx3-ubyte.gz")):
            env, gate, held = mnlib.gate(self, where)
            open(gate, "w").close()
            ev = self.start([MNIST_EVAL, "--config", path], "eval-%d" % i, env=env)
            mnlib.wait_for(lambda: os.path.exists(held), 60, "mnist-eval held at " + where)
            ev.signal(signal.SIGTERM)
            os.unlink(gate)
            os.unlink(held)
            self.assertEqual(ev.wait(30), 0, where + ":\n" + ev.output())
            self.assertIn("received Terminated, stopping", ev.output())
            self.assertNotIn("ready", ev.output())

    def test_sigterm_mid_evaluation(self):
        # A model and a validation set big enough that evaluating takes a good
        # while (64-2048-2048-10 on 20000 images: about 170 GFLOP).
        big = mnlib.make_dataset(os.path.join(self.work, "big"), n_train=20100, n_test=10)
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        hidden = [2048, 2048]
        sizes = [64] + hidden + [10]
        tensors = []
        for ema in ("", "/ExponentialMovingAverage"):
            for i in range(len(sizes) - 1):
                tensors.append(("layer%d/weights%s" % (i + 1, ema), "F32", [sizes[i], sizes[i + 1]],
                                bytes(4 * sizes[i] * sizes[i + 1])))
                tensors.append(("layer%d/biases%s" % (i + 1, ema), "F32", [sizes[i + 1]], bytes(4 * sizes[i + 1])))
        tensors.append(("global_step", "I64", [], struct.pack("<q", 5)))
        meta = {"format": "mnistd.checkpoint.v1", "global_step": "5",
                "architecture": json.dumps({"input": 64, "hidden": hidden, "output": 10, "activation": "relu"})}
        path, _ = self.eval_config(d, log={"level": "debug"}, data={"dir": big, "validation_size": 20000})
        ev = self.start_eval(path)
        ev.wait_output("method=events")
        publish(d, ckpt_name(5), encode_safetensors(tensors, meta))
        ev.wait_output("evaluating checkpoint=model.ckpt-5.safetensors")
        t0 = time.monotonic()
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(5), 0, ev.output())
        self.assertLess(time.monotonic() - t0, 2 * mnlib.SLOW)
        self.assertNotIn("info evaluation", ev.output())
        self.assertEqual(metrics(self.metrics_path), [])

    def test_metrics_on_a_full_disk(self):
        # The metrics file ends 40 bytes short of a page; the disk is full. A
        # line is cut short there: it must not stay behind as half a line
        # that garbles the next, and evaluating must go on.
        blob = self.restepper()
        mnt = self.small_fs("64k")
        m = os.path.join(mnt, "metrics.jsonl")
        old = json.dumps({"step": 1, "note": "x" * 100}) + "\n"
        with open(m, "w") as f:
            f.write(old * ((4096 - 40) // len(old)))
        kept = read_text(m)
        mnlib.fill(os.path.join(mnt, "filler"))
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        publish(d, ckpt_name(10), blob(10))
        # --once: the line is logged, the record is not kept, so the command fails.
        prom = os.path.join(self.work, "eval.prom")
        path, _ = self.eval_config(d, eval={"metrics_file": m, "textfile": prom})
        r = self.run_prog([MNIST_EVAL, "--config", path, "--once"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"evaluation step=10 ")
        self.assertIn("short write", r.stdout)
        self.assertEqual(read_text(m), kept)
        # Watching: every evaluation is logged while the disk is full, and the
        # first after space is freed is recorded as a whole line.
        ev = self.start_eval(path)
        ev.wait_output("evaluation step=10 ")
        for s in (20, 30):
            publish(d, ckpt_name(s), blob(s))
            # The textfile is rewritten after the metrics line was tried.
            mnlib.wait_for(lambda: "\nmnist_eval_step %d\n" % s in read_text(prom), 60,
                           "step %d recorded" % s)
        self.assertEqual(read_text(m), kept)
        # Said once, not at every line the full disk costs.
        self.assertEqual(ev.output().count("short write"), 1)
        self.assertEqual(ev.output().count("metrics.jsonl: "), 1)
        os.unlink(os.path.join(mnt, "filler"))
        publish(d, ckpt_name(40), blob(40))
        self.wait_metric(40, path=m)
        ev.wait_output("metrics.jsonl: writing again; 3 lines were not written")
        self.assertEqual([x["step"] for x in metrics(m)], [1] * kept.count("\n") + [40])
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())

    def test_metrics_file_removed_without_sighup(self):
        # logrotate without postrotate, or an operator's rm: the lines after
        # it go to a new file under the name (the one readers follow), not to
        # the removed or renamed one, and the log says so.
        blob = self.restepper()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        m = os.path.join(self.work, "m.jsonl")
        path, _ = self.eval_config(d, eval={"metrics_file": m})
        ev = self.start_eval(path)
        publish(d, ckpt_name(10), blob(10))
        self.wait_metric(10, path=m)
        os.rename(m, m + ".1")
        publish(d, ckpt_name(20), blob(20))
        self.wait_metric(20, path=m)
        os.unlink(m)
        publish(d, ckpt_name(30), blob(30))
        self.wait_metric(30, path=m)
        self.assertEqual([x["step"] for x in metrics(m + ".1")], [10])
        self.assertEqual([x["step"] for x in metrics(m)], [30])
        self.assertEqual(ev.output().count("m.jsonl was moved or removed"), 2, ev.output())
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())

    def test_metrics_file_on_a_failing_disk(self):
        # EIO (a disk gone bad), with a line cut short that cannot be cut off
        # again: the partial line stays alone, the next line is whole, the
        # failure is said once, writing again is said, and the file stays
        # one the strict readers take (the partial line counted as cut).
        blob = self.restepper()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        m = os.path.join(self.work, "m.jsonl")
        flag = os.path.join(self.work, "ioerr")
        so = mnlib.build_preload(self, "ioerr")
        env = {"LD_PRELOAD": so, "MN_IOERR": flag, "MN_IOERR_AT": "/m.jsonl", "MN_IOERR_SHORT": "20",
               "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
        prom = os.path.join(self.work, "eval.prom")
        path, _ = self.eval_config(d, eval={"metrics_file": m, "textfile": prom})
        ev = self.start([MNIST_EVAL, "--config", path], "eval", env=env)
        publish(d, ckpt_name(10), blob(10))
        self.wait_metric(10, path=m)
        open(flag, "w").close()
        for s in (20, 30):
            publish(d, ckpt_name(s), blob(s))
            # The textfile is rewritten after the metrics line was tried.
            mnlib.wait_for(lambda: "\nmnist_eval_step %d\n" % s in read_text(prom), 60,
                           "step %d recorded" % s)
        os.unlink(flag)
        publish(d, ckpt_name(40), blob(40))
        ev.wait_output("m.jsonl: writing again; 2 lines were not written")
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())
        self.assertEqual(ev.output().count("m.jsonl: "), 2, ev.output())
        self.assertIn("the partial line cannot be removed: Input/output error", ev.output())
        lines = read_text(m).split("\n")
        self.assertEqual(lines[-1], "")
        self.assertEqual(json.loads(lines[0])["step"], 10)
        self.assertEqual(lines[1], '{"step":20,"accuracy')
        self.assertEqual(json.loads(lines[2])["step"], 40)
        self.assertEqual(len(lines), 4)
        r = self.run_prog([mnlib.MNISTCTL, "ls", "--json", "--metrics", m, d])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        listed = {c["file"]: c.get("accuracy") for c in json.loads(r.stdout)["checkpoints"]}
        self.assertIsNotNone(listed[ckpt_name(40)], r.stdout)
        self.assertIsNone(listed[ckpt_name(20)], r.stdout)

    def test_bad_config_exits_78(self):
        path, _ = self.config(eval={"watch": "sometimes"})
        r = self.run_prog([MNIST_EVAL, "--config", path])
        self.assertEqual(r.returncode, 78)
        self.assertIn("eval.watch", r.stderr)
        path, _ = self.config("c2.json", eval={"metrics_file": os.path.join(self.work, "no", "such", "m.jsonl")})
        r = self.run_prog([MNIST_EVAL, "--config", path])
        self.assertEqual(r.returncode, 78)
        self.assertIn("metrics", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
