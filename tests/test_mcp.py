"""ragd mcp end to end: the SDK's own MCP client, over stdio and streamable HTTP, against a real
`ragd serve` with the tiny models (one daemon for the module)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

import ragd_client
from conftest import write_tree

RAGD = str(Path(sys.executable).parent / "ragd")
T = TypeVar("T")

NOTES: dict[str, str] = {
    "alpha.md": (
        "# Alpha\n\n"
        "The alpha project studies glaciers in Iceland with ice cores.\n"
        "Each core is drilled in spring and stored frozen.\n\n"
        "## Results\n\n"
        "Glacier retreat doubled after 1990 according to the cores.\n"
    ),
    "beta.txt": "Sourdough bread needs a starter made of flour and water.\nFeed it daily.\n",
    "code/gamma.py": "def rotate_signing_keys(days: int) -> None:\n    \"\"\"Rotate the signing keys.\"\"\"\n",
}


@dataclass(frozen=True)
class Daemon:
    config: Path
    notes: Path
    data: Path


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(client: ragd_client.Client) -> bool:
    try:
        st = client.status()
    except ragd_client.RagdClientError:
        return False
    return st.serving and st.files_pending == 0 and st.files_indexed == len(NOTES) and not st.current_file


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("mcp")
    notes = base / "notes"
    write_tree(notes, dict(NOTES))
    sock = base / "run" / "ragd.sock"
    config = base / "config.toml"
    config.write_text(
        f'data_dir = "{base / "data"}"\n[[roots]]\npath = "{notes}"\n'
        f'[models]\nembedder = "{tiny_models["m3"]}"\nreranker = "{tiny_models["reranker"]}"\nfallback = "none"\n'
        f'backend = "torch"\n[server]\nsocket = "{sock}"\n[mcp]\ndeadline_ms = 20000\nmax_results = 20\n',
        encoding="utf-8")
    proc = subprocess.Popen([RAGD, "serve", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        with ragd_client.Client(f"unix://{sock}", timeout=5) as client:
            wait_for(lambda: proc.poll() is not None or _ready(client), 120, "the daemon to index the notes")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield Daemon(config=config, notes=notes, data=base / "data")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stdio(config: Path, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=RAGD, args=["mcp", "--config", str(config), *extra])


def session(server: Any, body: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``body`` with a connected MCP client (one `ragd mcp` process or HTTP session)."""

    async def go() -> T:
        with anyio.fail_after(60):
            async with Client(server) as client:
                return await body(client)

    return anyio.run(go)


def calls(server: Any, *requests: tuple[str, dict[str, Any]]) -> list[CallToolResult]:
    async def body(client: Client) -> list[CallToolResult]:
        return [await client.call_tool(name, args) for name, args in requests]

    return session(server, body)


def ok(result: CallToolResult) -> dict[str, Any]:
    """The structured result of a call that must have succeeded."""
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def error(result: CallToolResult) -> str:
    """The message of a call that must have failed as a tool error."""
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


def file_lines(path: str, start: int, end: int) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()[start - 1 : end]


def test_tools_are_read_only_with_output_schemas(daemon: Daemon) -> None:
    tools = session(stdio(daemon.config), lambda c: c.list_tools()).tools
    assert {t.name for t in tools} == {"search", "get", "multi_get", "similar", "status"}
    for tool in tools:
        assert tool.annotations is not None and tool.annotations.read_only_hint is True, tool.name
        assert tool.annotations.destructive_hint is False and tool.annotations.open_world_hint is False
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", tool.name
        assert len(tool.description or "") > 150, tool.name
    search = next(t for t in tools if t.name == "search")
    assert {"query", "limit", "path_prefix", "extensions", "root", "rerank", "deadline_ms"} <= set(
        search.input_schema["properties"])
    assert "citation" in json.dumps(search.output_schema)


def test_search_get_and_status_over_stdio(daemon: Daemon) -> None:
    alpha = str(daemon.notes / "alpha.md")
    found, top, only_txt, under_code, status = calls(
        stdio(daemon.config),
        ("search", {"query": "glaciers in Iceland and ice cores", "limit": 3}),
        ("search", {"query": "glaciers in Iceland and ice cores", "limit": 1, "rerank": False}),
        ("search", {"query": "bread starter", "extensions": ["txt"], "rerank": False}),
        ("search", {"query": "signing keys", "path_prefix": str(daemon.notes / "code")}),
        ("status", {}),
    )
    result = ok(found)
    assert 1 <= len(result["hits"]) <= 3
    assert result["candidates"] >= len(result["hits"]) and result["reranked"] >= 1
    for hit in result["hits"]:
        assert hit["citation"] == f"{hit['path']}:{hit['start_line']}-{hit['end_line']}"
        assert hit["page"] == 0 and isinstance(hit["chunk_id"], int)
        # the cited lines are the passage: the snippet's words are on them
        text = " ".join(file_lines(hit["path"], hit["start_line"], hit["end_line"]))
        assert all(word in text for word in hit["snippet"].split()[:6]), (hit, text)
    assert [h["path"] for h in ok(top)["hits"]] == [alpha]  # the tiny models are random: full-text finds it
    assert ok(top)["reranked"] == 0
    assert {h["path"] for h in ok(only_txt)["hits"]} == {str(daemon.notes / "beta.txt")}
    assert ok(only_txt)["reranked"] == 0
    assert {h["path"] for h in ok(under_code)["hits"]} == {str(daemon.notes / "code" / "gamma.py")}

    st = ok(status)
    assert st["serving"] is True and st["files_indexed"] == len(NOTES) and st["files_pending"] == 0
    assert st["embedder"] and st["reranker"] and st["chunks"] >= len(NOTES) and st["shared_chunks"] == 0
    assert [r["path"] for r in st["roots"]] == [str(daemon.notes)]
    assert st["roots"][0]["files_indexed"] == len(NOTES)

    hit = ok(top)["hits"][0]
    lines, cited, chunk, many = calls(
        stdio(daemon.config),
        ("get", {"path": alpha, "from_line": 3, "count": 2}),
        ("get", {"path": hit["citation"]}),
        ("get", {"chunk_id": hit["chunk_id"]}),
        ("multi_get", {"refs": [hit["citation"], f"chunk:{hit['chunk_id']}", "/etc/passwd",
                                str(daemon.notes / "beta.txt")], "max_lines": 1}),
    )
    got = ok(lines)
    assert got["text"].split("\n") == file_lines(alpha, 3, 4)
    assert (got["start_line"], got["end_line"], got["next_line"]) == (3, 4, 5)
    assert got["total_lines"] == len(NOTES["alpha.md"].splitlines()) and got["citation"] == f"{alpha}:3-4"
    assert ok(cited)["text"].split("\n") == file_lines(alpha, hit["start_line"], hit["end_line"])
    whole = ok(chunk)
    assert whole["chunk_id"] == hit["chunk_id"] and whole["path"] == alpha and "glaciers" in whole["text"]
    assert whole["citation"] == hit["citation"]
    multi = ok(many)
    assert [p["path"] for p in multi["passages"]] == [alpha, alpha, str(daemon.notes / "beta.txt")]
    assert multi["passages"][2]["text"] == NOTES["beta.txt"].splitlines()[0]
    assert [f["ref"] for f in multi["failures"]] == ["/etc/passwd"]
    assert "not allowed" in multi["failures"][0]["error"]

    by_chunk, by_line, outside = calls(
        stdio(daemon.config),
        ("similar", {"chunk_id": hit["chunk_id"], "limit": 5}),
        ("similar", {"citation": f"{alpha}:3", "same_file": True}),
        ("similar", {"citation": "/etc/passwd:1"}),
    )
    like = ok(by_chunk)
    assert like["hits"] and all(h["path"] != alpha for h in like["hits"])  # its file is left out
    assert hit["chunk_id"] not in {h["chunk_id"] for h in ok(by_line)["hits"]}
    assert "not allowed" in error(outside)


def test_hostile_inputs_are_tool_errors(daemon: Daemon) -> None:
    notes = str(daemon.notes)
    results = calls(
        stdio(daemon.config),
        ("get", {"path": "/etc/passwd"}),
        ("get", {"path": f"{notes}/../../../etc/passwd"}),
        ("get", {"path": f"{notes}/alpha.md\x00.txt"}),
        ("get", {"path": "alpha.md"}),
        ("get", {"path": f"{notes}/missing.md"}),
        ("get", {"chunk_id": 987654321}),
        ("get", {}),
        ("search", {"query": "   "}),
        ("search", {"query": ""}),
        ("search", {"query": "glaciers", "limit": 21}),
        ("search", {"query": "glaciers", "path_prefix": "/etc/../root"}),
        ("search", {"query": "glaciers\x00"}),
        ("multi_get", {"refs": ["chunk:x"]}),
        ("status", {}),
    )
    *bad, multi, status = results
    messages = [error(r) for r in bad]
    assert "not allowed" in messages[0] and "indexed folders" in messages[0]
    assert "'..'" in messages[1]
    assert "NUL" in messages[2]
    assert "absolute" in messages[3]
    assert "not found" in messages[4]
    assert "not found" in messages[5] and "search again" in messages[5]
    assert "either path" in messages[6]
    assert "query" in messages[7] and "empty" in messages[7]
    assert "query" in messages[8]  # refused by the input schema
    assert "limit" in messages[9] and "20" in messages[9]
    assert "'..'" in messages[10]
    assert "NUL" in messages[11]
    assert ok(multi)["failures"][0]["error"] == "invalid request: a chunk reference is \"chunk:<id>\", got 'chunk:x'"
    assert ok(status)["serving"] is True  # the server is still up


def test_without_a_daemon_every_tool_says_to_run_ragd_serve(tmp_path: Path) -> None:
    address = f"unix://{tmp_path / 'none.sock'}"
    config = tmp_path / "empty.toml"
    config.write_text("", encoding="utf-8")  # all defaults
    results = calls(
        stdio(config, "--address", address),
        ("search", {"query": "anything"}),
        ("get", {"path": "/tmp/x.md"}),
        ("status", {}),
    )
    for result in results:
        assert error(result).endswith(
            f"daemon unavailable: no ragd daemon answered on {address}: start it with `ragd serve`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(daemon: Daemon) -> Iterator[Callable[..., tuple[str, subprocess.Popen[str]]]]:
    """Start `ragd mcp --http` with extra arguments; returns its URL (on 127.0.0.1) and process."""
    procs: list[subprocess.Popen[str]] = []

    def start(*extra: str, config: Path | None = None) -> tuple[str, subprocess.Popen[str]]:
        port = free_port()
        proc = subprocess.Popen([RAGD, "mcp", "--http", "--port", str(port), "--config", str(config or daemon.config),
                                 *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(proc)

        def listening() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 30, "ragd mcp --http to listen")
        return f"http://127.0.0.1:{port}/mcp", proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(url: str, headers: dict[str, str]) -> int:
    """The HTTP status of an MCP initialize request sent with ``headers``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_http_transport_and_origin_check(daemon: Daemon, http_server: Callable[..., Any]) -> None:
    url, _ = http_server()
    found, status = calls(url, ("search", {"query": "sourdough starter", "limit": 1, "rerank": False}), ("status", {}))
    assert ok(found)["hits"][0]["path"] == str(daemon.notes / "beta.txt")
    assert ok(status)["files_indexed"] == len(NOTES)
    port = url.split(":")[2].split("/")[0]
    assert post(url, {"Origin": "http://evil.example"}) == 403
    assert post(url, {"Origin": f"http://attacker.test:{port}"}) == 403
    assert post(url, {"Origin": "null"}) == 403
    assert post(url, {"Host": f"evil.example:{port}"}) == 421  # DNS rebinding: a foreign Host
    assert post(url, {"Origin": f"http://localhost:{port}"}) == 200
    assert post(url, {}) == 200


def test_http_off_loopback_needs_allow_remote_and_the_token(
    daemon: Daemon, http_server: Callable[..., Any], tmp_path: Path
) -> None:
    refused = subprocess.run([RAGD, "mcp", "--http", "--host", "0.0.0.0", "--config", str(daemon.config)],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert refused.stderr.startswith("ragd: error: --host: 0.0.0.0 is not a loopback address")
    assert "mcp.allow_remote" in refused.stderr

    token = "t0ken-" + "x" * 20
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    os.chmod(token_file, 0o600)
    remote = tmp_path / "remote.toml"
    remote.write_text(daemon.config.read_text(encoding="utf-8").replace(
        "[server]\n", f'[server]\ntoken_file = "{token_file}"\n').replace("[mcp]\n", "[mcp]\nallow_remote = true\n"),
        encoding="utf-8")
    url, _ = http_server("--host", "0.0.0.0", config=remote)
    assert post(url, {}) == 401
    assert post(url, {"Authorization": "Bearer wrong-token-wrong-token"}) == 401
    assert post(url, {"Authorization": f"Bearer {token}", "Origin": "http://evil.example"}) == 403
    assert post(url, {"Authorization": f"Bearer {token}"}) == 200

    async def body(client: Client) -> CallToolResult:
        return await client.call_tool("status", {})

    async def go() -> CallToolResult:
        with anyio.fail_after(60):
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    return await body(client)

    assert ok(anyio.run(go))["serving"] is True


def test_ragd_mcp_loads_no_ml_stack() -> None:
    """`ragd mcp` starts fast: neither the CLI module nor the server pulls in models, numpy or the daemon."""
    code = ("import sys, ragd.cli, ragd_mcp; ragd_mcp.build_server(ragd_mcp.Settings(address='unix:///x')); "
            "print([m for m in ('torch', 'FlagEmbedding', 'transformers', 'numpy', 'faiss', 'openvino', "
            "'ragd.models', 'ragd.server', 'ragd.engine') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_every_search_carries_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A search that names no deadline gets mcp.deadline_ms; one that names it gets its own."""
    import ragd_mcp.tools

    seen: list[dict[str, Any]] = []

    class FakeClient:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def search(self, query: str, **kwargs: Any) -> ragd_client.SearchResult:
            seen.append(kwargs)
            return ragd_client.SearchResult(query=query, stage="retrieval", hits=[], timings={"total_ms": 1.0},
                                            candidates=0, reranked=0, models=ragd_client.Models("e", None))

    monkeypatch.setattr(ragd_mcp.tools, "Client", FakeClient)
    server = ragd_mcp.tools.build_server(ragd_mcp.tools.Settings(address="unix:///unused", deadline_ms=3000))
    results = calls(server, ("search", {"query": "a"}), ("search", {"query": "b", "deadline_ms": 700, "limit": 3}))
    assert [ok(r)["query"] for r in results] == ["a", "b"]
    assert [(s["deadline"], s["k"]) for s in seen] == [(3.0, 10), (0.7, 3)]
