"""A tiny OpenAI-compatible inference server for end-to-end tests of OGX / Llama Stack.

It answers ``GET /v1/models`` and ``POST /v1/chat/completions`` (streaming and not) the way an
agent loop needs in order to call exactly one MCP tool:

1. while the conversation has no tool result after the last user message, it answers with a
   tool call: the tool named by a directive in the last user message (``[[call:NAME]]``,
   optionally ``[[args:{json}]]``; build one with :func:`directive`), else the tool set with
   :meth:`FakeLLM.plan` (or ``POST /__fake/plan``); without either it answers plain text;
2. once a ``role: tool`` message follows the last user message, it answers with text
   ``FAKE-LLM FINAL: <every tool result, joined>`` so a test can assert that the tool's output
   reached the caller.

A tool is only "called" if the request offers it in ``tools`` (OGX presents MCP tools as
functions under their MCP names); otherwise the answer is a text explaining what was offered,
so a failing test says why. Every chat request is recorded (:meth:`FakeLLM.requests`,
``GET /__fake/requests``).

Use it in-process (``FakeLLM().start_in_thread()``: its own event loop in a daemon thread, good
for session-scoped fixtures) or as a process: ``python -m tests.support.fake_llm --port 0``
prints ``READY http://127.0.0.1:P/v1``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_MODEL = "fake-model"
FINAL_PREFIX = "FAKE-LLM FINAL: "
_CALL_RE = re.compile(r"\[\[call:([^\]\s]+)\]\]")
_ARGS_RE = re.compile(r"\[\[args:(\{.*?\})\]\]", re.DOTALL)


def directive(tool: str, arguments: dict[str, Any] | None = None, text: str = "") -> str:
    """A prompt that makes the fake model call ``tool`` with ``arguments``."""
    out = f"{text} [[call:{tool}]]".strip()
    if arguments:
        out += f" [[args:{json.dumps(arguments, separators=(',', ':'))}]]"
    return out


@dataclass
class ToolPlan:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


def _content_text(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return json.dumps(content)


def _offered_tools(body: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        fn = tool.get("function") if tool.get("type", "function") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
        if isinstance(name, str):
            names.append(name)
    return names


class FakeLLM:
    """The server. ``base_url`` (``http://127.0.0.1:P/v1``) is what an OpenAI client is given."""

    def __init__(self, models: Sequence[str] = (DEFAULT_MODEL,)) -> None:
        self.models = list(models)
        self._plan: ToolPlan | None = None
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- control -----------------------------------------------------------------------------

    def plan(self, tool: str | None, arguments: dict[str, Any] | None = None) -> None:
        """The tool to call when a prompt carries no directive (``None`` clears it)."""
        with self._lock:
            self._plan = ToolPlan(tool, dict(arguments or {})) if tool else None

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._plan = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- the model ---------------------------------------------------------------------------

    def _decide(self, body: dict[str, Any]) -> tuple[str | None, ToolPlan | None]:
        """(text, None) for a text answer, (None, plan) for a tool call."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        results = [
            _content_text(m.get("content")) for m in messages[last_user + 1 :] if m.get("role") == "tool"
        ]
        if results:
            return FINAL_PREFIX + "\n".join(results), None
        prompt = _content_text(messages[last_user].get("content")) if last_user >= 0 else ""
        plan: ToolPlan | None = None
        call = _CALL_RE.search(prompt)
        if call:
            args_match = _ARGS_RE.search(prompt)
            args = json.loads(args_match.group(1)) if args_match else {}
            plan = ToolPlan(call.group(1), args)
        else:
            with self._lock:
                plan = self._plan
        if plan is None:
            return "FAKE-LLM: no tool requested", None
        offered = _offered_tools(body)
        if plan.name not in offered:
            suffixed = [n for n in offered if n.endswith(plan.name)]
            if len(suffixed) != 1:
                return f"FAKE-LLM: tool {plan.name!r} not offered; offered: {offered}", None
            plan = ToolPlan(suffixed[0], plan.arguments)
        return None, plan

    def _completion_id(self) -> str:
        return f"chatcmpl-fake-{next(self._ids)}"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "body must be an object"}}, status=400)
        with self._lock:
            self._requests.append(RecordedRequest(request.path, dict(request.headers), body, time.time()))
        text, plan = self._decide(body)
        model = str(body.get("model") or DEFAULT_MODEL)
        cid = self._completion_id()
        created = int(time.time())
        call_id = f"call_{cid.rsplit('-', 1)[-1]}"
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if plan is not None:
                message["tool_calls"] = [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": plan.name, "arguments": json.dumps(plan.arguments)},
                    }
                ]
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": "tool_calls" if plan else "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                }
            )

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            await resp.write(f"data: {json.dumps(data)}\n\n".encode())

        await chunk({"role": "assistant", "content": ""})
        if plan is None:
            await chunk({"content": text})
            await chunk({}, "stop")
        else:
            await chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": plan.name, "arguments": ""},
                        }
                    ]
                }
            )
            await chunk({"tool_calls": [{"index": 0, "function": {"arguments": json.dumps(plan.arguments)}}]})
            await chunk({}, "tool_calls")
        if (body.get("stream_options") or {}).get("include_usage"):
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await resp.write(f"data: {json.dumps(data)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _set_plan(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.plan(body.get("tool"), body.get("arguments"))
        return web.json_response({"ok": True})

    async def _clear(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"path": r.path, "headers": r.headers, "body": r.body} for r in self.requests()]
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/__fake/plan", self._set_plan)
        app.router.add_post("/__fake/reset", self._clear)
        app.router.add_get("/__fake/requests", self._list_requests)
        return app

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeLLM:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        addresses: Iterable[Any] = self._runner.addresses
        self.port = int(next(iter(addresses))[1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self, timeout: float = 10.0) -> FakeLLM:
        """Serve from a daemon thread with its own event loop; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-llm", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("fake LLM did not start")
        if failure:
            raise RuntimeError("fake LLM failed to start") from failure[0]
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._thread = None
            self._loop = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_llm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", default=[])
    args = parser.parse_args(argv)

    async def serve() -> None:
        fake = FakeLLM(args.model or [DEFAULT_MODEL])
        await fake.start(args.host, args.port)
        print(f"READY http://{args.host}:{fake.port}/v1", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
