"""The audit trail: one JSON line per ``tools/call`` — allowed, denied or failed — and nothing secret.

Records are built by :func:`record` from plain values (no framework types) and written by
:class:`AuditLog` to a logger of its own: a file (``audit.file``; reopened when rotated away) or,
without one, the main structured log stream under the event name ``audit``. Arguments appear only
when ``audit.include_arguments`` is true; tokens never do — the record has no field that could
hold one, and the subject appears as its ``sub``/``client_id`` claims or a fingerprint.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import structlog

from mcpproxy.config.inbound import AuditSettings
from mcpproxy.policy import Call

_stream_log = structlog.get_logger("mcpproxy.audit")


def record(
    *,
    started: float,
    route: str,
    request_id: str,
    call: Call,
    sub: str | None,
    client_id: str | None,
    subject_fingerprint: str | None,
    decision: str,
    reason: str | None,
    status: int,
    upstream_status: int | None,
    duration_ms: float,
    include_arguments: bool,
) -> dict[str, Any]:
    """One audit line's fields. ``started`` is the wall-clock time the request arrived."""
    entry: dict[str, Any] = {
        "time": datetime.fromtimestamp(started, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "route": route,
        "request_id": request_id,
        "jsonrpc_id": call.jsonrpc_id,
        "sub": sub,
        "client_id": client_id,
        "tool": call.name,
        "decision": decision,
        "status": status,
        "upstream_status": upstream_status,
        "duration_ms": round(duration_ms, 3),
    }
    if reason:
        entry["reason"] = reason
    if subject_fingerprint and sub is None:
        entry["subject_fingerprint"] = subject_fingerprint
    if include_arguments:
        entry["arguments"] = call.arguments
    return entry


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return str(record.msg)


class AuditLog:
    """Writes audit records; its own logger, so the trail can live apart from the access log."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self.include_arguments = settings.include_arguments
        self._handler: logging.Handler | None = None
        self._logger: logging.Logger | None = None
        if settings.file is not None:
            # A logger outside the logging hierarchy: nothing propagates to the root handlers, and
            # a reloaded configuration's log does not share handlers with the one it replaces.
            logger = logging.Logger("mcpproxy.audit", logging.INFO)
            handler = logging.handlers.WatchedFileHandler(settings.file, encoding="utf-8")
            handler.setFormatter(_LineFormatter())
            logger.addHandler(handler)
            logger.propagate = False
            self._logger, self._handler = logger, handler

    def write(self, entries: Iterable[dict[str, Any]]) -> None:
        for entry in entries:
            if self._logger is not None:
                self._logger.info(json.dumps(entry, default=str, separators=(",", ":"), ensure_ascii=False))
            else:
                _stream_log.info("audit", **entry)

    def close(self) -> None:
        if self._handler is not None and self._logger is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
