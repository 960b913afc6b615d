"""Which modules are compiled to C with mypyc, and which of them this process runs compiled.

Every relayed request runs through the modules in :data:`COMPILED`. ``setup.py`` compiles them
with mypyc when a C compiler and Python's headers are present (``pip install .``, and the
bootstrap's editable install, which builds them in place); otherwise, or with
``MCPPROXY_PURE_PYTHON=1``, the same source runs as pure Python. Compiled, a relayed request
takes about a third fewer instructions (``bench/PROFILE.md``); behaviour is the same, and the
test command runs the hot path's tests both ways.

The classes these modules build on every request (heads, matches, subjects, outcomes) are written
out, ``__slots__`` and ``__init__``, rather than declared as dataclasses or named tuples: mypyc
compiles such a class natively, but leaves a dataclass's generated ``__init__`` and a named
tuple's ``__new__`` interpreted, and those calls were a tenth of a compiled request.

Only the standard library is imported here: ``setup.py`` reads this file before mcpproxy exists.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

#: The per-request modules: parsing, header policy, credentials, routing, the relay, the access
#: line and metrics. The rest (config loading, the OAuth clients, aiohttp's app setup) runs once
#: or rarely and stays interpreted.
COMPILED: Final = (
    "mcpproxy.credentials",
    "mcpproxy.expiring",
    "mcpproxy.headers",
    "mcpproxy.http1",
    "mcpproxy.jsonrpc",
    "mcpproxy.logs",
    "mcpproxy.metrics",
    "mcpproxy.oauth.tokens",
    "mcpproxy.policy",
    "mcpproxy.providerdata",
    "mcpproxy.requestid",
    "mcpproxy.routing",
    "mcpproxy.secrets",
    "mcpproxy.tokencache",
    "mcpproxy.upstream_auth",
    "mcpproxy.web.proxy",
    "mcpproxy.web.relay",
    "mcpproxy.web.upstream",
    "mcpproxy.web.watchdog",
    "mcpproxy.web.writes",
)

#: Modules written in C, built beside the compiled ones, each from a ``.c`` file that has a
#: ``.py`` twin of the same name, which runs when the C is not built. Two where mypyc would turn a
#: byte-by-byte Python loop into a C call a byte: the head parsers (``mcpproxy/_http1.c``, which
#: scan a head a word at a time; the twin is the reference they are tested against), and the
#: reading of a JSON-RPC body's method without building the body (``mcpproxy/_jsonrpc.c``, tested
#: against ``json.loads``; without it the body is parsed). One where compiled Python builds and
#: joins a dozen strings: the access line (``mcpproxy/_access.c``, written once into a buffer;
#: tested against its twin). And one that runs without the interpreter at all: the relay of a
#: long stream's rest, in a thread of its own (``mcpproxy/_pump.c``; see mcpproxy.web.offload).
C_MODULES: Final = ("mcpproxy._access", "mcpproxy._http1", "mcpproxy._jsonrpc", "mcpproxy._pump")

_EXTENSION_SUFFIXES: Final = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def pure_python_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``MCPPROXY_PURE_PYTHON`` asks for a build with nothing compiled."""
    return environ.get("MCPPROXY_PURE_PYTHON", "") not in ("", "0")


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED` and :data:`C_MODULES` that an import here loads from a C
    extension."""
    found = []
    for name in (*COMPILED, *C_MODULES):
        spec = importlib.util.find_spec(name)
        if spec is not None and (spec.origin or "").endswith(_EXTENSION_SUFFIXES):
            found.append(name)
    return found


def describe() -> str:
    """One phrase for ``--version`` and the start-up log line."""
    found = compiled_modules()
    if not found:
        return "pure Python"
    count = len([name for name in found if name in COMPILED])
    c = " and C" if set(C_MODULES) <= set(found) else ""
    return f"compiled with mypyc ({count} of {len(COMPILED)} per-request modules){c}"


def source_digest(root: Path) -> str:
    """SHA-256 over ``setup.py`` and every module of the package under ``root``, Python or C.

    An in-place build is current while this digest is the one it was built from: the bootstrap
    records it, and the test suite refuses to run extensions built from other sources (an
    extension module is imported in preference to its ``.py`` file, so an edit would go unseen).
    """
    digest = hashlib.sha256()
    sources = [*(root / "mcpproxy").rglob("*.py"), *(root / "mcpproxy").rglob("*.c")]
    for path in [root / "setup.py", *sorted(sources)]:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()


if __name__ == "__main__":  # `python mcpproxy/native.py`: the digest, for the bootstrap
    print(source_digest(Path(__file__).resolve().parent.parent))
