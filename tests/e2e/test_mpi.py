#!/usr/bin/env python3
"""End-to-end tests of data-parallel training: the real mnistd started by
Open MPI's mpirun as 2 and 3 ranks on the tiny data set, against a plain
mnistd on the same configuration."""

import glob
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402

MPIRUN = shutil.which("mpirun")

# mpirun refuses root without these two, and 3 ranks on 2 cores without the third.
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}


def mpi_built_in():
    out = subprocess.run([mnlib.MNISTD, "--version"], capture_output=True, text=True).stdout
    return "MPI available" in out


STEP_RE = re.compile(r"debug step step=(\d+) loss=([0-9.eE+-]+|nan|inf)")


def step_losses(text):
    return {int(m.group(1)): float(m.group(2)) for m in STEP_RE.finditer(text)}


@unittest.skipUnless(MPIRUN, "mpirun is not installed (Debian: openmpi-bin)")
@unittest.skipUnless(os.path.exists(mnlib.MNISTD) and mpi_built_in(), "mnistd was built without MPI")
class MpiTest(mnlib.TestCase):
    def mpi_argv(self, n, cfg_path, *extra):
        return [MPIRUN, "-np", str(n), *extra, mnlib.MNISTD, "--config", cfg_path]

    def mpi_env(self):
        env = dict(MPI_ENV)
        lsan = os.path.join(os.path.dirname(__file__), "lsan-mpi.supp")
        env["LSAN_OPTIONS"] = "suppressions=%s:print_suppressions=0" % lsan
        # Open MPI's components are dlopen'ed: only the slow unwinder sees
        # through their frames to the library names the suppressions match.
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":fast_unwind_on_malloc=0"
        return env

    def run_mpi(self, n, cfg_path, name, timeout=120, extra=()):
        p = self.start(self.mpi_argv(n, cfg_path, *extra), name, env=self.mpi_env())
        rc = p.wait(timeout)
        return rc, p.output()

    def run_plain(self, cfg_path, name, timeout=120):
        p = self.start([mnlib.MNISTD, "--config", cfg_path], name)
        rc = p.wait(timeout)
        return rc, p.output()

    def ckpt_dir(self, cfg):
        return cfg["checkpoint"]["dir"]

    def rank_pids(self, p, n):
        """{rank: pid} of the n ranks mpirun (the Proc p) started."""
        def rank_of(pid):
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            return int(env[b"OMPI_COMM_WORLD_RANK"])

        def find():
            pids = subprocess.run(["pgrep", "-P", str(p.p.pid), "-f", "mnistd"], capture_output=True,
                                  text=True).stdout.split()
            return {rank_of(pid): int(pid) for pid in pids} if len(pids) == n else None

        return mnlib.wait_for(find, 30, "%d ranks" % n)

    def test_losses_match_a_single_process(self):
        """Every one of the first 200 steps has the single process's loss (2
        ranks: an even split; 3 ranks: 6, 7 and 7 of a batch of 20)."""
        path, cfg = self.config("one.json", train={"max_steps": 200}, log={"level": "debug"},
                                checkpoint={"every_steps": 100})
        rc, out = self.run_plain(path, "one")
        self.assertEqual(rc, 0, out)
        want = step_losses(out)
        self.assertEqual(sorted(want), list(range(1, 201)))
        for n in (2, 3):
            path, cfg = self.config("np%d.json" % n, train={"max_steps": 200}, log={"level": "debug"},
                                    checkpoint={"every_steps": 100, "dir": os.path.join(self.work, "ck%d" % n)},
                                    control={"socket": os.path.join(self.work, "c%d.sock" % n)})
            rc, out = self.run_mpi(n, path, "np%d" % n)
            self.assertEqual(rc, 0, out)
            got = step_losses(out)
            # Rank 0 alone logs: one line per step, not one per rank.
            self.assertEqual(sorted(got), list(range(1, 201)), "np %d" % n)
            for step in range(1, 201):
                self.assertAlmostEqual(got[step], want[step], delta=1e-4 * abs(want[step]),
                                       msg="np %d step %d" % (n, step))
            self.assertIn("world_size=%d" % n, out)

    def test_restart_with_same_ranks_is_byte_identical(self):
        full_path, full = self.config("full.json", train={"max_steps": 120},
                                      checkpoint={"every_steps": 40, "dir": os.path.join(self.work, "full")},
                                      control={"socket": os.path.join(self.work, "full.sock")})
        rc, out = self.run_mpi(2, full_path, "full")
        self.assertEqual(rc, 0, out)
        part_path, part = self.config("part.json", train={"max_steps": 60},
                                      checkpoint={"every_steps": 40, "dir": os.path.join(self.work, "part")},
                                      control={"socket": os.path.join(self.work, "part.sock")})
        rc, out = self.run_mpi(2, part_path, "part1")
        self.assertEqual(rc, 0, out)
        self.assertEqual(mnlib.ckpt_steps(self.ckpt_dir(part))[-1], 60)
        part["train"]["max_steps"] = 120
        mnlib.write_config(part_path, part)
        rc, out = self.run_mpi(2, part_path, "part2")
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"resumed file=model\.ckpt-60\.safetensors step=60")
        a = os.path.join(self.ckpt_dir(full), "model.ckpt-120.safetensors")
        b = os.path.join(self.ckpt_dir(part), "model.ckpt-120.safetensors")
        ha, da, _ = mnlib.read_safetensors(a)
        hb, db, _ = mnlib.read_safetensors(b)
        self.assertEqual(da, db, "an interrupted 2-rank run must end byte-identical")
        self.assertEqual(ha["__metadata__"]["data_crc32"], hb["__metadata__"]["data_crc32"])
        self.assertEqual(ha["__metadata__"].get("world_size"), "2")

    def test_checkpoint_resumes_with_other_world_sizes(self):
        """A 2-rank checkpoint resumes under 3 ranks and under a plain mnistd,
        and the two continuations agree step by step."""
        path, cfg = self.config("two.json", train={"max_steps": 60}, checkpoint={"every_steps": 30})
        rc, out = self.run_mpi(2, path, "two")
        self.assertEqual(rc, 0, out)
        src = self.ckpt_dir(cfg)
        losses = {}
        for label in ("np3", "plain"):
            dst = os.path.join(self.work, "ck-" + label)
            shutil.copytree(src, dst)
            p, c = self.config(label + ".json", train={"max_steps": 100}, log={"level": "debug"},
                               checkpoint={"every_steps": 50, "dir": dst},
                               control={"socket": os.path.join(self.work, label + ".sock")})
            if label == "np3":
                rc, out = self.run_mpi(3, p, label)
            else:
                rc, out = self.run_plain(p, label)
            self.assertEqual(rc, 0, out)
            self.assertRegex(out, r"resumed file=model\.ckpt-60\.safetensors step=60")
            self.assertEqual(mnlib.ckpt_steps(dst)[-1], 100)
            losses[label] = step_losses(out)
            self.assertEqual(sorted(losses[label]), list(range(61, 101)))
        for step in range(61, 101):
            want = losses["plain"][step]
            self.assertAlmostEqual(losses["np3"][step], want, delta=1e-4 * abs(want), msg="step %d" % step)
        # The plain run's checkpoint says it ran alone.
        h, _, _ = mnlib.read_safetensors(os.path.join(self.work, "ck-plain", "model.ckpt-100.safetensors"))
        self.assertEqual(h["__metadata__"].get("world_size"), "1")

    def test_control_socket_and_sigterm_to_the_launcher(self):
        # The log goes to a file: what the ranks print after mpirun has
        # forwarded SIGTERM and exited is lost with mpirun's I/O forwarding.
        log = os.path.join(self.work, "job-file.log")
        path, cfg = self.config(train={"max_steps": 10**8}, checkpoint={"every_steps": 50},
                                log={"file": log})
        sock = cfg["control"]["socket"]
        env = self.mpi_env()
        # mpirun passes its SIGTERM on after this many seconds and SIGKILLs
        # the ranks as many seconds later (Open MPI 4.1: default 1). Agreeing
        # on the stop, the final checkpoint and the summary took 0.2-0.3 s
        # here under ASan pinned to one busy core, and more than 1 s with a
        # disk 0.4 s slow to fsync: then SIGKILL, no summary, a failed test.
        env["OMPI_MCA_odls_base_sigkill_timeout"] = str(int(max(2, 2 * mnlib.SLOW)))
        p = self.start(self.mpi_argv(2, path), "job", env=env)
        mnlib.wait_for(lambda: len(mnlib.ckpt_steps(self.ckpt_dir(cfg))) >= 1, 60, "a first checkpoint")

        def ctl(*args):
            r = self.run_prog([mnlib.MNISTCTL, "--socket", sock, *args])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            return r.stdout

        self.assertIn('"ok": true', ctl("status", "--json").replace('"ok":true', '"ok": true'))
        ctl("pause")
        s1 = mnlib.json.loads(ctl("status", "--json"))
        mnlib.wait_for(lambda: mnlib.json.loads(ctl("status", "--json"))["paused"], 20, "paused")
        s1 = mnlib.json.loads(ctl("status", "--json"))
        s2 = mnlib.json.loads(ctl("status", "--json"))
        self.assertEqual(s1["step"], s2["step"], "paused ranks do not step")
        saved = ctl("save")
        m = re.search(r"model\.ckpt-(\d+)\.safetensors", saved)
        self.assertTrue(m, saved)
        self.assertTrue(os.path.exists(os.path.join(self.ckpt_dir(cfg), m.group(0))))
        ctl("resume")
        mnlib.wait_for(lambda: mnlib.json.loads(ctl("status", "--json"))["step"] > s2["step"], 20, "training again")
        p.signal(signal.SIGTERM)
        p.wait(60)
        # The ranks outlive mpirun by up to its kill timeout.
        mnlib.wait_for(lambda: "data-parallel summary" in mnlib.read_text(log), 30, "the ranks to finish")
        out = mnlib.read_text(log)
        m = re.search(r"stopping at step (\d+)", out)
        self.assertTrue(m, out)
        final = int(m.group(1))
        self.assertEqual(mnlib.ckpt_steps(self.ckpt_dir(cfg))[-1], final, out)
        self.assertEqual(out.count("stopping at step"), 1, "rank 0 alone logs")
        self.assert_all_valid(self.ckpt_dir(cfg))

    def assert_all_valid(self, d):
        names = os.listdir(d)
        # No temporary left; the writer's lock file (.mnistd.lock) stays by design.
        self.assertFalse([n for n in names if n.startswith(".") and n != ".mnistd.lock"], names)
        for f in glob.glob(os.path.join(d, "*.safetensors")):
            r = self.run_prog([mnlib.MNISTCTL, "verify", f])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_a_sighup_to_one_rank_alone_changes_nothing(self):
        """Rank 0 alone reloads and the others follow its broadcast. A SIGHUP
        that reaches rank 1 only (a kill by hand) must not give it a learning
        rate of its own: its parameters would drift from rank 0's."""
        path, cfg = self.config(train={"max_steps": 10**8, "learning_rate_decay": 1.0},
                                checkpoint={"every_steps": 10**8})
        sock = cfg["control"]["socket"]
        p = self.start(self.mpi_argv(2, path), "job", env=self.mpi_env())

        def status():
            r = self.run_prog([mnlib.MNISTCTL, "--socket", sock, "status", "--json"])
            return mnlib.json.loads(r.stdout) if r.returncode == 0 else {"step": 0}

        mnlib.wait_for(lambda: status()["step"] > 0, 60, "training")
        rank1 = self.rank_pids(p, 2)[1]
        cfg["train"]["learning_rate"] = 0.5
        mnlib.write_config(path, cfg)
        os.kill(rank1, signal.SIGHUP)
        p.wait_output("rank 1 follows rank 0's configuration", 30)
        # The ranks still agree: the state check of a checkpoint passes.
        r = self.run_prog([mnlib.MNISTCTL, "--socket", sock, "save"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + p.output())
        self.assertNotIn("diverged", p.output())
        self.assertEqual(status()["learning_rate"], 0.1)
        p.signal(signal.SIGTERM)
        p.wait(60)

    def test_a_stop_before_training_started_is_kept(self):
        """A SIGTERM that reaches a rank while it still loads the data (held
        there by gate.c) stops the job at its first step boundary: it must
        not be lost because the training thread did not exist yet."""
        env, gate, held = mnlib.gate(self, "open:train-images-idx3-ubyte.gz")
        path, cfg = self.config(train={"max_steps": 10**8}, checkpoint={"every_steps": 10**6})
        open(gate, "w").close()
        menv = self.mpi_env()
        menv["ASAN_OPTIONS"] += ":verify_asan_link_order=0"
        menv.update({k: v for k, v in env.items() if k != "ASAN_OPTIONS"})
        p = self.start(self.mpi_argv(2, path), "job", env=menv)
        # Rank 0's signal handlers are in place before its socket listens.
        p.wait_output("control socket listening", 60)
        mnlib.wait_for(lambda: os.path.exists(held), 60, "a rank held in its data load")
        os.kill(self.rank_pids(p, 2)[0], signal.SIGTERM)
        os.unlink(gate)
        rc = p.wait(60)
        out = p.output()
        self.assertEqual(rc, 0, out)
        self.assertIn("received Terminated before training started", out)
        self.assertRegex(out, r"stopping at step 0\b")
        self.assertNotRegex(out, r"training step=")

    def test_a_stop_to_one_rank_alone_ends_the_job_cleanly(self):
        """A SIGTERM to the last of 3 ranks alone (a kill by hand on its node):
        the ranks stop at one step, rank 0 alone publishes that step's
        checkpoint, once, and every rank exits 0 (so does mpirun)."""
        path, cfg = self.config(train={"max_steps": 10**8}, checkpoint={"every_steps": 10**6})
        sock = cfg["control"]["socket"]
        p = self.start(self.mpi_argv(3, path), "job", env=self.mpi_env())

        def step():
            r = self.run_prog([mnlib.MNISTCTL, "--socket", sock, "status", "--json"])
            return mnlib.json.loads(r.stdout)["step"] if r.returncode == 0 else 0

        mnlib.wait_for(lambda: step() > 0, 60, "training")
        os.kill(self.rank_pids(p, 3)[2], signal.SIGTERM)
        rc = p.wait(30)
        out = p.output()
        self.assertEqual(rc, 0, out)
        m = re.findall(r"stopping at step (\d+)", out)
        self.assertEqual(len(m), 1, out)
        self.assertEqual(mnlib.ckpt_steps(self.ckpt_dir(cfg)), [int(m[0])], out)
        self.assert_all_valid(self.ckpt_dir(cfg))

    def test_under_systemd_rank_0_speaks_for_the_job(self):
        """As a unit's ExecStart=mpirun ...: systemd names mpirun, its main
        process, in WATCHDOG_PID, and mpirun's children inherit NOTIFY_SOCKET.
        Rank 0 alone sends (READY=1, STATUS=, the watchdog's pings, STOPPING=1),
        from its own pid (so the unit needs NotifyAccess=all), and feeds the
        watchdog of the mpirun that launched it; no other rank says anything."""
        ns_path = os.path.join(self.work, "notify.sock")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(ns_path)
        ns.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.addCleanup(ns.close)
        got = []  # (sender pid, message)

        def until(pred, what, timeout=60):
            end = mnlib.deadline(timeout)
            while True:
                for i, (pid, m) in enumerate(got):
                    if pred(m):
                        return pid
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("no notify message with %s; got %r" % (what, got))
                if select.select([ns], [], [], left)[0]:
                    data, anc, _, _ = ns.recvmsg(4096, socket.CMSG_SPACE(12))
                    pid = next(struct.unpack("i", d[:4])[0] for lvl, typ, d in anc
                               if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS)
                    got.append((pid, data.decode()))

        path, cfg = self.config(train={"max_steps": 10**8}, checkpoint={"every_steps": 10**6})
        env = self.mpi_env()
        env.update({"NOTIFY_SOCKET": ns_path, "WATCHDOG_USEC": "400000"})
        # The shell's pid is mpirun's once it execs: WATCHDOG_PID names the main process.
        p = self.start(["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *self.mpi_argv(2, path)], "job",
                       env=env)
        ranks = self.rank_pids(p, 2)
        self.assertEqual(until(lambda m: "READY=1" in m.split("\n"), "READY=1"), ranks[0])
        self.assertEqual(until(lambda m: m == "WATCHDOG=1", "WATCHDOG=1"), ranks[0])
        self.assertEqual(until(lambda m: m.startswith("STATUS=step "), "STATUS=step"), ranks[0])
        os.kill(ranks[1], signal.SIGTERM)
        self.assertEqual(until(lambda m: "STOPPING=1" in m.split("\n"), "STOPPING=1"), ranks[0])
        self.assertEqual(p.wait(60), 0, p.output())
        self.assertEqual({pid for pid, _ in got}, {ranks[0]}, got)

    def test_a_stop_to_another_rank_ends_a_paused_job(self):
        """A stop any rank receives is agreed on at the next step boundary,
        paused or not: a SIGTERM to rank 1 alone (a kill by hand on its node)
        while rank 0 is paused ends the job with rank 0's final checkpoint of
        the paused step, and every rank exits 0."""
        path, cfg = self.config(train={"max_steps": 10**8}, checkpoint={"every_steps": 10**6})
        sock = cfg["control"]["socket"]
        p = self.start(self.mpi_argv(2, path), "job", env=self.mpi_env())

        def ctl(*args):
            r = self.run_prog([mnlib.MNISTCTL, "--socket", sock, *args])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr + p.output())
            return r.stdout

        def status():
            r = self.run_prog([mnlib.MNISTCTL, "--socket", sock, "status", "--json"])
            return mnlib.json.loads(r.stdout) if r.returncode == 0 else {"step": 0, "paused": False}

        mnlib.wait_for(lambda: status()["step"] > 0, 60, "training")
        ctl("pause")
        mnlib.wait_for(lambda: status()["paused"], 30, "paused")
        paused_at = status()["step"]
        os.kill(self.rank_pids(p, 2)[1], signal.SIGTERM)
        rc = p.wait(30)
        out = p.output()
        self.assertEqual(rc, 0, out)
        self.assertIn("stopping at step %d" % paused_at, out)
        self.assertEqual(mnlib.ckpt_steps(self.ckpt_dir(cfg))[-1], paused_at, out)
        self.assert_all_valid(self.ckpt_dir(cfg))

    def mpmd(self, path0, path1):
        """argv for a job whose rank 0 and rank 1 read different files."""
        return [MPIRUN, "-np", "1", mnlib.MNISTD, "--config", path0, ":",
                "-np", "1", mnlib.MNISTD, "--config", path1]

    def test_a_rank_started_with_other_training_settings_is_named(self):
        """A rank whose own file (its node's copy) differs from rank 0's in a
        setting that no broadcast overrides would compute other gradients or
        another EMA: the job must refuse to start and name the setting and
        the rank (EX_CONFIG on every rank), not train until the first
        checkpoint and then blame a diverging node, nor (other data of the
        same shape) train silently on a mixture."""
        other = mnlib.make_dataset(os.path.join(self.work, "other-data"), seed=5)
        path0, cfg0 = self.config("rank0.json")
        cases = [
            ("train.batch_size", {"train": {"batch_size": 10}}),
            ("train.l2", {"train": {"l2": 0.01}}),
            ("train.ema_decay", {"train": {"ema_decay": 0.5}}),
            ("model.hidden", {"model": {"hidden": [16]}}),
            ("data.validation_size", {"data": {"validation_size": 100}}),
            ("data.dir", {"data": {"dir": other}}),
        ]
        for key, change in cases:
            with self.subTest(key=key):
                path1, _ = self.config("rank1.json", **change)
                p = self.start(self.mpmd(path0, path1), key, env=self.mpi_env())
                rc = p.wait(60)
                out = p.output()
                self.assertEqual(rc, 78, out)
                self.assertRegex(out, r"rank 1\b.*\b%s\b" % re.escape(key))
                self.assertNotIn("diverged", out)
                self.assertNotIn("MPI_ABORT", out)
                self.assertEqual(mnlib.ckpt_steps(self.ckpt_dir(cfg0)), [], out)

    def test_ranks_may_differ_in_what_only_rank_0_or_the_node_uses(self):
        """What a rank keeps to itself (data.dir holding the same data, BLAS
        threads) or what only rank 0 uses (checkpoint.dir, control.socket)
        and what rank 0 broadcasts (the reloadable keys) may differ: the
        job runs, and rank 0's values rule (rank 1's checkpoint.dir stays
        empty, every loss is the one of a job whose files agree)."""
        copy = os.path.join(self.work, "data-copy")
        shutil.copytree(self.data, copy)
        common = dict(train={"max_steps": 40}, log={"level": "debug"})
        path0, cfg0 = self.config("rank0.json", **common)
        rc, out = self.run_mpi(2, path0, "same")
        self.assertEqual(rc, 0, out)
        want = step_losses(out)
        shutil.rmtree(self.ckpt_dir(cfg0))
        path1, cfg1 = self.config("rank1.json", data={"dir": copy}, log={"level": "debug"},
                                  train={"max_steps": 40, "threads": 2, "learning_rate": 0.5},
                                  checkpoint={"dir": os.path.join(self.work, "ck1")},
                                  control={"socket": os.path.join(self.work, "c1.sock")})
        p = self.start(self.mpmd(path0, path1), "mixed", env=self.mpi_env())
        rc = p.wait(60)
        out = p.output()
        self.assertEqual(rc, 0, out)
        got = step_losses(out)
        self.assertEqual(sorted(got), sorted(want))
        # Rank 0's learning rate, not rank 1's 0.5 (BLAS threads may reorder sums).
        for step in want:
            self.assertAlmostEqual(got[step], want[step], delta=1e-4 * abs(want[step]), msg="step %d" % step)
        self.assertEqual(mnlib.ckpt_steps(self.ckpt_dir(cfg0))[-1], 40)
        self.assertFalse(os.path.exists(os.path.join(self.work, "ck1")), out)
        # Rank 1 says whose value it trains with, in a line that says it is rank 1's.
        self.assertRegex(out, r"warn rank 1 follows rank 0's train\.learning_rate\b.* rank=1\n")
        # Rank 0's lines are a plain mnistd's.
        self.assertNotRegex(out, r"info .* rank=0\n")

    def test_a_dead_rank_ends_the_job_and_the_run_resumes(self):
        path, cfg = self.config(train={"max_steps": 10**8}, checkpoint={"every_steps": 40})
        p = self.start(self.mpi_argv(2, path), "job", env=self.mpi_env())
        mnlib.wait_for(lambda: len(mnlib.ckpt_steps(self.ckpt_dir(cfg))) >= 2, 60, "two checkpoints")
        # Rank 1 by its rank, not as the larger pid: pids wrap (pid_max is
        # 32768 here), and a SIGKILL to rank 0 mid-write leaves a temporary.
        os.kill(self.rank_pids(p, 2)[1], signal.SIGKILL)
        rc = p.wait(60)
        self.assertNotEqual(rc, 0)
        self.assert_all_valid(self.ckpt_dir(cfg))
        last = mnlib.ckpt_steps(self.ckpt_dir(cfg))[-1]
        cfg["train"]["max_steps"] = last + 40
        mnlib.write_config(path, cfg)
        rc, out = self.run_mpi(2, path, "again")
        self.assertEqual(rc, 0, out)
        self.assertIn("step=%d" % last, re.search(r"resumed .*", out).group(0))

    def test_a_diverging_rank_is_named_and_nothing_is_published(self):
        """Rank 1 gets a corrupted gradient sum at step 7 (mpi_fault.c,
        preloaded there alone): its parameters drift from rank 0's, and the
        comparison at the first checkpoint ends the job before anything is
        published."""
        mpicc = shutil.which("mpicc")
        if not mpicc:
            self.skipTest("mpicc is not installed (Debian: libopenmpi-dev)")
        fault = os.path.join(self.work, "mpi_fault.so")
        src = os.path.join(os.path.dirname(__file__), "mpi_fault.c")
        r = subprocess.run([mpicc, "-shared", "-fPIC", "-o", fault, src], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        path, cfg = self.config(train={"max_steps": 100}, checkpoint={"every_steps": 20})
        argv = [MPIRUN, "-np", "1", mnlib.MNISTD, "--config", path, ":",
                "-np", "1", "env", "LD_PRELOAD=" + fault, mnlib.MNISTD, "--config", path]
        env = self.mpi_env()
        # The sanitizer's runtime is not first in a preloaded process's libraries; that is fine here.
        env["ASAN_OPTIONS"] += ":verify_asan_link_order=0"
        p = self.start(argv, "mpmd", env=env)
        rc = p.wait(120)
        out = p.output()
        self.assertNotEqual(rc, 0, out)
        self.assertRegex(out, r"rank 1 diverged from rank 0 at step 20")
        self.assertEqual(mnlib.ckpt_steps(self.ckpt_dir(cfg)), [])

    def test_a_start_that_fails_on_rank_0_alone_ends_the_job(self):
        """Rank 0 alone prepares checkpoint.dir; when that fails, the other
        rank must not wait for it in a collective forever."""
        blocker = os.path.join(self.work, "a-file")
        with open(blocker, "w") as f:
            f.write("x")
        path, _ = self.config(checkpoint={"dir": os.path.join(blocker, "ckpt")})
        rc, out = self.run_mpi(2, path, "rank0fails", timeout=60)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("checkpoint.dir", out)

    def test_more_ranks_than_examples_in_a_batch(self):
        path, _ = self.config(train={"batch_size": 2, "max_steps": 10})
        rc, out = self.run_mpi(3, path, "three")
        # A configuration error, found before the data load, on every rank alike.
        self.assertEqual(rc, 78, out)
        self.assertIn("3 ranks cannot share a batch of 2", out)
        self.assertNotIn("loading data", out)
        self.assertNotIn("MPI_ABORT", out)

    def test_the_evaluator_reads_an_mpi_run(self):
        path, cfg = self.config(train={"max_steps": 60}, checkpoint={"every_steps": 30})
        rc, out = self.run_mpi(2, path, "job")
        self.assertEqual(rc, 0, out)
        r = self.run_prog([mnlib.MNIST_EVAL, "--config", path, "--once"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout + r.stderr, r"step=60 accuracy=0\.\d{4}")

    def test_a_plain_mnistd_does_not_start_mpi(self):
        path, _ = self.config(train={"max_steps": 20})
        rc, out = self.run_plain(path, "plain")
        self.assertEqual(rc, 0, out)
        self.assertNotIn("data-parallel", out)


@unittest.skipUnless(MPIRUN, "mpirun is not installed (Debian: openmpi-bin)")
class EvaluatorUnderMpiTest(mnlib.TestCase):
    """mnist-eval is one process: N copies would each evaluate every checkpoint
    and write the same metrics files and best_dir."""

    def test_more_than_one_rank_is_refused(self):
        path, cfg = self.config()
        os.makedirs(cfg["checkpoint"]["dir"])
        env = dict(MPI_ENV, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
        p = self.start([MPIRUN, "-np", "2", mnlib.MNIST_EVAL, "--config", path], "eval2", env=env)
        self.assertNotEqual(p.wait(120), 0)
        out = p.output()
        self.assertIn("mnist-eval: started as rank 1 of 2 by an MPI launcher; the evaluator is "
                      "one process: run it once, without mpirun or srun", out)
        self.assertIn("rank 0 of 2", out)
        # One rank is one evaluator: --once runs as it would alone (no checkpoint yet).
        p = self.start([MPIRUN, "-np", "1", mnlib.MNIST_EVAL, "--config", path, "--once"], "eval1",
                       env=env)
        self.assertEqual(p.wait(120), 1, p.output())
        self.assertNotIn("MPI launcher", p.output())
        self.assertIn("no valid checkpoint", p.output())

if __name__ == "__main__":
    unittest.main(verbosity=2)
