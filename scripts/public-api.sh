#!/usr/bin/env bash
# The public API, listed in api/<Module>.txt: what `import Autonomous` and
# `import Components` give an app. Every other module is `package` and must list nothing.
#   scripts/public-api.sh           rewrite api/ from the current build
#   scripts/public-api.sh --check   fail (with a diff) when the build differs from api/ (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(swift package dump-symbol-graph --skip-synthesized-members 2>&1) || { echo "$out" >&2; exit 1; }
dir=$(printf '%s\n' "$out" | sed -n 's/^Files written to //p' | tail -1)
[ -d "$dir" ] || { echo "public-api: no symbol graphs were written" >&2; echo "$out" >&2; exit 1; }
python3 scripts/public-api.py "$dir" api "$@"
