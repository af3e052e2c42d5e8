#!/usr/bin/env bash
# Installs the Python package `autonomous` (python/, editable, so edits are live) with its test
# dependencies (nats-py, pytest, pydantic; pinned, from PyPI) in a virtualenv of its own.
# Prints the virtualenv's directory. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV_DIR:-.build-venv}/python
if ! "$venv/bin/python" -c 'import autonomous, nats, pytest, pydantic' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q -e "./python[test]" >&2
fi
cd "$venv" && pwd
