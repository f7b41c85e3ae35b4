"""The documentation against the programs, so the two cannot drift apart.

Every configuration key the programs accept (asked of mnistd itself, through
its unknown-key messages) is in config/mnistd.json, in mnistd.json(5) and in
config/README.md, with the default, and the reloadability a real reload
shows; every option and command in the programs' --help is in their manual
pages, and every option a manual page's synopsis names is in --help; the
exit statuses agree; and no alternating-font macro glues words together.
"""

import json
import os
import re
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402
from mnlib import MNIST_EVAL, MNISTCTL, MNISTD, wait_for  # noqa: E402

SOURCE = os.path.abspath(os.environ.get("MN_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", "..")))


def read_source(*parts):
    with open(os.path.join(SOURCE, *parts), encoding="utf-8") as f:
        return f.read()


def roff_args(line):
    """The arguments of a roff macro line: words, or "quoted strings"."""
    args, i, n = [], 0, len(line)
    while i < n:
        if line[i] == " ":
            i += 1
        elif line[i] == '"':
            j = line.find('"', i + 1)
            j = n if j < 0 else j
            args.append(line[i + 1 : j])
            i = j + 1
        else:
            j = line.find(" ", i)
            j = n if j < 0 else j
            args.append(line[i:j])
            i = j
    return args


def roff_text(s):
    """Roff escapes as the reader sees them."""
    s = re.sub(r"\\f[BIRP]", "", s)
    for esc, ch in (("\\(dq", '"'), ("\\(aq", "'"), ("\\(lq", '"'), ("\\(rq", '"'), ("\\-", "-"), ("\\&", ""),
                    ("\\e", "\\"), ("\\ ", " ")):
        s = s.replace(esc, ch)
    return s


def man_sections(page, macro=".SH"):
    """{heading: body} of a manual page's .SH (or .SS) sections."""
    out, name, body = {}, None, []
    for line in page.splitlines():
        if line.startswith(macro + " "):
            if name is not None:
                out[name] = "\n".join(body)
            name, body = roff_text(line[len(macro) + 1 :]).strip('"'), []
        elif line.startswith(".SH ") and macro != ".SH":
            if name is not None:
                out[name] = "\n".join(body)
            name, body = None, []
        elif name is not None:
            body.append(line)
    if name is not None:
        out[name] = "\n".join(body)
    return out


def help_options(text):
    """[(short or None, long)] of a --help's option lines ("  -c, --config PATH ...")."""
    opts = []
    for m in re.finditer(r"^\s{2,}(?:-([A-Za-z]), )?--([a-z][a-z-]*)", text, re.M):
        opts.append((m.group(1), m.group(2)))
    return opts


def help_exit_statuses(text):
    m = re.search(r"Exit status:(.*?)(?:\n\n|\Z)", text, re.S)
    return sorted({int(n) for n in re.findall(r"(?<![\w-])(\d+)(?= [a-z(])", m.group(1))}) if m else []


def man_exit_statuses(page):
    return sorted(int(n) for n in re.findall(r"^\.TP\n\.B (\d+)$", man_sections(page)["EXIT STATUS"], re.M))


def documented_option(section, short, long):
    """Whether a manual page's section lists the option as --help shows it."""
    if short:
        return re.search(r"\\-%s \", \" \\-\\-%s\b" % (short, long.replace("-", "\\\\-")), section) is not None
    return re.search(r"\\-\\-%s\b" % long.replace("-", "\\\\-"), section) is not None


class Docs(mnlib.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.schema = None

    def check_config(self, cfg):
        path = os.path.join(self.work, "probe.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return self.run_prog([MNISTD, "--check-config", "--config", path])

    def schema_keys(self):
        """Every key mnistd accepts, "section.key", as its own messages list them."""
        if Docs.schema is not None:
            return Docs.schema
        r = self.check_config({"no_such_section": {}})
        self.assertEqual(r.returncode, 78, r.stderr)
        m = re.search(r"unknown section \(sections: ([a-z_, ]+)\)", r.stderr)
        self.assertIsNotNone(m, r.stderr)
        keys = []
        for section in m.group(1).split(", "):
            r = self.check_config({section: {"no_such_key": 1}})
            m = re.search(r"unknown key \(%s has: ([a-z0-9_, ]+)\)" % section, r.stderr)
            self.assertIsNotNone(m, r.stderr)
            keys += ["%s.%s" % (section, k) for k in m.group(1).split(", ")]
        self.assertGreater(len(keys), 30)
        Docs.schema = keys
        return keys

    def shipped(self):
        cfg = json.loads(read_source("config", "mnistd.json"))
        return {"%s.%s" % (s, k): v for s in cfg for k, v in cfg[s].items()}

    def man_keys(self):
        """{key: (heading, body)} of mnistd.json(5)'s key entries."""
        page = read_source("man", "mnistd.json.5")
        out = {}
        for m in re.finditer(r"^\.TP\n\.BR ([a-z0-9_]+\.[a-z0-9_]+) (\".*)\n((?:(?!\.TP\n|\.SH ).*\n)*)", page, re.M):
            heading = roff_text("".join(roff_args(m.group(2).replace("\\(dq", "\x01")))).replace("\x01", '"')
            out[m.group(1)] = (heading, roff_text(m.group(3)))
        return out

    def readme_keys(self):
        """{key: [cells]} of config/README.md's key tables."""
        out, section = {}, None
        for line in read_source("config", "README.md").splitlines():
            m = re.match(r"^### `([a-z_]+)`", line)
            if m:
                section = m.group(1)
            m = re.match(r"^\| `([a-z0-9_]+)` \|(.*)\|$", line)
            if m and section:
                out["%s.%s" % (section, m.group(1))] = [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]
        return out

    def test_every_key_is_shipped_and_documented(self):
        keys = self.schema_keys()
        self.assertEqual(sorted(self.shipped()), sorted(keys), "config/mnistd.json against the schema")
        self.assertEqual(sorted(self.man_keys()), sorted(keys), "mnistd.json(5) against the schema")
        self.assertEqual(sorted(self.readme_keys()), sorted(keys), "config/README.md against the schema")

    def test_documented_defaults_are_the_shipped_ones(self):
        # config/mnistd.json loads to the built-in defaults (test_config's
        # shipped_file) and holds every key (above): its values are the defaults.
        shipped = self.shipped()
        for key, (heading, _) in self.man_keys().items():
            m = re.search(r"default (.*)\)$", heading)
            self.assertIsNotNone(m, "mnistd.json(5): no default in %r" % heading)
            self.assertEqual(json.loads(m.group(1)), shipped.get(key), "mnistd.json(5): " + heading)
        for key, cells in self.readme_keys().items():
            self.assertEqual(json.loads(cells[2].strip("`")), shipped.get(key), "config/README.md: " + key)

    def test_documented_reloadability_is_what_a_reload_does(self):
        # Both programs run, and every key of the file changes at once: each
        # program's reload names every key once, as applied, restart_required
        # or ignored, and the applied ones are those the docs call reloadable.
        keys = self.schema_keys()
        cfg_path, cfg = self.config(train={"max_steps": 10 ** 9})
        full = json.loads(read_source("config", "mnistd.json"))
        for s, vals in cfg.items():
            full[s].update(vals)
        mnlib.write_config(cfg_path, full)
        ev = self.start([MNIST_EVAL, "--config", cfg_path], "eval")
        d = self.start([MNISTD, "--config", cfg_path], "mnistd")
        ev.wait_output("watching")
        d.wait_output("ready")
        enums = {"auto": "poll", "info": "debug", "text": "json"}
        changed = json.loads(json.dumps(full))
        for s, sec in changed.items():
            for k, v in sec.items():
                other = os.path.join(self.work, "other-%s-%s.prom" % (s, k))
                if isinstance(v, bool):
                    sec[k] = not v
                elif isinstance(v, int):
                    sec[k] = v + 1
                elif isinstance(v, float):
                    sec[k] = v / 2
                elif isinstance(v, list):
                    sec[k] = [x + 1 for x in v]
                elif v in enums:
                    sec[k] = enums[v]
                elif isinstance(v, str):
                    sec[k] = v + "2" if v else other
                elif v is None:
                    sec[k] = {"file": other} if k == "init_from" else {"metrics_file": other}
        mnlib.write_config(cfg_path, changed)
        r = self.run_prog([MNISTCTL, "--socket", full["control"]["socket"], "--config", cfg_path, "reload", "--json"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + d.output())
        answer = json.loads(r.stdout)
        ev.signal(signal.SIGHUP)
        # Up to its newline: the line is long, and a read can catch it half written.
        line = wait_for(lambda: re.search(r"configuration reloaded file=\S+ (.*)\n", ev.output()), 30,
                        "the evaluator's reload")
        fields = dict(re.findall(r'(\w+)=("[^"]*"|\S*)', line.group(1)))
        ev_answer = {k: [x for x in fields[k].strip('"').split(",") if x]
                     for k in ("applied", "restart_required", "ignored")}
        applied = set()
        for who, a in (("mnistd", answer), ("mnist-eval", ev_answer)):
            named = a["applied"] + a["restart_required"] + a["ignored"]
            self.assertEqual(sorted(named), sorted(keys), "%s's reload names every changed key once" % who)
            applied |= set(a["applied"])
        for key, (heading, body) in self.man_keys().items():
            said = re.search(r"\bReloadable\b", body) is not None
            self.assertEqual(said, key in applied, "mnistd.json(5) on %s: %s" % (key, body))
            if not said:
                self.assertRegex(body, r"\bRestart\b", "mnistd.json(5) on " + key)
        for key, cells in self.readme_keys().items():
            self.assertEqual(cells[3].startswith("reloadable"), key in applied, "config/README.md on " + key)
        # The "who reads which key" lists are what each reload ignores.
        who = man_sections(read_source("man", "mnistd.json.5"))["WHO READS WHICH KEY"]
        blocks = re.split(r"^\.TP\n", who, flags=re.M)
        for prog, a in (("mnistd", answer), ("mnist\\-eval", ev_answer)):
            block = next(b for b in blocks if b.startswith(".BR %s \"" % prog))
            block = re.sub(r"\(It sizes.*", "", roff_text(block), flags=re.S)
            patterns = re.findall(r"\b([a-z]+\.(?:\*|[a-z_]+))", block.split("\n", 1)[1])
            reads = {k for k in keys if any(k == p or (p.endswith("*") and k.startswith(p[:-1])) for p in patterns)}
            self.assertEqual(sorted(set(keys) - reads), sorted(a["ignored"]), "mnistd.json(5), who reads: " + prog)
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait(), 0, d.output())
        ev.signal(signal.SIGTERM)
        self.assertEqual(ev.wait(), 0, ev.output())

    def test_every_option_and_command_is_in_the_manual(self):
        for prog, page in ((MNISTD, "mnistd.8"), (MNIST_EVAL, "mnist-eval.8"), (MNISTCTL, "mnistctl.1")):
            r = self.run_prog([prog, "--help"])
            self.assertEqual(r.returncode, 0, r.stderr)
            text = read_source("man", page)
            sections = man_sections(text)
            opts = sections["GLOBAL OPTIONS" if prog == MNISTCTL else "OPTIONS"]
            for short, long in help_options(r.stdout.split("Commands:")[-1]):
                self.assertTrue(documented_option(opts, short, long), "%s: -%s, --%s" % (page, short, long))
            self.assertEqual(man_exit_statuses(text), help_exit_statuses(r.stdout), page + ": exit statuses")
            synopsis = roff_text(sections["SYNOPSIS"].split(".br")[0] if prog != MNISTCTL else "")
            for o in re.findall(r"--([a-z-]+)", synopsis):
                self.assertIn("--" + o, r.stdout, "%s's synopsis names --%s" % (page, o))
        r = self.run_prog([MNISTCTL, "--help"])
        commands = re.findall(r"^  ([a-z]+)\s", r.stdout.split("Commands:")[1].split("Options:")[0], re.M)
        self.assertIn("plot", commands)
        text = read_source("man", "mnistctl.1")
        subsections = man_sections(text, ".SS")
        control = man_sections(text)["CONTROL COMMANDS"].split(".SS")[0]
        synopsis = man_sections(text)["SYNOPSIS"]
        for cmd in commands:
            self.assertIn(cmd, subsections, "mnistctl(1) has no section for " + cmd)
            h = self.run_prog([MNISTCTL, cmd, "--help"])
            self.assertEqual(h.returncode, 0, h.stderr)
            where = subsections[cmd] + control
            for short, long in help_options(h.stdout):
                self.assertTrue(documented_option(where, short, long), "mnistctl(1) %s: -%s, --%s" % (cmd, short, long))
            # The options the synopsis gives the command are all real.
            for line in synopsis.split(".br"):
                if re.search(r'^\.BR? (?:\S+ " \| " )*%s(?: |$)' % cmd, line, re.M):
                    for o in re.findall(r"\\-\\-((?:[a-z]|\\-)+)", line):
                        self.assertIn("--" + o.replace("\\-", "-"), h.stdout, "mnistctl(1) synopsis of " + cmd)

    def test_restart_prevention_is_documented_as_configured(self):
        for unit, page in (("mnistd.service.in", "mnistd.8"), ("mnist-eval.service.in", "mnist-eval.8")):
            m = re.search(r"^RestartPreventExitStatus=(.*)$", read_source("systemd", unit), re.M)
            statuses = sorted(int(x) for x in m.group(1).split())
            said = re.search(r"except after exit status ((?:\d+(?:, | or | and )?)+)", roff_text(read_source("man", page)).replace("\n", " "))
            self.assertIsNotNone(said, page)
            self.assertEqual(sorted(int(x) for x in re.findall(r"\d+", said.group(1))), statuses, page)

    def test_no_alternating_font_macro_glues_words(self):
        # ".BR --raw . Given a directory" renders as "--raw.Givenadirectory":
        # the alternating macros join their arguments without spaces.
        word = re.compile(r"^[A-Za-z][A-Za-z'-]*[,.;:]?$")
        bad = []
        for page in ("mnistd.8", "mnist-eval.8", "mnistctl.1", "mnistd.json.5"):
            for n, line in enumerate(read_source("man", page).splitlines(), 1):
                if re.match(r"^\.(BR|RB|BI|IB|IR|RI) ", line):
                    args = roff_args(line[4:])
                    if any(word.match(a) and word.match(b) for a, b in zip(args, args[1:])):
                        bad.append("%s:%d: %s" % (page, n, line))
        self.assertEqual(bad, [])


if __name__ == "__main__":
    unittest.main()
