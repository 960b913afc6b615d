"""The header field splitters of :mod:`mcpproxy.http1`, in Python.

``mcpproxy/_http1.c`` is the same two functions in C. Built (``setup.py``, beside the modules
mypyc compiles), it is imported in preference to this file, as an extension module always is;
this file is what a build without a C compiler runs, and the reference the C module is tested
against (``tests/test_http1.py``). In C a field block is scanned once, a bearer token eight bytes
at a step; here a decode, a split, a ``translate`` and, a line, a ``partition`` and a ``strip``
took about three times the instructions.
"""

from __future__ import annotations

import re
from typing import Final

from mcpproxy.expiring import remember

#: The bytes a header line may hold besides its CRLF: HTAB, SP and visible ASCII (checked with
#: ``bytes.translate``, which runs at memory speed where a regex over a 1 KB JWT took ~10 µs).
_LINE_BYTES: Final = bytes([0x09, *range(0x20, 0x7F)])
_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Field names already found valid, each with its lower-case form: clients send the same dozen
#: names on every request, and a dict lookup costs a fraction of the regex. Bounded (emptied
#: when full, :func:`mcpproxy.expiring.remember`), so odd names cannot grow it.
_VALID_NAMES: Final[dict[str, str]] = {}
_MAX_VALID_NAMES: Final = 256
#: Response field names already seen well formed, each with its lower-case form (bounded).
_RESPONSE_NAMES: Final[dict[str, str]] = {}


#: What :func:`request_fields` makes of a request's field block: the lines, their lower-case
#: names, and (name as sent, value) pairs; what :func:`response_fields` makes of a response's:
#: the lines, their lower-case names, and their values. Values are without surrounding SP and HTAB.
RequestFields = tuple[list[str], list[str], list[tuple[str, str]]]
ResponseFields = tuple[list[str], list[str], list[str]]


def request_fields(block: bytes) -> RequestFields | None:
    """A request's header fields (``block`` without its last CRLF); None unless each is
    ``token ":" value`` of visible ASCII, SP and HTAB, and every line ends with CRLF."""
    if not block:
        return [], [], []
    text = block.decode("latin-1")
    lines = text.split("\r\n")
    # What is left once the allowed bytes are removed must be exactly one CR LF per line break:
    # no other byte, and no CR or LF that is not part of a CRLF (the split found them all).
    if block.translate(None, _LINE_BYTES) != b"\r\n" * (len(lines) - 1):
        return None
    pairs = []
    names = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        lower = _VALID_NAMES.get(name)
        if lower is None:
            if _NAME.fullmatch(name) is None:
                return None
            lower = remember(_VALID_NAMES, name, name.lower(), _MAX_VALID_NAMES)
        pairs.append((name, value.strip(" \t")))
        names.append(lower)
    return lines, names, pairs


def response_fields(block: bytes) -> ResponseFields | None:
    """A response's header fields (``block`` without its last CRLF); None unless every line ends
    with CRLF and has a colon after a name that is not empty and neither starts nor ends with
    white space. Any other byte is taken (as Latin-1)."""
    if not block:
        return [], [], []
    text = block.decode("latin-1")
    lines = text.split("\r\n")
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks:
        return None  # a bare CR or LF
    names = []
    values = []
    for line in lines:
        name, sep, value = line.partition(":")
        lower = _RESPONSE_NAMES.get(name) if sep else None
        if lower is None:
            if not sep or not name or name != name.strip():
                return None
            lower = remember(_RESPONSE_NAMES, name, name.lower(), _MAX_VALID_NAMES)
        names.append(lower)
        values.append(value.strip(" \t"))
    return lines, names, values
