#!/bin/sh
# Trains the default recipe (784-500-10, 30000 steps, Fashion-MNIST) with a
# release build and prints the test accuracy of the EMA and raw weights at
# several steps, measured by an independent numpy forward pass
# (bench/st_eval.py) and by mnistctl predict.
#
# usage: [SEED=N] bench/accuracy.sh [BUILD_DIR]   (default build-release; SEED sets train.seed)
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build-release}
[ -d "$BUILD" ] || meson setup "$BUILD" -Dbuildtype=release >/dev/null
meson compile -C "$BUILD" >/dev/null
WORK=$(mktemp -d /tmp/mnistd-acc.XXXXXX)
SEED_KEY=
[ -z "${SEED:-}" ] || SEED_KEY=" \"model\": {\"seed\": $SEED},"
cat > "$WORK/mnistd.json" <<JSON
{"checkpoint": {"dir": "$WORK/ckpt", "every_steps": 1000, "max_to_keep": 0},$SEED_KEY
 "control": {"socket": "$WORK/control.sock"}}
JSON
start=$(date +%s)
"$BUILD/daemon/mnistd" --config "$WORK/mnistd.json" > "$WORK/mnistd.log" 2>&1
end=$(date +%s)
T10K_I=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
T10K_L=/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
printf '%-8s %-12s %-12s %-16s\n' step ema_numpy raw_numpy ema_mnistctl
for s in 1000 3000 10000 20000 30000; do
	f="$WORK/ckpt/model.ckpt-$s.safetensors"
	ema=$(/usr/bin/python3 bench/st_eval.py "$f" | sed 's/.*accuracy=//')
	raw=$(/usr/bin/python3 bench/st_eval.py --raw "$f" | sed 's/.*accuracy=//')
	ctl=$("$BUILD/tools/mnistctl" predict "$f" --images "$T10K_I" --labels "$T10K_L" 2>/dev/null |
		sed -n 's/.*accuracy[=: ]*\([0-9.]*\).*/\1/p' | head -1)
	printf '%-8s %-12s %-12s %-16s\n' "$s" "$ema" "$raw" "${ctl:-n/a}"
done
echo "training wall time: $((end - start)) s (30000 steps); work dir $WORK"
