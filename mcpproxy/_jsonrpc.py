"""The MCP method of a JSON-RPC body, read without building it — in C (``mcpproxy/_jsonrpc.c``).

Built (``setup.py``, beside the modules mypyc compiles), the C module is imported in preference
to this file. Without it, :class:`mcpproxy.jsonrpc.Body` reads the method from the full parse,
as it does whenever the C module cannot tell (None).
"""

from __future__ import annotations


def method_label(raw: bytes) -> str | None:
    """What ``Body.method`` says of ``raw``; None: only the full parse can tell (always, here)."""
    return None
