#!/bin/sh
# Builds mnistd with AddressSanitizer and UndefinedBehaviorSanitizer and runs
# the whole test suite (unit tests and end-to-end tests).
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh

BUILD=${MN_BUILD_DIR:-build-sanitize}
if [ ! -d "$BUILD" ]; then
	meson setup "$BUILD" -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Dtests=enabled
fi
meson compile -C "$BUILD"
# halt_on_error makes UBSan failures fail the test instead of printing and going on.
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
meson test -C "$BUILD" --print-errorlogs "$@"
