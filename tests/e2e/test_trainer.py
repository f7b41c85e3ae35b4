"""End-to-end tests of the real mnistd binary: publishing, retention,
SIGTERM, exact resume, configuration errors."""

import json
import os
import signal
import struct
import sys
import unittest
import zlib

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402
from mnlib import MNISTD, ckpt_steps, read_safetensors, tensor_bytes, wait_for  # noqa: E402

LAYER_TENSORS = [
    "layer1/weights", "layer1/biases", "layer2/weights", "layer2/biases",
    "layer1/weights/ExponentialMovingAverage", "layer1/biases/ExponentialMovingAverage",
    "layer2/weights/ExponentialMovingAverage", "layer2/biases/ExponentialMovingAverage",
]
STATE_TENSORS = LAYER_TENSORS + ["global_step", "train/rng", "train/epoch", "train/perm_pos", "train/permutation"]


class TrainerTest(mnlib.TestCase):
    def train(self, cfg_path, name="mnistd", expect=0):
        p = self.start([MNISTD, "--config", cfg_path], name)
        rc = p.wait(120)
        self.assertEqual(rc, expect, p.output())
        return p

    def test_publishes_valid_checkpoints_and_retention(self):
        path, cfg = self.config(train={"max_steps": 130}, checkpoint={"every_steps": 20, "max_to_keep": 3})
        self.train(path)
        d = cfg["checkpoint"]["dir"]
        # 20..120 every 20, then the final one at max_steps; retention keeps 3.
        self.assertEqual(ckpt_steps(d), [100, 120, 130])
        index = mnlib.read_json(os.path.join(d, "checkpoint.json"))
        self.assertEqual(index["latest"], "model.ckpt-130.safetensors")
        self.assertEqual(index["all"], ["model.ckpt-%d.safetensors" % s for s in (100, 120, 130)])
        self.assertEqual([n for n in os.listdir(d) if n.startswith(".") and n != ".mnistd.lock"], [])

        f = os.path.join(d, "model.ckpt-130.safetensors")
        header, data, n = read_safetensors(f)
        self.assertEqual((8 + n) % 8, 0, "data must start 8-byte aligned")
        meta = header.pop("__metadata__")
        self.assertEqual(meta["format"], "mnistd.checkpoint.v1")
        self.assertEqual(meta["global_step"], "130")
        self.assertEqual(json.loads(meta["architecture"]),
                         {"input": 64, "hidden": [32], "output": 10, "activation": "relu"})
        self.assertEqual(meta["data_crc32"], "%08x" % zlib.crc32(data))
        self.assertRegex(meta["created"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        self.assertEqual(json.loads(meta["config"])["train"]["max_steps"], 130)
        self.assertEqual(sorted(header), sorted(STATE_TENSORS))
        self.assertEqual(header["layer1/weights"], {"dtype": "F32", "shape": [64, 32],
                                                    "data_offsets": header["layer1/weights"]["data_offsets"]})
        self.assertEqual(header["layer2/biases"]["shape"], [10])
        self.assertEqual(header["global_step"]["shape"], [])
        self.assertEqual(struct.unpack("<q", tensor_bytes(f, "global_step"))[0], 130)
        self.assertEqual(header["train/permutation"]["shape"], [1000])
        spans = sorted(v["data_offsets"] for v in header.values())
        self.assertEqual(spans[0][0], 0)
        for a, b in zip(spans, spans[1:]):
            self.assertEqual(a[1], b[0])
        self.assertEqual(spans[-1][1], len(data))
        # The EMA lags the raw weights: they must differ after training.
        self.assertNotEqual(tensor_bytes(f, "layer1/weights"),
                            tensor_bytes(f, "layer1/weights/ExponentialMovingAverage"))

    def test_writer_replaces_a_waiting_checkpoint(self):
        """By default training never waits for the checkpoint writer: with a
        checkpoint due at every step, snapshots that were still waiting are
        replaced by newer ones and the log says so; every file published is
        valid, and the final one is the state at max_steps."""
        path, cfg = self.config(train={"max_steps": 3000},
                                checkpoint={"every_steps": 1, "max_to_keep": 3, "write_all": False})
        p = self.train(path)
        out = p.output()
        self.assertIn("checkpoint replaced before it was written", out)
        d = cfg["checkpoint"]["dir"]
        steps = ckpt_steps(d)
        self.assertEqual(steps[-1], 3000)
        self.assertLessEqual(len(steps), 3)
        for step in steps:
            header, data, _ = read_safetensors(os.path.join(d, "model.ckpt-%d.safetensors" % step))
            self.assertEqual(header["__metadata__"]["global_step"], str(step))
            self.assertEqual(header["__metadata__"]["data_crc32"], "%08x" % zlib.crc32(data))
        self.assertEqual(mnlib.read_json(os.path.join(d, "checkpoint.json"))["latest"],
                         "model.ckpt-3000.safetensors")

    def test_sigterm_publishes_and_exits_zero(self):
        path, cfg = self.config(train={"max_steps": 10 ** 9}, checkpoint={"every_steps": 50})
        d = cfg["checkpoint"]["dir"]
        p = self.start([MNISTD, "--config", path], "mnistd")
        mnlib.wait_for(lambda: ckpt_steps(d), 60, "a first checkpoint")
        p.signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, p.output())
        index = mnlib.read_json(os.path.join(d, "checkpoint.json"))
        last = max(ckpt_steps(d))
        self.assertEqual(index["latest"], "model.ckpt-%d.safetensors" % last)
        self.assertGreaterEqual(last, 50)
        self.assertIn("stopping", p.output())

    def test_sigterm_during_startup_exits_zero(self):
        """A stop while the data is still loading is a clean exit, not a death by signal."""
        path, cfg = self.config()
        # Held at the open of the images (gate.c) for as long as the test
        # wants, not for a delay a slow machine may outlast: the stop
        # provably arrives while the data is loading.
        env, gate, held = mnlib.gate(self, "open:train-images-idx3-ubyte.gz")
        open(gate, "w").close()
        p = self.start([MNISTD, "--config", path], "mnistd", env=env)
        wait_for(lambda: os.path.exists(held), 60, "mnistd held in its data load")
        self.assertIn("loading data", p.output())  # signal handlers are installed before this line
        p.signal(signal.SIGTERM)
        os.unlink(gate)
        self.assertEqual(p.wait(60), 0, p.output())
        self.assertIn("before training started", p.output())
        self.assertEqual(ckpt_steps(cfg["checkpoint"]["dir"]), [])

    def test_resume_is_exact(self):
        # Reference: one uninterrupted run.
        ref_path, ref = self.config("ref.json", train={"max_steps": 90},
                                    checkpoint={"dir": os.path.join(self.work, "ref"), "every_steps": 30})
        self.train(ref_path, "ref")
        # Interrupted: stop at 60 (a checkpoint), then restart with max_steps 90.
        a_path, a = self.config("a.json", train={"max_steps": 60},
                                checkpoint={"dir": os.path.join(self.work, "a"), "every_steps": 30})
        self.train(a_path, "a1")
        self.assertEqual(ckpt_steps(a["checkpoint"]["dir"]), [30, 60])
        a["train"]["max_steps"] = 90
        mnlib.write_config(a_path, a)
        p = self.train(a_path, "a2")
        self.assertIn("resumed", p.output())
        fa = os.path.join(a["checkpoint"]["dir"], "model.ckpt-90.safetensors")
        fr = os.path.join(ref["checkpoint"]["dir"], "model.ckpt-90.safetensors")
        for name in STATE_TENSORS:
            self.assertEqual(tensor_bytes(fa, name), tensor_bytes(fr, name), name)

    def test_no_descriptors_for_the_newest_checkpoint_is_not_a_bad_checkpoint(self):
        """Out of descriptors when reading its newest checkpoint (emfile.c,
        preloaded), the trainer refuses to start: skipping the file as bad
        would resume from an older one, or from nothing, and lose the steps."""
        fault = mnlib.build_preload(self, "emfile")
        path, cfg = self.config(train={"max_steps": 40}, checkpoint={"every_steps": 20})
        self.train(path, "first")
        d = cfg["checkpoint"]["dir"]
        self.assertEqual(ckpt_steps(d), [20, 40])
        cfg["train"]["max_steps"] = 80
        mnlib.write_config(path, cfg)
        # The sanitizer's runtime is not first in a preloaded process's libraries; that is fine here.
        env = {"LD_PRELOAD": fault,
               "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
        p = self.start([MNISTD, "--config", path], "second", env=env)
        rc = p.wait(120)
        out = p.output()
        self.assertNotEqual(rc, 0, out)
        self.assertIn("cannot read the newest checkpoint, not starting", out)
        self.assertIn("model.ckpt-40.safetensors", out)
        self.assertNotIn("skipping invalid checkpoint", out)
        self.assertEqual(ckpt_steps(d), [20, 40])
        # Given its descriptors back, it resumes from step 40.
        p = self.train(path, "third")
        self.assertIn("resumed", p.output())
        self.assertEqual(ckpt_steps(d)[-1], 80)

    def test_resume_after_sigterm_is_exact(self):
        ref_path, ref = self.config("ref.json", train={"max_steps": 400},
                                    checkpoint={"dir": os.path.join(self.work, "ref"), "every_steps": 100})
        self.train(ref_path, "ref")
        b_path, b = self.config("b.json", train={"max_steps": 400},
                                checkpoint={"dir": os.path.join(self.work, "b"), "every_steps": 100})
        p = self.start([MNISTD, "--config", b_path], "b1")
        mnlib.wait_for(lambda: ckpt_steps(b["checkpoint"]["dir"]), 60, "first checkpoint")
        p.signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, p.output())
        self.train(b_path, "b2")
        fb = os.path.join(b["checkpoint"]["dir"], "model.ckpt-400.safetensors")
        fr = os.path.join(ref["checkpoint"]["dir"], "model.ckpt-400.safetensors")
        for name in STATE_TENSORS:
            self.assertEqual(tensor_bytes(fb, name), tensor_bytes(fr, name), name)

    def test_disk_full_loses_nothing(self):
        """ENOSPC while publishing: the error is logged, no partial or temporary
        file appears, earlier checkpoints stay valid, training goes on and
        publishes again once there is room; a final checkpoint that cannot be
        written makes the exit status non-zero."""
        mnt = self.small_fs("1m")
        d = os.path.join(mnt, "ckpt")
        # max_failures 0: failing checkpoints never stop this trainer (see test_hardening).
        path, cfg = self.config(train={"max_steps": 10 ** 9, "batch_size": 5},
                                checkpoint={"dir": d, "every_steps": 200, "max_to_keep": 2,
                                            "max_failures": 0})
        p = self.start([MNISTD, "--config", path], "mnistd")
        mnlib.wait_for(lambda: ckpt_steps(d), 60, "a first checkpoint")
        filler = os.path.join(mnt, "filler")
        # The writer makes room by removing the older checkpoint (see
        # test_hardening); filling again each time takes that room too, until
        # only the newest good one is left and the write fails.
        mnlib.wait_for(lambda: mnlib.fill(filler) or "No space left on device" in p.output(), 60,
                       "'No space left on device' in " + p.log_path)
        # A pause is answered once every queued checkpoint is settled: what is
        # on disk then is all there is, not a write in progress.
        ctl = [mnlib.MNISTCTL, "--socket", cfg["control"]["socket"]]
        r = self.run_prog(ctl + ["pause"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        kept = ckpt_steps(d)
        self.assertTrue(kept)
        for step in kept:
            header, data, _ = read_safetensors(os.path.join(d, "model.ckpt-%d.safetensors" % step))
            self.assertEqual(header["__metadata__"]["data_crc32"], "%08x" % zlib.crc32(data))
        self.assertEqual([n for n in os.listdir(d) if n.startswith(".") and n != ".mnistd.lock"], [])
        self.assertIsNone(p.p.poll(), "a failed checkpoint must not stop training")
        self.assertEqual(self.run_prog(ctl + ["resume"]).returncode, 0)
        os.unlink(filler)
        newest = max(kept)
        mnlib.wait_for(lambda: max(ckpt_steps(d)) > newest, 60, "a checkpoint once there is room")
        # No more periodic checkpoints, and a save (answered once durable)
        # drains the writer: nothing can free room between the fill and the
        # final checkpoint, which comes at a later step than that save. One
        # file kept, so the full disk has no older checkpoint to take room from.
        cfg["checkpoint"]["every_steps"] = 10 ** 9
        cfg["checkpoint"]["max_to_keep"] = 1
        mnlib.write_config(path, cfg)
        r = self.run_prog(ctl + ["reload"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        saved = mnlib.request(cfg["control"]["socket"], "save")
        self.assertTrue(saved["ok"], saved)
        # A stop at the saved step itself would find that state durable and
        # write nothing (exit 0), whenever the training thread was not
        # scheduled between the save's answer and the SIGTERM.
        mnlib.wait_past_step(cfg["control"]["socket"], saved["step"])
        mnlib.fill(filler)
        p.signal(signal.SIGTERM)
        self.assertNotEqual(p.wait(60), 0, "a final checkpoint that failed must show in the exit status")
        self.assertEqual([n for n in os.listdir(d) if n.startswith(".") and n != ".mnistd.lock"], [])
        index = mnlib.read_json(os.path.join(d, "checkpoint.json"))
        self.assertIn(index["latest"], os.listdir(d))

    def test_log_file_on_a_full_disk(self):
        """log.file on a full disk: a line cut short there stays alone (the
        next is not glued onto it), the failure is said once on standard
        error, and the first line written again is a note of how many were
        lost; training and checkpoints go on."""
        mnt = self.small_fs("64k")
        log = os.path.join(mnt, "mnistd.log")
        old = json.dumps({"time": "2026-01-01T00:00:00.000Z", "level": "info", "msg": "x"}) + "\n"
        with open(log, "w") as f:
            f.write(old * ((4096 - 40) // len(old)))
        kept = mnlib.read_text(log)
        filler = os.path.join(mnt, "filler")
        mnlib.fill(filler)
        d = os.path.join(self.work, "ckpt")
        path, cfg = self.config(train={"max_steps": 10 ** 9, "batch_size": 5},
                                checkpoint={"dir": d, "every_steps": 10 ** 9},
                                log={"file": log, "format": "json", "level": "info"})
        p = self.start([MNISTD, "--config", path], "mnistd")
        ctl = [mnlib.MNISTCTL, "--socket", cfg["control"]["socket"]]
        mnlib.wait_for(lambda: os.path.exists(cfg["control"]["socket"]), 60, "the control socket")
        step = -1
        for _ in range(3):
            # Each save at a step of its own: a save at the step of the one
            # before (training not scheduled in between) would write nothing.
            mnlib.wait_past_step(cfg["control"]["socket"], step)
            r = self.run_prog(ctl + ["save"])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            step = int(r.stdout.split(" at step ")[1])
        self.assertEqual(len(ckpt_steps(d)), 3)
        p.wait_output("cannot write", 30)
        self.assertEqual(p.output().count("mnistd.log"), 1, p.output())
        self.assertIn("No space left on device", p.output())
        os.unlink(filler)
        r = self.run_prog(ctl + ["save"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        mnlib.wait_for(lambda: "checkpoint published" in mnlib.read_text(log), 30, "a log line")
        p.signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, p.output())
        text = mnlib.read_text(log)
        self.assertTrue(text.startswith(kept))
        lines = text[len(kept):].split("\n")
        self.assertEqual(lines[-1], "")
        # The line cut short stays alone: one line's head, never two lines glued.
        torn = lines[0]
        self.assertEqual(torn.count('{"time"'), 1, torn)
        self.assertTrue(0 < len(kept) + len(torn) <= 4096, torn)
        parsed = [json.loads(x) for x in lines[1:-1]]
        self.assertEqual(parsed[0]["msg"], "log file: writing again", parsed[0])
        self.assertGreaterEqual(parsed[0]["lines_lost"], 4)
        self.assertIn("No space left on device", parsed[0]["error"])
        self.assertTrue(any(x["msg"] == "checkpoint published" for x in parsed))

    def test_log_file_removed_without_sighup(self):
        """log.file moved aside or removed without a SIGHUP (logrotate
        without postrotate, an operator's rm): later lines go to a new file
        under the name, which says why, not to the unlinked file."""
        log = os.path.join(self.work, "m.log")
        d = os.path.join(self.work, "ckpt")
        path, cfg = self.config(train={"max_steps": 10 ** 9, "batch_size": 5},
                                checkpoint={"dir": d, "every_steps": 10 ** 9},
                                log={"file": log, "format": "text", "level": "info"})
        p = self.start([MNISTD, "--config", path], "mnistd")
        ctl = [mnlib.MNISTCTL, "--socket", cfg["control"]["socket"]]
        mnlib.wait_for(lambda: "ready" in mnlib.read_text(log), 60, "ready in the log")
        step = -1
        for move in (lambda: os.rename(log, log + ".1"), lambda: os.unlink(log)):
            # A save at the step of the one before writes nothing, and logs nothing.
            mnlib.wait_past_step(cfg["control"]["socket"], step)
            move()
            r = self.run_prog(ctl + ["save"])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            step = int(r.stdout.split(" at step ")[1])
            mnlib.wait_for(lambda: "checkpoint published" in mnlib.read_text(log), 30,
                           "a line in a new log file")
            self.assertIn("log file was moved or removed", mnlib.read_text(log))
        self.assertIn("ready", mnlib.read_text(log + ".1"))
        p.signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, p.output())

    def test_skips_invalid_newest_checkpoint(self):
        path, cfg = self.config(train={"max_steps": 40}, checkpoint={"every_steps": 20})
        self.train(path, "first")
        d = cfg["checkpoint"]["dir"]
        with open(os.path.join(d, "model.ckpt-1000.safetensors"), "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
        # A stale temporary file from a crashed writer is removed at start.
        stale = os.path.join(d, ".model.ckpt-60.safetensors.tmp")
        with open(stale, "wb") as f:
            f.write(b"partial")
        cfg["train"]["max_steps"] = 60
        mnlib.write_config(path, cfg)
        p = self.train(path, "second")
        out = p.output()
        self.assertIn("model.ckpt-1000.safetensors", out)
        self.assertIn("skipping invalid checkpoint", out)
        self.assertFalse(os.path.exists(stale))
        self.assertIn(60, ckpt_steps(d))
        header, _, _ = read_safetensors(os.path.join(d, "model.ckpt-60.safetensors"))
        self.assertEqual(header["__metadata__"]["global_step"], "60")

    def test_architecture_mismatch_exits_78(self):
        path, cfg = self.config(train={"max_steps": 20})
        self.train(path, "first")
        cfg["model"]["hidden"] = [16, 8]
        mnlib.write_config(path, cfg)
        p = self.train(path, "second", expect=78)
        self.assertIn("64-32-10", p.output())
        self.assertIn("64-16-8-10", p.output())

    def test_bad_config_exits_78(self):
        path, cfg = self.config(train={"batch_size": 0})
        r = self.run_prog([MNISTD, "--config", path])
        self.assertEqual(r.returncode, 78)
        self.assertIn("train.batch_size", r.stderr)
        r = self.run_prog([MNISTD, "--config", path, "--check-config"])
        self.assertEqual(r.returncode, 78)
        cfg["train"]["batch_size"] = 10
        cfg["train"]["bogus"] = 1
        mnlib.write_config(path, cfg)
        r = self.run_prog([MNISTD, "--config", path, "--check-config"])
        self.assertEqual(r.returncode, 78)
        self.assertIn("train.bogus", r.stderr)
        del cfg["train"]["bogus"]
        mnlib.write_config(path, cfg)
        r = self.run_prog([MNISTD, "--config", path, "--check-config"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.exists(cfg["checkpoint"]["dir"]), "--check-config must not do anything")
        r = self.run_prog([MNISTD, "--config", os.path.join(self.work, "missing.json")])
        self.assertEqual(r.returncode, 78)
        self.assertIn("missing.json", r.stderr)

    def test_missing_data_names_the_file(self):
        path, cfg = self.config(data={"dir": os.path.join(self.work, "nodata")})
        r = self.run_prog([MNISTD, "--config", path])
        self.assertEqual(r.returncode, 66)
        self.assertIn("nodata", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
