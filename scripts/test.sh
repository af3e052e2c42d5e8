#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
# The integration tests start their own nats-server processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# moto, boto3 and DuckDB for the S3 storage tests (a virtualenv under .build-venv/).
bash scripts/install-python-tools.sh > /dev/null
# The Python package and its tests' dependencies (a virtualenv under .build-venv/python).
python_venv=$(bash scripts/install-python-package.sh)
swift build --build-tests
# The public API must match api/ (a changed surface is a reviewed diff, not an accident).
bash scripts/public-api.sh --check
# The DocC catalog builds without a warning.
bash scripts/docs.sh
# One suite at a time: the fault tests start many processes, and 2 cores are shared.
swift test --skip-build --no-parallel "$@"
# The Python package: unit tests, and apps run with the real `autonomous` command.
AUTONOMOUS_BIN="$PWD/.build/debug/autonomous" "$python_venv/bin/python" -m pytest -q python/tests
