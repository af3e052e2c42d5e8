#!/usr/bin/env bash
# Installs the Python tools the storage tests use, in a virtualenv of their own (PyPI, pinned):
# moto in server mode (a local S3-compatible server), boto3 (a Python S3 client) and DuckDB with
# its httpfs extension from PyPI (a warehouse engine reading the objects back over S3).
# Prints the virtualenv's directory. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV_DIR:-.build-venv}/storage
if [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/python" -c 'import duckdb_extension_httpfs, boto3' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "moto[server]==5.2.6" "boto3==1.44.18" "duckdb==1.5.5" "duckdb-extension-httpfs==1.5.5" >&2
fi
cd "$venv" && pwd
