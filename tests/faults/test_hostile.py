"""Hostile requests through gRPC: each gets the right status code, never a file outside a
root, never a crash, and unary calls are still answered afterwards (MCP's own hostile inputs
are in tests/test_mcp.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import test_daemon
from test_daemon import idle, wait_for

import ragd_client
from conftest import write_tree
from ragd_client.v1 import ragd_pb2

pytestmark = pytest.mark.models("fake")

daemon_factory = test_daemon.daemon_factory  # the fixture, shared


def _raw(address: str, method: str, payload: bytes, token: str | None = None) -> grpc.StatusCode:
    """Send ``payload`` as the request bytes of ``method``; the status code that came back."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        try:
            call(payload, timeout=30, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_hostile_requests_get_their_codes_and_nothing_leaks(
    daemon_factory: Callable[..., Any], tmp_path: Path
) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    write_tree(secret.parent, {"secret.txt": "the launch codes\n"})
    daemon, client, notes = daemon_factory(server={"tcp": "127.0.0.1:0", "max_streams": 2})
    (notes / "escape.md").symlink_to(secret)
    (notes / "escape-dir").symlink_to(secret.parent, target_is_directory=True)
    client.reindex()
    wait_for(lambda: idle(client), what="initial index")
    unix = f"unix://{daemon.socket}"
    tried = 0

    def expect(error: type[Exception], call: Callable[[], Any]) -> None:
        nonlocal tried
        tried += 1
        with pytest.raises(error) as info:
            call()
        assert "launch codes" not in str(info.value)

    for path in (f"{notes}/../outside/secret.txt", str(secret), str(notes / "escape.md"),
                 str(notes / "escape-dir" / "secret.txt"), "/etc/passwd", "/proc/self/environ"):
        expect(ragd_client.PermissionDenied, lambda p=path: client.read_file(p))
    for path in ("notes/alpha.md", f"{notes}/alpha\x00.md", "/" + "a" * 5000):
        expect(ragd_client.InvalidArgument, lambda p=path: client.read_file(p))
    expect(ragd_client.InvalidArgument, lambda: client.search("bread", k=1001))
    expect(ragd_client.InvalidArgument, lambda: client.search("bread", candidates=10**6))
    expect(ragd_client.InvalidArgument, lambda: client.search("x" * 70_000))
    expect(ragd_client.ResourceExhausted, lambda: client.search("x" * (10 * 1024 * 1024)))  # over the message limit
    expect(ragd_client.InvalidArgument, lambda: client.search("bread", extensions=["a/b"]))
    expect(ragd_client.InvalidArgument, lambda: client.search("bread", root="/etc"))
    expect(ragd_client.NotFound, lambda: client.get_chunk(2**62))
    expect(ragd_client.PermissionDenied, lambda: client.add_root("/"))
    expect(ragd_client.NotFound, lambda: client.remove_root("/etc"))
    # bytes that are not UTF-8 in a string field, a truncated message, and an unknown field
    for payload, code in ((b"\x0a\x02\xff\xfe", grpc.StatusCode.INVALID_ARGUMENT),
                          (b"\x0a\x7fabc", grpc.StatusCode.INVALID_ARGUMENT),
                          (ragd_pb2.ReadFileRequest(path="/etc/passwd").SerializeToString() + b"\xf8\x07\x01",
                           grpc.StatusCode.PERMISSION_DENIED)):
        tried += 1
        assert _raw(unix, "/ragd.v1.Search/ReadFile", payload) == code
    search = ragd_pb2.SearchRequest(query="bread", k=1).SerializeToString() + b"\xf8\x07\x01"  # field 127
    assert _raw(unix, "/ragd.v1.Search/Search", search) == grpc.StatusCode.OK  # unknown fields are ignored
    # many streams: refused beyond server.max_streams, and calls still answered
    streams = [client.watch_status(interval=5.0) for _ in range(20)]
    refused = 0
    for stream in streams:
        try:
            next(stream)
        except ragd_client.ResourceExhausted:
            refused += 1
    assert refused == 18
    assert client.search("sourdough", k=1, mode="lexical", rerank=False).hits
    for stream in streams:
        stream.close()
    # over TCP: no token, a wrong one, and a wrong one of the right length are all refused
    token = (tmp_path / "data" / "token").read_text().strip()
    address = f"127.0.0.1:{daemon.tcp_port}"
    for wrong in ("", "wrong-token-wrong-token", "x" * len(token), token[:-1] + ("A" if token[-1] != "A" else "B")):
        tried += 1
        assert _raw(address, "/ragd.v1.Index/Status", b"", token=wrong or None) == grpc.StatusCode.UNAUTHENTICATED
    assert _raw(address, "/ragd.v1.Index/Status", b"", token=token) == grpc.StatusCode.OK
    assert daemon.serving and client.status().files_indexed >= 2
    assert tried == 25  # the bad inputs above, each answered with its code
