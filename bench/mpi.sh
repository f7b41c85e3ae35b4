#!/bin/sh
# Data-parallel training on this machine: one mnistd with 2 BLAS threads
# against `mpirun -np 2` with 1 BLAS thread per rank, on Fashion-MNIST with
# the default recipe (784-500-10, batch 100), release build. Prints steps/s
# and, for the MPI run, the time per step spent summing gradients
# (allreduce) and agreeing on commands; median of RUNS runs each.
# With ACCURACY=1 it also trains 30000 steps both ways and prints the test
# accuracy of the final EMA weights (mnistctl predict on t10k).
#
# usage: bench/mpi.sh [BUILD_DIR] [STEPS] [RUNS]   (build-release 3000 3)
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build-release}
STEPS=${2:-3000}
RUNS=${3:-3}
[ -d "$BUILD" ] || meson setup "$BUILD" -Dbuildtype=release -Dmpi=enabled >/dev/null
meson compile -C "$BUILD" >/dev/null
MNISTD=$PWD/$BUILD/daemon/mnistd
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WORK=$(mktemp -d /tmp/mnistd-mpi.XXXXXX)

config() { # name threads steps every
	cat >"$WORK/$1.json" <<JSON
{"train": {"threads": $2, "max_steps": $3},
 "checkpoint": {"dir": "$WORK/$1", "every_steps": $4, "max_to_keep": 2},
 "control": {"socket": "$WORK/$1.sock"}}
JSON
}

# Steady-state steps/s: from the first progress line (data loaded, warmed
# up) to the end of training, from the log's own timestamps.
rate() {
	/usr/bin/python3 - "$1" <<'PY'
import re, sys, datetime
t = lambda s: datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
first = last = None
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) info (training|training finished) step=(\d+)", line)
    if m:
        if first is None and m.group(2) == "training":
            first = (t(m.group(1)), int(m.group(3)))
        last = (t(m.group(1)), int(m.group(3)))
print("%.0f" % ((last[1] - first[1]) / (last[0] - first[0])) if first and last and last != first else "n/a")
PY
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for i in $(seq "$RUNS"); do
	config one 2 "$STEPS" 100000
	rm -rf "$WORK/one"
	"$MNISTD" --config "$WORK/one.json" >"$WORK/one.log" 2>&1
	rate "$WORK/one.log" >>"$WORK/one.rates"
	config two 1 "$STEPS" 100000
	rm -rf "$WORK/two"
	mpirun -np 2 "$MNISTD" --config "$WORK/two.json" >"$WORK/two.log" 2>&1
	rate "$WORK/two.log" >>"$WORK/two.rates"
	sed -n 's/.*allreduce_ms_per_step=\([0-9.]*\).*/\1/p' "$WORK/two.log" >>"$WORK/two.ar"
	sed -n 's/.*commands_us_per_step=\([0-9.]*\).*/\1/p' "$WORK/two.log" >>"$WORK/two.cmd"
done
one=$(median <"$WORK/one.rates")
two=$(median <"$WORK/two.rates")
echo "| run | steps/s (median of $RUNS, $STEPS steps) | allreduce ms/step | commands us/step |"
echo "|---|---:|---:|---:|"
echo "| mnistd, 1 process x 2 BLAS threads | $one | - | - |"
echo "| mpirun -np 2 mnistd, 1 BLAS thread each | $two | $(median <"$WORK/two.ar") | $(median <"$WORK/two.cmd") |"
echo "loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg); logs in $WORK"

if [ "${ACCURACY:-0}" = 1 ]; then
	T10K_I=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
	T10K_L=/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
	config acc1 2 30000 10000
	"$MNISTD" --config "$WORK/acc1.json" >"$WORK/acc1.log" 2>&1
	config acc2 1 30000 10000
	mpirun -np 2 "$MNISTD" --config "$WORK/acc2.json" >"$WORK/acc2.log" 2>&1
	for r in acc1 acc2; do
		printf '%s test accuracy (EMA, step 30000): ' "$r"
		"$BUILD/tools/mnistctl" predict "$WORK/$r/model.ckpt-30000.safetensors" \
			--images "$T10K_I" --labels "$T10K_L" 2>&1 | grep -o 'accuracy[=: ]*[0-9.]*' | head -1
	done
fi
