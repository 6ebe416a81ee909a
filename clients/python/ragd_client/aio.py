"""The asyncio Python client for the ragd daemon: the same methods and typed results as
:class:`ragd_client.Client`, awaited.

    from ragd_client.aio import AsyncClient

    async with AsyncClient() as ragd:
        result = await ragd.search("how are crashes handled", k=5, deadline=2.0)
        async for status in ragd.watch_status():
            ...

Every failed call raises a :class:`ragd_client.errors.RagdClientError` subclass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragd_client.address import default_address, normalize_address
from ragd_client.client import (
    CHANNEL_OPTIONS,
    auth_metadata,
    checked_timeout,
    read_request,
    search_request,
    search_timeout,
    watch_request,
)
from ragd_client.errors import from_rpc_error
from ragd_client.types import Chunk, FileLines, Root, SearchResult, Status
from ragd_client.v1 import ragd_pb2 as pb
from ragd_client.v1 import ragd_pb2_grpc as pb_grpc


class AsyncClient:
    """A connection to the ragd daemon for asyncio code; arguments as :class:`ragd_client.Client`.

    Create it inside the event loop that uses it (gRPC's asyncio channels belong to one loop).
    """

    def __init__(self, address: str | None = None, token: str | None = None, timeout: float | None = 30.0) -> None:
        self.address = default_address() if address is None else normalize_address(address)
        self._metadata = auth_metadata(token)
        self.timeout = checked_timeout(timeout)
        self._channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._search = pb_grpc.SearchStub(self._channel)
        self._index = pb_grpc.IndexStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- plumbing -------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"AsyncClient(address={self.address!r}, timeout={self.timeout!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata or None
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.address) from None

    async def _stream(self, method: Any, request: Any, timeout: float | None) -> AsyncIterator[Any]:
        call = method(request, timeout=timeout, metadata=self._metadata or None)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.address) from None
        finally:
            call.cancel()  # a no-op once the stream has ended; stops it when the caller stops early

    # -- Search service -------------------------------------------------------------------
    async def search(
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
        """Search the index; see :meth:`ragd_client.Client.search`."""
        request = search_request(
            query, k, candidates, rerank, path_prefix, globs, extensions, modified_after, modified_before, root,
            deadline, mode, weights, fusion, (like_chunk_id, like_path, like_line, like_same_file),
        )
        response = await self._call(self._search.Search, request, search_timeout(self.timeout, deadline))
        return SearchResult.from_proto(response, query)

    async def search_stream(
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
    ) -> AsyncIterator[SearchResult]:
        """The retrieval-stage result, then the reranked one; see :meth:`ragd_client.Client.search_stream`."""
        request = search_request(
            query, k, candidates, rerank, path_prefix, globs, extensions, modified_after, modified_before, root,
            deadline, mode, weights, fusion,
        )
        async for response in self._stream(self._search.SearchStream, request,
                                           search_timeout(self.timeout, deadline)):
            yield SearchResult.from_proto(response, query)

    async def get_chunk(self, chunk_id: int) -> Chunk:
        """One chunk, with its full text."""
        return Chunk.from_proto(await self._call(self._search.GetChunk, pb.GetChunkRequest(chunk_id=chunk_id)))

    async def read_file(self, path: str, from_line: int = 1, count: int = 0) -> FileLines:
        """Lines of an indexed file inside a root; see :meth:`ragd_client.Client.read_file`."""
        return FileLines.from_proto(await self._call(self._search.ReadFile, read_request(path, from_line, count)))

    # -- Index service --------------------------------------------------------------------
    async def status(self) -> Status:
        """Index size, indexing progress, models and degradations."""
        return Status.from_proto(await self._call(self._index.Status, pb.StatusRequest()))

    async def watch_status(self, interval: float = 0.5) -> AsyncIterator[Status]:
        """The status now, then whenever progress changes (at most every ``interval`` seconds)."""
        async for response in self._stream(self._index.WatchStatus, watch_request(interval), None):
            yield Status.from_proto(response)

    async def add_root(self, path: str) -> Root:
        """Register a folder to index; returns once registered (indexing runs in the background)."""
        return Root.from_proto(await self._call(self._index.AddRoot, pb.AddRootRequest(path=path)))

    async def remove_root(self, path: str) -> int:
        """Unregister a root added over the API; returns how many files were dropped from the index."""
        return int((await self._call(self._index.RemoveRoot, pb.RemoveRootRequest(path=path))).files_removed)

    async def roots(self) -> list[Root]:
        """The indexed folders."""
        return [Root.from_proto(r) for r in (await self._call(self._index.ListRoots, pb.ListRootsRequest())).roots]

    async def reindex(self, root: str | None = None) -> int:
        """Queue a reconcile scan of ``root`` (None: every root); returns how many were queued."""
        return int((await self._call(self._index.Reindex, pb.ReindexRequest(root=root or ""))).queued)

    # -- grpc.health.v1 -------------------------------------------------------------------
    async def health(self, service: str = "") -> str:
        """The standard gRPC health status of ``service`` ("" = the whole daemon)."""
        response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
