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
from json import encoder as json_encoder
from typing import Any, Final, NamedTuple, TextIO

import structlog

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


class AccessEntry(NamedTuple):
    """The fields of one access line, in the line's order; the optional ones are left out when
    None (or empty). ``mcp_method`` is written as ``null`` when None."""

    route: str
    method: str
    path: str
    mcp_method: str | None
    status: int
    bytes: int
    duration_ms: float
    request_id: str
    via: str
    upstream_ms: float | None = None
    credential_source: str | None = None
    subject_fingerprint: str | None = None
    sub: str | None = None
    error: str | None = None
    detail: str | None = None


#: JSON string literal of a str (``TypeError`` for anything else: a Secret cannot be written).
_json_str: Final[Callable[[str], str]] = json_encoder.encode_basestring_ascii
_ACCESS_HEAD: Final = (
    '{"route":%s,"method":%s,"path":%s,"mcp_method":%s,"status":%d,"bytes":%d,'
    '"duration_ms":%.3f,"request_id":%s,"via":%s'
)
#: The optional text fields, as JSON keys (the last fields of AccessEntry).
_ACCESS_TEXT: Final = tuple(f',"{name}":' for name in AccessEntry._fields[-5:])


def encode_access(entry: AccessEntry, timestamp: str) -> str:
    """One access line, a JSON object with its newline.

    Formatted from a fixed template: the generic JSON encoder over a dict (with the key-name
    redaction pass the other log lines get) cost about three times as much, on the one log line
    every request writes (bench/PROFILE.md)."""
    mcp_method = entry.mcp_method
    line = _ACCESS_HEAD % (
        _json_str(entry.route),
        _json_str(entry.method),
        _json_str(entry.path),
        "null" if mcp_method is None else _json_str(mcp_method),
        entry.status,
        entry.bytes,
        entry.duration_ms,
        _json_str(entry.request_id),
        _json_str(entry.via),
    )
    if entry.upstream_ms is not None:
        line += ',"upstream_ms":%.3f' % entry.upstream_ms  # noqa: UP031 - a format spec, see _timestamp
    for key, value in zip(_ACCESS_TEXT, entry[-5:], strict=True):
        if value:
            line += key + _json_str(value)
    return line + ',"event":"request","level":"info","timestamp":"' + timestamp + '"}\n'


def access(entry: AccessEntry) -> None:
    """Write one access line (event ``request``) to the log stream.

    The access line is the one log line every request writes; the lines of one event-loop
    iteration go out in one write (one system call) instead of one each.
    """
    if not _ACCESS.enabled:
        return
    pending = _ACCESS.pending
    pending.append(encode_access(entry, _timestamp()))
    if len(pending) >= _MAX_PENDING:
        flush()
    elif len(pending) == 1:
        try:
            asyncio.get_running_loop().call_soon(flush)
        except RuntimeError:  # no loop (a tool, a test): write now
            flush()


_second: tuple[int, str] = (0, "")


def _timestamp() -> str:
    """Now in ISO 8601 UTC with microseconds, as structlog writes it; the part up to the
    seconds is formatted once a second."""
    global _second
    now = time.time()
    whole = int(now)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    # % formatting: an f-string with a format spec looks up __format__ (twice the cost here)
    return "%s.%06dZ" % (_second[1], (now - whole) * 1_000_000)  # noqa: UP031 - %d truncates like int()


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
