#!/usr/bin/env python3
"""ONNX export parity on the whole Fashion-MNIST test set: trains the default
recipe (784-500-10) for a short real run with mnistd, exports its latest
checkpoint with 'mnistctl export' (EMA and raw values), runs the models in
ONNX Runtime (tests/onnxruntime/run.js, onnxruntime-node) and compares their
logits with 'mnistctl predict --logits' on all 10000 t10k images: largest
and mean absolute difference, class agreement, and each side's accuracy.

usage: python3 bench/onnx_parity.py [--steps 3000] [--build build-release]
       [--threads 1]

Needs node and tests/onnxruntime/node_modules (scripts/test.sh installs it,
or 'npm ci --ignore-scripts' in tests/onnxruntime)."""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = "/usr/share/datasets/fashion-mnist"
T10K_IMAGES = os.path.join(DATA, "t10k-images-idx3-ubyte.gz")
T10K_LABELS = os.path.join(DATA, "t10k-labels-idx1-ubyte.gz")


def run(argv, **kw):
    t = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit("%s failed (%d):\n%s" % (" ".join(argv), r.returncode, r.stderr))
    return r.stdout, time.monotonic() - t


def labels():
    with gzip.open(T10K_LABELS) as f:
        raw = f.read()
    return list(raw[8:])


def argmax(row):
    return max(range(len(row)), key=lambda j: (row[j], -j))


def compare(build, work, ckpt, raw, threads):
    flag = ["--raw"] if raw else []
    model = os.path.join(work, "model-raw.onnx" if raw else "model.onnx")
    ctl = os.path.join(build, "tools", "mnistctl")
    run([ctl, "export", "--force"] + flag + [ckpt, "-o", model])
    out, t_ort = run(["node", os.path.join(ROOT, "tests", "onnxruntime", "run.js"), model, T10K_IMAGES,
                      "--threads", str(threads)])
    ort = json.loads(out)
    out, t_ctl = run([ctl, "--json", "predict", "--logits", "--threads", str(threads)] + flag +
                     [ckpt, "--images", T10K_IMAGES])
    ref = json.loads(out)
    truth = labels()
    diffs = [abs(a - b) for ra, rb in zip(ort["logits"], ref["logits"]) for a, b in zip(ra, rb)]
    ort_pred = [argmax(r) for r in ort["logits"]]
    agree = sum(a == b for a, b in zip(ort_pred, ref["predictions"]))
    n = ref["images"]
    return {
        "values": "raw" if raw else "EMA",
        "images": n,
        "max_abs_diff": max(diffs),
        "mean_abs_diff": sum(diffs) / len(diffs),
        "max_abs_logit": max(abs(v) for r in ref["logits"] for v in r),
        "agree": agree,
        "acc_ort": sum(p == t for p, t in zip(ort_pred, truth)) / n,
        "acc_ctl": sum(p == t for p, t in zip(ref["predictions"], truth)) / n,
        "bytes": os.path.getsize(model),
        "ort_s": t_ort,
        "ctl_s": t_ctl,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--threads", type=int, default=1, help="threads for both runtimes")
    a = ap.parse_args()
    if not os.path.isdir(a.build):
        run(["meson", "setup", a.build, "-Dbuildtype=release"], cwd=ROOT)
    run(["meson", "compile", "-C", a.build])
    work = tempfile.mkdtemp(prefix="mnistd-onnx.")
    cfg = {"train": {"max_steps": a.steps},
           "checkpoint": {"dir": os.path.join(work, "ckpt"), "every_steps": 1000},
           "control": {"socket": os.path.join(work, "control.sock")}}
    with open(os.path.join(work, "mnistd.json"), "w") as f:
        json.dump(cfg, f)
    _, t_train = run([os.path.join(a.build, "daemon", "mnistd"), "--config", os.path.join(work, "mnistd.json")])
    ckpt = os.path.join(work, "ckpt", "model.ckpt-%d.safetensors" % a.steps)
    print("trained 784-500-10 for %d steps in %.1f s; checkpoint %s" % (a.steps, t_train, ckpt))
    print("| values | images | max abs diff | mean abs diff | largest |logit| | same class | "
          "accuracy (ORT) | accuracy (predict) | .onnx bytes | ORT s | predict s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for raw in (False, True):
        r = compare(a.build, work, ckpt, raw, a.threads)
        print("| %s | %d | %.3g | %.3g | %.2f | %d/%d | %.4f | %.4f | %d | %.2f | %.2f |" % (
            r["values"], r["images"], r["max_abs_diff"], r["mean_abs_diff"], r["max_abs_logit"], r["agree"],
            r["images"], r["acc_ort"], r["acc_ctl"], r["bytes"], r["ort_s"], r["ctl_s"]))
    print("work dir %s" % work)


if __name__ == "__main__":
    main()
