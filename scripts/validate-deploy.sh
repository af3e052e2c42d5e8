#!/usr/bin/env bash
# Validates the deployment files offline, as CI does:
#  - renders every kustomize overlay with `kubectl kustomize`;
#  - validates the rendered manifests with kubernetes-validate (strict) for each Kubernetes
#    version we claim;
#  - scans them with checkov (in its own virtualenv: it installs a conflicting `hcl2`);
#  - lints the Helm chart (a real helm v4, scripts/install-helm.sh), renders it with its
#    defaults and with worker groups and a digest, and validates and scans the output as the
#    overlays; values that open the cluster without saying so must be refused;
#  - parses the Nomad job with python-hcl2 and checks its groups, checks and scaling blocks.
# Each validator is also run on a deliberately broken copy, which must fail, so a validator
# that silently checks nothing fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=(1.29 1.30 1.31 1.32 1.33)
# Checkov checks we do not satisfy, and why (also in docs/deploy.md):
#  CKV_K8S_43 "Image should use digest": images are pinned by release tag; a digest exists
#    only after the image is pushed. Set `images: - digest:` in your overlay, or pass
#    `autonomous deploy --image name@sha256:…`, to pin digests in production.
#  CKV_K8S_35 "Prefer secrets as files over environment variables": Autonomous reads secrets
#    from the environment by design (Secret.secret("NAME")); they come from the Secret
#    `autonomous-secrets` and are never logged.
CHECKOV_SKIPS="CKV_K8S_43,CKV_K8S_35"

venvs=${VENV_DIR:-.build-venv}
if [ ! -x "$venvs/validate/bin/kubernetes-validate" ]; then
  python3 -m venv "$venvs/validate"
  "$venvs/validate/bin/pip" install -q kubernetes-validate python-hcl2
fi
if [ ! -x "$venvs/checkov/bin/checkov" ]; then
  python3 -m venv "$venvs/checkov"
  "$venvs/checkov/bin/pip" install -q checkov
fi
validate="$venvs/validate/bin/kubernetes-validate"
checkov="$venvs/checkov/bin/checkov"
python="$venvs/validate/bin/python"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failures=0

# Hardened defaults: every overlay requires API keys; the production ones serve HTTPS only.
hardened() { # file, whether TLS is required
  grep -q 'AUTONOMOUS_REQUIRE_API_KEY: "true"' "$1" || { echo "FAIL $1: API keys are not required"; return 1; }
  grep -q 'AUTONOMOUS_ADMIN_HOST: 127.0.0.1' "$1" || { echo "FAIL $1: the admin API is not on loopback"; return 1; }
  if [ "$2" = tls ]; then
    grep -q 'secretName: autonomous-tls' "$1" || { echo "FAIL $1: the Ingress has no tls:"; return 1; }
    grep -q 'force-ssl-redirect: "true"' "$1" || { echo "FAIL $1: plain HTTP is not redirected"; return 1; }
  fi
}

# Validates and scans one rendered file: hardened defaults, kubernetes-validate for every
# version, checkov.
check_rendered() { # file, name, whether TLS is required
  local file=$1 name=$2 need=$3
  hardened "$file" "$need" || failures=$((failures + 1))
  local count
  count=$(grep -c '^kind:' "$file")
  for version in "${K8S_VERSIONS[@]}"; do
    if ! "$validate" --strict --quiet -k "$version" "$file"; then
      echo "FAIL kubernetes-validate $name (Kubernetes $version)"; failures=$((failures + 1))
    fi
  done
  if "$checkov" -f "$file" --framework kubernetes --compact --quiet --skip-download \
      --skip-check "$CHECKOV_SKIPS" > "$file.checkov" 2>&1; then
    echo "ok   $name: $count resources valid for Kubernetes ${K8S_VERSIONS[*]}; checkov: $(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*' "$file.checkov")"
  else
    cat "$file.checkov"; echo "FAIL checkov $name"; failures=$((failures + 1))
  fi
}

for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" > "$out/$name.yaml"
  case "$name" in production*) need=tls ;; *) need=keys ;; esac
  check_rendered "$out/$name.yaml" "$name" "$need"
done

# The Helm chart: the same hardened defaults as the production overlay.
helm=$(bash scripts/install-helm.sh "$venvs/bin")
chart=deploy/helm/autonomous
if ! "$helm" lint --strict "$chart" > "$out/helm-lint.txt" 2>&1; then
  cat "$out/helm-lint.txt"; echo "FAIL helm lint"; failures=$((failures + 1))
fi
cat > "$out/groups.values.yaml" <<'VALUES'
image: {repository: registry.example.com/autonomous/app, digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
workerGroups:
  - {name: slow_llm, handlers: [enrich_order], replicas: 2}
coordinator: {replicas: 1}
tracing: {otlpEndpoint: "http://otel-collector.observability:4318", sampler: parentbased_traceidratio, ratio: "0.25"}
VALUES
cat > "$out/python.values.yaml" <<'VALUES'
image: {repository: registry.example.com/autonomous/runtime, tag: "0.1.0"}
python:
  enabled: true
  servesGraph: true
  image: {repository: registry.example.com/shop/slackbot-py, tag: "1.0"}
  module: /app/main.py
  replicas: 3
graph: '{"format_version": 1, "app": "slackbot", "tenant": "default", "stream": "AUT_DEFAULT", "tables": [], "handlers": [], "routes": [], "schedules": []}'
VALUES
for variant in default groups python; do
  args=(template autonomous "$chart" --namespace autonomous)
  [ "$variant" = groups ] && args+=(-f "$out/groups.values.yaml")
  [ "$variant" = python ] && args+=(-f "$out/python.values.yaml")
  if ! "$helm" "${args[@]}" > "$out/helm-$variant.yaml" 2> "$out/helm-$variant.err"; then
    cat "$out/helm-$variant.err"; echo "FAIL helm template ($variant)"; failures=$((failures + 1)); continue
  fi
  check_rendered "$out/helm-$variant.yaml" "helm chart ($variant values)" tls
done
grep -q 'args: \["worker","--handlers","enrich_order"\]' "$out/helm-groups.yaml" \
  && grep -q 'args: \["worker","--except-handlers","enrich_order"\]' "$out/helm-groups.yaml" \
  && grep -q 'name: autonomous-worker-slow-llm' "$out/helm-groups.yaml" \
  && grep -q 'app@sha256:0123' "$out/helm-groups.yaml" \
  || { echo "FAIL helm chart: worker groups or the image digest are not rendered"; failures=$((failures + 1)); }
grep -q 'OTEL_EXPORTER_OTLP_ENDPOINT: "http://otel-collector.observability:4318"' "$out/helm-groups.yaml" \
  && grep -q 'OTEL_TRACES_SAMPLER_ARG: "0.25"' "$out/helm-groups.yaml" \
  && ! grep -q 'OTEL_' "$out/helm-default.yaml" \
  || { echo "FAIL helm chart: tracing values are not rendered as asked"; failures=$((failures + 1)); }
# A Python app: Python workers with their own image and the worker's NATS user; the Swift roles
# serve the mounted graph.
grep -q 'name: autonomous-python-worker' "$out/helm-python.yaml" \
  && grep -q 'image: "registry.example.com/shop/slackbot-py:1.0"' "$out/helm-python.yaml" \
  && grep -q 'args: \["-m","autonomous","worker","/app/main.py"\]' "$out/helm-python.yaml" \
  && grep -q 'args: \["serve","ingress","/etc/autonomous/graph/graph.json"\]' "$out/helm-python.yaml" \
  && grep -q 'name: autonomous-graph' "$out/helm-python.yaml" \
  || { echo "FAIL helm chart: the Python values are not rendered as asked"; failures=$((failures + 1)); }
if "$helm" template autonomous "$chart" --set python.enabled=true > /dev/null 2>&1; then
  echo "FAIL helm chart accepted python.enabled without a graph and an image"; failures=$((failures + 1))
fi

for unsafe in "--set requireAPIKey=false" "--set httpIngress.tls.enabled=false" "--set tenant=../x" "--set-string worker.replicas=two" \
    "--set tracing.otlpEndpoint=otel:4318" "--set tracing.sampler=sometimes"; do
  # shellcheck disable=SC2086
  if "$helm" template autonomous "$chart" $unsafe > /dev/null 2>&1; then
    echo "FAIL helm chart accepted $unsafe"; failures=$((failures + 1))
  fi
done
if ! "$helm" template autonomous "$chart" --set requireAPIKey=false --set allowOpen=true \
    --set httpIngress.tls.enabled=false --set allowPlainHTTP=true > "$out/helm-open.yaml" 2>&1; then
  echo "FAIL helm chart refused an explicitly open install"; failures=$((failures + 1))
elif hardened "$out/helm-open.yaml" keys > /dev/null; then
  echo "FAIL the hardening check accepted a chart rendered without API keys"; failures=$((failures + 1))
fi

# `autonomous deploy main.py` of the Python SlackBot onto the production overlay (dry run):
# every object in the overlay's namespace, and valid and hardened as the overlay itself.
if [ -x .build/debug/autonomous ] && [ -x "$venvs/python/bin/python" ]; then
  work="$out/python-app"; mkdir -p "$work"
  cp Examples/python/slackbot/main.py "$work/main.py"
  printf '%s' '{"deployment": {"engine": "kubernetes", "target": "production", "image": "registry.example.com/autonomous/runtime:0.1.0", "python_image": "registry.example.com/shop/slackbot-py:1.0"}}' > "$work/autonomous.json"
  if (cd "$work" && AUTONOMOUS_PYTHON="$OLDPWD/$venvs/python/bin/python" "$OLDPWD/.build/debug/autonomous" deploy main.py \
        --manifests "$OLDPWD/deploy/k8s" --dry-run > deploy.log 2>&1); then
    rendered="$work/.autonomous/deploy/kubernetes-production/rendered.yaml"
    check_rendered "$rendered" "kubernetes production overlay with a Python app" tls
    grep -q 'name: python-worker' "$rendered" && grep -q -- '- serve' "$rendered" \
      || { echo "FAIL python app on kubernetes: no python-worker or no serve"; failures=$((failures + 1)); }
    if "$python" - "$rendered" <<'PY'
import sys, yaml
missing = [d["kind"] + "/" + d["metadata"]["name"] for d in yaml.safe_load_all(open(sys.argv[1]))
           if d and d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding") and d["metadata"].get("namespace") != "autonomous"]
print("objects outside the namespace:", missing) if missing else None
sys.exit(1 if missing else 0)
PY
    then :; else echo "FAIL python app on kubernetes: objects outside the overlay's namespace"; failures=$((failures + 1)); fi
  else
    cat "$work/deploy.log"; echo "FAIL autonomous deploy main.py (kubernetes, dry run)"; failures=$((failures + 1))
  fi
fi

if "$python" scripts/check-nomad-job.py deploy/nomad/autonomous.nomad.hcl; then :; else
  echo "FAIL nomad job"; failures=$((failures + 1))
fi

# NATS users: every role of every overlay and of the chart connects as its own user, and the
# local overlay's NATS runs with the users `autonomous nats-auth` prints.
for file in "$out"/local.yaml "$out"/production.yaml "$out"/helm-default.yaml; do
  for role in coordinator ingress worker; do
    grep -q "value: $role\$" "$file" && grep -q "key: $role\$" "$file" \
      || { echo "FAIL $file: the $role role has no NATS user of its own"; failures=$((failures + 1)); }
  done
done
grep -q 'authorization.conf' "$out/local.yaml" || { echo "FAIL local overlay: NATS runs without users"; failures=$((failures + 1)); }
if [ -x .build/debug/autonomous ]; then
  .build/debug/autonomous nats-auth | diff -q - deploy/k8s/overlays/local/nats-authorization.conf > /dev/null \
    || { echo "FAIL deploy/k8s/overlays/local/nats-authorization.conf differs from \`autonomous nats-auth\`"; failures=$((failures + 1)); }
fi
for role in coordinator ingress worker; do
  grep -q "nats_password_$role" deploy/nomad/autonomous.nomad.hcl || { echo "FAIL nomad job: no NATS user for $role"; failures=$((failures + 1)); }
done

for setting in 'AUTONOMOUS_REQUIRE_API_KEY = "true"' 'AUTONOMOUS_ADMIN_HOST  = "127.0.0.1"' 'traefik.http.routers.autonomous.tls=true'; do
  grep -qF "$setting" deploy/nomad/autonomous.nomad.hcl || { echo "FAIL nomad job: no $setting"; failures=$((failures + 1)); }
done

# Self-checks: broken inputs must be refused.
grep -v 'secretName: autonomous-tls' "$out/production.yaml" > "$out/plain.yaml"
if hardened "$out/plain.yaml" tls > /dev/null; then
  echo "FAIL the hardening check accepted an Ingress without tls:"; failures=$((failures + 1))
fi
sed 's/replicas: 2/replicas: "two"/' deploy/k8s/base/worker-deployment.yaml > "$out/broken.yaml"
if "$validate" --strict --quiet -k 1.29 "$out/broken.yaml" > /dev/null 2>&1; then
  echo "FAIL kubernetes-validate accepted a broken manifest"; failures=$((failures + 1))
fi
sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/' "$out/production.yaml" > "$out/insecure.yaml"
if "$checkov" -f "$out/insecure.yaml" --framework kubernetes --compact --quiet --skip-download --skip-check "$CHECKOV_SKIPS" > /dev/null 2>&1; then
  echo "FAIL checkov accepted a writable root filesystem"; failures=$((failures + 1))
fi
awk '/^  group "worker"/{skip=1} skip&&/^  group "coordinator"/{skip=0} !skip' deploy/nomad/autonomous.nomad.hcl > "$out/broken.nomad.hcl"
if "$python" scripts/check-nomad-job.py "$out/broken.nomad.hcl" > /dev/null 2>&1; then
  echo "FAIL the Nomad check accepted a job without a worker group"; failures=$((failures + 1))
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures deployment check(s) failed"
  exit 1
fi
echo "deployment files: all checks passed"
