"""Incremental rewriting of the legacy HTTP+SSE transport's ``endpoint`` event.

The 2024-11-05 transport's server opens its GET stream with ``event: endpoint`` whose data is the
URL clients must POST to. Passed on unchanged, it would send clients around the proxy (or to a
path outside their route), so the proxy rewrites it to its own route. Everything after that event
is relayed byte for byte, chunk by chunk, with no further parsing.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
MAX_PREAMBLE = 64 * 1024


class EndpointRejected(Exception):
    """The upstream named an endpoint outside the route: the stream must not be relayed."""


class EndpointRewriter:
    """Feed upstream chunks in, get bytes to send out. ``rewrite`` maps the endpoint URL or
    returns None to reject it. Only the stream's first event is examined."""

    def __init__(self, rewrite: Callable[[str], str | None]) -> None:
        self._rewrite = rewrite
        self._buffer = b""
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return chunk
        self._buffer += chunk
        out = b""
        while not self.done:
            match = _EVENT_END.search(self._buffer)
            if match is None:
                if len(self._buffer) > MAX_PREAMBLE:
                    raise EndpointRejected("no endpoint event within the first 64 KiB")
                return out
            event = self._buffer[: match.end()]
            self._buffer = self._buffer[match.end() :]
            out += self._event(event)
        out += self._buffer
        self._buffer = b""
        return out

    def _event(self, raw: bytes) -> bytes:
        lines = re.split(rb"\r\n|\n|\r", raw.rstrip(b"\r\n"))
        fields = [_field(line) for line in lines]
        if all(name == b"" for name, _ in fields):
            return raw  # a comment block (keep-alive): not an event
        if not any(name == b"event" and value == b"endpoint" for name, value in fields):
            self.done = True  # the legacy transport names its endpoint first, or not at all
            return raw
        data = b"\n".join(value for name, value in fields if name == b"data")
        target = self._rewrite(data.decode("utf-8", "replace").strip())
        if target is None:
            raise EndpointRejected("the upstream's endpoint lies outside this route")
        self.done = True
        kept = [line for line, (name, _) in zip(lines, fields, strict=True) if name != b"data"]
        return b"\n".join([*kept, b"data: " + target.encode()]) + b"\n\n"


def _field(line: bytes) -> tuple[bytes, bytes]:
    name, sep, value = line.partition(b":")
    if sep and value.startswith(b" "):
        value = value[1:]
    return name, value
