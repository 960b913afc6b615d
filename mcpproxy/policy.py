"""Per-route tool, resource and prompt policy: decisions over JSON-RPC bodies, framework-free.

A request is judged by its body, the only thing the upstream acts on: ``tools/call`` by
``params.name``, ``prompts/get`` by ``params.name``, ``resources/read`` by ``params.uri``. Every
message of a batch is judged and one refusal refuses the whole batch — nothing is half-sent. The
2026-07-28 routing headers (``Mcp-Method``, ``Mcp-Name``) must agree with the body when present,
so a header can never describe a different call than the one the body makes. Bodies are parsed
with duplicate keys refused: two ``name`` members that different JSON parsers would resolve
differently cannot smuggle a call past a rule.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

from mcpproxy._jsonrpc import keys_unique, message_head
from mcpproxy.config.inbound import ClaimRequirement, ClaimValue, PolicyRule, PolicySettings
from mcpproxy.errors import (
    JSONRPC_HEADER_MISMATCH,
    JSONRPC_INVALID_REQUEST,
    JSONRPC_PARSE_ERROR,
    JSONRPC_SERVER_ERROR,
    PolicyDenied,
    ProxyError,
    bearer_challenge,
)
from mcpproxy.expiring import remember
from mcpproxy.headers import MCP_METHOD, MCP_NAME, Headers
from mcpproxy.jsonrpc import Body, JsonId, id_of, loader, unread_body

JSONRPC_INVALID_PARAMS = -32602

#: Request methods that name what they act on: method → (policy kind, params key).
NAMED_METHODS: Mapping[str, tuple[str, str]] = {
    "tools/call": ("tools", "name"),
    "prompts/get": ("prompts", "name"),
    "resources/read": ("resources", "uri"),
}
#: List methods whose results are filtered: method → (policy kind, result key, item name key).
LIST_METHODS: Mapping[str, tuple[str, str, str]] = {
    "tools/list": ("tools", "tools", "name"),
    "prompts/list": ("prompts", "prompts", "name"),
    "resources/list": ("resources", "resources", "uri"),
}
KINDS = ("tools", "resources", "prompts")

_B64_SENTINEL = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")


class Principal(Protocol):
    """What policy knows of a caller (a verified token's :class:`~mcpproxy.inbound.Identity`)."""

    @property
    def claims(self) -> Mapping[str, Any]: ...

    @property
    def scopes(self) -> frozenset[str]: ...


class Decision:
    """Whether a call is allowed, and why (never changed once made: the allowing ones are shared).

    This class and :class:`Call` are written out rather than declared as dataclasses: compiled
    (:mod:`mcpproxy.native`), a dataclass's ``__init__`` stays interpreted, and policy builds
    them on every request."""

    __slots__ = ("allowed", "missing_scopes", "reason")

    def __init__(self, allowed: bool, reason: str, missing_scopes: tuple[str, ...] = ()) -> None:
        self.allowed = allowed
        self.reason = reason
        self.missing_scopes = missing_scopes


ALLOWED_NO_POLICY: Final = Decision(True, "no policy")
_ALLOWED_BY_RULES: Final = Decision(True, "rules")
_MAX_NAMES: Final = 1024


class Call:
    """One name-bearing request of a body (what the audit trail records)."""

    __slots__ = ("_body", "_index", "decision", "jsonrpc_id", "kind", "method", "name")

    def __init__(
        self, method: str, kind: str, name: str | None, jsonrpc_id: JsonId, body: Body, index: int
    ) -> None:
        self.method = method
        self.kind = kind
        self.name = name
        self.jsonrpc_id = jsonrpc_id
        self.decision: Decision | None = None
        self._body = body
        self._index = index

    @property
    def arguments(self) -> Any:
        """``params.arguments`` (read when the audit trail asks: the rest of the time the message
        need not be built)."""
        params = self._body.messages[self._index].get("params")
        return params.get("arguments") if isinstance(params, dict) else None


class _CompiledRule:
    def __init__(self, rule: PolicyRule) -> None:
        self.rule = rule
        self.label = f"rules[{rule.index}]"
        self.patterns = {kind: _compile(rule.patterns(kind)) for kind in KINDS}
        # what judge() reads, as native attributes (the settings are an interpreted dataclass)
        self.deny = rule.deny
        self.require_scopes: tuple[str, ...] = tuple(rule.require_scopes)
        self.require_claims = tuple([_Claim(requirement) for requirement in rule.require_claims])

    def matches(self, kind: str, name: str) -> bool:
        pattern = self.patterns[kind]
        return pattern is not None and pattern.match(name) is not None

    def judge(self, principal: Principal | None) -> Decision | None:
        """None when the rule holds, else the refusal."""
        if self.deny:
            return Decision(False, f"{self.label}: deny")
        if self.require_scopes:
            scopes = principal.scopes if principal is not None else frozenset()
            missing = tuple([s for s in self.require_scopes if s not in scopes])
            if missing:
                return Decision(False, f"{self.label}: missing scope {' '.join(missing)}", missing)
        if self.require_claims:
            claims = principal.claims if principal is not None else {}
            for requirement in self.require_claims:
                if not claim_satisfied(requirement, claims):
                    return Decision(False, f"{self.label}: claim {requirement.name} does not match")
        return None


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


class Policy:
    """A route's compiled policy."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self._rules = [_CompiledRule(r) for r in settings.rules]
        self._default = Decision(settings.default == "allow", f"default {settings.default}")
        self._filters = {
            kind: settings.default == "deny" or any(r.patterns[kind] is not None for r in self._rules)
            for kind in KINDS
        }
        #: Per kind, the rules each name seen so far matches, in order: a caller calls the same
        #: tools again and again, and matching is a regex per rule. Bounded (names come from
        #: callers); whether a rule holds is judged on every call (it depends on the caller).
        self._matching: dict[str, dict[str, tuple[_CompiledRule, ...]]] = {kind: {} for kind in KINDS}

    def decide(self, kind: str, name: str, principal: Principal | None) -> Decision:
        """Every rule matching ``name`` must hold; a name no rule matches gets the default."""
        matching = self._matching[kind]
        rules = matching.get(name)
        if rules is None:
            found = tuple([rule for rule in self._rules if rule.matches(kind, name)])
            rules = remember(matching, name, found, _MAX_NAMES)
        if not rules:
            return self._default
        for rule in rules:
            refusal = rule.judge(principal)
            if refusal is not None:
                return refusal
        return _ALLOWED_BY_RULES

    def filters(self, kind: str) -> bool:
        """Whether a list of ``kind`` can lose items to this policy (else it need not be parsed)."""
        return self._filters.get(kind, False)

    def permits(self, kind: str, name: Any, principal: Principal | None) -> bool:
        return isinstance(name, str) and self.decide(kind, name, principal).allowed


class _Claim:
    """A :class:`ClaimRequirement` as native attributes: it is read on every call a rule judges,
    and the settings are an interpreted dataclass."""

    __slots__ = ("name", "path", "values")

    def __init__(self, requirement: ClaimRequirement) -> None:
        self.path: tuple[str, ...] = tuple(requirement.path)
        self.values: tuple[ClaimValue, ...] = tuple(requirement.values)
        self.name = requirement.name


def claim_satisfied(requirement: _Claim, claims: Mapping[str, Any]) -> bool:
    """Claims are JSON (a verified token's payload): indexing anything but an object by a name
    raises TypeError, an object without it KeyError — cheaper than asking first on every call."""
    value: Any = claims
    try:
        for part in requirement.path:
            value = value[part]
    except (KeyError, TypeError):
        return False
    if isinstance(value, list):
        return any(_one_of(candidate, requirement.values) for candidate in value)
    return _one_of(value, requirement.values)


def _one_of(actual: Any, values: tuple[ClaimValue, ...]) -> bool:
    return any(_same(actual, wanted) for wanted in values)


def _same(actual: Any, wanted: ClaimValue) -> bool:
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return isinstance(actual, bool) and isinstance(wanted, bool) and actual == wanted
    if isinstance(wanted, (int, float)):
        return isinstance(actual, (int, float)) and actual == wanted
    return isinstance(actual, str) and actual == wanted


# --- bodies -----------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


_strict_loads: Final = loader(json.JSONDecoder(object_pairs_hook=_no_duplicates))
_plain_loads: Final = loader(json.JSONDecoder())


def parse_strict(raw: bytes) -> Body:
    """A JSON-RPC message or batch, refusing anything else — and duplicate object keys. A single
    message whose policy fields the C reader can read (``mcpproxy/_jsonrpc.c``'s
    ``message_head``: nearly every one) is parsed only if something needs the rest of it; a
    body the C reader finds free of repeated keys is parsed without the hook that checks each
    object's."""
    head = message_head(raw)
    if head is not None:
        return unread_body(raw, head)
    try:
        data = _plain_loads(raw) if keys_unique(raw) else _strict_loads(raw)
    except _DuplicateKey:
        raise ProxyError(
            400, "request body repeats an object key", JSONRPC_INVALID_REQUEST, reason="duplicate_key"
        ) from None
    except (ValueError, RecursionError):
        raise ProxyError(
            400, "request body is not valid JSON", JSONRPC_PARSE_ERROR, reason="parse_error"
        ) from None
    if isinstance(data, dict):
        return Body(raw, [data])
    if isinstance(data, list) and data and all(isinstance(m, dict) for m in data):
        return Body(raw, data, True)
    raise ProxyError(400, "request body is not a JSON-RPC message", JSONRPC_PARSE_ERROR, reason="parse_error")


def calls_in(body: Body) -> list[Call]:
    """The name-bearing requests of a body (tools/call, prompts/get, resources/read)."""
    calls: list[Call] = []
    for index, (method, _, jsonrpc_id, name, uri) in enumerate(body.heads):
        if method is None:
            continue
        named = NAMED_METHODS.get(method)
        if named is not None:
            kind, key = named
            calls.append(Call(method, kind, name if key == "name" else uri, jsonrpc_id, body, index))
    return calls


def list_requests(body: Body) -> dict[JsonId, str]:
    """JSON-RPC id → list method, for the list requests of a body whose answers may be filtered."""
    out: dict[JsonId, str] = {}
    for method, has_id, jsonrpc_id, _, _ in body.heads:
        if method is not None and has_id and method in LIST_METHODS:
            out[jsonrpc_id] = method
    return out


# --- the routing headers of the 2026-07-28 revision --------------------------------------------


def check_routing_headers(body: Body, headers: Headers) -> None:
    """``Mcp-Method`` / ``Mcp-Name``, when sent, must describe exactly the body's one request."""
    if MCP_METHOD not in headers and MCP_NAME not in headers:
        return  # (cheaper than getall's two lists, for the common request that sends neither)
    methods = headers.getall(MCP_METHOD, [])
    names = headers.getall(MCP_NAME, [])
    if len(methods) > 1 or len(names) > 1:
        raise _mismatch("Mcp-Method and Mcp-Name may be sent only once")
    heads = body.heads
    if body.is_batch or len(heads) != 1:
        raise _mismatch("Mcp-Method / Mcp-Name describe one request, but the body is a batch")
    method, _, _, name, uri = heads[0]
    if not methods or method is None or methods[0] != method:
        raise _mismatch("Mcp-Method header does not match the request body's method")
    named = NAMED_METHODS.get(method)
    if named is None:
        if names:
            raise _mismatch("Mcp-Name header sent for a method that names nothing")
        return
    key = named[1]
    body_name = name if key == "name" else uri
    if not names or body_name is None or decode_header_value(names[0]) != body_name:
        raise _mismatch(f"Mcp-Name header does not match the request body's {key!r} parameter")


def decode_header_value(value: str) -> str | None:
    """Header values outside printable ASCII travel as ``=?base64?<utf-8 bytes>?=``."""
    match = _B64_SENTINEL.match(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _mismatch(message: str) -> ProxyError:
    return ProxyError(400, message, JSONRPC_HEADER_MISMATCH, reason="header_mismatch")


# --- enforcement ------------------------------------------------------------------------------


def enforce(policy: Policy, calls: Iterable[Call], principal: Principal | None, body: Body) -> None:
    """Decide every call; raise :class:`PolicyDenied` (403) if any is refused.

    A batch with one refused element is refused whole, so the upstream never sees part of it.
    """
    calls = list(calls)
    for call in calls:
        if call.name is None:
            key = NAMED_METHODS[call.method][1]
            raise ProxyError(
                400,
                f"{call.method} needs params.{key} as a string",
                JSONRPC_INVALID_PARAMS,
                reason="invalid_params",
            )
    denied: list[Call] = []
    for call in calls:
        assert call.name is not None
        call.decision = policy.decide(call.kind, call.name, principal)
        if not call.decision.allowed:
            denied.append(call)
    if not denied:
        return
    first = denied[0]
    missing = tuple(
        dict.fromkeys(s for c in denied for s in (c.decision.missing_scopes if c.decision else ()))
    )
    what = f"{first.method} {_shown(first.name)} is not permitted on this route"
    if missing:
        what += f" (it requires scope {' '.join(missing)})"
    batch_ids: tuple[JsonId, ...] | None = None
    if body.is_batch:
        for call in calls:
            if call.decision is not None and call.decision.allowed:
                call.decision = Decision(False, "batch refused")
        others = len(denied) - 1
        what = "batch refused: " + what + (f"; {others} more element(s) refused" if others else "")
        batch_ids = tuple(id_of(m) for m in body.messages if "id" in m and "method" in m)
    raise PolicyDenied(
        403,
        what,
        JSONRPC_SERVER_ERROR,
        detail="; ".join(c.decision.reason for c in denied if c.decision),
        www_authenticate=(
            bearer_challenge(error="insufficient_scope", description=what, scope=" ".join(missing))
            if missing
            else None
        ),
        reason="policy_denied",
        batch_ids=batch_ids,
    )


def _shown(name: str | None) -> str:
    text = name if name is not None else ""
    return repr(text if len(text) <= 128 else text[:128] + "…")
