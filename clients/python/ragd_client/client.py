"""The blocking Python client for the ragd daemon.

    from ragd_client import Client

    with Client() as ragd:                       # $RAGD_ADDRESS, else the default Unix socket
        for hit in ragd.search("how are crashes handled", k=5).hits:
            print(hit.path, hit.start_line, hit.score)

Every failed call raises a :class:`ragd_client.errors.RagdClientError` subclass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragd_client.address import default_address, normalize_address
from ragd_client.errors import InvalidArgument, from_rpc_error
from ragd_client.types import Chunk, FileLines, Root, SearchResult, Status
from ragd_client.v1 import ragd_pb2 as pb
from ragd_client.v1 import ragd_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest message the client sends or accepts."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Ping only while calls are open (a long WatchStatus stream), every 2 minutes: far enough
    # apart that a server with gRPC's default ping policy (5 minutes, 2 strikes) never objects.
    ("grpc.keepalive_time_ms", 120_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # The daemon is local: never route through $http_proxy / $https_proxy.
    ("grpc.enable_http_proxy", 0),
)

_R = TypeVar("_R")


def _non_negative(name: str, value: int) -> int:
    if value < 0:
        raise InvalidArgument(f"{name}: must be >= 0, got {value}")
    return int(value)


def _unix_ms(name: str, seconds: float | None) -> int:
    """A timestamp in seconds (as ``os.stat().st_mtime``) -> integer milliseconds; None -> 0."""
    if seconds is None:
        return 0
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgument(f"{name}: must be a positive Unix time in seconds, got {seconds!r}")
    return round(seconds * 1000)


def _strings(name: str, values: str | Iterable[str]) -> list[str]:
    items = [values] if isinstance(values, str) else list(values)
    for item in items:
        if not isinstance(item, str):
            raise InvalidArgument(f"{name}: expected strings, got {item!r}")
    return items


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The bearer-token metadata sent on every call (``token`` None: ``$RAGD_TOKEN``)."""
    if token is None:
        token = os.environ.get("RAGD_TOKEN", "")
    return (("authorization", f"Bearer {token.strip()}"),) if token.strip() else ()


def checked_timeout(timeout: float | None) -> float | None:
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout: must be > 0 seconds or None, got {timeout}")
    return timeout


def search_timeout(timeout: float | None, deadline: float | None) -> float | None:
    """The gRPC timeout of a search: the client's, stretched to cover the search deadline."""
    if timeout is None or deadline is None:
        return timeout
    return max(timeout, deadline + 1.0)


def watch_request(interval: float) -> pb.WatchStatusRequest:
    if not math.isfinite(interval) or interval < 0:
        raise InvalidArgument(f"interval: must be >= 0 seconds, got {interval!r}")
    return pb.WatchStatusRequest(interval_ms=round(interval * 1000))


def read_request(path: str, from_line: int, count: int) -> pb.ReadFileRequest:
    return pb.ReadFileRequest(
        path=path, from_line=_non_negative("from_line", from_line), count=_non_negative("count", count)
    )


def search_request(
    query: str,
    k: int,
    candidates: int,
    rerank: bool | None,
    path_prefix: str | Iterable[str] | None,
    globs: str | Iterable[str],
    extensions: str | Iterable[str],
    modified_after: float | None,
    modified_before: float | None,
    root: str | None,
    deadline: float | None,
    mode: str | None,
    weights: Mapping[str, float] | None,
    fusion: str | None,
    like: tuple[int, str | None, int, bool] = (0, None, 0, False),
) -> pb.SearchRequest:
    """The wire request of a search; arguments as :meth:`Client.search` takes them."""
    if deadline is not None and (not math.isfinite(deadline) or deadline <= 0):
        raise InvalidArgument(f"deadline: must be > 0 seconds, got {deadline!r}")
    filters = pb.Filters(
        path_prefixes=_strings("path_prefix", path_prefix) if path_prefix else [],
        globs=_strings("globs", globs),
        extensions=_strings("extensions", extensions),
        modified_after_unix_ms=_unix_ms("modified_after", modified_after),
        modified_before_unix_ms=_unix_ms("modified_before", modified_before),
        root=root or "",
    )
    request = pb.SearchRequest(
        query=query,
        k=_non_negative("k", k),
        candidates=_non_negative("candidates", candidates),
        filters=filters,
        deadline_ms=0 if deadline is None else max(1, round(deadline * 1000)),
        mode=mode or "",
        weights=dict(weights or {}),
        fusion=fusion or "",
        like_chunk_id=_non_negative("like_chunk_id", like[0]),
        like_path=like[1] or "",
        like_line=_non_negative("like_line", like[2]),
        like_same_file=like[3],
    )
    if rerank is not None:
        request.rerank = rerank
    return request


class Client:
    """A connection to the ragd daemon.

    ``address``: ``unix:///path``, ``unix:/path``, ``/path/to.sock`` or ``host:port`` (TCP);
    default ``$RAGD_ADDRESS``, else the default Unix socket (:func:`default_address`).
    ``token``: bearer token sent as ``authorization: Bearer <token>`` metadata on every call
    (needed for TCP listeners); default ``$RAGD_TOKEN``. ``timeout``: seconds per call (None:
    no limit); streams from :meth:`watch_status` are never timed out.

    The channel connects lazily, on the first call. A client is safe to share between threads.
    """

    def __init__(self, address: str | None = None, token: str | None = None, timeout: float | None = 30.0) -> None:
        self.address = default_address() if address is None else normalize_address(address)
        self._metadata = auth_metadata(token)
        self.timeout = checked_timeout(timeout)
        self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._search = pb_grpc.SearchStub(self._channel)
        self._index = pb_grpc.IndexStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- plumbing -------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Client(address={self.address!r}, timeout={self.timeout!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def _call(self, method: Callable[..., _R], request: Any, timeout: float | None = None) -> _R:
        try:
            return method(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata or None
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.address) from None

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Iterator[Any]:
        call = method(request, timeout=timeout, metadata=self._metadata or None)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.address) from None
        finally:
            call.cancel()  # a no-op once the stream has ended; stops it when the caller stops early

    # -- Search service -------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 0,
        candidates: int = 0,
        rerank: bool | None = None,
        path_prefix: str | Iterable[str] | None = None,
        globs: str | Iterable[str] = (),
        extensions: str | Iterable[str] = (),
        modified_after: float | None = None,
        modified_before: float | None = None,
        root: str | None = None,
        deadline: float | None = None,
        mode: str | None = None,
        weights: Mapping[str, float] | None = None,
        fusion: str | None = None,
        like_chunk_id: int = 0,
        like_path: str | None = None,
        like_line: int = 0,
        like_same_file: bool = False,
    ) -> SearchResult:
        """Search the index. ``k`` / ``candidates`` 0, ``rerank`` / ``mode`` / ``fusion`` None
        and missing ``weights`` take the daemon's defaults. Filters: ``path_prefix`` (absolute),
        ``globs`` (gitignore-style, relative to the root), ``extensions`` ("md" or ".md"),
        ``modified_after`` / ``modified_before`` (Unix seconds), ``root``. ``deadline``: the
        search's time budget in seconds (the daemon may skip reranking to meet it).

        "More like this": pass ``query=""`` and ``like_chunk_id`` (an indexed chunk: its stored
        vectors and terms, nothing embedded again) or ``like_path`` (a file inside a root: the
        chunk at ``like_line``, or with ``like_line`` 0 the file's text); the chunk and, unless
        ``like_same_file``, the rest of its file are left out of the hits."""
        request = search_request(
            query, k, candidates, rerank, path_prefix, globs, extensions, modified_after, modified_before, root,
            deadline, mode, weights, fusion, (like_chunk_id, like_path, like_line, like_same_file),
        )
        response = self._call(self._search.Search, request, search_timeout(self.timeout, deadline))
        return SearchResult.from_proto(response, query)

    def search_stream(
        self,
        query: str,
        k: int = 0,
        candidates: int = 0,
        rerank: bool | None = None,
        path_prefix: str | Iterable[str] | None = None,
        globs: str | Iterable[str] = (),
        extensions: str | Iterable[str] = (),
        modified_after: float | None = None,
        modified_before: float | None = None,
        root: str | None = None,
        deadline: float | None = None,
        mode: str | None = None,
        weights: Mapping[str, float] | None = None,
        fusion: str | None = None,
    ) -> Iterator[SearchResult]:
        """Like :meth:`search`, but yields the retrieval-stage result (``stage == "retrieval"``)
        as soon as it is ready, then the reranked one (``stage == "reranked"``) when reranking
        runs. Arguments are checked at once; the call starts on the first ``next()``, and
        stopping the iteration early (or closing the iterator) cancels it."""
        request = search_request(
            query, k, candidates, rerank, path_prefix, globs, extensions, modified_after, modified_before, root,
            deadline, mode, weights, fusion,
        )
        stream = self._stream(self._search.SearchStream, request, search_timeout(self.timeout, deadline))
        return (SearchResult.from_proto(response, query) for response in stream)

    def get_chunk(self, chunk_id: int) -> Chunk:
        """One chunk, with its full text."""
        return Chunk.from_proto(self._call(self._search.GetChunk, pb.GetChunkRequest(chunk_id=chunk_id)))

    def read_file(self, path: str, from_line: int = 1, count: int = 0) -> FileLines:
        """Lines ``from_line`` .. ``from_line + count - 1`` (1-based) of an indexed file inside a
        root; ``count`` 0 reads to the end (bounded by the daemon's limit)."""
        request = read_request(path, from_line, count)
        return FileLines.from_proto(self._call(self._search.ReadFile, request))

    # -- Index service --------------------------------------------------------------------
    def status(self) -> Status:
        """Index size, indexing progress, models and degradations."""
        return Status.from_proto(self._call(self._index.Status, pb.StatusRequest()))

    def watch_status(self, interval: float = 0.5) -> Iterator[Status]:
        """The status now, then whenever progress changes (at most every ``interval`` seconds),
        until the caller stops iterating or the daemon ends the stream."""
        request = watch_request(interval)
        return (Status.from_proto(response) for response in self._stream(self._index.WatchStatus, request, None))

    def add_root(self, path: str) -> Root:
        """Register a folder to index; returns once registered (indexing runs in the background)."""
        return Root.from_proto(self._call(self._index.AddRoot, pb.AddRootRequest(path=path)))

    def remove_root(self, path: str) -> int:
        """Unregister a root added over the API; returns how many files were dropped from the index."""
        return int(self._call(self._index.RemoveRoot, pb.RemoveRootRequest(path=path)).files_removed)

    def roots(self) -> list[Root]:
        """The indexed folders."""
        return [Root.from_proto(r) for r in self._call(self._index.ListRoots, pb.ListRootsRequest()).roots]

    def reindex(self, root: str | None = None) -> int:
        """Queue a reconcile scan of ``root`` (None: every root); returns how many were queued."""
        return int(self._call(self._index.Reindex, pb.ReindexRequest(root=root or "")).queued)

    # -- grpc.health.v1 -------------------------------------------------------------------
    def health(self, service: str = "") -> str:
        """The standard gRPC health status of ``service`` ("" = the whole daemon): "SERVING",
        "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN"."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
