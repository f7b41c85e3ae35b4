"""End-to-end tests of a run's curves: the trainer's history
(train.metrics_file), `mnistctl plot` on a terminal and as an HTML page,
and the evaluator's eval.report_html, loaded in headless Chromium."""

import json
import math
import os
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402
from mnlib import MNISTD  # noqa: E402

HISTORY_KEYS = {"step": int, "loss": float, "learning_rate": float, "steps_per_sec": (int, float),
                "time": str, "max_steps": int}


def read_lines(path):
    """The complete lines of a JSON-lines file, parsed."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1]]


class HistoryTest(mnlib.TestCase):
    def train(self, cfg_path, name, expect=0):
        p = self.start([MNISTD, "--config", cfg_path], name)
        self.assertEqual(p.wait(120), expect, p.output())
        return p

    def check_line(self, line):
        self.assertEqual(set(line), set(HISTORY_KEYS), line)
        for k, t in HISTORY_KEYS.items():
            self.assertIsInstance(line[k], t, k)
        self.assertTrue(math.isfinite(line["loss"]) and line["loss"] > 0, line)
        self.assertTrue(0 < line["learning_rate"] <= 0.1, line)
        self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_a_run_and_its_resume_append_lines(self):
        hist = os.path.join(self.work, "train.jsonl")
        path, cfg = self.config(train={"max_steps": 60, "metrics_file": hist},
                                checkpoint={"every_steps": 30})
        self.train(path, "a1")
        lines = read_lines(hist)
        # A run shorter than the progress interval still ends with its last step.
        self.assertEqual(lines[-1]["step"], 60)
        cfg["train"]["max_steps"] = 90
        mnlib.write_config(path, cfg)
        self.train(path, "a2")
        more = read_lines(hist)
        self.assertEqual(more[: len(lines)], lines, "a resumed run appends")
        self.assertEqual(more[-1]["step"], 90)
        self.assertEqual(more[-1]["max_steps"], 90)
        steps = [x["step"] for x in more]
        self.assertEqual(steps, sorted(set(steps)))
        for line in more:
            self.check_line(line)

    def test_lines_per_interval_and_sighup_reopens(self):
        hist = os.path.join(self.work, "train.jsonl")
        path, cfg = self.config(train={"max_steps": 10**9, "metrics_file": hist},
                                checkpoint={"every_steps": 10**6})
        p = self.start([MNISTD, "--config", path], "mnistd")
        # The trainer logs progress every 5 s; the history gets a line each time.
        mnlib.wait_for(lambda: len(read_lines(hist)) >= 2, 60, "two history lines")
        before = read_lines(hist)
        self.assertLess(before[0]["step"], before[1]["step"])
        # logrotate moves the file aside and sends SIGHUP.
        os.rename(hist, hist + ".1")
        p.signal(signal.SIGHUP)
        p.wait_output("configuration reloaded", 30)
        p.signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, p.output())
        rotated, fresh = read_lines(hist + ".1"), read_lines(hist)
        self.assertGreaterEqual(len(fresh), 1, "the last steps go to the reopened file")
        self.assertGreater(fresh[0]["step"], rotated[-1]["step"])
        for line in rotated + fresh:
            self.check_line(line)

    def test_unwritable_history_is_a_config_error(self):
        hist = os.path.join(self.work, "no", "such", "train.jsonl")
        path, _ = self.config(train={"metrics_file": hist})
        p = self.train(path, "mnistd", expect=78)
        self.assertIn("train.metrics_file: %s: cannot open metrics file" % hist, p.output())


if __name__ == "__main__":
    unittest.main(verbosity=2)
