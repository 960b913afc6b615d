"""Filtering list results (tools/list, prompts/list, resources/list) to what the caller may use.

Framework-free: bytes in, bytes out. A JSON answer is rewritten whole. An SSE answer is parsed
event by event as it streams: every event is relayed the moment its terminating blank line
arrives — unchanged, unless it carries a list result to filter — so nothing is held back beyond
the one event being completed. On a POST the list result is recognised by the request's JSON-RPC
id and, once every awaited id has been answered, the rest of the stream passes through untouched.
On GET streams (the legacy transport's answers, replays after ``Last-Event-ID``) no id is known,
so every list result is filtered.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mcpproxy.jsonrpc import JsonId
from mcpproxy.policy import LIST_METHODS, Policy, Principal

_LINE_END = re.compile(rb"\r\n|\r|\n")
#: List results by their result key (for answers whose request is unknown): key → (kind, name key).
_RESULT_KEYS = {key: (kind, name) for kind, key, name in LIST_METHODS.values()}


class ListFilter:
    """The list filtering of one request: which answers to rewrite and how."""

    def __init__(
        self, policy: Policy, principal: Principal | None, pending: dict[JsonId, str] | None
    ) -> None:
        self._policy = policy
        self._principal = principal
        #: id → list method still awaited; None: any list result (the request is unknown).
        self.pending = pending
        self._markers = tuple(
            f'"{key}"'.encode() for key, (kind, _) in _RESULT_KEYS.items() if policy.filters(kind)
        )

    @classmethod
    def for_request(
        cls, policy: Policy, principal: Principal | None, requests: dict[JsonId, str]
    ) -> ListFilter | None:
        """A filter for a POST's list requests, or None when the policy cannot remove anything."""
        pending = {i: m for i, m in requests.items() if policy.filters(LIST_METHODS[m][0])}
        return cls(policy, principal, pending) if pending else None

    @classmethod
    def for_stream(cls, policy: Policy, principal: Principal | None) -> ListFilter | None:
        """A filter for a GET stream: any list result, whatever its id."""
        if not any(policy.filters(kind) for kind, _, _ in LIST_METHODS.values()):
            return None
        return cls(policy, principal, None)

    @property
    def done(self) -> bool:
        return self.pending is not None and not self.pending

    def may_concern(self, data: bytes) -> bool:
        """A cheap look at raw bytes: could they hold a list result this filter rewrites?"""
        if self.pending is not None:
            return b'"id"' in data
        return b'"result"' in data and any(marker in data for marker in self._markers)

    def rewrite_message(self, message: Any) -> bool:
        """Filter a JSON-RPC response in place; True when it changed."""
        if not isinstance(message, dict) or ("result" not in message and "error" not in message):
            return False
        result = message.get("result")
        if self.pending is not None:
            method = self.pending.pop(_id(message), None) if "id" in message else None
            if method is None or not isinstance(result, dict):
                return False
            kind, key, name_key = LIST_METHODS[method]
            return self._filter(result, kind, key, name_key)
        if not isinstance(result, dict):
            return False
        changed = False
        for key, (kind, name_key) in _RESULT_KEYS.items():
            if isinstance(result.get(key), list) and self._policy.filters(kind):
                changed = self._filter(result, kind, key, name_key) or changed
        return changed

    def _filter(self, result: dict[str, Any], kind: str, key: str, name_key: str) -> bool:
        items = result.get(key)
        if not isinstance(items, list):
            return False
        kept = [
            item
            for item in items
            if isinstance(item, dict) and self._policy.permits(kind, item.get(name_key), self._principal)
        ]
        if len(kept) == len(items):
            return False
        result[key] = kept
        return True

    def rewrite_payload(self, payload: bytes) -> bytes:
        """A JSON body (one message or a batch), rewritten if any list result in it was filtered."""
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return payload
        messages = data if isinstance(data, list) else [data]
        changed = False
        for message in messages:
            changed = self.rewrite_message(message) or changed
        return _dumps(data) if changed else payload

    def sse(self) -> SseListFilter:
        return SseListFilter(self)


class SseListFilter:
    """Incremental SSE rewriting: ``feed`` upstream chunks, send what it returns at once."""

    def __init__(self, list_filter: ListFilter) -> None:
        self._filter = list_filter
        self._buffer = b""
        self._scan = 0  # where to look for the next line end in the current event
        self.done = list_filter.done

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return chunk
        self._buffer += chunk
        out: list[bytes] = []
        start = 0
        while not self.done:
            match = _LINE_END.search(self._buffer, self._scan)
            if match is None or (match.group() == b"\r" and match.end() == len(self._buffer)):
                break  # no complete line yet (a lone trailing CR may be half of a CRLF)
            line_start = self._line_start(match.start(), start)
            self._scan = match.end()
            if match.start() == line_start:  # a blank line: the event is complete
                out.append(self._event(self._buffer[start : match.end()]))
                start = match.end()
        if self.done:
            out.append(self._buffer[start:])
            self._buffer = b""
            self._scan = 0
        else:
            self._buffer = self._buffer[start:]
            self._scan -= start
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left when the stream ends (an unterminated last event), filtered all the same."""
        rest, self._buffer, self._scan = self._buffer, b"", 0
        return self._event(rest) if rest else b""

    def _line_start(self, end: int, event_start: int) -> int:
        """Where the line ending at ``end`` began (just after the previous line end)."""
        previous = max(
            self._buffer.rfind(b"\n", event_start, end), self._buffer.rfind(b"\r", event_start, end)
        )
        return event_start if previous < 0 else previous + 1

    def _event(self, raw: bytes) -> bytes:
        lines = _LINE_END.split(raw)
        data_lines = [value for name, value in map(_field, lines) if name == b"data"]
        if not data_lines:
            return raw
        data = b"\n".join(data_lines)
        if not self._filter.may_concern(data):
            return raw
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            return raw
        messages = message if isinstance(message, list) else [message]
        changed = False
        for item in messages:
            changed = self._filter.rewrite_message(item) or changed
        self.done = self._filter.done
        if not changed:
            return raw
        out: list[bytes] = []
        written = False
        for line in lines:
            if not line:
                continue
            if _field(line)[0] == b"data":
                if not written:
                    out.append(b"data: " + _dumps(message))
                    written = True
                continue
            out.append(line)
        return b"\n".join(out) + b"\n\n"


def _field(line: bytes) -> tuple[bytes, bytes]:
    name, sep, value = line.partition(b":")
    if sep and value.startswith(b" "):
        value = value[1:]
    return name, value


def _id(message: dict[str, Any]) -> JsonId:
    value = message.get("id")
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value
    return None


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
