#!/bin/sh
# Builds mnistd (release) and runs the trainer and the evaluator together on
# Fashion-MNIST: a short run (6000 steps, a checkpoint every 500) in
# $MN_DEMO_DIR (default /tmp/mnistd-demo). The evaluator's accuracy lines
# show here as each checkpoint is published; the trainer's log goes to
# $MN_DEMO_DIR/mnistd.log, and the run's curves to $MN_DEMO_DIR/report.html
# (eval.report_html). Exits non-zero if anything fails.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh

BUILD=${MN_BUILD_DIR:-build-release}
WORK=${MN_DEMO_DIR:-/tmp/mnistd-demo}
MAX_STEPS=6000
EVERY=500

if [ ! -d "$BUILD" ]; then
	meson setup "$BUILD" -Dbuildtype=release >/dev/null
fi
meson compile -C "$BUILD" >/dev/null

# A fresh run each time: an old final checkpoint would make mnistd resume at the end.
mkdir -p "$WORK"
rm -rf "$WORK/ckpt" "$WORK/best" "$WORK/metrics.jsonl" "$WORK/train.jsonl" "$WORK/report.html" "$WORK/mnistd.log"
cat >"$WORK/mnistd.json" <<EOF
{
  "train": {"max_steps": $MAX_STEPS, "metrics_file": "$WORK/train.jsonl"},
  "checkpoint": {"dir": "$WORK/ckpt", "every_steps": $EVERY},
  "control": {"socket": "$WORK/control.sock"},
  "eval": {"metrics_file": "$WORK/metrics.jsonl", "report_html": "$WORK/report.html", "best_dir": "$WORK/best"}
}
EOF

eval_pid=""
cleanup() {
	if [ -n "$eval_pid" ]; then
		kill "$eval_pid" 2>/dev/null || true
		wait "$eval_pid" 2>/dev/null || true
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "mnistd demo in $WORK: $MAX_STEPS steps, a checkpoint every $EVERY; trainer log in $WORK/mnistd.log"
# The evaluator first: it waits for the checkpoint directory to appear.
"$BUILD/evaluator/mnist-eval" --config "$WORK/mnistd.json" &
eval_pid=$!

status=0
"$BUILD/daemon/mnistd" --config "$WORK/mnistd.json" >"$WORK/mnistd.log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
	echo "demo: mnistd failed with status $status; its log:" >&2
	tail -n 20 "$WORK/mnistd.log" >&2
	exit 1
fi

# Wait (up to 60 s) for the evaluator to log the final checkpoint and to
# redraw its report page with it.
tries=0
until grep -q "\"step\":$MAX_STEPS," "$WORK/metrics.jsonl" 2>/dev/null &&
	grep -q "id=\"summary-latest-step\">$MAX_STEPS<" "$WORK/report.html" 2>/dev/null; do
	if ! kill -0 "$eval_pid" 2>/dev/null; then
		echo "demo: mnist-eval exited early" >&2
		exit 1
	fi
	tries=$((tries + 1))
	if [ "$tries" -gt 600 ]; then
		echo "demo: mnist-eval did not evaluate step $MAX_STEPS and draw its page within 60 s" >&2
		exit 1
	fi
	sleep 0.1
done

kill -TERM "$eval_pid"
status=0
wait "$eval_pid" || status=$?
eval_pid=""
if [ "$status" -ne 0 ]; then
	echo "demo: mnist-eval exited with status $status" >&2
	exit 1
fi
echo "demo: done. Checkpoints in $WORK/ckpt, one JSON line per evaluation in $WORK/metrics.jsonl"
echo "demo: the curves: file://$WORK/report.html (open it in a browser), or on this terminal:"
echo "      $BUILD/tools/mnistctl --config $WORK/mnistd.json plot"
