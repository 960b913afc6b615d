"""structlog set-up: one JSON object per line, with secrets redacted as a last line of defence.

Credentials are held as :class:`~mcpproxy.secrets.Secret` and never passed to a logger as text;
the ``_redact`` processor additionally blanks any field whose *name* says it holds a credential,
so a future log call that forgets the rule still cannot print one.
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
from typing import Any, TextIO

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


#: Field names of the access line (none says it holds a credential): checked by a set lookup.
_ACCESS_KEYS = frozenset(
    {"route", "method", "path", "mcp_method", "status", "bytes", "duration_ms", "request_id", "via"}
    | {"upstream_ms", "sub", "error", "detail", "event", "level", "timestamp"}
)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, Secret) or (
            key not in _ACCESS_KEYS and value not in (None, "") and _sensitive(key)
        ):
            event[key] = "[redacted]"
    return event


class _AccessSink:
    stream: TextIO = sys.stderr
    enabled: bool = True
    #: Lines of the current event-loop iteration, written together at its end.
    pending: list[str] = []


_ACCESS = _AccessSink()
#: Past this many pending lines the batch is written at once.
_MAX_PENDING = 256


def access(fields: dict[str, Any]) -> None:
    """Write one access line (event ``request``) to the log stream.

    The access line is the one log line every request writes. Going through structlog's
    processor chain cost about 20 µs of CPU for it, this about 4; and the lines of one
    event-loop iteration go out in one write (one system call) instead of one each. Same JSON
    shape, same redaction check, same stream.
    """
    if not _ACCESS.enabled:
        return
    fields["event"] = "request"
    fields["level"] = "info"
    fields["timestamp"] = _timestamp()
    _redact(None, "info", fields)
    pending = _ACCESS.pending
    pending.append(_encode_flat(fields) + "\n")
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


def _c_encoder() -> Callable[[dict[str, Any]], str] | None:
    """CPython's C JSON encoder called directly, without ``json.dumps``' per-call set-up (which
    was half of the access line's cost). No circular-reference check: for flat dicts only."""
    make = getattr(json_encoder, "c_make_encoder", None)  # not in the type stubs
    if make is None:  # pragma: no cover - an interpreter without the C accelerator
        return None
    encode = make(None, repr, json_encoder.encode_basestring_ascii, None, ":", ",", False, False, True)

    def encode_flat(fields: dict[str, Any]) -> str:
        return "".join(encode(fields, 0))

    return encode_flat


_encode_flat = _c_encoder() or (lambda fields: _dumps(fields))


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
