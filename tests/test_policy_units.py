"""The framework-free policy core: decisions, routing-header agreement, strict parsing, and the
incremental SSE list filter (any chunking gives the same bytes; other events pass untouched and
immediately)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from mcpproxy.config import parse_config
from mcpproxy.config.inbound import PolicySettings
from mcpproxy.errors import JSONRPC_HEADER_MISMATCH, PolicyDenied, ProxyError
from mcpproxy.jsonrpc import Body
from mcpproxy.policy import (
    Policy,
    calls_in,
    check_routing_headers,
    decode_header_value,
    enforce,
    parse_strict,
)
from mcpproxy.prm import parse_challenges
from mcpproxy.web.filtering import ListFilter


@dataclass
class Who:
    claims: dict[str, Any] = field(default_factory=dict)
    scopes: frozenset[str] = frozenset()


def policy(block: str) -> Policy:
    config = parse_config(
        "routes:\n  - name: a\n    path: /a\n    upstream: http://127.0.0.1:1\n"
        "    auth: {verify: {issuer: 'https://idp', audience: [x]}}\n" + block,
        {},
    )
    settings_ = config.routes[0].policy
    assert isinstance(settings_, PolicySettings)
    return Policy(settings_)


ISSUE = policy(
    """    policy:
      rules:
        - tools: ["delete_*", "drop_table"]
          require_scopes: [admin]
        - tools: ["*"]
          require_claims: {tenant: acme}
"""
)
ALICE = Who({"tenant": "acme"}, frozenset({"mcp", "admin"}))
CAROL = Who({"tenant": "acme"}, frozenset({"mcp"}))
BOB = Who({"tenant": "globex"}, frozenset({"mcp", "admin"}))


@pytest.mark.parametrize(
    ("who", "tool", "allowed", "reason"),
    [
        (ALICE, "delete_records", True, "rules"),
        (CAROL, "delete_records", False, "rules[0]: missing scope admin"),
        (CAROL, "add", True, "rules"),
        (BOB, "add", False, "rules[1]: claim tenant does not match"),
        (BOB, "drop_table", False, "rules[1]: claim tenant does not match"),  # every matching rule applies
        (None, "add", False, "rules[1]: claim tenant does not match"),
        (CAROL, "Delete_records", True, "rules"),  # globs are case-sensitive, like tool names
    ],
)
def test_rules_compose(who: Who | None, tool: str, allowed: bool, reason: str) -> None:
    decision = ISSUE.decide("tools", tool, who)
    assert (decision.allowed, decision.reason) == (allowed, reason)


def test_default_deny_and_kinds() -> None:
    p = policy(
        """    policy:
      default: deny
      rules:
        - {tools: [add], resources: ["file:///pub/*"]}
        - {prompts: ["p?"], require_claims: {groups: [admins, ops], realm_access.roles: [x]}}
        - {tools: ["add"], deny: true, prompts: [forbidden]}
"""
    )
    who = Who({"groups": ["eng", "ops"], "realm_access": {"roles": ["x"]}})
    assert not p.decide("tools", "add", who).allowed  # the deny rule matches too
    assert p.decide("resources", "file:///pub/a", who).allowed
    assert not p.decide("resources", "file:///etc/passwd", who).allowed
    assert p.decide("prompts", "p1", who).allowed
    assert not p.decide("prompts", "p1", Who({"groups": "ops"})).allowed  # realm_access missing
    for not_an_object in ("roles", ["roles"], 3, None, True):  # a path through anything else
        assert not p.decide("prompts", "p1", Who({"groups": "ops", "realm_access": not_an_object})).allowed
    assert not p.decide("prompts", "p1", Who({"groups": "ops", "realm_access": {"roles": "y"}})).allowed
    assert p.decide("prompts", "p1", Who({"groups": "ops", "realm_access": {"roles": "x"}})).allowed
    assert not p.decide("prompts", "p12", who).allowed  # default deny
    # the rules a name matches are remembered (bounded), whether they hold is judged every time
    assert p.decide("prompts", "p1", who).allowed and not p.decide("prompts", "p1", Who({})).allowed
    assert not p.decide("tools", "p1", who).allowed  # a prompt's rules are not a tool's
    for i in range(3000):
        p.decide("tools", f"tool-{i}", who)
    assert all(len(names) <= 1024 for names in p._matching.values())
    assert p.filters("tools") and p.filters("resources") and p.filters("prompts")
    only_tools = policy("    policy: {rules: [{tools: [x], deny: true}]}\n")
    assert only_tools.filters("tools") and not only_tools.filters("prompts")


def test_claim_types_are_strict() -> None:
    p = policy("    policy: {rules: [{tools: ['*'], require_claims: {active: true, level: 3}}]}\n")
    assert p.decide("tools", "t", Who({"active": True, "level": 3})).allowed
    assert p.decide("tools", "t", Who({"active": True, "level": 3.0})).allowed
    assert not p.decide("tools", "t", Who({"active": 1, "level": 3})).allowed
    assert not p.decide("tools", "t", Who({"active": "true", "level": 3})).allowed
    assert not p.decide("tools", "t", Who({"active": True, "level": True})).allowed


def message(name: Any, id_: Any = 1, method: str = "tools/call") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": {"name": name, "arguments": {"x": 1}}}


def body(*messages: dict[str, Any], batch: bool = False) -> Body:
    payload: Any = list(messages) if batch else messages[0]
    return parse_strict(json.dumps(payload).encode())


def test_enforce_single_and_batch() -> None:
    single = body(message("add"))
    calls = calls_in(single)
    enforce(ISSUE, calls, CAROL, single)
    assert calls[0].decision is not None and calls[0].decision.allowed
    batch = body(message("add", 1), message("drop_table", 2), {"jsonrpc": "2.0", "method": "n"}, batch=True)
    calls = calls_in(batch)
    with pytest.raises(PolicyDenied) as info:
        enforce(ISSUE, calls, CAROL, batch)
    assert info.value.status == 403 and info.value.batch_ids == (1, 2)
    assert [c.decision.reason for c in calls if c.decision] == [
        "batch refused",
        "rules[0]: missing scope admin",
    ]
    nameless = body(message(["drop_table"]))
    with pytest.raises(ProxyError) as err:
        enforce(ISSUE, calls_in(nameless), ALICE, nameless)
    assert err.value.status == 400 and err.value.code == -32602


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({}, True),
        ({"Mcp-Method": "tools/call", "Mcp-Name": "add"}, True),
        ({"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?YWRk?="}, True),
        ({"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?YWRk=?="}, False),  # not canonical
        ({"Mcp-Method": "tools/call", "Mcp-Name": "drop_table"}, False),
        ({"Mcp-Method": "tools/call"}, False),
        ({"Mcp-Name": "add"}, False),
        ({"Mcp-Method": "tools/list", "Mcp-Name": "add"}, False),
        ({"mcp-method": "tools/call", "MCP-NAME": "add"}, True),
    ],
)
def test_routing_headers(headers: dict[str, str], ok: bool) -> None:
    b = body(message("add"))
    if ok:
        check_routing_headers(b, CIMultiDict(headers))
    else:
        with pytest.raises(ProxyError) as info:
            check_routing_headers(b, CIMultiDict(headers))
        assert info.value.status == 400 and info.value.code == JSONRPC_HEADER_MISMATCH


def test_routing_headers_twice_or_on_notifications() -> None:
    twice: CIMultiDict[str] = CIMultiDict(
        [("Mcp-Method", "tools/call"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "add")]
    )
    with pytest.raises(ProxyError):
        check_routing_headers(body(message("add")), twice)
    note = body({"jsonrpc": "2.0", "method": "notifications/initialized"})
    check_routing_headers(note, CIMultiDict({"Mcp-Method": "notifications/initialized"}))
    assert decode_header_value("=?base64?w6k=?=") == "é"


def test_parse_strict_refuses_duplicates_anywhere() -> None:
    for raw in (b'{"a":1,"a":2}', b'[{"x":{"y":1,"y":1}}]', b"[]", b"[1]", b"3", b"{"):
        with pytest.raises(ProxyError):
            parse_strict(raw)
    assert parse_strict(b'[{"a":1},{"a":2}]').is_batch


# --- list filtering ----------------------------------------------------------------------------

TOOLS = [
    {"name": n, "inputSchema": {"type": "object"}} for n in ("add", "drop_table", "delete_records", "echo")
]


def listing(id_: Any = 5) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "result": {"tools": TOOLS, "nextCursor": "c"}}).encode()


def filtered_names(payload: bytes) -> list[str]:
    return [t["name"] for t in json.loads(payload)["result"]["tools"]]


def test_json_rewrite_by_id() -> None:
    f = ListFilter.for_request(ISSUE, CAROL, {5: "tools/list"})
    assert f is not None
    assert filtered_names(f.rewrite_payload(listing())) == ["add", "echo"]
    assert json.loads(f.rewrite_payload(listing()))["result"]["nextCursor"] == "c"
    other = ListFilter.for_request(ISSUE, CAROL, {6: "tools/list"})
    assert other is not None and other.rewrite_payload(listing()) == listing()  # another id: untouched
    batch = b"[" + listing(1) + b"," + listing(5) + b"]"
    out = json.loads(ListFilter.for_request(ISSUE, CAROL, {5: "tools/list"}).rewrite_payload(batch))  # type: ignore[union-attr]
    assert len(out[0]["result"]["tools"]) == 4 and len(out[1]["result"]["tools"]) == 2
    assert (
        ListFilter.for_request(policy("    policy: {default: deny}\n"), CAROL, {1: "prompts/list"})
        is not None
    )
    assert (
        ListFilter.for_request(
            policy("    policy: {rules: [{prompts: [x], deny: true}]}\n"), CAROL, {1: "tools/list"}
        )
        is None
    )


PRIMING = b"id: e0\ndata: \n\n"
PROGRESS = (
    b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}\n\n'
)
COMMENT = b": keep-alive\n\n"


def answer_event(id_: int = 5, eol: bytes = b"\n") -> bytes:
    return b"event: message" + eol + b"id: e1" + eol + b"data: " + listing(id_) + eol + eol


def run(stream: bytes, chunks: list[int], f: ListFilter) -> bytes:
    sse_filter = f.sse()
    out = b""
    pos = 0
    for size in chunks:
        out += sse_filter.feed(stream[pos : pos + size])
        pos += size
    out += sse_filter.feed(stream[pos:])
    return out + sse_filter.flush()


@settings(max_examples=200, deadline=None)
@given(
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    chunks=st.lists(st.integers(min_value=1, max_value=40), max_size=60),
)
def test_sse_filter_any_chunking(eol: bytes, chunks: list[int]) -> None:
    head = PRIMING.replace(b"\n", eol) + PROGRESS.replace(b"\n", eol) + COMMENT.replace(b"\n", eol)
    tail = PROGRESS.replace(b"\n", eol)
    stream = head + answer_event(5, eol) + tail
    f = ListFilter.for_request(ISSUE, CAROL, {5: "tools/list"})
    assert f is not None
    out = run(stream, chunks, f)
    assert out.startswith(head) and out.endswith(tail)  # everything else byte for byte
    rewritten = out[len(head) : len(out) - len(tail)]
    assert rewritten.startswith(b"event: message\nid: e1\ndata: ") and rewritten.endswith(b"\n\n")
    data = rewritten.split(b"data: ", 1)[1].strip()
    assert filtered_names(data) == ["add", "echo"]


def test_sse_events_leave_as_soon_as_complete_and_pass_through_after_the_answer() -> None:
    f = ListFilter.for_request(ISSUE, CAROL, {5: "tools/list"})
    assert f is not None
    s = f.sse()
    assert s.feed(PROGRESS[:10]) == b""  # an incomplete event waits for its end…
    assert s.feed(PROGRESS[10:]) == PROGRESS  # …and leaves the moment it is complete
    assert s.feed(answer_event()[:-1]) == b""
    out = s.feed(b"\n" + PROGRESS[:7])
    assert b'"drop_table"' not in out and out.endswith(b"\n\n" + PROGRESS[:7])  # done: raw from here
    assert s.done and s.feed(b"anything") == b"anything"


def test_sse_stream_mode_filters_every_list_answer() -> None:
    f = ListFilter.for_stream(ISSUE, CAROL)
    assert f is not None
    s = f.sse()
    out = s.feed(answer_event(1) + PROGRESS + answer_event(2))
    assert out.count(b'"add"') == 2 and b"drop_table" not in out and PROGRESS in out
    assert not s.done
    unterminated = b"data: " + listing(3)
    assert b"drop_table" not in s.feed(unterminated) + s.flush()


def test_sse_multiline_data_and_non_json_are_handled() -> None:
    f = ListFilter.for_request(ISSUE, CAROL, {5: "tools/list"})
    assert f is not None
    pretty = json.dumps(json.loads(listing()), indent=1).encode()
    event = b"".join(b"data: " + line + b"\n" for line in pretty.split(b"\n")) + b"\n"
    out = f.sse().feed(event)
    assert filtered_names(out.split(b"data: ", 1)[1].strip()) == ["add", "echo"]
    garbage = b'data: {"id": 5, not json\n\n'
    g = ListFilter.for_request(ISSUE, CAROL, {5: "tools/list"})
    assert g is not None and g.sse().feed(garbage) == garbage


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_challenge_parser_never_fails(text: str) -> None:
    for scheme, params in parse_challenges(text):
        assert scheme and all(isinstance(v, str) for v in params.values())
