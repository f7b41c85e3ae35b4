#!/usr/bin/env node
// run.js - runs an ONNX model that 'mnistctl export' wrote in ONNX Runtime
// (onnxruntime-node) on the images of an IDX file, as a serving stack would,
// and prints what it computed as one JSON object:
//
//   node run.js MODEL.onnx IMAGES-IDX[.gz] [--threads N]
//   {"inputs": [...], "outputs": [...], "images": N, "dims": [N, classes],
//    "logits": [[...], ...], "probabilities": [[...], ...]}
//
// Pixels are scaled to [0, 1] (byte / 255) as mnistd does in training.
// Used by tests/e2e/test_export.py and bench/onnx_parity.py; install its one
// dependency with 'npm ci --ignore-scripts' in this folder (scripts/test.sh
// does that when it is missing).
'use strict';

const fs = require('node:fs');
const zlib = require('node:zlib');
const ort = require('onnxruntime-node');

function fail(msg) {
  process.stderr.write(`run.js: ${msg}\n`);
  process.exit(1);
}

// An IDX image file (magic 2051, three big-endian dimensions), plain or gzipped.
function readImages(path) {
  let buf = fs.readFileSync(path);
  if (buf.length >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) buf = zlib.gunzipSync(buf);
  if (buf.length < 16) fail(`${path}: too short for an IDX image header`);
  const magic = buf.readUInt32BE(0);
  if (magic !== 2051) fail(`${path}: IDX magic ${magic}, expected 2051 (images)`);
  const count = buf.readUInt32BE(4), rows = buf.readUInt32BE(8), cols = buf.readUInt32BE(12);
  const dim = rows * cols;
  if (buf.length !== 16 + count * dim) {
    fail(`${path}: ${buf.length - 16} pixel bytes for ${count} images of ${rows}x${cols}`);
  }
  const data = new Float32Array(count * dim);
  for (let i = 0; i < data.length; i++) data[i] = buf[16 + i] / 255;
  return {count, dim, data};
}

function rows(tensor) {
  const [n, k] = tensor.dims;
  const out = [];
  for (let i = 0; i < n; i++) out.push(Array.from(tensor.data.subarray(i * k, (i + 1) * k)));
  return out;
}

async function main() {
  const args = process.argv.slice(2);
  let threads = 1;
  const t = args.indexOf('--threads');
  if (t >= 0) {
    threads = Number(args[t + 1]);
    if (!Number.isInteger(threads) || threads < 0) fail('--threads wants an integer >= 0');
    args.splice(t, 2);
  }
  if (args.length !== 2) fail('usage: node run.js MODEL.onnx IMAGES-IDX[.gz] [--threads N]');
  const [model, images] = args;
  const img = readImages(images);
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  const feeds = {images: new ort.Tensor('float32', img.data, [img.count, img.dim])};
  const out = await session.run(feeds);
  for (const name of ['logits', 'probabilities']) {
    if (!out[name]) fail(`${model}: no output "${name}" (outputs: ${session.outputNames})`);
  }
  process.stdout.write(JSON.stringify({
    inputs: session.inputNames,
    outputs: session.outputNames,
    images: img.count,
    dims: out.logits.dims,
    logits: rows(out.logits),
    probabilities: rows(out.probabilities),
  }) + '\n');
}

main().catch((e) => fail(e && e.message ? e.message : String(e)));
