#!/usr/bin/env bash
# Runs every load scenario once and prints each figure with its ratio to the raw ceilings
# measured in the same run (see LoadTests/README.md). Usage:
#
#   LoadTests/run.sh              # all scenarios (about 7 minutes after the build)
#   LoadTests/run.sh --smoke      # tiny counts: checks the scenarios and their audits only
#   LoadTests/run.sh --scenarios raw,a,b
#
# Installs what it needs from Debian (nginx-light, wrk, matplotlib, nats-server, libnats-dev,
# libjemalloc2),
# builds LoadApp and the runner in release mode, compiles the nats.c pipeline, installs the
# Python package (scenario h), runs, and
# plots LoadTests/results/latest.png from LoadTests/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || need+=(python3-matplotlib)
command -v nats-server >/dev/null || need+=(nats-server)
[ -f /usr/include/nats/nats.h ] || need+=(libnats-dev)
command -v gcc >/dev/null || need+=(gcc)
# The process engine runs the app with jemalloc when it is installed, as production does.
dpkg-query -W -f='${Status}' libjemalloc2 2>/dev/null | grep -q "install ok installed" || need+=(libjemalloc2)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${need[@]}"
fi

configuration=release
for arg in "$@"; do
  # The smoke run only checks that scenarios run and audit: a debug build is enough.
  [ "$arg" = "--smoke" ] && configuration=debug
done
swift build -c "$configuration" --product LoadApp
swift build -c "$configuration" --product LoadRunner
mkdir -p .build/loadtests
gcc -O2 -o .build/loadtests/pipeline LoadTests/raw/pipeline.c -lnats -lpthread
# Scenario h: the Python package with nats-py, for the app's Python worker and the nats-py pipeline.
python_venv=$(bash scripts/install-python-package.sh)

out=LoadTests/results/latest.json
".build/$configuration/LoadRunner" --app ".build/$configuration/LoadApp" --raw-pipeline .build/loadtests/pipeline \
  --python "$python_venv/bin/python" --out "$out" "$@"
/usr/bin/python3 LoadTests/plot.py "$out" LoadTests/results/latest.png
