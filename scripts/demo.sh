#!/usr/bin/env bash
# The demo: an OAuth server, four MCP servers and mcpproxy on loopback, and tool calls through it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
