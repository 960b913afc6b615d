"""mcpproxy: a credential-injecting reverse proxy for MCP servers behind Llama Stack / OGX."""

__version__ = "0.1.0"
