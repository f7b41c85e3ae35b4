"""End-to-end tests of a run's curves: the trainer's history
(train.metrics_file), `mnistctl plot` on a terminal and as an HTML page,
and the evaluator's eval.report_html, loaded in headless Chromium."""

import datetime
import fcntl
import html.parser
import json
import math
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import unittest
import zlib

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402
from mnlib import MNIST_EVAL, MNISTCTL, MNISTD  # noqa: E402

HISTORY_KEYS = {"step": int, "loss": float, "learning_rate": float, "steps_per_sec": (int, float),
                "time": str, "max_steps": int}


read_lines = mnlib.read_jsonl


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

    def test_full_disk_history_is_said_once_and_resumes(self):
        # The history ends 40 bytes short of a page and the disk is full: a
        # line is cut short there. It must not stay behind to garble the next
        # line, the failure is logged once (not at every 5 s line), training
        # and checkpoints go on, and lines come again, whole, once there is
        # room, with a log line that says so.
        mnt = self.small_fs("64k")
        hist = os.path.join(mnt, "train.jsonl")
        old = {"step": 1, "loss": 1.0, "learning_rate": 0.1, "steps_per_sec": 1.0,
               "time": "2026-01-01T00:00:00.000Z", "max_steps": 9, "pad": ""}
        line = json.dumps(old) + "\n"
        n = (4096 - 40) // len(line) - 1
        old["pad"] = "x" * (4096 - 40 - n * len(line) - len(line))
        with open(hist, "w") as f:
            f.write(line * n + json.dumps(old) + "\n")
        self.assertEqual(os.path.getsize(hist), 4096 - 40)
        kept = mnlib.read_text(hist)
        filler = os.path.join(mnt, "filler")
        mnlib.fill(filler)
        d = os.path.join(self.work, "ckpt")
        path, cfg = self.config(train={"max_steps": 10**9, "batch_size": 5, "metrics_file": hist},
                                checkpoint={"dir": d, "every_steps": 20000})
        p = self.start([MNISTD, "--config", path], "mnistd")
        p.wait_output("short write", 60)
        first = p.output().count("info training step=")
        mnlib.wait_for(lambda: p.output().count("info training step=") >= first + 3, 60,
                       "three more progress intervals")
        out = p.output()
        self.assertEqual(out.count("train.jsonl: "), 1, out)
        self.assertEqual(mnlib.read_text(hist), kept)
        before = mnlib.ckpt_steps(d)
        mnlib.wait_for(lambda: len(mnlib.ckpt_steps(d)) > len(before), 60, "checkpoints go on")
        r = self.run_prog([MNISTCTL, "--socket", cfg["control"]["socket"], "status"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        os.unlink(filler)
        mnlib.wait_for(lambda: mnlib.read_text(hist) != kept, 60, "a line once there is room")
        p.wait_output("writing again", 30)
        self.assertRegex(p.output(), r"train.jsonl: writing again; [1-9][0-9]* lines? (were|was) not written")
        p.signal(signal.SIGTERM)
        self.assertEqual(p.wait(60), 0, p.output())
        text = mnlib.read_text(hist)
        self.assertTrue(text.startswith(kept))
        new = [json.loads(x) for x in text[len(kept):].split("\n")[:-1]]
        self.assertTrue(new)
        for line in new:
            self.check_line(line)
        r = self.run_prog([MNISTCTL, "--config", path, "plot", "--terminal"])
        self.assertNotIn("not a JSON object", r.stdout + r.stderr)

    def test_unwritable_history_is_a_config_error(self):
        hist = os.path.join(self.work, "no", "such", "train.jsonl")
        path, _ = self.config(train={"metrics_file": hist})
        p = self.train(path, "mnistd", expect=78)
        self.assertIn("train.metrics_file: %s: cannot open metrics file" % hist, p.output())



def write_run(work, n_train=40, n_eval=12):
    """Synthetic metrics files of a 6000-step run, as the two programs write them."""
    train, ev = os.path.join(work, "train.jsonl"), os.path.join(work, "eval.jsonl")
    with open(train, "w") as f:
        for i in range(1, n_train + 1):
            s = i * 150
            f.write(json.dumps({"step": s, "loss": round(2.3 * math.exp(-s / 1500) + 0.3, 6),
                                "learning_rate": 0.8 * 0.99 ** (s / 550), "steps_per_sec": 300.5 + i,
                                "time": "2026-11-29T19:%02d:%02d.000Z" % (i // 12, (i * 5) % 60),
                                "max_steps": 6000}) + "\n")
    with open(ev, "w") as f:
        for i in range(1, n_eval + 1):
            s = i * 500
            f.write(json.dumps({"step": s, "accuracy": 0.8 + 0.007 * i - (0.02 if i == n_eval else 0),
                                "loss": 0.5 - 0.02 * i, "checkpoint": "model.ckpt-%d.safetensors" % s,
                                "ema": True, "time": "2026-11-29T19:%02d:%02d.500Z" % (i // 6, (i * 10) % 60),
                                "latency_ms": 35.5, "images": 200, "eval_ms": 3.0}) + "\n")
    return train, ev


def write_long_run(work, n_train, n_eval):
    """Metrics files of a long run: a line every 150 steps, 5 s apart, with a
    loss spike and a few null losses on the way."""
    train, ev = os.path.join(work, "long-train.jsonl"), os.path.join(work, "long-eval.jsonl")
    t0 = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)

    def when(i):
        return (t0 + datetime.timedelta(seconds=5 * i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    with open(train, "w") as f:
        for i in range(1, n_train + 1):
            loss = None if i % 5000 == 0 else (40.0 if i == n_train // 3 else 2.3 / math.sqrt(i) + 0.3)
            f.write(json.dumps({"step": i * 150, "loss": loss, "learning_rate": 0.8 * 0.99 ** (i / 5000),
                                "steps_per_sec": 30.5, "time": when(i), "max_steps": n_train * 150}) + "\n")
    ratio = n_train // n_eval
    with open(ev, "w") as f:
        for i in range(1, n_eval + 1):
            f.write(json.dumps({"step": i * 150 * ratio, "accuracy": 0.9 - 0.5 / math.sqrt(i), "loss": 0.5 / math.sqrt(i),
                                "checkpoint": "model.ckpt-%d.safetensors" % (i * 150 * ratio), "ema": True,
                                "time": when(i * ratio)}) + "\n")
    return train, ev


def png_pixels(path):
    """Decodes an 8-bit RGB(A), non-interlaced PNG (what Chromium writes) into
    (width, height, rows of bytes per pixel)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, rows, prev = zlib.decompress(idat), [], bytearray(width * bpp)
    stride = width * bpp + 1
    for y in range(height):
        ftype, line = raw[y * stride], bytearray(raw[y * stride + 1:(y + 1) * stride])
        for x in range(len(line)):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


class Chromium:
    """Headless Debian chromium loading a local page: its DOM, a screenshot,
    its console messages (stderr log) and every network request it made
    (its net log)."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0"]

    def __init__(self, test):
        self.test = test
        self.binary = shutil.which("chromium")
        if not self.binary:
            test.skipTest("chromium is not installed (scripts/deps.sh installs it)")

    def run(self, url, *extra):
        profile = tempfile.mkdtemp(prefix="mn-chromium-", dir=self.test.work)
        netlog = os.path.join(profile, "netlog.json")
        argv = [self.binary] + self.FLAGS + ["--user-data-dir=" + profile, "--log-net-log=" + netlog,
                                             "--net-log-capture-mode=Everything"] + list(extra) + [url]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120 * mnlib.SLOW)
        self.test.assertEqual(r.returncode, 0, r.stderr)
        with open(netlog) as f:
            text = f.read()
        # The requests the page made: those in its network isolation key
        # (file://). Chromium's own (component updates, time queries) are
        # keyed otherwise. A net log cut short at exit lacks its closing
        # brackets, so each params object is read on its own.
        urls, decoder = set(), json.JSONDecoder()
        for m in re.finditer(r'"params":', text):
            try:
                params, _ = decoder.raw_decode(text, m.end())
            except ValueError:  # the last event, cut short
                continue
            if "url" in params and str(params.get("network_isolation_key", "")).startswith("file://"):
                urls.add(params["url"])
        console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
        return r.stdout, console, urls

    def dump_dom(self, url):
        return self.run(url, "--dump-dom")

    def screenshot(self, url, png):
        return self.run(url, "--screenshot=" + png, "--window-size=1280,1400")


def iso_ms(t):
    """Milliseconds since the epoch of an RFC 3339 UTC time as the programs write it."""
    d = datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return round(d.timestamp() * 1000)


def figures(dom):
    """{chart id: (data-points, plotted point markers)} from the DOM."""
    out = {}
    for m in re.finditer(r'<figure id="chart-([a-z-]+)" data-points="(\d+)">(.*?)</figure>', dom, re.S):
        markers = len(re.findall(r"<use [^>]*href=[\"']#gpPt\d+[\"'][^>]*transform=[\"']translate", m.group(3)))
        out[m.group(1)] = (int(m.group(2)), markers)
    return out


def summary(dom):
    return dict(re.findall(r'<td id="summary-([a-z-]+)"[^>]*>([^<]*)</td>', dom))


class HTMLChecker(html.parser.HTMLParser):
    """Holds a page to what a browser needs no error recovery for: every
    element but the void ones closed, in order, and nothing outside <html>."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "embed", "source",
            "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append("</%s> closes %s" % (tag, self.stack[-1:] or "nothing"))
        else:
            self.stack.pop()

    def handle_data(self, data):
        if not self.stack and data.strip():
            self.errors.append("text outside <html>: %r" % data[:40])
        self.text.append(data)


def check_html(test, text):
    """Parses a page with Python's HTML parser: balanced, and no control characters."""
    p = HTMLChecker()
    p.feed(text)
    p.close()
    test.assertEqual(p.errors, [])
    test.assertEqual(p.stack, [])
    test.assertIsNone(re.search(r"[\x00-\x08\x0b\x0e-\x1f\x7f]", text), "control characters")
    return "".join(p.text)


def check_page(test, page, train_path, eval_path):
    """Loads a report page in Chromium and holds it against the metrics files
    it was drawn from: one chart per curve with one plotted point per line,
    the summary's numbers, no console message, no network request, a
    screenshot that is not blank. Returns the DOM."""
    chromium = Chromium(test)
    dom, console, urls = chromium.dump_dom("file://" + page)
    train, ev = read_lines(train_path), read_lines(eval_path)
    test.assertEqual(figures(dom), {"validation-accuracy": (len(ev), len(ev)),
                                    "validation-loss": (len(ev), len(ev)),
                                    "training-loss": (len(train), len(train)),
                                    "learning-rate": (len(train), len(train))})
    s = summary(dom)
    best = max(ev, key=lambda x: x["accuracy"])  # the earliest of equals, as the page
    test.assertEqual(int(s["steps"]), max(train[-1]["step"], ev[-1]["step"]))
    test.assertEqual(float(s["best-accuracy"]), best["accuracy"])
    test.assertEqual(int(s["best-step"]), best["step"])
    test.assertEqual(s["best-checkpoint"], best["checkpoint"])
    test.assertEqual(float(s["latest-accuracy"]), ev[-1]["accuracy"])
    test.assertEqual(int(s["latest-step"]), ev[-1]["step"])
    test.assertEqual(float(s["steps-per-sec"]), train[-1]["steps_per_sec"])
    times = [t["time"] for t in train + ev]
    elapsed = (iso_ms(max(times)) - iso_ms(min(times))) / 1000
    test.assertTrue('id="summary-elapsed" data-seconds="%.3f"' % elapsed in dom, s)
    test.assertTrue('<pre id="config">' in dom, "the configuration")
    test.assertEqual(console, [], "console messages")
    test.assertEqual(urls, set(), "network requests")
    png = page + ".png"
    chromium.screenshot("file://" + page, png)
    width, height, bpp, rows = png_pixels(png)
    colours = {row[x:x + 3] for row in rows[::7] for x in range(0, width * bpp, 7 * bpp)}
    test.assertGreater(len(colours), 20, "the screenshot is (nearly) blank")
    return dom


class PlotTest(mnlib.TestCase):
    def plot(self, *args, env=None):
        return self.run_prog([MNISTCTL, "--config", self.cfg_path, "plot"] + list(args), env=env)

    def setUp(self):
        super().setUp()
        self.train_path, self.eval_path = write_run(self.work)
        self.cfg_path, _ = self.config(train={"metrics_file": self.train_path},
                                       eval={"metrics_file": self.eval_path})

    def test_terminal_chart_fits_a_fixed_size_pty(self):
        for cols, rows in ((100, 30), (72, 24)):
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            # Standard output a terminal: --terminal is the default.
            p = subprocess.Popen([MNISTCTL, "--config", self.cfg_path, "plot"], stdout=slave,
                                 stderr=subprocess.PIPE)
            os.close(slave)
            out = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            os.close(master)
            self.assertEqual(p.wait(60 * mnlib.SLOW), 0, p.stderr.read())
            p.stderr.close()
            lines = out.decode().replace("\r\n", "\n").rstrip("\n").split("\n")
            self.assertEqual(len(lines), rows - 1, "the chart fills the terminal but its last line")
            self.assertLessEqual(max(len(x) for x in lines), cols)
            self.assertGreaterEqual(max(len(x.rstrip()) for x in lines), cols - 5)
            text = "\n".join(lines)
            self.assertIn("training loss", text)
            self.assertIn("validation accuracy", text)
            self.assertIn("6000", text)  # the last step on the step axis
            self.assertIn("*", text)

    def test_page_in_a_real_browser(self):
        page = os.path.join(self.work, "report.html")
        r = self.plot("-o", page)
        self.assertEqual(r.returncode, 0, r.stderr)
        dom = check_page(self, page, self.train_path, self.eval_path)
        self.assertTrue(self.train_path in dom, "the files are named")

    def test_browser_checks_can_fail(self):
        # The same checks see a console error and a network request when there is one.
        page = os.path.join(self.work, "bad.html")
        with open(page, "w") as f:
            f.write('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("boom")</script></body></html>')
        _, console, urls = Chromium(self).dump_dom("file://" + page)
        self.assertTrue(any("boom" in line for line in console), console)
        self.assertIn("http://127.0.0.1:9/x.png", urls)

    def test_best_json_marks_the_best_checkpoint(self):
        best = os.path.join(self.work, "best.json")
        with open(best, "w") as f:
            json.dump({"best": [{"step": 3000, "accuracy": 0.821, "loss": 0.4, "file": "model.ckpt-3000.safetensors",
                                 "time": "2026-11-29T19:00:00Z"}]}, f)
        r = self.plot("--best", best, "-o", "-")
        self.assertEqual(r.returncode, 0, r.stderr)
        s = summary(r.stdout)
        self.assertEqual((s["best-step"], s["best-accuracy"], s["best-checkpoint"]),
                         ("3000", "0.821", "model.ckpt-3000.safetensors"))
        self.assertIn("best: step 3000", r.stdout)

    def test_resumed_history_keeps_the_last_line_of_a_step(self):
        with open(self.train_path, "a") as f:  # a crash after 6000, resumed from 5700
            f.write(json.dumps({"step": 5700, "loss": 0.25, "learning_rate": 0.7, "steps_per_sec": 1,
                                "time": "2026-11-29T19:04:00.000Z"}) + "\n")
        r = self.plot("--train", self.train_path, "-o", "-")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(figures(r.stdout)["training-loss"], (38, 38))
        self.assertEqual(summary(r.stdout)["steps"], "5700")

    def test_bad_inputs_are_errors_and_write_nothing(self):
        page = os.path.join(self.work, "report.html")
        empty, garbage = os.path.join(self.work, "empty.jsonl"), os.path.join(self.work, "garbage.jsonl")
        open(empty, "w").close()
        with open(self.eval_path) as f:
            text = f.read()
        with open(garbage, "w") as f:
            f.write(text + "not json\n")
        cases = [
            (["--eval", os.path.join(self.work, "missing.jsonl")], {}, "missing.jsonl: cannot open"),
            (["--eval", empty], {}, "empty.jsonl: has no lines yet"),
            (["--eval", garbage], {}, "garbage.jsonl:13: not a JSON object"),
            (["--train", self.eval_path], {}, "eval.jsonl:1: \"learning_rate\" must be a number"),
            ([], {"PATH": "/nonexistent"}, "gnuplot is not installed"),
        ]
        for args, env, message in cases:
            for mode in (["-o", page], ["--terminal"]):
                r = self.plot(*(args + mode), env=env)
                self.assertEqual(r.returncode, 1, (args, mode, r.stdout, r.stderr))
                self.assertIn(message, r.stderr, (args, mode))
                self.assertEqual(r.stdout, "")
                self.assertFalse(os.path.exists(page))
        # -o naming a file plot reads (a slip of the shell's completion) once
        # replaced a run's history with the page drawn from it.
        best = os.path.join(self.work, "best.json")
        with open(best, "w") as f:
            json.dump({"best": [{"file": "model.ckpt-5000.safetensors", "step": 5000, "accuracy": 0.9}]}, f)
        for args, out, what in (([], self.train_path, "the trainer's history"),
                                ([], self.eval_path, "the evaluator's metrics"),
                                (["--eval", self.eval_path], self.eval_path, "the evaluator's metrics"),
                                (["--best", best], best, "best.json")):
            with open(out, "rb") as f:
                before = f.read()
            r = self.plot(*args, "-o", out)
            self.assertEqual(r.returncode, 1, (args, r.stderr))
            self.assertIn("%s is %s being read (%s); not replacing it" % (out, what, out), r.stderr)
            with open(out, "rb") as f:
                self.assertEqual(f.read(), before, out)
        r = self.run_prog([MNISTCTL, "--config", os.path.join(self.work, "none.json"), "plot", "-o", page])
        self.assertEqual(r.returncode, 1)
        mnlib.write_config(self.cfg_path, mnlib.base_config(self.work, self.data))
        r = self.plot("-o", page)
        self.assertEqual(r.returncode, 1)
        self.assertIn("sets neither train.metrics_file nor eval.metrics_file", r.stderr)
        r = self.plot()  # standard output is a pipe here
        self.assertEqual(r.returncode, 2)
        self.assertIn("not a terminal", r.stderr)

    def test_a_full_standard_output_is_an_error(self):
        for mode in (["-o", "-"], ["--terminal"]):
            with open("/dev/full", "w") as full:
                r = subprocess.run([MNISTCTL, "--config", self.cfg_path, "plot"] + mode, stdout=full,
                                   stderr=subprocess.PIPE, text=True, timeout=60 * mnlib.SLOW)
            self.assertEqual(r.returncode, 1, (mode, r.stderr))
            self.assertIn("standard output: No space left on device", r.stderr, mode)

    def test_a_long_run_gives_a_bounded_page(self):
        """A month of training (200000 history lines, 20000 evaluations) is
        drawn quickly into a page of bounded size that is still valid HTML,
        whose charts keep at most 2000 points each, and that Chromium shows
        without a console message."""
        train, ev = write_long_run(self.work, 200000, 20000)
        page = os.path.join(self.work, "report.html")
        r = self.plot("--train", train, "--eval", ev, "-o", page)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertLess(os.path.getsize(page), 2 << 20)
        with open(page, "rb") as f:
            text = f.read().decode("utf-8")  # strictly: the page is UTF-8
        check_html(self, text)
        dom, console, urls = Chromium(self).dump_dom("file://" + page)
        self.assertEqual(console, [])
        self.assertEqual(urls, set())
        figs = figures(dom)
        self.assertEqual(set(figs), {"validation-accuracy", "validation-loss", "training-loss", "learning-rate"})
        for name, (points, markers) in figs.items():
            self.assertEqual(points, markers, name)
            self.assertTrue(400 <= points <= 2000, (name, points))
        self.assertEqual(summary(dom)["steps"], str(200000 * 150))
        r = self.plot("--train", train, "--eval", ev, "--terminal")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("training loss", r.stdout)

    def test_a_diverged_run_is_drawn(self):
        """Every loss null (non-finite): the charts are drawn, empty and saying so."""
        with open(self.train_path) as f:
            lines = [json.loads(x) for x in f]
        with open(self.train_path, "w") as f:
            for x in lines:
                f.write(json.dumps(dict(x, loss=None, learning_rate=None)) + "\n")
        with open(self.eval_path) as f:
            lines = [json.loads(x) for x in f]
        with open(self.eval_path, "w") as f:
            for x in lines:
                f.write(json.dumps(dict(x, loss=None, accuracy=0.1)) + "\n")
        r = self.plot("--terminal")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("no finite values", r.stdout)
        r = self.plot("-o", "-")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(figures(r.stdout), {"validation-accuracy": (12, 12), "validation-loss": (0, 0),
                                             "training-loss": (0, 0), "learning-rate": (0, 0)})
        check_html(self, r.stdout)

    def test_an_interrupted_page_leaves_no_temporary_file(self):
        """plot -o writes its page as convert, freeze and export write their
        outputs: interrupted while the page is being made durable (held in
        its fsync by gate.c), it removes its temporary and dies of the
        signal, so the status says what ended it."""
        page = os.path.join(self.work, "report.html")
        for sig in (signal.SIGINT, signal.SIGTERM):
            env, gate, held = mnlib.gate(self, "fsync")
            open(gate, "w").close()
            p = subprocess.Popen([MNISTCTL, "--config", self.cfg_path, "plot", "-o", page],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=dict(os.environ, **env))
            mnlib.wait_for(lambda: os.path.exists(held), 60 * mnlib.SLOW, "plot held in its fsync")
            p.send_signal(sig)
            os.unlink(gate)
            _, err = p.communicate(timeout=60 * mnlib.SLOW)
            self.assertEqual(p.returncode, -sig, err)
            self.assertEqual([n for n in os.listdir(self.work) if n.endswith(".tmp")], [])
            self.assertFalse(os.path.exists(page))
            os.unlink(held)

    def test_watch_redraws_as_lines_arrive(self):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        train, ev = os.path.join(self.work, "later-train.jsonl"), os.path.join(self.work, "later-eval.jsonl")
        p = subprocess.Popen([MNISTCTL, "--config", self.cfg_path, "plot", "--watch", "--train", train,
                              "--eval", ev], stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        out = bytearray()
        clear, status = "\033[H\033[2J", "Ctrl-C ends"

        def screen():
            """The last complete drawing: what follows the last clear, up to the status line."""
            frames = [f for f in out.decode("utf-8", "replace").split(clear) if f.endswith(status)]
            return frames[-1].replace("\r\n", "\n") if frames else ""

        def wait_screen(pred, what):
            def more():
                r, _, _ = select.select([master], [], [], 0.05)
                if r:
                    try:
                        out.extend(os.read(master, 65536))
                    except OSError:
                        pass
                return pred(screen())
            mnlib.wait_for(more, 30 * mnlib.SLOW, what)

        try:
            # Neither file exists yet: said on the screen, and waited for.
            wait_screen(lambda s: "waiting: " in s and "no lines yet" in s, "the waiting message")
            shutil.copy(self.eval_path, ev)
            wait_screen(lambda s: "validation accuracy" in s, "the evaluator's chart")
            # The trainer's history arrives a line at a time, as the trainer writes it.
            with open(self.train_path) as src, open(train, "a") as dst:
                for line in src:
                    dst.write(line)
                    dst.flush()
            wait_screen(lambda s: "training loss" in s and "validation accuracy" in s, "both charts")
            lines = screen().split("\n")
            self.assertEqual(len(lines), 30, "the charts and a status line fill the screen")
            self.assertLessEqual(max(len(x) for x in lines), 100)
            self.assertNotIn("9000", screen())
            # A line at step 9000 stretches the step axis.
            with open(train, "a") as f:
                f.write(json.dumps({"step": 9000, "loss": 0.2, "learning_rate": 0.5, "steps_per_sec": 300,
                                    "time": "2026-11-29T19:10:00.000Z"}) + "\n")
            wait_screen(lambda s: "9000" in s, "a redraw with step 9000")
            # Rotated (rename and create): drawn again from the new file alone.
            rotated = train + ".tmp"
            with open(self.train_path) as src, open(rotated, "w") as dst:
                dst.writelines(src.readlines()[:4])
            os.replace(rotated, train)
            wait_screen(lambda s: "9000" not in s and "training loss" in s, "a redraw after the rotation")
            # A smaller terminal: SIGWINCH, and the next drawing fits it.
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 72, 0, 0))
            p.send_signal(signal.SIGWINCH)
            wait_screen(lambda s: len(s.split("\n")) == 24, "a redraw at 72x24")
            self.assertLessEqual(max(len(x) for x in screen().split("\n")), 72)
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(30 * mnlib.SLOW), 0, p.stderr.read())
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
            os.close(master)

    def test_watch_cannot_start(self):
        with open(self.eval_path, "a") as f:
            f.write("garbage\n")
        r = self.plot("--watch")
        self.assertEqual(r.returncode, 1)
        self.assertIn("eval.jsonl:13: not a JSON object", r.stderr)
        r = self.plot("--watch", "--train", self.train_path, env={"PATH": "/nonexistent"})
        self.assertEqual(r.returncode, 1)
        self.assertIn("gnuplot is not installed", r.stderr)
        r = self.plot("--watch", "-o", os.path.join(self.work, "report.html"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("excludes -o", r.stderr)
        mnlib.write_config(self.cfg_path, mnlib.base_config(self.work, self.data))
        r = self.plot("--watch")
        self.assertEqual(r.returncode, 1)
        self.assertIn("sets neither train.metrics_file nor eval.metrics_file", r.stderr)


class EvaluatorPageTest(mnlib.TestCase):
    def run_both(self, steps=300, env=None, evaluator_first=True, **eval_cfg):
        self.train_path = os.path.join(self.work, "train.jsonl")
        self.eval_path = os.path.join(self.work, "eval.jsonl")
        self.page = os.path.join(self.work, "report.html")
        ev = dict({"metrics_file": self.eval_path, "report_html": self.page}, **eval_cfg)
        path, _ = self.config(train={"max_steps": steps, "metrics_file": self.train_path},
                              checkpoint={"every_steps": 50}, eval=ev)
        if evaluator_first:
            e = self.start([MNIST_EVAL, "--config", path], "eval", env=env)
        d = self.start([MNISTD, "--config", path], "mnistd")
        self.assertEqual(d.wait(120), 0, d.output())
        if not evaluator_first:
            e = self.start([MNIST_EVAL, "--config", path], "eval", env=env)
        mnlib.wait_for(lambda: any(x["step"] == steps for x in read_lines(self.eval_path)), 60,
                       "the last checkpoint's evaluation")
        return e

    def page_step(self):
        try:
            with open(self.page) as f:
                return int(summary(f.read()).get("latest-step", "-1"))
        except (FileNotFoundError, ValueError):
            return None

    def test_page_follows_the_evaluations(self):
        e = self.run_both()
        mnlib.wait_for(lambda: self.page_step() == 300, 60, "the page of the last evaluation")
        e.signal(signal.SIGTERM)
        self.assertEqual(e.wait(30), 0, e.output())
        self.assertEqual([n for n in os.listdir(self.work) if n.startswith(".")], [], "temporary files left")
        self.assertTrue(os.path.exists(self.page))

    def test_a_killed_writers_temporary_is_removed_at_start(self):
        # A SIGKILL between the page's write and its rename leaves the
        # temporary in a directory that may be shared (a web root): the next
        # start removes the page's own, of a process gone, and nothing else.
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = ".report.html.%d-3.tmp" % dead.pid
        live = ".report.html.%d-1.tmp" % os.getpid()  # a writer still running
        other = ".index.html.%d-1.tmp" % dead.pid      # another file's
        for name in (stale, live, other):
            open(os.path.join(self.work, name), "w").close()
        e = self.run_both(steps=100)
        mnlib.wait_for(lambda: self.page_step() == 100, 60, "the page of the last evaluation")
        e.signal(signal.SIGTERM)
        self.assertEqual(e.wait(30), 0, e.output())
        left = [n for n in os.listdir(self.work) if n.endswith(".tmp")]
        self.assertEqual(sorted(left), sorted([live, other]))

    def test_page_of_a_finished_run(self):
        """The page is drawn at each evaluation from what the files hold then:
        the trainer's last history line is written as it exits, which may be
        after the evaluator drew the last page of a run as short as this one.
        An evaluator started on the finished run draws from complete files,
        so every number can be held against them."""
        e = self.run_both(evaluator_first=False)
        mnlib.wait_for(lambda: self.page_step() == 300, 60, "the page of the last evaluation")
        e.signal(signal.SIGTERM)
        self.assertEqual(e.wait(30), 0, e.output())
        dom = check_page(self, self.page, self.train_path, self.eval_path)
        self.assertTrue('<meta http-equiv="refresh" content="15">' in dom, "the page reloads itself")

    def test_page_is_the_plot_of_the_lines_it_read(self):
        """Each build reads only what was appended since the one before. After
        a resume whose history goes back (a trainer that crashed after its
        last line, restarted from an older checkpoint, writes the steps again),
        a record cut off and a line still being written, the page is still,
        number for number, the one mnistctl plot -o draws from the same
        complete lines. The history is long enough for its charts to be
        reduced, and written here: the trainer only makes the checkpoints
        whose evaluations rebuild the page."""
        train_path = os.path.join(self.work, "train.jsonl")
        eval_path = os.path.join(self.work, "eval.jsonl")
        self.page = os.path.join(self.work, "report.html")

        def history(steps, factor):
            t0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
            return "".join(json.dumps({
                "step": n, "loss": round(factor * (1 + 1000 / n), 6), "learning_rate": 0.1,
                "steps_per_sec": 100 + n % 7,
                "time": (t0 + datetime.timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "max_steps": 10**6}) + "\n" for n in steps)

        with open(train_path, "w") as f:
            f.write(history(range(10, 30001, 10), 1))
        ev = {"metrics_file": eval_path, "report_html": self.page}
        eval_cfg, _ = self.config("eval.json", train={"metrics_file": train_path}, eval=ev)
        train_cfg, cfg = self.config(train={"max_steps": 100}, checkpoint={"every_steps": 50},
                                     eval=ev)
        e = self.start([MNIST_EVAL, "--config", eval_cfg], "eval")
        d = self.start([MNISTD, "--config", train_cfg], "mnistd")
        self.assertEqual(d.wait(120), 0, d.output())
        mnlib.wait_for(lambda: self.page_step() == 100, 60, "the page of step 100")

        with open(train_path, "a") as f:
            f.write(history(range(15000, 40001, 10), 2))
            f.write('{"step": 40010, "loss"\n')   # a writer that died mid-line
            f.write(history([40020], 2))
            f.write('{"step": 40030, "lo')        # still being written
        cfg["train"]["max_steps"] = 200
        mnlib.write_config(train_cfg, cfg)
        d = self.start([MNISTD, "--config", train_cfg], "mnistd-resumed")
        self.assertEqual(d.wait(120), 0, d.output())
        mnlib.wait_for(lambda: self.page_step() == 200, 60, "the page of step 200")
        e.signal(signal.SIGTERM)
        self.assertEqual(e.wait(30), 0, e.output())

        with open(self.page) as f:
            page = f.read()
        with open(train_path) as f:
            complete = f.read().count("\n")
        self.assertIn("%s</code> (%d lines, 1 cut off" % (train_path, complete), page)
        self.assertLessEqual(figures(page)["training-loss"][0], 2000)  # reduced
        out = os.path.join(self.work, "plot.html")
        r = self.run_prog([MNISTCTL, "--config", eval_cfg, "plot", "-o", out])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(out) as f:
            plot = f.read()

        def body(text):
            return text[text.index("<h2>Summary</h2>"):text.index('<pre id="config">')]

        self.assertEqual(body(page), body(plot))
        self.assertIn('<td id="summary-steps">40020</td>', page)

    def test_without_gnuplot_evaluating_goes_on(self):
        # mnist-eval finds gnuplot in PATH; without it each page fails, loudly, and nothing else does.
        e = self.run_both(steps=100, env={"PATH": "/nonexistent"})
        e.wait_output("eval.report_html not updated: gnuplot is not installed", 30)
        self.assertFalse(os.path.exists(self.page))
        self.assertEqual([x["step"] for x in read_lines(self.eval_path)][-1], 100)

    def test_configuration_errors_exit_78(self):
        for ev, message in (({"report_html": os.path.join(self.work, "r.html")},
                             "eval.report_html needs eval.metrics_file"),
                            ({"report_html": os.path.join(self.work, "no", "r.html"),
                              "metrics_file": os.path.join(self.work, "e.jsonl")},
                             "eval.report_html: %s: No such file or directory" % os.path.join(self.work, "no"))):
            path, _ = self.config(eval=ev)
            r = self.run_prog([MNIST_EVAL, "--config", path])
            self.assertEqual(r.returncode, 78, r.stdout + r.stderr)
            self.assertIn(message, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
