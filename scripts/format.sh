#!/bin/sh
# clang-format the tree (or, with --check, fail if anything is not formatted).
set -eu
cd "$(dirname "$0")/.."
files=$(git ls-files '*.c' '*.h' 2>/dev/null || find common daemon evaluator tools tests -name '*.[ch]')
if [ "${1:-}" = "--check" ]; then
	# shellcheck disable=SC2086
	clang-format --dry-run --Werror $files
else
	# shellcheck disable=SC2086
	clang-format -i $files
fi
