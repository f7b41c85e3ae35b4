"""Deployment tests, without systemd as PID 1: meson install into a
temporary root; systemd-analyze verify and security on the installed units;
the sysusers.d and tmpfiles.d snippets applied to a scratch root; an edited
configuration kept on reinstall; and an end-to-end run of both programs under
strace, every system call checked against the unit's SystemCallFilter= (a
filter that kills its own service on some code path is the worst deployment
bug) and every file written checked against the unit's writable directories.

The strace run needs binaries built without sanitizers (the sanitizer
runtime makes system calls of its own): from a sanitizer build dir, the test
configures and builds a plain one in <build>/deploy-plain and installs that.
"""

import ast
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402

BUILD = os.path.abspath(mnlib.BUILD)
SOURCE = os.path.abspath(os.environ.get("MN_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", "..")))
PROGRAMS = ("mnistd", "mnist-eval", "mnistctl")
UNITS = ("mnistd.service", "mnist-eval.service")
# The templates: mnistd@NAME.service and mnist-eval@NAME.service run the instance NAME.
TEMPLATES = ("mnistd@.service", "mnist-eval@.service")
MAN_PAGES = ("man8/mnistd.8", "man8/mnist-eval.8", "man1/mnistctl.1", "man5/mnistd.json.5")
MAX_EXPOSURE = 1.0

HAVE_ANALYZE = shutil.which("systemd-analyze") is not None
HAVE_STRACE = shutil.which("strace") is not None


def run(argv, ok=(0,), **kw):
    """Runs argv and returns the CompletedProcess; fails with its output unless the status is in ok."""
    kw.setdefault("timeout", 600)
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if ok is not None and r.returncode not in ok:
        raise AssertionError("%s exited %d\nstdout:\n%s\nstderr:\n%s" % (shlex.join(argv), r.returncode, r.stdout, r.stderr))
    return r


def in_root(root, path):
    """path (absolute) inside the tree rooted at root."""
    return os.path.join(root, path.lstrip("/"))


class Build:
    """What a meson build dir installs, and where."""

    def __init__(self, build_dir):
        self.dir = build_dir
        opts = json.loads(run(["meson", "introspect", build_dir, "--buildoptions"]).stdout)
        self.opt = {o["name"]: o["value"] for o in opts}
        self.prefix = self.opt["prefix"]

    def path(self, option, *rest):
        return os.path.join(self.prefix, self.opt[option], *rest)

    def systemd_dir(self, option, pc_variable, fallback):
        """The install dir the meson option gives: itself, systemd's pkg-config variable, or the fallback."""
        if self.opt[option]:
            return self.opt[option]
        r = run(["pkg-config", "--variable=" + pc_variable, "systemd"], ok=None)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else fallback

    def expected_files(self):
        files = {p: self.path("bindir", p) for p in PROGRAMS}
        unitdir = self.systemd_dir("systemdunitdir", "systemdsystemunitdir", "/lib/systemd/system")
        files.update({u: os.path.join(unitdir, u) for u in UNITS + TEMPLATES})
        files["sysusers"] = os.path.join(self.systemd_dir("sysusersdir", "sysusersdir", "/usr/lib/sysusers.d"), "mnistd.conf")
        files["tmpfiles"] = os.path.join(self.systemd_dir("tmpfilesdir", "tmpfilesdir", "/usr/lib/tmpfiles.d"), "mnistd.conf")
        files["logrotate"] = self.path("sysconfdir", "logrotate.d", "mnist-eval")
        files["config"] = self.path("sysconfdir", "mnistd", "mnistd.json")
        files["config.example"] = self.path("datadir", "doc", "mnistd", "mnistd.json.example")
        files["textfile.conf"] = self.path("datadir", "doc", "mnistd", "textfile.conf")
        files["rules"] = self.path("datadir", "mnistd", "prometheus", "mnistd.rules.yml")
        files["rules.test"] = self.path("datadir", "mnistd", "prometheus", "mnistd.rules.test.yml")
        files.update({m: self.path("mandir", m) for m in MAN_PAGES})
        return files

    @property
    def sanitized(self):
        return self.opt.get("b_sanitize", "none") not in ("none", "")

    def install(self, destdir, rebuild=False):
        argv = ["meson", "install", "-C", self.dir, "--destdir", destdir]
        if not rebuild:
            argv.append("--no-rebuild")
        return run(argv)


# --- unit files -----------------------------------------------------------


def unit_settings(path, section="Service"):
    """The key=value lines of one section, in order, continuation lines joined."""
    out, cur, pending = [], None, ""
    with open(path) as f:
        for raw in f:
            line = pending + raw.rstrip("\n")
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            s = line.strip()
            if not s or s[0] in "#;":
                continue
            if s.startswith("[") and s.endswith("]"):
                cur = s[1:-1]
                continue
            if cur == section and "=" in s:
                k, v = s.split("=", 1)
                out.append((k.strip(), v.strip()))
    return out


def with_dropin(unit_path, dropin_path, outdir):
    """The unit as systemd sees it with the drop-in applied (its lines appended), as a file in outdir."""
    os.makedirs(outdir, exist_ok=True)
    out = os.path.join(outdir, os.path.basename(unit_path))
    with open(unit_path) as u, open(dropin_path) as d, open(out, "w") as f:
        f.write(u.read() + "\n" + d.read())
    return out


def instance_unit(template_path, name, outdir, dropin_path=None):
    """The template's unit for instance name as a file in outdir, %i (and %I) expanded; a drop-in appended."""
    os.makedirs(outdir, exist_ok=True)
    out = os.path.join(outdir, os.path.basename(template_path).replace("@.", "@%s." % name))
    with open(template_path) as f:
        text = f.read().replace("%i", name).replace("%I", name)
    if dropin_path:
        with open(dropin_path) as d:
            text += "\n" + d.read()
    with open(out, "w") as f:
        f.write(text)
    return out


def values(settings, key):
    return [v for k, v in settings if k == key]


def last(settings, key, default=None):
    v = values(settings, key)
    return v[-1] if v else default


def exec_argv(value):
    """An Exec*= value as argv, without systemd's prefix characters on the program."""
    argv = shlex.split(value)
    argv[0] = argv[0].lstrip("-@:+!")
    return argv


_GROUPS = None


def syscall_groups():
    """systemd-analyze syscall-filter's groups: {"@name": [members, which may be groups]}."""
    global _GROUPS
    if _GROUPS is None:
        out = run(["systemd-analyze", "syscall-filter"]).stdout
        groups, cur = {}, None
        for line in out.splitlines():
            if line.startswith("@"):
                cur = groups.setdefault(line.split()[0], [])
            elif cur is not None and line.strip() and not line.strip().startswith("#"):
                cur.append(line.strip())
        _GROUPS = groups
    return _GROUPS


def expand(name, groups, seen=None):
    if not name.startswith("@"):
        return {name}
    if name not in groups:
        raise AssertionError("unknown system call group %s" % name)
    seen = seen or set()
    out = set()
    for m in groups[name]:
        if m not in seen:
            seen.add(m)
            out |= expand(m, groups, seen)
    return out


def syscall_filter(settings):
    """The unit's SystemCallFilter= as systemd builds it (load-fragment.c):
    returns (allow_list, names). The first line decides the mode; an allow
    list starts from @default; later lines add, or remove with '~' (in a deny
    list, '~' adds to the denied set and a plain line removes from it)."""
    groups = syscall_groups()
    allow_list, names = None, set()
    for v in values(settings, "SystemCallFilter"):
        if not v:
            allow_list, names = None, set()
            continue
        invert = v.startswith("~")
        if invert:
            v = v[1:]
        if allow_list is None:
            allow_list = not invert
            if allow_list:
                names |= expand("@default", groups)
        for word in v.split():
            s = expand(word.split(":")[0], groups)
            if invert == allow_list:
                names -= s
            else:
                names |= s
    return allow_list, names


def syscall_allowed(name, flt):
    allow_list, names = flt
    if allow_list is None:
        return True
    return (name in names) if allow_list else (name not in names)


# --- strace output --------------------------------------------------------

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^([a-z_][a-z0-9_]*)\((.*)$", re.S)
_RESUMED = re.compile(r"^<\.\.\. ([a-z_][a-z0-9_]*) resumed>(.*)$", re.S)
_RESULT = re.compile(r"\)\s+= (-?\d+|0x[0-9a-f]+|\?)(.*)$")


class Call:
    __slots__ = ("pid", "name", "args", "ret", "rest")

    def __init__(self, pid, name, args, ret, rest):
        self.pid, self.name, self.args, self.ret, self.rest = pid, name, args, ret, rest

    @property
    def ok(self):
        return self.ret not in ("?",) and not self.ret.startswith("-")

    def __str__(self):
        return "%s(%s) = %s%s" % (self.name, ", ".join(self.args), self.ret, self.rest)


def split_args(s):
    """Splits strace's argument text at top-level commas (quotes and brackets respected)."""
    out, depth, cur, i, quote = [], 0, [], 0, False
    while i < len(s):
        c = s[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < len(s):
                cur.append(s[i + 1])
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
            cur.append(c)
        elif c in "([{<":
            depth += 1
            cur.append(c)
        elif c in ")]}>":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur and "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def parse_trace(path):
    """The calls in an `strace -f -qq -y -o path` file, unfinished ones joined with their resumption."""
    calls, pending = [], {}
    with open(path, errors="replace") as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            pid, text = int(m.group(1)), m.group(2)
            if text.startswith("---") or text.startswith("+++"):
                continue
            r = _RESUMED.match(text)
            if r:
                text = pending.pop(pid, r.group(1) + "(") + r.group(2)
            elif text.endswith("<unfinished ...>"):
                pending[pid] = text[: -len("<unfinished ...>")].rstrip()
                continue
            c = _CALL.match(text)
            if not c:
                continue
            name, body = c.group(1), c.group(2)
            # The result is after the last ") = " that is followed by a return value.
            res = None
            for res in _RESULT.finditer(body):
                pass
            if res is None:
                calls.append(Call(pid, name, split_args(body.rstrip(")")), "?", ""))
                continue
            calls.append(Call(pid, name, split_args(body[: res.start()]), res.group(1), res.group(2)))
    for pid, text in pending.items():
        c = _CALL.match(text)
        if c:  # a call interrupted by the end of the process (exit, or a kill)
            calls.append(Call(pid, c.group(1), split_args(c.group(2)), "?", ""))
    return calls


def c_string(arg):
    """The bytes of a quoted strace string argument, as text; None if arg is not one."""
    if not arg.startswith('"'):
        return None
    end = arg.rfind('"')
    try:
        return ast.literal_eval("b" + arg[: end + 1]).decode("utf-8", "replace")
    except (ValueError, SyntaxError):
        return None


def fd_path(arg):
    """The path strace -y shows for a file descriptor argument, "5</dir>" or "AT_FDCWD</dir>"."""
    m = re.match(r"^(?:-?\d+|AT_FDCWD)<(.*)>$", arg)
    return m.group(1) if m else None


def resolve(dirarg, patharg):
    p = c_string(patharg)
    if p is None:
        return None
    if p.startswith("/"):
        return os.path.normpath(p)
    d = fd_path(dirarg) if dirarg is not None else "/"
    return os.path.normpath(os.path.join(d or "/", p))


# System calls that change the file system: name -> [(dirfd index or None, path index)].
_WRITES = {
    "mkdir": [(None, 0)], "mkdirat": [(0, 1)], "rmdir": [(None, 0)],
    "unlink": [(None, 0)], "unlinkat": [(0, 1)],
    "rename": [(None, 0), (None, 1)], "renameat": [(0, 1), (2, 3)], "renameat2": [(0, 1), (2, 3)],
    "link": [(None, 1)], "linkat": [(2, 3)], "symlink": [(None, 1)], "symlinkat": [(1, 2)],
    "mknod": [(None, 0)], "mknodat": [(0, 1)], "creat": [(None, 0)], "truncate": [(None, 0)],
    "chmod": [(None, 0)], "fchmodat": [(0, 1)], "chown": [(None, 0)], "lchown": [(None, 0)], "fchownat": [(0, 1)],
}
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")


def written_paths(calls):
    """(path, call) for every successful call that created, changed or removed a file by name."""
    for c in calls:
        if not c.ok:
            continue
        spots = []
        if c.name in ("open", "openat", "openat2"):
            d, p, fl = (None, 0, 1) if c.name == "open" else (0, 1, 2)
            if len(c.args) > fl and any(f in c.args[fl] for f in _WRITE_FLAGS):
                spots = [(d, p)]
        elif c.name == "bind" and len(c.args) > 1 and "AF_UNIX" in c.args[1]:
            m = re.search(r'sun_path=("(?:[^"\\]|\\.)*")', c.args[1])
            if m:
                path = c_string(m.group(1))
                if path and path.startswith("/"):
                    yield os.path.normpath(path), c
            continue
        else:
            spots = _WRITES.get(c.name, [])
        for d, p in spots:
            if p < len(c.args):
                path = resolve(c.args[d] if d is not None else None, c.args[p])
                if path:
                    yield path, c


def opened_paths(calls):
    for c in calls:
        if c.ok and c.name in ("open", "openat", "openat2", "stat", "newfstatat", "statx", "access", "faccessat", "faccessat2"):
            d, p = (None, 0) if c.name in ("open", "stat", "access") else (0, 1)
            if p < len(c.args):
                path = resolve(c.args[d] if d is not None else None, c.args[p])
                if path:
                    yield path, c


def under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


class Sandbox:
    """What a unit allows, as far as a trace can show: the system call filter,
    MemoryDenyWriteExecute=, RestrictAddressFamilies=, RestrictNamespaces=,
    and which paths ProtectSystem=strict leaves writable. Paths of the run are
    mapped: <root>/var/lib/... stands for /var/lib/... and anything else under
    the test's work directory (data, configuration) for read-only files."""

    PROC_OWN = re.compile(r"^/proc/(self|thread-self|\d+)(/|$)")
    # Probed by libraries that take its absence for an answer: libselinux
    # (loaded by gnuplot, the evaluator's eval.report_html) reads it to learn
    # whether SELinux is mounted, and without it decides it is not.
    PROC_PROBED = ("/proc/filesystems",)
    DEV_PRIVATE = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
                   "/dev/ptmx", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/hugepages", "/dev/stdin",
                   "/dev/stdout", "/dev/stderr", "/dev/fd", "/dev/log")

    def __init__(self, unit_path, work, root):
        self.unit = os.path.basename(unit_path)
        self.s = unit_settings(unit_path)
        self.work, self.root = work, root
        self.filter = syscall_filter(self.s)
        self.writable = []
        for key, top in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run"),
                         ("LogsDirectory", "/var/log"), ("CacheDirectory", "/var/cache")):
            for v in values(self.s, key):
                self.writable += [os.path.join(top, d.split(":")[0]) for d in v.split()]
        for v in values(self.s, "ReadWritePaths"):
            self.writable += [p.lstrip("-+") for p in v.split()]
        if last(self.s, "PrivateTmp", "no") in ("yes", "true", "1"):
            self.writable += ["/tmp", "/var/tmp"]
        self.readonly = [p.lstrip("-+") for v in values(self.s, "ReadOnlyPaths") for p in v.split()]
        fam = " ".join(values(self.s, "RestrictAddressFamilies"))
        self.families = None if not fam else (set() if fam == "none" else set(fam.split()))

    def unit_path(self, path):
        """The path the program would see in the unit, or None for the test's read-only scaffolding."""
        if under(path, self.root):
            return "/" + os.path.relpath(path, self.root) if path != self.root else "/"
        if under(path, self.work):
            return None
        return path

    def may_write(self, upath):
        if upath is None:
            return False
        if self.PROC_OWN.match(upath) or any(under(upath, d) for d in self.DEV_PRIVATE):
            return True
        if any(under(upath, r) for r in self.readonly):
            return False
        return any(under(upath, w) for w in self.writable)

    def violations(self, calls):
        out = []
        for c in calls:
            if not syscall_allowed(c.name, self.filter):
                out.append("system call %s is not in SystemCallFilter= (the service would be killed): %s" % (c.name, c))
        if last(self.s, "MemoryDenyWriteExecute") == "yes":
            for c in calls:
                prot = c.args[2] if len(c.args) > 2 else ""
                if (c.name == "mmap" and "PROT_WRITE" in prot and "PROT_EXEC" in prot) or (
                        c.name in ("mprotect", "pkey_mprotect") and "PROT_EXEC" in prot):
                    out.append("MemoryDenyWriteExecute= refuses %s" % c)
        if self.families is not None:
            for c in calls:
                if c.name in ("socket", "socketpair") and c.args and c.args[0] not in self.families:
                    out.append("RestrictAddressFamilies= refuses %s" % c)
        if last(self.s, "RestrictNamespaces") == "yes":
            for c in calls:
                if c.name == "setns" or (c.name in ("clone", "clone3", "unshare") and "CLONE_NEW" in ", ".join(c.args)):
                    out.append("RestrictNamespaces= refuses %s" % c)
        for path, c in written_paths(calls):
            upath = self.unit_path(path)
            if not self.may_write(upath):
                out.append("%s is read-only in the unit (ProtectSystem=strict; writable: %s): %s"
                           % (upath or path, " ".join(self.writable), c))
        for path, c in opened_paths(calls):
            upath = self.unit_path(path) or path
            if upath.startswith("/proc/") and not self.PROC_OWN.match(upath) and last(self.s, "ProcSubset") == "pid" \
                    and upath not in self.PROC_PROBED:
                out.append("%s is hidden by ProcSubset=pid: %s" % (upath, c))
            if upath.startswith("/dev/") and last(self.s, "PrivateDevices") == "yes" and \
                    not any(under(upath, d) for d in self.DEV_PRIVATE):
                out.append("%s is hidden by PrivateDevices=: %s" % (upath, c))
        return out


# --- the tests ------------------------------------------------------------


class DeployTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.build = Build(BUILD)
        cls.tmp = tempfile.mkdtemp(prefix="mn-deploy-")
        cls.dest = os.path.join(cls.tmp, "dest")
        cls.install_log = cls.build.install(cls.dest).stdout
        cls.files = cls.build.expected_files()

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("MN_KEEP_WORK"):
            print("work dir kept:", cls.tmp)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def dest_path(self, key):
        return in_root(self.dest, self.files[key])

    def verify_copy(self, unit, dest, outdir):
        """A copy of the installed unit whose programs point into dest, for systemd-analyze verify."""
        os.makedirs(outdir, exist_ok=True)
        copy = os.path.join(outdir, unit)
        with open(in_root(dest, self.files[unit])) as f, open(copy, "w") as g:
            for line in f:
                k, eq, v = line.partition("=")
                if eq and k.startswith("Exec") and v.strip():
                    argv0 = exec_argv(v)[0]
                    if os.path.exists(in_root(dest, argv0)):
                        line = line.replace(argv0, in_root(dest, argv0), 1)
                g.write(line)
        return copy

    def test_installs_everything(self):
        missing = [p for k, p in self.files.items() if not os.path.isfile(in_root(self.dest, p))]
        self.assertEqual(missing, [], "not installed; meson install said:\n" + self.install_log)
        for p in PROGRAMS:
            self.assertTrue(os.access(self.dest_path(p), os.X_OK), p)
        # The units run what was installed, with the installed configuration.
        for unit, prog in (("mnistd.service", "mnistd"), ("mnist-eval.service", "mnist-eval")):
            s = unit_settings(self.dest_path(unit))
            argv = exec_argv(last(s, "ExecStart"))
            self.assertEqual(argv, [self.files[prog], "--config", self.files["config"]], unit)
        # The templates run the instance's configuration, /etc/mnistd/%i.json.
        inst_cfg = os.path.join(os.path.dirname(self.files["config"]), "%i.json")
        for unit, prog in (("mnistd@.service", "mnistd"), ("mnist-eval@.service", "mnist-eval")):
            s = unit_settings(self.dest_path(unit))
            self.assertEqual(exec_argv(last(s, "ExecStart")), [self.files[prog], "--config", inst_cfg], unit)
        with open(self.dest_path("config")) as a, open(os.path.join(SOURCE, "config", "mnistd.json")) as b:
            self.assertEqual(json.load(a), json.load(b))
        self.assertEqual(os.stat(self.dest_path("config")).st_mode & 0o777, 0o644)

    def test_edited_config_survives_reinstall(self):
        dest = os.path.join(self.tmp, "reinstall")
        self.build.install(dest)
        cfg = in_root(dest, self.files["config"])
        with open(cfg, "w") as f:
            f.write('{"train": {"max_steps": 5}}\n')
        log = self.build.install(dest).stdout
        with open(cfg) as f:
            self.assertEqual(f.read(), '{"train": {"max_steps": 5}}\n', log)
        # The reference copy is still refreshed.
        self.assertTrue(os.path.isfile(in_root(dest, self.files["config.example"])))

    def test_default_config_matches_the_units(self):
        """The shipped configuration points where the units give write access."""
        with open(self.dest_path("config")) as f:
            cfg = json.load(f)
        d = unit_settings(self.dest_path("mnistd.service"))
        e = unit_settings(self.dest_path("mnist-eval.service"))
        self.assertEqual(cfg["checkpoint"]["dir"], "/var/lib/" + last(d, "StateDirectory"))
        self.assertEqual(os.path.dirname(cfg["control"]["socket"]), "/run/" + last(d, "RuntimeDirectory"))
        self.assertIn(cfg["checkpoint"]["dir"], [p.lstrip("-") for p in values(e, "ReadOnlyPaths")])
        self.assertEqual(cfg["eval"]["best_dir"], "/var/lib/" + last(e, "StateDirectory"))
        self.assertEqual(cfg["log"]["file"], "", "the units log to the journal")
        with open(self.dest_path("logrotate")) as f:
            rot = f.read()
        self.assertIn("/var/log/" + last(e, "LogsDirectory") + "/", rot)
        self.assertIn("systemctl reload mnist-eval.service", rot)
        if shutil.which("logrotate"):
            state = os.path.join(self.tmp, "logrotate.state")
            r = run(["logrotate", "--debug", "--state", state, self.dest_path("logrotate")])
            self.assertNotIn("error", r.stdout + r.stderr)
        self.assertEqual(exec_argv(last(e, "ExecReload"))[:2], ["/bin/kill", "-HUP"])

    def test_man_pages_render_and_document_every_key(self):
        for m in MAN_PAGES:
            r = run(["groff", "-man", "-ww", "-z", self.dest_path(m)]) if shutil.which("groff") else None
            if r is not None:
                self.assertEqual(r.stderr, "", m)
        with open(self.dest_path("man5/mnistd.json.5")) as f:
            page = f.read().replace("\\", "")
        with open(os.path.join(SOURCE, "config", "mnistd.json")) as f:
            cfg = json.load(f)
        undocumented = ["%s.%s" % (s, k) for s in cfg for k in cfg[s] if ".BR %s.%s " % (s, k) not in page]
        self.assertEqual(undocumented, [], "keys missing from mnistd.json(5)")

    @unittest.skipUnless(HAVE_ANALYZE, "systemd-analyze is not installed (scripts/deps.sh installs systemd)")
    def test_units_verify_cleanly(self):
        env = dict(os.environ, MANPATH=in_root(self.dest, self.build.path("mandir")))
        man = [] if shutil.which("man") else ["--man=no"]
        for unit in UNITS:
            copy = self.verify_copy(unit, self.dest, os.path.join(self.tmp, "verify"))
            r = run(["systemd-analyze", "verify"] + man + [copy], ok=None, env=env)
            # verify exits 0 even for unknown keys, so any output is a failure.
            self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""), unit)

    @unittest.skipUnless(HAVE_ANALYZE, "systemd-analyze is not installed (scripts/deps.sh installs systemd)")
    def test_templates_verify_cleanly_and_keep_exposure_with_an_instance(self):
        env = dict(os.environ, MANPATH=in_root(self.dest, self.build.path("mandir")))
        man = [] if shutil.which("man") else ["--man=no"]
        outdir = os.path.join(self.tmp, "verify-templates")
        for unit in TEMPLATES:
            copy = self.verify_copy(unit, self.dest, outdir)
            instance = copy.replace("@.", "@nightly.")
            r = run(["systemd-analyze", "verify"] + man + [instance], ok=None, env=env)
            self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""), instance)
            for path in (instance, with_dropin(copy, self.dest_path("textfile.conf"), os.path.join(outdir, "dropin"))
                         .replace("@.", "@nightly.")):
                r = run(["systemd-analyze", "security", "--offline=yes", path], ok=None)
                m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
                self.assertIsNotNone(m, r.stdout + r.stderr)
                self.assertLessEqual(float(m.group(1)), MAX_EXPOSURE, "%s:\n%s" % (path, r.stdout))
        # Each instance has directories of its own, beside (not inside) the plain units' runtime one.
        s = unit_settings(instance_unit(self.dest_path("mnistd@.service"), "nightly", outdir))
        self.assertEqual((last(s, "StateDirectory"), last(s, "RuntimeDirectory")), ("mnistd/nightly", "mnistd-nightly"))
        e = unit_settings(instance_unit(self.dest_path("mnist-eval@.service"), "nightly", outdir))
        self.assertEqual((last(e, "LogsDirectory"), last(e, "StateDirectory"), values(e, "ReadOnlyPaths")),
                         ("mnist-eval/nightly", "mnist-eval/nightly", ["-/var/lib/mnistd/nightly"]))

    @unittest.skipUnless(HAVE_STRACE and HAVE_ANALYZE, "strace or systemd-analyze is not installed (scripts/deps.sh installs both)")
    def test_two_instances_side_by_side_stay_in_their_sandboxes(self):
        InstancesScenario(self).run()

    @unittest.skipUnless(HAVE_ANALYZE, "systemd-analyze is not installed (scripts/deps.sh installs systemd)")
    def test_units_exposure_at_most_1(self):
        # As installed, and with the metrics drop-in that opens node-exporter's directory.
        paths = [self.dest_path(u) for u in UNITS]
        paths += [with_dropin(self.dest_path(u), self.dest_path("textfile.conf"), os.path.join(self.tmp, "exposure"))
                  for u in UNITS]
        for unit in paths:
            r = run(["systemd-analyze", "security", "--offline=yes", unit], ok=None)
            m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
            self.assertIsNotNone(m, r.stdout + r.stderr)
            self.assertLessEqual(float(m.group(1)), MAX_EXPOSURE, "%s:\n%s" % (unit, r.stdout))

    @unittest.skipUnless(HAVE_ANALYZE, "systemd-analyze is not installed (scripts/deps.sh installs systemd)")
    def test_sysusers_and_tmpfiles_make_user_and_directories(self):
        root = os.path.join(self.tmp, "sysroot")
        os.makedirs(os.path.join(root, "etc"))
        run(["systemd-sysusers", "--root=" + root, self.dest_path("sysusers")])
        with open(os.path.join(root, "etc", "passwd")) as f:
            user = [l.split(":") for l in f if l.startswith("mnistd:")]
        self.assertEqual(len(user), 1)
        self.assertEqual(user[0][5], "/var/lib/mnistd")
        self.assertTrue(user[0][6].strip().endswith("nologin"))
        uid, gid = int(user[0][2]), int(user[0][3])
        self.assertLess(uid, 1000, "a system user")
        run(["systemd-tmpfiles", "--root=" + root, "--create", self.dest_path("tmpfiles")])
        for unit in UNITS:
            s = unit_settings(self.dest_path(unit))
            for key, top in (("StateDirectory", "var/lib"), ("LogsDirectory", "var/log")):
                for d in values(s, key):
                    st = os.stat(os.path.join(root, top, d))
                    mode = int(last(s, key + "Mode", "0755"), 8)
                    # The snippet and the unit agree, so neither changes what the other made.
                    self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o777), (uid, gid, mode), d)

    @unittest.skipUnless(HAVE_STRACE and HAVE_ANALYZE, "strace or systemd-analyze is not installed (scripts/deps.sh installs both)")
    def test_every_system_call_is_allowed_by_the_units(self):
        Scenario(self).run()


class Scenario:
    """Both programs as the units run them, each under strace: the evaluator
    started first on an empty checkpoint directory, the trainer with a
    notify socket and a watchdog, the control commands, reload by the units'
    ExecReload=, a log rotation, SIGTERM, a resume, --once and a bad
    configuration. Then every trace is held against its unit."""

    def __init__(self, t):
        self.t = t
        self.work = tempfile.mkdtemp(prefix="mn-deploy-strace-", dir=t.tmp)
        self.root = os.path.join(self.work, "root")
        self.procs = []
        self.traces = {"mnistd.service": [], "mnist-eval.service": []}
        self.notes = []
        self.notify = None

    # -- plumbing --

    def plain_install(self):
        """Installs binaries without sanitizers and returns (Build, destdir)."""
        b = self.t.build
        if b.sanitized:
            plain = os.path.join(BUILD, "deploy-plain")
            if not os.path.isfile(os.path.join(plain, "build.ninja")):
                run(["meson", "setup", plain, SOURCE, "-Db_sanitize=none", "-Dtests=disabled",
                     "-Dbuildtype=debugoptimized", "--prefix=" + b.prefix])
            b = Build(plain)
        dest = os.path.join(self.work, "dest")
        b.install(dest, rebuild=True)
        return b, dest

    def unit_argv(self, unit, key, cfg_path):
        """The unit's Exec line as argv, its programs mapped into the install root and --config to cfg_path."""
        argv = exec_argv(last(unit_settings(self.units[unit]), key))
        if os.path.exists(in_root(self.dest, argv[0])):
            argv[0] = in_root(self.dest, argv[0])
        if "--config" in argv:
            argv[argv.index("--config") + 1] = cfg_path
        return argv

    def traced(self, unit, argv, name, env=None):
        trace = os.path.join(self.work, name + ".trace")
        self.traces[unit].append(trace)
        log = open(os.path.join(self.work, name + ".log"), "ab")
        e = dict(os.environ, **(env or {}))
        # systemd starts services in /, with stdin on /dev/null.
        p = subprocess.Popen(["strace", "-f", "-qq", "-y", "-s", "1024", "-o", trace, "--"] + argv,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=e, cwd="/")
        p.mn_log, p.mn_logf, p.mn_argv = log.name, log, argv
        self.procs.append(p)
        return p

    @staticmethod
    def output(p):
        with open(p.mn_log, errors="replace") as f:
            return f.read()

    def pid_of(self, p):
        """The traced program's pid (strace's child, once it has exec'd the program)."""
        exe = os.path.realpath(p.mn_argv[0])

        def child():
            try:
                with open("/proc/%d/task/%d/children" % (p.pid, p.pid)) as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                return None
            for k in kids:
                try:
                    if os.readlink("/proc/%d/exe" % k) == exe:
                        return k
                except OSError:
                    pass
            return None
        return mnlib.wait_for(child, 30, "%s to start under strace" % exe)

    def wait_exit(self, p, timeout=120):
        try:
            return p.wait(timeout * mnlib.SLOW)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError("%s did not exit; output:\n%s" % (p.mn_argv, self.output(p)))

    def wait_output(self, p, pattern, timeout=60):
        rx = re.compile(pattern)

        def found():
            if p.poll() is not None:
                raise AssertionError("%s exited %s before printing %r:\n%s" % (p.mn_argv, p.returncode, pattern, self.output(p)))
            return rx.search(self.output(p))
        return mnlib.wait_for(found, timeout, "%r from %s" % (pattern, os.path.basename(p.mn_argv[0])))

    def reload(self, unit, p, pid, cfg_path):
        """What `systemctl reload` does: the unit's ExecReload=."""
        argv = [a.replace("$MAINPID", str(pid)).replace("${MAINPID}", str(pid))
                for a in self.unit_argv(unit, "ExecReload", cfg_path)]
        if os.path.basename(argv[0]) == "kill":
            sig = [a for a in argv[1:] if a.startswith("-")]
            self.t.assertEqual(len(sig), 1, argv)
            os.kill(pid, getattr(signal, "SIG" + sig[0].lstrip("-").upper().replace("SIG", "")))
        else:  # a reload command runs in the unit's sandbox too
            r = self.traced(unit, argv, "reload-%d" % len(self.procs))
            self.t.assertEqual(self.wait_exit(r), 0, self.output(r))

    def notifications(self):
        while True:
            try:
                msg = self.notify.recv(4096).decode()
            except BlockingIOError:
                return self.notes
            self.notes += msg.split("\n")

    def noted(self, state, after=0):
        return state in self.notifications()[after:]

    def control(self, request, raw=None):
        """One request on the control socket; its answer must be ok unless raw bytes are sent."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(60 * mnlib.SLOW)
            s.connect(self.sock_path)
            s.sendall(raw if raw is not None else (json.dumps(request) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        r = json.loads(buf)
        if raw is None:
            self.t.assertTrue(r.get("ok"), "%s: %s" % (request, r))
        return r

    def text(self, path):
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def metrics(self, path):
        try:
            with open(path) as f:
                return [json.loads(l) for l in f if l.strip()]
        except FileNotFoundError:
            return []

    # -- the run --

    def run(self):
        try:
            self._run()
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                p.mn_logf.close()
            if self.notify is not None:
                self.notify.close()
        problems = []
        for unit, traces in self.traces.items():
            box = Sandbox(self.units[unit], self.work, self.root)
            seen = set()
            for trace in traces:
                calls = parse_trace(trace)
                self.t.assertTrue(calls, "empty trace " + trace)
                seen |= {c.name for c in calls}
                problems += ["%s (%s): %s" % (unit, os.path.basename(trace), v) for v in box.violations(calls)]
            print("%s: %d distinct system calls traced, all checked against its filter" % (unit, len(seen)))
        if problems:
            self.t.fail("the units would break these programs:\n" + "\n".join(sorted(set(problems))))

    def _run(self):
        t = self.t
        self.build, self.dest = self.plain_install()
        files = self.build.expected_files()
        # With metrics on, as the README deploys them: the units with the textfile drop-in.
        self.units = {u: with_dropin(in_root(self.dest, files[u]), in_root(self.dest, files["textfile.conf"]),
                                     os.path.join(self.work, "units")) for u in UNITS}
        for p in ("mnistd", "mnist-eval"):
            t.assertTrue(os.access(in_root(self.dest, files[p]), os.X_OK), "%s not installed" % p)

        # The directories as tmpfiles.d and the units make them.
        state = in_root(self.root, "/var/lib/mnistd")
        rundir = in_root(self.root, "/run/mnistd")
        logs = in_root(self.root, "/var/log/mnist-eval")
        textfiles = in_root(self.root, "/var/lib/prometheus/node-exporter")
        best = in_root(self.root, "/var/lib/mnist-eval")
        for d in (state, rundir, logs, textfiles, best):
            os.makedirs(d, mode=0o750)
        data = mnlib.make_dataset(os.path.join(self.work, "data"))
        self.sock_path = os.path.join(rundir, "control.sock")
        metrics = os.path.join(logs, "metrics.jsonl")
        # The curves: the trainer's history beside its checkpoints, the
        # evaluator's page (drawn by a gnuplot child, in its sandbox) in its logs.
        history, page = os.path.join(state, "train.jsonl"), os.path.join(logs, "report.html")
        cfg = mnlib.base_config(self.work, data,
                                model={"hidden": [64]},
                                train={"max_steps": 10 ** 9, "threads": 0, "metrics_file": history},
                                checkpoint={"dir": state, "every_steps": 100, "max_to_keep": 3},
                                control={"socket": self.sock_path},
                                eval={"metrics_file": metrics, "best_dir": best, "textfile": os.path.join(textfiles, "mnist-eval.prom"),
                                      "report_html": page},
                                metrics={"textfile": os.path.join(textfiles, "mnistd.prom"), "interval_ms": 100})
        cfg_path = mnlib.write_config(os.path.join(self.work, "mnistd.json"), cfg)

        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(os.path.join(self.work, "notify.sock"))
        self.notify.setblocking(False)
        notify_env = {"NOTIFY_SOCKET": os.path.join(self.work, "notify.sock"), "WATCHDOG_USEC": "1000000"}

        # The evaluator first, on an empty directory.
        ev = self.traced("mnist-eval.service", self.unit_argv("mnist-eval.service", "ExecStart", cfg_path), "eval")
        ev_pid = self.pid_of(ev)
        self.wait_output(ev, r"watching")

        d = self.traced("mnistd.service", self.unit_argv("mnistd.service", "ExecStart", cfg_path), "mnistd", notify_env)
        d_pid = self.pid_of(d)
        mnlib.wait_for(lambda: self.noted("READY=1"), 60, "READY=1 from mnistd")
        mnlib.wait_for(lambda: mnlib.ckpt_steps(state), 60, "a first checkpoint")

        # Control commands, with training paused for most of them.
        self.control({"cmd": "status"})
        self.t.assertFalse(self.control(None, raw=b"{not json\n")["ok"])
        t.assertTrue(self.control({"cmd": "pause"})["paused"])
        mark = len(self.notifications())
        mnlib.wait_for(lambda: self.noted("WATCHDOG=1", mark), 30, "WATCHDOG=1 while paused")
        saved = self.control({"cmd": "save"})
        t.assertTrue(os.path.exists(os.path.join(state, saved["checkpoint"])), saved)
        cfg["train"]["learning_rate"] = 0.05
        mnlib.write_config(cfg_path, cfg)
        self.control({"cmd": "reload"})
        mark = len(self.notifications())
        self.reload("mnistd.service", d, d_pid, cfg_path)
        mnlib.wait_for(lambda: self.noted("RELOADING=1", mark) and self.noted("READY=1", mark), 30, "a reload by ExecReload=")

        # The evaluator has seen the saved checkpoint; rotate its metrics file the way logrotate does.
        mnlib.wait_for(lambda: any(m["step"] == saved["step"] for m in self.metrics(metrics)), 60,
                       "the saved checkpoint's evaluation")
        os.rename(metrics, metrics + ".1")
        self.reload("mnist-eval.service", ev, ev_pid, cfg_path)
        self.wait_output(ev, r"reopen|SIGHUP|Hangup")
        self.control({"cmd": "resume"})
        mnlib.wait_for(lambda: self.metrics(metrics), 60, "an evaluation in the new metrics file")

        # Stop as systemd does (SIGTERM), then the evaluator sees the final checkpoint.
        os.kill(d_pid, signal.SIGTERM)
        t.assertEqual(self.wait_exit(d), 0, self.output(d))
        t.assertTrue(self.noted("STOPPING=1"), self.notes)
        final = max(mnlib.ckpt_steps(state))
        mnlib.wait_for(lambda: any(m["step"] == final for m in self.metrics(metrics)), 60, "the final checkpoint's evaluation")
        mnlib.wait_for(lambda: 'id="summary-latest-step">%d<' % final in self.text(page), 60,
                       "the report page of the final evaluation")
        t.assertTrue(any(h["step"] == final for h in self.metrics(history)), "the trainer's history")
        os.kill(ev_pid, signal.SIGTERM)
        t.assertEqual(self.wait_exit(ev), 0, self.output(ev))

        # A restart resumes, and this time training runs to max_steps and ends by itself.
        self.notes = []
        cfg["train"]["max_steps"] = final + 50
        mnlib.write_config(cfg_path, cfg)
        d2 = self.traced("mnistd.service", self.unit_argv("mnistd.service", "ExecStart", cfg_path), "mnistd-resume", notify_env)
        t.assertEqual(self.wait_exit(d2), 0, self.output(d2))
        t.assertIn("resumed", self.output(d2))
        t.assertTrue(self.noted("READY=1") and self.noted("STOPPING=1"), self.notes)
        t.assertEqual(max(mnlib.ckpt_steps(state)), final + 50)

        once = self.traced("mnist-eval.service", self.unit_argv("mnist-eval.service", "ExecStart", cfg_path) + ["--once"], "eval-once")
        t.assertEqual(self.wait_exit(once), 0, self.output(once))
        t.assertRegex(self.output(once), r"accuracy=\d\.\d{4}")

        # Both left their metrics behind, saying they stopped.
        for name, family in (("mnistd.prom", "mnistd_running"), ("mnist-eval.prom", "mnist_eval_running")):
            with open(os.path.join(textfiles, name)) as f:
                t.assertRegex(f.read(), r"(?m)^%s 0$" % family)
        t.assertEqual(sorted(os.listdir(textfiles)), ["mnist-eval.prom", "mnistd.prom"])

        # A bad configuration: both exit 78 (the units' RestartPreventExitStatus=).
        bad = mnlib.write_config(os.path.join(self.work, "bad.json"), dict(cfg, train={"batch_size": 0}))
        for unit, name in (("mnistd.service", "mnistd-bad"), ("mnist-eval.service", "eval-bad")):
            p = self.traced(unit, self.unit_argv(unit, "ExecStart", bad), name)
            t.assertEqual(self.wait_exit(p), 78, self.output(p))
            t.assertIn("78", " ".join(values(unit_settings(self.units[unit]), "RestartPreventExitStatus")).split())


class InstancesScenario(Scenario):
    """Two runs side by side from the templates, mnistd@a and mnistd@b with
    mnist-eval@a and mnist-eval@b, each under strace with metrics on: each
    trains, publishes and is evaluated in its own directories, answers on
    its own socket (found by the instance's configuration, as mnistctl
    --instance does), and each trace is held against its own instance's
    unit, so no run writes into the other's files."""

    NAMES = ("a", "b")

    def _run(self):
        t = self.t
        self.build, self.dest = self.plain_install()
        files = self.build.expected_files()
        dropin = in_root(self.dest, files["textfile.conf"])
        self.units, self.traces = {}, {}
        for name in self.NAMES:
            for tmpl in TEMPLATES:
                unit = tmpl.replace("@.", "@%s." % name)
                self.units[unit] = instance_unit(in_root(self.dest, files[tmpl]), name,
                                                 os.path.join(self.work, "units"), dropin)
                self.traces[unit] = []
        data = mnlib.make_dataset(os.path.join(self.work, "data"))
        textfiles = in_root(self.root, "/var/lib/prometheus/node-exporter")
        os.makedirs(textfiles)
        runs = {}
        for name in self.NAMES:
            d = unit_settings(self.units["mnistd@%s.service" % name])
            e = unit_settings(self.units["mnist-eval@%s.service" % name])
            state = in_root(self.root, "/var/lib/" + last(d, "StateDirectory"))
            rundir = in_root(self.root, "/run/" + last(d, "RuntimeDirectory"))
            logs = in_root(self.root, "/var/log/" + last(e, "LogsDirectory"))
            best = in_root(self.root, "/var/lib/" + last(e, "StateDirectory"))
            for x in (state, rundir, logs, best):
                os.makedirs(x, mode=0o750)
            cfg = mnlib.base_config(self.work, data, train={"max_steps": 10 ** 9, "threads": 1},
                                    checkpoint={"dir": state, "every_steps": 50, "max_to_keep": 3},
                                    control={"socket": os.path.join(rundir, "control.sock")},
                                    eval={"metrics_file": os.path.join(logs, "metrics.jsonl"), "best_dir": best,
                                          "textfile": os.path.join(textfiles, "mnist-eval-%s.prom" % name)},
                                    metrics={"textfile": os.path.join(textfiles, "mnistd-%s.prom" % name),
                                             "interval_ms": 100, "run": name})
            # What /etc/mnistd/<name>.json holds for the instance.
            cfg_path = mnlib.write_config(os.path.join(self.work, "%s.json" % name), cfg)
            runs[name] = (cfg, cfg_path)
        procs = {}
        for name, (cfg, cfg_path) in runs.items():
            ev_unit, d_unit = "mnist-eval@%s.service" % name, "mnistd@%s.service" % name
            ev = self.traced(ev_unit, self.unit_argv(ev_unit, "ExecStart", cfg_path), "eval-" + name)
            d = self.traced(d_unit, self.unit_argv(d_unit, "ExecStart", cfg_path), "mnistd-" + name)
            procs[name] = (self.pid_of(d), d, self.pid_of(ev), ev)
        for name, (cfg, cfg_path) in runs.items():
            state = cfg["checkpoint"]["dir"]
            mnlib.wait_for(lambda: len(mnlib.ckpt_steps(state)) >= 2, 120, "two checkpoints of run " + name)
            self.sock_path = cfg["control"]["socket"]
            t.assertTrue(self.control({"cmd": "pause"})["paused"])
            saved = self.control({"cmd": "save"})
            t.assertTrue(os.path.exists(os.path.join(state, saved["checkpoint"])), saved)
            mnlib.wait_for(lambda: any(m["step"] == saved["step"] for m in self.metrics(cfg["eval"]["metrics_file"])),
                           60, "run %s's evaluation of its saved checkpoint" % name)
        for name, (d_pid, d, ev_pid, ev) in procs.items():
            os.kill(d_pid, signal.SIGTERM)
            t.assertEqual(self.wait_exit(d), 0, self.output(d))
            os.kill(ev_pid, signal.SIGTERM)
            t.assertEqual(self.wait_exit(ev), 0, self.output(ev))
        # Each run's metrics in its own files, labelled with its name.
        for name in self.NAMES:
            for f, family in (("mnistd-%s.prom", "mnistd_running"), ("mnist-eval-%s.prom", "mnist_eval_running")):
                with open(os.path.join(textfiles, f % name)) as fh:
                    t.assertRegex(fh.read(), r'(?m)^%s\{run="%s"\} 0$' % (family, name))


if __name__ == "__main__":
    unittest.main(verbosity=2)
