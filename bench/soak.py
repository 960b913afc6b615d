"""The bounded soak (issue 8): a steady rate through token exchange (+ verification and policy when
the proxy accepts them) for a few minutes; errors, RSS and open files over time; bench/SOAK.md.

    bash scripts/bench.sh --soak [MINUTES]        (default 5)

Load, open loop (requests are started on a clock, not when the previous one ends):
  * RATE small ``tools/call`` POSTs per second to the canned upstream, each as one of USERS users
    whose tokens are replaced a few at a time every ROTATE_S seconds (new cache entries keep
    arriving; old ones must expire or be evicted rather than pile up);
  * one OGX session per second (initialize, initialized, GET stream, tools/list, tools/call,
    DELETE, new connection per request) on the SDK's MCP server with SSE answers, alternating
    between the route with the policy (its GET stream goes through aiohttp) and the same route
    without it (the relay serves the GET stream);
  * exchanged tokens live TOKEN_TTL_S seconds (the OAuth server's ``token_ttl`` switch), so the
    proxy's cache refreshes them many times during the run.
Every loop ends at the deadline by itself; every request has a timeout. RSS is sampled every
SAMPLE_S seconds; growth = mean of the last three samples minus the mean of the samples between
20 % and 35 % of the run (after start-up and the first token refreshes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import clients, infra
from bench.run import BENCH, BIG_BYTES, CANNED_BODY, proxy_config
from tests.support.oauth import GRANT_TOKEN_EXCHANGE, OAuthServer

RATE = 100  # small requests per second
USERS = 20
ROTATE_S = 30  # every ROTATE_S seconds, ROTATE_N user tokens are replaced by new ones
ROTATE_N = 5
TOKEN_TTL_S = 90
SAMPLE_S = 10
GROWTH_LIMIT_MIB = 5.0
FD_GROWTH_LIMIT = 16


def _exchanges(stats: dict[str, Any]) -> int:
    g = stats.get("grant_types", {}).get(GRANT_TOKEN_EXCHANGE, {})
    return int(g.get("success", 0)) + int(g.get("error", 0))


def _fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


async def _soak(minutes: float, tmp: Path) -> dict[str, Any]:
    canned, canned_port = infra.start_canned(tmp, BIG_BYTES)
    procs: list[infra.Proc] = [canned]
    oauth = OAuthServer()
    try:
        sse, sse_port = infra.start_mcp(tmp, "sse")
        procs.append(sse)
        json_, json_port = infra.start_mcp(tmp, "json")
        procs.append(json_)
        oauth.start_sync()
        await oauth.set_mode(token_ttl=TOKEN_TTL_S)
        ports = {"canned": canned_port, "aio": canned_port, "json": json_port, "sse": sse_port}
        port = infra.free_port()
        kind = "p4"
        config = proxy_config(kind, port, ports, oauth.issuer)
        refusal = infra.check_config(tmp, kind, config)
        note = "configuration (4): JWT verification + token exchange + tool policy"
        if refusal is not None:
            kind = "p3"
            config = proxy_config(kind, port, ports, oauth.issuer)
            note = f"configuration (3): token exchange (configuration (4) refused: {refusal[:200]})"
        config["routes"].append(_open_stream_route(config["routes"]))
        proxy, _ = infra.start_proxy(f"soak-{kind}", tmp, config)
        procs.append(proxy)
        base = f"http://127.0.0.1:{port}"
        lifetime = int(minutes * 60) + 600

        async def token() -> str:
            user = "alice" if os.urandom(1)[0] % 2 else "carol"  # both tenant acme: the policy allows
            return "Bearer " + await oauth.user_token(user, audience="mcp-proxy", expires_in=lifetime)

        tokens = [await token() for _ in range(USERS)]
        counts = {"ok": 0, "errors": 0, "sessions": 0, "session_errors": 0, "overload": 0}
        first_errors: list[str] = []
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        deadline = started + minutes * 60
        exchanges0 = _exchanges(await oauth.stats())

        def error(what: str) -> None:
            if len(first_errors) < 10:
                first_errors.append(f"{time.monotonic() - started:.0f}s {what[:240]}")

        connector = aiohttp.TCPConnector(limit=64)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as http:
            in_flight: set[asyncio.Task[None]] = set()

            async def one(auth: str) -> None:
                headers = {
                    "Content-Type": "application/json",
                    "Accept": clients.ACCEPT,
                    "Authorization": auth,
                    "Mcp-Session-Id": "soak",
                    "MCP-Protocol-Version": clients.PROTOCOL_VERSION,
                }
                try:
                    async with http.post(f"{base}/canned/mcp", data=CANNED_BODY, headers=headers) as resp:
                        body = await resp.read()
                        if resp.status == 200 and b'"result"' in body:
                            counts["ok"] += 1
                        else:
                            counts["errors"] += 1
                            error(f"HTTP {resp.status} {body[:160]!r}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    counts["errors"] += 1
                    error(f"{type(exc).__name__}: {exc}")

            async def small_load() -> None:
                tick = 0.05
                per_tick = RATE * tick
                owed = 0.0
                i = 0
                next_at = time.monotonic()
                while time.monotonic() < deadline:
                    owed += per_tick
                    while owed >= 1:
                        owed -= 1
                        if len(in_flight) > 500:
                            counts["overload"] += 1
                            continue
                        task = asyncio.create_task(one(tokens[i % len(tokens)]))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                        i += 1
                    next_at += tick
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))

            async def ogx_load() -> None:
                paths = ("/sse/mcp", f"{OPEN_STREAMS}/mcp")  # GET streams through aiohttp, the relay
                while time.monotonic() < deadline:
                    t0 = time.monotonic()
                    path = paths[counts["sessions"] % 2]
                    s = await clients.ogx_sessions(
                        base + path, tokens[0], concurrency=1, duration_s=0.0, max_sessions=1
                    )
                    counts["sessions"] += s.extra.get("sessions", 0)
                    counts["session_errors"] += s.errors
                    if s.first_error:
                        error("OGX " + s.first_error)
                    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))

            async def rotate() -> None:
                n = 0
                while time.monotonic() + ROTATE_S < deadline:
                    await asyncio.sleep(ROTATE_S)
                    for _ in range(ROTATE_N):
                        tokens[n % USERS] = await token()
                        n += 1

            async def sample() -> None:
                while True:
                    mem = max((infra.memory_kib(p) for p in proxy.pids()), key=lambda m: m.get("VmRSS", 0))
                    stats = await oauth.stats()
                    samples.append(
                        {
                            "t_s": round(time.monotonic() - started),
                            "rss_mib": mem.get("VmRSS", 0) / 1024,
                            "hwm_mib": mem.get("VmHWM", 0) / 1024,
                            "fds": _fds(proxy.pids()),
                            "cpu_s": infra.cpu_seconds(proxy.pids()),
                            "ok": counts["ok"],
                            "errors": counts["errors"] + counts["session_errors"] + counts["overload"],
                            "sessions": counts["sessions"],
                            "exchanges": _exchanges(stats) - exchanges0,
                        }
                    )
                    if time.monotonic() >= deadline:
                        return
                    await asyncio.sleep(min(SAMPLE_S, max(0.0, deadline - time.monotonic())))

            print(f"soak: {minutes:g} min through {note}; {RATE} req/s + 1 OGX session/s", flush=True)
            sampler = asyncio.create_task(sample())
            await asyncio.gather(small_load(), ogx_load(), rotate())
            if in_flight:
                await asyncio.wait(in_flight, timeout=15)
            await sampler
        metrics = infra.metrics_text(port)
        streams = [line for line in metrics.splitlines() if line.startswith("mcpproxy_open_streams{")]
        return {
            "gets": _gets_by_layer(proxy.log),
            "open_streams": streams,
            "minutes": minutes,
            "note": note,
            "kind": kind,
            "counts": counts,
            "samples": samples,
            "first_errors": first_errors,
            "alive": proxy.alive(),
            "metrics": [
                line
                for line in metrics.splitlines()
                if "exchange" in line and not line.startswith("#") and "_bucket" not in line
            ][:20],
        }
    finally:
        for proc in reversed(procs):
            proc.stop()
        oauth.close()


#: A second route to the SSE server without the policy, so that half of the OGX sessions have
#: their GET stream served by the relay (a policy route's goes through aiohttp, which filters it).
OPEN_STREAMS = "/sse_open"


def _open_stream_route(routes: list[dict[str, Any]]) -> dict[str, Any]:
    sse = next(r for r in routes if r["name"] == "sse")
    route = {k: v for k, v in sse.items() if k != "policy"}
    return {**route, "name": "sse_open", "path": OPEN_STREAMS}


def _gets_by_layer(log: Path) -> dict[str, int]:
    """GET requests in the proxy's access lines, by the layer that served them (``via``)."""
    out: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "request" and entry.get("method") == "GET":
                out[entry["via"]] = out.get(entry["via"], 0) + 1
    return out


def _analyse(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    samples = result["samples"]
    counts = result["counts"]
    total_s = samples[-1]["t_s"] if samples else 0
    window = [s["rss_mib"] for s in samples if 0.2 * total_s <= s["t_s"] <= 0.35 * total_s] or [
        samples[min(1, len(samples) - 1)]["rss_mib"]
    ]
    base = statistics.mean(window)
    final = statistics.mean(s["rss_mib"] for s in samples[-3:])
    growth = final - base
    fd_growth = samples[-1]["fds"] - samples[min(1, len(samples) - 1)]["fds"]
    errors = counts["errors"] + counts["session_errors"] + counts["overload"]
    cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"]
    return [
        (
            "no errors",
            errors == 0 and result["alive"],
            f"{counts['ok']} requests OK, {counts['sessions']} OGX sessions, {errors} errors; proxy "
            f"{'alive' if result['alive'] else 'DEAD'}",
        ),
        (
            f"no RSS growth (<= {GROWTH_LIMIT_MIB:g} MiB)",
            growth <= GROWTH_LIMIT_MIB,
            f"{base:.1f} MiB at 20-35 % of the run → {final:.1f} MiB at the end ({growth:+.1f} MiB); "
            f"peak {samples[-1]['hwm_mib']:.1f} MiB",
        ),
        (
            "GET streams ended",
            bool(result["open_streams"]) and all(line.endswith(" 0") for line in result["open_streams"]),
            f"open streams at the end: {', '.join(result['open_streams']) or 'no metric'}; GET streams "
            f"served by {', '.join(f'{n} {via}' for via, n in sorted(result['gets'].items())) or 'none'}",
        ),
        (
            "no file-descriptor growth",
            fd_growth <= FD_GROWTH_LIMIT,
            f"{samples[min(1, len(samples) - 1)]['fds']} → {samples[-1]['fds']} open fds",
        ),
        (
            "token cache refreshes instead of exchanging per request",
            samples[-1]["exchanges"] < counts["ok"] / 20,
            f"{samples[-1]['exchanges']} token exchanges for {counts['ok']} requests "
            f"(tokens live {TOKEN_TTL_S} s; {USERS} users, {ROTATE_N} replaced every {ROTATE_S} s); "
            f"proxy CPU {cpu / max(counts['ok'] + 6 * counts['sessions'], 1) * 1e6:.0f} µs per request",
        ),
    ]


def main(minutes: float, command: str) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="mcpproxy-soak-") as tmp:
        result = asyncio.run(_soak(minutes, Path(tmp)))
    checks = _analyse(result)
    lines = [
        "# mcpproxy soak",
        "",
        f"Generated by `{command}` on {date}: {result['minutes']:g} minutes through {result['note']}. "
        f"Open loop: {RATE} small `tools/call` requests/s to the canned upstream as {USERS} users "
        f"({ROTATE_N} user tokens replaced every {ROTATE_S} s), plus one OGX session per second "
        f"(6 requests, new connection each) on the SDK's MCP server, alternating between the route "
        f"with the policy (GET stream through aiohttp) and the same route without it (GET stream "
        f"through the relay); exchanged tokens live "
        f"{TOKEN_TTL_S} s. Load generator, proxy and upstreams share the machine's "
        f"{os.cpu_count()} cores. Code measured: {infra.code_measured()}",
        "",
        "## Checks",
        "",
    ]
    for name, ok, detail in checks:
        lines.append(f"- **{'PASS' if ok else 'FAIL'}** {name}: {detail}")
    lines += [
        "",
        "## Over time",
        "",
        "| t (s) | RSS MiB | peak MiB | open fds | requests OK | OGX sessions | errors | exchanges |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result["samples"]:
        lines.append(
            f"| {s['t_s']} | {s['rss_mib']:.1f} | {s['hwm_mib']:.1f} | {s['fds']} | {s['ok']} | "
            f"{s['sessions']} | {s['errors']} | {s['exchanges']} |"
        )
    if result["first_errors"]:
        lines += ["", "## First errors", ""] + [f"- `{e}`" for e in result["first_errors"]]
    if result["metrics"]:
        lines += ["", "## Proxy metrics at the end (exchange lines)", "", "```", *result["metrics"], "```"]
    lines.append("")
    (BENCH / "SOAK.md").write_text("\n".join(lines))
    print()
    for s in result["samples"]:
        print(
            f"  t={s['t_s']:>4}s rss={s['rss_mib']:.1f}MiB fds={s['fds']} ok={s['ok']} "
            f"errors={s['errors']} exchanges={s['exchanges']}"
        )
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print("wrote bench/SOAK.md")
    return 0
