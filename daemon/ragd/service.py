"""The daemon's API as one library: what the gRPC servicers, the CLI and MCP all call.

Requests are checked here (``ragd.requests``; a ``UsageError`` names the field), every path a
caller names is confined to the roots, and results are domain objects (``SearchResult``, and
the ``ragd_client.types`` records the client also returns). A transport only converts formats
and maps errors through ``ragd.errors.ERROR_TABLE``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ragd import __version__
from ragd.errors import (
    ExtractError,
    FailedPreconditionError,
    IndexEmptyError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UsageError,
)
from ragd.filters import normalise_filters
from ragd.requests import MAX_QUERY_CHARS, SearchRequest, check_path, check_search, inside, shown
from ragd.search import SearchOptions, SearchResult, search
from ragd_client.types import Chunk, FailedFile, FileLines, Models, Root, RootStatus, Status

if TYPE_CHECKING:
    from ragd.config import Config
    from ragd.engine import Engine
    from ragd.indexer import WriterStatus
    from ragd.store.catalog import Catalog, FileRow
    from ragd.store.jobs import JobQueue
    from ragd.watch import Watcher

MAX_READ_LINES = 5000
MESSAGE_MARGIN = 4096  # bytes of a response kept free for everything but the lines themselves
DEADLINE_MARGIN_S = 0.05  # a call's deadline, less this, is when the search must answer


class Host(Protocol):
    """What the service needs of the daemon that runs it (``server.Daemon``)."""

    config: Config
    engine: Engine | None
    serving: bool
    queue: JobQueue
    watcher: Watcher
    wake: threading.Event
    stopping: threading.Event
    status_info: WriterStatus

    def reader(self) -> Engine: ...

    def configured_roots(self) -> set[Path]: ...

    def root_paths(self, real: bool = False) -> set[str]: ...

    def suspended_roots(self) -> dict[str, str]: ...

    def watch_problems(self) -> dict[str, str]: ...

    def writer_problem(self) -> str: ...

    def add_root(self, root: Path) -> None: ...

    def remove_root(self, root: str) -> int: ...


class Service:
    """The operations of one daemon; safe to call from many threads."""

    def __init__(self, daemon: Host) -> None:
        self.d = daemon
        self.config = daemon.config
        self._streams = threading.BoundedSemaphore(self.config.server.max_streams)

    # searching --------------------------------------------------------------------------
    def prepare_search(
        self, req: SearchRequest, *, call_deadline_s: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[str, SearchOptions]:
        """Check ``req`` and turn it into the query text and the search stage's options.
        ``call_deadline_s`` is the seconds the transport's own deadline leaves (gRPC's)."""
        query = check_search(req)
        filters = normalise_filters(req.filters)
        if filters.root and filters.root.rstrip("/") not in self.d.root_paths():
            raise UsageError(f"filters.root: not a root of this daemon: {shown(req.filters.root or '')}")
        deadline = None
        if call_deadline_s is not None:
            deadline = time.monotonic() + call_deadline_s - DEADLINE_MARGIN_S
        if req.deadline_ms:
            own = time.monotonic() + req.deadline_ms / 1000
            deadline = own if deadline is None else min(deadline, own)
        like_chunk_id, exclude = req.like_chunk_id or None, None
        if req.like_path:
            query, like_chunk_id, exclude = resolve_like(self.d.reader().catalog, self.config, self.d.root_paths(),
                                                         req.like_path, req.like_line)
        return query, SearchOptions(
            mode=req.mode or None, fusion=req.fusion or None, weights=dict(req.weights) or None,
            k=req.k or None, candidates=req.candidates or None, rerank=req.rerank,
            filters=filters, deadline=deadline, cancelled=cancelled, like_chunk_id=like_chunk_id,
            like_same_file=req.like_same_file, exclude_path=exclude,
        )

    def search(self, query: str, opts: SearchOptions,
               on_retrieval: Callable[[SearchResult], None] | None = None) -> SearchResult:
        """Run one search; an empty index says whether the first scan is still running."""
        if on_retrieval is not None:
            opts = replace(opts, on_retrieval=on_retrieval)
        try:
            return search(self.d.reader(), query, opts)
        except IndexEmptyError as exc:
            if self.d.queue.pending():
                raise IndexEmptyError(
                    "the index is empty: the first scan is still running (see `ragd status`)"
                ) from exc
            raise IndexEmptyError("the index is empty: add a root with `ragd roots add PATH`") from exc

    # reading ----------------------------------------------------------------------------
    def get_chunk(self, chunk_id: int) -> Chunk:
        if chunk_id == 0:
            raise UsageError("chunk_id: must be a chunk id from a hit, not 0")
        if chunk_id < 0:  # another daemon's chunk in a shared collection: it serves the chunk
            foreign = self.d.reader().store.foreign_rows([chunk_id]).get(chunk_id)
            if foreign is None:
                raise NotFoundError(f"chunk_id: no chunk {chunk_id}")
            raise NotFoundError(f"chunk_id: chunk {chunk_id} belongs to origin {foreign.origin} in the shared "
                                f"collection (file {shown(foreign.path)}): the ragd daemon of that origin serves it")
        row = self.d.reader().catalog.chunks([chunk_id]).get(chunk_id)
        if row is None:
            raise NotFoundError(f"chunk_id: no chunk {chunk_id}")
        if any(inside(row.path, root) for root in self.d.suspended_roots()):
            raise NotFoundError(f"chunk_id: chunk {chunk_id} is in a suspended root (its folder is gone for now)")
        return Chunk(chunk_id=row.id, path=row.path, start_line=row.start_line, end_line=row.end_line,
                     heading=list(row.heading), text=row.text, page=row.page or None,
                     end_page=row.end_page or None)

    def read_file(self, path: str, from_line: int = 1, count: int = 0) -> FileLines:
        """Lines ``from_line`` .. ``from_line + count - 1`` of an indexed file's text, numbered as
        hits number them; bounded by ``MAX_READ_LINES`` and the message size."""
        if from_line < 0 or count < 0:
            raise UsageError("from_line, count: must not be negative")
        try:
            _, real = indexed_file(self.d.reader().catalog, self.d.root_paths(), path)
        except (PermissionDeniedError, NotFoundError):
            origin = self.d.reader().store.origin_of(path) if path else None
            if origin is None:
                raise
            raise NotFoundError(f"path: {shown(path)} is indexed by origin {origin} in the shared collection: "
                                "the ragd daemon of that origin serves it") from None
        lines = file_text(self.config, real).split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        start = max(1, from_line)
        wanted = min(count or MAX_READ_LINES, MAX_READ_LINES)
        chosen = lines[start - 1 : start - 1 + wanted]
        budget = self.config.server.max_message_bytes - MESSAGE_MARGIN
        size = 0
        for i, line in enumerate(chosen):
            size += len(line.encode("utf-8", "replace")) + 8
            if size > budget:
                chosen = chosen[:i]
                break
        return FileLines(path=path, from_line=start, lines=chosen, total_lines=len(lines))

    # roots ------------------------------------------------------------------------------
    def add_root(self, path: str, *, remote: bool = False) -> Root:
        """Register a folder as a root (indexed in the background). Over TCP (``remote``) only
        with ``server.tcp_manage_roots`` and inside ``server.tcp_root_folders``; never ragd's
        data folder or ``/``."""
        if not path:
            raise UsageError("path: not an existing folder: ''")
        absolute = os.path.abspath(os.path.expanduser(check_path("path", path, relative_ok=True)))
        if not os.path.isdir(absolute):
            raise UsageError(f"path: not an existing folder: {shown(path)}")
        self._check_root_allowed(absolute, remote)
        self.d.add_root(Path(absolute))
        return Root(path=absolute, configured=Path(absolute) in self.d.configured_roots())

    def _check_root_allowed(self, absolute: str, remote: bool) -> None:
        cfg = self.config
        real = os.path.realpath(absolute)
        data = os.path.realpath(cfg.data_dir)
        if inside(real, data):
            raise PermissionDeniedError(f"path: {shown(absolute)} is ragd's data folder or inside it")
        if real == "/":
            raise PermissionDeniedError("path: / cannot be a root: add the folders you want searched")
        if not remote:
            return
        if not cfg.server.tcp_manage_roots:
            raise PermissionDeniedError(
                "path: roots cannot be changed over TCP (server.tcp_manage_roots = false); use the Unix socket"
            )
        allowed = [os.path.realpath(os.path.expanduser(p)) for p in cfg.server.tcp_root_folders]
        if not any(inside(real, a) for a in allowed):
            raise PermissionDeniedError(
                f"path: {shown(absolute)} is not inside server.tcp_root_folders ({', '.join(allowed) or 'none'})"
            )

    def remove_root(self, path: str, *, remote: bool = False) -> int:
        absolute = os.path.abspath(os.path.expanduser(check_path("path", path, relative_ok=True))) if path else ""
        if not absolute or absolute not in self.d.root_paths():
            raise NotFoundError(f"path: not a root: {shown(path)}")
        if remote and not self.config.server.tcp_manage_roots:
            raise PermissionDeniedError(
                "path: roots cannot be changed over TCP (server.tcp_manage_roots = false); use the Unix socket"
            )
        if Path(absolute) in self.d.configured_roots():
            raise FailedPreconditionError(f"path: {absolute} is a root in the config file; remove it there and restart")
        return self.d.remove_root(absolute)

    def list_roots(self) -> list[Root]:
        configured = self.d.configured_roots()
        return [Root(path=p, configured=Path(p) in configured) for p in sorted(self.d.root_paths())]

    def reindex(self, root: str = "") -> int:
        """Queue a reconcile scan of ``root`` (or of every root); returns how many were queued."""
        roots = sorted(self.d.root_paths())
        if root:
            wanted = os.path.abspath(os.path.expanduser(check_path("root", root, relative_ok=True)))
            if wanted not in roots:
                raise NotFoundError(f"root: not a root: {shown(root)}")
            roots = [wanted]
        queued = sum(1 for r in roots if self.d.queue.put_scan(r, "api"))
        self.d.wake.set()
        return queued

    # status -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[None]:
        """Hold one of ``server.max_streams`` slots for a long-lived stream, or refuse."""
        if not self._streams.acquire(blocking=False):
            raise ResourceExhaustedError(
                f"too many open status streams (server.max_streams = {self.config.server.max_streams})"
            )
        try:
            yield
        finally:
            self._streams.release()

    def status(self) -> Status:
        """Files indexed / pending / failed per root, models, progress, and what is degraded."""
        d = self.d
        serving = d.serving
        info = d.status_info
        roots: list[RootStatus] = []
        totals = {"indexed": 0, "pending": 0, "failed": 0}
        chunks = shared = 0
        vector_index = ""
        models = Models(embedder="", reranker=None)
        degraded: list[str] = []
        if d.engine is not None and serving:  # while loading, the engine is not ready to read
            cat = d.reader().catalog
            stats = cat.root_stats()
            chunks = cat.count_chunks()
            shared = d.reader().shared_chunks()
            vector_index = d.reader().store.describe()
            watching = set(d.watcher.watching())
            suspended = d.suspended_roots()
            troubles = d.watch_problems()
            for root in sorted(d.root_paths()):
                counts = stats.get(root, {})
                pending = d.queue.pending(root)
                with info.lock:
                    if info.current_root == root:
                        pending += max(0, info.files_todo - info.files_done)
                    current = info.current_file if info.current_root == root else ""
                failures = [FailedFile(path=p, status=s, reason=r) for p, s, r in cat.failed_under(root, 20)]
                failed = counts.get("failed", 0) + counts.get("skipped", 0)
                roots.append(RootStatus(
                    path=root, files_indexed=counts.get("indexed", 0), files_pending=pending, files_failed=failed,
                    failures=failures, current_file=current or None, watching=Path(root) in watching,
                    suspended=suspended.get(root), watch_problem=troubles.get(root),
                ))
                totals["indexed"] += counts.get("indexed", 0)
                totals["pending"] += pending
                totals["failed"] += failed
            loaded = d.engine.models
            models = Models(embedder=loaded.embedder.model_id,
                            reranker=loaded.reranker.model_id if loaded.reranker else None)
            degraded = list(loaded.degraded)
        chunk_rate, token_rate, file_rate = info.rates()
        if not totals["pending"]:
            eta: float | None = 0.0
        else:
            eta = round(totals["pending"] / file_rate, 1) if file_rate > 0 else None
        return Status(
            serving=bool(serving), files_indexed=totals["indexed"], files_pending=totals["pending"],
            files_failed=totals["failed"], chunks=chunks, roots=roots, models=models, degraded=degraded,
            current_file=(info.current_file or None) if info.busy_since is not None else None,
            throughput=round(chunk_rate, 2), eta=eta, tokens_per_second=round(token_rate, 1), version=__version__,
            writer_error=d.writer_problem() or None, shared_chunks=shared, vector_index=vector_index,
        )


def indexed_file(catalog: Catalog, roots: Iterable[str], path: str, name: str = "path") -> tuple[FileRow, str]:
    """The catalog row and real path of an indexed file that lies inside one of ``roots``
    (symlinks resolved): PermissionDeniedError outside them, NotFoundError when the index
    does not hold it, FailedPreconditionError when it was skipped or failed."""
    normal = check_path(name, path)
    real = os.path.realpath(normal)
    if not any(inside(real, os.path.realpath(r)) for r in roots):
        raise PermissionDeniedError(f"{name}: not inside a root of this daemon: {shown(path)}")
    row = catalog.file_row(normal)
    if row is None and real != normal:
        row = catalog.file_row(real)
    if row is None:
        raise NotFoundError(f"{name}: not an indexed file: {shown(path)}")
    if row.status != "indexed":
        raise FailedPreconditionError(f"{name}: not indexed ({row.status}: {row.error or 'no reason'}): {shown(path)}")
    return row, real


def file_text(config: Config, real: str, name: str = "path") -> str:
    """The extracted text of a file (what its chunks were cut from), if it is not over the
    indexing size limit."""
    from ragd.extract import extract

    limit = config.indexing.max_file_bytes
    try:
        with open(real, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise FailedPreconditionError(
                    f"{name}: {size} bytes, over indexing.max_file_bytes ({limit}): not served"
                )
            data = fh.read(limit + 1)
    except OSError as exc:
        raise NotFoundError(f"{name}: cannot read: {exc.strerror}") from exc
    if len(data) > limit:
        raise FailedPreconditionError(f"{name}: grew over indexing.max_file_bytes ({limit}): not served")
    try:
        return extract(Path(real), data, config.extract).text
    except ExtractError as exc:
        raise FailedPreconditionError(f"{name}: {exc}") from exc


def resolve_like(catalog: Catalog, config: Config, roots: Iterable[str], path: str,
                 line: int) -> tuple[str, int | None, str | None]:
    """A "more like this" file as (query text, chunk id, path to leave out): the chunk holding
    ``line``, or with ``line`` 0 the file's text (its first ``MAX_QUERY_CHARS`` characters),
    leaving the file itself out of the hits."""
    row, real = indexed_file(catalog, roots, path, "like_path")
    if line:
        chunk_id = catalog.chunk_at(row.path, line)
        if chunk_id is None:
            raise NotFoundError(f"like_line: {shown(path)} has no chunk at line {line}")
        return "", chunk_id, None
    text = file_text(config, real, "like_path")[:MAX_QUERY_CHARS]
    if not text.strip():
        raise FailedPreconditionError(f"like_path: {shown(path)} has no text to search with")
    return text, None, row.path


def search_in_process(
    config: Config, query: str, *, k: int | None = None, candidates: int | None = None, rerank: bool = True,
    path_prefix: str | None = None, deadline_s: float | None = None, like_path: str = "", like_line: int = 0,
    like_same_file: bool = False,
) -> SearchResult:
    """One search without a daemon: opens the index (SQLite only, no in-memory mirrors) and
    the models; ``deadline_s`` counts from when the models are loaded. ``like_path`` /
    ``like_line`` as in ``SearchRequest``."""
    from ragd.engine import Engine

    with Engine(config, rerank=rerank, mirrors=False) as engine:
        like_chunk_id, exclude = None, None
        if like_path:
            roots = {*engine.catalog.roots(), *(str(r.path) for r in config.roots)}
            query, like_chunk_id, exclude = resolve_like(engine.catalog, config, roots, like_path, like_line)
        due = None
        if deadline_s is not None:
            _ = engine.models  # loaded, and the pace measured (at the narrowest window only): not counted
            if rerank:
                engine.rerank_pace.prime(widest=False)
            due = time.monotonic() + deadline_s
        return search(engine, query, SearchOptions(
            k=k, candidates=candidates, rerank=rerank, path_prefix=path_prefix, deadline=due,
            like_chunk_id=like_chunk_id, like_same_file=like_same_file, exclude_path=exclude,
        ))
