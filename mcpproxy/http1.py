"""HTTP/1.1 message heads and body framing, as plain functions over bytes.

The relay (:mod:`mcpproxy.web.relay`) serves the common request shape itself and hands every
other request to aiohttp. So the request parser here accepts a deliberately narrow, strictly
well-formed subset — origin-form target, ``HTTP/1.1``, one ``Host``, at most one
``Content-Length``, no ``Transfer-Encoding``/``Expect``/``Upgrade``, visible-ASCII fields — and
answers ``None`` for anything else, which aiohttp's full parser then judges. Nothing that is
ambiguous on the wire (the stuff of request smuggling) is ever interpreted here.

Response heads come from the route's own upstream; they are parsed leniently as to content but
strictly as to framing, and a body is relayed with its framing unchanged: chunked bodies are
scanned for their end, not decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from multidict import CIMultiDict

#: The bytes a header line may hold besides its CRLF: HTAB, SP and visible ASCII (checked with
#: ``bytes.translate``, which runs at memory speed where a regex over a 1 KB JWT took ~10 µs).
_LINE_BYTES = bytes([0x09, *range(0x20, 0x7F)])
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Field names already found valid: clients send the same dozen names on every request, and a
#: set lookup costs a fraction of the regex. Bounded, so odd names cannot grow it.
_VALID_NAMES: set[str] = set()
_MAX_VALID_NAMES = 256
#: An origin-form request target of visible ASCII.
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_DIGITS = re.compile(rb"[0-9]{1,15}")
_DECIMAL = re.compile(r"[0-9]{1,15}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
#: Request methods the relay serves; the rest (GET streams, HEAD, OPTIONS...) go to aiohttp.
RELAYED_METHODS = frozenset({b"POST", b"DELETE"})
#: Upper bound for an upstream's response head.
MAX_RESPONSE_HEAD = 64 * 1024
END_OF_HEAD = b"\r\n\r\n"


class ProtocolViolation(Exception):
    """An upstream response that is not valid HTTP/1.1 framing."""


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str
    headers: CIMultiDict[str]
    host: str
    content_length: int
    keep_alive: bool


def parse_request_head(block: bytes) -> RequestHead | None:
    """The head of a request (``block`` ends with the blank line), or None when the relay must
    not serve it: anything outside the strict subset described in the module docstring."""
    line_end = block.find(b"\r\n")
    request_line = block[:line_end]
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in RELAYED_METHODS:
        return None
    if _TARGET.fullmatch(parts[1]) is None:
        return None
    headers = _fields(block[line_end + 2 : -4])
    if headers is None:
        return None
    return _request_head(parts[0].decode(), parts[1].decode(), headers)


def _fields(block: bytes) -> CIMultiDict[str] | None:
    """Header fields (``block`` without its last CRLF), or None unless each is ``token ":" value``
    of visible ASCII, SP and HTAB, and every line ends with CRLF."""
    if not block:
        return CIMultiDict()
    text = block.decode("latin-1")
    lines = text.split("\r\n")
    # What is left once the allowed bytes are removed must be exactly one CR LF per line break:
    # no other byte, and no CR or LF that is not part of a CRLF (the split found them all).
    if block.translate(None, _LINE_BYTES) != b"\r\n" * (len(lines) - 1):
        return None
    pairs = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        if name not in _VALID_NAMES:
            if _NAME.fullmatch(name) is None:
                return None
            if len(_VALID_NAMES) < _MAX_VALID_NAMES:
                _VALID_NAMES.add(name)
        pairs.append((name, value.strip(" \t")))
    return CIMultiDict(pairs)


def _request_head(method: str, target: str, headers: CIMultiDict[str]) -> RequestHead | None:
    if (
        "Transfer-Encoding" in headers
        or "Expect" in headers
        or "Upgrade" in headers
        or "HTTP2-Settings" in headers
    ):
        return None
    hosts = headers.getall("Host", ())
    lengths = headers.getall("Content-Length", ())
    if len(hosts) != 1 or len(lengths) > 1:
        return None
    length = 0
    if lengths:
        if _DIGITS.fullmatch(lengths[0].encode()) is None:
            return None
        length = int(lengths[0])
    return RequestHead(method, target, headers, hosts[0], length, "close" not in _connection(headers))


def _connection(headers: CIMultiDict[str]) -> str:
    """Every ``Connection`` field's options, lower-case (it is a list, possibly over several lines)."""
    return ",".join(headers.getall("Connection", ())).lower()


class Framing(Enum):
    NONE = "none"  # no body (1xx, 204, 304)
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # body ends when the upstream closes the connection


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: CIMultiDict[str]
    framing: Framing
    length: int
    keep_alive: bool
    #: The media type, lower-case, without parameters ("" when there is none).
    content_type: str = ""


#: Response fields that decide framing and reuse, collected while the head is split.
_FRAMING_FIELDS = frozenset({"connection", "transfer-encoding", "content-length", "content-type"})
_STATUS_LINE_START = ("HTTP/1.1 ", "HTTP/1.0 ")


def parse_response_head(block: bytes) -> ResponseHead:
    """An upstream's response head (``block`` ends with the blank line)."""
    text = block[:-4].decode("latin-1")
    lines = text.split("\r\n")
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise ProtocolViolation("malformed header field")  # a bare CR or LF
    status_line = lines[0]
    code, rest = status_line[9:12], status_line[12:]
    if (
        status_line[:9] not in _STATUS_LINE_START
        or len(code) != 3
        or not (code.isascii() and code.isdigit())
        or (rest and rest[0] != " ")
    ):
        raise ProtocolViolation("malformed status line")
    pairs = []
    framing: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolViolation("malformed header field")
        value = value.strip(" \t")
        pairs.append((name, value))
        lower = name.lower()
        if lower in _FRAMING_FIELDS:
            framing.setdefault(lower, []).append(value)
    media = framing.get("content-type")
    head = ResponseHead(
        int(code),
        rest[1:],
        CIMultiDict(pairs),
        Framing.NONE,
        0,
        False,
        media[0].partition(";")[0].strip().lower() if media else "",
    )
    _frame(head, framing, status_line[:8] == "HTTP/1.1")
    return head


def _frame(head: ResponseHead, fields: dict[str, list[str]], http11: bool) -> None:
    """Set the head's framing, length and reuse from its collected framing fields."""
    connection = ",".join(fields.get("connection", ())).lower()
    head.keep_alive = ("close" not in connection) if http11 else ("keep-alive" in connection)
    if head.status < 200 or head.status in (204, 304):
        return
    codings = fields.get("transfer-encoding")
    lengths = fields.get("content-length")
    if codings:
        if ",".join(codings).rsplit(",", 1)[-1].strip().lower() != "chunked" or lengths:
            raise ProtocolViolation("unsupported or conflicting transfer coding")
        head.framing = Framing.CHUNKED
    elif lengths:
        value = lengths[0]
        if any(other != value for other in lengths):
            raise ProtocolViolation("conflicting Content-Length")
        if not _DECIMAL.fullmatch(value):
            raise ProtocolViolation("malformed Content-Length")
        head.framing, head.length = Framing.LENGTH, int(value)
    else:
        head.framing, head.keep_alive = Framing.CLOSE, False


class ChunkScanner:
    """Finds where a chunked body ends without decoding it (the bytes are relayed as they are).

    ``feed`` returns how many bytes of ``data`` belong to the body; once ``done``, any rest
    belongs to the next message on the connection.
    """

    _MAX_LINE = 4096

    __slots__ = ("_line", "_remaining", "_state", "done")

    def __init__(self) -> None:
        self._state = 0  # 0: size line, 1: chunk data, 2: CRLF after data, 3: trailer section
        self._remaining = 0
        self._line = b""
        self.done = False

    def feed(self, data: bytes) -> int:
        pos, end = 0, len(data)
        while pos < end and not self.done:
            if self._state == 1:
                take = self._remaining
                if take + 2 <= end - pos and data[pos + take : pos + take + 2] == b"\r\n":
                    pos += take + 2  # the rest of the chunk and its CRLF are here: one step
                    self._state = 0
                    continue
                take = min(take, end - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state, self._remaining = 2, 2
            elif self._state == 2:
                take = min(self._remaining, end - pos)
                expected = b"\r\n"[2 - self._remaining : 2 - self._remaining + take]
                if data[pos : pos + take] != expected:
                    raise ProtocolViolation("chunk not followed by CRLF")
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = 0
            else:
                pos = self._line_step(data, pos)
        return pos

    def _line_step(self, data: bytes, pos: int) -> int:
        """Consume one size or trailer line (possibly split across reads)."""
        newline = data.find(b"\n", pos)
        if newline < 0:
            self._line += data[pos:]
            if len(self._line) > self._MAX_LINE:
                raise ProtocolViolation("chunk line too long")
            return len(data)
        line = (self._line + data[pos:newline]).rstrip(b"\r")
        self._line = b""
        if len(line) > self._MAX_LINE:
            raise ProtocolViolation("chunk line too long")
        if self._state == 3:
            if not line:
                self.done = True
        else:
            semicolon = line.find(b";")
            size_text = (line if semicolon < 0 else line[:semicolon]).strip(b" \t")
            if _HEX.fullmatch(size_text) is None:
                raise ProtocolViolation("malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                self._state = 3
            else:
                self._state, self._remaining = 1, size
        return newline + 1


def encode_head(start_line: str, headers: CIMultiDict[str]) -> bytes:
    """A message head on the wire. Values must already be free of CR, LF and NUL.

    (Joined, not formatted: the names a CIMultiDict hands out are ``istr``, and an f-string
    looks up ``__format__`` on every one of them, which made this 2.8x slower.)"""
    return "\r\n".join([start_line, *[": ".join(field) for field in headers.items()], "", ""]).encode(
        "latin-1"
    )


def safe_value(value: str) -> bool:
    """Whether ``value`` can be written as a header field value (no CR, LF or NUL)."""
    return "\r" not in value and "\n" not in value and "\0" not in value
