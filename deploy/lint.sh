#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine or cluster needed); `make lint-deploy`.
#   1. yamllint: style of docker-compose.yml and deploy/
#   2. check-jsonschema: docker-compose.yml against the Compose Specification schema
#   3. every Kubernetes overlay rendered by kustomize, then kubernetes-validate --strict
#      (unknown fields are errors; K8S_VERSION picks the API version, default 1.30.0)
# Tools come from .venv (requirements.txt) and kubectl (Debian: kubernetes-client).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV_BIN:-.venv/bin}"
KUBECTL="${KUBECTL:-kubectl}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"

echo "yamllint"
"$BIN/yamllint" --strict -c deploy/yamllint.yaml docker-compose.yml deploy/

echo "compose spec"
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml

command -v "$KUBECTL" >/dev/null 2>&1 || {
  echo "error: $KUBECTL not found (Debian: apt-get install kubernetes-client)" >&2; exit 1; }
for overlay in deploy/k8s/overlays/*/; do
  echo "kustomize + kubernetes-validate ${overlay%/} (Kubernetes $K8S_VERSION)"
  rendered="$(mktemp)"
  trap 'rm -f "$rendered"' EXIT
  # kustomize v5 prints deprecation warnings for the v2 dialect we keep on purpose (stderr).
  "$KUBECTL" kustomize "$overlay" >"$rendered" 2> >(grep -v "^# Warning: '.*' is deprecated" >&2)
  "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$rendered"
  rm -f "$rendered"
done
echo "deploy lint: ok"
