"""Framework-free core units: routing, endpoint rewriting, SSE, secrets, metrics, header policy."""

from __future__ import annotations

import bisect
import hashlib
import json
import pickle
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from mcpproxy import metrics as metrics_module
from mcpproxy import requestid
from mcpproxy.config import parse_config
from mcpproxy.errors import ProxyError
from mcpproxy.headers import (
    downstream_response_headers,
    downstream_response_lines,
    route_allowlist,
    upstream_request_headers,
    upstream_request_lines,
)
from mcpproxy.http1 import parse_response_head
from mcpproxy.logs import AccessEntry, _clock, encode_access
from mcpproxy.metrics import DEFAULT_BUCKETS, Registry
from mcpproxy.routing import RouteTable, check_target, rewrite_endpoint, upstream_url
from mcpproxy.secrets import Secret
from mcpproxy.sse import EndpointRejected, EndpointRewriter
from tests.support.twins import c_module, python_twin


@pytest.mark.parametrize(
    ("endpoint", "base", "expected"),
    [
        ("/messages/?session_id=abc", "http://127.0.0.1:9000", "/legacy/messages/?session_id=abc"),
        (
            "http://127.0.0.1:9000/messages/?session_id=abc",
            "http://127.0.0.1:9000",
            "/legacy/messages/?session_id=abc",
        ),
        ("/base/messages/?session_id=1", "http://127.0.0.1:9000/base", "/legacy/messages/?session_id=1"),
        ("/elsewhere/messages/", "http://127.0.0.1:9000/base", None),
        ("http://evil.example/messages/", "http://127.0.0.1:9000", None),
        ("/base/../admin", "http://127.0.0.1:9000/base", None),
        ("messages/", "http://127.0.0.1:9000", None),
    ],
)
def test_rewrite_endpoint(endpoint: str, base: str, expected: str | None) -> None:
    assert rewrite_endpoint(endpoint, base, "/legacy") == expected


def test_endpoint_rewriter_handles_split_chunks_and_passes_the_rest() -> None:
    rewriter = EndpointRewriter(lambda e: "/legacy" + e)
    stream = b"event: endpoint\r\ndata: /messages/?session_id=1\r\n\r\nevent: message\ndata: {}\n\n"
    out = b"".join(rewriter.feed(stream[i : i + 7]) for i in range(0, len(stream), 7))
    assert out.startswith(b"event: endpoint\ndata: /legacy/messages/?session_id=1\n\n")
    assert out.endswith(b"event: message\ndata: {}\n\n")
    assert rewriter.done


def test_endpoint_rewriter_rejects_outside_endpoint() -> None:
    rewriter = EndpointRewriter(lambda e: None)
    with pytest.raises(EndpointRejected):
        rewriter.feed(b"event: endpoint\ndata: http://evil/x\n\n")


def test_endpoint_rewriter_stops_after_first_event() -> None:
    rewriter = EndpointRewriter(lambda e: pytest.fail("must not rewrite later events"))  # type: ignore[arg-type,return-value]
    assert rewriter.feed(b"id: 1\ndata: {}\n\n") == b"id: 1\ndata: {}\n\n"
    assert rewriter.done
    assert rewriter.feed(b"event: endpoint\ndata: /x\n\n") == b"event: endpoint\ndata: /x\n\n"


@pytest.mark.parametrize("path", ["/a/../b", "/a/%2e%2E/b", "/a//b", "/a/%2F", "/a\\b", "x/y", "/a/%00"])
def test_check_target_refuses(path: str) -> None:
    with pytest.raises(ProxyError) as info:
        check_target(path)
    assert info.value.status == 400


def test_route_table_remembers_matches_but_not_refusals() -> None:
    routes = "routes:\n  - {name: a, path: /a/mcp, upstream: 'http://127.0.0.1:1/up'}\n"
    table = RouteTable(parse_config(routes, {}).routes)
    first = table.match("/a/mcp?x=1")
    assert first is not None and (first.route.name, first.query, first.upstream_url) == (
        "a",
        "x=1",
        "http://127.0.0.1:1/up?x=1",
    )
    assert table.match("/a/mcp?x=1") is first  # the same target: the same (never changed) match
    other = table.match("/a/mcp/messages/?x=2")
    assert other is not None and other.upstream_url == "http://127.0.0.1:1/up/messages/?x=2"
    assert table.match("/b/mcp") is None and table.match("/b/mcp") is None
    for _ in range(2):
        with pytest.raises(ProxyError):
            table.match("/a/mcp/../x")
    for i in range(3000):  # varied targets: the memo stays bounded
        assert table.match(f"/a/mcp?session={i}") is not None
    assert len(table._known) <= 1024


def test_upstream_url_joins() -> None:
    assert upstream_url("http://u/mcp", "", "") == "http://u/mcp"
    assert upstream_url("http://u/mcp/", "", "a=1") == "http://u/mcp/?a=1"
    assert upstream_url("http://u", "/messages/", "session_id=x") == "http://u/messages/?session_id=x"


def test_secret_never_renders() -> None:
    secret = Secret("s3cr3t-value")
    assert "s3cr3t" not in f"{secret} {secret!r} {[secret]} {secret:>20}"
    assert secret.reveal() == "s3cr3t-value"
    assert secret.fingerprint() == Secret("s3cr3t-value").fingerprint() != Secret("other").fingerprint()
    assert len(secret.fingerprint()) == 12 and set(secret.fingerprint()) <= set("0123456789abcdef")
    assert secret.digest() == hashlib.sha256(b"s3cr3t-value").digest()
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_remember_empties_a_full_memo_first() -> None:
    from mcpproxy.expiring import remember

    memo: dict[int, str] = {}
    assert [remember(memo, i, str(i), 3) for i in range(3)] == ["0", "1", "2"]
    assert memo == {0: "0", 1: "1", 2: "2"}
    assert remember(memo, 3, "3", 3) == "3"
    assert memo == {3: "3"}


def test_fingerprints_are_remembered_boundedly_and_stay_right() -> None:
    from mcpproxy import secrets

    def expected(value: str) -> str:
        digest = hashlib.sha256(value.encode()).digest()
        return hashlib.sha256(b"mcpproxy-fingerprint-v2\0" + digest).hexdigest()[:12]

    values = [f"token-{i}" for i in range(secrets._MAX_TAGS + 100)]
    for value in values:
        assert Secret(value).fingerprint() == expected(value)
        assert len(secrets._TAGS) <= secrets._MAX_TAGS
    assert all(Secret(value).fingerprint() == expected(value) for value in values[::97])


def test_remembered_credentials_are_still_checked_against_each_route() -> None:
    """A caller's token is checked and hashed once (``credentials._SECRETS``), but a remembered
    one is still too long for a route with a lower limit, and a malformed one is never remembered."""
    from mcpproxy import credentials
    from mcpproxy.config.model import AuthorizationSource

    def resolve(value: str, max_bytes: int) -> credentials.Subject | None:
        headers = CIMultiDict({"Authorization": "Bearer " + value})
        view = credentials.RequestView(headers, "proxy.example", "/r/mcp", None, max_bytes)
        return credentials.resolve_subject((AuthorizationSource(),), view)

    token = "eyJ" + "a" * 600 + ".sig"
    first, again = resolve(token, 4096), resolve(token, 4096)
    assert first is not None and again is not None
    assert first.token is again.token and first.token.reveal() == token
    with pytest.raises(ProxyError, match="too long"):
        resolve(token, 100)
    for bad in ("tok\x01en", "tok\x7fen", "tok\u00a0en"):
        for _ in range(2):
            with pytest.raises(ProxyError, match="whitespace or control"):
                resolve(bad, 4096)
        assert all(known.reveal() != bad for known in credentials._SECRETS.values())
    # tokens that end alike share the memo's slot, never a Secret
    twins = ["eyJ" + first_part + "." + "s" * 40 for first_part in ("a" * 300, "b" * 300)]
    for _ in range(2):
        subjects = [resolve(twin, 4096) for twin in twins]
        assert [s.token.reveal() for s in subjects if s is not None] == twins
    for i in range(credentials._MAX_SECRETS + 10):
        subject = resolve(f"token-{i}", 4096)
        assert subject is not None and subject.token.reveal() == f"token-{i}"
        assert len(credentials._SECRETS) <= credentials._MAX_SECRETS


def test_header_policy_both_ways() -> None:
    allowed = route_allowlist(["x-tenant"], ["x-tenant-secret"])
    incoming = CIMultiDict(
        [("Accept", "a"), ("X-Tenant", "t"), ("Authorization", "Bearer x"), ("Upgrade", "h2c"), ("Host", "h")]
    )
    out = upstream_request_headers(
        incoming, allowed, client_ip="1.2.3.4", scheme="http", host="h", request_id="r"
    )
    assert set(out) == {
        "Accept",
        "X-Tenant",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Request-Id",
    }
    response = CIMultiDict(
        [
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=b"),
            ("Transfer-Encoding", "chunked"),
            ("Mcp-Session-Id", "s"),
        ]
    )
    assert set(downstream_response_headers(response, relay_set_cookie=False)) == {
        "Content-Type",
        "Mcp-Session-Id",
    }


def test_metrics_render() -> None:
    metrics = Registry()
    metrics.requests.inc(route="a", http_method="POST", mcp_method="tools/call", status="200")
    metrics.upstream_latency.observe(0.003, route="a")
    text = metrics.render()
    assert (
        'mcpproxy_requests_total{route="a",http_method="POST",mcp_method="tools/call",status="200"} 1' in text
    )
    assert 'mcpproxy_upstream_latency_seconds_bucket{route="a",le="0.005"} 1' in text
    assert 'mcpproxy_upstream_latency_seconds_bucket{route="a",le="0.001"} 0' in text


@given(st.floats(min_value=-1, max_value=20, allow_nan=False))
@example(0.001)
@example(10.0)
@example(10.5)
def test_histogram_bucket_is_the_one_bisect_finds(value: float) -> None:
    assert metrics_module._bucket(DEFAULT_BUCKETS, value) == bisect.bisect_left(DEFAULT_BUCKETS, value)


def test_metrics_positional_labels_count_with_the_keyword_form() -> None:
    """``add``/``observe_at`` (the hot path's form) land on the series ``inc``/``observe`` name."""
    metrics = Registry()
    metrics.requests.inc(route="a", http_method="POST", mcp_method="tools/call", status="200")
    metrics.requests.add(("a", "POST", "tools/call", "200"))
    metrics.requests.add(("a", "POST", "tools/call", "502"), 2)
    metrics.upstream_latency.observe(0.003, route="a")
    metrics.upstream_latency.observe_at(("a",), 0.2)
    assert metrics.requests.value(route="a", http_method="POST", mcp_method="tools/call", status="200") == 2
    assert metrics.requests.value(route="a", http_method="POST", mcp_method="tools/call", status="502") == 2
    assert metrics.upstream_latency.count(route="a") == 2
    text = metrics.render()
    assert 'mcpproxy_upstream_latency_seconds_bucket{route="a",le="0.005"} 1' in text
    assert 'mcpproxy_upstream_latency_seconds_bucket{route="a",le="0.25"} 2' in text
    assert 'mcpproxy_upstream_latency_seconds_sum{route="a"} 0.203' in text


# --- JSON-RPC bodies --------------------------------------------------------------------------

BODIES = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{}}}',
    b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"x"}]',
    b'{"a":1}  \r\n\t',
    '{"text":"caf\u00e9 \u2603 \U0001f600"}'.encode(),
    b'{"lone":"\\ud800"}',
    b'{"a":1} {"b":2}',
    b'{"a":1}x',
    b'{"a":',
    b"{'a':1}",
    b'{"a":NaN}',
    b'{"a":"\xff"}',
    b"[" * 100_000,
    b"[]",
    b"{}",
    b"",
    b'  {"leading":"space"}',
    b'\xef\xbb\xbf{"bom":1}',
    '{"utf16":1}'.encode("utf-16-le"),
    '{"utf16":1}'.encode("utf-16"),
    b"null",
    b"42",
]


def _outcome(parse: Callable[[bytes], object], raw: bytes) -> object:
    """What ``parse`` makes of ``raw``: the value, or the type of the error it raised."""
    try:
        return parse(raw)
    except (ValueError, RecursionError) as exc:
        return type(exc)


def _assert_same(got: object, expected: object) -> None:
    if isinstance(expected, type):
        assert isinstance(got, type) and issubclass(got, ValueError) == issubclass(expected, ValueError)
    else:
        assert got == expected


@pytest.mark.parametrize("raw", BODIES, ids=range(len(BODIES)))
def test_body_parsing_agrees_with_json_loads(raw: bytes) -> None:
    """The C-scanner fast path of jsonrpc._loads must accept, reject and decode exactly what
    json.loads does."""
    from mcpproxy.jsonrpc import _loads

    _assert_same(_outcome(_loads, raw), _outcome(json.loads, raw))


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
#: Bytes that steer the method reader: structure, quotes and escapes, number and literal parts,
#: white space JSON takes and does not, controls, and UTF-8 lead and continuation bytes.
_JSON_NOISE = b'{}[]:,"\\ \t\n\r\x0b\x00\x1f-+.eE0129NIanfu/' + bytes([0x80, 0xBF, 0xC2, 0xE0, 0xED, 0xF0, 0xF4, 0xFF])


_NAMES = st.one_of(
    st.text(max_size=8), st.text("ab/_\\\"", max_size=6), st.sampled_from(["get_weather", "file:///a"]), _JSON_VALUES
)
_PARAMS = st.one_of(
    st.fixed_dictionaries({}, optional={"name": _NAMES, "uri": _NAMES, "arguments": _JSON_VALUES, "_meta": _JSON_VALUES}),
    _JSON_VALUES,
)
_IDS = st.one_of(
    st.integers(-(10**20), 10**20), st.text(max_size=6), st.floats(), st.none(), st.booleans(), _JSON_VALUES
)


@st.composite
def _jsonrpc_bodies(draw: st.DrawFn, policy: bool = False) -> bytes:
    """Messages as clients send them (a method or not, repeated, of any type), written with or
    without spaces and escapes, then sometimes damaged: a byte replaced, inserted or cut. With
    ``policy``, what a route's policy reads is drawn more often: params with a name or a uri,
    ids of every JSON type, the methods a policy judges."""
    members = ["jsonrpc", "id", "params", "x"]
    values = {"id": _IDS, "params": _PARAMS} if policy else {}
    keys = draw(st.lists(st.sampled_from(members), unique=True, min_size=2 if policy else 0))
    message = {key: draw(values.get(key, _JSON_VALUES)) for key in keys}
    named = ["tools/call", "ping", "prompts/get", "resources/read", "tools/list"] if policy else ["tools/call", "ping"]
    method = draw(st.one_of(st.text(max_size=12), st.sampled_from(named), _JSON_VALUES))
    pairs = list(message.items())
    if draw(st.booleans()) or policy:
        pairs.insert(draw(st.integers(0, len(pairs))), ("method", method))
    if draw(st.integers(0, 5)) == (5 if policy else 0):  # (hypothesis draws 0 more often than 1 in 6)
        pairs.append((draw(st.sampled_from(["method", "id"])), draw(_JSON_VALUES)))
    ascii_only, spaced = draw(st.booleans()), draw(st.booleans())
    separator = (", ", ": ") if spaced else (",", ":")
    text = "{" + separator[0].join(
        json.dumps(k, ensure_ascii=ascii_only) + separator[1] + json.dumps(v, ensure_ascii=ascii_only)
        for k, v in pairs
    ) + "}" + draw(st.sampled_from(["", "", "", " \r\n\t", "\x0b", " x"] if policy else ["", " \r\n\t", "\x0b", " x"]))
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]) if policy else st.integers(0, 2))):
        at = draw(st.integers(1, max(1, len(raw))))
        action = draw(st.sampled_from(["replace", "insert", "cut"]))
        byte = draw(st.sampled_from(list(_JSON_NOISE)))
        if action == "cut":
            del raw[at:]
        elif action == "insert":
            raw[at:at] = bytes([byte])
        elif at < len(raw):
            raw[at] = byte
    return bytes(raw)


def _c_method_label() -> Callable[[bytes], str | None]:
    method_label: Callable[[bytes], str | None] = c_module("_jsonrpc").method_label
    return method_label


def _method_after_a_full_parse(raw: bytes) -> str:
    from mcpproxy.jsonrpc import parse_body

    body = parse_body(raw, strict=False)
    assert isinstance(body.messages, list)  # parsed now: the method comes from the messages
    return body.method


@settings(max_examples=2000, deadline=None)
@given(_jsonrpc_bodies())
@example(b'{"method":"tools/call"}')
@example(b'{"method":"\\u0074ools"}')
@example(b'{"meth\\u006fd":"x"}')
@example(b'{"a":' + b"[" * 70 + b"]" * 70 + b',"method":"deep"}')
@example(b'{"a":' + b"1" * 700 + b',"method":"big"}')
@example(b'{"a":1.5e+3,"b":-0,"c":-Infinity,"d":NaN,"method":"m"}')
@example(b'{"a":01,"method":"m"}')
@example(b'{"a":1.,"method":"m"}')
@example(b'{"method":"\xed\xa0\x80"}')
@example(b'{"method":"\xc0\x80"}')
def test_the_c_method_reader_agrees_with_json_loads(raw: bytes) -> None:
    """The relay reads a lenient body's method in C, without parsing it; where the C reader
    answers at all, it answers what a full parse (json.loads) makes of the body."""
    label = _c_method_label()(raw)
    assert label is None or label == _method_after_a_full_parse(raw)


def test_the_c_method_reader_answers_for_the_common_bodies() -> None:
    """It defers to the full parse only where it must (not a single message, an escaped method,
    deep nesting, a huge integer): the common bodies, good or broken, it answers itself."""
    read = _c_method_label()
    assert read(b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{}}}') == (
        "tools/call"
    )
    assert read(b'{"jsonrpc":"2.0","id":7,"result":{"content":[]}}') == "response"
    assert read(b'{"jsonrpc":"2.0","method":"x","params":{"text":"a\\"b\\u00e9 \xc3\xa9"}} \n') == "x"
    assert read(b'{"jsonrpc":"2.0","method":"x"') == "-"
    assert read(b'{"jsonrpc":"2.0","method":"x","y":"\x01"}') == "-"
    for deferred in (b'[{"method":"x"}]', b' {"method":"x"}', b'{"method":"\\u0078"}', b'{"a":' + b"[" * 65 + b"]" * 65 + b"}"):
        assert read(deferred) is None
        assert _method_after_a_full_parse(deferred) in ("batch", "x", "response")
    with pytest.raises(TypeError):
        read(bytearray(b"{}"))  # type: ignore[arg-type]


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


@pytest.mark.parametrize(
    "raw", [*BODIES, b'{"a":1,"a":2}', b'[{"x":{"b":1,"b":1}}]'], ids=range(len(BODIES) + 2)
)
def test_strict_parsing_agrees_with_json_loads_and_its_hook(raw: bytes) -> None:
    """The policy's strict parser (the same fast path, with a duplicate-key hook) decodes and
    refuses what ``json.loads`` with that hook does."""
    from mcpproxy.jsonrpc import loader

    strict = loader(json.JSONDecoder(object_pairs_hook=_refuse_duplicates))
    expected = _outcome(lambda b: json.loads(b, object_pairs_hook=_refuse_duplicates), raw)
    _assert_same(_outcome(strict, raw), expected)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(_jsonrpc_bodies(), _jsonrpc_bodies().map(lambda raw: b"[" + raw + b"]")))
@example(b'{"a":{"b":1,"b":2}}')
@example(b'{"a":1,"\\u0061":2}')
@example(b'[{"k":1},{"k":1}]')
@example(b'{"a":{"b":1},"c":{"b":1}}')
@example(b'{"' + b'":1,"'.join(b"k%d" % i for i in range(33)) + b'":1}')
def test_the_c_key_check_only_clears_bodies_without_repeated_keys(raw: bytes) -> None:
    """A route under a policy parses a body without the duplicate-key hook only where the C
    reader says its objects repeat no key; there, the checking parse agrees and finds none."""
    _jsonrpc = c_module("_jsonrpc")
    if _jsonrpc.keys_unique(raw):
        json.loads(raw, object_pairs_hook=_refuse_duplicates)  # raises on a repeated key
    assert _jsonrpc.keys_unique(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}')
    assert not _jsonrpc.keys_unique(b'{"method":"a","method":"b"}')


def _strict_head(raw: bytes) -> object:
    """What policy reads of ``raw`` after the checking parse (json.loads refusing repeated keys)."""
    from mcpproxy.jsonrpc import head_of

    data = json.loads(raw, object_pairs_hook=_refuse_duplicates)
    assert isinstance(data, dict)
    return head_of(data)


def _typed(value: object) -> object:
    """``value`` with each member's type beside it (``1 == True`` and ``1 == 1.0`` in Python)."""
    return [(type(v), v) for v in value] if isinstance(value, tuple) else value


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_jsonrpc_bodies(policy=True), _jsonrpc_bodies()))
@example(b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","uri":5,"arguments":{"name":"x"}}}')
@example(b'{"method":"tools/call","params":{"name":"\\u0074"}}')
@example(b'{"method":"tools/call","params":{"n\\u0061me":"t"}}')
@example(b'{"method":"tools/call","params":[{"name":"t"}]}')
@example(b'{"method":"tools/call","params":{"name":"a","name":"b"}}')
@example(b'{"method":"m","id":-0}')
@example(b'{"method":"m","id":123456789012345678}')
@example(b'{"method":"m","id":1234567890123456789}')
@example(b'{"method":"m","id":1e2}')
@example(b'{"method":"m","id":-Infinity}')
@example(b'{"method":"m","id":true}')
@example(b'{"method":"m","id":"\xed\xa0\x80"}')
@example(b'{"x":{"method":"inner","id":2,"params":{"name":"inner"}},"method":"outer"}')
def test_the_c_message_reader_agrees_with_the_checking_parse(raw: bytes) -> None:
    """A route under a policy decides on what the C reader reads of a single message, without
    building it; where it answers at all, the body is one object json.loads takes with no key
    repeated, and the answer is what :func:`mcpproxy.jsonrpc.head_of` reads of that object."""
    head = c_module("_jsonrpc").message_head(raw)
    if head is not None:
        assert _typed(head) == _typed(_strict_head(raw))


def test_the_c_message_reader_answers_for_the_common_bodies() -> None:
    """It defers to the full parse only where it must: the common tools/call, resources/read and
    list bodies it reads itself."""
    read = c_module("_jsonrpc").message_head
    bodies = {
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get","arguments":{"q":"\\u00e9"}}}': (
            "tools/call", True, 7, "get", None,
        ),
        b'{"jsonrpc":"2.0","id":"a-1","method":"resources/read","params":{"uri":"file:///x"}}': (
            "resources/read", True, "a-1", None, "file:///x",
        ),
        b'{"jsonrpc":"2.0","id":null,"method":"tools/list"}': ("tools/list", True, None, None, None),
        b'{"jsonrpc":"2.0","method":"notifications/initialized"} ': ("notifications/initialized", False, None, None, None),
        b'{"jsonrpc":"2.0","id":3,"result":{}}': (None, True, 3, None, None),
        b'{"jsonrpc":"2.0","id":-0,"method":"ping"}': ("ping", True, 0, None, None),
        b'{"id":-123456789012345678,"method":"m\xc3\xa9"}': ("m\u00e9", True, -123456789012345678, None, None),
        b'{"id":123456789012345678,"method":"tools/callx"}': ("tools/callx", True, 123456789012345678, None, None),
    }
    for raw, expected in bodies.items():
        assert read(raw) == expected
        assert _typed(read(raw)) == _typed(_strict_head(raw))
    # a known method is the shared str (its hash made once), another a new one
    assert read(b'{"id":1,"method":"tools/call"}')[0] is sys.intern("tools/call")
    assert read(b'{"id":1,"method":"tools/callx"}')[0] is not sys.intern("tools/callx")
    for deferred in (
        b'{"method":"x","id":1234567890123456789}',
        b'[{"method":"x"}]',
        b'{"method":"\\u0078"}',
        b'{"method":"x","id":1.5}',
        b'{"method":"x","a":1,"a":1}',
        b'{"method":"x"',
        b'{"method":"x"} {}',
    ):
        assert read(deferred) is None


_ENTRY: dict[str, object] = {
    "route": "orch",
    "method": "POST",
    "path": "/orch/mcp",
    "mcp_method": "tools/call",
    "status": 200,
    "bytes": 224,
    "duration_ms": 1.23456,
    "request_id": "rid-1",
    "via": "relay",
}


@pytest.mark.parametrize(
    "fields",
    [
        _ENTRY,
        _ENTRY | {"mcp_method": None, "upstream_ms": 0.5, "credential_source": "fallback"},
        _ENTRY
        | {
            "path": '/orch/"mcp"\\\n\u00e9\u2028',
            "credential_source": "authorization",
            "subject_fingerprint": "0123456789ab",
            "sub": 'al"ice\r\n\t\x00',
            "error": "upstream_stream_failed",
            "detail": "ClientPayloadError",
        },
        _ENTRY | {"error": "", "detail": None},
    ],
)
def test_access_line_is_one_json_object_of_its_fields(fields: dict[str, Any]) -> None:
    line = encode_access(AccessEntry(**fields), "2026-11-22T10:00:00", 1)
    assert line.endswith("}\n") and line.count("\n") == 1 and line.isascii()
    expected: dict[str, object] = {
        key: fields[key] for key in _ACCESS_ORDER if fields.get(key) or key in _ACCESS_ALWAYS
    }
    expected["duration_ms"] = round(fields["duration_ms"], 3)
    if fields.get("upstream_ms") is not None:
        expected["upstream_ms"] = round(fields["upstream_ms"], 3)
    expected |= {"event": "request", "level": "info", "timestamp": "2026-11-22T10:00:00.000001Z"}
    decoded = json.loads(line)
    assert decoded == expected
    assert list(decoded) == list(expected)  # the fields in the entry's order, the event's last


#: The access line's fields, in the order it writes them (``event``, ``level`` and ``timestamp``
#: follow), and those it always writes.
_ACCESS_ORDER = (
    *("route", "method", "path", "mcp_method", "status", "bytes", "duration_ms", "request_id", "via"),
    *("upstream_ms", "credential_source", "subject_fingerprint", "sub", "error", "detail"),
)
_ACCESS_ALWAYS = set(_ACCESS_ORDER[:9])


@given(st.floats(min_value=0, max_value=1e8, allow_nan=False))
@example(0.0)
@example(0.0004999)
@example(999.9996)
@example(1.23456)
def test_millis_are_the_value_to_three_decimals(value: float) -> None:
    written = _ACCESS_REFERENCE._millis(value)
    assert re.fullmatch(r"(0|[1-9][0-9]*)\.[0-9]{3}", written)
    assert abs(float(written) - value) <= 0.0005 + value * 1e-15
    # %.3f, the format it replaces, differs at most in the last digit of an exact half
    assert written == f"{value:.3f}" or abs(float(written) - float(f"{value:.3f}")) <= 0.0011


_ACCESS_REFERENCE = python_twin("_access")
_texts = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["", "tools/call", 'a"b\\c\x7f'])
_optional_texts = st.none() | _texts
_durations = st.floats(min_value=-1e6, max_value=1e13, allow_nan=False) | st.sampled_from([0.0, 0.0005, 1e17])


@settings(max_examples=1500, deadline=None)
@given(
    texts=st.tuples(_texts, _texts, _texts, _optional_texts, _texts, _texts),
    optional=st.tuples(*[_optional_texts] * 5),
    numbers=st.tuples(st.integers(-1, 999), st.integers(0, 2**70), _durations, st.none() | _durations),
    second=st.from_regex(r"\A[0-9T:-]{0,20}\Z") | st.sampled_from(["2026-11-22T10:00:0\u00e9"]),
    micros=st.integers(0, 999_999) | st.sampled_from([-1, 1_000_000, 2**70]),
)
def test_c_access_line_agrees_with_the_python_twin(
    texts: tuple[str, str, str, str | None, str, str],
    optional: tuple[str | None, ...],
    numbers: tuple[int, int, float, float | None],
    second: str,
    micros: int,
) -> None:
    built = c_module("_access")
    route, method, path, mcp_method, request_id, via = texts
    status, size, duration, upstream = numbers
    args = (route, method, path, mcp_method, status, size, duration, request_id, via, upstream, *optional)
    if not second.isascii() or not 0 <= micros <= 999_999:
        for module in (built, _ACCESS_REFERENCE):
            with pytest.raises((ValueError, OverflowError)):
                module.access_line(*args, second, micros)
        return
    line = built.access_line(*args, second, micros)
    assert line == _ACCESS_REFERENCE.access_line(*args, second, micros)
    decoded = json.loads(line)
    assert decoded["path"] == path
    assert decoded["timestamp"] == f"{second}.{micros:06d}Z"


def test_c_access_line_refuses_what_the_twin_refuses() -> None:
    import mcpproxy._access as built  # the C module where it is built, else the twin itself

    fields = ("r", "POST", "/p", None, 200, 1, 1.0, "id", "relay", None, None, None, None, None, None, "t", 5)
    for module in (built, _ACCESS_REFERENCE):
        assert module.access_line(*fields).endswith('"timestamp":"t.000005Z"}\n')
        with pytest.raises(TypeError):
            module.access_line(*fields[:12], Secret("planted-token-123456"), *fields[13:])
        with pytest.raises((ValueError, OverflowError)):
            module.access_line(*fields[:6], float("inf"), *fields[7:])
        with pytest.raises(ValueError):
            module.access_line(*fields[:16], 1_000_000)


def test_access_timestamp_is_now_in_iso_8601_with_microseconds() -> None:
    before = time.time()
    second, micros = _clock()
    after = time.time()
    line = encode_access(AccessEntry(**_ENTRY), second, micros)
    written = json.loads(line)["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", written)
    seconds = time.mktime(time.strptime(written[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert int(before) - 1 <= seconds + int(written[20:26]) / 1e6 <= after + 1e-6


def test_request_ids_are_16_hex_digits_a_prefix_and_a_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [requestid.new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in ids)
    assert len({rid[:8] for rid in ids}) == 1
    monkeypatch.setattr(requestid._IDS, "next", 0xFFFFFFFE)
    assert [requestid.new_request_id()[8:] for _ in range(3)] == ["fffffffe", "ffffffff", "00000000"]


def test_access_line_cannot_carry_a_secret() -> None:
    with pytest.raises(TypeError):
        encode_access(AccessEntry(**(_ENTRY | {"sub": Secret("planted-token-123456")})), "t")


_RESPONSE_NAMES = [
    "Content-Type",
    "Mcp-Session-Id",
    "Set-Cookie",
    "set-cookie",
    "Set-Cookie2",
    "Date",
    "Server",
    "Keep-Alive",
    "Trailer",
    "Proxy-Authenticate",
    "Upgrade",
    "X-Request-Id",
    "x-request-id",
    "WWW-Authenticate",
    "X-Custom",
    "Content-Length",
    "Connection",
]
#: Framing fields get values that frame the answer validly; the rest any visible text.
_FRAMING_VALUES = {"Content-Length": "5", "Connection": "keep-alive"}


@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(_RESPONSE_NAMES),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
        ),
        max_size=10,
    ),
    relay_set_cookie=st.booleans(),
)
def test_response_policy_on_lines_agrees_with_the_multidict_form(
    fields: list[tuple[str, str]], relay_set_cookie: bool
) -> None:
    block = "HTTP/1.1 200 OK\r\n"
    block += "".join(f"{name}: {_FRAMING_VALUES.get(name, value)}\r\n" for name, value in fields)
    head = parse_response_head((block + "\r\n").encode())
    lines = downstream_response_lines(head.names, head.lines, relay_set_cookie=relay_set_cookie)
    if any(name == "Connection" for name, _ in fields):
        assert lines is None  # its options may name more fields: the multidict form decides
        return
    assert lines is not None
    expected = downstream_response_headers(head.headers, relay_set_cookie=relay_set_cookie)
    expected.popall("X-Request-Id", None)  # the relay adds its own
    relayed = [(name, value.strip(" \t")) for name, _, value in (line.partition(":") for line in lines)]
    assert relayed == list(expected.items())


_REQUEST_NAMES = [
    "Accept",
    "Content-Type",
    "Mcp-Session-Id",
    "X-Tenant",
    "x-tenant",
    "Authorization",
    "Cookie",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Request-Id",
    "X-Upstream-Key",
    "Connection",
    "Keep-Alive",
    "Traceparent",
]


@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(_REQUEST_NAMES),
            st.sampled_from(["a", "b c", "X-Tenant", "close, x-tenant", "mcp-session-id", ""]),
        ),
        max_size=10,
    ),
    host=st.sampled_from(["h.example", "", "h2.example"]),
    replaced=st.sampled_from([None, "Authorization", "X-Upstream-Key", "x-tenant"]),
    client=st.tuples(st.sampled_from(["10.0.0.9", "::1"]), st.sampled_from(["http", "https"])),
)
@example(fields=[("X-Tenant", "a"), ("Connection", "close, x-tenant")], host="h", replaced=None, client=("a", "http"))
@example(
    fields=[("X-Upstream-Key", "a"), ("X-Forwarded-Host", "b")],
    host="",
    replaced="X-Upstream-Key",
    client=("a", "http"),
)
def test_request_policy_on_lines_agrees_with_the_multidict_form(
    fields: list[tuple[str, str]], host: str, replaced: str | None, client: tuple[str, str]
) -> None:
    """(The forwarding lines are kept from one request to the next while the client, scheme,
    Host and prior hops stay the same: the examples change them in every way.)"""
    allowed = route_allowlist(["x-tenant", "x-upstream-key", "x-forwarded-for", "x-forwarded-host"], [])
    lines = [f"{name}: {value}" for name, value in fields]
    incoming = CIMultiDict(fields)
    names = [name.lower() for name, _ in fields]
    context = {"client_ip": client[0], "scheme": client[1], "host": host, "request_id": "rid"}
    got = upstream_request_lines(names, lines, incoming, allowed, replaced=replaced, **context)
    expected = upstream_request_headers(incoming, allowed, **context)
    if replaced is not None:
        expected[replaced] = "credential"
        got.append(f"{replaced}: credential")
    sent = [(name, value.strip(" \t")) for name, _, value in (line.partition(":") for line in got)]
    assert _by_name(sent) == _by_name(expected.items())
    by_name = _by_name(sent)
    assert by_name["x-forwarded-for"][0].rsplit(", ", 1)[-1] == client[0]
    assert by_name["x-forwarded-proto"] == [client[1]]
    if host:
        assert by_name["x-forwarded-host"] == [host]


def _by_name(fields: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Each field name (lower case) with its values in order: what a multi-valued field means."""
    values: dict[str, list[str]] = {}
    for name, value in fields:
        values.setdefault(name.lower(), []).append(value)
    return values
