#!/usr/bin/env bash
# The one test command: installs what the tests need, then lint, type check and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/ogx-env.sh   # real OGX and llama-stack for tests/e2e; fails loudly if it cannot be built
echo "== ruff" && .venv/bin/ruff check mcpproxy tests scripts $( [ -d bench ] && echo bench )
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && exec .venv/bin/pytest "$@"
