#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a running app with docs/openapi.yaml, as CI does:
# OrderFlow in embedded dev mode on free loopback ports, then the ingress operations (record
# API, health) and the admin API operations with the admin token. Checks: no 5xx, and every
# status code, content type, header and body as the document says. Prints the counts.
#
#   scripts/schemathesis.sh [MAX_EXAMPLES]   # per operation; default 100
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-100}
venvs=${VENV_DIR:-.build-venv}
if [ ! -x "$venvs/schemathesis/bin/schemathesis" ]; then
  python3 -m venv "$venvs/schemathesis"
  "$venvs/schemathesis/bin/pip" install -q "schemathesis==4.32.5"
fi
schemathesis="$venvs/schemathesis/bin/schemathesis"
[ -x .build/debug/OrderFlow ] || swift build --product OrderFlow

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port); admin=$(free_port); health=$(free_port)
work=$(mktemp -d)
token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
AUTONOMOUS_ADMIN_TOKEN=$token .build/debug/OrderFlow dev --port "$port" --admin-port "$admin" --health-port "$health" \
  --data-dir "$work/data" --log-level warning > "$work/app.log" 2>&1 &
app=$!
cleanup() { kill "$app" 2>/dev/null || true; wait "$app" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && break
  kill -0 "$app" 2>/dev/null || { cat "$work/app.log"; echo "FAIL the app exited"; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null

# The record API with a real API key of tenant default, so requests reach validation.
key=$(curl -fsS -X POST -H "Authorization: Bearer $token" "http://127.0.0.1:$admin/v1/admin/tenants/default/keys" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance
failures=0
run() { # name, base URL, tag, extra arguments
  local name=$1 url=$2 tag=$3; shift 3
  echo "== schemathesis: $name ($url, tag $tag, $examples examples per operation)"
  if "$schemathesis" run docs/openapi.yaml --url "$url" --include-tag "$tag" --checks "$checks" \
      --max-examples "$examples" --seed 20261207 --request-timeout 30 --no-color \
      --report junit --report-junit-path "$work/$name.xml" "$@" > "$work/$name.out" 2>&1; then
    status=passed
  else
    status=FAILED; failures=$((failures + 1))
  fi
  tail -n 25 "$work/$name.out"
  python3 - "$work/$name.xml" "$name" "$status" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
tests = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
print(f"schemathesis {sys.argv[2]}: {tests} operations tested, {failed} with failures: {sys.argv[3]}")
PY
}
run ingress "http://127.0.0.1:$port" ingress -H "Authorization: Bearer $key"
run admin "http://127.0.0.1:$admin" admin -H "Authorization: Bearer $token"
if ! kill -0 "$app" 2>/dev/null; then echo "FAIL the app died during the run"; cat "$work/app.log"; failures=$((failures + 1)); fi
[ "$failures" -eq 0 ] || { echo "schemathesis: $failures run(s) failed"; exit 1; }
echo "schemathesis: every answer matched docs/openapi.yaml"
