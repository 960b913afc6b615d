"""The MCP method of a JSON-RPC body, read without building it, and whether its objects repeat a
key — in C (``mcpproxy/_jsonrpc.c``).

Built (``setup.py``, beside the modules mypyc compiles), the C module is imported in preference
to this file. Without it, :class:`mcpproxy.jsonrpc.Body` reads the method from the full parse,
and :func:`mcpproxy.policy.parse_strict` checks every object's keys as it parses, as they do
whenever the C module cannot tell.
"""

from __future__ import annotations


def method_label(raw: bytes) -> str | None:
    """What ``Body.method`` says of ``raw``; None: only the full parse can tell (always, here)."""
    return None


def keys_unique(raw: bytes) -> bool:
    """True when ``raw`` is JSON whose objects repeat no key; False: only the checking parse can
    tell (always, here)."""
    return False
