"""The request and response head parsers of :mod:`mcpproxy.http1`, in Python.

``mcpproxy/_http1.c`` is the same functions in C (its comment says what each returns). Built
(``setup.py``, beside the modules mypyc compiles), it is imported in preference to this file, as
an extension module always is; this file is what a build without a C compiler runs, and the
reference the C module is tested against (``tests/test_http1.py``). In C a head is scanned once,
a bearer token eight bytes at a step, and only the objects the relay keeps are built; compiled
with mypyc, this took about twice the instructions (a decode, a split, a ``translate``, and, a
line, a ``partition`` and a ``strip``).
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


#: What :func:`response_head` makes of an upstream's head: status, reason, the field lines, their
#: lower-case names, the framing (the index of ``mcpproxy.http1.Framing``'s member: none, length,
#: chunked, close), the Content-Length (0 unless framed by it), whether the connection may be
#: reused, and the media type in lower case ("" without one).
ResponseHeadParts = tuple[int, str, list[str], list[str], int, int, bool, str]
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)
_STATUS_LINE_START: Final = ("HTTP/1.1 ", "HTTP/1.0 ")

#: What :func:`request_head` makes of a head the relay serves: method, target, the field lines,
#: their lower-case names, (name as sent, value) pairs, the Content-Length (0 without one),
#: whether the connection stays open, and the Host.
RequestHeadParts = tuple[str, str, list[str], list[str], list[tuple[str, str]], int, bool, str]

#: The methods the relay serves (``mcpproxy.http1.RELAYED_METHODS``).
_METHODS: Final = frozenset({b"POST", b"GET", b"DELETE"})
#: An origin-form request target of visible ASCII.
_TARGET: Final = re.compile(rb"/[\x21-\x7e]*")
#: Request fields the relay leaves to aiohttp (a body framed otherwise, a protocol switch).
_NOT_RELAYED: Final = frozenset({"transfer-encoding", "expect", "upgrade", "http2-settings"})


#: What :func:`_request_fields` makes of a request's field block: the lines, their lower-case
#: names, and (name as sent, value) pairs; what :func:`_response_fields` makes of a response's:
#: the lines, their lower-case names, and their values. Values are without surrounding SP and HTAB.
RequestFields = tuple[list[str], list[str], list[tuple[str, str]]]
ResponseFields = tuple[list[str], list[str], list[str]]


def _request_fields(block: bytes) -> RequestFields | None:
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


def _response_fields(block: bytes) -> ResponseFields | None:
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


def request_head(block: bytes) -> RequestHeadParts | None:
    """A whole request head (``block`` ends with the blank line) in the subset the relay serves,
    in pieces; None for anything else (:mod:`mcpproxy.http1` lists the subset)."""
    if not block.endswith(b"\r\n\r\n"):
        return None
    line_end = block.find(b"\r\n")
    parts = block[:line_end].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in _METHODS:
        return None
    if _TARGET.fullmatch(parts[1]) is None or len(block) == line_end + 4:  # no field: no Host
        return None
    fields = _request_fields(block[line_end + 2 : -4])
    if fields is None:
        return None
    lines, names, pairs = fields
    if not _NOT_RELAYED.isdisjoint(names) or names.count("host") != 1:
        return None
    values = [value for _, value in pairs]
    lengths = _named(names, values, "content-length")
    if len(lengths) > 1 or (lengths and not _decimal(lengths[0])):
        return None
    keep_alive = "close" not in ",".join(_named(names, values, "connection")).lower()
    length = int(lengths[0]) if lengths else 0
    host = _named(names, values, "host")[0]
    return parts[0].decode(), parts[1].decode(), lines, names, pairs, length, keep_alive, host


def find_head_end(data: bytes | bytearray) -> int:
    """Where the head in ``data`` ends (just past its first CRLF CRLF), or -1."""
    end = data.find(b"\r\n\r\n")
    return end + 4 if end >= 0 else -1


def encode_head(start: str, lines: list[str], body: bytes) -> bytes:
    """``start`` and each line, each followed by CRLF, a blank line, then ``body``; the text
    encoded as Latin-1 (``UnicodeEncodeError`` past U+00FF)."""
    return "\r\n".join([start, *lines, "", ""]).encode("latin-1") + body


def _named(names: list[str], values: list[str], name: str) -> list[str]:
    """The values of the fields called ``name`` (lower case), in order."""
    return [value for lower, value in zip(names, values, strict=True) if lower == name]


def _decimal(value: str) -> bool:
    """1 to 15 ASCII digits (``str.isdigit`` alone also takes other scripts' digits)."""
    return 0 < len(value) <= 15 and value.isascii() and value.isdigit()


def response_head(block: bytes) -> ResponseHeadParts | str:
    """An upstream's head (``block`` ends with the blank line) in pieces, or what is wrong with
    it: lenient as to content, strict as to framing."""
    if not block.endswith(b"\r\n\r\n"):
        return "malformed header field"
    line_end = block.find(b"\r\n")
    status_line = block[:line_end].decode("latin-1")
    if "\r" in status_line or "\n" in status_line:
        return "malformed header field"  # a bare CR or LF
    code, rest = status_line[9:12], status_line[12:]
    if (
        status_line[:9] not in _STATUS_LINE_START
        or len(code) != 3
        or not (code.isascii() and code.isdigit())
        or (rest and rest[0] != " ")
    ):
        return "malformed status line"
    fields = _response_fields(block[line_end + 2 : -4])  # b"" when there is no field
    if fields is None:
        return "malformed header field"
    lines, names, values = fields
    framing = _frame(int(code), names, values, status_line[7] == "1")
    if isinstance(framing, str):
        return framing
    kind, length, keep_alive, content_type = framing
    return int(code), rest[1:], lines, names, kind, length, keep_alive, content_type


def _frame(
    status: int, names: list[str], values: list[str], http11: bool
) -> tuple[int, int, bool, str] | str:
    """Framing, length, reuse and media type (after RFC 9112 section 6.3), or what is wrong."""
    lengths = _named(names, values, "content-length")
    codings = _named(names, values, "transfer-encoding")
    options = ",".join(_named(names, values, "connection")).lower()
    types = _named(names, values, "content-type")
    keep_alive = ("close" not in options) if http11 else ("keep-alive" in options)
    content_type = types[0].partition(";")[0].strip().lower() if types else ""
    if status < 200 or status in (204, 304):
        return _NONE, 0, keep_alive, content_type
    if codings:
        if ",".join(codings).rsplit(",", 1)[-1].strip().lower() != "chunked" or lengths:
            return "unsupported or conflicting transfer coding"
        return _CHUNKED, 0, keep_alive, content_type
    if lengths:
        if lengths.count(lengths[0]) != len(lengths):
            return "conflicting Content-Length"
        if not _decimal(lengths[0]):
            return "malformed Content-Length"
        return _LENGTH, int(lengths[0]), keep_alive, content_type
    return _CLOSE, 0, False, content_type
