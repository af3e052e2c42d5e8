#!/usr/bin/env bash
# Installs the system packages Autonomous needs on a Debian 12 machine.
# Used by the README's first command and by .ci/run; safe to run again.
set -euo pipefail
packages=(nats-server libnats-dev libssl-dev libcurl4-openssl-dev libsqlite3-dev zlib1g-dev postgresql libjemalloc2 openssl curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
