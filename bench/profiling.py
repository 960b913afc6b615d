"""Where the proxy's CPU goes: py-spy's raw (collapsed) stacks summarised into bench/PROFILE.md.

Each sample is attributed to a *category* by its innermost Python frame (native frames below it —
C code of aiohttp's parser, uvloop, the json module — count for that Python caller), and to every
function on its stack for inclusive figures. A function compiled with mypyc is a C frame named
``CPyDef_<module>___<name>`` (``CPyPy_`` for its wrapper); in the native profile it counts as the
Python frame it was compiled from. The non-blocking profile (Python frames only) does not see it.
A hand-written section between the ``findings`` markers of an existing PROFILE.md is kept when the
file is regenerated.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcpproxy import native

if TYPE_CHECKING:
    from bench.run import Bench

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
COMPILED_FRAME = re.compile(r"^CPy(?:Def|Py)_(?P<module>[a-z0-9_]+?)___(?P<func>\w+)$")
#: A compiled module's last name component (what mypyc's symbols use) -> its source file.
_COMPILED_FILES = {name.rsplit(".", 1)[-1]: name.replace(".", "/") + ".py" for name in native.COMPILED}
START, END = "<!-- findings -->", "<!-- /findings -->"

# (category, substring of the file path or function) — first match wins, innermost Python frame.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("structlog / logging (access log)", ("structlog/", "/logging/", "mcpproxy/logs.py")),
    ("json", ("/json/",)),
    ("mcpproxy: metrics", ("mcpproxy/metrics.py",)),
    ("mcpproxy: headers", ("mcpproxy/headers.py",)),
    (
        "mcpproxy: credentials / exchange / cache",
        (
            "mcpproxy/credentials.py",
            "mcpproxy/upstream_auth.py",
            "mcpproxy/tokencache",
            "mcpproxy/oauth/",
            "mcpproxy/providerdata.py",
            "mcpproxy/secrets.py",
            "mcpproxy/verify",
            "mcpproxy/policy",
            "jwt/",
        ),
    ),
    ("mcpproxy: JSON-RPC body", ("mcpproxy/jsonrpc.py",)),
    (
        "mcpproxy: relay (web/relay.py, web/upstream.py, http1.py)",
        ("mcpproxy/web/relay.py", "mcpproxy/web/upstream.py", "mcpproxy/http1.py"),
    ),
    ("mcpproxy: handler (web/proxy.py, app.py)", ("mcpproxy/web/",)),
    ("mcpproxy: other", ("mcpproxy/",)),
    (
        "aiohttp client (ClientSession, connector, ClientResponse)",
        (
            "aiohttp/client",
            "aiohttp/connector.py",
            "aiohttp/client_reqrep.py",
            "aiohttp/client_proto.py",
            "aiohttp/tracing.py",
            "aiohttp/cookiejar.py",
        ),
    ),
    ("aiohttp server (web_protocol, web_request, web_response)", ("aiohttp/web", "aiohttp/base_protocol.py")),
    ("aiohttp shared (streams, http writer/parser, helpers)", ("aiohttp/",)),
    ("multidict / yarl", ("multidict/", "yarl/")),
    ("asyncio / uvloop (event loop, tasks, timeouts)", ("asyncio/", "uvloop", "async_timeout")),
]


def categorize(file: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in file for n in needles):
            return name
    return "other Python"


def _short(func: str, file: str) -> str:
    marker = "site-packages/"
    if marker in file:
        file = file.split(marker, 1)[1]
    elif "/mcpproxy/" in file:
        file = "mcpproxy/" + file.split("/mcpproxy/", 1)[1]
    elif "/lib/python" in file:
        file = file.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{func} ({file})"


def python_frame(func: str, file: str) -> tuple[str, str]:
    """A compiled function's C frame as the Python frame it was compiled from; others unchanged."""
    m = COMPILED_FRAME.match(func)
    if m is None or m["module"] not in _COMPILED_FILES:
        return func, file
    return m["func"].replace("___", "."), _COMPILED_FILES[m["module"]]


def summarize(path: Path) -> dict[str, Any]:
    total = 0
    categories: Counter[str] = Counter()
    self_py: Counter[str] = Counter()
    self_native: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for part in stack.split(";"):
            m = FRAME.match(part.strip())
            if m:
                frames.append((*python_frame(m["func"], m["file"] or ""), m["line"]))
        if not frames:
            continue
        total += count
        py = [(f, file) for f, file, _ in frames if file.endswith(".py") or ".py" in file]
        if py:
            func, file = py[-1]
            categories[categorize(file)] += count
            self_py[_short(func, file)] += count
        else:
            categories["native only (no Python frame)"] += count
        leaf_func, leaf_file, _ = frames[-1]
        if not leaf_file.endswith(".py"):
            self_native[f"{leaf_func} ({Path(leaf_file).name or '?'})"] += count
        seen = set()
        for func, file in py:
            key = _short(func, file)
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
    return {
        "total": total,
        "categories": categories.most_common(),
        "self_py": self_py.most_common(30),
        "self_native": self_native.most_common(15),
        "inclusive": inclusive.most_common(45),
    }


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f} %" if total else "-"


def _section(
    lines: list[str], title: str, rows: list[tuple[str, int]], total: int, code: bool = True
) -> None:
    lines += ["", f"## {title}", "", "| | share |", "|---|---|"]
    for name, n in rows:
        label = f"`{name}`" if code else name
        lines.append(f"| {label} | {_pct(n, total)} |")


def write(path: Path, summaries: dict[str, dict[str, Any]], bench: Bench, date: str, command: str) -> None:
    kept = ""
    if path.exists():
        old = path.read_text()
        if START in old and END in old:
            kept = old[old.index(START) + len(START) : old.index(END)].strip("\n")
    g = bench.generator
    py = summaries.get("python")
    native = summaries.get("native")
    lines = [
        "# Where mcpproxy's CPU goes",
        "",
        "py-spy against configuration (3) — token exchange with a warm cache, access log on, one process — "
        f"while wrk drove the canned workload (c={bench.s.high}) for {bench.s.profile_s} s, twice: "
        f"`--nonblocking --rate 250` (Python frames only, the process is not paused: "
        f"{g.get('profile_python_wrk_rps', float('nan')):,.0f} req/s while sampled, "
        f"{py['total'] if py else 0} samples) and `--native --rate 100` (C frames too; py-spy must pause the "
        "process for each sample, so the rate drops to "
        f"{g.get('profile_native_wrk_rps', float('nan')):,.0f} req/s and time-based shares such as GC are "
        f"somewhat inflated; {native['total'] if native else 0} samples). "
        f"Generated by `{command}` on {date}. Functions compiled with mypyc (`mcpproxy/native.py`) are "
        "C frames: only the native profile sees them, counted for the module they were compiled from.",
        "",
        "## Findings",
        "",
        START,
        kept or "_(hand-written findings go here; kept when the file is regenerated)_",
        END,
    ]
    if py:
        t = py["total"]
        _section(
            lines,
            "By category — innermost Python frame of each sample (non-blocking profile)",
            py["categories"],
            t,
            code=False,
        )
        _section(
            lines,
            "Inclusive — samples with the function anywhere on the stack (non-blocking)",
            py["inclusive"],
            t,
        )
        _section(lines, "Self time — innermost Python frame (non-blocking)", py["self_py"], t)
    if native:
        t = native["total"]
        _section(
            lines,
            "By category — native profile (C frames count for their Python caller; compiled "
            "functions for their module)",
            native["categories"],
            t,
            code=False,
        )
        _section(lines, "Self time — native leaf frames (native profile)", native["self_native"], t)
        _section(lines, "Self time — innermost Python frame (native profile)", native["self_py"][:20], t)
    lines.append("")
    path.write_text("\n".join(lines))
