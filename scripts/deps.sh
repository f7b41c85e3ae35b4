#!/bin/sh
# Installs the Debian packages mnistd needs to build, run and test, if any
# are missing, plus any package names given as arguments (scripts/fuzz.sh
# adds clang's). Safe to run again; does nothing when everything is present.
#
#   scripts/deps.sh [PACKAGE...]
set -eu

PACKAGES="gcc libc6-dev meson ninja-build pkg-config libuv1-dev libcjson-dev libopenblas-dev
check zlib1g-dev dataset-fashion-mnist python3 systemd strace bindfs $*"
# Data-parallel training under mpirun (mnistd's mpi option) and its tests.
PACKAGES="$PACKAGES libopenmpi-dev openmpi-bin"
# Prometheus metrics (tests/e2e/test_metrics.py): promtool checks the textfiles
# and the alerting rules, a real node-exporter serves the textfiles.
PACKAGES="$PACKAGES prometheus prometheus-node-exporter"
# Curves (mnistctl plot, eval.report_html): gnuplot draws them; the tests
# load the report page in headless chromium.
PACKAGES="$PACKAGES gnuplot-nox chromium"
# mnistctl export writes ONNX with protobuf-c; its tests check the files with
# ONNX's checker (python3-onnx) and run them in ONNX Runtime (the npm package
# onnxruntime-node, which needs node and npm: tests/onnxruntime).
PACKAGES="$PACKAGES libprotobuf-c-dev protobuf-c-compiler python3-onnx nodejs"
# A Node.js from elsewhere (such as NodeSource's) brings its own npm, which
# Debian's npm package would conflict with.
command -v npm >/dev/null 2>&1 || PACKAGES="$PACKAGES npm"

missing=""
for p in $PACKAGES; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$status" in
	"install ok installed") ;;
	*) missing="$missing $p" ;;
	esac
done

if [ -n "$missing" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "mnistd: missing packages:$missing (run as root, or install them)" >&2
		exit 1
	fi
	echo "mnistd: installing$missing" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
