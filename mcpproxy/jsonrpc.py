"""What the proxy needs to know of a JSON-RPC body, and the error bodies it answers with."""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable
from typing import Any, Final

from mcpproxy._jsonrpc import method_label
from mcpproxy.errors import JSONRPC_PARSE_ERROR, ProxyError

JsonId = str | int | float | None


#: What a route's policy and the logs read of one message: its method, whether it has an "id",
#: the id (:func:`id_of`), its params' "name" and "uri" — each None where it is not a string.
Head = tuple[str | None, bool, JsonId, str | None, str | None]


class Body:
    """A POSTed JSON-RPC message or batch. ``messages`` is empty when the body is not JSON-RPC.

    A body is parsed when something first needs its messages, where the C module can read what
    is needed without building them (``mcpproxy/_jsonrpc.c``): a body taken leniently
    (:func:`parse_body` without ``strict``) for its method, which the relay's common request
    needs for the access line and the metrics; a single message under a policy for its
    :attr:`heads` (:func:`mcpproxy.policy.parse_strict`)."""

    __slots__ = ("_heads", "_is_batch", "_messages", "_unread", "raw")

    def __init__(
        self, raw: bytes, messages: list[dict[str, Any]] | None = None, is_batch: bool = False
    ) -> None:
        self.raw = raw
        self._messages: list[dict[str, Any]] = [] if messages is None else messages
        self._is_batch = is_batch
        self._unread = False
        self._heads: list[Head] | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        if self._unread:
            self._read()
        return self._messages

    @property
    def is_batch(self) -> bool:
        if self._unread and self._heads is None:
            self._read()
        return self._is_batch

    @property
    def heads(self) -> list[Head]:
        """:func:`head_of` each message."""
        heads = self._heads
        if heads is None:
            heads = self._heads = [head_of(message) for message in self.messages]
        return heads

    def _read(self) -> None:
        self._unread = False
        body = _parsed(self.raw, strict=False)
        self._messages, self._is_batch = body._messages, body._is_batch

    @property
    def first_id(self) -> JsonId:
        for message in self.messages:
            if "id" in message and _valid_id(message["id"]):
                return message["id"]  # type: ignore[no-any-return]
        return None

    @property
    def method(self) -> str:
        """The MCP method for logs and metrics: the single method, or "batch"."""
        if self._unread:
            if self._heads is not None:
                method = self._heads[0][0]
                return method if method is not None else "response"
            label = method_label(self.raw)
            if label is not None:
                return label
        if self.is_batch:
            return "batch"
        messages = self.messages
        if messages and isinstance(messages[0].get("method"), str):
            return str(messages[0]["method"])
        return "response" if messages else "-"

    def serialize(self) -> bytes:
        payload: Any = self.messages if self.is_batch else self.messages[0]
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def loader(decoder: json.JSONDecoder) -> Callable[[bytes], Any]:
    """``json.loads(raw, object_pairs_hook=decoder.object_pairs_hook)``, with the common body —
    UTF-8 starting with ``{`` or ``[`` — handed straight to the decoder's C scanner:
    ``json.loads`` spends more on guessing the encoding and on its Python wrappers than on the
    scan itself (2.2 of 3.7 µs for a tools/call body; with a hook it also builds a decoder a call)."""
    # (the stubs call make_scanner's argument a make_scanner; it is the decoder whose settings it takes)
    scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(decoder)  # type: ignore[arg-type]
    hook = decoder.object_pairs_hook

    def loads(raw: bytes) -> Any:
        if raw[:1] not in (b"{", b"[") or raw[1:2] == b"\0":  # a NUL second: UTF-16/32
            return json.loads(raw, object_pairs_hook=hook)
        text = raw.decode("utf-8", "surrogatepass")
        try:
            data, end = scan(text, 0)
        except StopIteration:  # pragma: no cover - "{" and "[" always start a value
            raise ValueError("not JSON") from None
        if end != len(text) and text[end:].strip(" \t\n\r"):  # anything but JSON's whitespace
            raise ValueError("extra data after the JSON value")
        return data

    return loads


_loads: Final = loader(json.JSONDecoder())


def parse_body(raw: bytes, *, strict: bool) -> Body:
    """Parse a POST body. With ``strict`` an unparsable body is a 400 JSON-RPC parse error;
    without it (a feature merely peeking at the method) it is passed on untouched, and parsed
    only when its messages are first needed."""
    if strict:
        return _parsed(raw, strict=True)
    return unread_body(raw)


def unread_body(raw: bytes, head: Head | None = None) -> Body:
    """A body parsed when its messages are first needed; ``head``: it is one message, which
    ``json.loads`` takes and :func:`head_of` reads so."""
    body = Body(raw)
    body._unread = True
    if head is not None:
        body._heads = [head]
    return body


def _parsed(raw: bytes, *, strict: bool) -> Body:
    try:
        data = _loads(raw)
    except (ValueError, RecursionError):
        if strict:
            raise ProxyError(
                400, "request body is not valid JSON", JSONRPC_PARSE_ERROR, reason="parse_error"
            ) from None
        return Body(raw)
    if isinstance(data, dict):
        return Body(raw, [data])
    if isinstance(data, list) and data and all(isinstance(m, dict) for m in data):
        return Body(raw, data, True)
    if strict:
        raise ProxyError(
            400, "request body is not a JSON-RPC message", JSONRPC_PARSE_ERROR, reason="parse_error"
        )
    return Body(raw)


def error_body(code: int, message: str, request_id: JsonId, proxy_request_id: str) -> bytes:
    payload = {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": code, "message": message, "data": {"request_id": proxy_request_id}},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def head_of(message: dict[str, Any]) -> Head:
    """What policy reads of a message (``mcpproxy/_jsonrpc.c``'s ``message_head`` reads the same
    from a body's bytes)."""
    method, params = message.get("method"), message.get("params")
    name = uri = None
    if isinstance(params, dict):
        name, uri = params.get("name"), params.get("uri")
    return (
        method if isinstance(method, str) else None,
        "id" in message,
        id_of(message),
        name if isinstance(name, str) else None,
        uri if isinstance(uri, str) else None,
    )


def id_of(message: dict[str, Any]) -> JsonId:
    """A message's id, None unless it is a string or a number."""
    value = message.get("id")
    return value if _valid_id(value) else None


def _valid_id(value: Any) -> bool:
    # types in a tuple, not a union: compiled, `str | int | float` builds one on every call
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))
