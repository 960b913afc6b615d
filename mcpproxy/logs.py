"""structlog set-up: one JSON object per line, with secrets redacted as a last line of defence.

Credentials are held as :class:`~mcpproxy.secrets.Secret` and never passed to a logger as text;
the ``_redact`` processor additionally blanks any field whose *name* says it holds a credential,
so a future log call that forgets the rule still cannot print one. The access line, written for
every request, has a fixed schema instead (:class:`AccessEntry`): none of its fields holds a
credential, and only text can be written into them.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any, Final, TextIO

import structlog

from mcpproxy._access import access_line
from mcpproxy.secrets import Secret

_SENSITIVE_KEY = re.compile(
    r"(^|_)(token|secret|password|authorization|cookie|assertion|api_key|apikey|credential)s?($|_)",
    re.IGNORECASE,
)
_ALLOWED_KEYS = frozenset({"token_fingerprint", "subject_fingerprint", "token_type", "credential_source"})


@functools.cache
def _sensitive(key: str) -> bool:
    """Whether a field name says it holds a credential (memoised: log keys repeat endlessly)."""
    return key not in _ALLOWED_KEYS and _SENSITIVE_KEY.search(key) is not None


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, Secret) or (value not in (None, "") and _sensitive(key)):
            event[key] = "[redacted]"
    return event


class _AccessSink:
    stream: TextIO = sys.stderr
    enabled: bool = True
    #: Lines of the current event-loop iteration, written together at its end.
    pending: list[str] = []


_ACCESS: Final = _AccessSink()
#: Past this many pending lines the batch is written at once.
_MAX_PENDING: Final = 256


class AccessEntry:
    """The fields of one access line, in the line's order (the parameters'); the optional ones
    are left out when None (or empty). ``mcp_method`` is written as ``null`` when None.

    A class with slots, not a named tuple: compiled (:mod:`mcpproxy.native`), a named tuple's
    constructor stays interpreted Python, and one is built for every request."""

    __slots__ = (
        "bytes",
        "credential_source",
        "detail",
        "duration_ms",
        "error",
        "mcp_method",
        "method",
        "path",
        "request_id",
        "route",
        "status",
        "sub",
        "subject_fingerprint",
        "upstream_ms",
        "via",
    )

    def __init__(
        self,
        route: str,
        method: str,
        path: str,
        mcp_method: str | None,
        status: int,
        bytes: int,
        duration_ms: float,
        request_id: str,
        via: str,
        upstream_ms: float | None = None,
        credential_source: str | None = None,
        subject_fingerprint: str | None = None,
        sub: str | None = None,
        error: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.route = route
        self.method = method
        self.path = path
        self.mcp_method = mcp_method
        self.status = status
        self.bytes = bytes
        self.duration_ms = duration_ms
        self.request_id = request_id
        self.via = via
        self.upstream_ms = upstream_ms
        self.credential_source = credential_source
        self.subject_fingerprint = subject_fingerprint
        self.sub = sub
        self.error = error
        self.detail = detail


def encode_access(entry: AccessEntry, second: str, micros: int) -> str:
    """One access line, a JSON object with its newline (:func:`mcpproxy._access.access_line`).

    Written out field by field: the generic JSON encoder over a dict (with the key-name
    redaction pass the other log lines get) cost about three times as much, and a ``%`` template
    with float formats still twice as much, on the one log line every request writes
    (bench/PROFILE.md); in C (``mcpproxy/_access.c``), about half again. The timestamp is
    ``second`` (ISO 8601 UTC to the second), ``micros`` and ``Z``."""
    return access_line(
        entry.route,
        entry.method,
        entry.path,
        entry.mcp_method,
        entry.status,
        entry.bytes,
        entry.duration_ms,
        entry.request_id,
        entry.via,
        entry.upstream_ms,
        entry.credential_source,
        entry.subject_fingerprint,
        entry.sub,
        entry.error,
        entry.detail,
        second,
        micros,
    )


def access(entry: AccessEntry, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Write one access line (event ``request``) to the log stream.

    The access line is the one log line every request writes; the lines of one event-loop
    iteration go out in one write (one system call) instead of one each. ``loop``: the running
    loop, where the caller has it at hand (``asyncio.get_running_loop`` makes a ``getpid``
    system call on Python 3.11, to notice a fork).
    """
    if not _ACCESS.enabled:
        return
    pending = _ACCESS.pending
    second, micros = _clock()
    pending.append(encode_access(entry, second, micros))
    if len(pending) >= _MAX_PENDING:
        flush()
    elif len(pending) == 1:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a tool, a test): write now
                flush()
                return
        loop.call_soon(flush)


class PerSecond:
    """A text that changes once a second, made by ``make`` when the second changes rather than
    at every use (attributes of a compiled class: a module global is a dictionary lookup, even
    compiled)."""

    __slots__ = ("make", "second", "text")

    def __init__(self, make: Callable[[int], str]) -> None:
        self.make = make
        self.second = -1
        self.text = ""

    def at(self, second: int) -> str:
        """The text for ``second`` (whole seconds since the epoch)."""
        if self.second != second:
            self.second, self.text = second, self.make(second)
        return self.text


def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


_SECOND: Final = PerSecond(_iso_second)
_now: Final = time.time


def _clock() -> tuple[str, int]:
    """Now as the access line's timestamp is written (structlog's form, ISO 8601 UTC with
    microseconds): the part up to the seconds, formatted once a second, and the microseconds."""
    now = _now()
    whole = int(now)
    return _SECOND.at(whole), int((now - whole) * 1_000_000)


def flush() -> None:
    """Write the pending access lines (also run at exit)."""
    pending = _ACCESS.pending
    if pending:
        text = "".join(pending)
        pending.clear()
        _ACCESS.stream.write(text)
        _ACCESS.stream.flush()


atexit.register(flush)


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every mcpproxy log line, and the stdlib ``aiohttp``/``asyncio`` ones, as JSON to ``stream``."""
    out = stream or sys.stderr
    flush()
    numeric = logging.getLevelName(level.upper())
    _ACCESS.stream = out
    _ACCESS.enabled = numeric <= logging.INFO
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(_StdlibJson())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").disabled = True


def _dumps(obj: Any, **_: Any) -> str:
    return json.dumps(obj, default=repr, separators=(",", ":"))


class _StdlibJson(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "event": record.getMessage(),
            "logger": record.name,
            "level": record.levelname.lower(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            # The type and the frames, never the exception's text: parsers and clients put
            # request bytes (possibly credentials) into their messages.
            payload["error"] = record.exc_info[0].__name__
            payload["traceback"] = "".join(traceback.format_tb(record.exc_info[2]))
        return _dumps(payload)
