"""The service layer beneath gRPC, the CLI and MCP: the error table, request checks, path
confinement, the roots policy and stream limits, unit-tested on the service and end to end
through gRPC (sync and asyncio clients)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_daemon import daemon_factory, idle, wait_for  # noqa: F401  (daemon_factory is a fixture)

import ragd_client
from conftest import write_tree
from ragd.errors import (
    ERROR_TABLE,
    ConfigError,
    FailedPreconditionError,
    IndexEmptyError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    RagdError,
    UsageError,
    outcome_for,
    outcome_for_code,
)
from ragd.filters import Filters
from ragd.requests import MAX_QUERY_CHARS, SHOWN_CHARS, SearchRequest, check_path, check_search
from ragd.search import SearchCancelled
from ragd_client.aio import AsyncClient

pytestmark = pytest.mark.models("fake")


def test_the_error_table_gives_every_transport_its_outcome() -> None:
    cases = [
        (UsageError("x"), "INVALID_ARGUMENT", 2),
        (ConfigError("x"), "INVALID_ARGUMENT", 2),
        (NotFoundError("x"), "NOT_FOUND", 1),
        (PermissionDeniedError("x"), "PERMISSION_DENIED", 1),
        (IndexEmptyError("x"), "FAILED_PRECONDITION", 1),
        (SearchCancelled("x"), "CANCELLED", 1),
        (ModelNotFoundError("x"), "UNAVAILABLE", 1),
        (RagdError("x"), "INTERNAL", 1),
        (KeyError("a bug"), "INTERNAL", 1),
    ]
    for exc, code, status in cases:
        outcome = outcome_for(exc)
        assert (outcome.grpc_code, outcome.exit_status) == (code, status), exc
        assert grpc.StatusCode[outcome.grpc_code]  # a real gRPC code name
        assert outcome.mcp_label
    # every class in the table maps back from its code, as the CLI and MCP see it from a client
    for _, outcome in ERROR_TABLE:
        assert outcome_for_code(outcome.grpc_code).exit_status == outcome.exit_status
    assert outcome_for_code("UNAVAILABLE").mcp_label == "daemon unavailable"
    assert outcome_for_code("NO_SUCH_CODE").grpc_code == "INTERNAL"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SearchRequest(query="   "), "query"),
        (SearchRequest(query="x" * (MAX_QUERY_CHARS + 1)), "query"),
        (SearchRequest(query="bread \udcff"), "query"),  # a lone surrogate: undecodable bytes on a command line
        (SearchRequest(query="x", k=5000), "k"),
        (SearchRequest(query="x", candidates=1001), "candidates"),
        (SearchRequest(query="x", mode="fuzzy"), "mode"),
        (SearchRequest(query="x", fusion="max"), "fusion"),
        (SearchRequest(query="x", weights={"dense": -1}), "weights"),
        (SearchRequest(query="x", weights={"bm42": 1}), "weights"),
        (SearchRequest(query="x", deadline_ms=10**9), "deadline_ms"),
        (SearchRequest(query="x", filters=Filters(globs=("\udcff",))), "filters.globs"),
        (SearchRequest(query="x", filters=Filters(modified_after=-1)), "filters.modified_after"),
    ],
)
def test_search_requests_are_checked_field_by_field(request_: SearchRequest, field: str) -> None:
    with pytest.raises(UsageError, match=rf"^{field}[: ]"):
        check_search(request_)


def test_paths_are_checked_before_use() -> None:
    with pytest.raises(UsageError, match="NUL"):
        check_path("path", "/tmp/a\x00b")
    with pytest.raises(UsageError, match="absolute"):
        check_path("path", "notes/a.md")
    with pytest.raises(UsageError, match="at most"):
        check_path("path", "/" + "a" * 5000)
    assert check_path("path", "/a/b/../c") == "/a/c"
    assert check_path("path", "notes", relative_ok=True) == "notes"


def test_reading_files_is_confined_to_the_roots_and_to_what_was_indexed(
    daemon_factory: Callable[..., Any], tmp_path: Path  # noqa: F811
) -> None:
    outside = tmp_path / "outside"
    write_tree(outside, {"secret.txt": "the launch codes\n"})
    daemon, client, notes = daemon_factory(indexing={"max_file_bytes": 4096})
    (notes / "escape.txt").symlink_to(outside / "secret.txt")
    (notes / "big.txt").write_text("words about bread\n" * 1000, encoding="utf-8")  # 18 kB, over the limit
    (notes / "blob.bin").write_bytes(bytes(range(256)) * 8)
    client.reindex()
    wait_for(lambda: idle(client) and daemon.service.status().files_failed >= 2, what="the new files")
    service = daemon.service

    lines = service.read_file(str(notes / "alpha.md"), 1, 1)
    assert lines.lines == ["# Alpha"] and lines.total_lines == 3
    # through the .. of a path that starts inside a root, through a symlink, and plainly outside
    for path in (str(notes / ".." / "outside" / "secret.txt"), str(notes / "escape.txt"), "/etc/passwd"):
        with pytest.raises(PermissionDeniedError):
            service.read_file(path)
        with pytest.raises(ragd_client.PermissionDenied):
            client.read_file(path)
    with pytest.raises(FailedPreconditionError, match="skipped"):
        service.read_file(str(notes / "big.txt"))
    with pytest.raises(ragd_client.FailedPrecondition):
        client.read_file(str(notes / "blob.bin"))  # a skipped binary file: never INTERNAL
    (notes / "alpha.md").write_text("x" * 10_000, encoding="utf-8")  # grew over the limit since it was indexed
    with pytest.raises(ragd_client.FailedPrecondition):  # over the limit, or skipped once the watcher saw it
        client.read_file(str(notes / "alpha.md"))
    with pytest.raises(ragd_client.InvalidArgument, match="NUL"):
        client.read_file(str(notes / "a\x00b"))
    with pytest.raises(ragd_client.NotFound):
        client.read_file(str(notes / "missing.md"))
    with pytest.raises(ragd_client.PermissionDenied) as denied:
        client.read_file("/" + "x" * 3000)
    assert len(denied.value.details) < SHOWN_CHARS + 100  # the path is not echoed whole
    with pytest.raises(UsageError, match="chunk_id"):
        service.get_chunk(0)
    with pytest.raises(NotFoundError, match="no chunk"):
        service.get_chunk(10**9)


def test_roots_policy(daemon_factory: Callable[..., Any], tmp_path: Path) -> None:  # noqa: F811
    home = tmp_path / "home"
    inside_home = home / "papers"
    elsewhere = tmp_path / "elsewhere"
    for folder in (inside_home, elsewhere):
        write_tree(folder, {"p.txt": "Comets have tails of gas and dust.\n"})
    daemon, client, _ = daemon_factory(server={"tcp": "127.0.0.1:0", "tcp_root_folders": [str(home)]})
    # never the data folder (nor inside it), never /
    for path in (str(daemon.config.data_dir), "/"):
        with pytest.raises(ragd_client.PermissionDenied):
            client.add_root(path)
    assert str(daemon.config.data_dir) not in daemon.root_paths()
    token = (tmp_path / "data" / "token").read_text().strip()
    remote = ragd_client.Client(address=f"127.0.0.1:{daemon.tcp_port}", token=token, timeout=10)
    with pytest.raises(ragd_client.PermissionDenied, match="tcp_manage_roots"):
        remote.add_root(str(inside_home))
    assert remote.status().version  # the rest of the API answers over TCP
    assert str(inside_home) not in daemon.root_paths()
    # with tcp_manage_roots, only inside tcp_root_folders
    daemon.config = daemon.service.config = _with_server(daemon.config, tcp_manage_roots=True)
    with pytest.raises(ragd_client.PermissionDenied, match="tcp_root_folders"):
        remote.add_root(str(elsewhere))
    assert remote.add_root(str(inside_home)).path == str(inside_home)
    assert client.add_root(str(elsewhere)).path == str(elsewhere)  # the Unix socket is the daemon's own user


def _with_server(config: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(config, server=replace(config.server, **changes))


def test_open_streams_never_starve_calls(daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    _, client, _ = daemon_factory(server={"max_streams": 4, "max_concurrent_rpcs": 8})
    wait_for(lambda: idle(client), what="initial index")
    streams = []
    refused = 0
    for _ in range(34):
        stream = client.watch_status(interval=1.0)
        streams.append(stream)
        try:
            next(stream)
        except ragd_client.ResourceExhausted:
            refused += 1
    try:
        assert refused == 30
        for _ in range(10):  # more calls than max_concurrent_rpcs, one after the other
            assert client.status().serving
            assert client.search("glaciers", k=1, rerank=False).hits
    finally:
        for stream in streams:
            stream.close()
    # closed streams give their slots back

    def one_stream() -> bool:
        stream = client.watch_status()
        try:
            return next(stream).serving
        except ragd_client.ResourceExhausted:
            return False
        finally:
            stream.close()

    wait_for(one_stream, what="a stream slot")


def test_async_client_mirrors_the_blocking_one(daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    daemon, client, notes = daemon_factory()
    wait_for(lambda: idle(client), what="initial index")
    expected = client.search("glaciers", k=2, rerank=False)

    async def run() -> None:
        async with AsyncClient(address=f"unix://{daemon.socket}", timeout=30) as ragd:
            result = await ragd.search("glaciers", k=2, rerank=False)
            assert [h.chunk_id for h in result.hits] == [h.chunk_id for h in expected.hits]
            both = await asyncio.gather(ragd.status(), ragd.read_file(str(notes / "alpha.md"), 1, 1))
            assert both[0].files_indexed == client.status().files_indexed
            assert both[1].lines == ["# Alpha"]
            stages = [r.stage async for r in ragd.search_stream("glaciers", k=2)]
            assert stages[-1] == "reranked"
            async for status in ragd.watch_status():
                assert status.serving
                break
            assert (await ragd.get_chunk(expected.hits[0].chunk_id)).text
            assert [r.path for r in await ragd.roots()] == [str(notes)]
            assert await ragd.health() == "SERVING"
            with pytest.raises(ragd_client.InvalidArgument):
                await ragd.search("   ")
            with pytest.raises(ragd_client.PermissionDenied):
                await ragd.read_file("/etc/passwd")

    asyncio.run(run())


def test_many_threads_share_one_service(daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    daemon, client, _ = daemon_factory()
    wait_for(lambda: idle(client), what="initial index")
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                assert daemon.service.status().files_indexed == 2
                query, opts = daemon.service.prepare_search(SearchRequest(query="bread", k=1, rerank=False))
                assert daemon.service.search(query, opts).hits
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_status_tells_what_the_writer_and_the_roots_cannot_do(
    daemon_factory: Callable[..., Any], tmp_path: Path  # noqa: F811
) -> None:
    import shutil

    daemon, client, notes = daemon_factory()
    wait_for(lambda: idle(client), what="initial index")
    st = client.status()
    assert st.writer_error is None and st.roots[0].suspended is None
    chunk_id = client.search("glaciers", k=1, mode="lexical", rerank=False).hits[0].chunk_id
    daemon._writer_trouble(OSError(28, "No space left on device"), 5.0)
    assert "No space left on device" in (client.status().writer_error or "")
    shutil.rmtree(notes)
    root = wait_for(lambda: client.status().roots[0].suspended and client.status().roots[0], what="suspension")
    assert root.path == str(notes) and root.files_indexed == 2  # kept, not emptied
    assert root.to_dict()["suspended"]
    with pytest.raises(ragd_client.NotFound, match="suspended"):
        client.get_chunk(chunk_id)
