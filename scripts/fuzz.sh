#!/bin/sh
# Fuzzes every reader of untrusted bytes (tests/fuzz/fuzz_*.c) with libFuzzer
# for SECONDS each (default 60), then prints one row per target: executions,
# coverage (libFuzzer's edge count) of the seed corpus and of everything
# found, and crashing inputs saved (one bug often yields several).
#
#   scripts/fuzz.sh [SECONDS]
#
# Builds with clang in build-fuzz (MN_FUZZ_BUILD_DIR overrides) and works in
# a scratch directory (MN_FUZZ_DIR, default a new /tmp/mnistd-fuzz.*) that it
# keeps: corpus/<target> holds what the fuzzer found, merged/<target> the
# minimal corpus covering the same, crashes/<target> every crashing input.
# Exits 1 if anything crashed. A crash found here is fixed in common/ and its
# input copied to tests/fuzz/corpus/<target>/, which `meson test --suite
# fuzz` replays from then on.
set -eu
cd "$(dirname "$0")/.."

SECS=${1:-60}
case "$SECS" in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS per target]" >&2
	exit 2
	;;
esac

# clang and its sanitizer runtimes (libFuzzer is in libclang-rt), and
# llvm-symbolizer (llvm-14) so crash reports name files and lines.
sh scripts/deps.sh clang libclang-rt-14-dev llvm-14

BUILD=${MN_FUZZ_BUILD_DIR:-build-fuzz}
if [ ! -f "$BUILD/build.ninja" ]; then
	CC=clang meson setup "$BUILD" -Dfuzzing=true -Dtests=enabled >/dev/null
else
	meson configure "$BUILD" -Dfuzzing=true
fi
meson compile -C "$BUILD" >/dev/null

targets=""
for f in tests/fuzz/fuzz_*.c; do
	targets="$targets $(basename "$f" .c)"
done
for t in $targets; do
	if [ ! -x "$BUILD/tests/fuzz/$t" ]; then
		echo "fuzz: $BUILD/tests/fuzz/$t was not built; is $BUILD configured with CC=clang? (remove it to start afresh)" >&2
		exit 1
	fi
done

WORK=${MN_FUZZ_DIR:-$(mktemp -d /tmp/mnistd-fuzz.XXXXXX)}
mkdir -p "$WORK"
# OpenBLAS would start a thread pool per process for nothing.
export OPENBLAS_NUM_THREADS=1
# A fuzzing process that finds leaks or UB must fail, not print and go on.
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

# Coverage (libFuzzer's "cov", edges of the instrumented code) reached by
# running the inputs of the given directories once.
coverage()
{
	exe=$1
	shift
	"$exe" -runs=0 -artifact_prefix="$WORK/replay-" "$@" 2>&1 | sed -n 's/.*INITED cov: \([0-9]*\).*/\1/p' | tail -n 1
}

echo "fuzz: $SECS s per target, work in $WORK" >&2
rows=""
total_crashes=0
for t in $targets; do
	exe="$BUILD/tests/fuzz/$t"
	seeds="tests/fuzz/corpus/$t"
	mkdir -p "$WORK/corpus/$t" "$WORK/crashes/$t" "$WORK/merged/$t" "$seeds"
	echo "fuzz: $t" >&2
	dict=""
	[ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
	# Fork mode carries on after a crash, so one run finds more than one.
	# shellcheck disable=SC2086
	"$exe" $dict -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 -timeout=10 \
		-max_total_time="$SECS" -artifact_prefix="$WORK/crashes/$t/" \
		"$WORK/corpus/$t" "$seeds" >"$WORK/$t.log" 2>&1 || true
	execs=$(sed -n 's/^#\([0-9]*\): cov:.*/\1/p' "$WORK/$t.log" | tail -n 1)
	rate=$(sed -n 's/^#[0-9]*: cov:.* exec\/s \([0-9]*\) .*/\1/p' "$WORK/$t.log" | tail -n 1)
	"$exe" -merge=1 -artifact_prefix="$WORK/crashes/$t/" "$WORK/merged/$t" "$WORK/corpus/$t" "$seeds" >"$WORK/$t.merge.log" 2>&1 || true
	cov_seed=$(coverage "$exe" "$seeds")
	cov_all=$(coverage "$exe" "$WORK/merged/$t")
	units=$(find "$WORK/merged/$t" -type f | wc -l)
	crashes=$(find "$WORK/crashes/$t" -type f | wc -l)
	total_crashes=$((total_crashes + crashes))
	rows="$rows$(printf '%-12s %12s %8s %7s %9s %9s %8s %8s' "$t" "${execs:-?}" "${rate:-?}" \
		"$units" "${cov_seed:-?}" "${cov_all:-?}" \
		"$(( ${cov_all:-0} - ${cov_seed:-0} ))" "$crashes")
"
done

printf '%-12s %12s %8s %7s %9s %9s %8s %8s\n' target executions exec/s corpus cov-seed cov-all \
	new-cov crashes
printf '%s' "$rows"
if [ "$total_crashes" -gt 0 ]; then
	echo
	echo "crashing inputs (reproduce with $BUILD/tests/fuzz/<target> FILE):"
	find "$WORK/crashes" -type f | sort
	exit 1
fi
