#!/usr/bin/env bash
# Installs what is missing and runs the OrderFlow example in dev mode on http://localhost:3000.
# Extra arguments go to `OrderFlow dev` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Only what OrderFlow and the `autonomous` command need; both share every dependency.
if [ ! -x .build/debug/OrderFlow ] || [ ! -x .build/debug/autonomous ]; then
  echo "Building OrderFlow and the autonomous command. The first build compiles SwiftNIO, Hummingbird,"
  echo "PostgresNIO and friends: several minutes on 2 cores. Later runs take seconds."
fi
swift build --product OrderFlow
swift build --product autonomous
exec .build/debug/OrderFlow dev "$@"
