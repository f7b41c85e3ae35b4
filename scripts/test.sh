#!/bin/sh
# Builds mnistd with AddressSanitizer and UndefinedBehaviorSanitizer and runs
# the whole test suite (unit tests and end-to-end tests).
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh

# ONNX Runtime for the export tests, from the npm registry at the locked
# version, installed once into tests/onnxruntime/node_modules (again only
# when package-lock.json changes). --ignore-scripts: the native library ships
# inside the package, and its install script would try to download more.
if [ ! -f tests/onnxruntime/node_modules/.package-lock.json ] ||
	[ tests/onnxruntime/package-lock.json -nt tests/onnxruntime/node_modules/.package-lock.json ]; then
	(cd tests/onnxruntime && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
# Missing ONNX verifiers fail the export tests here instead of skipping them.
export MN_REQUIRE_ONNX=1

BUILD=${MN_BUILD_DIR:-build-sanitize}
if [ ! -d "$BUILD" ]; then
	meson setup "$BUILD" -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Dtests=enabled
fi
meson compile -C "$BUILD"
# halt_on_error makes UBSan failures fail the test instead of printing and going on.
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
meson test -C "$BUILD" --print-errorlogs "$@"
