#!/usr/bin/env bash
# The one test command: installs what the tests need, then lint, type check and the test suite.
# With no arguments it also runs the per-request modules' own tests a second time, on a copy of
# the source with nothing compiled: the pure-Python build (no C compiler) must behave the same.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/ogx-env.sh   # real OGX and llama-stack for tests/e2e; fails loudly if it cannot be built
echo "== ruff" && .venv/bin/ruff check mcpproxy tests scripts setup.py $( [ -d bench ] && echo bench )
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && .venv/bin/pytest "$@"
[ $# -eq 0 ] || exit 0
echo "== pytest, pure Python (the per-request modules' tests, uncompiled)"
pure=$(mktemp -d)
trap 'rm -rf "$pure"' EXIT
tar -c --exclude='*.so' --exclude=__pycache__ --exclude=node_modules mcpproxy tests setup.py pyproject.toml \
  | tar -x -C "$pure"
ln -s "$PWD/tests/oauth_server/node_modules" "$pure/tests/oauth_server/node_modules"
cd "$pure"
MCPPROXY_PURE_PYTHON=1 MCPPROXY_TEST_LOG_DIR="$OLDPWD/.cache/test-logs" "$OLDPWD/.venv/bin/pytest" -q \
  -p no:cacheprovider tests/test_http1.py tests/test_relay.py tests/test_writes.py tests/test_watchdog.py \
  tests/test_units.py tests/test_credentials.py tests/test_tokencache.py tests/test_proxy_http.py \
  tests/test_proxy_transports.py tests/test_faults.py tests/test_policy.py tests/test_policy_units.py tests/test_native.py tests/test_pump.py
