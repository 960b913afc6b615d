"""HTTP/1.1 message heads and body framing, as plain functions over bytes.

The relay (:mod:`mcpproxy.web.relay`) serves the common request shape itself and hands every
other request to aiohttp. So the request parser here accepts a deliberately narrow, strictly
well-formed subset — origin-form target, ``HTTP/1.1``, one ``Host``, at most one
``Content-Length``, no ``Transfer-Encoding``/``Expect``/``Upgrade``, visible-ASCII fields — and
answers ``None`` for anything else, which aiohttp's full parser then judges. Nothing that is
ambiguous on the wire (the stuff of request smuggling) is ever interpreted here.

Response heads come from the route's own upstream; they are parsed leniently as to content but
strictly as to framing, and a body is relayed with its framing unchanged: chunked bodies are
scanned for their end, not decoded (except a GET stream's, whose first event may be rewritten:
:class:`ChunkDecoder`).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Final

from multidict import CIMultiDict

from mcpproxy._http1 import encode_head as encode_head  # the relay's, from here
from mcpproxy._http1 import find_head_end as find_head_end  # the relay's, from here
from mcpproxy._http1 import request_head, response_head

_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,15}")
#: Request methods the relay serves; the rest (HEAD, OPTIONS...) go to aiohttp.
RELAYED_METHODS: Final = frozenset({b"POST", b"GET", b"DELETE"})
#: Upper bound for an upstream's response head.
MAX_RESPONSE_HEAD: Final = 64 * 1024


class ProtocolViolation(Exception):
    """An upstream response that is not valid HTTP/1.1 framing."""


class RequestHead:
    """A request head the relay serves."""

    __slots__ = ("content_length", "headers", "host", "keep_alive", "lines", "method", "names", "target")

    def __init__(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        host: str,
        content_length: int,
        keep_alive: bool,
        lines: list[str],
        names: list[str],
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.host = host
        self.content_length = content_length
        self.keep_alive = keep_alive
        #: The field lines as received ("Name: value", in order), and each one's name in lower
        #: case (the relay forwards a choice of these: :func:`mcpproxy.headers.upstream_request_lines`).
        self.lines = lines
        self.names = names


def parse_request_head(block: bytes) -> RequestHead | None:
    """The head of a request (``block`` ends with the blank line), or None when the relay must
    not serve it: anything outside the strict subset described in the module docstring. Parsed
    in one pass in C (``mcpproxy/_http1.c``; ``mcpproxy/_http1.py`` is the same in Python)."""
    parts = request_head(block)
    if parts is None:
        return None
    method, target, lines, names, pairs, length, keep_alive, host = parts
    return RequestHead(method, target, CIMultiDict(pairs), host, length, keep_alive, lines, names)


class Framing(Enum):
    NONE = "none"  # no body (1xx, 204, 304)
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # body ends when the upstream closes the connection


class ResponseHead:
    """An upstream's response head, as the relay reads it."""

    __slots__ = ("content_type", "framing", "keep_alive", "length", "lines", "names", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        lines: list[str],
        names: list[str],
        framing: Framing,
        length: int,
        keep_alive: bool,
        content_type: str = "",
    ) -> None:
        self.status = status
        self.reason = reason
        #: The field lines as received ("Name: value", in order), and each one's name in lower
        #: case: the relay passes the lines it keeps on as they are, with no multidict in between.
        self.lines = lines
        self.names = names
        self.framing = framing
        self.length = length
        self.keep_alive = keep_alive
        #: The media type, lower-case, without parameters ("" when there is none).
        self.content_type = content_type

    @property
    def headers(self) -> CIMultiDict[str]:
        """The fields as a multidict: names as sent, values without surrounding blanks."""
        pairs = (line.partition(":") for line in self.lines)
        return CIMultiDict((name, value.strip(" \t")) for name, _, value in pairs)


#: The framings in the order the head parser numbers them.
_FRAMINGS: Final = (Framing.NONE, Framing.LENGTH, Framing.CHUNKED, Framing.CLOSE)


def parse_response_head(block: bytes) -> ResponseHead:
    """An upstream's response head (``block`` ends with the blank line). Parsed in one pass in C
    (``mcpproxy/_http1.c``; ``mcpproxy/_http1.py`` is the same in Python)."""
    parts = response_head(block)
    if isinstance(parts, str):
        raise ProtocolViolation(parts)
    status, reason, lines, names, framing, length, keep_alive, content_type = parts
    return ResponseHead(status, reason, lines, names, _FRAMINGS[framing], length, keep_alive, content_type)


def _whole_chunk(data: bytes, pos: int) -> tuple[int, int]:
    """Where the data of a whole non-empty chunk at ``pos`` starts and stops — a size line of 1
    to 15 hex digits and no extension, the data, CRLF (the chunk ends 2 bytes after the stop) —
    or (-1, -1) when there is none (a part, the last chunk, anything else).

    Read byte by byte rather than with a regex and ``int(…, 16)``: compiled, this is a few
    machine instructions a digit, and it runs for every event of every stream."""
    end = len(data)
    size = 0
    i = pos
    while i < end and i - pos < 15:
        c = data[i]
        if 48 <= c <= 57:  # 0-9
            size = size * 16 + c - 48
        elif 97 <= c <= 102:  # a-f
            size = size * 16 + c - 87
        elif 65 <= c <= 70:  # A-F
            size = size * 16 + c - 55
        else:
            break
        i += 1
    if i == pos or size == 0 or not _crlf_at(data, i):
        return -1, -1
    start = i + 2
    stop = start + size
    return (start, stop) if _crlf_at(data, stop) else (-1, -1)


def _crlf_at(data: bytes, pos: int) -> bool:
    return pos + 1 < len(data) and data[pos] == 13 and data[pos + 1] == 10


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
            if self._state == 0 and not self._line:
                # The common case, a streamed event: a bare size line, then the whole chunk.
                start, stop = _whole_chunk(data, pos)
                pos = stop + 2 if start > 0 else self._line_step(data, pos)
            elif self._state == 1:
                take = self._remaining
                if _crlf_at(data, pos + take):
                    pos += take + 2  # the rest of the chunk and its CRLF are here: one step
                    self._state = 0
                    continue
                pos = self._data_step(data, pos)
            elif self._state == 2:
                pos = self._crlf_step(data, pos)
            else:
                pos = self._line_step(data, pos)
        return pos

    @property
    def at_boundary(self) -> bool:
        """Whether the next byte starts a chunk's size line (and the body has not ended)."""
        return self._state == 0 and not self._line and not self.done

    def _data_step(self, data: bytes, pos: int) -> int:
        """Consume (part of) a chunk's data."""
        take = min(self._remaining, len(data) - pos)
        self._remaining -= take
        if self._remaining == 0:
            self._state, self._remaining = 2, 2
        return pos + take

    def _crlf_step(self, data: bytes, pos: int) -> int:
        """Consume (part of) the CRLF after a chunk's data."""
        take = min(self._remaining, len(data) - pos)
        expected = b"\r\n"[2 - self._remaining : 2 - self._remaining + take]
        if data[pos : pos + take] != expected:
            raise ProtocolViolation("chunk not followed by CRLF")
        self._remaining -= take
        if self._remaining == 0:
            self._state = 0
        return pos + take

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


class ChunkDecoder(ChunkScanner):
    """A :class:`ChunkScanner` that also hands out the chunks' data: for the one body the relay
    changes on its way, a GET stream's first event (the legacy transport's endpoint)."""

    __slots__ = ()

    def decode(self, data: bytes) -> tuple[int, bytes]:
        """How many bytes of ``data`` belong to the body (as :meth:`feed`), and the chunk data
        among them."""
        parts = []
        pos, end = 0, len(data)
        while pos < end and not self.done:
            if self._state == 0 and not self._line:
                start, stop = _whole_chunk(data, pos)  # a streamed event in one read, as above
                if start > 0:
                    parts.append(data[start:stop])
                    pos = stop + 2
                    continue
            if self._state == 1:
                start, pos = pos, self._data_step(data, pos)
                parts.append(data[start:pos])
            elif self._state == 2:
                pos = self._crlf_step(data, pos)
            else:
                pos = self._line_step(data, pos)
        return pos, b"".join(parts)


def safe_value(value: str) -> bool:
    """Whether ``value`` can be written as a header field value (no CR, LF or NUL)."""
    return "\r" not in value and "\n" not in value and "\0" not in value
