#!/usr/bin/env bash
# Formats the Swift sources with the committed .swift-format, or with --check fails (naming
# file and line) where they differ from it. CI runs the check.
# Examples/QuickStart is the README's "An app", laid out by hand for reading; it is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tracked files and new ones git does not ignore, so a file not added yet is checked too.
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.swift' | grep -v '^Examples/QuickStart/')
if [ "${1:-}" = "--check" ]; then
    swift format lint --strict --parallel "${files[@]}"
    echo "format: ${#files[@]} files match .swift-format"
else
    swift format format --in-place --parallel "${files[@]}"
fi
