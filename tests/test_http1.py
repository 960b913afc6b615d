"""Unit tests for :mod:`mcpproxy.http1`: request/response heads, chunked-body scanning, encoding.

Tests marked ``Regression:`` pin down bugs these tests found in the first version of the module
(the comment describes the old behaviour).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import istr

from mcpproxy.http1 import (
    ChunkDecoder,
    ChunkScanner,
    Framing,
    ProtocolViolation,
    RequestHead,
    ResponseHead,
    _whole_chunk,
    encode_head,
    parse_request_head,
    parse_response_head,
    safe_value,
)
from tests.support.twins import c_module, python_twin

ROOT = Path(__file__).resolve().parent.parent


def head(*lines: bytes) -> bytes:
    """A message head as the caller cuts it: CRLF-separated lines ending with the blank line."""
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def request(*fields: bytes, line: bytes = b"POST /mcp HTTP/1.1") -> bytes:
    return head(line, *fields)


HOST = b"Host: proxy.example"


# --------------------------------------------------------------------------- parse_request_head


@pytest.mark.parametrize(
    ("block", "method", "target", "host", "length", "keep_alive"),
    [
        (request(HOST), "POST", "/mcp", "proxy.example", 0, True),
        (request(HOST, b"Content-Length: 42"), "POST", "/mcp", "proxy.example", 42, True),
        (request(HOST, b"Content-Length: 0"), "POST", "/mcp", "proxy.example", 0, True),
        (request(HOST, b"Content-Length: 007"), "POST", "/mcp", "proxy.example", 7, True),
        (request(HOST, b"Content-Length: " + b"9" * 15), "POST", "/mcp", "proxy.example", 10**15 - 1, True),
        (request(HOST, line=b"DELETE /mcp HTTP/1.1"), "DELETE", "/mcp", "proxy.example", 0, True),
        (request(HOST, line=b"POST / HTTP/1.1"), "POST", "/", "proxy.example", 0, True),
        (
            request(HOST, line=b"POST /a/b?x=1&y=%20#frag HTTP/1.1"),
            "POST",
            "/a/b?x=1&y=%20#frag",
            "proxy.example",
            0,
            True,
        ),
        (request(b"host: lower.example:8080"), "POST", "/mcp", "lower.example:8080", 0, True),
        (request(b"HOST:nospace"), "POST", "/mcp", "nospace", 0, True),
        # OWS (SP / HTAB) around the value is trimmed, also for Content-Length.
        (request(b"Host: \t spaced.example \t "), "POST", "/mcp", "spaced.example", 0, True),
        (request(HOST, b"Content-Length:\t 12 \t"), "POST", "/mcp", "proxy.example", 12, True),
        # Connection: close (any case, anywhere in the list) turns keep-alive off.
        (request(HOST, b"Connection: close"), "POST", "/mcp", "proxy.example", 0, False),
        (request(HOST, b"Connection: Close"), "POST", "/mcp", "proxy.example", 0, False),
        (request(HOST, b"connection: keep-alive, CLOSE"), "POST", "/mcp", "proxy.example", 0, False),
        (request(HOST, b"Connection: keep-alive"), "POST", "/mcp", "proxy.example", 0, True),
        (request(HOST, b"Connection: Upgrade-Insecure"), "POST", "/mcp", "proxy.example", 0, True),
        (request(HOST, line=b"GET /mcp HTTP/1.1"), "GET", "/mcp", "proxy.example", 0, True),
        (request(HOST, line=b"DELETE /mcp HTTP/1.1"), "DELETE", "/mcp", "proxy.example", 0, True),
    ],
)
def test_parse_request_head_accepts_strict_subset(
    block: bytes, method: str, target: str, host: str, length: int, keep_alive: bool
) -> None:
    parsed = parse_request_head(block)
    assert isinstance(parsed, RequestHead)
    assert parsed.method == method
    assert parsed.target == target
    assert parsed.host == host
    assert parsed.content_length == length
    assert parsed.keep_alive is keep_alive


def test_parse_request_head_keeps_all_fields_in_order_with_trimmed_values() -> None:
    block = request(
        HOST,
        b"Content-Type:  application/json ",
        b"X-Multi: one",
        b"x-multi:two\t",
        b"Authorization: Bearer a.b.c",
        b"X-Empty:",
        b"X-Punct: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        b"X-Inner: a \t b",
    )
    parsed = parse_request_head(block)
    assert parsed is not None
    assert list(parsed.headers.items()) == [
        ("Host", "proxy.example"),
        ("Content-Type", "application/json"),
        ("X-Multi", "one"),
        ("x-multi", "two"),
        ("Authorization", "Bearer a.b.c"),
        ("X-Empty", ""),
        ("X-Punct", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
        ("X-Inner", "a \t b"),
    ]
    assert parsed.headers.getall("X-MULTI") == ["one", "two"]


def test_parse_request_head_accepts_every_token_character_in_names() -> None:
    name = b"!#$%&'*+-.^_`|~09AZaz"
    parsed = parse_request_head(request(HOST, name + b": v"))
    assert parsed is not None
    assert parsed.headers[name.decode()] == "v"


REJECTED_REQUESTS: dict[str, bytes] = {
    # request line
    "HEAD": request(HOST, line=b"HEAD /mcp HTTP/1.1"),
    "OPTIONS": request(HOST, line=b"OPTIONS /mcp HTTP/1.1"),
    "PUT": request(HOST, line=b"PUT /mcp HTTP/1.1"),
    "PATCH": request(HOST, line=b"PATCH /mcp HTTP/1.1"),
    "CONNECT": request(HOST, line=b"CONNECT proxy.example:443 HTTP/1.1"),
    "lowercase method": request(HOST, line=b"post /mcp HTTP/1.1"),
    "HTTP/1.0": request(HOST, line=b"POST /mcp HTTP/1.0"),
    "HTTP/2.0": request(HOST, line=b"POST /mcp HTTP/2.0"),
    "lowercase version": request(HOST, line=b"POST /mcp http/1.1"),
    "no version": request(HOST, line=b"POST /mcp"),
    "absolute-form": request(HOST, line=b"POST http://proxy.example/mcp HTTP/1.1"),
    "asterisk-form": request(HOST, line=b"POST * HTTP/1.1"),
    "authority-form": request(HOST, line=b"POST proxy.example:80 HTTP/1.1"),
    "relative target": request(HOST, line=b"POST mcp HTTP/1.1"),
    "empty target": request(HOST, line=b"POST  HTTP/1.1"),
    "double space after method": request(HOST, line=b"POST  /mcp HTTP/1.1"),
    "double space before version": request(HOST, line=b"POST /mcp  HTTP/1.1"),
    "leading space": request(HOST, line=b" POST /mcp HTTP/1.1"),
    "trailing space": request(HOST, line=b"POST /mcp HTTP/1.1 "),
    "tab separator": request(HOST, line=b"POST\t/mcp HTTP/1.1"),
    "space in target": request(HOST, line=b"POST /m cp HTTP/1.1"),
    "obs-text in target": request(HOST, line=b"POST /caf\xc3\xa9 HTTP/1.1"),
    "CTL in target": request(HOST, line=b"POST /a\x01b HTTP/1.1"),
    "DEL in target": request(HOST, line=b"POST /a\x7fb HTTP/1.1"),
    "bare LF after request line": b"POST /mcp HTTP/1.1\nHost: proxy.example\r\n\r\n",
    "empty request line": b"\r\nPOST /mcp HTTP/1.1\r\nHost: proxy.example\r\n\r\n",
    # headers whose presence sends the request to aiohttp
    "Transfer-Encoding": request(HOST, b"Transfer-Encoding: chunked"),
    "transfer-encoding lowercase": request(HOST, b"transfer-encoding: chunked"),
    "TRANSFER-ENCODING uppercase": request(HOST, b"TRANSFER-ENCODING: chunked"),
    "Transfer-Encoding mixed case": request(HOST, b"TrAnSfEr-EnCoDiNg: chunked"),
    "Transfer-Encoding identity": request(HOST, b"Transfer-Encoding: identity"),
    "Transfer-Encoding empty": request(HOST, b"Transfer-Encoding:"),
    "Transfer-Encoding with Content-Length": request(
        HOST, b"Content-Length: 5", b"Transfer-Encoding: chunked"
    ),
    "Expect": request(HOST, b"Content-Length: 5", b"Expect: 100-continue"),
    "expect lowercase": request(HOST, b"expect: 100-continue"),
    "Upgrade": request(HOST, b"Connection: Upgrade", b"Upgrade: websocket"),
    "UPGRADE uppercase": request(HOST, b"UPGRADE: h2c"),
    "HTTP2-Settings": request(HOST, b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
    # Host
    "no Host": request(b"Content-Length: 0"),
    "no fields at all": request(),
    "two Host": request(HOST, b"Host: other.example"),
    "two identical Host": request(HOST, HOST),
    "two Host different case": request(b"host: a", b"HOST: a"),
    # Content-Length
    "two Content-Length": request(HOST, b"Content-Length: 5", b"Content-Length: 6"),
    "two equal Content-Length": request(HOST, b"Content-Length: 5", b"Content-Length: 5"),
    "two Content-Length different case": request(HOST, b"content-length: 5", b"CONTENT-LENGTH: 5"),
    "Content-Length list": request(HOST, b"Content-Length: 5, 5"),
    "Content-Length plus sign": request(HOST, b"Content-Length: +5"),
    "Content-Length minus sign": request(HOST, b"Content-Length: -5"),
    "Content-Length inner space": request(HOST, b"Content-Length: 1 2"),
    "Content-Length hex": request(HOST, b"Content-Length: 0x10"),
    "Content-Length hex digits": request(HOST, b"Content-Length: 1a"),
    "Content-Length decimal point": request(HOST, b"Content-Length: 1.0"),
    "Content-Length underscore": request(HOST, b"Content-Length: 1_000"),
    "Content-Length empty": request(HOST, b"Content-Length:"),
    "Content-Length blank": request(HOST, b"Content-Length:   "),
    "Content-Length 16 digits": request(HOST, b"Content-Length: " + b"1" * 16),
    "Content-Length obs-text digit": request(HOST, b"Content-Length: 1\xb2"),
    # malformed field lines
    "obs-fold": request(HOST, b"X-Folded: a", b" continued"),
    "obs-fold with tab": request(HOST, b"X-Folded: a", b"\tcontinued"),
    "obs-fold of Host": request(b"Host:", b" proxy.example"),
    "space before colon": request(b"Host : proxy.example"),
    "tab before colon": request(b"Host\t: proxy.example"),
    "leading space in name": request(HOST, b" X-A: 1"),
    "space inside name": request(HOST, b"X A: 1"),
    "empty name": request(HOST, b": value"),
    "no colon": request(HOST, b"NoColonHere"),
    "non-token name char": request(HOST, b"X(A): 1"),
    "obs-text in name": request(HOST, b"X-\xe9: 1"),
    "bare LF between fields": b"POST /mcp HTTP/1.1\r\nHost: proxy.example\nX-A: 1\r\n\r\n",
    "bare LF ending a field": b"POST /mcp HTTP/1.1\r\nX-A: 1\nHost: proxy.example\r\n\r\n",
    "bare CR in value": request(HOST, b"X-A: 1\r2"),
    "NUL in value": request(HOST, b"X-A: a\x00b"),
    "SOH in value": request(HOST, b"X-A: a\x01b"),
    "VT in value": request(HOST, b"X-A: a\x0bb"),
    "ESC in value": request(HOST, b"X-A: a\x1bb"),
    "DEL in value": request(HOST, b"X-A: a\x7fb"),
    "obs-text 0x80 in value": request(HOST, b"X-A: a\x80b"),
    "obs-text 0xff in value": request(HOST, b"X-A: a\xffb"),
    "UTF-8 in value": request(HOST, b"X-A: caf\xc3\xa9"),
    "NUL in Host": request(b"Host: proxy.example\x00.evil"),
}


@pytest.mark.parametrize("block", list(REJECTED_REQUESTS.values()), ids=list(REJECTED_REQUESTS))
def test_parse_request_head_rejects_everything_else(block: bytes) -> None:
    assert block.endswith(b"\r\n\r\n")
    assert parse_request_head(block) is None


def test_rejected_request_table_differs_from_an_accepted_base() -> None:
    # Guard for the table above: the base request every case was derived from is accepted.
    assert parse_request_head(request(HOST, b"Content-Length: 5", b"X-A: ab")) is not None


# Regression: `Connection` is a list-valued field (RFC 9110 7.6.1): several field lines are one
# comma-separated list, so `close` in a second `Connection` line must turn keep-alive off.
# `_request_head` only looks at the first line (`headers.get("Connection")`), so keep_alive is
# True here.
def test_parse_request_head_connection_close_in_second_connection_field() -> None:
    parsed = parse_request_head(request(HOST, b"Connection: keep-alive", b"Connection: close"))
    assert parsed is not None
    assert parsed.keep_alive is False


_REQUEST_LINES = [
    b"POST /mcp HTTP/1.1",
    b"DELETE /x?y=1 HTTP/1.1",
    b"GET /mcp HTTP/1.1",
    b"POST /mcp HTTP/1.0",
    b"POST  /mcp HTTP/1.1",
    b"POST http://h/ HTTP/1.1",
]
_REQUEST_FIELDS = [
    b"Host: a.example",
    b"host:b",
    b"Content-Length: 10",
    b"Content-Length: 1x",
    b"content-length:  3 ",
    b"Transfer-Encoding: chunked",
    b"Expect: 100-continue",
    b"Connection: close",
    b"X-A: \x80",
    b"X-B : 1",
    b" folded",
    b"X-C: ok",
    b"X-D:\tq\t",
    b"",
]


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(_REQUEST_LINES),
    st.lists(st.sampled_from(_REQUEST_FIELDS), max_size=6),
)
def test_parse_request_head_property_accepts_only_the_subset(line: bytes, fields: list[bytes]) -> None:
    block = head(line, *fields)
    # The caller cuts the head at the first blank line.
    block = block[: block.find(b"\r\n\r\n") + 4]
    parsed = parse_request_head(block)
    if parsed is None:
        return
    assert parsed.method in ("POST", "GET", "DELETE")
    assert parsed.target.startswith("/")
    assert len(parsed.headers.getall("Host")) == 1
    assert len(parsed.headers.getall("Content-Length", [])) <= 1
    for name in ("Transfer-Encoding", "Expect", "Upgrade"):
        assert name not in parsed.headers
    for name, value in parsed.headers.items():
        assert name and " " not in name
        assert value == value.strip(" \t")
        assert all(c == "\t" or 0x20 <= ord(c) <= 0x7E for c in value)
    assert parsed.keep_alive is ("close" not in parsed.headers.get("Connection", ""))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_request_head_never_raises(noise: bytes) -> None:
    block = b"POST /mcp HTTP/1.1\r\n" + noise.replace(b"\r\n\r\n", b"") + b"\r\n\r\n"
    result = parse_request_head(block)
    assert result is None or isinstance(result, RequestHead)


# ---------------------------------------------------- the head parsers: C against the Python reference

#: Bytes that steer the splitters: line breaks (whole and bare), colons, blanks, a name's
#: marks, controls, DEL, Latin-1 white space and letters.
_FIELD_BYTES = b"\r\n\r\n::  \t\t-!~aZz09\x00\x0b\x1f\x7f\x80\x85\xa0\xc0\xff"


def _field_blocks() -> st.SearchStrategy[bytes]:
    """Field blocks, mostly nearly well formed: lines joined by CRLF, some of them odd (any of
    the steering bytes anywhere), with values long enough for the word-wide scan."""
    steering = st.lists(st.sampled_from(list(_FIELD_BYTES)), min_size=1, max_size=4).map(bytes)
    blanks = st.sampled_from([b"", b" ", b"\t", b" \t "])
    text = st.tuples(st.integers(0, 40), st.sampled_from([b"", b"\t", b" ", b"="])).map(
        lambda t: (b"tok" * t[0])[: t[0]] + t[1]
    )
    good = st.tuples(
        st.sampled_from([b"Host", b"X-Id", b"a", b"Content-Length", b"x!~"]),
        st.just(b":"),
        blanks,
        text,
        text,
        blanks,
    ).map(b"".join)
    odd = st.tuples(
        st.one_of(st.sampled_from([b"\xc0Name", b" N", b"N ", b"", b"\x85N"]), steering),
        st.sampled_from([b":", b": ", b"", b"\t:"]),
        st.one_of(text, steering),
        st.one_of(text, steering),
    ).map(b"".join)
    lines = st.lists(st.one_of(good, good, good, odd), min_size=1, max_size=5).map(b"\r\n".join)
    steered = st.lists(st.sampled_from(list(_FIELD_BYTES)), max_size=40).map(bytes)
    return st.one_of(lines, lines, lines, st.binary(max_size=120), steered)


def _c_parsers() -> ModuleType:
    """``mcpproxy._http1`` as built from C; the test is skipped where it is not (pure Python)."""
    return c_module("_http1")


def _python_parsers() -> ModuleType:
    """``mcpproxy/_http1.py``, the Python reference, loaded beside its C build."""
    return python_twin("_http1")


_REFERENCE = _python_parsers()


def _with_fields(start_line: bytes, block: bytes) -> bytes:
    return start_line + b"\r\n" + (block + b"\r\n" if block else b"") + b"\r\n"


@settings(max_examples=1500, deadline=None)
@given(_field_blocks())
def test_c_head_parsers_agree_with_the_python_reference_on_field_blocks(block: bytes) -> None:
    c = _c_parsers()
    for fields in (block, b"Host: h\r\n" + block if block else b"Host: h"):
        head = _with_fields(b"POST /mcp HTTP/1.1", fields)
        assert c.request_head(head) == _REFERENCE.request_head(head)
    for status_line in (b"HTTP/1.1 200 OK", b"HTTP/1.0 404"):
        head = _with_fields(status_line, block)
        assert c.response_head(head) == _REFERENCE.response_head(head)


def _request_heads() -> st.SearchStrategy[bytes]:
    """Request heads around the edges of the relay's subset: methods, targets and versions right
    and wrong, the fields that decide (Host, Content-Length, Connection, the refused ones) in
    any case, once or twice, with good and bad values, among other fields; and arbitrary bytes.
    (Odd field lines are the splitters' test, above.)"""
    served = st.tuples(
        st.sampled_from([b"POST ", b"GET ", b"DELETE "]),
        st.sampled_from([b"/", b"/r/mcp?x=%20", b"/~!$&'()*+,;=:@"]),
        st.just(b" HTTP/1.1"),
    ).map(b"".join)
    odd_line = st.tuples(
        st.sampled_from([b"POST", b"GET", b"DELETE", b"HEAD", b"post", b"", b"GET "]),
        st.sampled_from([b" "]),
        st.sampled_from([b"/", b"*", b"http://h/", b"/\x7f", b"/a b", b"/\xc0", b""]),
        st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b" HTTP/1.1 ", b"HTTP/1.1", b" http/1.1"]),
    ).map(b"".join)
    name = st.sampled_from(
        [
            b"Host", b"host", b"HOST", b"Content-Length", b"content-LENGTH", b"Connection", b"X-A",
            b"Transfer-Encoding", b"Expect", b"upgrade", b"HTTP2-Settings", b"Hosts", b"Connectio",
        ]
    )
    value = st.sampled_from(
        [
            b"", b"5", b"007", b"123456789012345", b"1234567890123456", b"-1", b"5 ", b"\t5", b"1e3",
            b"close", b"Keep-Alive, CLOSE", b"closed", b"clo se", b"h:1", b"a" * 40,
        ]
    )
    field = st.tuples(name, st.sampled_from([b": ", b":", b":\t"]), value).map(b"".join)
    plain = st.sampled_from(
        [
            b"X-A: b", b"Accept: */*", b"Authorization: Bearer " + b"t" * 50, b"Content-Length: 5",
            b"content-length:\t007 ", b"Connection: close", b"connection: Keep-Alive, CLOSE",
            b"Connection: keep-alive", b"CONNECTION: Upgrade",
        ]
    )
    fields = st.tuples(
        st.sampled_from([[b"Host: h"], [b"Host: h"], []]),
        st.lists(st.one_of(plain, plain, plain, plain, field), max_size=4),
    ).map(lambda t: b"\r\n".join(t[0] + t[1]))
    end = st.sampled_from([b"\r\n\r\n"] * 5 + [b"\r\n", b"\n\n", b""])
    request_line = st.one_of(served, served, served, odd_line)
    heads = st.tuples(request_line, st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]), fields, end)
    return st.one_of(heads.map(b"".join), heads.map(b"".join), st.binary(max_size=80))


@settings(max_examples=1500, deadline=None)
@given(_request_heads())
def test_c_request_head_agrees_with_the_python_reference(block: bytes) -> None:
    c = _c_parsers()
    assert c.request_head(block) == _REFERENCE.request_head(block)
    for data in (block, bytearray(block), block + block):
        assert c.find_head_end(data) == _REFERENCE.find_head_end(data)


def test_c_request_head_reads_a_served_head_whole() -> None:
    """The pieces of a head the relay serves (the generated heads above are mostly refused)."""
    c = _c_parsers()
    block = request(b"Host: h:1", b"content-length:  12 ", b"Connection: keep-alive, Close", b"X-A: b")
    parts = c.request_head(block)
    assert parts == _REFERENCE.request_head(block)
    assert parts is not None and parts[:2] == ("POST", "/mcp") and parts[5:] == (12, False, "h:1")
    again = c.request_head(block)
    assert again is not None and parts[0] is again[0]  # the method is one shared str
    assert parts[3][0] is again[3][0] and parts[4][0][0] is again[4][0][0]  # so are common names
    assert isinstance(parts[4][0][0], istr) and not isinstance(parts[3][0], istr)  # pairs' fold themselves
    assert parts[4][1][0] == "content-length" and parts[4][3][0] == "X-A"  # as sent, whatever the case
    assert c.find_head_end(bytearray(block + b"body")) == len(block)
    assert c.find_head_end(block[:-1]) == -1


def test_c_request_head_finds_a_bad_byte_anywhere_in_a_long_value() -> None:
    """The C scan reads a request's values eight bytes at a step: a byte it must refuse is found
    at every offset of a word, and the longest run of good bytes is taken."""
    c = _c_parsers()
    good = b"Authorization: Bearer " + b"abcdefgh" * 8
    parts = c.request_head(request(HOST, good))
    assert parts is not None
    assert parts[2:5] == (
        [HOST.decode(), good.decode()],
        ["host", "authorization"],
        [("Host", "proxy.example"), ("Authorization", good[15:].decode())],
    )
    for at in range(15, len(good)):
        for bad in (b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xff", b"\r", b"\n"):
            assert c.request_head(request(HOST, good[:at] + bad + good[at + 1 :])) is None, (at, bad)
        tab = good[:at] + b"\t" + good[at + 1 :]
        assert c.request_head(request(HOST, tab)) is not None  # HTAB is allowed inside a value


def _response_heads() -> st.SearchStrategy[bytes]:
    """Response heads around the framing rules: statuses with and without a body, both versions,
    Transfer-Encoding, Content-Length, Connection and Content-Type in any case, repeated, with
    good, bad and Latin-1 values."""
    good_status = st.sampled_from(
        [
            b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204", b"HTTP/1.1 304 Not Modified",
            b"HTTP/1.1 101 Switching", b"HTTP/1.1 404 Nicht \xe4", b"HTTP/1.1 200",
        ]
    )
    bad_status = st.sampled_from(
        [
            b"HTTP/1.1 2000", b"HTTP/2 200 OK", b"HTTP/1.1 20x OK", b"HTTP/1.1 200\rOK", b"HTTP/1.1  200",
        ]
    )
    status_line = st.one_of(good_status, good_status, good_status, bad_status)
    name = st.sampled_from(
        [
            b"Content-Length", b"content-length", b"Transfer-Encoding", b"TRANSFER-encoding",
            b"Connection", b"connection", b"Content-Type", b"content-type", b"X-A", b"\xc0-A",
        ]
    )
    value = st.sampled_from(
        [
            b"", b"0", b"12", b"012", b"1234567890123456", b"-1", b"1 2", b"chunked", b"Chunked",
            b"gzip, chunked", b"chunked, gzip", b"chunked,", b" \x85chunked\xa0", b"chunked\x0b",
            b"close", b"Keep-Alive", b"keep-alive, CLOSE", b"application/JSON; charset=utf-8",
            b"Text/Event-Stream", b"\xc0PPLICATION/x\xde", b";", b"\xa0text/html\xa0;q", b"\x1cx\x1f",
        ]
    )
    field = st.tuples(name, st.sampled_from([b": ", b":", b":\t "]), value).map(b"".join)
    fields = st.lists(field, max_size=5).map(b"\r\n".join)
    return st.tuples(status_line, fields).map(lambda t: _with_fields(*t))


@settings(max_examples=1500, deadline=None)
@given(_response_heads())
def test_c_response_head_agrees_with_the_python_reference(block: bytes) -> None:
    c = _c_parsers()
    assert c.response_head(block) == _REFERENCE.response_head(block)


def test_c_head_parsers_take_only_bytes() -> None:
    c = _c_parsers()
    for parser in (c.request_head, c.response_head):
        with pytest.raises(TypeError):
            parser(bytearray(b"HTTP/1.1 200 OK\r\n\r\n"))
        with pytest.raises(TypeError):
            parser("HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(TypeError):
        c.find_head_end("GET / HTTP/1.1\r\n\r\n")


# --------------------------------------------------------------------------- parse_response_head


def response(status_line: bytes, *fields: bytes) -> bytes:
    return head(status_line, *fields)


@pytest.mark.parametrize(
    ("block", "status", "reason", "framing", "length", "keep_alive"),
    [
        (response(b"HTTP/1.1 200 OK", b"Content-Length: 5"), 200, "OK", Framing.LENGTH, 5, True),
        (response(b"HTTP/1.1 201 Created", b"Content-Length: 0"), 201, "Created", Framing.LENGTH, 0, True),
        (
            response(b"HTTP/1.1 404 Not Found Here", b"Content-Length: 9"),
            404,
            "Not Found Here",
            Framing.LENGTH,
            9,
            True,
        ),
        (response(b"HTTP/1.1 500 ", b"Content-Length: 1"), 500, "", Framing.LENGTH, 1, True),
        (response(b"HTTP/1.1 502", b"Content-Length: 1"), 502, "", Framing.LENGTH, 1, True),
        (response(b"HTTP/1.1 200 caf\xe9", b"Content-Length: 1"), 200, "caf\xe9", Framing.LENGTH, 1, True),
        (response(b"HTTP/1.1 599 Custom", b"Content-Length: 1"), 599, "Custom", Framing.LENGTH, 1, True),
        # Content-Length
        (response(b"HTTP/1.1 200 OK", b"Content-Length:  \t7 "), 200, "OK", Framing.LENGTH, 7, True),
        (
            response(b"HTTP/1.1 200 OK", b"Content-Length: 3", b"content-length: 3"),
            200,
            "OK",
            Framing.LENGTH,
            3,
            True,
        ),
        (
            response(b"HTTP/1.1 200 OK", b"Content-Length: " + b"9" * 15),
            200,
            "OK",
            Framing.LENGTH,
            10**15 - 1,
            True,
        ),
        # keep-alive: HTTP/1.1 persistent unless close; HTTP/1.0 only with keep-alive.
        (
            response(b"HTTP/1.1 200 OK", b"Connection: close", b"Content-Length: 1"),
            200,
            "OK",
            Framing.LENGTH,
            1,
            False,
        ),
        (
            response(b"HTTP/1.1 200 OK", b"Connection: Keep-Alive, Close", b"Content-Length: 1"),
            200,
            "OK",
            Framing.LENGTH,
            1,
            False,
        ),
        (
            response(b"HTTP/1.1 200 OK", b"Connection: keep-alive", b"Content-Length: 1"),
            200,
            "OK",
            Framing.LENGTH,
            1,
            True,
        ),
        (response(b"HTTP/1.0 200 OK", b"Content-Length: 1"), 200, "OK", Framing.LENGTH, 1, False),
        (
            response(b"HTTP/1.0 200 OK", b"Connection: keep-alive", b"Content-Length: 1"),
            200,
            "OK",
            Framing.LENGTH,
            1,
            True,
        ),
        (
            response(b"HTTP/1.0 200 OK", b"connection: Keep-Alive", b"Content-Length: 1"),
            200,
            "OK",
            Framing.LENGTH,
            1,
            True,
        ),
        (
            response(b"HTTP/1.0 200 OK", b"Connection: close", b"Content-Length: 1"),
            200,
            "OK",
            Framing.LENGTH,
            1,
            False,
        ),
        # No body: 1xx, 204, 304 -- whatever the framing headers say.
        (response(b"HTTP/1.1 100 Continue"), 100, "Continue", Framing.NONE, 0, True),
        (
            response(b"HTTP/1.1 101 Switching Protocols", b"Connection: Upgrade", b"Upgrade: websocket"),
            101,
            "Switching Protocols",
            Framing.NONE,
            0,
            True,
        ),
        (response(b"HTTP/1.1 199 Misc"), 199, "Misc", Framing.NONE, 0, True),
        (response(b"HTTP/1.1 204 No Content"), 204, "No Content", Framing.NONE, 0, True),
        (
            response(b"HTTP/1.1 204 No Content", b"Content-Length: 10"),
            204,
            "No Content",
            Framing.NONE,
            0,
            True,
        ),
        (
            response(b"HTTP/1.1 304 Not Modified", b"Transfer-Encoding: chunked", b"Content-Length: 3"),
            304,
            "Not Modified",
            Framing.NONE,
            0,
            True,
        ),
        (
            response(b"HTTP/1.1 204 No Content", b"Connection: close"),
            204,
            "No Content",
            Framing.NONE,
            0,
            False,
        ),
        (response(b"HTTP/1.0 304 Not Modified"), 304, "Not Modified", Framing.NONE, 0, False),
        # chunked: the last transfer coding decides.
        (response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"), 200, "OK", Framing.CHUNKED, 0, True),
        (response(b"HTTP/1.1 200 OK", b"transfer-encoding: Chunked"), 200, "OK", Framing.CHUNKED, 0, True),
        (
            response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip, chunked"),
            200,
            "OK",
            Framing.CHUNKED,
            0,
            True,
        ),
        (
            response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"),
            200,
            "OK",
            Framing.CHUNKED,
            0,
            True,
        ),
        (
            response(b"HTTP/1.1 200 OK", b"Transfer-Encoding:  gzip ,\tCHUNKED "),
            200,
            "OK",
            Framing.CHUNKED,
            0,
            True,
        ),
        (
            response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Connection: close"),
            200,
            "OK",
            Framing.CHUNKED,
            0,
            False,
        ),
        # Neither Content-Length nor Transfer-Encoding: read until close, never reuse.
        (response(b"HTTP/1.1 200 OK"), 200, "OK", Framing.CLOSE, 0, False),
        (response(b"HTTP/1.1 200 OK", b"Connection: keep-alive"), 200, "OK", Framing.CLOSE, 0, False),
        (response(b"HTTP/1.0 200 OK", b"Connection: keep-alive"), 200, "OK", Framing.CLOSE, 0, False),
        (response(b"HTTP/1.0 500 Oops", b"Content-Type: text/plain"), 500, "Oops", Framing.CLOSE, 0, False),
    ],
)
def test_parse_response_head(
    block: bytes, status: int, reason: str, framing: Framing, length: int, keep_alive: bool
) -> None:
    parsed = parse_response_head(block)
    assert parsed.status == status
    assert parsed.reason == reason
    assert parsed.framing is framing
    assert parsed.length == length
    assert parsed.keep_alive is keep_alive


def test_parse_response_head_keeps_fields_in_order_leniently() -> None:
    block = response(
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/event-stream",
        b"Set-Cookie: a=1",
        b"set-cookie: b=2",
        b"X-Odd Name: lenient",
        b"X-Latin: caf\xe9",
        b"X-Colons: a:b:c",
        b"X-Empty:",
        b"Content-Length: 0",
    )
    parsed = parse_response_head(block)
    assert list(parsed.headers.items()) == [
        ("Content-Type", "text/event-stream"),
        ("Set-Cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("X-Odd Name", "lenient"),
        ("X-Latin", "caf\xe9"),
        ("X-Colons", "a:b:c"),
        ("X-Empty", ""),
        ("Content-Length", "0"),
    ]
    assert parsed.headers.getall("SET-COOKIE") == ["a=1", "b=2"]


VIOLATING_RESPONSES: dict[str, bytes] = {
    # framing
    "chunked with Content-Length": response(
        b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Content-Length: 5"
    ),
    "Content-Length with chunked": response(
        b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Transfer-Encoding: chunked"
    ),
    "gzip without chunked": response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip"),
    "identity coding": response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: identity"),
    "chunked not last": response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked, gzip"),
    "chunked not last, two fields": response(
        b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"
    ),
    "trailing empty coding": response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked,"),
    "chunked lookalike": response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: xchunked"),
    "chunked with parameter": response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked;q=1"),
    "differing Content-Length": response(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Content-Length: 6"),
    "Content-Length list": response(b"HTTP/1.1 200 OK", b"Content-Length: 5, 5"),
    "Content-Length sign": response(b"HTTP/1.1 200 OK", b"Content-Length: +5"),
    "Content-Length negative": response(b"HTTP/1.1 200 OK", b"Content-Length: -5"),
    "Content-Length hex": response(b"HTTP/1.1 200 OK", b"Content-Length: 0x5"),
    "Content-Length inner space": response(b"HTTP/1.1 200 OK", b"Content-Length: 1 2"),
    "Content-Length empty": response(b"HTTP/1.1 200 OK", b"Content-Length:"),
    "Content-Length 16 digits": response(b"HTTP/1.1 200 OK", b"Content-Length: " + b"1" * 16),
    # status line
    "HTTP/1.2": response(b"HTTP/1.2 200 OK"),
    "HTTP/2": response(b"HTTP/2 200 OK"),
    "HTTP/0.9": response(b"HTTP/0.9 200 OK"),
    "lowercase version": response(b"http/1.1 200 OK"),
    "ICY": response(b"ICY 200 OK"),
    "no status": response(b"HTTP/1.1"),
    "version and space only": response(b"HTTP/1.1 "),
    "empty status line": response(b""),
    "two-digit status": response(b"HTTP/1.1 20 OK"),
    "four-digit status": response(b"HTTP/1.1 2000 OK"),
    "letters in status": response(b"HTTP/1.1 2x0 OK"),
    "negative status": response(b"HTTP/1.1 -20 OK"),
    "signed status": response(b"HTTP/1.1 +20 OK"),
    "double space before status": response(b"HTTP/1.1  200 OK"),
    "tab separator": response(b"HTTP/1.1\t200 OK"),
    "tab after status": response(b"HTTP/1.1 200\tOK"),
    "leading space": response(b" HTTP/1.1 200 OK"),
    "request line": response(b"POST /mcp HTTP/1.1"),
    # field lines
    "no colon": response(b"HTTP/1.1 200 OK", b"NoColonHere"),
    "empty name": response(b"HTTP/1.1 200 OK", b": value"),
    "space before colon": response(b"HTTP/1.1 200 OK", b"Content-Length : 5"),
    "tab before colon": response(b"HTTP/1.1 200 OK", b"Content-Length\t: 5"),
    "leading space in name": response(b"HTTP/1.1 200 OK", b" Content-Length: 5"),
    "obs-fold": response(b"HTTP/1.1 200 OK", b"X-A: 1", b" continued"),
    "obs-fold with tab": response(b"HTTP/1.1 200 OK", b"X-A: 1", b"\tcontinued: x"),
    "bare LF between fields": b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 5\r\n\r\n",
    "bare CR between fields": b"HTTP/1.1 200 OK\r\nX-A: 1\rContent-Length: 5\r\n\r\n",
    "bare LF in value": b"HTTP/1.1 200 OK\r\nX-A: a\nb: c\r\n\r\n",
}


@pytest.mark.parametrize("block", list(VIOLATING_RESPONSES.values()), ids=list(VIOLATING_RESPONSES))
def test_parse_response_head_rejects_bad_framing_and_malformed_heads(block: bytes) -> None:
    assert block.endswith(b"\r\n\r\n")
    with pytest.raises(ProtocolViolation):
        parse_response_head(block)


def test_parse_response_head_remembered_names_still_need_their_colon() -> None:
    """Names seen well formed are remembered; a later line that is only such a name is still
    malformed, and a name with blanks around it is never remembered."""
    assert parse_response_head(response(b"HTTP/1.1 200 OK", b"X-Seen: 1", b"Content-Length: 0")).names
    for block in (
        response(b"HTTP/1.1 200 OK", b"X-Seen"),
        response(b"HTTP/1.1 200 OK", b"X-Seen :1"),
        response(b"HTTP/1.1 200 OK", b"Content-Length"),
    ):
        with pytest.raises(ProtocolViolation):
            parse_response_head(block)
    with pytest.raises(ProtocolViolation):
        parse_response_head(response(b"HTTP/1.1 200 OK", b"X-Spaced : 1"))
    with pytest.raises(ProtocolViolation):  # not remembered by the first refusal
        parse_response_head(response(b"HTTP/1.1 200 OK", b"X-Spaced : 1"))


# Regression: `str.isdigit()` is True for the Latin-1 superscripts U+00B2, U+00B3 and U+00B9 (bytes
# 0xb2, 0xb3, 0xb9 decoded as latin-1), but `int()` rejects them, so these heads raise a bare
# ValueError out of parse_response_head instead of ProtocolViolation.
@pytest.mark.parametrize(
    "block",
    [
        response(b"HTTP/1.1 20\xb2 OK"),
        response(b"HTTP/1.1 \xb9\xb2\xb3 OK"),
        response(b"HTTP/1.1 200 OK", b"Content-Length: \xb9"),
        response(b"HTTP/1.1 200 OK", b"Content-Length: 1\xb2"),
    ],
    ids=["status 20\\xb2", "status \\xb9\\xb2\\xb3", "Content-Length \\xb9", "Content-Length 1\\xb2"],
)
def test_parse_response_head_superscript_digits_are_a_protocol_violation(block: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_response_head(block)


# Regression: a Transfer-Encoding field that is present but empty is joined into "" and treated as if
# absent, so Transfer-Encoding together with Content-Length slips through as LENGTH framing
# (an empty transfer-coding list is itself invalid: RFC 9112 6.1 `Transfer-Encoding = #transfer-coding`
# with at least one element; and TE + CL must never be accepted).
def test_parse_response_head_empty_transfer_encoding_with_content_length() -> None:
    block = response(b"HTTP/1.1 200 OK", b"Transfer-Encoding:", b"Content-Length: 3")
    with pytest.raises(ProtocolViolation):
        parse_response_head(block)


# Regression: as for requests, `close` in a second `Connection` field line is ignored (only the first
# line is read), so the upstream connection would be pooled although the upstream closes it.
def test_parse_response_head_connection_close_in_second_connection_field() -> None:
    block = response(
        b"HTTP/1.1 200 OK", b"Connection: keep-alive", b"Connection: close", b"Content-Length: 0"
    )
    assert parse_response_head(block).keep_alive is False


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([], ""),
        ([b"Content-Type: application/json"], "application/json"),
        ([b"Content-Type: Application/JSON; charset=utf-8"], "application/json"),
        ([b"content-type:  text/event-stream ;charset=UTF-8"], "text/event-stream"),
        ([b"Content-Type: TEXT/EVENT-STREAM"], "text/event-stream"),
        ([b"Content-Type:"], ""),
        ([b"Content-Type: ;charset=utf-8"], ""),
        ([b"Content-Type: text/plain", b"Content-Type: application/json"], "text/plain"),
    ],
)
def test_response_content_type(fields: list[bytes], expected: str) -> None:
    parsed = parse_response_head(response(b"HTTP/1.1 200 OK", *fields, b"Content-Length: 0"))
    assert parsed.content_type == expected


_RESPONSE_LINES = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.0 200 OK",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 101 Switching",
    b"HTTP/1.1 20 short",
    b"HTTP/1.2 200 OK",
]
_RESPONSE_FIELDS = [
    b"Content-Length: 5",
    b"Content-Length: 6",
    b"content-length: 5",
    b"Content-Length: x",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"transfer-encoding: gzip, chunked",
    b"Connection: close",
    b"Connection: keep-alive",
    b"X-A: 1",
    b"Bad Field",
    b" folded",
]


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(_RESPONSE_LINES),
    st.lists(st.sampled_from(_RESPONSE_FIELDS), max_size=5),
)
def test_parse_response_head_property_framing_is_unambiguous(line: bytes, fields: list[bytes]) -> None:
    try:
        parsed = parse_response_head(response(line, *fields))
    except ProtocolViolation:
        return
    assert isinstance(parsed, ResponseHead)
    has_te = "Transfer-Encoding" in parsed.headers
    lengths = set(parsed.headers.getall("Content-Length", []))
    if parsed.status < 200 or parsed.status in (204, 304):
        assert parsed.framing is Framing.NONE
    elif parsed.framing is Framing.CHUNKED:
        assert has_te and not lengths
    elif parsed.framing is Framing.LENGTH:
        assert not has_te and lengths == {str(parsed.length)}
    else:
        assert parsed.framing is Framing.CLOSE
        assert not has_te and not lengths
        assert parsed.keep_alive is False


# --------------------------------------------------------------------------- ChunkScanner


def scan(pieces: list[bytes]) -> tuple[int, ChunkScanner]:
    """Feed ``pieces`` in order; the total of bytes the scanner claims for the body."""
    scanner = ChunkScanner()
    total = 0
    for piece in pieces:
        was_done = scanner.done
        taken = scanner.feed(piece)
        assert 0 <= taken <= len(piece)
        if was_done:
            assert taken == 0
        elif taken < len(piece):
            # The scanner only stops short of a piece at the end of the body.
            assert scanner.done
        total += taken
    return total, scanner


def splits2(data: bytes) -> list[list[bytes]]:
    return [[data[:i], data[i:]] for i in range(len(data) + 1)]


def splits3(data: bytes) -> list[list[bytes]]:
    n = len(data)
    return [[data[:i], data[i:j], data[j:]] for i in range(n + 1) for j in range(i, n + 1)]


VALID_BODIES: dict[str, bytes] = {
    "empty": b"0\r\n\r\n",
    "one chunk": b"5\r\nhello\r\n0\r\n\r\n",
    "hex sizes": b"a\r\n0123456789\r\nF\r\nABCDEFGHIJKLMNO\r\n0\r\n\r\n",
    "leading zeros": b"005\r\nhello\r\n000\r\n\r\n",
    "data that looks like framing": b"7\r\n0\r\n\r\nab\r\n4\r\n\r\n\r\n\r\n0\r\n\r\n",
    "binary data": b"4\r\n\x00\xff\r\n\r\n0\r\n\r\n",
    "extensions": b'5;name=value\r\nhello\r\n3 ; a="b;c"\r\nabc\r\n0;last\r\n\r\n',
    "trailers": b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nChecksum: abc\r\n\r\n",
    "extensions and trailers": b"2;x\r\nhi\r\n0;y=z\r\nX-T: 1\r\n\r\n",
}


@pytest.mark.parametrize("extra", [b"", b"HTTP/1.1 200 OK\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"])
@pytest.mark.parametrize("body", list(VALID_BODIES.values()), ids=list(VALID_BODIES))
def test_chunk_scanner_finds_the_end_in_every_split(body: bytes, extra: bytes) -> None:
    data = body + extra
    for pieces in [[data], *splits2(data), *splits3(data)]:
        total, scanner = scan(pieces)
        assert scanner.done, pieces
        assert total == len(body), pieces


#: The chunk data of each of VALID_BODIES, joined.
VALID_PAYLOADS: dict[str, bytes] = {
    "empty": b"",
    "one chunk": b"hello",
    "hex sizes": b"0123456789ABCDEFGHIJKLMNO",
    "leading zeros": b"hello",
    "data that looks like framing": b"0\r\n\r\nab\r\n\r\n",
    "binary data": b"\x00\xff\r\n",
    "extensions": b"helloabc",
    "trailers": b"hello",
    "extensions and trailers": b"hi",
}


@pytest.mark.parametrize("extra", [b"", b"5\r\nhello\r\n0\r\n\r\n"])
@pytest.mark.parametrize("name", list(VALID_BODIES))
def test_chunk_decoder_hands_out_the_data_in_every_split(name: str, extra: bytes) -> None:
    body = VALID_BODIES[name]
    data = body + extra
    for pieces in [[data], *splits2(data), *splits3(data)]:
        decoder = ChunkDecoder()
        total, payload = 0, b""
        for piece in pieces:
            used, out = decoder.decode(piece)
            total, payload = total + used, payload + out
        assert decoder.done and total == len(body), pieces
        assert payload == VALID_PAYLOADS[name], pieces


@pytest.mark.parametrize("body", list(VALID_BODIES.values()), ids=list(VALID_BODIES))
def test_chunk_scanner_byte_by_byte(body: bytes) -> None:
    scanner = ChunkScanner()
    for index in range(len(body)):
        assert not scanner.done
        assert scanner.feed(body[index : index + 1]) == 1
    assert scanner.done
    assert scanner.feed(b"next") == 0


@pytest.mark.parametrize("body", list(VALID_BODIES.values()), ids=list(VALID_BODIES))
def test_chunk_scanner_is_not_done_before_the_last_byte(body: bytes) -> None:
    for cut in range(len(body)):
        total, scanner = scan([body[:cut]])
        assert total == cut
        assert not scanner.done


def test_chunk_scanner_stops_at_the_end_and_consumes_nothing_after() -> None:
    body = b"3\r\nabc\r\n0\r\n\r\n"
    scanner = ChunkScanner()
    assert scanner.feed(body + b"GARBAGE") == len(body)
    assert scanner.done
    assert scanner.feed(b"more") == 0
    assert scanner.feed(b"") == 0


def test_chunk_scanner_empty_feed() -> None:
    scanner = ChunkScanner()
    assert scanner.feed(b"") == 0
    assert not scanner.done
    assert scanner.feed(b"0\r\n\r\n") == 5
    assert scanner.done


@pytest.mark.parametrize(
    ("data", "pos", "found"),
    [
        (b"5\r\nhello\r\n", 0, (3, 8)),
        (b"xx5\r\nhello\r\nrest", 2, (5, 10)),
        (b"fF\r\n" + b"a" * 255 + b"\r\n", 0, (4, 4 + 255)),
        (b"0" * 14 + b"1\r\na\r\n", 0, (17, 18)),  # 15 digits, the most a size line may have
        (b"0" * 15 + b"1\r\na\r\n", 0, (-1, -1)),  # 16
        (b"0\r\n\r\n", 0, (-1, -1)),  # the last chunk: its trailers are the scanner's slow path
        (b"5;x\r\nhello\r\n", 0, (-1, -1)),  # an extension
        (b"5\r\nhell", 0, (-1, -1)),  # a part
        (b"5\r\nhello\r", 0, (-1, -1)),
        (b"5\r\nhelloX\r\n", 0, (-1, -1)),
        (b"5\nhello\r\n", 0, (-1, -1)),
        (b"g\r\n", 0, (-1, -1)),
        (b"", 0, (-1, -1)),
    ],
)
def test_whole_chunk_fast_path(data: bytes, pos: int, found: tuple[int, int]) -> None:
    """The fast path of the scanner and the decoder for a streamed event (a whole chunk in one
    read) finds exactly the chunks it may take in one step, and leaves everything else to the
    line-by-line path."""
    assert _whole_chunk(data, pos) == found


MALFORMED_BODIES: dict[str, bytes] = {
    "non-hex size": b"zz\r\n",
    "size with g": b"g\r\nabc",
    "empty size line": b"\r\n",
    "size line of spaces": b"   \r\n",
    "extension without size": b";ext\r\n",
    "inner space in size": b"1 2\r\n",
    "16 hex digits": b"1" * 16 + b"\r\n",
    "data longer than size": b"3\r\nhello\r\n0\r\n\r\n",
    "data shorter than size": b"6\r\nhello\r\n0\r\n\r\n",
    "junk after data": b"5\r\nhelloX\r\n0\r\n\r\n",
    "bare LF after data": b"5\r\nhello\n0\r\n\r\n",
    "bare CR after data": b"5\r\nhello\r0\r\n\r\n",
    "LFCR after data": b"5\r\nhello\n\r0\r\n\r\n",
    "bad second size": b"5\r\nhello\r\nxyz\r\n",
}


@pytest.mark.parametrize("body", list(MALFORMED_BODIES.values()), ids=list(MALFORMED_BODIES))
def test_chunk_scanner_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ChunkScanner().feed(body)
    scanner = ChunkScanner()
    with pytest.raises(ProtocolViolation):  # the violation may come at any byte
        for index in range(len(body)):
            scanner.feed(body[index : index + 1])
    for pieces in splits2(body):
        scanner = ChunkScanner()
        with pytest.raises(ProtocolViolation):
            for piece in pieces:
                scanner.feed(piece)


@pytest.mark.parametrize("body", list(MALFORMED_BODIES.values()), ids=list(MALFORMED_BODIES))
def test_chunk_decoder_rejects_what_the_scanner_rejects(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ChunkDecoder().decode(body)


@pytest.mark.parametrize(
    "prefix",
    [b"", b"5;", b"5\r\nhello\r\n0\r\n"],
    ids=["size line", "extension", "trailer line"],
)
def test_chunk_scanner_rejects_over_long_line_arriving_in_pieces(prefix: bytes) -> None:
    scanner = ChunkScanner()
    scanner.feed(prefix)
    with pytest.raises(ProtocolViolation):
        for _ in range(5):
            scanner.feed(b"a" * 1000)


def test_chunk_scanner_accepts_line_at_the_limit() -> None:
    trailer = b"X: " + b"a" * (4096 - 3)
    assert len(trailer) == 4096
    body = b"0\r\n" + trailer + b"\r\n\r\n"
    scanner = ChunkScanner()
    assert scanner.feed(body[: 3 + 4096]) == 3 + 4096
    assert scanner.feed(body[3 + 4096 :]) == 4
    assert scanner.done


def test_chunk_scanner_rejects_line_one_past_the_limit() -> None:
    scanner = ChunkScanner()
    scanner.feed(b"0\r\n")
    with pytest.raises(ProtocolViolation):
        scanner.feed(b"X: " + b"a" * (4097 - 3))


# Regression: the line-length limit is only enforced while a line is still incomplete, so an over-long
# size/extension/trailer line that arrives in one read (with its LF) is accepted, while the same
# bytes split across two reads are rejected: whether a body is a ProtocolViolation depends on
# TCP segmentation.
def test_chunk_scanner_rejects_over_long_line_arriving_whole() -> None:
    body = b"5;" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n"
    with pytest.raises(ProtocolViolation):
        ChunkScanner().feed(body)


# Regression: the chunk size is parsed with `int(size_text, 16)`, which also accepts a sign, a `0x`
# prefix and `_` digit separators; chunk-size is `1*HEXDIG` (RFC 9112 7.1). These bodies are
# accepted (the scanner's idea of the framing can then differ from the next parser's).
@pytest.mark.parametrize(
    "body",
    [
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"0X5\r\nhello\r\n0\r\n\r\n",
        b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n",
        b"-0\r\n\r\n",
        b"-1\r\n",
    ],
    ids=["plus sign", "0x prefix", "0X prefix", "underscore", "minus zero", "negative"],
)
def test_chunk_scanner_rejects_non_hexdig_sizes(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ChunkScanner().feed(body)


# Regression (was severe): a negative chunk size (`int(b"-6", 16) == -6`) makes `feed` move its position
# backwards. With b"1\r\nx\r\n-6\r\nz" the position returns to the CRLF before "-6", which is
# re-read forever: `feed` never returns (a busy loop on the event loop). Run in a child process
# so the test suite itself does not hang.
def test_chunk_scanner_negative_size_does_not_hang() -> None:
    code = (
        "import sys\n"
        "from mcpproxy.http1 import ChunkScanner, ProtocolViolation\n"
        "try:\n"
        "    ChunkScanner().feed(b'1\\r\\nx\\r\\n-6\\r\\nz')\n"
        "except ProtocolViolation:\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=5, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail("ChunkScanner().feed(b'1\\r\\nx\\r\\n-6\\r\\nz') never returns")
    assert result.returncode == 0, result.stderr.decode(errors="replace")


_EXTENSIONS = [b"", b";a", b";a=b", b' ; q="x;y"', b";n=1;m"]


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    parts: list[bytes] = []
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=6)):
        size = format(len(chunk), draw(st.sampled_from(["x", "X"]))).encode()
        zeros = b"0" * draw(st.integers(0, 2))
        parts.append(zeros + size + draw(st.sampled_from(_EXTENSIONS)) + b"\r\n" + chunk + b"\r\n")
    parts.append(b"0" + draw(st.sampled_from(_EXTENSIONS)) + b"\r\n")
    trailer_line = st.from_regex(rb"\A[A-Za-z-]{1,10}: [ -~]{0,20}\Z")
    parts.extend(line + b"\r\n" for line in draw(st.lists(trailer_line, max_size=3)))
    parts.append(b"\r\n")
    return b"".join(parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_bodies(), st.binary(max_size=20), st.data())
def test_chunk_scanner_property_random_bodies_and_splits(
    body: bytes, extra: bytes, data: st.DataObject
) -> None:
    stream = body + extra
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    bounds = [0, *cuts, len(stream)]
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    total, scanner = scan(pieces)
    assert scanner.done
    assert total == len(body)


# --------------------------------------------------------------------------- encode_head / safe_value


def _lines(fields: list[tuple[str, str]]) -> list[str]:
    return [f"{name}: {value}" for name, value in fields]


def test_encode_head_exact_bytes() -> None:
    lines = _lines([("Content-Type", "application/json"), ("X-A", "1"), ("x-a", "2")])
    assert encode_head("HTTP/1.1 200 OK", lines, b"") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    )


def test_encode_head_without_fields() -> None:
    assert encode_head("HTTP/1.1 204 No Content", [], b"") == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_encode_head_latin1_values() -> None:
    assert (
        encode_head("HTTP/1.1 200 OK", ["X-Latin: caf\xe9"], b"")
        == b"HTTP/1.1 200 OK\r\nX-Latin: caf\xe9\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("start_line", "fields", "framing", "length"),
    [
        ("HTTP/1.1 200 OK", [("Content-Length", "12"), ("Content-Type", "text/plain")], Framing.LENGTH, 12),
        ("HTTP/1.1 200 OK", [("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1")], Framing.CHUNKED, 0),
        ("HTTP/1.1 204 No Content", [("X-A", "1"), ("x-a", "2")], Framing.NONE, 0),
        ("HTTP/1.0 500 Internal Server Error", [("Content-Type", "text/html; charset=x")], Framing.CLOSE, 0),
        ("HTTP/1.1 404 Not Found", [("X-Empty", ""), ("Content-Length", "0")], Framing.LENGTH, 0),
    ],
)
def test_encode_head_round_trips_through_parse_response_head(
    start_line: str, fields: list[tuple[str, str]], framing: Framing, length: int
) -> None:
    parsed = parse_response_head(encode_head(start_line, _lines(fields), b""))
    _, status, reason = start_line.split(" ", 2)
    assert parsed.status == int(status)
    assert parsed.reason == reason
    assert list(parsed.headers.items()) == fields
    assert parsed.lines == _lines(fields)
    assert parsed.names == [name.lower() for name, _ in fields]
    assert parsed.framing is framing
    assert parsed.length == length


@pytest.mark.parametrize(
    ("start_line", "fields", "length", "keep_alive"),
    [
        ("POST /mcp HTTP/1.1", [("Host", "h.example"), ("Content-Length", "3")], 3, True),
        ("DELETE /mcp?s=1 HTTP/1.1", [("Host", "h.example"), ("Mcp-Session-Id", "abc")], 0, True),
        ("POST / HTTP/1.1", [("Host", "h"), ("Connection", "close"), ("X-A", "1"), ("x-a", "2")], 0, False),
    ],
)
def test_encode_head_round_trips_through_parse_request_head(
    start_line: str, fields: list[tuple[str, str]], length: int, keep_alive: bool
) -> None:
    parsed = parse_request_head(encode_head(start_line, _lines(fields), b""))
    assert parsed is not None
    method, target, _ = start_line.split(" ")
    assert (parsed.method, parsed.target) == (method, target)
    assert list(parsed.headers.items()) == fields
    assert parsed.lines == _lines(fields)
    assert parsed.names == [name.lower() for name, _ in fields]
    assert parsed.content_length == length
    assert parsed.keep_alive is keep_alive


_field_names = st.from_regex(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}\Z")
_field_values = st.from_regex(r"\A([!-~]([ \t!-~]{0,20}[!-~])?)?\Z")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_field_names, _field_values), max_size=6))
def test_encode_head_round_trip_property(fields: list[tuple[str, str]]) -> None:
    parsed = parse_response_head(encode_head("HTTP/1.1 299 Anything Goes", _lines(fields), b""))
    assert parsed.status == 299
    assert parsed.reason == "Anything Goes"
    assert list(parsed.headers.items()) == fields


_head_texts = st.text(st.characters(max_codepoint=0x17F, blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=500, deadline=None)
@given(_head_texts, st.lists(_head_texts, max_size=6), st.binary(max_size=40))
def test_c_encode_head_agrees_with_the_python_reference(start: str, lines: list[str], body: bytes) -> None:
    """The same bytes, or both a UnicodeEncodeError (a character past U+00FF has no Latin-1
    byte; where in the text it was found differs: C encodes the pieces one at a time)."""
    c = _c_parsers()
    try:
        expected: bytes | None = _REFERENCE.encode_head(start, lines, body)
    except UnicodeEncodeError:
        expected = None
    try:
        got: bytes | None = c.encode_head(start, lines, body)
    except UnicodeEncodeError:
        got = None
    assert got == expected


def test_encode_head_puts_the_body_after_the_blank_line() -> None:
    for module in (_c_parsers(), _REFERENCE):
        assert module.encode_head("POST / HTTP/1.1", ["Host: h", "X-A: \xe9"], b"{}") == (
            b"POST / HTTP/1.1\r\nHost: h\r\nX-A: \xe9\r\n\r\n{}"
        )
        with pytest.raises(UnicodeEncodeError):
            module.encode_head("POST / HTTP/1.1", ["X-A: \u0100"], b"")


def test_c_encode_head_refuses_what_is_not_a_head() -> None:
    c = _c_parsers()
    for args in (("S", ["a", 1], b""), ("S", ("a",), b""), (b"S", [], b""), ("S", [], "body")):
        with pytest.raises(TypeError):
            c.encode_head(*args)
    with pytest.raises(TypeError):
        c.encode_head("S", [])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", True),
        ("plain", True),
        ("with spaces\tand tab", True),
        ("caf\xe9", True),
        ("\x01\x1f\x7f", True),
        ("a\rb", False),
        ("a\nb", False),
        ("a\r\nInjected: 1", False),
        ("a\0b", False),
        ("\r", False),
        ("\n", False),
        ("\0", False),
        ("trailing\n", False),
    ],
)
def test_safe_value(value: str, expected: bool) -> None:
    assert safe_value(value) is expected
