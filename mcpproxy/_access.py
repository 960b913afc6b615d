"""The access line of :mod:`mcpproxy.logs`, written out field by field.

``mcpproxy/_access.c`` is the same function in C: built (``setup.py``, beside the modules mypyc
compiles), it is imported in preference to this file, which is what a build without a C
compiler runs and the reference the C is tested against (``tests/test_units.py``). The access
line is the one log line every request writes; in C it is one string written once, where this
file builds a dozen pieces and joins them.
"""

from __future__ import annotations

from collections.abc import Callable
from json import encoder as json_encoder
from typing import Final

from mcpproxy.expiring import remember

#: JSON string literal of a str (``TypeError`` for anything else: a Secret cannot be written).
_json_str: Final[Callable[[str], str]] = json_encoder.encode_basestring_ascii
#: JSON literals of the line's recurring texts (route, method, path, MCP method, via, credential
#: source, fingerprint, error): a dict lookup instead of an encoder call. Bounded, as paths come
#: from callers.
_QUOTED: Final[dict[str, str]] = {}
_MAX_QUOTED: Final = 1024


def access_line(
    route: str,
    method: str,
    path: str,
    mcp_method: str | None,
    status: int,
    bytes: int,
    duration_ms: float,
    request_id: str,
    via: str,
    upstream_ms: float | None,
    credential_source: str | None,
    subject_fingerprint: str | None,
    sub: str | None,
    error: str | None,
    detail: str | None,
    second: str,
    micros: int,
) -> str:
    """One access line, a JSON object of the fields in this order and its newline; the optional
    ones (from ``upstream_ms``) left out when None or empty, ``mcp_method`` written as ``null``
    when None. Every text is a str (``TypeError`` otherwise), written as ``json.dumps`` writes it
    with ASCII output; durations with three decimals (:func:`_millis`); the timestamp as
    ``second`` (ASCII, as the line is), ``micros`` in six digits (0 to 999999) and ``Z``."""
    if not second.isascii():
        raise ValueError("the access line's second must be an ASCII str")
    if not 0 <= micros <= 999_999:
        raise ValueError("the access line's micros must be 0 to 999999")
    parts = [
        f'{{"route":{_quoted(route)},"method":{_quoted(method)},"path":{_quoted(path)},'
        f'"mcp_method":{"null" if mcp_method is None else _quoted(mcp_method)},'
        f'"status":{status},"bytes":{bytes},"duration_ms":{_millis(duration_ms)},'
        f'"request_id":{_json_str(request_id)},"via":{_quoted(via)}'
    ]
    if upstream_ms is not None:
        parts.append(',"upstream_ms":' + _millis(upstream_ms))
    if credential_source:
        parts.append(',"credential_source":' + _quoted(credential_source))
    if subject_fingerprint:
        parts.append(',"subject_fingerprint":' + _quoted(subject_fingerprint))
    if sub:
        parts.append(',"sub":' + _json_str(sub))
    if error:
        parts.append(',"error":' + _quoted(error))
    if detail:
        parts.append(',"detail":' + _json_str(detail))
    parts.append(f',"event":"request","level":"info","timestamp":"{second}.{micros:06d}Z"}}\n')
    return "".join(parts)


def _quoted(text: str) -> str:
    quoted = _QUOTED.get(text)
    return quoted if quoted is not None else remember(_QUOTED, text, _json_str(text), _MAX_QUOTED)


def _millis(value: float) -> str:
    """Milliseconds with three decimals, as ``"%.3f" % value`` writes them but for a rare last
    digit on an exact half (the value in thousandths is rounded half up, from the float's exact
    value times 1000), for a finite value; formatted from integers (a float format is several
    times the cost)."""
    if value < 0:
        return "%.3f" % value  # noqa: UP031 - not met: durations come from a monotonic clock
    thousandths = int(value * 1000 + 0.5)
    return f"{thousandths // 1000}.{thousandths % 1000:03d}"
