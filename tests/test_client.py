"""The Python client against an in-process gRPC server with fake servicers: request and
response mapping for every method, error mapping, token metadata, streaming, and what
happens when nothing listens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ragd_client import (
    Client,
    DaemonUnavailable,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RagdClientError,
    ResourceExhausted,
    Unauthenticated,
    default_address,
    default_socket_path,
    normalize_address,
)
from ragd_client.v1 import ragd_pb2 as pb
from ragd_client.v1 import ragd_pb2_grpc as pb_grpc

HIT_KEYS = [
    "path", "start_line", "end_line", "heading", "snippet", "score", "retrieval_score", "rerank_score",
    "chunk_id", "page", "end_page", "origin",
]


def _abort_code(text: str) -> Any:
    """``abort:CODE`` in a request string makes the fake abort with that status code."""
    return getattr(grpc.StatusCode, text.split(":", 1)[1]) if text.startswith("abort:") else None


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        self.remaining: list[float | None] = []

    def record(self, request: Any, context: grpc.ServicerContext) -> None:
        self.requests.append(request)
        self.metadata.append({k: v for k, v in context.invocation_metadata()})
        self.remaining.append(context.time_remaining())

    def abort_if_asked(self, text: str, context: grpc.ServicerContext) -> None:
        code = _abort_code(text)
        if code is not None:
            context.abort(code, f"{code.name.lower()}: as asked")


def _hits(reranked: bool) -> list[pb.Hit]:
    first = pb.Hit(
        chunk_id=7, path="/docs/a.md", start_line=3, end_line=9, heading=["Intro", "Crash safety"],
        snippet="each batch is one transaction", score=0.9, retrieval_score=0.61,
    )
    second = pb.Hit(chunk_id=8, path="/docs/b.pdf", start_line=1, end_line=2, page=4, snippet="b", score=0.2,
                    retrieval_score=0.5)
    if reranked:
        first.rerank_score = 0.9
        second.rerank_score = -1.5
    return [first, second]


def _response(stage: Any) -> pb.SearchResponse:
    reranked = stage == pb.SearchResponse.RERANKED
    return pb.SearchResponse(
        stage=stage,
        hits=_hits(reranked),
        timings_ms={"total_ms": 12.5, "embed_ms": 3.0},
        candidates=50,
        reranked=2 if reranked else 0,
        rerank_window=96 if reranked else 0,
        models=pb.Models(embedder="bge-m3", reranker="bge-reranker-v2-m3" if reranked else ""),
        degraded=[] if reranked else ["reranker not loaded"],
    )


class FakeSearch(pb_grpc.SearchServicer, Recorder):
    def __init__(self) -> None:
        Recorder.__init__(self)

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        self.record(request, context)
        self.abort_if_asked(request.query, context)
        stage = pb.SearchResponse.RETRIEVAL if request.HasField("rerank") and not request.rerank else 0
        return _response(stage or pb.SearchResponse.RERANKED)

    def SearchStream(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Iterator[pb.SearchResponse]:
        self.record(request, context)
        yield _response(pb.SearchResponse.RETRIEVAL)
        self.abort_if_asked(request.query, context)
        yield _response(pb.SearchResponse.RERANKED)

    def GetChunk(self, request: pb.GetChunkRequest, context: grpc.ServicerContext) -> pb.Chunk:
        self.record(request, context)
        if request.chunk_id == 404:
            context.abort(grpc.StatusCode.NOT_FOUND, "chunk_id: no chunk 404")
        return pb.Chunk(chunk_id=request.chunk_id, path="/docs/a.md", start_line=3, end_line=5, heading=["H"],
                        text="line 3\nline 4\nline 5")

    def ReadFile(self, request: pb.ReadFileRequest, context: grpc.ServicerContext) -> pb.ReadFileResponse:
        self.record(request, context)
        self.abort_if_asked(request.path, context)
        start = request.from_line or 1
        lines = [f"line {i}" for i in range(start, min(start + (request.count or 100), 11))]
        return pb.ReadFileResponse(path=request.path, from_line=start, lines=lines, total_lines=10)


def _status(indexed: int) -> pb.StatusResponse:
    return pb.StatusResponse(
        serving=True, files_indexed=indexed, files_pending=10 - indexed, files_failed=1, chunks=indexed * 4,
        roots=[pb.RootStatus(
            path="/docs", files_indexed=indexed, files_pending=10 - indexed, files_failed=1,
            failures=[pb.FailedFile(path="/docs/x.bin", status="skipped", reason="binary file")],
            current_file="/docs/c.md" if indexed < 10 else "", watching=True,
        )],
        models=pb.Models(embedder="bge-m3", reranker="bge-reranker-v2-m3"),
        degraded=["colbert off"], current_file="/docs/c.md" if indexed < 10 else "",
        chunks_per_second=42.5, tokens_per_second=9000.0, eta_seconds=-1 if indexed == 0 else 2.5, version="0.1.0",
    )


class FakeIndex(pb_grpc.IndexServicer, Recorder):
    def __init__(self) -> None:
        Recorder.__init__(self)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        self.record(request, context)
        return _status(0)

    def WatchStatus(self, request: pb.WatchStatusRequest, context: grpc.ServicerContext) -> Iterator[pb.StatusResponse]:
        self.record(request, context)
        for indexed in (0, 5, 10):
            yield _status(indexed)

    def AddRoot(self, request: pb.AddRootRequest, context: grpc.ServicerContext) -> pb.Root:
        self.record(request, context)
        self.abort_if_asked(request.path, context)
        return pb.Root(path=request.path, configured=False)

    def RemoveRoot(self, request: pb.RemoveRootRequest, context: grpc.ServicerContext) -> pb.RemoveRootResponse:
        self.record(request, context)
        self.abort_if_asked(request.path, context)
        return pb.RemoveRootResponse(files_removed=12)

    def ListRoots(self, request: pb.ListRootsRequest, context: grpc.ServicerContext) -> pb.ListRootsResponse:
        self.record(request, context)
        return pb.ListRootsResponse(roots=[pb.Root(path="/docs", configured=True), pb.Root(path="/notes")])

    def Reindex(self, request: pb.ReindexRequest, context: grpc.ServicerContext) -> pb.ReindexResponse:
        self.record(request, context)
        return pb.ReindexResponse(queued=2 if not request.root else 1)


class Daemon:
    def __init__(self, address: str, search: FakeSearch, index: FakeIndex) -> None:
        self.address = address
        self.search = search
        self.index = index


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    folder = tempfile.mkdtemp(prefix="ragd-client-", dir="/tmp")  # short: Unix socket paths are limited
    address = f"unix://{folder}/ragd.sock"
    search, index = FakeSearch(), FakeIndex()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_SearchServicer_to_server(search, server)
    pb_grpc.add_IndexServicer_to_server(index, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("ragd.v1.Index", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    assert server.add_insecure_port(address)
    server.start()
    try:
        yield Daemon(address, search, index)
    finally:
        server.stop(None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def client(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.delenv("RAGD_TOKEN", raising=False)
    with Client(daemon.address, timeout=5) as c:
        yield c


# -- Search -------------------------------------------------------------------------------
def test_search_sends_every_option(client: Client, daemon: Daemon) -> None:
    client.search(
        "crash safety", k=5, candidates=40, rerank=True, path_prefix="/docs/", globs=["*.md", "notes/**"],
        extensions=("md", ".py"), modified_after=1_700_000_000.5, modified_before=1_800_000_000, root="/docs",
        deadline=0.25, mode="hybrid", weights={"dense": 1.0, "lexical": 0.5}, fusion="rrf",
    )
    request = daemon.search.requests[-1]
    assert request.query == "crash safety"
    assert (request.k, request.candidates) == (5, 40)
    assert request.HasField("rerank") and request.rerank is True
    f = request.filters
    assert list(f.path_prefixes) == ["/docs/"]
    assert list(f.globs) == ["*.md", "notes/**"]
    assert list(f.extensions) == ["md", ".py"]
    assert f.modified_after_unix_ms == 1_700_000_000_500
    assert f.modified_before_unix_ms == 1_800_000_000_000
    assert f.root == "/docs"
    assert request.deadline_ms == 250
    assert (request.mode, request.fusion) == ("hybrid", "rrf")
    assert dict(request.weights) == {"dense": 1.0, "lexical": 0.5}
    remaining = daemon.search.remaining[-1]
    # The client's timeout travels as the gRPC deadline (gRPC rounds the deadline it sends up
    # a little: 5.009 s was seen for a 5 s timeout).
    assert remaining is not None and remaining <= 5.1


def test_search_defaults_leave_fields_unset(client: Client, daemon: Daemon) -> None:
    client.search("q", globs="*.md")  # a lone string is one glob, not its characters
    request = daemon.search.requests[-1]
    assert (request.k, request.candidates, request.deadline_ms) == (0, 0, 0)
    assert not request.HasField("rerank")
    assert list(request.filters.globs) == ["*.md"]
    assert list(request.filters.path_prefixes) == [] and request.filters.root == ""
    assert (request.filters.modified_after_unix_ms, request.filters.modified_before_unix_ms) == (0, 0)
    assert (request.mode, request.fusion, dict(request.weights)) == ("", "", {})
    client.search("q", rerank=False)
    assert daemon.search.requests[-1].HasField("rerank") and daemon.search.requests[-1].rerank is False


def test_search_maps_the_response(client: Client) -> None:
    result = client.search("crash safety")
    assert result.query == "crash safety"
    assert result.stage == "reranked"
    assert (result.candidates, result.reranked, result.rerank_window) == (50, 2, 96)
    assert result.timings == {"embed_ms": 3.0, "total_ms": 12.5}
    assert result.models.embedder == "bge-m3" and result.models.reranker == "bge-reranker-v2-m3"
    assert result.degraded == []
    first, second = result.hits
    assert (first.chunk_id, first.path, first.start_line, first.end_line) == (7, "/docs/a.md", 3, 9)
    assert first.heading == ["Intro", "Crash safety"]
    assert (first.score, first.retrieval_score, first.rerank_score) == (0.9, 0.61, 0.9)
    assert first.page is None and second.page == 4
    assert second.rerank_score == -1.5
    with pytest.raises(FrozenInstanceError):
        first.score = 1.0  # type: ignore[misc]

    data = result.to_dict()
    json.dumps(data)
    assert list(data["hits"][0]) == HIT_KEYS
    assert data["hits"][0]["rerank_score"] == 0.9 and data["hits"][0]["page"] is None
    assert data["stage"] == "reranked" and data["models"] == {"embedder": "bge-m3", "reranker": "bge-reranker-v2-m3"}
    assert data["rerank_window"] == 96

    retrieval = client.search("crash safety", rerank=False)
    assert retrieval.stage == "retrieval"
    assert all(h.rerank_score is None for h in retrieval.hits)
    assert retrieval.models.reranker is None and retrieval.degraded == ["reranker not loaded"]
    assert retrieval.to_dict()["hits"][1]["rerank_score"] is None


def test_search_stream_yields_both_stages(client: Client, daemon: Daemon) -> None:
    results = list(client.search_stream("crash safety", k=3))
    assert [r.stage for r in results] == ["retrieval", "reranked"]
    assert results[0].hits[0].rerank_score is None and results[1].hits[0].rerank_score == 0.9
    assert daemon.search.requests[-1].k == 3

    stream = client.search_stream("crash safety")
    assert next(stream).stage == "retrieval"
    stream.close()  # stopping early cancels the call without an error


def test_search_stream_maps_errors_raised_mid_stream(client: Client) -> None:
    stream = client.search_stream("abort:RESOURCE_EXHAUSTED")
    assert next(stream).stage == "retrieval"
    with pytest.raises(ResourceExhausted) as info:
        next(stream)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bad_arguments_are_refused_before_the_call(client: Client, daemon: Daemon) -> None:
    before = len(daemon.search.requests)
    for kwargs, field in (
        ({"k": -1}, "k"), ({"candidates": -5}, "candidates"), ({"deadline": 0}, "deadline"),
        ({"modified_after": float("nan")}, "modified_after"), ({"extensions": [1]}, "extensions"),
    ):
        with pytest.raises(InvalidArgument, match=rf"^{field}:"):
            client.search("q", **kwargs)
    with pytest.raises(InvalidArgument, match=r"^k:"):
        client.search_stream("q", k=-1)  # checked at once, not on the first next()
    with pytest.raises(InvalidArgument, match=r"^count:"):
        client.read_file("/docs/a.md", count=-1)
    assert len(daemon.search.requests) == before


def test_get_chunk(client: Client, daemon: Daemon) -> None:
    chunk = client.get_chunk(7)
    assert daemon.search.requests[-1].chunk_id == 7
    assert (chunk.chunk_id, chunk.path, chunk.start_line, chunk.end_line) == (7, "/docs/a.md", 3, 5)
    assert chunk.heading == ["H"] and chunk.text.startswith("line 3") and chunk.page is None
    json.dumps(chunk.to_dict())
    with pytest.raises(NotFound, match="no chunk 404") as info:
        client.get_chunk(404)
    assert info.value.details == "chunk_id: no chunk 404"


def test_read_file(client: Client, daemon: Daemon) -> None:
    lines = client.read_file("/docs/a.md", from_line=4, count=3)
    request = daemon.search.requests[-1]
    assert (request.path, request.from_line, request.count) == ("/docs/a.md", 4, 3)
    assert lines.lines == ["line 4", "line 5", "line 6"]
    assert (lines.from_line, lines.end_line, lines.total_lines) == (4, 6, 10)
    assert lines.to_dict()["end_line"] == 6
    everything = client.read_file("/docs/a.md")
    assert daemon.search.requests[-1].count == 0 and len(everything.lines) == 10
    with pytest.raises(PermissionDenied):
        client.read_file("abort:PERMISSION_DENIED")


# -- Index --------------------------------------------------------------------------------
def test_status(client: Client) -> None:
    status = client.status()
    assert status.serving and status.version == "0.1.0"
    assert (status.files_indexed, status.files_pending, status.files_failed, status.chunks) == (0, 10, 1, 0)
    assert status.eta is None  # -1 on the wire
    assert status.throughput == 42.5 and status.tokens_per_second == 9000.0
    assert status.current_file == "/docs/c.md" and status.degraded == ["colbert off"]
    assert status.models.reranker == "bge-reranker-v2-m3"
    (root,) = status.roots
    assert root.path == "/docs" and root.watching and root.current_file == "/docs/c.md"
    assert root.failures[0].status == "skipped" and root.failures[0].reason == "binary file"
    data = status.to_dict()
    json.dumps(data)
    assert data["roots"][0]["failures"][0] == {"path": "/docs/x.bin", "status": "skipped", "reason": "binary file"}
    assert data["eta"] is None


def test_watch_status_streams(client: Client, daemon: Daemon) -> None:
    statuses = list(client.watch_status(interval=0.25))
    assert daemon.index.requests[-1].interval_ms == 250
    remaining = daemon.index.remaining[-1]
    assert remaining is None or remaining > 1e6  # a watch is never timed out
    assert [s.files_indexed for s in statuses] == [0, 5, 10]
    assert statuses[1].eta == 2.5
    assert statuses[-1].current_file is None and statuses[-1].roots[0].current_file is None


def test_roots(client: Client, daemon: Daemon) -> None:
    root = client.add_root("/notes")
    assert daemon.index.requests[-1].path == "/notes"
    assert root.path == "/notes" and root.configured is False
    assert client.remove_root("/notes") == 12
    assert daemon.index.requests[-1].path == "/notes"
    roots = client.roots()
    assert [(r.path, r.configured) for r in roots] == [("/docs", True), ("/notes", False)]
    assert roots[0].to_dict() == {"path": "/docs", "configured": True}
    with pytest.raises(FailedPrecondition):
        client.remove_root("abort:FAILED_PRECONDITION")


def test_reindex(client: Client, daemon: Daemon) -> None:
    assert client.reindex() == 2
    assert daemon.index.requests[-1].root == ""
    assert client.reindex("/docs") == 1
    assert daemon.index.requests[-1].root == "/docs"


def test_health(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("ragd.v1.Index") == "NOT_SERVING"
    with pytest.raises(NotFound):
        client.health("no.such.Service")


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("INVALID_ARGUMENT", InvalidArgument),
        ("UNAUTHENTICATED", Unauthenticated),
        ("PERMISSION_DENIED", PermissionDenied),
        ("NOT_FOUND", NotFound),
        ("RESOURCE_EXHAUSTED", ResourceExhausted),
        ("DEADLINE_EXCEEDED", DeadlineExceeded),
        ("FAILED_PRECONDITION", FailedPrecondition),
        ("UNAVAILABLE", DaemonUnavailable),
        ("INTERNAL", RagdClientError),
        ("UNIMPLEMENTED", RagdClientError),
    ],
)
def test_status_codes_map_to_exceptions(client: Client, code: str, cls: type[RagdClientError]) -> None:
    with pytest.raises(RagdClientError) as info:
        client.search(f"abort:{code}")
    assert type(info.value) is cls
    assert info.value.code == getattr(grpc.StatusCode, code)
    assert info.value.code_name == code
    assert info.value.details == f"{code.lower()}: as asked"
    assert info.value.__cause__ is None  # no grpc traceback chained onto the user's error


def test_messages_name_the_field_and_the_fix(client: Client) -> None:
    with pytest.raises(InvalidArgument) as bad:
        client.search("abort:INVALID_ARGUMENT")
    assert str(bad.value) == "invalid_argument: as asked"
    with pytest.raises(Unauthenticated, match=r"RAGD_TOKEN"):
        client.search("abort:UNAUTHENTICATED")
    with pytest.raises(RagdClientError, match=r"^ragd call failed \(INTERNAL\): "):
        client.search("abort:INTERNAL")


def test_bearer_token_is_sent(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGD_TOKEN", raising=False)
    with Client(daemon.address, token="s3cret") as c:
        c.status()
        assert daemon.index.metadata[-1]["authorization"] == "Bearer s3cret"
        list(c.watch_status())
        assert daemon.index.metadata[-1]["authorization"] == "Bearer s3cret"
        c.search("q")
        assert daemon.search.metadata[-1]["authorization"] == "Bearer s3cret"

    monkeypatch.setenv("RAGD_TOKEN", "from-env")
    with Client(daemon.address) as c:
        c.roots()
        assert daemon.index.metadata[-1]["authorization"] == "Bearer from-env"
    with Client(daemon.address, token="") as c:  # an explicit empty token sends none
        c.roots()
        assert "authorization" not in daemon.index.metadata[-1]


def test_daemon_unavailable_when_nothing_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGD_TOKEN", raising=False)
    socket = tmp_path / "missing.sock"
    start = time.monotonic()
    with Client(str(socket), timeout=3) as c, pytest.raises(DaemonUnavailable) as info:
        c.status()
    assert time.monotonic() - start < 2.5  # fails fast: no waiting for the socket to appear
    message = str(info.value)
    assert f"unix://{socket}" in message and "ragd serve" in message
    assert info.value.code == grpc.StatusCode.UNAVAILABLE

    with Client("127.0.0.1:1", timeout=3) as c, pytest.raises(DaemonUnavailable, match=r"127\.0\.0\.1:1"):
        list(c.search_stream("q"))


# -- addresses ----------------------------------------------------------------------------
def test_default_socket_path() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/u"}
    assert default_socket_path(env) == Path("/run/user/1000/ragd/ragd.sock")
    assert default_socket_path({"HOME": "/home/u"}) == Path("/home/u/.local/share/ragd/run/ragd.sock")
    assert default_socket_path({"HOME": "/home/u", "XDG_DATA_HOME": "/data"}) == Path("/data/ragd/run/ragd.sock")
    assert default_socket_path({"HOME": "/home/u", "XDG_RUNTIME_DIR": "relative"}) == Path(
        "/home/u/.local/share/ragd/run/ragd.sock"
    )
    assert default_socket_path({"HOME": "/home/u"}, data_dir=Path("/srv/ragd")) == Path("/srv/ragd/run/ragd.sock")


def test_default_address() -> None:
    assert default_address({"XDG_RUNTIME_DIR": "/run/user/7"}) == "unix:///run/user/7/ragd/ragd.sock"
    assert default_address({"RAGD_ADDRESS": "localhost:7777", "XDG_RUNTIME_DIR": "/r"}) == "localhost:7777"
    assert default_address({"RAGD_ADDRESS": "/tmp/r.sock"}) == "unix:///tmp/r.sock"


def test_normalize_address() -> None:
    assert normalize_address("unix:///run/ragd.sock") == "unix:///run/ragd.sock"
    assert normalize_address("unix:/run/ragd.sock") == "unix:/run/ragd.sock"
    assert normalize_address("/run/ragd.sock") == "unix:///run/ragd.sock"
    assert normalize_address("~/ragd.sock", {"HOME": "/home/u"}) == "unix:///home/u/ragd.sock"
    assert normalize_address("ragd.sock") == f"unix://{os.path.abspath('ragd.sock')}"
    assert normalize_address("127.0.0.1:7777") == "127.0.0.1:7777"
    assert normalize_address("tcp://localhost:7777") == "localhost:7777"
    assert normalize_address("[::1]:7777") == "[::1]:7777"
    with pytest.raises(ValueError, match="address is empty"):
        normalize_address("  ")
    assert Client("/run/x.sock").address == "unix:///run/x.sock"


def test_import_loads_no_heavy_modules() -> None:
    code = (
        "import sys, ragd_client\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'numpy', 'FlagEmbedding', 'transformers', 'faiss', 'ragd'))\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert proc.stdout.strip() == ""
