"""The test MCP server (``tests/servers/mcp_app.py``) as the benchmark runs it: same app, same
options, but its listening socket is created with ``IPPROTO_TCP`` so that asyncio sets
``TCP_NODELAY`` on every accepted connection.

``tests.servers.mcp_app._bind`` creates ``socket(AF_INET, SOCK_STREAM)`` (proto 0), and asyncio
only sets TCP_NODELAY on sockets whose ``proto`` is ``IPPROTO_TCP``; uvicorn then writes a
response's head and body in two segments and, on a kept-alive connection, the body waits for the
client's delayed ACK: ~40 ms per request. A server started with ``uvicorn.run(host, port)`` (as
``MCPServer.run("streamable-http")`` does) does not have that problem, so neither should the
benchmark's upstream.

    python -m bench.mcp_server --port 0 --mode json|sse [mcp_app options]
"""

from __future__ import annotations

import socket

from tests.servers import mcp_app


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    mcp_app._bind = _bind
    mcp_app.main()
