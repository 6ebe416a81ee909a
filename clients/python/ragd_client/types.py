"""Typed, immutable results of client calls, built from the wire messages.

Every class has ``to_dict()`` giving a JSON-ready dict (plain lists, dicts, str, int, float,
bool and None). Proto "unset" conventions become ``None``: an empty reranker name, a missing
rerank score, page 0, an empty current file, an unknown ETA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ragd_client.v1 import ragd_pb2 as pb

Stage = Literal["retrieval", "reranked"]


@dataclass(frozen=True)
class Models:
    """The models that served a request (or that the daemon has loaded)."""

    embedder: str
    reranker: str | None  # None when reranking is off

    @classmethod
    def from_proto(cls, msg: pb.Models) -> Models:
        return cls(embedder=msg.embedder, reranker=msg.reranker or None)

    def to_dict(self) -> dict[str, Any]:
        return {"embedder": self.embedder, "reranker": self.reranker}


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk's location, a snippet and its scores."""

    chunk_id: int
    path: str
    start_line: int
    end_line: int
    heading: list[str]
    snippet: str
    score: float
    retrieval_score: float
    rerank_score: float | None  # None when the hit was not reranked
    page: int | None = None  # first page (1-based); None for formats without pages
    end_page: int | None = None  # last page
    origin: str = ""  # another daemon's chunk (chunk_id < 0) in a shared collection: that daemon's origin

    @classmethod
    def from_proto(cls, msg: pb.Hit) -> Hit:
        return cls(
            chunk_id=msg.chunk_id,
            path=msg.path,
            start_line=msg.start_line,
            end_line=msg.end_line,
            heading=list(msg.heading),
            snippet=msg.snippet,
            score=msg.score,
            retrieval_score=msg.retrieval_score,
            rerank_score=msg.rerank_score if msg.HasField("rerank_score") else None,
            page=msg.page or None,
            end_page=msg.end_page or msg.page or None,
            origin=msg.origin,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "heading": list(self.heading),
            "snippet": self.snippet,
            "score": self.score,
            "retrieval_score": self.retrieval_score,
            "rerank_score": self.rerank_score,
            "chunk_id": self.chunk_id,
            "page": self.page,
            "end_page": self.end_page,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class QueryUse:
    """How a search used its query (counts 0 where a signal did not run): the embedder's
    ``tokens``, the ``windows`` it read them in and the ``tokens_embedded`` (fewer when a long
    query was cut), the query's distinct full-text ``terms`` and the ``terms_used`` (the
    rarest, when there were many), the ``rerank_tokens`` the reranker read, and the
    ``like_chunk_id`` of a "more like this" search (0 for a text query)."""

    tokens: int = 0
    windows: int = 0
    tokens_embedded: int = 0
    terms: int = 0
    terms_used: int = 0
    rerank_tokens: int = 0
    like_chunk_id: int = 0

    @classmethod
    def from_proto(cls, msg: pb.QueryUse) -> QueryUse:
        return cls(tokens=msg.tokens, windows=msg.windows, tokens_embedded=msg.tokens_embedded, terms=msg.terms,
                   terms_used=msg.terms_used, rerank_tokens=msg.rerank_tokens, like_chunk_id=msg.like_chunk_id)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "windows": self.windows, "tokens_embedded": self.tokens_embedded,
                "terms": self.terms, "terms_used": self.terms_used, "rerank_tokens": self.rerank_tokens,
                "like_chunk_id": self.like_chunk_id}


@dataclass(frozen=True)
class SearchResult:
    """One search response. ``stage`` is "retrieval" for retrieval-only results (the first
    message of a stream, or reranking off) and "reranked" once the reranker has run.
    ``timings`` are milliseconds per step, keyed as the daemon names them."""

    query: str
    stage: Stage
    hits: list[Hit]
    timings: dict[str, float]
    candidates: int
    reranked: int
    models: Models
    degraded: list[str] = field(default_factory=list)
    rerank_window: int = 0  # the window (tokens) that cut at least one reranked passage; 0 = all read whole
    query_use: QueryUse = field(default_factory=QueryUse)

    @classmethod
    def from_proto(cls, msg: pb.SearchResponse, query: str = "") -> SearchResult:
        stage: Stage
        if msg.stage == pb.SearchResponse.RERANKED:
            stage = "reranked"
        elif msg.stage == pb.SearchResponse.RETRIEVAL:
            stage = "retrieval"
        else:  # unspecified: infer it
            stage = "reranked" if msg.reranked > 0 else "retrieval"
        return cls(
            query=query,
            stage=stage,
            hits=[Hit.from_proto(h) for h in msg.hits],
            timings=dict(sorted(msg.timings_ms.items())),
            candidates=msg.candidates,
            reranked=msg.reranked,
            models=Models.from_proto(msg.models),
            degraded=list(msg.degraded),
            rerank_window=msg.rerank_window,
            query_use=QueryUse.from_proto(msg.query_use),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "stage": self.stage,
            "hits": [h.to_dict() for h in self.hits],
            "timings": dict(self.timings),
            "models": self.models.to_dict(),
            "degraded": list(self.degraded),
            "candidates": self.candidates,
            "reranked": self.reranked,
            "rerank_window": self.rerank_window,
            "query_use": self.query_use.to_dict(),
        }


@dataclass(frozen=True)
class Chunk:
    """One chunk with its full text."""

    chunk_id: int
    path: str
    start_line: int
    end_line: int
    heading: list[str]
    text: str
    page: int | None = None  # first page (1-based); None for formats without pages
    end_page: int | None = None  # last page

    @classmethod
    def from_proto(cls, msg: pb.Chunk) -> Chunk:
        return cls(
            chunk_id=msg.chunk_id,
            path=msg.path,
            start_line=msg.start_line,
            end_line=msg.end_line,
            heading=list(msg.heading),
            text=msg.text,
            page=msg.page or None,
            end_page=msg.end_page or msg.page or None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "heading": list(self.heading),
            "text": self.text,
            "page": self.page,
            "end_page": self.end_page,
        }


@dataclass(frozen=True)
class FileLines:
    """Lines ``from_line`` .. ``end_line`` of an indexed file (1-based) and its line count."""

    path: str
    from_line: int
    lines: list[str]
    total_lines: int

    @property
    def end_line(self) -> int:
        """The last line returned (``from_line - 1`` when no line was)."""
        return self.from_line + len(self.lines) - 1

    @classmethod
    def from_proto(cls, msg: pb.ReadFileResponse) -> FileLines:
        return cls(path=msg.path, from_line=msg.from_line, lines=list(msg.lines), total_lines=msg.total_lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "from_line": self.from_line,
            "end_line": self.end_line,
            "total_lines": self.total_lines,
            "lines": list(self.lines),
        }


@dataclass(frozen=True)
class Root:
    """An indexed folder. ``configured`` roots come from the config file and cannot be
    removed over the API."""

    path: str
    configured: bool

    @classmethod
    def from_proto(cls, msg: pb.Root) -> Root:
        return cls(path=msg.path, configured=msg.configured)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "configured": self.configured}


@dataclass(frozen=True)
class FailedFile:
    """A file that was not indexed: ``status`` is "skipped" or "failed"."""

    path: str
    status: str
    reason: str

    @classmethod
    def from_proto(cls, msg: pb.FailedFile) -> FailedFile:
        return cls(path=msg.path, status=msg.status, reason=msg.reason)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "reason": self.reason}


@dataclass(frozen=True)
class RootStatus:
    """Indexing progress of one root."""

    path: str
    files_indexed: int
    files_pending: int
    files_failed: int
    failures: list[FailedFile]
    current_file: str | None  # the file being indexed now, if any
    watching: bool
    # Why the root is suspended (its folder missing, unreadable, or empty while files of it are
    # indexed: its files are kept, not served, until it is back); None when it is not.
    suspended: str | None = None
    watch_problem: str | None = None  # why it is not (fully) watched (then scanned every few minutes)

    @classmethod
    def from_proto(cls, msg: pb.RootStatus) -> RootStatus:
        return cls(
            path=msg.path,
            files_indexed=msg.files_indexed,
            files_pending=msg.files_pending,
            files_failed=msg.files_failed,
            failures=[FailedFile.from_proto(f) for f in msg.failures],
            current_file=msg.current_file or None,
            watching=msg.watching,
            suspended=(msg.suspended_reason or "suspended") if msg.suspended else None,
            watch_problem=msg.watch_problem or None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "files_indexed": self.files_indexed,
            "files_pending": self.files_pending,
            "files_failed": self.files_failed,
            "failures": [f.to_dict() for f in self.failures],
            "current_file": self.current_file,
            "watching": self.watching,
            "suspended": self.suspended,
            "watch_problem": self.watch_problem,
        }


@dataclass(frozen=True)
class Status:
    """The daemon's state. ``throughput`` is chunks embedded per second (``tokens_per_second``
    the same in tokens); ``eta`` the estimated seconds until pending files are indexed, None
    when unknown."""

    serving: bool
    files_indexed: int
    files_pending: int
    files_failed: int
    chunks: int
    roots: list[RootStatus]
    models: Models
    degraded: list[str]
    current_file: str | None
    throughput: float
    eta: float | None
    tokens_per_second: float = 0.0
    version: str = ""
    writer_error: str | None = None  # why changes are not indexed now (retried); None when the writer works
    shared_chunks: int = 0  # other daemons' chunks searched with these (a shared Milvus collection)
    vector_index: str = ""  # the dense index in a few words ("faiss ivf4000 int8 (building ivf)")

    @classmethod
    def from_proto(cls, msg: pb.StatusResponse) -> Status:
        return cls(
            serving=msg.serving,
            files_indexed=msg.files_indexed,
            files_pending=msg.files_pending,
            files_failed=msg.files_failed,
            chunks=msg.chunks,
            roots=[RootStatus.from_proto(r) for r in msg.roots],
            models=Models.from_proto(msg.models),
            degraded=list(msg.degraded),
            current_file=msg.current_file or None,
            throughput=msg.chunks_per_second,
            eta=msg.eta_seconds if msg.eta_seconds >= 0 else None,
            tokens_per_second=msg.tokens_per_second,
            version=msg.version,
            writer_error=msg.writer_error or None,
            shared_chunks=msg.shared_chunks,
            vector_index=msg.vector_index,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "serving": self.serving,
            "version": self.version,
            "files_indexed": self.files_indexed,
            "files_pending": self.files_pending,
            "files_failed": self.files_failed,
            "chunks": self.chunks,
            "roots": [r.to_dict() for r in self.roots],
            "models": self.models.to_dict(),
            "degraded": list(self.degraded),
            "current_file": self.current_file,
            "throughput": self.throughput,
            "tokens_per_second": self.tokens_per_second,
            "eta": self.eta,
            "writer_error": self.writer_error,
            "shared_chunks": self.shared_chunks,
            "vector_index": self.vector_index,
        }
