"""Streamable HTTP for ``ragd mcp --http``: loopback by default, Origin checked, a bearer token off loopback.

A browser page may send requests to a local port (and DNS rebinding can make it look same-host),
so a request whose ``Origin`` is not a loopback origin gets 403, as the MCP transport spec asks.
On loopback the SDK also checks the ``Host`` header. Off loopback every request must carry
``Authorization: Bearer <token>`` (the token of ``server.token_file``, as for gRPC over TCP).
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PATH = "/mcp"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    bare = host.strip().strip("[]").lower()
    if bare in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None) -> bool:
    """No Origin (a non-browser client), or an http(s) origin on a loopback host."""
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and hostname is not None and is_loopback(hostname)


class Guard:
    """ASGI middleware in front of the MCP app: refuses foreign origins (403) and, when a token
    is set, requests without ``Authorization: Bearer <token>`` (401)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.lower(), value)
        origin = headers.get(b"origin")
        if not origin_allowed(None if origin is None else origin.decode("latin-1")):
            await PlainTextResponse("Forbidden: foreign Origin", status_code=403)(scope, receive, send)
            return
        if self._expected is not None and not hmac.compare_digest(headers.get(b"authorization", b""), self._expected):
            response = PlainTextResponse(
                "Unauthorized: send Authorization: Bearer <token> (the token in server.token_file)",
                status_code=401, headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def http_app(server: MCPServer[Any], host: str, token: str | None) -> ASGIApp:
    """The ASGI app serving ``server`` at ``/mcp``. A host other than loopback needs a token."""
    if is_loopback(host):
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    elif not token:
        raise ValueError(f"{host} is not a loopback address: serving MCP there needs a bearer token")
    else:  # clients reach it by names this process cannot know; Guard checks Origin and the token
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(streamable_http_path=PATH, transport_security=security, host=host)
    return Guard(app, token)


def run_http(server: MCPServer[Any], host: str, port: int, token: str | None) -> None:
    """Serve until interrupted (uvicorn handles SIGINT and SIGTERM). A port that cannot be bound
    raises ``OSError`` before anything is served."""
    import uvicorn

    app = http_app(server, host, token)
    bare = host.strip("[]")
    listener = socket.create_server((bare, port), family=socket.AF_INET6 if ":" in bare else socket.AF_INET)
    shown = f"[{bare}]" if ":" in bare else bare
    auth = ", bearer token required" if token else ""
    print(f"ragd mcp: serving MCP on http://{shown}:{port}{PATH}{auth}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[listener])
