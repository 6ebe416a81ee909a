"""ragd's MCP server: the tools ``search``, ``get``, ``multi_get`` and ``status`` for assistants.

It talks to a running ``ragd serve`` through ``ragd_client`` only (no index, no models), so it
starts fast. ``ragd mcp`` serves it over stdio; ``ragd mcp --http`` over streamable HTTP.

    from ragd_mcp import Settings, build_server

    build_server(Settings(address="unix:///run/user/1000/ragd/ragd.sock")).run()   # stdio
"""

from __future__ import annotations

from ragd_mcp.http import PATH, http_app, is_loopback, origin_allowed, run_http
from ragd_mcp.tools import Settings, build_server

__all__ = ["PATH", "Settings", "build_server", "http_app", "is_loopback", "origin_allowed", "run_http"]
