#!/bin/sh
# Regenerates README.md's pictures of a real run: runs the demo
# (scripts/demo.sh), then takes a screenshot of the report page it leaves
# with headless chromium (doc/report.png) and prints `mnistctl plot
# --terminal` of the same run at 80x24 (doc/plot-terminal.txt).
#
#   scripts/screenshot.sh
set -eu
cd "$(dirname "$0")/.."
WORK=${MN_DEMO_DIR:-/tmp/mnistd-demo}
BUILD=${MN_BUILD_DIR:-build-release}
export MN_DEMO_DIR="$WORK" MN_BUILD_DIR="$BUILD"

sh scripts/demo.sh
mkdir -p doc
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	--disable-background-networking --disable-component-update --disable-sync \
	--user-data-dir="$profile" --hide-scrollbars --window-size=1280,1040 \
	--screenshot="$PWD/doc/report.png" "file://$WORK/report.html" 2>/dev/null
COLUMNS=80 LINES=24 "$BUILD/tools/mnistctl" --config "$WORK/mnistd.json" plot --terminal \
	>doc/plot-terminal.txt
echo "screenshot: doc/report.png and doc/plot-terminal.txt from the run in $WORK"
