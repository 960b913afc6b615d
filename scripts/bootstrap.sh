#!/usr/bin/env bash
# Installs everything mcpproxy's demo, tests and benchmarks need, idempotently:
# a Python virtualenv (.venv) with pinned packages, the test OAuth server's Node packages,
# and redis-server from Debian's packages. Safe to run repeatedly; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }

# pip's output only when it fails (its warnings about local indexes and editable installs are noise)
quiet() { local out; out=$("$@" 2>&1) || { printf '%s\n' "$out" | grep -v '^WARNING: Location' >&2; return 1; }; }

# --- Python ---------------------------------------------------------------------------------
want=$(stamp requirements-dev.lock pyproject.toml)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: creating .venv with $($PY --version)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  quiet .venv/bin/python -m pip install -q --upgrade pip
  quiet .venv/bin/python -m pip install -q -r requirements-dev.lock
  echo "$want" > .venv/.stamp
fi

# --- mcpproxy itself, editable; its per-request modules compiled in place by mypyc ------------
# (setup.py, mcpproxy/native.py). An extension module is imported in preference to its .py file,
# so they are rebuilt whenever a source changes, and when the packages change (mypyc's runtime
# comes with mypy); tests/conftest.py refuses stale ones. MCPPROXY_PURE_PYTHON=1 installs without
# compiling.
want="$(.venv/bin/python mcpproxy/native.py) pure=${MCPPROXY_PURE_PYTHON:-0} packages=$(cat .venv/.stamp)"
if [ "$(cat .venv/.package-stamp 2>/dev/null)" != "$want" ]; then
  find mcpproxy -name '*.so' -delete
  rm -f mcpproxy__mypyc.*.so
  case "${MCPPROXY_PURE_PYTHON:-0}" in
    0|'') echo "bootstrap: compiling the per-request modules with mypyc (about a minute)" >&2 ;;
  esac
  quiet .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > .venv/.package-stamp
fi

# --- Node: the test OAuth server (oidc-provider) ---------------------------------------------
if [ -f tests/oauth_server/package-lock.json ]; then
  want=$(stamp tests/oauth_server/package-lock.json)
  if [ "$(cat tests/oauth_server/node_modules/.stamp 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: npm ci in tests/oauth_server" >&2
    (cd tests/oauth_server && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > tests/oauth_server/node_modules/.stamp
  fi
fi

# --- redis-server (shared token cache tests) -------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing redis-server from Debian's packages" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "bootstrap: redis-server missing; run: sudo apt-get install -y redis-server" >&2
    exit 1
  fi
fi
