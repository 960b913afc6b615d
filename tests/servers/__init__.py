"""Real MCP servers (built with the official ``mcp`` SDK) used by the test suite and benchmarks."""
