"""End-to-end tests of mnistctl export: models exported from checkpoints the
real mnistd wrote are accepted by ONNX's own checker (Debian's python3-onnx,
full_check) and run in ONNX Runtime (onnxruntime-node, tests/onnxruntime)
to the logits mnistctl predict computes; bad input is refused with a clear
message and leaves no file behind.

scripts/test.sh installs both verifiers and sets MN_REQUIRE_ONNX=1, which
turns their absence into a failure; a bare 'meson test' skips those checks
when they are missing."""

import array
import json
import math
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import unittest
import zlib

sys.path.insert(0, os.path.dirname(__file__))
import mnlib  # noqa: E402
from mnlib import MNISTCTL, MNISTD, read_safetensors, tensor_floats  # noqa: E402

SOURCE = os.environ.get("MN_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
ORT_DIR = os.path.join(SOURCE, "tests", "onnxruntime")
RUN_JS = os.path.join(ORT_DIR, "run.js")
# Debian's interpreter: python3-onnx is installed for it, not for others on PATH.
DEBIAN_PYTHON = "/usr/bin/python3"
REQUIRE = os.environ.get("MN_REQUIRE_ONNX") == "1"
SANITIZER_REPORT = r"(Address|Leak|UndefinedBehavior)Sanitizer|runtime error:"
TOLERANCE = 1e-4

# Loads a model with python3-onnx, runs the full checker and prints what the file holds.
CHECK_PY = r"""
import json, sys
import onnx
from onnx import numpy_helper
from onnx import shape_inference
m = onnx.load(sys.argv[1])
onnx.checker.check_model(m, full_check=True)
# strict_mode: a shape or type the operators contradict is an error, not a warning.
inferred = shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
def dims(v):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in v.type.tensor_type.shape.dim]
g = m.graph
print(json.dumps({
    "inferred": [[v.name, v.type.tensor_type.elem_type, dims(v)] for v in inferred.graph.output]
                + [[v.name, v.type.tensor_type.elem_type, dims(v)] for v in inferred.graph.value_info],
    "ir_version": m.ir_version,
    "opset": [[o.domain, o.version] for o in m.opset_import],
    "producer_name": m.producer_name, "producer_version": m.producer_version,
    "model_version": m.model_version, "doc_string": m.doc_string,
    "metadata": [[p.key, p.value] for p in m.metadata_props],
    "inputs": [[v.name, v.type.tensor_type.elem_type, dims(v)] for v in g.input],
    "outputs": [[v.name, v.type.tensor_type.elem_type, dims(v)] for v in g.output],
    "nodes": [[n.op_type, list(n.input), list(n.output)] for n in g.node],
    "initializers": {t.name: [list(t.dims), numpy_helper.to_array(t).ravel().tolist()] for t in g.initializer},
}))
"""


def have_onnx():
    return os.access(DEBIAN_PYTHON, os.X_OK) and subprocess.run(
        [DEBIAN_PYTHON, "-c", "import onnx"], capture_output=True).returncode == 0


def have_ort():
    return shutil.which("node") is not None and os.path.isdir(os.path.join(ORT_DIR, "node_modules", "onnxruntime-node"))


def needs(available, what):
    """Skips a test when a verifier is missing, unless the suite must have it."""
    if available or REQUIRE:
        return lambda f: f
    return unittest.skip("%s is not installed (scripts/test.sh installs it)" % what)


def ckpt_name(step):
    return "model.ckpt-%d.safetensors" % step


def encode_safetensors(tensors, meta):
    """tensors: [(name, dtype, shape, raw bytes)] in data order; sets data_crc32."""
    header, data = {}, bytearray()
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    header["__metadata__"] = dict(meta, data_crc32="%08x" % zlib.crc32(bytes(data)))
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(data)


def rewrite_tensor(path, out, name, values):
    """Copies the checkpoint path to out with tensor name's values replaced (a valid checksum)."""
    header, data, _ = read_safetensors(path)
    meta = header.pop("__metadata__")
    tensors = []
    for n, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        raw = bytes(data[t["data_offsets"][0]:t["data_offsets"][1]])
        if n == name:
            raw = struct.pack("<%df" % len(values), *values)
        tensors.append((n, t["dtype"], t["shape"], raw))
    with open(out, "wb") as f:
        f.write(encode_safetensors(tensors, meta))


def argmax(row):
    return max(range(len(row)), key=lambda j: (row[j], -j))


class ExportCase(mnlib.TestCase):
    def ctl(self, *args, expect=0, cwd=None):
        argv = [MNISTCTL] + [str(a) for a in args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120 * mnlib.SLOW, cwd=cwd)
        self.assertEqual(r.returncode, expect, "%s\nstdout:\n%s\nstderr:\n%s" % (argv, r.stdout, r.stderr))
        self.assertNotRegex(r.stderr, SANITIZER_REPORT, argv)
        return r

    def train(self, name, hidden, size=8, steps=60):
        """Trains a model on its own size x size data set; returns (dir, data dir)."""
        data = mnlib.make_dataset(os.path.join(self.work, name + "-data"), n_train=600, n_test=150,
                                  rows=size, cols=size, seed=len(name))
        cfg = mnlib.base_config(self.work, data, model={"hidden": hidden, "seed": 3},
                                train={"max_steps": steps},
                                checkpoint={"dir": os.path.join(self.work, name)})
        path = mnlib.write_config(os.path.join(self.work, name + ".json"), cfg)
        p = self.start([MNISTD, "--config", path], name)
        self.assertEqual(p.wait(120), 0, p.output())
        return cfg["checkpoint"]["dir"], data

    def check_onnx(self, model):
        r = subprocess.run([DEBIAN_PYTHON, "-c", CHECK_PY, model], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, "onnx.checker refused %s:\n%s" % (model, r.stderr))
        return json.loads(r.stdout)

    def run_ort(self, model, images):
        r = subprocess.run(["node", RUN_JS, model, images], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, "ONNX Runtime failed on %s:\n%s" % (model, r.stderr))
        return json.loads(r.stdout)

    def predict(self, model, images, *flags):
        r = self.ctl("--json", "predict", "--logits", "--threads", "1", *flags, model, "--images", images)
        return json.loads(r.stdout)

    def assert_same_logits(self, ort, ref, what):
        self.assertEqual(ort["images"], ref["images"], what)
        self.assertEqual(len(ort["logits"]), ref["images"], what)
        worst = max(abs(a - b) for ra, rb in zip(ort["logits"], ref["logits"]) for a, b in zip(ra, rb))
        self.assertLessEqual(worst, TOLERANCE, what)
        self.assertEqual([argmax(r) for r in ort["logits"]], ref["predictions"], what)
        for lrow, prow in zip(ort["logits"], ort["probabilities"]):
            m = max(lrow)
            z = sum(math.exp(v - m) for v in lrow)
            for lv, pv in zip(lrow, prow):
                self.assertAlmostEqual(pv, math.exp(lv - m) / z, delta=1e-5)
        return worst


class ExportTest(ExportCase):
    # (name, hidden layers, image side): the default shape on real-size
    # images, a deeper network, and the 8x8 images of the other e2e tests.
    MODELS = [("one-hidden-28x28", [32], 28), ("two-hidden", [24, 16], 8), ("one-hidden-8x8", [32], 8)]

    @needs(have_onnx(), "python3-onnx")
    @needs(have_ort(), "onnxruntime-node (tests/onnxruntime)")
    def test_models_check_and_run_like_predict(self):
        for name, hidden, size in self.MODELS:
            with self.subTest(model=name):
                d, data = self.train(name, hidden, size)
                self.check_model(d, data, hidden, size)
                if size == 28:
                    self.check_readme_code(os.path.join(self.work, os.path.basename(d) + ".onnx"),
                                           os.path.join(d, ckpt_name(60)))

    def check_readme_code(self, model, ckpt):
        """The Node.js code of README's "Serving the model" runs as printed."""
        with open(os.path.join(SOURCE, "README.md")) as f:
            readme = f.read()
        section = readme.split("## Serving the model", 1)[1].split("\n## ", 1)[0]
        code = re.search(r"```js\n(.*?)```", section, re.S).group(1)
        self.assertIn("'fashion-mlp.onnx'", code)
        script = os.path.join(self.work, "serve.js")
        with open(script, "w") as f:
            f.write(code.replace("'fashion-mlp.onnx'", json.dumps(model)))
        r = subprocess.run(["node", script], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, NODE_PATH=os.path.join(ORT_DIR, "node_modules")))
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        # The code classifies one blank image: what predict says of it.
        blank = os.path.join(self.work, "blank-idx3-ubyte")
        mnlib.write_idx(blank, 2051, (1, 28, 28), bytes(784), gz=False)
        ref = self.predict(ckpt, blank)
        z = ref["logits"][0]
        m = max(z)
        self.assertEqual(got[0]["class"], ref["predictions"][0])
        self.assertAlmostEqual(got[0]["probability"], 1 / sum(math.exp(v - m) for v in z), delta=1e-5)

    def check_model(self, d, data, hidden, size):
        ckpt = os.path.join(d, ckpt_name(60))
        images = os.path.join(data, "t10k-images-idx3-ubyte.gz")
        out = os.path.join(self.work, os.path.basename(d) + ".onnx")
        j = json.loads(self.ctl("--json", "export", d, "-o", out).stdout)
        arch_s = "-".join(str(v) for v in [size * size] + hidden + [10])
        self.assertEqual(j, {"file": out, "source": ckpt, "architecture": arch_s, "step": 60, "ema": True,
                             "bytes": os.path.getsize(out), "ir_version": 7, "opset": 13,
                             "inputs": ["images"], "outputs": ["logits", "probabilities"]})

        m = self.check_onnx(out)
        src = read_safetensors(ckpt)[0]["__metadata__"]
        self.assertEqual(m["ir_version"], 7)
        self.assertEqual(m["opset"], [["", 13]])
        self.assertEqual(m["producer_name"], "mnistd")
        self.assertRegex(m["producer_version"], r"^\d+\.\d+\.\d+$")
        self.assertEqual(m["model_version"], 60)
        meta = dict(m["metadata"])
        self.assertEqual(meta, {"source": ckpt_name(60), "global_step": "60",
                                "architecture": src["architecture"], "data_crc32": src["data_crc32"],
                                "ema": "true"})
        for text in (ckpt_name(60), "step 60", src["data_crc32"], arch_s, "[0, 1]"):
            self.assertIn(text, m["doc_string"])
        self.assertEqual(m["inputs"], [["images", 1, ["N", size * size]]])
        self.assertEqual(m["outputs"], [["logits", 1, ["N", 10]], ["probabilities", 1, ["N", 10]]])
        self.assertEqual(m["inferred"][:2], m["outputs"])
        ops = [n[0] for n in m["nodes"]]
        self.assertEqual(ops, ["MatMul", "Add", "Relu"] * len(hidden) + ["MatMul", "Add", "Softmax"])
        self.assertEqual(m["nodes"][-2][2], ["logits"])
        self.assertEqual(m["nodes"][-1], ["Softmax", ["logits"], ["probabilities"]])
        # Initializers: TensorFlow's names, the EMA shadows' exact values.
        layers = len(hidden) + 1
        names = ["layer%d/%s" % (i, k) for i in range(1, layers + 1) for k in ("weights", "biases")]
        self.assertEqual(sorted(m["initializers"]), sorted(names))
        for n in names:
            self.assertEqual(m["initializers"][n][1], list(tensor_floats(ckpt, n + "/ExponentialMovingAverage")), n)

        ort = self.run_ort(out, images)
        self.assertEqual((ort["inputs"], ort["outputs"]), (["images"], ["logits", "probabilities"]))
        self.assert_same_logits(ort, self.predict(ckpt, images), out)

        # --raw: the raw variables, equal to predict --raw.
        raw = os.path.join(self.work, os.path.basename(d) + "-raw.onnx")
        self.assertFalse(json.loads(self.ctl("--json", "export", "--raw", ckpt, "-o", raw).stdout)["ema"])
        mr = self.check_onnx(raw)
        self.assertEqual(dict(mr["metadata"])["ema"], "false")
        self.assertEqual(mr["initializers"]["layer1/weights"][1], list(tensor_floats(ckpt, "layer1/weights")))
        self.assert_same_logits(self.run_ort(raw, images), self.predict(ckpt, images, "--raw"), raw)

        # A frozen model exports to the same graph and values as its checkpoint.
        frozen = os.path.join(self.work, os.path.basename(d) + "-frozen.safetensors")
        self.ctl("freeze", ckpt, "-o", frozen)
        ff = os.path.join(self.work, os.path.basename(d) + "-frozen.onnx")
        self.ctl("export", frozen, "-o", ff)
        mf = self.check_onnx(ff)
        self.assertEqual(mf["initializers"], m["initializers"])
        self.assertEqual(dict(mf["metadata"])["ema"], "true")


def synthetic_checkpoint(path, sizes, step=9):
    """An mnistd checkpoint of layer sizes [input, hidden..., output] with
    distinct raw and EMA values (a cheap deterministic pattern, not trained)."""
    tensors = []
    for ema, scale in ((False, 0.05), (True, 0.03)):
        for layer in range(len(sizes) - 1):
            i, o = sizes[layer], sizes[layer + 1]
            for kind, shape in (("weights", [i, o]), ("biases", [o])):
                n = i * o if kind == "weights" else o
                seed = 7919 * (layer + 1) + (0 if kind == "weights" else 104729)
                vals = array.array("f", (((k * 2654435761 + seed) % 2001 - 1000) * scale / 1000 for k in range(n)))
                name = "layer%d/%s%s" % (layer + 1, kind, "/ExponentialMovingAverage" if ema else "")
                tensors.append((name, "F32", shape, vals.tobytes()))
    tensors.append(("global_step", "I64", [], struct.pack("<q", step)))
    arch = {"input": sizes[0], "hidden": sizes[1:-1], "output": sizes[-1], "activation": "relu"}
    with open(path, "wb") as f:
        f.write(encode_safetensors(tensors, {"format": "mnistd.checkpoint.v1", "global_step": str(step),
                                             "architecture": json.dumps(arch, separators=(",", ":"))}))


class ExportArchitectureTest(ExportCase):
    """Every shape the configuration allows, on images of other sizes than
    28x28, one image and many: checker, strict shape inference, ONNX Runtime
    and predict agree."""

    # (hidden layers, image rows x cols, images): the smallest model (no hidden
    # layer, 1x1 images), the widths a user picks, the deepest allowed.
    SHAPES = [([], (1, 1), 1), ([100], (28, 28), 1), ([4000], (28, 28), 100), ([500, 500], (28, 28), 64),
              ([7, 5, 3], (5, 7), 1000), ([3] * 8, (2, 3), 1)]

    @needs(have_onnx(), "python3-onnx")
    @needs(have_ort(), "onnxruntime-node (tests/onnxruntime)")
    def test_every_allowed_shape(self):
        for hidden, (rows, cols), count in self.SHAPES:
            with self.subTest(hidden=hidden, image="%dx%d" % (rows, cols), images=count):
                sizes = [rows * cols] + hidden + [10]
                name = "-".join(map(str, sizes))
                ckpt = os.path.join(self.work, name + ".safetensors")
                synthetic_checkpoint(ckpt, sizes)
                images = os.path.join(self.work, "%s-idx3-ubyte" % name)
                pixels = bytes((k * 37 + 11) % 256 for k in range(count * rows * cols))
                mnlib.write_idx(images, 2051, (count, rows, cols), pixels, gz=False)
                for flags in ([], ["--raw"]):
                    out = os.path.join(self.work, name + "".join(flags) + ".onnx")
                    self.ctl("export", *flags, ckpt, "-o", out)
                    m = self.check_onnx(out)
                    self.assertEqual((m["ir_version"], m["opset"]), (7, [["", 13]]))
                    declared = [["logits", 1, ["N", 10]], ["probabilities", 1, ["N", 10]]]
                    self.assertEqual(m["outputs"], declared)
                    self.assertEqual(m["inferred"][:2], declared)
                    self.assertEqual(m["inputs"], [["images", 1, ["N", rows * cols]]])
                    ort = self.run_ort(out, images)
                    self.assertEqual(ort["dims"], [count, 10])
                    self.assert_same_logits(ort, self.predict(ckpt, images, *flags), out)
                    for prow in ort["probabilities"]:
                        self.assertAlmostEqual(sum(prow), 1.0, delta=1e-5)


class ExportRefusalTest(ExportCase):
    def setUp(self):
        super().setUp()
        self.dir, self.data_dir = self.train("ckpt", [32])
        self.ckpt = os.path.join(self.dir, ckpt_name(60))

    def assert_refused(self, args, message, out, expect=1):
        """The export fails with message, and out's directory gains nothing."""
        where = os.path.dirname(out) if os.path.isdir(os.path.dirname(out)) else self.work
        before = sorted(os.listdir(where))
        r = self.ctl("export", *args, "-o", out, expect=expect)
        self.assertIn(message, r.stderr)
        self.assertTrue(r.stderr.startswith("mnistctl export: "), r.stderr)
        self.assertEqual(sorted(os.listdir(where)), before, "export left files behind")
        return r

    def test_invalid_and_incompatible_checkpoints(self):
        out = os.path.join(self.work, "out.onnx")
        with open(self.ckpt, "rb") as f:
            blob = f.read()
        bad = os.path.join(self.work, "truncated.safetensors")
        with open(bad, "wb") as f:
            f.write(blob[:-8])
        self.assert_refused([bad], "truncated.safetensors", out)
        self.assertFalse(os.path.exists(out))
        self.assert_refused([os.path.join(self.work, "nope")], "nope", out)
        os.makedirs(os.path.join(self.work, "empty"))
        self.assert_refused([os.path.join(self.work, "empty")], "no checkpoint", out)

        # Not an mnistd checkpoint (no format or architecture): what freeze refuses, export refuses.
        header, data, _ = read_safetensors(self.ckpt)
        plain, blob = {}, bytearray()
        for name in ("layer1/weights", "layer1/biases", "layer2/weights", "layer2/biases"):
            b, e = header[name]["data_offsets"]
            plain[name] = dict(header[name], data_offsets=[len(blob), len(blob) + e - b])
            blob += data[b:e]
        hj = json.dumps(plain).encode()
        hj += b" " * ((8 - (8 + len(hj)) % 8) % 8)
        foreign = os.path.join(self.work, "foreign.safetensors")
        with open(foreign, "wb") as f:
            f.write(len(hj).to_bytes(8, "little") + hj + bytes(blob))
        self.ctl("inspect", foreign)  # a valid safetensors file, just not a checkpoint
        r = self.ctl("freeze", foreign, "-o", os.path.join(self.work, "f.safetensors"), expect=1)
        self.assert_refused([foreign], r.stderr.split(": ", 1)[1].strip(), out)

        # Tensors that disagree with the recorded architecture.
        meta = header["__metadata__"]
        arch = json.loads(meta["architecture"])
        arch["hidden"] = [16]
        header["__metadata__"] = dict(meta, architecture=json.dumps(arch))
        hj = json.dumps(header).encode()
        hj += b" " * ((8 - (8 + len(hj)) % 8) % 8)
        liar = os.path.join(self.work, "liar.safetensors")
        with open(liar, "wb") as f:
            f.write(len(hj).to_bytes(8, "little") + hj + data)
        self.assert_refused([liar], "liar.safetensors", out)
        self.assertFalse(os.path.exists(out))

    def test_values_that_are_not_finite_are_refused(self):
        # ONNX Runtime carries a NaN on where predict's ReLU drops it: the model
        # would give NaN for every image and disagree with predict. export,
        # freeze and predict (which once answered around it) refuse it, naming
        # the tensor as the file names it and the element; the raw values,
        # finite, are still used.
        ema = list(tensor_floats(self.ckpt, "layer1/weights/ExponentialMovingAverage"))
        out = os.path.join(self.work, "out.onnx")
        frozen = os.path.join(self.work, "frozen.safetensors")
        images = os.path.join(self.data_dir, "t10k-images-idx3-ubyte.gz")
        for value, text in ((float("nan"), "nan"), (float("-inf"), "-inf")):
            ema[3 * 32 + 5] = value
            bad = os.path.join(self.work, "nonfinite.safetensors")
            rewrite_tensor(self.ckpt, bad, "layer1/weights/ExponentialMovingAverage", ema)
            self.ctl("verify", bad)  # a valid checkpoint, just not a usable model
            want = "layer1/weights/ExponentialMovingAverage[3, 5] is %s" % text
            r = self.assert_refused([bad], want, out)
            self.assertIn(bad, r.stderr)
            self.assertFalse(os.path.exists(out))
            for cmd in (["freeze", bad, "-o", frozen], ["predict", bad, "--images", images]):
                r = self.ctl(*cmd, expect=1)
                self.assertTrue(r.stderr.startswith("mnistctl %s: %s: %s" % (cmd[0], bad, want)),
                                r.stderr)
                self.assertEqual(r.stdout, "")
            self.assertFalse(os.path.exists(frozen))
        self.ctl("export", "--raw", bad, "-o", out)
        self.ctl("freeze", "--raw", bad, "-o", frozen)
        self.ctl("predict", "--raw", bad, "--images", images)

    def test_output_that_is_the_source_is_refused(self):
        # --force replaces an existing file, but never the checkpoint being
        # exported: that would trade the training state for its ONNX copy.
        with open(self.ckpt, "rb") as f:
            before = f.read()
        link = os.path.join(self.work, "hardlink.safetensors")
        os.link(self.ckpt, link)
        for src, out in ((self.ckpt, self.ckpt), (self.dir, self.ckpt), (self.ckpt, link)):
            r = self.assert_refused(["--force", src], "is the checkpoint being read", out)
            self.assertIn(out, r.stderr)
            # freeze replaces a regular OUT without asking, so it once replaced a checkpoint,
            # training state and all, with its frozen model (a frozen model may still be
            # frozen onto itself: test_toolkit.py).
            r = self.ctl("freeze", src, "-o", out, expect=1)
            self.assertIn("is the checkpoint being read", r.stderr)
        with open(self.ckpt, "rb") as f:
            self.assertEqual(f.read(), before)

    @needs(have_onnx(), "python3-onnx")
    def test_file_names_that_are_not_utf8_or_hold_controls(self):
        # ONNX strings are UTF-8: a file name that is not (a Latin-1 "\xff") once
        # went into metadata "source" and doc_string as it was, and python's onnx
        # returned the doc_string as bytes. What is not UTF-8, and what a terminal
        # acts on, is written as \xNN, in the model and in the report.
        odd = os.path.join(self.work.encode(), b"m\xff\xfe-\x1b[31m.safetensors")
        shutil.copy(self.ckpt.encode(), odd)
        # And a name from a directory's checkpoint.json (a valid UTF-8 JSON string).
        d = os.path.join(self.work, "indexed")
        os.makedirs(d)
        ctrl = "\x1b]2;owned\x07.safetensors"
        shutil.copy(self.ckpt, os.path.join(d, ctrl))
        with open(os.path.join(d, "checkpoint.json"), "w") as f:
            json.dump({"latest": ctrl, "all": [ctrl]}, f)
        for src, shown in ((odd, "m\\xff\\xfe-\\x1b[31m.safetensors"), (d.encode(), "\\x1b]2;owned\\x07.safetensors")):
            for flags in ([], [b"--json"]):
                out = os.path.join(self.work, "odd.onnx")
                r = subprocess.run([MNISTCTL.encode()] + flags + [b"export", b"--force", src, b"-o", out.encode()],
                                   capture_output=True, timeout=120 * mnlib.SLOW)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertNotIn(b"\x1b", r.stdout)
                report = r.stdout.decode("utf-8")  # valid UTF-8, JSON or text
                if flags:
                    self.assertEqual(json.loads(report)["file"], out)
                else:
                    self.assertIn(shown, report)
                m = self.check_onnx(out)
                self.assertEqual(dict(m["metadata"])["source"], shown)
                self.assertIn(shown, m["doc_string"])
            # freeze shares the rule (it refused such a name, its writer wanting UTF-8
            # metadata), and predict's report shows the name as export's does.
            frozen = os.path.join(self.work, "odd-frozen.safetensors")
            r = subprocess.run([MNISTCTL.encode(), b"freeze", src, b"-o", frozen.encode()],
                               capture_output=True, timeout=120 * mnlib.SLOW)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn(b"\x1b", r.stdout)
            self.assertIn(shown, r.stdout.decode("utf-8"))
            self.assertEqual(read_safetensors(frozen)[0]["__metadata__"]["source"], shown)
            self.ctl("export", "--force", frozen, "-o", out)
            labels = os.path.join(self.data_dir, "t10k-labels-idx1-ubyte.gz")
            images = os.path.join(self.data_dir, "t10k-images-idx3-ubyte.gz")
            r = subprocess.run([MNISTCTL.encode(), b"predict", b"--threads", b"1", src, b"--images", images.encode(),
                                b"--labels", labels.encode()], capture_output=True, timeout=120 * mnlib.SLOW)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn(b"\x1b", r.stdout)
            self.assertIn(shown, r.stdout.decode("utf-8"))

    def test_unwritable_paths(self):
        missing = os.path.join(self.work, "no", "such", "m.onnx")
        self.assert_refused([self.ckpt], "cannot write into %s" % os.path.join(self.work, "no", "such"), missing)
        self.assertFalse(os.path.exists(os.path.join(self.work, "no")))
        self.assert_refused([self.ckpt], "not a directory", os.path.join(self.ckpt, "m.onnx"))
        r = self.ctl("export", self.ckpt, expect=2)
        self.assertIn("-o OUT is required", r.stderr)
        r = self.ctl("export", "-o", os.path.join(self.work, "x.onnx"), expect=2)
        self.assertIn("no CKPT or DIR given", r.stderr)
        if os.geteuid() != 0:  # root writes into a mode 0555 directory anyway
            ro = os.path.join(self.work, "ro")
            os.makedirs(ro)
            os.chmod(ro, 0o555)
            self.assert_refused([self.ckpt], "ro", os.path.join(ro, "m.onnx"))
        self.assertEqual([f for f in os.listdir(self.work) if f.startswith(".")], [])

    def test_dash_is_standard_output(self):
        # OUT "-" is standard output for every offline command that writes a file
        # (mnistctl(1)): the model goes there and the report to standard error. It
        # once went to the atomic writer as a file "-" in the directory "", that is
        # "/-", and failed on the directory fsync after writing it.
        out = os.path.join(self.work, "m.onnx")
        self.ctl("export", self.ckpt, "-o", out)
        with open(out, "rb") as f:
            onnx = f.read()
        if not os.path.exists("/-"):
            self.addCleanup(lambda: os.path.exists("/-") and os.unlink("/-"))
        for json_flag in ([], ["--json"]):
            r = subprocess.run([MNISTCTL] + json_flag + ["export", self.ckpt, "-o", "-"], capture_output=True,
                               timeout=120 * mnlib.SLOW, cwd=self.work)
            stderr = r.stderr.decode(errors="replace")
            self.assertEqual(r.returncode, 0, stderr)
            self.assertNotRegex(stderr, SANITIZER_REPORT)
            self.assertEqual(r.stdout, onnx)
            if json_flag:
                self.assertEqual(json.loads(stderr)["file"], "-")
            else:
                self.assertTrue(stderr.startswith("-: ONNX model (IR 7, opset 13, %d bytes)" % len(onnx)), stderr)
        self.assertFalse(os.path.exists(os.path.join(self.work, "-")))

    def test_existing_output_needs_force(self):
        out = os.path.join(self.work, "m.onnx")
        with open(out, "wb") as f:
            f.write(b"precious")
        self.assert_refused([self.ckpt], "%s exists (--force replaces it)" % out, out)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        self.ctl("export", "--force", self.ckpt, "-o", out)
        with open(out, "rb") as f:
            self.assertNotEqual(f.read(), b"precious")
        self.ctl("export", "-f", self.dir, "-o", out)

        # Never replaced, even with --force: what is not a regular file.
        target = os.path.join(self.work, "target")
        with open(target, "wb") as f:
            f.write(b"keep")
        link = os.path.join(self.work, "link.onnx")
        os.symlink(target, link)
        fifo = os.path.join(self.work, "fifo.onnx")
        os.mkfifo(fifo)
        dirout = os.path.join(self.work, "dir.onnx")
        os.makedirs(dirout)
        for path in (link, fifo, dirout):
            # Refused by export itself or by the shared atomic writer, whose wording differs.
            r = self.assert_refused(["--force", self.ckpt], "exists and is not a regular file", path)
            self.assertIn(path, r.stderr)
        self.assertTrue(os.path.islink(link))
        self.assertTrue(stat.S_ISFIFO(os.lstat(fifo).st_mode))
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"keep")

    def test_a_best_dir_exports_its_best_checkpoint(self):
        # The evaluator's eval.best_dir: best.json names the best checkpoint, best first.
        best = os.path.join(self.work, "best")
        os.makedirs(best)
        for step in (40, 60):
            shutil.copy(os.path.join(self.dir, ckpt_name(step)), best)
        entries = [{"step": 40, "accuracy": 0.9, "loss": 0.3, "file": ckpt_name(40),
                    "time": "2026-11-29T20:00:00.000Z"},
                   {"step": 60, "accuracy": 0.8, "loss": 0.4, "file": ckpt_name(60),
                    "time": "2026-11-29T20:00:01.000Z"}]
        with open(os.path.join(best, "best.json"), "w") as f:
            json.dump({"best": entries}, f)
        out = os.path.join(self.work, "best.onnx")
        j = json.loads(self.ctl("--json", "export", best, "-o", out).stdout)
        self.assertEqual((j["source"], j["step"]), (os.path.join(best, ckpt_name(40)), 40))

    def test_help_and_text_output(self):
        r = self.ctl("export", "--help")
        for text in ("ONNX", "--raw", "--force", "images", "logits", "probabilities"):
            self.assertIn(text, r.stdout)
        self.assertIn("export CKPT|DIR -o OUT", self.ctl("--help").stdout)
        out = os.path.join(self.work, "bare.onnx")
        r = self.ctl("export", self.dir, "-o", "bare.onnx", cwd=self.work)
        self.assertEqual(r.stdout.strip(), "bare.onnx: ONNX model (IR 7, opset 13, %d bytes) of 64-32-10 from %s "
                         "(step 60, EMA values)" % (os.path.getsize(out), self.ckpt))


if __name__ == "__main__":
    unittest.main(verbosity=2)
