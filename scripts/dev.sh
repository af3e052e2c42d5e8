#!/usr/bin/env bash
# Installs what is missing and runs the OrderFlow example in dev mode on http://localhost:3000.
# Extra arguments go to `OrderFlow dev` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build --product OrderFlow
exec .build/debug/OrderFlow dev "$@"
