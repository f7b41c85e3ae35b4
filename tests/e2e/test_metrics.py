"""Prometheus metrics end to end: both programs write their textfiles
(metrics.textfile, eval.textfile) during a real run; the real `promtool
check metrics` accepts both files at several moments; a real
prometheus-node-exporter, started here with its textfile collector on that
directory and listening on a loopback port, serves our families over HTTP
with the values `mnistctl status --json` and the evaluator's metrics file
report at the same step; the alerting rules pass `promtool check rules` and
their unit test, `promtool test rules`."""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402
from mnlib import MNIST_EVAL, MNISTCTL, MNISTD, wait_for  # noqa: E402

SOURCE = os.path.abspath(os.environ.get("MN_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", "..")))
RULES = os.path.join(SOURCE, "contrib", "prometheus")
PROMTOOL = shutil.which("promtool")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
NEED = "the Debian packages prometheus and prometheus-node-exporter (scripts/deps.sh installs them)"

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)", re.S)


def parse_exposition(text):
    """{(name, frozenset of (label, value)): float} from Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError("not a sample line: %r" % line)
        labels = frozenset((k, _ESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), v))
                           for k, v in _LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples, name, **labels):
    """The one sample of name whose labels include labels."""
    hits = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    if len(hits) != 1:
        raise AssertionError("%d samples of %s%s" % (len(hits), name, labels))
    return hits[0]


def rule_expressions(text):
    """The expr: values of a Prometheus rules file, inline or as a | block."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        if not m.group(2).startswith("|"):
            out.append(m.group(2))
            continue
        block = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(m.group(1))):
            block.append(lines[i])
            i += 1
        out.append("\n".join(block))
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@unittest.skipUnless(PROMTOOL and NODE_EXPORTER, "needs " + NEED)
class MetricsTest(mnlib.TestCase):
    def promtool_check(self, path):
        """`promtool check metrics` reads the file on standard input and must report nothing."""
        with open(path, "rb") as f:
            r = subprocess.run([PROMTOOL, "check", "metrics"], stdin=f, capture_output=True, text=True, timeout=60)
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""), path)
        with open(path) as f:
            return parse_exposition(f.read())

    def read(self, path):
        try:
            with open(path) as f:
                return parse_exposition(f.read())
        except FileNotFoundError:
            return None

    def ctl(self, cfg_path, *args):
        r = self.run_prog([MNISTCTL, "--config", cfg_path] + list(args))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def node_exporter(self, directory, as_user=None):
        """A real node-exporter serving only its textfile collector on directory; returns its URL.
        as_user: [uid, gid] to run it as (it needs root and setpriv to switch)."""
        # The port is free when chosen, not necessarily when node-exporter
        # binds it (another program's connection may take it in between):
        # then another port.
        for attempt in range(5):
            port = free_port()
            argv = [NODE_EXPORTER, "--collector.disable-defaults", "--collector.textfile",
                    "--collector.textfile.directory=" + directory, "--web.listen-address=127.0.0.1:%d" % port]
            if as_user:
                argv = ["setpriv", "--reuid=%d" % as_user[0], "--regid=%d" % as_user[1], "--clear-groups"] + argv
            p = self.start(argv, "node-exporter-%d" % attempt)
            url = "http://127.0.0.1:%d/metrics" % port

            def up():
                if p.p.poll() is not None:
                    if "address already in use" in p.output():
                        return "taken"
                    raise AssertionError("node-exporter exited:\n" + p.output())
                try:
                    with urllib.request.urlopen(url, timeout=5):
                        return True
                except OSError:
                    return False
            if wait_for(up, 60, "node-exporter on port %d" % port) is True:
                return url
        self.fail("no free port for node-exporter in 5 tries")

    def scrape(self, url):
        with urllib.request.urlopen(url, timeout=30) as r:
            return parse_exposition(r.read().decode())

    def test_textfiles_are_valid_and_node_exporter_serves_what_status_says(self):
        tdir = os.path.join(self.work, "textfile")
        os.makedirs(tdir)
        trainer_prom = os.path.join(tdir, "mnistd.prom")
        eval_prom = os.path.join(tdir, "mnist-eval.prom")
        jsonl = os.path.join(self.work, "eval.jsonl")
        cfg_path, cfg = self.config(train={"max_steps": 10 ** 9, "batch_size": 20},
                                    checkpoint={"every_steps": 50, "max_to_keep": 0},
                                    eval={"metrics_file": jsonl, "textfile": eval_prom},
                                    metrics={"textfile": trainer_prom, "interval_ms": 100, "run": "e2e"})
        url = self.node_exporter(tdir)

        # Moment 1: the evaluator alone, before any checkpoint: NaN where nothing is known yet.
        ev = self.start([MNIST_EVAL, "--config", cfg_path], "eval")
        wait_for(lambda: self.read(eval_prom), 60, "the evaluator's textfile")
        s = self.promtool_check(eval_prom)
        self.assertEqual(value(s, "mnist_eval_running", run="e2e"), 1)
        self.assertEqual(value(s, "mnist_eval_step"), -1)
        self.assertTrue(math.isnan(value(s, "mnist_eval_validation_accuracy_ratio")))
        self.assertEqual(value(s, "mnist_eval_evaluations_total"), 0)

        # Moment 2: training, checkpoints published and evaluated.
        d = self.start([MNISTD, "--config", cfg_path], "mnistd")
        wait_for(lambda: len(mnlib.ckpt_steps(cfg["checkpoint"]["dir"])) >= 3, 120, "three checkpoints")
        # The writer thread can publish checkpoints before the loop's next textfile refresh.
        wait_for(lambda: (self.read(trainer_prom) or {}) and value(self.read(trainer_prom), "mnistd_global_step") > 0,
                 60, "a step in the trainer's textfile")
        s = self.promtool_check(trainer_prom)
        self.assertEqual(value(s, "mnistd_running", run="e2e"), 1)
        self.assertGreater(value(s, "mnistd_global_step"), 0)
        wait_for(lambda: (self.read(eval_prom) or {}) and value(self.read(eval_prom), "mnist_eval_step") > 0,
                 60, "an evaluation in the textfile")
        self.promtool_check(eval_prom)

        # Moment 3: paused, so nothing moves; the evaluator catches up with the last checkpoint.
        self.ctl(cfg_path, "pause")
        status = json.loads(self.ctl(cfg_path, "status", "--json"))
        self.assertTrue(status["paused"], status)
        latest_step = int(re.search(r"-(\d+)\.safetensors$", status["latest_checkpoint"]).group(1))

        def trainer_caught_up():
            # The pause shows before the checkpoints queued ahead of it are
            # durable; the last one's step shows with the final counters.
            t = self.read(trainer_prom)
            return t if (t and value(t, "mnistd_paused") == 1 and value(t, "mnistd_global_step") == status["step"]
                         and value(t, "mnistd_last_checkpoint_step") == latest_step) else None
        wait_for(trainer_caught_up, 60, "the trainer's textfile at the paused step")

        def evaluator_caught_up():
            e = self.read(eval_prom)
            return e if e and value(e, "mnist_eval_step") == latest_step else None
        wait_for(evaluator_caught_up, 60, "the evaluation of step %d in the textfile" % latest_step)
        local = {**self.promtool_check(trainer_prom), **self.promtool_check(eval_prom)}

        served = self.scrape(url)
        self.assertEqual(value(served, "node_textfile_scrape_error"), 0)
        for name in ("mnistd_global_step", "mnist_eval_step", "mnistd_checkpoints_published_total",
                     "mnist_eval_validation_accuracy_ratio", "mnistd_checkpoint_write_duration_seconds_count"):
            self.assertEqual(value(served, name, run="e2e"), value(local, name), name)
        # The trainer's families against mnistctl status --json.
        self.assertEqual(value(served, "mnistd_global_step"), status["step"])
        self.assertEqual(value(served, "mnistd_max_steps"), status["max_steps"])
        self.assertEqual(value(served, "mnistd_loss"), status["loss"])
        self.assertEqual(value(served, "mnistd_learning_rate"), status["learning_rate"])
        self.assertEqual(value(served, "mnistd_steps_per_second"), status["steps_per_sec"])
        self.assertEqual(value(served, "mnistd_paused"), 1)
        self.assertEqual(value(served, "mnistd_last_checkpoint_step"), latest_step)
        published = mnlib.ckpt_steps(cfg["checkpoint"]["dir"])
        self.assertEqual(value(served, "mnistd_checkpoints_published_total"), len(published))
        self.assertEqual(value(served, "mnistd_checkpoint_failures_total"), 0)
        self.assertEqual(value(served, "mnistd_checkpoint_write_duration_seconds_count"), len(published))
        self.assertEqual(value(served, "mnistd_checkpoint_write_duration_seconds_bucket", le="+Inf"), len(published))
        ckpt = os.path.join(cfg["checkpoint"]["dir"], status["latest_checkpoint"])
        self.assertAlmostEqual(value(served, "mnistd_last_checkpoint_timestamp_seconds"), os.stat(ckpt).st_mtime, delta=5)
        # The evaluator's families against its own JSON lines.
        with open(jsonl) as f:
            lines = [json.loads(l) for l in f]
        self.assertEqual(value(served, "mnist_eval_step"), lines[-1]["step"])
        self.assertEqual(value(served, "mnist_eval_validation_accuracy_ratio"), lines[-1]["accuracy"])
        self.assertEqual(value(served, "mnist_eval_validation_loss"), lines[-1]["loss"])
        self.assertEqual(value(served, "mnist_eval_best_validation_accuracy_ratio"), max(l["accuracy"] for l in lines))
        self.assertEqual(value(served, "mnist_eval_evaluations_total"), len(lines))
        self.assertEqual(value(served, "mnist_eval_latency_seconds_count"), len(lines))
        self.assertAlmostEqual(value(served, "mnist_eval_latency_seconds_sum"),
                               sum(l["latency_ms"] for l in lines) / 1e3, delta=0.001 * len(lines))
        self.assertEqual(value(served, "mnist_eval_rejected_files_total"), 0)

        # Moment 4: both stopped cleanly; the files say so and stay valid.
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait(), 0, d.output())
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(), 0, ev.output())
        self.assertEqual(value(self.promtool_check(trainer_prom), "mnistd_running"), 0)
        self.assertEqual(value(self.promtool_check(eval_prom), "mnist_eval_running"), 0)
        self.assertEqual(sorted(os.listdir(tdir)), ["mnist-eval.prom", "mnistd.prom"], "no temporary files left")

    def test_node_exporter_as_its_own_user_reads_files_written_under_the_units_umask(self):
        # Deployed, node-exporter runs as user prometheus and the units with
        # UMask=0027: the files must still be readable by others, or the
        # collector reports a scrape error and serves none of the families.
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            self.skipTest("needs root and setpriv to run node-exporter as another user")
        os.chmod(self.work, 0o711)
        tdir = os.path.join(self.work, "textfile")
        os.makedirs(tdir)
        os.chmod(tdir, 0o755)
        trainer_prom = os.path.join(tdir, "mnistd.prom")
        eval_prom = os.path.join(tdir, "mnist-eval.prom")
        cfg_path, _ = self.config(train={"max_steps": 40}, eval={"textfile": eval_prom},
                                  metrics={"textfile": trainer_prom, "run": "umask"})
        umask = ["sh", "-c", 'umask 0027 && exec "$@"', "sh"]
        ev = self.start(umask + [MNIST_EVAL, "--config", cfg_path], "eval")
        d = self.start(umask + [MNISTD, "--config", cfg_path], "mnistd")
        self.assertEqual(d.wait(120), 0, d.output())
        wait_for(lambda: (self.read(eval_prom) or {}) and value(self.read(eval_prom), "mnist_eval_step") == 40,
                 60, "the evaluation of the last checkpoint")
        served = self.scrape(self.node_exporter(tdir, as_user=(65534, 65534)))
        self.assertEqual(value(served, "node_textfile_scrape_error"), 0)
        self.assertEqual(value(served, "mnistd_global_step", run="umask"), 40)
        self.assertEqual(value(served, "mnist_eval_step", run="umask"), 40)
        for path in (trainer_prom, eval_prom):
            self.assertEqual(os.stat(path).st_mode & 0o7777, 0o644, path)
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(), 0, ev.output())

    def test_a_temporary_file_left_by_sigkill_is_removed_at_the_next_start(self):
        # Killed while the textfile's temporary is written (systemd's stop
        # timeout, the OOM killer): the next start removes it, for each
        # program. Another file's temporary and a live writer's stay.
        tdir = os.path.join(self.work, "textfile")
        os.makedirs(tdir)
        trainer_prom = os.path.join(tdir, "mnistd.prom")
        eval_prom = os.path.join(tdir, "mnist-eval.prom")
        others = [".other.prom.1-0.tmp", ".mnistd.prom.%d-0.tmp" % os.getpid()]
        for name in others:
            open(os.path.join(tdir, name), "w").close()
        cfg_path, cfg = self.config(train={"max_steps": 10 ** 9}, eval={"textfile": eval_prom},
                                    checkpoint={"every_steps": 10 ** 6},
                                    metrics={"textfile": trainer_prom, "interval_ms": 100})
        os.makedirs(cfg["checkpoint"]["dir"])
        for prog, name, prom in ((MNIST_EVAL, "eval", eval_prom), (MNISTD, "mnistd", trainer_prom)):
            # Held with the temporary complete, just before its rename.
            env, gate, held = mnlib.gate(self, "rename:/" + os.path.basename(prom))
            open(gate, "w").close()
            p = self.start([prog, "--config", cfg_path], name + "-killed", env=env)
            wait_for(lambda: os.path.exists(held), 60, name + " held before renaming its textfile")
            temps = [n for n in os.listdir(tdir) if n.startswith("." + os.path.basename(prom) + ".")
                     and n not in others]
            self.assertEqual(len(temps), 1, os.listdir(tdir))
            p.p.kill()
            p.p.wait()
            os.unlink(gate)
            os.unlink(held)
            p = self.start([prog, "--config", cfg_path], name)
            wait_for(lambda: os.path.exists(prom), 60, name + "'s textfile")
            self.assertNotIn(temps[0], os.listdir(tdir))
            p.signal(signal.SIGTERM)
            self.assertEqual(p.wait(), 0, p.output())
        self.assertEqual(sorted(os.listdir(tdir)), sorted(others + ["mnist-eval.prom", "mnistd.prom"]))

    def test_node_exporter_never_sees_a_partial_file_while_both_write_at_full_speed(self):
        # The trainer rewrites its file every 100 ms, the evaluator after each
        # of a stream of evaluations; node-exporter, scraped back to back,
        # must read each file whole every time: no scrape error, no family
        # missing (a file briefly absent), no gathering error.
        tdir = os.path.join(self.work, "textfile")
        os.makedirs(tdir)
        trainer_prom = os.path.join(tdir, "mnistd.prom")
        eval_prom = os.path.join(tdir, "mnist-eval.prom")
        cfg_path, _ = self.config(train={"max_steps": 10 ** 9}, eval={"textfile": eval_prom},
                                  checkpoint={"every_steps": 10, "max_to_keep": 3, "write_all": False},
                                  metrics={"textfile": trainer_prom, "interval_ms": 100, "run": "busy"})
        url = self.node_exporter(tdir)
        self.start([MNIST_EVAL, "--config", cfg_path], "eval")
        d = self.start([MNISTD, "--config", cfg_path], "mnistd")
        wait_for(lambda: (self.read(eval_prom) or {}) and value(self.read(eval_prom), "mnist_eval_step") > 0,
                 120, "a first evaluation")
        steps, evals, scrapes = set(), set(), 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline or len(steps) < 5 or len(evals) < 5:
            self.assertLess(time.monotonic(), deadline + 120, "the files hardly changed: %s %s" % (steps, evals))
            with urllib.request.urlopen(url, timeout=30) as r:
                text = r.read().decode()
            served = parse_exposition(text)
            scrapes += 1
            self.assertEqual(value(served, "node_textfile_scrape_error"), 0, text)
            self.assertEqual(value(served, "promhttp_metric_handler_errors_total", cause="gathering"), 0, text)
            steps.add(value(served, "mnistd_global_step", run="busy"))
            evals.add(value(served, "mnist_eval_evaluations_total", run="busy"))
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait(), 0, d.output())
        self.assertGreater(scrapes, 20)

    def test_alerting_rules_name_families_the_programs_write(self):
        # Every mnistd_* and mnist_eval_* name in the rules' expressions, and
        # in their unit test's input series, is a sample name the programs
        # really write (a renamed family would otherwise leave an alert that
        # never fires and a unit test that still passes).
        tdir = os.path.join(self.work, "textfile")
        os.makedirs(tdir)
        trainer_prom = os.path.join(tdir, "mnistd.prom")
        eval_prom = os.path.join(tdir, "mnist-eval.prom")
        cfg_path, _ = self.config(train={"max_steps": 40}, eval={"textfile": eval_prom},
                                  metrics={"textfile": trainer_prom, "run": "rules"})
        ev = self.start([MNIST_EVAL, "--config", cfg_path], "eval")
        d = self.start([MNISTD, "--config", cfg_path], "mnistd")
        self.assertEqual(d.wait(120), 0, d.output())
        wait_for(lambda: (self.read(eval_prom) or {}) and value(self.read(eval_prom), "mnist_eval_step") == 40,
                 60, "the evaluation of the last checkpoint")
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(), 0, ev.output())
        written = {}
        for path in (trainer_prom, eval_prom):
            for (name, labels) in self.promtool_check(path):
                written.setdefault(name, set()).add(frozenset(k for k, _ in labels))
        ours = re.compile(r"\b(?:mnistd|mnist_eval)_[a-zA-Z0-9_:]*")
        with open(os.path.join(RULES, "mnistd.rules.yml")) as f:
            exprs = "\n".join(rule_expressions(f.read()))
        used = set(ours.findall(exprs))
        self.assertGreaterEqual(len(used), 10, exprs)
        self.assertEqual(used - set(written), set(), "families the rules use but no program writes")
        with open(os.path.join(RULES, "mnistd.rules.test.yml")) as f:
            series = re.findall(r"series:\s*'([^'{]+)\{([^}]*)\}'", f.read())
        self.assertTrue(series)
        for name, labels in series:
            self.assertIn(name, written, "the rules' test feeds a series no program writes")
            # The programs' own labels (run); instance and job come with the scrape.
            own = frozenset(k for k in re.findall(r"(\w+)=", labels)) - {"instance", "job"}
            self.assertIn(own, written[name], "%s{%s}" % (name, labels))
        # The manual pages list exactly the families the programs write.
        families = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(sum|count)$", "_bucket", n) in written
                    else n for n in written}
        for page, prefix in (("mnistd.8", "mnistd_"), ("mnist-eval.8", "mnist_eval_")):
            with open(os.path.join(SOURCE, "man", page)) as f:
                section = f.read().split(".SH METRICS\n")[1].split("\n.SH ")[0].replace("\\", "")
            listed = {n for line in section.splitlines() if re.match(r"^\.BR? ", line)
                      for n in re.findall(r"\b%s[a-z_]+" % prefix, line)}
            self.assertEqual(sorted(listed), sorted(f for f in families if f.startswith(prefix)), page)

    def test_a_run_label_with_quotes_backslashes_newlines_and_utf8_reaches_prometheus_intact(self):
        # metrics.run is free text: node-exporter must parse both files and
        # serve the label exactly as configured.
        run = 'a"b\\c\nd \\n é ✓'
        tdir = os.path.join(self.work, "textfile")
        os.makedirs(tdir)
        cfg_path, _ = self.config(train={"max_steps": 20}, eval={"textfile": os.path.join(tdir, "mnist-eval.prom")},
                                  metrics={"textfile": os.path.join(tdir, "mnistd.prom"), "run": run})
        ev = self.start([MNIST_EVAL, "--config", cfg_path], "eval")
        d = self.start([MNISTD, "--config", cfg_path], "mnistd")
        self.assertEqual(d.wait(120), 0, d.output())
        wait_for(lambda: (self.read(os.path.join(tdir, "mnist-eval.prom")) or {}) and
                 value(self.read(os.path.join(tdir, "mnist-eval.prom")), "mnist_eval_step") == 20, 60, "an evaluation")
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(), 0, ev.output())
        for name in ("mnistd.prom", "mnist-eval.prom"):
            self.promtool_check(os.path.join(tdir, name))
        served = self.scrape(self.node_exporter(tdir))
        self.assertEqual(value(served, "node_textfile_scrape_error"), 0)
        self.assertEqual(value(served, "mnistd_global_step", run=run), 20)
        self.assertEqual(value(served, "mnist_eval_step", run=run), 20)

    def test_a_disk_slow_to_sync_never_holds_up_either_loop(self):
        # The textfiles are written on the event loops, which also serve the
        # control socket, signals and systemd's watchdog. A metrics file needs
        # atomicity, not durability, so nothing there may wait for the disk:
        # with every fsync of a program held (as behind a large checkpoint's
        # writeback), its file keeps being rewritten and the trainer answers.
        tdir = os.path.join(self.work, "textfile")
        os.makedirs(tdir)
        trainer_prom = os.path.join(tdir, "mnistd.prom")
        eval_prom = os.path.join(tdir, "mnist-eval.prom")
        # The evaluator's page is written on its loop too.
        page = os.path.join(self.work, "report.html")
        cfg_path, _ = self.config(train={"max_steps": 10 ** 9},
                                  checkpoint={"every_steps": 200, "max_to_keep": 3, "write_all": False},
                                  eval={"textfile": eval_prom, "keep_best": 0, "report_html": page,
                                        "metrics_file": os.path.join(self.work, "eval.jsonl")},
                                  metrics={"textfile": trainer_prom, "interval_ms": 100})
        env, trainer_gate, _ = mnlib.gate(self, "fsync")
        eval_gate = os.path.join(self.work, "eval-gate")
        d = self.start([MNISTD, "--config", cfg_path], "mnistd", env=env)
        ev = self.start([MNIST_EVAL, "--config", cfg_path], "eval", env=dict(env, MN_GATE=eval_gate))

        def trainer_step():
            s = self.read(trainer_prom)
            return value(s, "mnistd_global_step") if s else -1

        def evaluations():
            s = self.read(eval_prom)
            return value(s, "mnist_eval_evaluations_total") if s else -1
        wait_for(lambda: evaluations() >= 1, 120, "a first evaluation")

        open(eval_gate, "w").close()
        wait_for(lambda: os.path.exists(page), 60, "the evaluator's page written with its fsyncs held")
        seen = evaluations()
        wait_for(lambda: evaluations() > seen, 60, "the evaluator's textfile rewritten with its fsyncs held")
        os.unlink(eval_gate)

        open(trainer_gate, "w").close()
        seen = trainer_step()
        wait_for(lambda: trainer_step() > seen, 60, "the trainer's textfile rewritten with its fsyncs held")
        r = subprocess.run([MNISTCTL, "--config", cfg_path, "status", "--json"], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        os.unlink(trainer_gate)
        d.signal(signal.SIGTERM)
        ev.signal(signal.SIGTERM)
        self.assertEqual(d.wait(), 0, d.output())
        self.assertEqual(ev.wait(), 0, ev.output())

    def test_rejected_files_are_counted(self):
        tdir = os.path.join(self.work, "textfile")
        os.makedirs(tdir)
        eval_prom = os.path.join(tdir, "mnist-eval.prom")
        cfg_path, cfg = self.config(eval={"textfile": eval_prom})
        os.makedirs(cfg["checkpoint"]["dir"])
        with open(os.path.join(cfg["checkpoint"]["dir"], "model.ckpt-7.safetensors"), "wb") as f:
            f.write(b"\x08" + b"\x00" * 7 + b"not json")
        self.start([MNIST_EVAL, "--config", cfg_path], "eval")

        def rejected():
            s = self.read(eval_prom)
            return s if s and value(s, "mnist_eval_rejected_files_total") == 1 else None
        wait_for(rejected, 60, "one rejected file in the textfile")
        s = self.promtool_check(eval_prom)
        self.assertEqual(value(s, "mnist_eval_evaluations_total"), 0)
        self.assertEqual(value(s, "mnist_eval_step"), -1)

    def test_unwritable_textfile_is_logged_once_and_training_goes_on(self):
        prom = os.path.join(self.work, "missing-dir", "mnistd.prom")
        cfg_path, cfg = self.config(train={"max_steps": 200}, metrics={"textfile": prom, "interval_ms": 100})
        d = self.start([MNISTD, "--config", cfg_path], "mnistd")
        self.assertEqual(d.wait(120), 0, d.output())
        self.assertEqual(max(mnlib.ckpt_steps(cfg["checkpoint"]["dir"])), 200)
        self.assertEqual(d.output().count("metrics.textfile:"), 1, d.output())
        self.assertIn("missing-dir", d.output())

    def test_a_textfile_name_node_exporter_would_ignore_is_a_config_error(self):
        cfg_path, _ = self.config(metrics={"textfile": os.path.join(self.work, "mnistd.txt")})
        for prog in (MNISTD, MNIST_EVAL):
            r = self.run_prog([prog, "--config", cfg_path, "--check-config"])
            self.assertEqual(r.returncode, 78, r.stdout + r.stderr)
            self.assertIn("metrics.textfile", r.stderr)

    def test_alerting_rules_pass_promtool(self):
        r = subprocess.run([PROMTOOL, "check", "rules", os.path.join(RULES, "mnistd.rules.yml")],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS: 5 rules found", r.stdout)
        r = subprocess.run([PROMTOOL, "test", "rules", "mnistd.rules.test.yml"], cwd=RULES,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
