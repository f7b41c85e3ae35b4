"""End-to-end tests of model selection (issue 12) with the real programs: the
evaluator keeping the best checkpoints in eval.best_dir, and the trainer
stopping early on the evaluator's metrics file."""

import json
import os
import re
import signal
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402
import test_evaluator as te  # noqa: E402
from mnlib import MNISTCTL, MNISTD, ckpt_steps, read_json, read_text  # noqa: E402
from test_control import Client  # noqa: E402
from test_evaluator import ckpt_name, metrics, publish, restep  # noqa: E402


def ranked(lines):
    """Metrics lines best first, as best.json orders them: accuracy, then the earlier step."""
    return sorted(lines, key=lambda m: (-m["accuracy"], m["step"]))


class BestTest(mnlib.TestCase):
    # Borrowed from the evaluator's tests (not inherited: their tests would run again here).
    eval_config = te.EvaluatorTest.eval_config
    start_eval = te.EvaluatorTest.start_eval
    wait_metric = te.EvaluatorTest.wait_metric
    real_checkpoints = te.EvaluatorTest.real_checkpoints

    def setUp(self):
        super().setUp()
        self.metrics_path = os.path.join(self.work, "metrics.jsonl")
        self.best = os.path.join(self.work, "best")

    def sources(self):
        """Real checkpoints of increasing quality (steps 20..80 of a short run)."""
        self.src = self.real_checkpoints(steps=80, every=20)

    def offer(self, src_step, step, d):
        """Publishes the source checkpoint of src_step as step into d; returns its metrics line."""
        publish(d, ckpt_name(step), restep(os.path.join(self.src, ckpt_name(src_step)), step))
        return self.wait_metric(step)

    def best_json(self, best=None):
        return read_json(os.path.join(best or self.best, "best.json"))["best"]

    def best_files(self, best=None):
        return sorted(n for n in os.listdir(best or self.best) if n != "best.json")

    def assert_best(self, lines, k, best=None):
        """best.json and best_dir hold exactly the top k of the evaluated lines."""
        want = ranked(lines)[:k]
        got = self.best_json(best)
        self.assertEqual([(b["step"], b["file"]) for b in got], [(m["step"], m["checkpoint"]) for m in want])
        for b, m in zip(got, want):
            self.assertEqual(b["accuracy"], m["accuracy"])
            self.assertEqual(b["loss"], m["loss"])
            self.assertRegex(b["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(self.best_files(best), sorted(m["checkpoint"] for m in want))
        return got

    def stop(self, p):
        p.signal(signal.SIGTERM)
        self.assertEqual(p.wait(30), 0, p.output())

    def test_best_outlives_retention(self):
        # A real trainer with max_to_keep 1 and a real evaluator. The first run
        # ends at step 80, whose accuracy (1.0 on this data) nothing later can
        # beat, and a tie keeps the earlier step; the resumed run's retention
        # deletes it from checkpoint.dir, but best_dir keeps it.
        path, cfg = self.config(train={"max_steps": 80}, checkpoint={"every_steps": 20, "max_to_keep": 1},
                                eval={"metrics_file": self.metrics_path})
        ev = self.start_eval(path)
        ev.wait_output(" ready ")
        d = self.start([MNISTD, "--config", path], "mnistd")
        self.assertEqual(d.wait(120), 0, d.output())
        self.wait_metric(80)
        path, cfg = self.config(train={"max_steps": 200}, checkpoint={"every_steps": 20, "max_to_keep": 1},
                                eval={"metrics_file": self.metrics_path})
        d = self.start([MNISTD, "--config", path], "mnistd2")
        self.assertEqual(d.wait(120), 0, d.output())
        self.wait_metric(200)
        ckpt_dir = cfg["checkpoint"]["dir"]
        self.assertEqual(ckpt_steps(ckpt_dir), [200])
        lines = metrics(self.metrics_path)
        best = self.assert_best(lines, 1)[0]
        self.assertLessEqual(best["step"], 80, lines)
        self.assertFalse(os.path.exists(os.path.join(ckpt_dir, best["file"])))
        r = self.run_prog([MNISTCTL, "verify", os.path.join(self.best, best["file"])])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("method=link", ev.output())
        self.stop(ev)

    def test_better_replaces_worse_does_not_and_restarts_keep_the_set(self):
        self.sources()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d)
        ev = self.start_eval(path)
        mid = self.offer(40, 100, d)
        self.assert_best([mid], 1)
        worse = self.offer(20, 200, d)
        self.assertLess(worse["accuracy"], mid["accuracy"])
        self.assert_best([mid], 1)
        # A restart reads best.json and re-evaluates the newest (worse) one: the set stays.
        self.stop(ev)
        ev = self.start_eval(path, "eval2")
        ev.wait_output("evaluation step=200 ")
        self.assertIn("kept=1", ev.output())
        self.assert_best([mid], 1)
        better = self.offer(80, 300, d)
        self.assertGreater(better["accuracy"], mid["accuracy"])
        self.assert_best([better], 1)
        self.stop(ev)
        # A corrupt best.json is rebuilt from the files, with a warning.
        with open(os.path.join(self.best, "best.json"), "w") as f:
            f.write('{"best": [{"step": "garbage"')
        ev = self.start_eval(path, "eval3")
        ev.wait_output("evaluation step=300 ")
        self.assertRegex(ev.output(), r"warn .*best\.json.*rebuilding")
        self.assertIn("rebuilt best.json", ev.output())
        self.assertEqual([b["step"] for b in self.best_json()], [300])
        self.assertEqual(self.best_json()[0]["accuracy"], better["accuracy"])
        self.assertEqual(self.best_files(), [ckpt_name(300)])
        self.stop(ev)

    def test_keep_best_three(self):
        self.sources()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d, eval={"keep_best": 3})
        ev = self.start_eval(path)
        lines = []
        # 600 re-publishes 300's weights, third best: the tie keeps the earlier step.
        for src, step in ((20, 100), (60, 200), (40, 300), (80, 400), (20, 500), (40, 600)):
            lines.append(self.offer(src, step, d))
            self.assert_best(lines, 3)
        self.assertEqual(lines[5]["accuracy"], lines[2]["accuracy"])
        self.assertEqual([b["step"] for b in self.best_json()][2], 300)
        self.assertNotIn(600, [b["step"] for b in self.best_json()])
        self.assertEqual(len(self.best_files()), 3)
        self.stop(ev)
        self.check_tools(d)

    def check_tools(self, ckpt_dir):
        """mnistctl knows best_dir: ls shows best.json's accuracies, freeze, predict
        and inspect take the best file (and a checkpoint directory still its latest)."""
        best = self.best_json()
        top = os.path.join(self.best, best[0]["file"])
        r = self.run_prog([MNISTCTL, "ls", "--json", self.best])
        self.assertEqual(r.returncode, 0, r.stderr)
        listed = {c["file"]: c["accuracy"] for c in json.loads(r.stdout)["checkpoints"]}
        self.assertEqual(listed, {b["file"]: b["accuracy"] for b in best})
        r = self.run_prog([MNISTCTL, "ls", self.best])
        self.assertRegex(r.stdout, r"%s .* %.4f\n" % (re.escape(best[0]["file"]), best[0]["accuracy"]))
        r = self.run_prog([MNISTCTL, "inspect", "--json", self.best])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["file"], top)
        r = self.run_prog([MNISTCTL, "inspect", "--json", ckpt_dir])
        self.assertEqual(json.loads(r.stdout)["file"], os.path.join(ckpt_dir, ckpt_name(max(ckpt_steps(ckpt_dir)))))
        out = os.path.join(self.work, "frozen.safetensors")
        r = self.run_prog([MNISTCTL, "freeze", self.best, "-o", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("from " + top, r.stdout)
        images = os.path.join(self.data, "train-images-idx3-ubyte.gz")
        labels = os.path.join(self.data, "train-labels-idx1-ubyte.gz")
        r = self.run_prog([MNISTCTL, "predict", "--json", self.best, "--images", images, "--labels", labels])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["model"], top)
        # An invalid best.json is an error, not a silent other choice.
        with open(os.path.join(self.best, "best.json"), "w") as f:
            f.write("[]")
        r = self.run_prog([MNISTCTL, "freeze", self.best, "-o", out])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("best.json", r.stderr)
        r = self.run_prog([MNISTCTL, "ls", self.best])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("best.json", r.stderr)

    def test_best_dir_must_not_be_the_checkpoint_dir(self):
        # Its removals would fight the trainer's retention: refused, and evaluating goes on.
        self.sources()
        path, _ = self.eval_config(self.src, eval={"best_dir": self.src + "/"})
        r = self.run_prog([te.MNIST_EVAL, "--config", path, "--once"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("eval.best_dir is checkpoint.dir", r.stdout)
        self.assertIn("evaluation step=80 ", r.stdout)
        self.assertEqual(ckpt_steps(self.src), [20, 40, 60, 80])
        self.assertFalse(os.path.exists(os.path.join(self.src, "best.json")))

    def test_directories_of_two_runs_are_not_crossed(self):
        self.sources()
        path, _ = self.eval_config(self.src)
        r = self.run_prog([te.MNIST_EVAL, "--config", path, "--once"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        kept = self.best_files()
        self.assertEqual(kept, [ckpt_name(80)])
        best_text = read_text(os.path.join(self.best, "best.json"))
        # A trainer given best_dir as its checkpoint.dir (a copied configuration) would
        # resume from the best file and let retention delete it: refused, nothing touched.
        tpath, _ = self.config("trainer.json", train={"max_steps": 200},
                               checkpoint={"dir": self.best, "every_steps": 20, "max_to_keep": 1})
        p = self.start([MNISTD, "--config", tpath], "trainer")
        self.assertEqual(p.wait(120), 78, p.output())
        self.assertIn("checkpoint.dir: %s holds best.json" % self.best, p.output())
        self.assertEqual(sorted(os.listdir(self.best)), ["best.json"] + kept)
        self.assertEqual(read_text(os.path.join(self.best, "best.json")), best_text)
        # An evaluator given another run's checkpoint.dir as its best_dir would rebuild a
        # best.json there and remove all that run's checkpoints but the best: refused.
        other = os.path.join(self.work, "other")
        os.makedirs(other)
        epath, _ = self.eval_config(other, name="other.json", eval={"best_dir": self.src})
        r = self.run_prog([te.MNIST_EVAL, "--config", epath, "--once"])
        self.assertIn("%s: eval.best_dir is an mnistd checkpoint.dir" % self.src, r.stdout)
        self.assertEqual(ckpt_steps(self.src), [20, 40, 60, 80])
        self.assertFalse(os.path.exists(os.path.join(self.src, "best.json")))

    def test_one_evaluator_per_best_dir(self):
        # Two runs' evaluators on one best_dir each wrote best.json with its own set; the
        # other's files, unlisted, were removed at the next start. The second is refused.
        self.sources()
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d)
        ev = self.start_eval(path)
        mine = self.offer(80, 100, d)
        self.assert_best([mine], 1)
        other, _ = self.eval_config(self.src, name="other.json",
                                    eval={"metrics_file": os.path.join(self.work, "other.jsonl")})
        r = self.run_prog([te.MNIST_EVAL, "--config", other, "--once"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("eval.best_dir: %s: another mnist-eval keeps its best checkpoints here" % self.best,
                      r.stdout)
        self.assertIn("evaluation step=80 ", r.stdout)
        self.assert_best([mine], 1)
        # Once the first is gone, the directory is free again.
        self.stop(ev)
        r = self.run_prog([te.MNIST_EVAL, "--config", other, "--once"])
        self.assertNotIn("another mnist-eval", r.stdout)

    def test_best_dir_on_another_filesystem_and_a_full_disk(self):
        self.sources()
        mnt = self.small_fs("6m")
        best = os.path.join(mnt, "best")
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        path, _ = self.eval_config(d, eval={"best_dir": best})
        ev = self.start_eval(path)
        mid = self.offer(40, 100, d)
        self.assert_best([mid], 1, best)
        self.assertIn("method=copy", ev.output())
        kept = os.path.join(best, ckpt_name(100))
        self.assertNotEqual(os.stat(kept).st_ino, os.stat(os.path.join(d, ckpt_name(100))).st_ino)
        with open(kept, "rb") as f, open(os.path.join(d, ckpt_name(100)), "rb") as g:
            kept_bytes = f.read()
            self.assertEqual(kept_bytes, g.read())
        best_text = read_text(os.path.join(best, "best.json"))
        # The disk fills up: a better checkpoint cannot be kept, the previous best stays intact.
        mnlib.fill(os.path.join(mnt, "filler"))
        better = self.offer(80, 200, d)
        self.assertGreater(better["accuracy"], mid["accuracy"])
        self.assertRegex(ev.output(), r"error keeping %s in eval.best_dir" % re.escape(ckpt_name(200)))
        self.assertEqual(read_text(os.path.join(best, "best.json")), best_text)
        self.assertEqual(sorted(os.listdir(best)), sorted(["best.json", ckpt_name(100)]))
        with open(kept, "rb") as f:
            self.assertEqual(f.read(), kept_bytes)
        # Space again: the next better one is kept.
        os.unlink(os.path.join(mnt, "filler"))
        best3 = self.offer(80, 300, d)
        self.assert_best([mid, best3], 1, best)
        self.stop(ev)


class EarlyStoppingTest(mnlib.TestCase):
    def setUp(self):
        super().setUp()
        self.metrics_path = os.path.join(self.work, "metrics.jsonl")

    def trainer(self, patience=3, min_delta=0, name="mnistd", **sections):
        sections.setdefault("train", {})
        sections["train"] = dict({"max_steps": 10 ** 9, "early_stopping": {
            "metrics_file": self.metrics_path, "patience": patience, "min_delta": min_delta}}, **sections["train"])
        sections.setdefault("checkpoint", {"every_steps": 10 ** 6})
        self.cfg_path, self.cfg = self.config(**sections)
        d = self.start([MNISTD, "--config", self.cfg_path], name)
        d.wait_output("early stopping on")
        return d

    def status(self):
        c = Client(self.cfg["control"]["socket"])
        try:
            r = c.request("status")
        finally:
            c.s.close()
        self.assertTrue(r["ok"], r)
        return r

    def wait_status(self, pred, what):
        return mnlib.wait_for(lambda: (lambda r: r if pred(r) else None)(self.status()), 60, what)

    def write(self, *lines, path=None):
        """Appends lines (dicts as JSON, strings as they are), each in one write."""
        with open(path or self.metrics_path, "a") as f:
            for x in lines:
                f.write((json.dumps(x) if isinstance(x, dict) else x) + "\n")
                f.flush()

    def ev(self, step, accuracy):
        return {"step": step, "accuracy": accuracy, "loss": 1.0, "checkpoint": ckpt_name(step)}

    def test_fires_after_exactly_patience_evaluations(self):
        # The metrics file does not exist when the trainer starts.
        d = self.trainer(patience=3)
        self.wait_status(lambda r: r["step"] >= 500, "step 500")
        r = self.status()
        self.assertEqual((r["best_accuracy"], r["best_step"], r["evals_since_best"], r["patience"]),
                         (None, None, 0, 3))
        self.write(self.ev(100, 0.5), self.ev(200, 0.6))
        self.wait_status(lambda r: r["best_step"] == 200, "best at step 200")
        # Not improvements: equal accuracy, a step counted already, a step beyond this run.
        self.write(self.ev(300, 0.6), self.ev(300, 0.1), self.ev(200, 0.1), self.ev(10 ** 8, 0.1))
        self.write(self.ev(400, 0.55))
        r = self.wait_status(lambda r: r["evals_since_best"] == 2, "two evaluations without improvement")
        self.assertEqual((r["best_accuracy"], r["best_step"], r["state"]), (0.6, 200, "training"))
        self.assertIsNone(d.p.poll())
        r = self.run_prog([MNISTCTL, "--socket", self.cfg["control"]["socket"], "status"])
        self.assertIn("best accuracy  0.6000 at step 200", r.stdout)
        self.assertIn("since best     2 of 3 evaluations", r.stdout)
        self.write(self.ev(500, 0.59))
        self.assertEqual(d.wait(60), 0, d.output())
        out = d.output()
        self.assertRegex(out, r"early stopping: no improvement.* best_step=200 best_accuracy=0\.6000 evaluations_since=3")
        # It stopped like SIGTERM does: a final checkpoint of the step it reached.
        steps = ckpt_steps(self.cfg["checkpoint"]["dir"])
        self.assertTrue(steps and steps[-1] >= 500, steps)
        self.assertRegex(out, r"checkpoint published step=%d " % steps[-1])

    def test_garbage_truncation_and_rotation_never_stop_training(self):
        d = self.trainer(patience=2)
        self.wait_status(lambda r: r["step"] >= 500, "step 500")
        self.write(self.ev(100, 0.9))
        self.wait_status(lambda r: r["best_step"] == 100, "best at step 100")
        garbage = ["not json", "{", "[1, 2]", '{"step": "200", "accuracy": 0.1}', '{"step": 200}',
                   '{"step": 200, "accuracy": 1.5}', '{"step": -5, "accuracy": 0.1}',
                   '{"step": 2.5, "accuracy": 0.1}', "null", '"x"', "\x00\x01", "x" * 10000]
        self.write(*(garbage * 5))
        # A partial line is not a line until its newline comes.
        with open(self.metrics_path, "a") as f:
            f.write('{"step": 150, "accuracy": 0.1')
        mnlib.wait_for(lambda: d.output().count("not an evaluation") >= 10, 60, "garbage logged")
        # Truncated and rewritten with the same history: nothing counts twice.
        with open(self.metrics_path, "w") as f:
            f.write(json.dumps(self.ev(100, 0.9)) + "\n")
        # Rotated: renamed away, a new file under the name (with one line repeating history).
        os.rename(self.metrics_path, self.metrics_path + ".1")
        self.write(self.ev(100, 0.1))
        # Removed: waited for.
        os.unlink(self.metrics_path + ".1")
        self.write(self.ev(200, 0.95))
        r = self.wait_status(lambda r: r["best_step"] == 200, "best at step 200 from the new file")
        self.assertEqual(r["evals_since_best"], 0)
        self.assertEqual(r["state"], "training")
        self.assertIsNone(d.p.poll())
        self.assertIn("reading it from the start", d.output())
        # And it still fires on a real verdict.
        self.write(self.ev(300, 0.9), self.ev(400, 0.9))
        self.assertEqual(d.wait(60), 0, d.output())

    def test_a_restart_after_the_verdict_does_not_train_on(self):
        # A run that trained to step 300, and the evaluator's verdict on it: no improvement
        # in the last 3 evaluations (patience 3). Then the trainer is started again (a
        # reboot, systemctl restart): it trained a step or more and published a new
        # checkpoint at every start (retention deleting an older one) before it read the
        # verdict again. It stops at once now, as a run at max_steps does.
        path, cfg = self.config(train={"max_steps": 300}, checkpoint={"every_steps": 100})
        p = self.start([MNISTD, "--config", path], "first")
        self.assertEqual(p.wait(120), 0, p.output())
        ckdir = cfg["checkpoint"]["dir"]
        def files():
            """The checkpoints and checkpoint.json, untouched (the lock file is rewritten)."""
            return {n: os.stat(os.path.join(ckdir, n)).st_mtime_ns for n in os.listdir(ckdir)
                    if not n.startswith(".")}

        before = files()
        self.assertEqual(ckpt_steps(ckdir), [100, 200, 300])
        # Not counted: a longer, older run's evaluation beyond this run's step.
        self.write(self.ev(100, 0.8), self.ev(150, 0.7), self.ev(200, 0.8), self.ev(300, 0.79),
                   self.ev(5000, 0.99))
        d = self.trainer(patience=3, checkpoint={"every_steps": 100})
        self.assertEqual(d.wait(60), 0, d.output())
        out = d.output()
        self.assertRegex(out, r"early stopping: patience ran out before this start, not training "
                              r"best_step=100 best_accuracy=0\.8000 evaluations_since=3")
        self.assertNotIn("checkpoint published", out)
        self.assertEqual(files(), before)
        # With more patience it trains on from where it was.
        d = self.trainer(patience=4, name="patient", checkpoint={"every_steps": 100})
        self.wait_status(lambda r: r["step"] > 300, "training on past step 300")
        self.assertNotIn("not training", d.output())
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait(60), 0, d.output())

    def test_real_trainer_and_evaluator_stop_early(self):
        path, cfg = self.config(train={"max_steps": 100000, "early_stopping": {
                                    "metrics_file": self.metrics_path, "patience": 2}},
                                checkpoint={"every_steps": 50, "max_to_keep": 2},
                                eval={"metrics_file": self.metrics_path})
        ev = self.start([te.MNIST_EVAL, "--config", path], "eval")
        ev.wait_output(" ready ")
        d = self.start([MNISTD, "--config", path], "mnistd")
        self.assertEqual(d.wait(300), 0, d.output())
        out = d.output()
        m = re.search(r"early stopping: no improvement.* best_step=(\d+) best_accuracy=(\S+) evaluations_since=2", out)
        self.assertTrue(m, out)
        final = ckpt_steps(cfg["checkpoint"]["dir"])[-1]
        self.assertLess(final, 100000)
        # The verdict is the best of the evaluations it counted (the final
        # checkpoint's evaluation comes after it and may not be among them).
        counted = [{"step": int(a), "accuracy": float(b)} for a, b in
                   re.findall(r"early stopping: evaluation step=(\d+) accuracy=(\S+)", out)]
        self.assertGreaterEqual(len(counted), 3, out)
        best = ranked(counted)[0]
        self.assertEqual((int(m.group(1)), "%.4f" % best["accuracy"]), (best["step"], m.group(2)))
        self.assertEqual([c["step"] for c in counted[-2:]], sorted(c["step"] for c in counted[-2:]))
        # The evaluator kept a checkpoint at least that good.
        kept = read_json(os.path.join(cfg["eval"]["best_dir"], "best.json"))["best"][0]
        self.assertGreaterEqual(kept["accuracy"], best["accuracy"])
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(30), 0, ev.output())


if __name__ == "__main__":
    unittest.main(verbosity=2)
