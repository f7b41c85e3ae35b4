"""End-to-end tests of the persistence toolkit: mnistctl ls, inspect, verify,
convert, freeze and predict on checkpoints written by the real mnistd, and
mnistd's warm start (checkpoint.init_from). Real processes, real files."""

import gzip
import json
import os
import random
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import unittest
import zlib

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402
from mnlib import MNISTCTL, MNISTD, MNIST_EVAL, ckpt_steps, read_safetensors, tensor_bytes, tensor_floats  # noqa: E402

VALIDATION = 200  # mnlib.base_config's data.validation_size
LAYERS = ["layer1/weights", "layer1/biases", "layer2/weights", "layer2/biases"]
EMA = [n + "/ExponentialMovingAverage" for n in LAYERS]
STATE = ["global_step", "train/rng", "train/epoch", "train/perm_pos", "train/permutation"]
SUBCOMMANDS = ["ls", "inspect", "verify", "convert", "freeze", "predict"]
SANITIZER_REPORT = r"(Address|Leak|UndefinedBehavior)Sanitizer|runtime error:"


def ckpt_name(step):
    return "model.ckpt-%d.safetensors" % step


def encode_safetensors(tensors, meta, crc=True):
    """tensors: [(name, dtype, shape, raw bytes)] in data order."""
    header, data = {}, bytearray()
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    meta = dict(meta)
    meta.pop("data_crc32", None)
    if crc:
        meta["data_crc32"] = "%08x" % zlib.crc32(bytes(data))
    header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(data)


def tensors_of(path):
    """[(name, dtype, shape, raw)] of a file in data order, and its metadata."""
    header, data, _ = read_safetensors(path)
    meta = header.pop("__metadata__", {})
    order = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return [(n, t["dtype"], t["shape"], bytes(data[t["data_offsets"][0]:t["data_offsets"][1]])) for n, t in order], meta


def write_bytes(path, blob):
    with open(path, "wb") as f:
        f.write(blob)
    return path


class ToolkitCase(mnlib.TestCase):
    def ctl(self, *args, expect=0, config=None):
        argv = [MNISTCTL] + (["--config", config] if config else []) + [str(a) for a in args]
        r = self.run_prog(argv)
        self.assertEqual(r.returncode, expect, "%s\nstdout:\n%s\nstderr:\n%s" % (argv, r.stdout, r.stderr))
        # A sanitizer report may exit 1, the status many refusals expect: look for it too.
        self.assertNotRegex(r.stderr, SANITIZER_REPORT, argv)
        return r

    def ctl_json(self, *args, expect=0, config=None):
        return json.loads(self.ctl("--json", *args, expect=expect, config=config).stdout)

    def train(self, name="mnistd", expect=0, **sections):
        """Runs mnistd to completion with the base config plus sections."""
        sections.setdefault("train", {})
        sections["train"] = dict({"max_steps": 60}, **sections["train"])
        path, cfg = self.config(name + ".json", **sections)
        p = self.start([MNISTD, "--config", path], name)
        rc = p.wait(120)
        self.assertEqual(rc, expect, p.output())
        return path, cfg, p

    def validation_idx(self, n=VALIDATION):
        """Writes the first n training examples (the evaluator's validation split)
        as an IDX pair, images plain and labels gzipped; returns their paths."""
        with gzip.open(os.path.join(self.data, "train-images-idx3-ubyte.gz")) as f:
            img = f.read()
        with gzip.open(os.path.join(self.data, "train-labels-idx1-ubyte.gz")) as f:
            lab = f.read()
        count, rows, cols = struct.unpack(">III", img[4:16])
        images = os.path.join(self.work, "val-images-idx3-ubyte")
        labels = os.path.join(self.work, "val-labels-idx1-ubyte.gz")
        mnlib.write_idx(images, 2051, (n, rows, cols), img[16:16 + n * rows * cols], gz=False)
        mnlib.write_idx(labels, 2049, (n,), lab[8:8 + n], gz=True)
        return images, labels, list(lab[8:8 + n])


class HelpAndUsageTest(ToolkitCase):
    def test_help_for_every_subcommand(self):
        for cmd in SUBCOMMANDS:
            r = self.ctl(cmd, "--help")
            out = r.stdout
            self.assertTrue(out.startswith("Usage: mnistctl " + cmd), out)
            for section in ("Options:", "Exit status:", "Example"):
                self.assertIn(section, out, cmd)
            self.assertIn("--help", out)
            self.assertEqual(r.stderr, "")

    def test_usage_names_what_each_file_command_takes(self):
        # inspect, freeze, export and predict all take a directory too (its best or
        # latest checkpoint): the command list says so for each.
        out = self.ctl("--help").stdout
        for synopsis in ("inspect FILE|DIR ", "freeze CKPT|DIR -o OUT ", "export CKPT|DIR -o OUT "):
            self.assertIn("  " + synopsis, out)
        self.assertIn("predict MODEL --images IDX", out)

    def test_unknown_options_and_missing_arguments_exit_2(self):
        for cmd in SUBCOMMANDS:
            r = self.ctl(cmd, "--no-such-option", "x", expect=2)
            self.assertIn("unknown option --no-such-option", r.stderr)
            self.assertIn("mnistctl %s --help" % cmd, r.stderr)
            r = self.ctl(cmd, expect=2)
            self.assertIn("mnistctl " + cmd, r.stderr)


class FileToolsTest(ToolkitCase):
    def setUp(self):
        super().setUp()
        self.cfg_path, self.cfg, _ = self.train(eval={"metrics_file": os.path.join(self.work, "metrics.jsonl")})
        self.dir = self.cfg["checkpoint"]["dir"]
        self.assertEqual(ckpt_steps(self.dir), [20, 40, 60])
        self.ckpt = os.path.join(self.dir, ckpt_name(60))

    # ---- verify ----

    def test_verify_valid_files(self):
        files = [os.path.join(self.dir, ckpt_name(s)) for s in (20, 40, 60)]
        r = self.ctl("verify", *files)
        self.assertEqual(r.stdout.splitlines(), ["%s: OK (step %d, 64-32-10)" % (f, s) for f, s in zip(files, (20, 40, 60))])
        j = self.ctl_json("verify", self.ckpt)
        self.assertEqual(j, {"ok": True, "files": [{"file": self.ckpt, "ok": True, "kind": "checkpoint", "step": 60,
                                                    "architecture": "64-32-10", "tensors": 13}]})

    def test_verify_refuses_a_huge_file_without_reading_it(self):
        huge = os.path.join(self.work, "model.ckpt-1.safetensors")
        with open(huge, "wb") as f:
            f.truncate(5 << 30)  # sparse: costs no disk, but 5 GiB to read
        r = self.ctl("verify", huge, expect=1)
        self.assertIn("more than the 4294967296 allowed", r.stdout + r.stderr)

    def test_verify_tampered_truncated_and_broken_files(self):
        with open(self.ckpt, "rb") as f:
            blob = f.read()
        tensors, meta = tensors_of(self.ckpt)
        bad = {}
        # One flipped bit in the data: the checksum catches it.
        flipped = bytearray(blob)
        flipped[-3] ^= 0x10
        bad["tampered"] = (bytes(flipped), "checksum mismatch")
        # Cut short inside the data, and inside the header.
        bad["truncated"] = (blob[:-40], "out of bounds")
        bad["short_header"] = (blob[:100], "truncated")
        # A missing EMA tensor, with a correct checksum: the model check names it.
        missing = [t for t in tensors if t[0] != "layer2/biases/ExponentialMovingAverage"]
        bad["missing"] = (encode_safetensors(missing, meta),
                          'tensor "layer2/biases/ExponentialMovingAverage" not found in')
        # Shapes that disagree with the architecture (same byte count, so offsets stay valid).
        reshaped = [(n, d, [32, 64] if n == "layer1/weights" else s, raw) for n, d, s, raw in tensors]
        bad["shape"] = (encode_safetensors(reshaped, meta), '"layer1/weights" has shape [32, 64], expected [64, 32]')
        # Overlapping offsets in the header.
        header, data, _ = read_safetensors(self.ckpt)
        header["layer1/biases"]["data_offsets"][0] -= 4
        h = json.dumps(header).encode()
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
        bad["offsets"] = (struct.pack("<Q", len(h)) + h + data, "layer1/biases")
        # The training state contradicting the metadata.
        restepped = [(n, d, s, struct.pack("<q", 59) if n == "global_step" else raw) for n, d, s, raw in tensors]
        bad["step"] = (encode_safetensors(restepped, meta), "tensor global_step is 59 but the metadata says global_step 60")
        # No format: not an mnistd checkpoint.
        bad["format"] = (encode_safetensors(tensors, {k: v for k, v in meta.items() if k != "format"}), '"format"')

        paths = []
        for name, (content, _) in sorted(bad.items()):
            paths.append(write_bytes(os.path.join(self.work, name + ".safetensors"), content))
        r = self.ctl("verify", self.ckpt, *paths, expect=1)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 1 + len(paths), r.stdout)
        self.assertEqual(lines[0], "%s: OK (step 60, 64-32-10)" % self.ckpt)
        for line, (name, (_, msg)) in zip(lines[1:], sorted(bad.items())):
            self.assertTrue(line.startswith(os.path.join(self.work, name + ".safetensors") + ": "), line)
            self.assertIn(msg, line, name)
            self.assertNotIn("OK", line)
        j = self.ctl_json("verify", *paths, expect=1)
        self.assertFalse(j["ok"])
        self.assertEqual([f["ok"] for f in j["files"]], [False] * len(paths))
        # Each bad file alone fails too (the exit status is not just the last file's).
        self.ctl("verify", paths[0], self.ckpt, expect=1)
        self.ctl("verify", os.path.join(self.work, "nope.safetensors"), expect=1)

    # ---- ls ----

    def test_ls(self):
        # The real evaluator records the latest checkpoint; a later line for the
        # same file wins, malformed lines are ignored.
        if os.path.exists(MNIST_EVAL):
            r = self.run_prog([MNIST_EVAL, "--config", self.cfg_path, "--once"])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        metrics = os.path.join(self.work, "metrics.jsonl")
        with open(metrics, "a") as f:
            f.write('{"checkpoint": "%s", "accuracy": 0.25}\n' % ckpt_name(20))
            f.write("{not json\n")
            f.write('{"checkpoint": "%s", "accuracy": 0.5}\n' % ckpt_name(20))
            f.write('["checkpoint"]\n')
        with open(metrics) as f:
            acc60 = [json.loads(l)["accuracy"] for l in f if ckpt_name(60) in l]
        # A corrupt file among valid ones.
        with open(os.path.join(self.dir, ckpt_name(40)), "r+b") as f:
            f.seek(-1, 2)
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 1]))

        j = self.ctl_json("ls", self.dir, config=self.cfg_path)
        self.assertEqual(j["dir"], self.dir)
        self.assertEqual(j["latest"], ckpt_name(60))
        rows = j["checkpoints"]
        self.assertEqual([c["step"] for c in rows], [20, 40, 60])
        self.assertEqual([c["valid"] for c in rows], [True, False, True])
        self.assertEqual([c["latest"] for c in rows], [False, False, True])
        self.assertIn("checksum mismatch", rows[1]["error"])
        self.assertIsNone(rows[0]["error"])
        self.assertEqual(rows[0]["accuracy"], 0.5)
        self.assertIsNone(rows[1]["accuracy"])
        self.assertEqual(rows[2]["accuracy"], acc60[-1] if acc60 else None)
        header, _, _ = read_safetensors(self.ckpt)
        self.assertEqual(rows[2]["created"], header["__metadata__"]["created"])
        self.assertEqual(rows[2]["size"], os.path.getsize(self.ckpt))
        self.assertEqual(rows[2]["architecture"], "64-32-10")

        r = self.ctl("ls", self.dir, config=self.cfg_path)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["FILE", "STEP", "CREATED", "SIZE", "VALID", "LATEST", "ARCH", "ACCURACY"])
        self.assertEqual(lines[1].split()[0:2], [ckpt_name(20), "20"])
        self.assertEqual(lines[1].split()[-1], "0.5000")
        self.assertIn("INVALID", lines[2])
        self.assertEqual(lines[3].split()[5], "*")
        self.assertTrue(lines[4].startswith("invalid: ") and "checksum mismatch" in lines[4], lines[4])

        # --metrics overrides the configuration; latest follows checkpoint.json.
        other = write_bytes(os.path.join(self.work, "other.jsonl"),
                            b'{"checkpoint": "%s", "accuracy": 0.125}\n' % ckpt_name(60).encode())
        with open(os.path.join(self.dir, "checkpoint.json"), "w") as f:
            json.dump({"latest": ckpt_name(20), "all": [ckpt_name(20)]}, f)
        j = self.ctl_json("ls", "--metrics", other, self.dir, config=self.cfg_path)
        self.assertEqual(j["latest"], ckpt_name(20))
        self.assertEqual([c["accuracy"] for c in j["checkpoints"]], [None, None, 0.125])
        # Without checkpoint.json the highest step is the latest.
        os.unlink(os.path.join(self.dir, "checkpoint.json"))
        self.assertEqual(self.ctl_json("ls", self.dir, config=self.cfg_path)["latest"], ckpt_name(60))

        # Another prefix lists nothing; a missing directory is an error.
        self.assertEqual(self.ctl_json("ls", "--prefix", "other", self.dir)["checkpoints"], [])
        r = self.ctl("ls", os.path.join(self.work, "nope"), expect=1)
        self.assertIn("nope", r.stderr)

    def test_ls_names_a_step_mismatch(self):
        # A valid checkpoint under the wrong step's name is flagged, not trusted.
        os.rename(os.path.join(self.dir, ckpt_name(20)), os.path.join(self.dir, ckpt_name(25)))
        rows = self.ctl_json("ls", self.dir)["checkpoints"]
        self.assertEqual([c["step"] for c in rows], [25, 40, 60])
        self.assertFalse(rows[0]["valid"])
        self.assertIn("the file name says step 25 but global_step is 20", rows[0]["error"])

    # ---- inspect ----

    def test_inspect(self):
        r = self.ctl("inspect", self.ckpt)
        out = r.stdout
        self.assertRegex(out, r"(?m)^format\s+mnistd\.checkpoint\.v1$")
        self.assertRegex(out, r"(?m)^global_step\s+60$")
        self.assertRegex(out, r'(?m)^architecture\s+64-32-10\s+\{"input":64')
        self.assertRegex(out, r"(?m)^created\s+\d{4}-")
        self.assertRegex(out, r'(?m)^config\s+\{"data"')
        for name in LAYERS + EMA + STATE:
            self.assertRegex(out, r"(?m)^%s\s" % re.escape(name))
        self.assertRegex(out, r"(?m)^layer1/weights\s+F32\s+\[64, 32\]\s")
        self.assertRegex(out, r"(?m)^global_step\s+I64\s+\[\]\s+60\s+60\s+60\s+60$")

        j = self.ctl_json("inspect", self.ckpt)
        self.assertEqual(j["metadata"]["global_step"], "60")
        self.assertEqual(j["size"], os.path.getsize(self.ckpt))
        byname = {t["name"]: t for t in j["tensors"]}
        self.assertEqual(sorted(byname), sorted(LAYERS + EMA + STATE))
        w = tensor_floats(self.ckpt, "layer2/weights")
        t = byname["layer2/weights"]
        self.assertEqual((t["dtype"], t["shape"]), ("F32", [32, 10]))
        self.assertEqual(t["min"], min(w))
        self.assertEqual(t["max"], max(w))
        self.assertAlmostEqual(t["mean"], sum(w) / len(w), places=12)
        self.assertAlmostEqual(t["norm"], sum(v * v for v in w) ** 0.5, places=12)
        self.assertNotIn("values", t)

    def test_inspect_tensor_values(self):
        r = self.ctl("inspect", "--tensor", "layer1/weights", "--tensor", "global_step", self.ckpt)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0], "layer1/weights  F32 [64, 32]")
        rows = lines[1:65]
        self.assertEqual(len(rows), 64)
        got = [float(v) for row in rows for v in row.split()]
        self.assertEqual(len(rows[0].split()), 32)
        want = tensor_bytes(self.ckpt, "layer1/weights")
        # 9 significant digits round-trip F32 exactly.
        self.assertEqual(struct.pack("<%df" % len(got), *got), want)
        self.assertEqual(lines[65:], ["global_step  I64 []", "  60"])

        j = self.ctl_json("inspect", "--tensor", "train/permutation", self.ckpt)
        self.assertEqual(len(j["tensors"]), 1)
        perm = j["tensors"][0]["values"]
        self.assertEqual(sorted(perm), list(range(1000)))
        self.assertEqual(perm, list(struct.unpack("<1000I", tensor_bytes(self.ckpt, "train/permutation"))))

        r = self.ctl("inspect", "--all", self.ckpt)
        for name in LAYERS + EMA + STATE:
            self.assertRegex(r.stdout, r"(?m)^%s  [A-Z0-9]+ \[" % re.escape(name))

    def test_inspect_any_safetensors_file(self):
        # A foreign file (no metadata at all) with every kind of element.
        tensors = [
            ("half", "F16", [3], struct.pack("<3H", 0x3C00, 0xC100, 0x0001)),
            ("brain", "BF16", [1], struct.pack("<H", 0x3FC0)),
            ("small", "I8", [2], struct.pack("<2b", -3, 127)),
            ("flags", "BOOL", [2], bytes([1, 0])),
            ("wide", "U16", [1], struct.pack("<H", 65535)),
            ("double", "F64", [], struct.pack("<d", 0.1)),
            ("big", "U64", [1], struct.pack("<Q", 2 ** 64 - 1)),
            ("matrix", "I32", [2, 3], struct.pack("<6i", 1, 2, 3, -4, -5, -6)),
        ]
        path = write_bytes(os.path.join(self.work, "foreign.safetensors"), encode_safetensors(tensors, {}, crc=False))
        r = self.ctl("inspect", "--all", path)
        out = r.stdout
        self.assertIn("half  F16 [3]\n  1 -2.5 5.96046448e-08\n", out)
        self.assertIn("brain  BF16 [1]\n  1.5\n", out)
        self.assertIn("small  I8 [2]\n  -3 127\n", out)
        self.assertIn("flags  BOOL [2]\n  true false\n", out)
        self.assertIn("wide  U16 [1]\n  65535\n", out)
        self.assertIn("double  F64 []\n  0.10000000000000001\n", out)
        self.assertIn("big  U64 [1]\n  18446744073709551615\n", out)
        self.assertIn("matrix  I32 [2, 3]\n  1 2 3\n  -4 -5 -6\n", out)
        self.assertRegex(out, r"(?m)^matrix\s+I32\s+\[2, 3\]\s+-6\s+3\s+-1.5\s+9.53939\s*$")
        j = self.ctl_json("inspect", "--tensor", "big", "--tensor", "flags", path)
        self.assertEqual([t["values"] for t in j["tensors"]], [[2 ** 64 - 1], [True, False]])
        # verify wants mnistd's own files and says why this one is not.
        r = self.ctl("verify", path, expect=1)
        self.assertIn('not an mnistd checkpoint: __metadata__ has no "format"', r.stdout)

    def test_inspect_missing_tensor_lists_names(self):
        r = self.ctl("inspect", "--tensor", "v1_1", self.ckpt, expect=1)
        self.assertIn('tensor "v1_1" not found in %s (it has: layer1/weights, layer1/biases, ' % self.ckpt, r.stderr)
        self.assertEqual(r.stdout, "")
        r = self.ctl("inspect", os.path.join(self.work, "nope.safetensors"), expect=1)
        self.assertIn("nope.safetensors", r.stderr)

    # ---- convert ----

    def test_convert_partial_renamed(self):
        out = os.path.join(self.work, "layer1.safetensors")
        r = self.ctl("convert", self.ckpt, "-o", out,
                     "--select", "layer1/*/ExponentialMovingAverage",
                     "--rename", "layer1/weights/ExponentialMovingAverage=layer1/weights",
                     "--rename", "layer1/biases/ExponentialMovingAverage=layer1/biases")
        self.assertIn('"architecture" (and "frozen") were left out', r.stderr)
        header, data, n = read_safetensors(out)
        meta = header.pop("__metadata__")
        self.assertEqual(sorted(header), ["layer1/biases", "layer1/weights"])
        self.assertEqual(tensor_bytes(out, "layer1/weights"), tensor_bytes(self.ckpt, "layer1/weights/ExponentialMovingAverage"))
        self.assertEqual(tensor_bytes(out, "layer1/biases"), tensor_bytes(self.ckpt, "layer1/biases/ExponentialMovingAverage"))
        self.assertEqual(header["layer1/weights"]["shape"], [64, 32])
        self.assertEqual((8 + n) % 8, 0)
        src_meta = read_safetensors(self.ckpt)[0]["__metadata__"]
        for key in ("format", "global_step", "created", "config"):
            self.assertEqual(meta[key], src_meta[key], key)
        self.assertNotIn("architecture", meta)
        self.assertEqual(meta["data_crc32"], "%08x" % zlib.crc32(data))
        r = self.ctl("verify", out)
        self.assertEqual(r.stdout.strip(), "%s: OK (step 60, 2 tensors, no architecture)" % out)
        # Part of a frozen model is no frozen model.
        frozen = os.path.join(self.work, "frozen.safetensors")
        self.ctl("freeze", self.ckpt, "-o", frozen)
        part = os.path.join(self.work, "part.safetensors")
        self.ctl("convert", frozen, "-o", part, "--select", "layer2/*")
        meta = read_safetensors(part)[0]["__metadata__"]
        self.assertNotIn("frozen", meta)
        self.assertEqual(meta["source"], ckpt_name(60))
        self.assertEqual(self.ctl("verify", part).stdout.strip(), "%s: OK (step 60, 2 tensors, no architecture)" % part)

    def test_convert_whole_model_keeps_architecture(self):
        out = os.path.join(self.work, "model.safetensors")
        j = self.ctl_json("convert", self.ckpt, "-o", out, "--select", "layer*")
        self.assertFalse(j["architecture_dropped"])
        # --json after the subcommand, as its --help lists it, says the same.
        r = self.ctl("convert", self.ckpt, "-o", out, "--select", "layer*", "--json")
        self.assertEqual(json.loads(r.stdout), j)
        self.assertEqual(sorted(t["name"] for t in j["tensors"]), sorted(LAYERS + EMA))
        header, _, _ = read_safetensors(out)
        self.assertEqual(header["__metadata__"]["architecture"],
                         read_safetensors(self.ckpt)[0]["__metadata__"]["architecture"])
        self.assertEqual(self.ctl("verify", out).stdout.strip(), "%s: OK (step 60, 64-32-10, no training state)" % out)
        # Without --select everything is copied: a checkpoint again, byte for byte in its data.
        again = os.path.join(self.work, "again.safetensors")
        self.ctl("convert", self.ckpt, "-o", again)
        self.assertEqual(read_safetensors(again)[1], read_safetensors(self.ckpt)[1])
        self.assertEqual(self.ctl("verify", again).stdout.strip(), "%s: OK (step 60, 64-32-10)" % again)
        # -o may be a bare name in the working directory.
        r = mnlib.subprocess.run([MNISTCTL, "convert", self.ckpt, "-o", "bare.safetensors", "--select", "global_step"],
                                 cwd=self.work, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(read_safetensors(os.path.join(self.work, "bare.safetensors"))[0]), ["__metadata__", "global_step"])

    def test_convert_refusals(self):
        out = os.path.join(self.work, "out.safetensors")
        cases = [
            (["--select", "nothing*"], 1, "--select 'nothing*' matches no tensor in %s (it has: layer1/weights" % self.ckpt),
            (["--select", "layer1/*", "--rename", "layer1/biases=layer1/weights"], 1,
             'two tensors would be named "layer1/weights"'),
            (["--select", "layer1/*", "--rename", "layer2/biases=x"], 1, '"layer2/biases" is not among the selected tensors'),
            (["--rename", "v1=x"], 1, 'no tensor "v1" in'),
            (["--rename", "v1"], 2, "--rename wants OLD=NEW"),
            (["--rename", "layer1/biases=a", "--rename", "layer1/biases=b"], 2, "renamed twice"),
            (["--rename", "layer1/biases=__metadata__"], 2, "NEW must be a tensor name of at most 255 bytes"),
            (["--rename", "layer1/biases=" + "x" * 256], 2, "NEW must be a tensor name of at most 255 bytes"),
            # A name that is not UTF-8 ("\\xff" here) cannot be written into the JSON header.
            (["--rename", "layer1/biases=\udcff"], 2, "NEW must be a tensor name of at most 255 bytes"),
        ]
        for args, status, msg in cases:
            r = self.ctl("convert", self.ckpt, "-o", out, *args, expect=status)
            self.assertIn(msg, r.stderr, args)
            self.assertFalse(os.path.exists(out), args)
        r = self.ctl("convert", self.ckpt, expect=2)
        self.assertIn("-o OUT is required", r.stderr)
        # OUT naming IN (under any name) once replaced the checkpoint, training
        # state and all, with the selected part of it.
        with open(self.ckpt, "rb") as f:
            before = f.read()
        link = os.path.join(self.work, "hardlink.safetensors")
        os.link(self.ckpt, link)
        dot = os.path.join(os.path.dirname(self.ckpt), ".", os.path.basename(self.ckpt))
        for out in (self.ckpt, dot, link):
            r = self.ctl("convert", self.ckpt, "-o", out, "--select", "layer1/*", expect=1)
            self.assertIn("%s is the checkpoint being read (%s); not replacing it" % (out, self.ckpt),
                          r.stderr)
            self.assertEqual(r.stdout, "")
        with open(self.ckpt, "rb") as f:
            self.assertEqual(f.read(), before)
        os.unlink(link)
        # A file with no tensors gives an empty selection.
        empty = write_bytes(os.path.join(self.work, "empty.safetensors"), encode_safetensors([], {"a": "b"}))
        r = self.ctl("convert", empty, "-o", out, expect=1)
        self.assertIn("nothing selected", r.stderr)
        self.assertFalse(os.path.exists(out))

    def test_convert_does_not_launder_a_broken_checkpoint(self):
        # Only a selection that breaks the architecture drops it; a fault of the
        # input itself is refused, not turned into a file that verifies.
        tensors, meta = tensors_of(self.ckpt)
        broken = [(n, d, s, bytes(len(raw)) if n == "train/permutation" else raw) for n, d, s, raw in tensors]
        src = write_bytes(os.path.join(self.work, "broken.safetensors"), encode_safetensors(broken, meta))
        self.ctl("verify", src, expect=1)
        out = os.path.join(self.work, "out.safetensors")
        r = self.ctl("convert", src, "-o", out, expect=1)
        self.assertIn("the result would not be valid", r.stderr)
        self.assertIn("train/permutation is not a permutation", r.stderr)
        self.assertNotIn("left out", r.stderr)
        self.assertFalse(os.path.exists(out))
        # The intact part can still be taken out of it.
        r = self.ctl("convert", src, "-o", out, "--select", "layer*")
        self.assertEqual(self.ctl("verify", out).stdout.strip(), "%s: OK (step 60, 64-32-10, no training state)" % out)
        # A selection that is not the whole model says which tensor it lacks.
        r = self.ctl("convert", src, "-o", out, "--select", "layer1/*")
        self.assertIn('were left out of %s\'s metadata (tensor "layer2/weights" not found' % out, r.stderr)


class FreezePredictTest(ToolkitCase):
    def setUp(self):
        super().setUp()
        self.cfg_path, self.cfg, _ = self.train(eval={"metrics_file": os.path.join(self.work, "metrics.jsonl")})
        self.dir = self.cfg["checkpoint"]["dir"]
        self.ckpt = os.path.join(self.dir, ckpt_name(60))

    def test_freeze_layout_and_metadata(self):
        out = os.path.join(self.work, "frozen.safetensors")
        r = self.ctl("freeze", self.dir, "-o", out)
        self.assertIn("frozen 64-32-10 model from %s (step 60, EMA values)" % self.ckpt, r.stdout)
        header, data, _ = read_safetensors(out)
        meta = header.pop("__metadata__")
        self.assertEqual(sorted(header), sorted(LAYERS))
        for name in LAYERS:
            self.assertEqual(tensor_bytes(out, name), tensor_bytes(self.ckpt, name + "/ExponentialMovingAverage"))
        src = read_safetensors(self.ckpt)[0]["__metadata__"]
        self.assertEqual(meta["frozen"], "true")
        self.assertEqual(meta["ema"], "true")
        self.assertEqual(meta["source"], ckpt_name(60))
        self.assertEqual(meta["format"], "mnistd.checkpoint.v1")
        for key in ("global_step", "architecture", "config"):
            self.assertEqual(meta[key], src[key], key)
        self.assertRegex(meta["created"], r"^\d{4}-\d\d-\d\dT")
        self.assertEqual(meta["data_crc32"], "%08x" % zlib.crc32(data))
        self.assertEqual(self.ctl("verify", out).stdout.strip(), "%s: OK (step 60, 64-32-10, frozen)" % out)

        raw = os.path.join(self.work, "raw.safetensors")
        j = self.ctl_json("freeze", "--raw", self.ckpt, "-o", raw)
        self.assertEqual(j["ema"], False)
        self.assertEqual(j["step"], 60)
        for name in LAYERS:
            self.assertEqual(tensor_bytes(raw, name), tensor_bytes(self.ckpt, name))
        self.assertEqual(read_safetensors(raw)[0]["__metadata__"]["ema"], "false")

        # A bare output name lands in the working directory.
        r = mnlib.subprocess.run([MNISTCTL, "freeze", self.dir, "-o", "bare.safetensors"], cwd=self.work,
                                 capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.exists(os.path.join(self.work, "bare.safetensors")))

    def test_freeze_errors(self):
        out = os.path.join(self.work, "x.safetensors")
        r = self.ctl("freeze", os.path.join(self.work, "nope"), "-o", out, expect=1)
        self.assertIn("nope", r.stderr)
        os.makedirs(os.path.join(self.work, "empty"))
        r = self.ctl("freeze", os.path.join(self.work, "empty"), "-o", out, expect=1)
        self.assertIn("no checkpoint", r.stderr)
        bad = os.path.join(self.work, "bad.safetensors")
        with open(self.ckpt, "rb") as f:
            write_bytes(bad, f.read()[:-8])
        r = self.ctl("freeze", bad, "-o", out, expect=1)
        self.assertIn("bad.safetensors", r.stderr)
        self.assertFalse(os.path.exists(out))
        r = self.ctl("freeze", self.ckpt, expect=2)
        self.assertIn("-o OUT is required", r.stderr)

    @unittest.skipUnless(os.path.exists(MNIST_EVAL), "mnist-eval is not built")
    def test_freeze_then_predict_equals_the_evaluator(self):
        r = self.run_prog([MNIST_EVAL, "--config", self.cfg_path, "--once"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(os.path.join(self.work, "metrics.jsonl")) as f:
            m = json.loads(f.readline())
        self.assertEqual(m["checkpoint"], ckpt_name(60))
        self.assertEqual(m["images"] if "images" in m else VALIDATION, VALIDATION)

        frozen = os.path.join(self.work, "frozen.safetensors")
        self.ctl("freeze", self.dir, "-o", frozen)
        images, labels, truth = self.validation_idx()
        for model in (frozen, self.ckpt, self.dir):
            j = self.ctl_json("predict", model, "--images", images, "--labels", labels, config=self.cfg_path)
            self.assertEqual(j["accuracy"], m["accuracy"], model)
            self.assertEqual(j["loss"], m["loss"], model)
            self.assertEqual(j["images"], VALIDATION)
            self.assertEqual(j["correct"], round(m["accuracy"] * VALIDATION))
            conf = j["confusion"]
            self.assertEqual(len(conf), 10)
            self.assertEqual([sum(row) for row in conf], [truth.count(c) for c in range(10)])
            self.assertEqual(sum(conf[c][c] for c in range(10)), j["correct"])

        # Text output: accuracy with 4 digits as the evaluator logs it, the matrix.
        r = self.ctl("predict", frozen, "--images", images, "--labels", labels, config=self.cfg_path)
        self.assertIn("accuracy  %.4f (%d/%d)" % (m["accuracy"], j["correct"], VALIDATION), r.stdout)
        self.assertIn("rows: true class, columns: predicted class", r.stdout)

        # Without labels: one class per line, the same predictions as the JSON form.
        r = self.ctl("predict", frozen, "--images", images, config=self.cfg_path)
        preds = [int(l) for l in r.stdout.split()]
        self.assertEqual(len(preds), VALIDATION)
        self.assertEqual(sum(p == t for p, t in zip(preds, truth)), j["correct"])
        self.assertEqual(self.ctl_json("predict", frozen, "--images", images, config=self.cfg_path)["predictions"], preds)

        # Raw values: the checkpoint with --raw and the --raw freeze agree with each other.
        raw = os.path.join(self.work, "raw.safetensors")
        self.ctl("freeze", "--raw", self.ckpt, "-o", raw)
        a = self.ctl_json("predict", "--raw", self.ckpt, "--images", images, "--labels", labels, config=self.cfg_path)
        b = self.ctl_json("predict", raw, "--images", images, "--labels", labels, config=self.cfg_path)
        self.assertFalse(a["ema"])
        self.assertFalse(b["ema"])
        self.assertEqual((a["accuracy"], a["loss"]), (b["accuracy"], b["loss"]))
        self.assertNotEqual(a["loss"], m["loss"])

    def test_predict_errors(self):
        images, labels, _ = self.validation_idx()
        big = os.path.join(self.work, "big-images")
        mnlib.write_idx(big, 2051, (2, 28, 28), bytes(2 * 784), gz=False)
        r = self.ctl("predict", self.ckpt, "--images", big, expect=1)
        self.assertIn("takes 64 inputs (64-32-10) but the images of %s have 28 x 28 = 784 pixels" % big, r.stderr)
        wrong = os.path.join(self.work, "wrong-labels")
        mnlib.write_idx(wrong, 2049, (VALIDATION,), bytes([12]) * VALIDATION, gz=False)
        r = self.ctl("predict", self.ckpt, "--images", images, "--labels", wrong, expect=1)
        self.assertIn("has label 12 but", r.stderr)
        self.assertIn("has only 10 classes", r.stderr)
        few = os.path.join(self.work, "few-labels")
        mnlib.write_idx(few, 2049, (3,), bytes(3), gz=False)
        r = self.ctl("predict", self.ckpt, "--images", images, "--labels", few, expect=1)
        self.assertIn("200 images", r.stderr)
        r = self.ctl("predict", self.ckpt, "--images", os.path.join(self.work, "nope"), expect=1)
        self.assertIn("nope", r.stderr)
        r = self.ctl("predict", os.path.join(self.work, "nope.safetensors"), "--images", images, expect=1)
        self.assertIn("nope.safetensors", r.stderr)
        r = self.ctl("predict", self.ckpt, expect=2)
        self.assertIn("--images IDX is required", r.stderr)
        # A file that is no model: a convert without architecture.
        part = os.path.join(self.work, "part.safetensors")
        self.ctl("convert", self.ckpt, "-o", part, "--select", "layer1/*")
        r = self.ctl("predict", part, "--images", images, expect=1)
        self.assertIn('no "architecture"', r.stderr)


def layer_tensors(sizes, seed=3, suffix=""):
    """F32 layer<i>/weights and biases for a network of the given sizes."""
    rng = random.Random(seed)
    out = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:]), 1):
        out.append(("layer%d/weights%s" % (i, suffix), "F32", [a, b],
                    struct.pack("<%df" % (a * b), *[rng.uniform(-0.5, 0.5) for _ in range(a * b)])))
        out.append(("layer%d/biases%s" % (i, suffix), "F32", [b], struct.pack("<%df" % b, *[0.0] * b)))
    return out


def frozen_meta(sizes, step="5"):
    arch = {"input": sizes[0], "hidden": sizes[1:-1], "output": sizes[-1], "activation": "relu"}
    return {"format": "mnistd.checkpoint.v1", "global_step": step, "frozen": "true",
            "architecture": json.dumps(arch, separators=(",", ":"))}


class HostileInputTest(ToolkitCase):
    """Files and command lines a user or an attacker may hand the offline
    tools: each must give a clean message and the documented exit status,
    never a hang, a crash or output that is not what it claims to be."""

    def model(self, name="model.safetensors", sizes=(64, 32, 10), step="5", extra=()):
        blob = encode_safetensors(layer_tensors(list(sizes)) + list(extra), frozen_meta(list(sizes), step))
        return write_bytes(os.path.join(self.work, name), blob)

    def test_inspect_statistics_with_nan_inf_and_extreme_values(self):
        nan, inf = float("nan"), float("inf")
        tensors = [
            # A NaN anywhere makes every statistic NaN, wherever it sits.
            ("nan_first", "F32", [3], struct.pack("<3f", nan, 1, 2)),
            ("nan_middle", "F32", [3], struct.pack("<3f", 1, nan, 2)),
            ("nan_f16", "F16", [2], struct.pack("<2H", 0x3C00, 0x7E00)),
            ("infs", "F32", [2], struct.pack("<2f", inf, -inf)),
            # Neither the sums overflow nor the squares underflow for F64 extremes.
            ("huge", "F64", [2], struct.pack("<2d", 1e200, 1e200)),
            ("tiny", "F64", [], struct.pack("<d", 5e-270)),
        ]
        path = write_bytes(os.path.join(self.work, "stats.safetensors"), encode_safetensors(tensors, {}))
        r = self.ctl("inspect", path)
        self.assertNotIn("-nan", r.stdout)
        for name in ("nan_first", "nan_middle", "nan_f16"):
            self.assertRegex(r.stdout, r"(?m)^%s\s+F(32|16)\s+\[\d\]\s+nan\s+nan\s+nan\s+nan$" % name)
        self.assertRegex(r.stdout, r"(?m)^infs\s+F32\s+\[2\]\s+-inf\s+inf\s+nan\s+inf$")
        byname = {t["name"]: t for t in self.ctl_json("inspect", path)["tensors"]}
        for name in ("nan_first", "nan_middle", "nan_f16"):
            self.assertEqual([byname[name][k] for k in ("min", "max", "mean", "norm")], [None] * 4, name)
        self.assertEqual(byname["huge"]["mean"], 1e200)
        self.assertAlmostEqual(byname["huge"]["norm"] / (2 ** 0.5 * 1e200), 1.0, places=12)
        self.assertAlmostEqual(byname["tiny"]["norm"] / 5e-270, 1.0, places=12)

    def test_inspect_every_dtype_scalar_empty_and_matrix(self):
        sizes = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
                 "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
        tensors = []
        for d, n in sizes.items():
            tensors += [("empty_" + d, d, [0], b""), ("hollow_" + d, d, [3, 0], b""),
                        ("scalar_" + d, d, [], bytes([1] * n)), ("matrix_" + d, d, [2, 3], bytes([1] * 6 * n))]
        path = write_bytes(os.path.join(self.work, "dtypes.safetensors"), encode_safetensors(tensors, {}))
        r = self.ctl("inspect", "--all", path)
        for d in sizes:
            self.assertIn("empty_%s  %s [0]\n  (no elements)\n" % (d, d), r.stdout)
            self.assertIn("hollow_%s  %s [3, 0]\n  (no elements)\n" % (d, d), r.stdout)
            self.assertRegex(r.stdout, r"(?m)^scalar_%s  %s \[\]\n  \S+\n" % (d, d))
            self.assertRegex(r.stdout, r"(?m)^matrix_%s  %s \[2, 3\]\n  \S+ \S+ \S+\n  \S+ \S+ \S+\n" % (d, d))
        j = self.ctl_json("inspect", "--all", path)
        byname = {t["name"]: t for t in j["tensors"]}
        for d in sizes:
            self.assertEqual(byname["empty_" + d]["values"], [])
            self.assertEqual(len(byname["scalar_" + d]["values"]), 1)
            self.assertEqual(len(byname["matrix_" + d]["values"]), 6)
        self.assertEqual(byname["scalar_U64"]["values"], [0x0101010101010101])
        self.assertEqual(byname["scalar_BOOL"]["values"], [True])

    def test_architecture_that_disagrees_with_the_tensors(self):
        # A 64-32-16-10 network whose metadata says 64-32-16: the first two layers
        # match that claim exactly, the third is left over. It is no 64-32-16 model.
        path = self.model("extra.safetensors", sizes=(64, 32, 16, 10))
        tensors, meta = tensors_of(path)
        meta["architecture"] = '{"input":64,"hidden":[32],"output":16,"activation":"relu"}'
        write_bytes(path, encode_safetensors(tensors, meta))
        r = self.ctl("verify", path, expect=1)
        self.assertIn('tensor "layer3/weights" is not part of the architecture 64-32-16 (2 layers)', r.stdout)
        images, _, _ = self.validation_idx()
        r = self.ctl("predict", path, "--images", images, expect=1)
        self.assertIn("is not part of the architecture", r.stderr)
        # A frozen model missing a tensor names it.
        short = [t for t in layer_tensors([64, 32, 10]) if t[0] != "layer2/biases"]
        bad = write_bytes(os.path.join(self.work, "short.safetensors"), encode_safetensors(short, frozen_meta([64, 32, 10])))
        r = self.ctl("predict", bad, "--images", images, expect=1)
        self.assertIn('tensor "layer2/biases" not found in %s' % bad, r.stderr)
        # An architecture far larger than the file: rejected by name, not by allocating it.
        meta = frozen_meta([64, 32, 10])
        meta["architecture"] = '{"input":1048576,"hidden":[255],"output":10,"activation":"relu"}'
        huge = write_bytes(os.path.join(self.work, "huge.safetensors"), encode_safetensors(layer_tensors([64, 32, 10]), meta))
        r = self.ctl("verify", huge, expect=1)
        self.assertIn('tensor "layer1/weights" has shape [64, 32], expected [1048576, 255]', r.stdout)
        # A malformed architecture is named once, after the file.
        meta["architecture"] = '{"input":64}'
        write_bytes(huge, encode_safetensors(layer_tensors([64, 32, 10]), meta))
        r = self.ctl("verify", huge, expect=1)
        self.assertIn("%s: architecture: " % huge, r.stdout)
        self.assertNotIn("architecture: architecture", r.stdout)

    def test_predict_json_survives_any_global_step_text(self):
        # predict runs any safetensors file, so global_step is untrusted text: it must
        # not be pasted into the JSON output.
        path = self.model(step='1, "evil": [1')
        images, labels, _ = self.validation_idx()
        for extra in ([], ["--labels", labels]):
            j = self.ctl_json("predict", path, "--images", images, *extra)
            self.assertIsNone(j["step"])
            self.assertNotIn("evil", j)
        r = self.ctl("predict", path, "--images", images, "--labels", labels)
        self.assertIn("(64-32-10, step ?, frozen raw values)", r.stdout)
        j = self.ctl_json("predict", self.model("good.safetensors", step="42"), "--images", images)
        self.assertEqual(j["step"], 42)

    def test_ls_special_files(self):
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        good = self.model(os.path.join("ckpt", ckpt_name(5)))
        os.mkfifo(os.path.join(d, ckpt_name(6)))                       # would block a reader
        os.symlink("nowhere", os.path.join(d, ckpt_name(7)))           # dangling
        os.mkdir(os.path.join(d, "sub"))
        os.symlink("sub", os.path.join(d, ckpt_name(8)))               # a directory
        os.symlink(ckpt_name(5), os.path.join(d, ckpt_name(9)))        # a valid file, wrong step
        write_bytes(os.path.join(d, "." + ckpt_name(10) + ".tmp"), b"x")  # a writer's temporary
        write_bytes(os.path.join(d, "model.ckpt-011.safetensors"), b"x")  # not a checkpoint name
        write_bytes(os.path.join(d, "notes.txt"), b"x")
        # By default the links are not followed at all (checkpoint.follow_symlinks).
        r = self.run_prog([MNISTCTL, "--json", "ls", d], timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = {c["step"]: c for c in json.loads(r.stdout)["checkpoints"]}
        for step in (7, 8, 9):
            self.assertIn("a symbolic link, not followed", rows[step]["error"])
            # mnistctl(1): "null for a value that is not there" (it was -1).
            self.assertIsNone(rows[step]["size"])
        # The table shows such a size as "-", as it does an unknown time.
        table = self.ctl("ls", d).stdout
        for step in (7, 8, 9):
            self.assertRegex(table, r"(?m)^%s +%d +- +- +INVALID " % (re.escape(ckpt_name(step)), step))
        follow = os.path.join(self.work, "follow.json")
        with open(follow, "w") as f:
            json.dump({"checkpoint": {"follow_symlinks": True}}, f)
        r = self.run_prog([MNISTCTL, "--config", follow, "--json", "ls", d], timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotRegex(r.stderr, SANITIZER_REPORT)
        rows = {c["step"]: c for c in json.loads(r.stdout)["checkpoints"]}
        self.assertEqual(sorted(rows), [5, 6, 7, 8, 9])
        self.assertTrue(rows[5]["valid"], rows[5])
        self.assertIn("not a regular file", rows[6]["error"])
        self.assertIn("No such file or directory", rows[7]["error"])
        self.assertIn("not a regular file", rows[8]["error"])
        self.assertIn("the file name says step 9 but global_step is 5", rows[9]["error"])
        self.assertEqual(os.path.getsize(good), rows[5]["size"])
        # Nor does a metrics "file" that is a FIFO or a directory.
        for metrics in (os.path.join(d, ckpt_name(6)), d):
            r = self.run_prog([MNISTCTL, "ls", "--metrics", metrics, d], timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stderr, re.escape(metrics) + r": not a regular file \(a (FIFO|directory)\) \(accuracy not shown\)")
            self.assertNotRegex(r.stderr, SANITIZER_REPORT)
        # Asked for a directory's latest checkpoint, freeze and predict refuse a FIFO
        # instead of waiting for a writer forever.
        os.unlink(os.path.join(d, ckpt_name(7)))
        os.unlink(os.path.join(d, ckpt_name(8)))
        os.unlink(os.path.join(d, ckpt_name(9)))
        r = self.run_prog([MNISTCTL, "freeze", d, "-o", os.path.join(self.work, "f.safetensors")], timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("%s: not a regular file" % os.path.join(d, ckpt_name(6)), r.stderr)
        self.assertNotRegex(r.stderr, SANITIZER_REPORT)

    def test_messages_start_with_the_command_and_name_the_file(self):
        # mnistctl(1): "Messages go to standard error, each starting with
        # 'mnistctl COMMAND:'", whatever the input is that they refuse.
        images, _, _ = self.validation_idx()
        fifo = os.path.join(self.work, "fifo")
        os.mkfifo(fifo)
        missing = os.path.join(self.work, "missing.safetensors")
        with open(self.model(), "rb") as f:
            trunc = write_bytes(os.path.join(self.work, "trunc.safetensors"), f.read()[:-4])
        out = os.path.join(self.work, "out")
        for bad in (missing, fifo, trunc):
            for cmd, args in (("inspect", [bad]), ("convert", [bad, "-o", out]), ("freeze", [bad, "-o", out]),
                              ("export", [bad, "-o", out + ".onnx"]), ("predict", [bad, "--images", images])):
                r = self.run_prog([MNISTCTL, cmd] + args, timeout=30)
                self.assertEqual(r.returncode, 1, (cmd, bad, r.stderr))
                self.assertTrue(r.stderr.startswith("mnistctl %s: %s: " % (cmd, bad)), (cmd, r.stderr))
                self.assertNotRegex(r.stderr, SANITIZER_REPORT)
                self.assertFalse(os.path.exists(out) or os.path.exists(out + ".onnx"))

    def test_strings_of_a_valid_file_are_escaped(self):
        # A file may be valid and still carry terminal controls in what it says:
        # its "created" text (ls's CREATED column) and its tensor names (quoted by
        # convert's note about a dropped architecture) reach the terminal escaped.
        esc = "\x1b]0;owned\x07\x1b[2J"
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        sizes = [64, 32, 10]
        meta = dict(frozen_meta(sizes), created=esc)
        evil = ("evil" + esc, "F32", [1], b"\0\0\0\0")
        write_bytes(os.path.join(d, ckpt_name(5)), encode_safetensors(layer_tensors(sizes), meta))
        src = write_bytes(os.path.join(self.work, "src.safetensors"),
                          encode_safetensors(layer_tensors(sizes) + [evil], frozen_meta(sizes)))
        out = os.path.join(self.work, "out.safetensors")
        for args in (["ls", d], ["convert", src, "-o", out, "--select", "layer1/*", "--select", "evil*"]):
            r = mnlib.subprocess.run([MNISTCTL] + args, capture_output=True, timeout=30 * mnlib.SLOW)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn(b"\x1b", r.stdout + r.stderr, args)
            self.assertIn(b"\\x1b]0;owned\\x07", r.stdout + r.stderr, args)
        self.assertIn(b"note: the selected tensors do not form", r.stderr)

    def test_inspect_shows_metadata_keys_whole(self):
        # Two keys that share their first 63 bytes are two lines, each with its own key.
        keys = ["k" * 70 + "_one", "k" * 70 + "_two", "\x1b" + "e" * 30]
        path = write_bytes(os.path.join(self.work, "keys.safetensors"),
                           encode_safetensors([("t", "U8", [1], b"\1")], {k: "v" for k in keys}))
        out = self.ctl("inspect", path).stdout
        for key in ("k" * 70 + "_one", "k" * 70 + "_two", "\\x1b" + "e" * 30):
            self.assertRegex(out, r"(?m)^%s v$" % re.escape(key))
        self.assertNotIn("\x1b", out)

    def test_a_prefix_that_names_no_checkpoint_is_a_usage_error(self):
        # --prefix follows checkpoint.prefix's rule (a plain file name): one that no
        # checkpoint file can have is a mistake to report, not "no checkpoints".
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        self.model(os.path.join("ckpt", ckpt_name(5)), step="5")
        images, _, _ = self.validation_idx()
        out = os.path.join(self.work, "out")
        for prefix in ("", "sub/model.ckpt", ".model.ckpt", "p" * 300):
            for cmd, args in (("ls", [d]), ("freeze", [d, "-o", out]), ("export", [d, "-o", out]),
                              ("predict", [d, "--images", images])):
                r = self.ctl(cmd, "--prefix", prefix, *args, expect=2)
                self.assertIn("mnistctl %s: --prefix" % cmd, r.stderr)
                self.assertFalse(os.path.exists(out))
        self.assertEqual(self.ctl_json("ls", "--prefix", "model.ckpt", d)["checkpoints"][0]["step"], 5)

    def test_convert_of_a_file_with_very_many_tensors_finishes(self):
        # A 100 MiB header holds a couple of million tensors. Checking the new
        # names pairwise took minutes for 200,000 and would take hours for those;
        # every check must stay near linear.
        n = 300000
        header = {"t%d" % i: {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * ((8 - (8 + len(blob)) % 8) % 8)
        src = write_bytes(os.path.join(self.work, "many.safetensors"), struct.pack("<Q", len(blob)) + blob)
        out = os.path.join(self.work, "out.safetensors")
        r = self.run_prog([MNISTCTL, "convert", src, "-o", out, "--rename", "t7=x"], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        header, _, _ = read_safetensors(out)
        self.assertEqual(len(header), n + 1)  # and __metadata__ with the checksum
        self.assertIn("x", header)
        self.assertNotIn("t7", header)
        r = self.run_prog([MNISTCTL, "convert", src, "-o", out, "--rename", "t7=t8"], timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn('two tensors would be named "t8": "t7" and "t8"', r.stderr)

    def test_ls_does_not_open_a_device_node(self):
        # Opening a device can act (a tape rewinds, a watchdog arms), so ls looks
        # before it opens, as every other reader does (util.h's mn_open_regular). A
        # major number without a driver shows whether it did: open() fails ENXIO.
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        self.model(os.path.join("ckpt", ckpt_name(5)), step="5")
        devices = {6: stat.S_IFCHR, 7: stat.S_IFBLK}
        try:
            for step, kind in devices.items():
                os.mknod(os.path.join(d, ckpt_name(step)), kind | 0o600, os.makedev(240, 0))
        except PermissionError:
            self.skipTest("mknod needs CAP_MKNOD")
        for config in (None, self.config("follow.json", checkpoint={"follow_symlinks": True})[0]):
            rows = {c["step"]: c for c in self.ctl_json("ls", d, config=config)["checkpoints"]}
            self.assertTrue(rows[5]["valid"], rows[5])
            for step in devices:
                self.assertEqual(rows[step]["error"], "%s: not a regular file" % os.path.join(d, ckpt_name(step)))
                self.assertIsNotNone(rows[step]["created"])

    def test_ls_lists_an_unreadable_file_as_invalid(self):
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        self.model(os.path.join("ckpt", ckpt_name(5)), step="5")
        locked = self.model(os.path.join("ckpt", ckpt_name(6)), step="6")
        os.chmod(locked, 0)
        argv = [MNISTCTL, "--json", "ls", d]
        if os.geteuid() == 0:
            # Root reads anything: list as nobody, who can enter but not read.
            if not shutil.which("setpriv"):
                self.skipTest("running as root without setpriv")
            os.chmod(self.work, 0o755)
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv
        r = self.run_prog(argv)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotRegex(r.stderr, SANITIZER_REPORT)
        rows = json.loads(r.stdout)["checkpoints"]
        self.assertEqual([(c["step"], c["valid"]) for c in rows], [(5, True), (6, False)])
        self.assertIn("cannot open: Permission denied", rows[1]["error"])
        self.assertEqual(rows[1]["size"], os.path.getsize(locked))
        self.assertIsNotNone(rows[1]["created"])

    def test_stale_index_falls_back_to_the_highest_step(self):
        # checkpoint.json may name a file retention (or a hand) removed since.
        d = os.path.join(self.work, "ckpt")
        os.makedirs(d)
        self.model(os.path.join("ckpt", ckpt_name(5)), step="5")
        with open(os.path.join(d, "checkpoint.json"), "w") as f:
            json.dump({"latest": ckpt_name(9), "all": [ckpt_name(5), ckpt_name(9)]}, f)
        out = os.path.join(self.work, "f.safetensors")
        j = self.ctl_json("freeze", d, "-o", out)
        self.assertEqual((j["source"], j["step"]), (os.path.join(d, ckpt_name(5)), 5))
        images, _, _ = self.validation_idx()
        self.assertEqual(self.ctl_json("predict", d, "--images", images)["model"], os.path.join(d, ckpt_name(5)))

    def test_output_paths(self):
        src = self.model("in.safetensors")
        with open(src, "rb") as f:
            before = f.read()
        # A conversion onto its own input is refused (2993286) and leaves the input untouched.
        for args in (["--rename", "nope=x"], ["--select", "layer2/*"]):
            r = self.ctl("convert", src, "-o", src, *args, expect=1)
            self.assertIn("%s is the checkpoint being read" % src, r.stderr)
            with open(src, "rb") as f:
                self.assertEqual(f.read(), before)
        self.ctl("freeze", src, "-o", src)
        self.assertEqual(self.ctl("verify", src).stdout.strip(), "%s: OK (step 5, 64-32-10, frozen)" % src)
        # A missing or non-directory output directory is named as such; nothing is created.
        for cmd in ("convert", "freeze"):
            missing = os.path.join(self.work, "no", "such", "out.safetensors")
            r = self.ctl(cmd, src, "-o", missing, expect=1)
            self.assertIn("cannot write into %s: No such file or directory" % os.path.join(self.work, "no", "such"),
                          r.stderr)
            r = self.ctl(cmd, src, "-o", os.path.join(src, "out.safetensors"), expect=1)
            self.assertIn("cannot write into %s: not a directory" % src, r.stderr)
            self.assertFalse(os.path.exists(os.path.join(self.work, "no")))
        self.assertEqual(sorted(f for f in os.listdir(self.work) if f.startswith(".")), [])

    def test_a_link_planted_under_the_temporary_name_is_not_written_through(self):
        # The atomic writer's temporary is ".OUT.tmp" in OUT's directory; whoever
        # can write there must not make convert or freeze overwrite another file.
        src = self.model()
        d = os.path.join(self.work, "shared")
        os.makedirs(d)
        victim = write_bytes(os.path.join(self.work, "victim"), b"precious")
        for cmd, args in (("convert", ["--select", "layer1/*"]), ("freeze", [])):
            out = os.path.join(d, cmd + ".safetensors")
            os.symlink(victim, os.path.join(d, "." + cmd + ".safetensors.tmp"))
            self.ctl(cmd, src, "-o", out, *args)
            self.assertFalse(os.path.islink(out))
            self.ctl("verify", out)
        out = os.path.join(d, "hard.safetensors")
        os.link(victim, os.path.join(d, ".hard.safetensors.tmp"))
        self.ctl("freeze", src, "-o", out)
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        # Temporaries are unique to their writer (issue #15): the planted names are
        # neither written through nor taken over, and no temporary is left behind.
        self.assertEqual(sorted(os.listdir(d)), [".convert.safetensors.tmp", ".freeze.safetensors.tmp",
                                                 ".hard.safetensors.tmp", "convert.safetensors",
                                                 "freeze.safetensors", "hard.safetensors"])

    def test_a_best_dir_whose_best_file_vanished_falls_back(self):
        # The evaluator replacing its best removes the file best.json named first;
        # like a file checkpoint.json names, it is skipped: the next entry, then a scan.
        d = os.path.join(self.work, "best")
        os.makedirs(d)
        for step in (5, 9):
            self.model(os.path.join("best", ckpt_name(step)), step=str(step))

        def entry(step, acc):
            return {"step": step, "accuracy": acc, "loss": 0.3, "file": ckpt_name(step),
                    "time": "2026-11-29T20:00:00.000Z"}

        images, _, _ = self.validation_idx()
        out = os.path.join(self.work, "f.safetensors")
        for entries, want in (([entry(7, 0.9), entry(5, 0.8), entry(9, 0.7)], 5),
                              ([entry(7, 0.9), entry(8, 0.8)], 9)):
            with open(os.path.join(d, "best.json"), "w") as f:
                json.dump({"best": entries}, f)
            path = os.path.join(d, ckpt_name(want))
            self.assertEqual(self.ctl_json("freeze", d, "-o", out)["source"], path)
            self.assertEqual(self.ctl_json("predict", d, "--images", images)["model"], path)
            self.assertEqual(self.ctl_json("inspect", d)["file"], path)
        # Nothing listed exists and nothing to scan: the scan's message.
        for step in (5, 9):
            os.unlink(os.path.join(d, ckpt_name(step)))
        r = self.ctl("freeze", d, "-o", out, expect=1)
        self.assertIn("no checkpoint", r.stderr)

    def test_a_replaced_output_keeps_its_permission_bits(self):
        # A private model replaced by a new one stays private, whatever the umask allows.
        src = self.model()
        for cmd, args in (("convert", ["--select", "layer1/*"]), ("freeze", []), ("export", ["--force"])):
            out = write_bytes(os.path.join(self.work, "private-" + cmd), b"old")
            os.chmod(out, 0o600)
            self.ctl(cmd, src, "-o", out, *args)
            self.assertEqual(stat.S_IMODE(os.stat(out).st_mode), 0o600, cmd)
            self.assertNotEqual(os.path.getsize(out), 3, cmd)
            os.chmod(out, 0o664)
            self.ctl(cmd, src, "-o", out, *args)
            self.assertEqual(stat.S_IMODE(os.stat(out).st_mode), 0o664, cmd)

    def big_model(self, sizes=(4096, 4096, 10)):
        """A frozen model large enough that writing it takes a while (zero weights)."""
        tensors = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:]), 1):
            tensors.append(("layer%d/weights" % i, "F32", [a, b], bytes(4 * a * b)))
            tensors.append(("layer%d/biases" % i, "F32", [b], bytes(4 * b)))
        return write_bytes(os.path.join(self.work, "big.safetensors"),
                           encode_safetensors(tensors, frozen_meta(list(sizes))))

    def temps(self, out):
        d, base = os.path.split(out)
        pattern = re.compile(r"^\.%s\.\d+-\d+\.tmp$" % re.escape(base))
        return [f for f in os.listdir(d) if pattern.match(f)]

    def start_held(self, argv, out, gate):
        """Starts argv held in its first fsync by gate (mnlib.gate(self, "fsync")): its
        temporary file for out is written and not yet renamed. Returns the process.
        (Polling for the temporary instead, and trying again when the command
        finished first, depended on the poll getting the CPU in time.)"""
        env, gate_path, held = gate
        open(gate_path, "w").close()
        p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ, **env),
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        mnlib.wait_for(lambda: os.path.exists(held) or p.poll() is not None, 120,
                       "%s held in its fsync" % argv[1])
        if p.poll() is not None:
            self.fail("%s ended before its fsync: %s" % (argv, p.stderr.read()))
        self.assertEqual(len(self.temps(out)), 1, argv)
        os.unlink(held)
        return p

    def test_an_interrupted_output_leaves_no_temporary_file(self):
        src = self.big_model((64, 32, 10))
        gate = mnlib.gate(self, "fsync")
        for cmd in ("convert", "freeze", "export"):
            for sig in (signal.SIGINT, signal.SIGTERM):
                out = os.path.join(self.work, "%s-%d.out" % (cmd, sig))
                p = self.start_held([MNISTCTL, cmd, src, "-o", out], out, gate)
                p.send_signal(sig)
                os.unlink(gate[1])
                _, err = p.communicate(timeout=60 * mnlib.SLOW)
                # Killed by the signal itself (the status says so), its temporary removed.
                self.assertEqual(p.returncode, -sig, (cmd, err))
                self.assertEqual(self.temps(out), [], (cmd, sig))
                self.assertFalse(os.path.exists(out), (cmd, sig))
                self.assertNotRegex(err, SANITIZER_REPORT)

    def test_export_without_force_never_replaces_an_output_created_meanwhile(self):
        # export looks for OUT before its work; one created by then is refused at the rename.
        src = self.big_model((64, 32, 10))
        out = os.path.join(self.work, "m.onnx")
        gate = mnlib.gate(self, "fsync")
        p = self.start_held([MNISTCTL, "export", src, "-o", out], out, gate)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"precious")
        os.close(fd)
        os.unlink(gate[1])
        _, err = p.communicate(timeout=60 * mnlib.SLOW)
        self.assertEqual(p.returncode, 1, err)
        self.assertIn("%s exists (--force replaces it)" % out, err)
        self.assertNotRegex(err, SANITIZER_REPORT)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        self.assertEqual(self.temps(out), [])

    def test_output_that_cannot_be_written_fails(self):
        # Output lost to a full disk is a failure, not a silent success.
        src = self.model()
        for args in (["inspect", "--all", src], ["--json", "verify", src], ["--help"], ["ls", "--help"]):
            with open("/dev/full", "w") as full:
                r = mnlib.subprocess.run([MNISTCTL] + args, stdout=full, stderr=mnlib.subprocess.PIPE, text=True)
            self.assertEqual(r.returncode, 1, args)
            self.assertIn("cannot write the output: No space left on device", r.stderr)
            self.assertNotRegex(r.stderr, SANITIZER_REPORT)

    def test_option_errors_name_the_option(self):
        cases = [
            (["ls", "-xj", "d"], "unknown option -x"),
            (["ls", "--json", "-xj", "d"], "unknown option -x"),
            (["ls", "--json=1", "d"], "option --json takes no value"),
            (["ls", "--bogus=3", "d"], "unknown option --bogus\n"),
            (["ls", "-jp"], "option -p needs a value"),
            (["ls", "--pre"], "option --prefix needs a value"),
            (["freeze", "--raw=1", "x", "-o", "y"], "option --raw takes no value"),
            (["predict", "x", "--threads"], "option --threads needs a value"),
            (["status", "-xj"], "unknown option -x"),
            (["status", "--json=1"], "option --json takes no value"),
        ]
        for args, msg in cases:
            r = self.ctl(*args, expect=2)
            self.assertIn(msg, r.stderr, args)


class WarmStartTest(ToolkitCase):
    def source(self):
        """Model A: 64-32-10 trained for 40 steps in its own directory."""
        _, cfg, _ = self.train("a", train={"max_steps": 40},
                               checkpoint={"dir": os.path.join(self.work, "a")})
        return os.path.join(cfg["checkpoint"]["dir"], ckpt_name(40))

    def test_mapped_tensors_load_exactly(self):
        a = self.source()
        # B: same layer1 shape, another hidden layer after it. A learning rate
        # far below float resolution makes step 1 leave the weights bit-identical,
        # so the published checkpoint shows exactly what the warm start loaded.
        common = dict(model={"hidden": [32, 16], "seed": 11}, train={"max_steps": 1, "learning_rate": 1e-30})
        init = {"file": a, "map": {"layer1/weights": "layer1/weights/ExponentialMovingAverage",
                                   "layer1/biases": "layer1/biases"}}
        _, cfg_b, p = self.train("b", checkpoint={"dir": os.path.join(self.work, "b"), "init_from": init}, **common)
        self.assertIn("warm start", p.output())
        _, cfg_f, _ = self.train("fresh", checkpoint={"dir": os.path.join(self.work, "fresh")}, **common)
        b = os.path.join(cfg_b["checkpoint"]["dir"], ckpt_name(1))
        fresh = os.path.join(cfg_f["checkpoint"]["dir"], ckpt_name(1))

        self.assertEqual(tensor_bytes(b, "layer1/weights"), tensor_bytes(a, "layer1/weights/ExponentialMovingAverage"))
        self.assertEqual(tensor_bytes(b, "layer1/biases"), tensor_bytes(a, "layer1/biases"))
        self.assertNotEqual(tensor_bytes(fresh, "layer1/weights"), tensor_bytes(b, "layer1/weights"))
        # Everything unmapped is the fresh initialisation: the same weights, and
        # biases that were zero (the tiny step moved them by ~1e-31 at most).
        for name in ("layer2/weights", "layer3/weights"):
            self.assertEqual(tensor_bytes(b, name), tensor_bytes(fresh, name), name)
        for name in ("layer2/biases", "layer3/biases"):
            self.assertTrue(all(abs(v) < 1e-20 for v in tensor_floats(b, name)), name)
        # The shadows started from the loaded values: one EMA step later they are
        # within rounding of them (and far from the fresh shadow).
        loaded = tensor_floats(a, "layer1/weights/ExponentialMovingAverage")
        shadow = tensor_floats(b, "layer1/weights/ExponentialMovingAverage")
        self.assertTrue(all(abs(x - y) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(loaded, shadow)))
        self.assertEqual(self.ctl("verify", b).stdout.strip(), "%s: OK (step 1, 64-32-16-10)" % b)

    def test_sources_without_step_and_frozen(self):
        a = self.source()
        part = os.path.join(self.work, "layer1.safetensors")
        self.ctl("convert", a, "-o", part, "--select", "layer1/*", "--rename", "layer1/weights=hidden1/weights")
        frozen = os.path.join(self.work, "frozen.safetensors")
        self.ctl("freeze", a, "-o", frozen)
        # Without a map, every layer variable loads under its own name.
        for name, init, want, count in (
                ("from-convert", {"file": part, "map": {"layer1/weights": "hidden1/weights"}},
                 tensor_bytes(a, "layer1/weights"), 1),
                ("from-frozen", {"file": frozen}, tensor_bytes(a, "layer1/weights/ExponentialMovingAverage"), 4)):
            _, cfg, p = self.train(name, checkpoint={"dir": os.path.join(self.work, name), "init_from": init},
                                   train={"max_steps": 1, "learning_rate": 1e-30})
            self.assertRegex(p.output(), r"warm start file=\S+ tensors=%d" % count)
            self.assertEqual(tensor_bytes(os.path.join(cfg["checkpoint"]["dir"], ckpt_name(1)), "layer1/weights"), want)

    def test_bad_init_from_exits_78_with_named_message(self):
        a = self.source()
        cases = [
            ("missing-name", {"file": a, "map": {"layer1/weights": "v1_1"}}, {},
             ['tensor "v1_1" not found in %s (it has: layer1/weights, ' % a]),
            ("shape", {"file": a, "map": {"layer1/weights": "layer1/weights"}}, {"hidden": [16]},
             ["has shape [64, 32], expected [64, 16]", "this model is 64-16-10, the file's is 64-32-10"]),
            ("no-file", {"file": os.path.join(self.work, "nope.safetensors"), "map": {}}, {},
             [os.path.join(self.work, "nope.safetensors")]),
            ("target", {"file": a, "map": {"layer9/weights": "layer1/weights"}}, {},
             ['"layer9/weights" is not a variable of this model (64-32-10); its variables are: '
              "layer1/weights, layer1/biases, layer2/weights, layer2/biases"]),
        ]
        for name, init, model, msgs in cases:
            d = os.path.join(self.work, name)
            _, _, p = self.train(name, expect=78, model=model, checkpoint={"dir": d, "init_from": init})
            out = p.output()
            self.assertIn("checkpoint.init_from", out, name)
            for msg in msgs:
                self.assertIn(msg, out, name)
            self.assertEqual(ckpt_steps(d), [], name)

    def test_ignored_when_the_directory_has_a_checkpoint(self):
        d = os.path.join(self.work, "run")
        self.train("first", train={"max_steps": 20}, checkpoint={"dir": d})
        bad = {"file": os.path.join(self.work, "nope.safetensors"), "map": {"layer1/weights": "x"}}
        _, _, p = self.train("second", train={"max_steps": 40}, checkpoint={"dir": d, "init_from": bad})
        self.assertNotIn("warm start", p.output())
        self.assertIn("resumed", p.output())
        self.assertEqual(max(ckpt_steps(d)), 40)


if __name__ == "__main__":
    unittest.main(verbosity=2)
