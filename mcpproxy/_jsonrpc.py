"""What the proxy reads of a JSON-RPC body without building it — in C (``mcpproxy/_jsonrpc.c``).

Built (``setup.py``, beside the modules mypyc compiles), the C module is imported in preference
to this file. Without it, :class:`mcpproxy.jsonrpc.Body` reads the method from the full parse,
and :func:`mcpproxy.policy.parse_strict` checks every object's keys as it parses and reads the
policy's fields from the messages it built, as they do whenever the C module cannot tell.
"""

from __future__ import annotations


def method_label(raw: bytes) -> str | None:
    """What ``Body.method`` says of ``raw``; None: only the full parse can tell (always, here)."""
    return None


def keys_unique(raw: bytes) -> bool:
    """True when ``raw`` is JSON whose objects repeat no key; False: only the checking parse can
    tell (always, here)."""
    return False


def message_head(raw: bytes) -> tuple[str | None, bool, str | int | None, str | None, str | None] | None:
    """``jsonrpc.head_of`` of the one message ``raw`` is, when its keys are unique; None: only the
    full parse can tell (always, here)."""
    return None
