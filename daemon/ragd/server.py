"""``ragd serve``: the daemon. gRPC servicers, health, auth, limits and lifecycle.

One writer thread drains the durable job queue (watch events, reconcile scans, API calls)
through the indexer in small batches; searches run on the gRPC worker threads with their
own catalog connections and go before the next indexing batch (``ModelGate``). SQLite is
the truth and the FAISS cache follows it, so stopping at any point loses nothing committed.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ragd import __version__
from ragd.config import Config, ConfigError
from ragd.engine import Engine
from ragd.errors import IndexEmptyError, ModelLoadError, ModelNotFoundError, RagdError, UsageError
from ragd.filters import Filters
from ragd.indexer import Indexer
from ragd.paths import PathFilter
from ragd.search import SearchCancelled, SearchOptions, SearchResult, prime_rerank_pace, search
from ragd.store.catalog import Catalog
from ragd.store.jobs import Job, JobQueue
from ragd.watch import Watcher
from ragd_client import default_socket_path
from ragd_client.v1 import ragd_pb2, ragd_pb2_grpc

log = logging.getLogger("ragd.server")

SERVICES = ("ragd.v1.Search", "ragd.v1.Index")
MAX_READ_LINES = 5000
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


# -- status of the writer -------------------------------------------------------------
@dataclass
class WriterStatus:
    """What the writer thread is doing; read by Status/WatchStatus (a lock guards it)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    current_file: str = ""
    current_root: str = ""
    files_todo: int = 0
    files_done: int = 0
    chunks: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    busy_since: float | None = None
    changes: int = 0  # raised on every update, so watchers can tell something moved

    def total(self, files: int) -> None:
        with self.lock:
            self.files_todo += files
            self.changes += 1

    def advance(self, files: int = 0, chunks: int = 0, tokens: int = 0, current: str | None = None) -> None:
        with self.lock:
            self.files_done += files
            self.chunks += chunks
            self.tokens += tokens
            if current is not None:
                self.current_file = current
            self.changes += 1

    def rates(self) -> tuple[float, float, float]:
        """(chunks/s, tokens/s, files/s) over the current busy period."""
        with self.lock:
            if self.busy_since is None:
                return 0.0, 0.0, 0.0
            elapsed = max(1e-3, time.monotonic() - self.busy_since)
            return self.chunks / elapsed, self.tokens / elapsed, self.files_done / elapsed


# -- errors -> status codes, in one place ---------------------------------------------
def _code_for(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, UsageError | ConfigError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, IndexEmptyError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, SearchCancelled):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, ModelNotFoundError | ModelLoadError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    code = _code_for(exc)
    if code == grpc.StatusCode.INTERNAL and not isinstance(exc, RagdError):
        log.exception("internal error")
    context.abort(code, str(exc))


@contextlib.contextmanager
def _rpc(context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except RagdError as exc:
        _abort(context, exc)
    except grpc.RpcError:
        raise
    except Exception as exc:  # an unexpected bug: INTERNAL with the message, logged with traceback
        if context.code() is not None or not context.is_active():
            raise  # context.abort() already set the status (it raises a bare Exception)
        _abort(context, exc)


def _invalid(context: grpc.ServicerContext, field_name: str, why: str) -> None:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field_name}: {why}")


# -- servicers ------------------------------------------------------------------------
class SearchServicer(ragd_pb2_grpc.SearchServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def _options(self, req: Any, context: grpc.ServicerContext, *, rerank_default: bool | None = None) -> SearchOptions:
        if not req.query.strip():
            _invalid(context, "query", "must not be empty")
        if len(req.query) > 4096:
            _invalid(context, "query", f"at most 4096 characters, got {len(req.query)}")
        if req.k > 1000:
            _invalid(context, "k", f"must be from 1 to 1000 (0 = default), got {req.k}")
        if req.candidates > 1000:
            _invalid(context, "candidates", f"must be from 1 to 1000 (0 = default), got {req.candidates}")
        f = req.filters
        if f.modified_after_unix_ms < 0 or f.modified_before_unix_ms < 0:
            _invalid(context, "filters.modified_after_unix_ms", "must not be negative")
        filters = Filters(
            path_prefixes=tuple(f.path_prefixes), globs=tuple(f.globs), extensions=tuple(f.extensions),
            modified_after=f.modified_after_unix_ms / 1000 if f.modified_after_unix_ms else None,
            modified_before=f.modified_before_unix_ms / 1000 if f.modified_before_unix_ms else None,
            root=f.root or None,
        )
        if filters.root and filters.root.rstrip("/") not in self.d.root_paths():
            _invalid(context, "filters.root", f"not a root of this daemon: {filters.root}")
        deadline = None
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = time.monotonic() + remaining - 0.05
        if req.deadline_ms:
            own = time.monotonic() + req.deadline_ms / 1000
            deadline = own if deadline is None else min(deadline, own)
        from ragd.search import MODES, SIGNALS

        if req.mode and req.mode not in MODES:
            _invalid(context, "mode", f"expected one of {', '.join(MODES)}, got {req.mode!r}")
        if req.fusion and req.fusion not in ("weighted", "rrf"):
            _invalid(context, "fusion", f"expected weighted or rrf, got {req.fusion!r}")
        for name, w in req.weights.items():
            if name not in SIGNALS or not 0 <= w <= 1000:
                _invalid(context, "weights", f"expected one of {', '.join(SIGNALS)} with a weight from 0 to 1000, "
                                             f"got {name}={w}")
        return SearchOptions(
            mode=req.mode or None, fusion=req.fusion or None, weights=dict(req.weights) or None,
            k=req.k or None, candidates=req.candidates or None,
            rerank=req.rerank if req.HasField("rerank") else rerank_default,
            filters=filters, deadline=deadline, cancelled=lambda: not context.is_active(),
        )

    def _search(self, query: str, opts: SearchOptions) -> SearchResult:
        try:
            return search(self.d.reader(), query, opts)
        except IndexEmptyError as exc:
            if self.d.queue.pending():
                raise IndexEmptyError(
                    "the index is empty: the first scan is still running (see `ragd status`)"
                ) from exc
            raise IndexEmptyError("the index is empty: add a root with `ragd roots add PATH`") from exc

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        opts = self._options(request, context)
        with _rpc(context):
            result = self._search(request.query, opts)
            stage = ragd_pb2.SearchResponse.RERANKED if result.reranked else ragd_pb2.SearchResponse.RETRIEVAL
            return _response(result, stage)

    def SearchStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        opts = self._options(request, context)
        stages: list[Any] = []
        done = threading.Event()
        failure: list[Exception] = []

        def on_retrieval(partial: SearchResult) -> None:
            stages.append(_response(partial, ragd_pb2.SearchResponse.RETRIEVAL))
            done.set()

        from dataclasses import replace

        def run() -> None:
            try:
                final = self._search(request.query, replace(opts, on_retrieval=on_retrieval))
                stage = ragd_pb2.SearchResponse.RERANKED if final.reranked else ragd_pb2.SearchResponse.RETRIEVAL
                stages.append(_response(final, stage))
            except Exception as exc:
                failure.append(exc)
            finally:
                done.set()

        with _rpc(context):
            worker = threading.Thread(target=run, name="ragd-search-stream", daemon=True)
            worker.start()
            sent = 0
            while True:
                done.wait(0.05)
                while sent < len(stages):
                    yield stages[sent]
                    sent += 1
                if not worker.is_alive() and sent >= len(stages):
                    break
                done.clear()
            if failure:
                raise failure[0]

    def GetChunk(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.chunk_id <= 0:
            _invalid(context, "chunk_id", "must be a positive chunk id")
        with _rpc(context):
            rows = self.d.reader().catalog.chunks([request.chunk_id])
            row = rows.get(request.chunk_id)
            if row is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"chunk_id: no chunk {request.chunk_id}")
                raise AssertionError("unreachable: abort raises")
            return ragd_pb2.Chunk(
                chunk_id=row.id, path=row.path, start_line=row.start_line, end_line=row.end_line,
                heading=list(row.heading), text=row.text,
            )

    def ReadFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.path or not os.path.isabs(request.path):
            _invalid(context, "path", "must be an absolute path")
        real = os.path.realpath(request.path)
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in self.d.root_paths(real=True)):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"path: not inside a root of this daemon: {request.path}")
        with _rpc(context):
            if self.d.reader().catalog.file_row(request.path) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"path: not an indexed file: {request.path}")
            try:
                data = Path(real).read_bytes()
            except OSError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, f"path: cannot read: {exc.strerror}")
            from ragd.extract import extract

            text = extract(Path(real), data).text
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            start = max(1, request.from_line)
            count = min(request.count or MAX_READ_LINES, MAX_READ_LINES)
            chosen = lines[start - 1 : start - 1 + count]
            budget = self.d.config.server.max_message_bytes - 4096
            size = 0
            for i, line in enumerate(chosen):
                size += len(line.encode("utf-8")) + 8
                if size > budget:
                    chosen = chosen[:i]
                    break
            return ragd_pb2.ReadFileResponse(
                path=request.path, from_line=start, lines=chosen, total_lines=len(lines)
            )


class IndexServicer(ragd_pb2_grpc.IndexServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _rpc(context):
            return self.d.status()

    def WatchStatus(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        interval = max(0.05, (request.interval_ms or 500) / 1000)
        last: Any = None
        last_sent = 0.0
        while context.is_active() and not self.d.stopping.is_set():
            current = self.d.status()
            if current != last or time.monotonic() - last_sent > 5:
                yield current
                last, last_sent = current, time.monotonic()
            self.d.stopping.wait(interval)

    def AddRoot(self, request: Any, context: grpc.ServicerContext) -> Any:
        path = os.path.abspath(os.path.expanduser(request.path)) if request.path else ""
        if not path or not os.path.isdir(path):
            _invalid(context, "path", f"not an existing folder: {request.path!r}")
        with _rpc(context):
            self.d.add_root(Path(path))
            return ragd_pb2.Root(path=path, configured=Path(path) in self.d.configured_roots())

    def RemoveRoot(self, request: Any, context: grpc.ServicerContext) -> Any:
        path = os.path.abspath(os.path.expanduser(request.path)) if request.path else ""
        if not path or path not in self.d.root_paths():
            context.abort(grpc.StatusCode.NOT_FOUND, f"path: not a root: {request.path!r}")
        if Path(path) in self.d.configured_roots():
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"path: {path} is a root in the config file; remove it there and restart")
        with _rpc(context):
            return ragd_pb2.RemoveRootResponse(files_removed=self.d.remove_root(path))

    def ListRoots(self, request: Any, context: grpc.ServicerContext) -> Any:
        configured = self.d.configured_roots()
        return ragd_pb2.ListRootsResponse(roots=[
            ragd_pb2.Root(path=p, configured=Path(p) in configured) for p in sorted(self.d.root_paths())
        ])

    def Reindex(self, request: Any, context: grpc.ServicerContext) -> Any:
        roots = sorted(self.d.root_paths())
        if request.root:
            wanted = os.path.abspath(os.path.expanduser(request.root))
            if wanted not in roots:
                context.abort(grpc.StatusCode.NOT_FOUND, f"root: not a root: {request.root!r}")
            roots = [wanted]
        queued = sum(1 for r in roots if self.d.queue.put_scan(r, "api"))
        self.d.wake.set()
        return ragd_pb2.ReindexResponse(queued=queued)


def _response(result: SearchResult, stage: ragd_pb2.SearchResponse.Stage) -> Any:
    hits = [
        ragd_pb2.Hit(
            chunk_id=h.chunk_id, path=h.path, start_line=h.start_line, end_line=h.end_line,
            heading=h.heading, snippet=h.snippet, score=h.score, retrieval_score=h.retrieval_score,
            rerank_score=h.rerank_score,
        )
        for h in result.hits
    ]
    return ragd_pb2.SearchResponse(
        stage=stage, hits=hits, timings_ms=result.timings, candidates=result.candidates,
        reranked=result.reranked, rerank_window=result.rerank_window,
        models=ragd_pb2.Models(embedder=result.models.get("embedder") or "",
                               reranker=result.models.get("reranker") or ""),
        degraded=result.degraded,
    )


# -- auth -----------------------------------------------------------------------------
class TokenAuth(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>``; compared in constant time."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return continuation(details)
        return self._deny


def load_or_create_token(path: Path) -> str:
    """The bearer token from a 0600 file, created with a fresh random token when missing."""
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path}: server.token_file: must not be readable by others (chmod 600), mode {mode:o}")
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise ConfigError(f"{path}: server.token_file: token too short (at least 16 characters)")
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def _check_tcp(address: str, allow_remote: bool, source: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise ConfigError(f"{source}: server.tcp: expected \"host:port\", got {address!r}")
    if allow_remote:
        return
    bare = host.strip("[]")
    if bare in LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(bare).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigError(
        f"{source}: server.tcp: {host} is not a loopback address; set server.allow_remote = true to allow it"
    )


def socket_path(config: Config) -> Path:
    """Where the daemon listens and clients look: server.socket, else the XDG default."""
    if config.server.socket:
        return Path(os.path.expanduser(config.server.socket))
    return default_socket_path(data_dir=config.data_dir)


def _prepare_socket(path: Path) -> None:
    """Make the folder 0700; remove a stale socket, refuse when a daemon already answers."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise RagdError(f"another ragd serve is already listening on {path}")
        finally:
            probe.close()


# -- the daemon -----------------------------------------------------------------------
class Daemon:
    """Owns the engine, the queue, the watcher, the writer thread and the gRPC servers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.health = health.HealthServicer()
        self.status_info = WriterStatus()
        self.writer_mutex = threading.Lock()  # held by the writer per batch, and by RemoveRoot
        self._exit = contextlib.ExitStack()
        self._readers = threading.local()
        self._all_readers: list[Engine] = []
        self._readers_lock = threading.Lock()
        self._servers: list[grpc.Server] = []
        self._writer: threading.Thread | None = None
        self._extra_roots: set[str] = set()
        # Guards _extra_roots and _roots_live: AddRoot may come while start() still loads the
        # models; start() then watches and scans it with the others (see add_root).
        self._roots_lock = threading.Lock()
        self._roots_live = False
        self.engine: Engine | None = None
        self.queue = JobQueue(config.data_dir / "catalog.db")
        self.watcher = Watcher(self.queue, debounce_s=config.watch.debounce_ms / 1000, on_change=self.wake.set,
                               max_batch_paths=config.watch.max_batch_paths)
        self.socket = socket_path(config)
        self.tcp_port: int | None = None

    # roots ------------------------------------------------------------------------
    def configured_roots(self) -> set[Path]:
        return {r.path for r in self.config.roots}

    def root_paths(self, real: bool = False) -> set[str]:
        paths = {str(p) for p in self.configured_roots()} | set(self._extra_roots)
        return {os.path.realpath(p) for p in paths} if real else paths

    def _filter_for(self, root: Path) -> PathFilter:
        for r in self.config.roots:
            if r.path == root:
                return PathFilter(r.include, r.exclude)
        return PathFilter()

    def add_root(self, root: Path) -> None:
        """Register ``root`` at once, also while start() still loads the models (a first start
        converts them for minutes): then it goes in the catalog through a connection of its
        own, and start() watches and scans it with the other roots once the models are in."""
        with self._roots_lock:
            live = self._roots_live
        if live:
            self.reader().catalog.add_root(str(root))
        else:
            catalog = Catalog(self.config.data_dir / "catalog.db")
            try:
                catalog.add_root(str(root))
            finally:
                catalog.close()
        with self._roots_lock:
            self._extra_roots.add(str(root))
            if not self._roots_live:
                return
        if self.config.watch.enabled:
            self.watcher.watch(root, self._filter_for(root))
        self.queue.put_scan(str(root), "api")
        self.wake.set()

    def remove_root(self, root: str) -> int:
        assert self.engine is not None
        self.watcher.unwatch(Path(root))
        with self.writer_mutex:
            self.queue.drop_root(root)
            catalog = self.engine.catalog
            files = len(catalog.files_under(root))
            ids = catalog.remove_root(root)
            self.engine.forget_chunks(ids)
            self.engine.collect_garbage()
            self.engine.save_snapshots()
        self._extra_roots.discard(root)
        return files

    # searching --------------------------------------------------------------------
    def reader(self) -> Engine:
        """This thread's read-only view of the engine (own SQLite connection)."""
        engine = getattr(self._readers, "engine", None)
        if engine is None:
            assert self.engine is not None
            engine = self.engine.reader()
            self._readers.engine = engine
            with self._readers_lock:
                self._all_readers.append(engine)
        return engine

    # status -----------------------------------------------------------------------
    def status(self) -> Any:
        serving = (
            self.health._server_status.get("") == health_pb2.HealthCheckResponse.SERVING
            if hasattr(self.health, "_server_status") else self.engine is not None
        )
        roots_msgs = []
        totals = {"indexed": 0, "pending": 0, "failed": 0}
        info = self.status_info
        chunks = 0
        models = ragd_pb2.Models()
        degraded: list[str] = []
        if self.engine is not None and serving:  # while loading, the engine is not ready to read
            cat = self.reader().catalog
            stats = cat.root_stats()
            chunks = cat.count_chunks()
            for root in sorted(self.root_paths()):
                counts = stats.get(root, {})
                pending = self.queue.pending(root)
                with info.lock:
                    if info.current_root == root:
                        pending += max(0, info.files_todo - info.files_done)
                    current = info.current_file if info.current_root == root else ""
                failures = [ragd_pb2.FailedFile(path=p, status=s, reason=r) for p, s, r in cat.failed_under(root, 20)]
                failed = counts.get("failed", 0) + counts.get("skipped", 0)
                roots_msgs.append(ragd_pb2.RootStatus(
                    path=root, files_indexed=counts.get("indexed", 0), files_pending=pending, files_failed=failed,
                    failures=failures, current_file=current, watching=Path(root) in self.watcher.watching(),
                ))
                totals["indexed"] += counts.get("indexed", 0)
                totals["pending"] += pending
                totals["failed"] += failed
            loaded = self.engine.models
            models = ragd_pb2.Models(
                embedder=loaded.embedder.model_id, reranker=loaded.reranker.model_id if loaded.reranker else ""
            )
            degraded = list(loaded.degraded)
        chunk_rate, token_rate, file_rate = info.rates()
        if not totals["pending"]:
            eta = 0.0
        else:
            eta = totals["pending"] / file_rate if file_rate > 0 else -1.0
        return ragd_pb2.StatusResponse(
            serving=bool(serving), files_indexed=totals["indexed"], files_pending=totals["pending"],
            files_failed=totals["failed"], chunks=chunks, roots=roots_msgs, models=models, degraded=degraded,
            current_file=info.current_file if info.busy_since is not None else "",
            chunks_per_second=round(chunk_rate, 2), tokens_per_second=round(token_rate, 1),
            eta_seconds=round(eta, 1), version=__version__,
        )

    # lifecycle ----------------------------------------------------------------------
    def _set_health(self, serving: bool) -> None:
        state = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            self.health.set(name, state)

    def _server(self, interceptors: tuple[Any, ...] = ()) -> grpc.Server:
        limit = self.config.server.max_message_bytes
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=min(32, self.config.server.max_concurrent_rpcs + 4),
                                       thread_name_prefix="ragd-rpc"),
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=self.config.server.max_concurrent_rpcs,
        )
        ragd_pb2_grpc.add_SearchServicer_to_server(SearchServicer(self), server)
        ragd_pb2_grpc.add_IndexServicer_to_server(IndexServicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def start(self, engine_factory: Callable[[Config], Engine] | None = None) -> None:
        """Bind, report NOT_SERVING, load models and the index, then start watching and writing."""
        cfg = self.config
        source = str(cfg.source) if cfg.source else "<defaults>"
        token = None
        if cfg.server.tcp:
            _check_tcp(cfg.server.tcp, cfg.server.allow_remote, source)
            token_path = Path(os.path.expanduser(cfg.server.token_file)) if cfg.server.token_file \
                else cfg.data_dir / "token"
            token = load_or_create_token(token_path)
        self._set_health(False)
        _prepare_socket(self.socket)
        uds = self._server()
        old_umask = os.umask(0o177)
        try:
            uds.add_insecure_port(f"unix:{self.socket}")
        finally:
            os.umask(old_umask)
        uds.start()
        os.chmod(self.socket, 0o600)
        self._servers.append(uds)
        if token is not None:
            tcp = self._server((TokenAuth(token),))
            self.tcp_port = tcp.add_insecure_port(cfg.server.tcp)
            tcp.start()
            self._servers.append(tcp)
        self.engine = (engine_factory or (lambda c: Engine(c)))(cfg)
        self._exit.enter_context(self.engine.writer())
        _ = self.engine.models, self.engine.vectors, self.engine.sparse, self.engine.lexical  # load now
        if self.engine.models.reranker is not None:  # measure the rerank pace for deadlines
            prime_rerank_pace(self.engine.models.reranker, cfg.search.rerank_max_tokens, cfg.search.rerank_floor)
        self.queue.recover()
        with self._roots_lock:  # roots added while loading are in _extra_roots already
            for root in sorted(self.engine.catalog.roots()):
                if os.path.isdir(root):
                    self._extra_roots.add(root)
            for r in cfg.roots:
                self.engine.catalog.add_root(str(r.path))
            for root in sorted(self.root_paths()):
                self.queue.put_scan(root, "start")
                if cfg.watch.enabled:
                    self.watcher.watch(Path(root), self._filter_for(Path(root)))
            self._roots_live = True
        if cfg.watch.enabled:
            self.watcher.start()
        self._writer = threading.Thread(target=self._write_loop, name="ragd-writer", daemon=True)
        self._writer.start()
        self._set_health(True)

    def _write_loop(self) -> None:
        assert self.engine is not None
        engine = self.engine
        # Indexing leaves one core to searches: torch's intra-op thread count is per thread,
        # so this caps only the writer's batches, not the queries and reranking. (torch is
        # loaded only where it runs the models; the OpenVINO path has its own Scheduler.)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
        interval = self.config.watch.reconcile_interval_s
        next_reconcile = time.monotonic() + interval if interval else None
        indexer = Indexer(engine, progress=self.status_info, should_stop=self.stopping.is_set)
        while not self.stopping.is_set():
            if next_reconcile is not None and time.monotonic() >= next_reconcile:
                for root in self.root_paths():
                    self.queue.put_scan(root, "periodic")
                next_reconcile = time.monotonic() + interval
            jobs = self.queue.take(self.config.watch.max_batch_paths)
            if not jobs:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                with self.writer_mutex:
                    self._run_jobs(indexer, jobs)
                self.queue.done([j.id for j in jobs if not self.stopping.is_set()])
                if self.stopping.is_set():
                    self.queue.retry([j.id for j in jobs], "daemon stopped")
            except Exception as exc:  # a failed batch is retried; the daemon keeps serving
                log.exception("indexing batch failed")
                self.queue.retry([j.id for j in jobs], f"{type(exc).__name__}: {exc}")
                self.stopping.wait(1.0)

    def _run_jobs(self, indexer: Indexer, jobs: list[Job]) -> None:
        info = self.status_info
        by_root: dict[str, list[Job]] = {}
        for job in jobs:
            by_root.setdefault(job.root, []).append(job)
        for root, root_jobs in by_root.items():
            if self.stopping.is_set():
                return
            if root not in self.root_paths() or not os.path.isdir(root):
                continue
            with info.lock:
                info.current_root = root
                info.files_todo = info.files_done = info.chunks = info.tokens = 0
                info.busy_since = time.monotonic()
            try:
                if any(j.kind == "scan" for j in root_jobs):
                    indexer.run([Path(root)], lock=False)
                else:
                    paths = sorted({Path(j.path) for j in root_jobs if j.path})
                    indexer.sync(Path(root), paths)
            finally:
                with info.lock:
                    info.current_root = info.current_file = ""
                    info.busy_since = None
                    info.changes += 1

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, finish or roll back the batch in hand, close everything."""
        grace = self.config.server.shutdown_grace_s if grace is None else grace
        self.stopping.set()
        self.wake.set()
        self._set_health(False)
        events = [s.stop(grace) for s in self._servers]
        with contextlib.suppress(Exception):
            self.watcher.stop()
        if self._writer is not None:
            self._writer.join(timeout=max(grace, 1.0) + 30)
        for e in events:
            e.wait(grace + 1)
        with self._readers_lock:
            for r in self._all_readers:
                with contextlib.suppress(Exception):
                    r.close()
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.save_snapshots()
            self.engine.close()
        self._exit.close()
        self.queue.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


def serve(config: Config, ready: Callable[[Daemon], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; a second signal forces exit. Returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="ragd: %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports which CPU build it picked
    daemon = Daemon(config)
    signals_seen = []

    def on_signal(signum: int, frame: Any) -> None:
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            os._exit(130)
        log.info("stopping (signal %d); a second signal forces exit", signum)
        daemon.stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            daemon.start()
        except BaseException:
            daemon.stop(0)
            raise
        if not daemon.root_paths():
            log.info("no roots yet: add one with `ragd roots add PATH` or [[roots]] in the config")
        log.info("serving on unix:%s%s", daemon.socket,
                 f" and tcp {config.server.tcp} (port {daemon.tcp_port})" if daemon.tcp_port else "")
        if ready is not None:
            ready(daemon)
        while not daemon.stopping.wait(0.5):
            pass
        daemon.stop()
        log.info("stopped")
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
