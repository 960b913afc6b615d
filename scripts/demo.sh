#!/usr/bin/env bash
# The demo: an OAuth server, MCP servers and mcpproxy on loopback, and tool calls through it.
#   ./scripts/demo.sh         the seed stories with the MCP SDK client
#   ./scripts/demo.sh --ogx   the seed-000 story through a real OGX server (builds .ogx-venv once)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "${1:-}" = "--ogx" ]; then
  bash scripts/ogx-env.sh ogx
  exec .venv/bin/python scripts/demo_ogx.py
fi
exec .venv/bin/python scripts/demo.py "$@"
