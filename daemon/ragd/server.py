"""``ragd serve``: the daemon. gRPC servicers, health, auth, limits and lifecycle.

One writer thread drains the durable job queue (watch events, reconcile scans, API calls)
through the indexer in small batches; searches run on the gRPC worker threads with their
own catalog connections and go before the next indexing batch (``ModelGate``). SQLite is
the truth and the FAISS cache follows it, so stopping at any point loses nothing committed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hmac
import ipaddress
import logging
import os
import signal
import socket
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ragd.auth import load_or_create_token, own_paths, token_path
from ragd.config import Config, ConfigError
from ragd.engine import Engine
from ragd.errors import INTERNAL, RagdError, StoreUnavailable, outcome_for
from ragd.filters import Filters
from ragd.indexer import Indexer, WriterStatus, root_problem
from ragd.paths import PathFilter, inside
from ragd.requests import SearchRequest
from ragd.search import SearchOptions, SearchResult
from ragd.service import Service
from ragd.store.catalog import Catalog
from ragd.store.jobs import Job, JobQueue
from ragd.watch import Watcher
from ragd_client import default_socket_path
from ragd_client.types import Root, Status
from ragd_client.v1 import ragd_pb2, ragd_pb2_grpc

log = logging.getLogger("ragd.server")

SERVICES = ("ragd.v1.Search", "ragd.v1.Index")

# -- the gRPC servers
MAX_WORKERS = 256  # threads of one gRPC server at most, whatever the limits in the config say
SPARE_WORKERS = 4  # threads beyond the calls and streams it admits
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
MAX_PORT = 65535
SOCKET_UMASK = 0o177  # the Unix socket is created 0600: never readable by others, not even for a moment
SOCKET_MODE = 0o600
STREAM_POLL_S = 0.05  # how often SearchStream looks for its next stage
STATUS_INTERVAL_MS = 500  # WatchStatus's interval_ms when the request gives 0 (as ragd.proto says)
STATUS_MIN_INTERVAL_S = 0.05
STATUS_KEEPALIVE_S = 5.0  # WatchStatus sends an unchanged status again after this long

# -- the writer
SNAPSHOT_DELAY_S = 60.0
"""The daemon writes changed snapshots at most this often (and at stop), not after every edit."""
WRITER_IDLE_S = 1.0  # an idle writer looks at the queue again this often (a change wakes it at once)
JOB_FAILURE_PAUSE_S = 1.0  # after a batch failed by its own fault
WRITER_BACKOFF_MIN_S = 1.0
WRITER_BACKOFF_MAX_S = 30.0
"""A writer that fails for a reason outside its jobs retries after 1 s, doubling up to this."""
_TRANSIENT_SQLITE = frozenset({5, 6, 7, 8, 10, 13, 14, 15})
"""SQLite's primary result codes BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL."""
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EAGAIN,
                               errno.EBUSY, errno.EIO, errno.ENOMEM})

# -- start-up and shutdown
START_POLL_S = 0.2  # how soon a stop is noticed while the models load
STORE_RETRY_FIRST_S = 1.0  # first wait for a store server that does not answer, doubled up to...
STORE_RETRY_MAX_S = 30.0
STOP_POLL_S = 0.5  # how soon a stop is noticed while serving
STOP_MARGIN_S = 1.0
"""How long past the grace the servers are waited for (and the least grace the writer gets)."""
WRITER_STOP_S = 30.0
"""How long past that the writer is waited for: the batch in hand commits or rolls back."""


# -- errors -> status codes: ragd.errors.ERROR_TABLE -----------------------------------
@contextlib.contextmanager
def _rpc(context: grpc.ServicerContext) -> Iterator[None]:
    """Turn an error into the call's status: a RagdError by the table, anything else INTERNAL (logged)."""
    try:
        yield
    except grpc.RpcError:
        raise
    except Exception as exc:
        if not isinstance(exc, RagdError) and (context.code() is not None or not context.is_active()):
            raise  # context.abort() already set the status (it raises a bare Exception)
        outcome = outcome_for(exc)
        if outcome is INTERNAL and not isinstance(exc, RagdError):
            log.exception("internal error")
        context.abort(grpc.StatusCode[outcome.grpc_code], str(exc))


# -- proto <-> domain ---------------------------------------------------------------------
def _search_request(req: Any) -> SearchRequest:
    f = req.filters
    return SearchRequest(
        query=req.query, k=req.k, candidates=req.candidates,
        rerank=req.rerank if req.HasField("rerank") else None,
        filters=Filters(
            path_prefixes=tuple(f.path_prefixes), globs=tuple(f.globs), extensions=tuple(f.extensions),
            modified_after=f.modified_after_unix_ms / 1000 if f.modified_after_unix_ms else None,
            modified_before=f.modified_before_unix_ms / 1000 if f.modified_before_unix_ms else None,
            root=f.root or None,
        ),
        deadline_ms=req.deadline_ms, mode=req.mode, fusion=req.fusion, weights=dict(req.weights),
        like_chunk_id=req.like_chunk_id, like_path=req.like_path, like_line=req.like_line,
        like_same_file=req.like_same_file,
    )


def _response(result: SearchResult, stage: ragd_pb2.SearchResponse.Stage) -> Any:
    hits = [
        ragd_pb2.Hit(
            chunk_id=h.chunk_id, path=h.path, start_line=h.start_line, end_line=h.end_line,
            heading=h.heading, snippet=h.snippet, score=h.score, retrieval_score=h.retrieval_score,
            rerank_score=h.rerank_score, page=h.page, end_page=h.end_page, origin=h.origin,
        )
        for h in result.hits
    ]
    return ragd_pb2.SearchResponse(
        stage=stage, hits=hits, timings_ms=result.timings, candidates=result.candidates,
        reranked=result.reranked, rerank_window=result.rerank_window,
        models=ragd_pb2.Models(embedder=result.models.get("embedder") or "",
                               reranker=result.models.get("reranker") or ""),
        degraded=result.degraded, query_use=ragd_pb2.QueryUse(**result.query_use.to_json()),
    )


def _stage(result: SearchResult) -> Any:
    return ragd_pb2.SearchResponse.RERANKED if result.reranked else ragd_pb2.SearchResponse.RETRIEVAL


def _status_proto(st: Status) -> Any:
    return ragd_pb2.StatusResponse(
        serving=st.serving, files_indexed=st.files_indexed, files_pending=st.files_pending,
        files_failed=st.files_failed, chunks=st.chunks,
        roots=[ragd_pb2.RootStatus(
            path=r.path, files_indexed=r.files_indexed, files_pending=r.files_pending, files_failed=r.files_failed,
            failures=[ragd_pb2.FailedFile(path=f.path, status=f.status, reason=f.reason) for f in r.failures],
            current_file=r.current_file or "", watching=r.watching, suspended=r.suspended is not None,
            suspended_reason=r.suspended or "", watch_problem=r.watch_problem or "",
        ) for r in st.roots],
        models=ragd_pb2.Models(embedder=st.models.embedder, reranker=st.models.reranker or ""),
        degraded=st.degraded, current_file=st.current_file or "", chunks_per_second=st.throughput,
        tokens_per_second=st.tokens_per_second, eta_seconds=-1.0 if st.eta is None else st.eta, version=st.version,
        writer_error=st.writer_error or "", shared_chunks=st.shared_chunks, vector_index=st.vector_index,
    )


def _root_proto(root: Root) -> Any:
    return ragd_pb2.Root(path=root.path, configured=root.configured)


# -- registration: requests that do not parse get INVALID_ARGUMENT --------------------------
@dataclass(frozen=True)
class _Malformed:
    """A request whose bytes are not its message (a string field with bad UTF-8, a truncated field)."""

    why: str


def _parser(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return parse


def _checked(behaviour: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"request: not a valid message ({request.why}); send UTF-8 text in string fields")
        return behaviour(request, context)

    return call


def _add_service(server: grpc.Server, name: str, servicer: Any) -> None:
    """Register ``servicer`` for ``ragd.v1.<name>`` as the generated code would, but with
    request parsing that reports a malformed request as INVALID_ARGUMENT (gRPC's own parsing
    answers INTERNAL)."""
    service = ragd_pb2.DESCRIPTOR.services_by_name[name]
    handlers = {}
    for method in service.methods:
        kind = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = kind(
            _checked(getattr(servicer, method.name)),
            request_deserializer=_parser(getattr(ragd_pb2, method.input_type.name)),
            response_serializer=getattr(ragd_pb2, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


# -- servicers: protobuf in, the service layer, protobuf out ------------------------------
class SearchServicer(ragd_pb2_grpc.SearchServicer):
    def __init__(self, service: Service) -> None:
        self.s = service

    def _prepare(self, request: Any, context: grpc.ServicerContext) -> tuple[str, SearchOptions]:
        return self.s.prepare_search(_search_request(request), call_deadline_s=context.time_remaining(),
                                     cancelled=lambda: not context.is_active())

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _rpc(context):
            result = self.s.search(*self._prepare(request, context))
            return _response(result, _stage(result))

    def SearchStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        stages: list[Any] = []
        done = threading.Event()
        failure: list[Exception] = []

        def on_retrieval(partial: SearchResult) -> None:
            stages.append(_response(partial, ragd_pb2.SearchResponse.RETRIEVAL))
            done.set()

        with _rpc(context):
            query, opts = self._prepare(request, context)

            def run() -> None:
                try:
                    final = self.s.search(query, opts, on_retrieval=on_retrieval)
                    stages.append(_response(final, _stage(final)))
                except Exception as exc:
                    failure.append(exc)
                finally:
                    done.set()

            worker = threading.Thread(target=run, name="ragd-search-stream", daemon=True)
            worker.start()
            sent = 0
            while True:
                done.wait(STREAM_POLL_S)
                while sent < len(stages):
                    yield stages[sent]
                    sent += 1
                if not worker.is_alive() and sent >= len(stages):
                    break
                done.clear()
            if failure:
                raise failure[0]

    def GetChunk(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _rpc(context):
            c = self.s.get_chunk(request.chunk_id)
            return ragd_pb2.Chunk(chunk_id=c.chunk_id, path=c.path, start_line=c.start_line, end_line=c.end_line,
                                  heading=c.heading, text=c.text, page=c.page or 0, end_page=c.end_page or 0)

    def ReadFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _rpc(context):
            lines = self.s.read_file(request.path, request.from_line, request.count)
            return ragd_pb2.ReadFileResponse(path=lines.path, from_line=lines.from_line, lines=lines.lines,
                                             total_lines=lines.total_lines)


class IndexServicer(ragd_pb2_grpc.IndexServicer):
    def __init__(self, service: Service, *, remote: bool = False) -> None:
        self.s = service
        self.remote = remote  # calls come over TCP: roots are managed only where the config allows

    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _rpc(context):
            return _status_proto(self.s.status())

    def WatchStatus(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        interval = max(STATUS_MIN_INTERVAL_S, (request.interval_ms or STATUS_INTERVAL_MS) / 1000)
        stopping = self.s.d.stopping
        with _rpc(context), self.s.stream_slot():
            last: Any = None
            last_sent = 0.0
            while context.is_active() and not stopping.is_set():
                current = _status_proto(self.s.status())
                if current != last or time.monotonic() - last_sent > STATUS_KEEPALIVE_S:
                    yield current
                    last, last_sent = current, time.monotonic()
                stopping.wait(interval)

    def AddRoot(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _rpc(context):
            return _root_proto(self.s.add_root(request.path, remote=self.remote))

    def RemoveRoot(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _rpc(context):
            return ragd_pb2.RemoveRootResponse(files_removed=self.s.remove_root(request.path, remote=self.remote))

    def ListRoots(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _rpc(context):
            return ragd_pb2.ListRootsResponse(roots=[_root_proto(r) for r in self.s.list_roots()])

    def Reindex(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _rpc(context):
            return ragd_pb2.ReindexResponse(queued=self.s.reindex(request.root))


def _transient(exc: BaseException) -> bool:
    """A fault of the machine, not of the job (SQLite busy, locked, full, read-only or unable to
    open; a full disk, a read-only or vanished file system): the writer pauses and retries the
    jobs without counting it against them."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, sqlite3.Error) and (getattr(cur, "sqlite_errorcode", 0) & 0xFF) in _TRANSIENT_SQLITE:
            return True
        if isinstance(cur, OSError) and cur.errno in _TRANSIENT_ERRNOS:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


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


def _check_tcp(address: str, allow_remote: bool, source: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= MAX_PORT or not host:
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
    """Give the socket a private folder (0700 when it holds nothing else; refused when others
    could replace the socket), remove a stale socket, refuse when a daemon already answers
    (docs/architecture.md, "The daemon")."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise RagdError(f"the socket's folder {folder} can be written by others (mode {mode:o}), who could "
                        "replace the socket: choose another server.socket, or chmod go-w it")
    if mode & 0o077 and st.st_uid == os.getuid() and {e.name for e in os.scandir(folder)} <= {path.name}:
        os.chmod(folder, 0o700)
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
        self._writer_problem = ""  # why the writer cannot index now ("" when it can); see writer_problem()
        self._writer_problem_lock = threading.Lock()
        self.rescan = threading.Event()  # SIGHUP: the writer queues a scan of every root
        self._extra_roots: set[str] = set()
        # Guards _extra_roots and _roots_live: AddRoot may come while start() still loads the
        # models; start() then watches and scans it with the others (see add_root).
        self._roots_lock = threading.Lock()
        self._roots_live = False
        # Roots whose folder is missing, unreadable or suddenly empty -> why (also in the catalog):
        # kept, unscanned and left out of searches until the folder is back. _resuming: roots
        # whose return was noticed and whose scan is queued. Both guarded by _roots_lock.
        self._suspended: dict[str, str] = {}
        self._resuming: set[str] = set()
        self.engine: Engine | None = None
        self.serving = False  # what the health service reports for ""
        self.service = Service(self)
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

    def suspended_roots(self) -> dict[str, str]:
        """Suspended root -> why (its folder is missing, unreadable, or empty while files of it
        are indexed: deleted, renamed or unmounted). A suspended root stays a root (listed,
        removable); its files stay in the index but are left out of every search, and nothing of
        it is scanned or removed until the folder is back: then it is scanned, and only what
        changed meanwhile is embedded again."""
        with self._roots_lock:
            return dict(self._suspended)

    def watch_problems(self) -> dict[str, str]:
        """Root -> why it is not (fully) watched now (a folder that cannot be watched, the inotify
        watch limit): such a root is scanned every few minutes instead. Empty without watching."""
        return {str(root): why for root, why in self.watcher.trouble().items()}

    @staticmethod
    def _problem(root: str, catalog: Catalog) -> str | None:
        return root_problem(root, lambda: catalog.count_root_files(root))

    def _suspend(self, root: str, reason: str, catalog: Catalog) -> None:
        """The catalog first (searches read it), then the status: a root reported suspended is
        never still served, also while the catalog write waits on a locked database."""
        with self._roots_lock:
            if root not in self.root_paths():
                return
        catalog.suspend_root(root, reason)
        with self._roots_lock:
            if root not in self.root_paths():  # removed meanwhile: its catalog rows are gone
                return
            new = root not in self._suspended
            self._suspended[root] = reason
            self._resuming.discard(root)
        if new:
            log.warning("root %s is suspended: %s; its files are kept, not served, until the folder is back",
                        root, reason)

    def _resume(self, root: str, catalog: Catalog) -> bool:
        """Lift a root's suspension (its folder is back); True when it was suspended."""
        with self._roots_lock:
            was = self._suspended.pop(root, None) is not None
            self._resuming.discard(root)
        if was:
            catalog.resume_root(root)
            log.info("root %s is back: scanning it", root)
        return was

    def _recheck_suspended(self) -> None:
        """At the watcher's checks (every second): a suspended root whose folder is back gets a
        scan, which resumes it. Without a watcher the reconcile scans do it."""
        with self._roots_lock:
            waiting = [r for r in self._suspended if r not in self._resuming]
        for root in waiting:
            if self._problem(root, self.reader().catalog) is None and self.queue.put_scan(root, "resumed"):
                with self._roots_lock:
                    self._resuming.add(root)
                self.wake.set()

    def _filter_for(self, root: Path) -> PathFilter:
        private = inside(root, own_paths(self.config))
        for r in self.config.roots:
            if r.path == root:
                return PathFilter(r.include, r.exclude, private)
        return PathFilter(private=private)

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
        with self._roots_lock:
            self._extra_roots.discard(root)
            self._suspended.pop(root, None)
            self._resuming.discard(root)
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

    # lifecycle ----------------------------------------------------------------------
    def _set_health(self, serving: bool) -> None:
        self.serving = serving
        state = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            self.health.set(name, state)

    def _server(self, interceptors: tuple[Any, ...] = (), *, remote: bool = False) -> grpc.Server:
        """One gRPC server. Streams hold a worker for as long as they are open, so they get
        ``max_streams`` workers of their own beside the ``max_concurrent_rpcs`` for calls."""
        cfg = self.config.server
        limit = cfg.max_message_bytes
        calls = cfg.max_concurrent_rpcs + cfg.max_streams
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=min(calls, MAX_WORKERS) + SPARE_WORKERS,
                                       thread_name_prefix="ragd-rpc"),
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=calls,
        )
        _add_service(server, "Search", SearchServicer(self.service))
        _add_service(server, "Index", IndexServicer(self.service, remote=remote))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def start(self, engine_factory: Callable[[Config], Engine] | None = None) -> None:
        """Start up: bind and answer NOT_SERVING, load the models and the index, restore the
        roots, start watching and writing, then answer SERVING."""
        token = self._tcp_token()
        self._set_health(False)
        self._bind(token)
        self._load(engine_factory)
        self._restore_roots()
        self._start_watching()
        self._start_writer()
        self._set_health(True)

    def _tcp_token(self) -> str | None:
        """Check ``server.tcp`` and read (or make) the token TCP callers need; None without TCP."""
        cfg = self.config
        if not cfg.server.tcp:
            return None
        _check_tcp(cfg.server.tcp, cfg.server.allow_remote, str(cfg.source) if cfg.source else "<defaults>")
        return load_or_create_token(token_path(cfg))

    def _bind(self, token: str | None) -> None:
        """Listen on the Unix socket (0600 from the start) and, given a token, on TCP."""
        _prepare_socket(self.socket)
        uds = self._server()
        old_umask = os.umask(SOCKET_UMASK)
        try:
            uds.add_insecure_port(f"unix:{self.socket}")
        finally:
            os.umask(old_umask)
        uds.start()
        os.chmod(self.socket, SOCKET_MODE)
        self._servers.append(uds)
        if token is not None:
            tcp = self._server((TokenAuth(token),), remote=True)
            self.tcp_port = tcp.add_insecure_port(self.config.server.tcp)
            tcp.start()
            self._servers.append(tcp)

    def _load(self, engine_factory: Callable[[Config], Engine] | None) -> None:
        """Take the data folder's writer lock and load the models and the caches (minutes on a
        first start, which converts the models)."""
        cfg = self.config
        self.engine = (engine_factory or (lambda c: Engine(c)))(cfg)
        self._exit.enter_context(self.engine.writer())
        _ = self.engine.models
        self._open_store()
        _ = self.engine.sparse, self.engine.lexical  # load now
        self.engine.rerank_pace.prime()  # before SERVING: the first search with a deadline has a pace

    def _open_store(self) -> None:
        """Open the vector store; a store server that does not answer (``StoreUnavailable``)
        is waited for with backoff, NOT_SERVING, the reason in ``Status.writer_error`` and
        the log, until it answers or the daemon stops (which leaves this wait behind)."""
        assert self.engine is not None
        delay, waited = STORE_RETRY_FIRST_S, False
        while True:
            try:
                _ = self.engine.vectors
            except StoreUnavailable as exc:
                if self._report_problem(f"waiting for the vector store: {exc}", delay):
                    log.warning("waiting for the vector store, retrying with backoff: %s", exc)
                waited = True
                if self.stopping.wait(delay):
                    raise
                delay = min(delay * 2, STORE_RETRY_MAX_S)
                continue
            if waited:
                log.info("the vector store answers: loading goes on")
                with self._writer_problem_lock:
                    self._writer_problem = ""
            return

    def _restore_roots(self) -> None:
        """Jobs a crash left running go back to the queue; the roots are those of the catalog (also
        those added while loading) and of the config, and one whose folder is gone is suspended
        now, before SERVING, so its files are never served."""
        assert self.engine is not None
        self.queue.recover()
        catalog = self.engine.catalog
        with self._roots_lock:  # roots added while loading are in _extra_roots already
            self._extra_roots.update(catalog.roots())  # a root whose folder is gone stays a root
            for r in self.config.roots:
                catalog.add_root(str(r.path))
            self._suspended.update(catalog.suspended_roots())
            roots = sorted(self.root_paths())
        for root in roots:
            problem = self._problem(root, catalog)
            if problem is not None:
                self._suspend(root, problem, catalog)

    def _start_watching(self) -> None:
        """Queue a start scan of every root and watch them all; from here on ``add_root`` does it."""
        enabled = self.config.watch.enabled
        self.watcher.on_check = self._recheck_suspended
        with self._roots_lock:
            for root in sorted(self.root_paths()):
                self.queue.put_scan(root, "start")
                if enabled:
                    self.watcher.watch(Path(root), self._filter_for(Path(root)))
            self._roots_live = True
        if enabled:
            self.watcher.start()

    def _start_writer(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="ragd-writer", daemon=True)
        self._writer.start()

    # -- the writer -----------------------------------------------------------------------
    def writer_problem(self) -> str:
        """Why the writer cannot index now, "" when it can: a fault it retries with backoff (a
        lock another process holds, a full disk, a read-only catalog), or its thread ended.
        Searches still answer from what is committed meanwhile."""
        with self._writer_problem_lock:
            problem = self._writer_problem
        writer = self._writer
        if not problem and writer is not None and not writer.is_alive() and not self.stopping.is_set():
            return "the writer thread has ended: changes are not indexed any more (see the log); restart ragd"
        return problem

    def _writer_trouble(self, exc: BaseException, retry_in: float) -> None:
        """The writer failed for a reason outside the job: say so (Status, the Index service's
        health, the log once) until it works again."""
        if self._report_problem(f"indexing is paused: {type(exc).__name__}: {exc}", retry_in):
            log.warning("indexing paused, retrying with backoff: %s: %s", type(exc).__name__, exc,
                        exc_info=not _transient(exc))
        self._set_index_health(False)

    def _report_problem(self, problem: str, retry_in: float) -> bool:
        """Put ``problem`` in ``writer_problem`` (Status.writer_error) with when it is retried and
        since when it lasts (kept from the problem it replaces); whether it is a new one."""
        since = time.strftime("%H:%M:%S")
        with self._writer_problem_lock:
            first = not self._writer_problem
            if not first:
                since = self._writer_problem.rsplit("since ", 1)[-1].rstrip(")")
            self._writer_problem = f"{problem} (retrying in {retry_in:.0f} s; since {since})"
        return first

    def _writer_works(self) -> None:
        with self._writer_problem_lock:
            was, self._writer_problem = self._writer_problem, ""
        if was:
            log.info("indexing resumed")
            self._set_index_health(True)

    def _set_index_health(self, ok: bool) -> None:
        """The Index service's health follows the writer (searches keep ``""`` and Search
        SERVING: they still answer); never SERVING while loading or stopping."""
        if ok and (self.stopping.is_set() or not self.serving):
            return
        state = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set("ragd.v1.Index", state)

    def _write_loop(self) -> None:
        """Take jobs, index them, mark them done; forever, whatever fails. A job's own failure
        goes back to the queue counting an attempt; a fault of the machine (``_transient``) or
        of the queue itself pauses the writer with backoff, the jobs in hand going back without
        an attempt, and ``writer_problem`` says so until it works again."""
        assert self.engine is not None
        engine = self.engine
        engine.snapshot_delay_s = SNAPSHOT_DELAY_S  # snapshots when idle, not after every edit
        # Indexing leaves one core to searches: torch's thread count is per thread, so this caps
        # only the writer's batches (the OpenVINO path has its own Scheduler).
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
        interval = self.config.watch.reconcile_interval_s
        next_reconcile = time.monotonic() + interval if interval else None
        indexer = Indexer(engine, progress=self.status_info, should_stop=self.stopping.is_set)
        try:
            self._write_jobs(indexer, next_reconcile, interval)
        finally:
            if not self.stopping.is_set():  # ended anyway (a BaseException): health says so
                self._set_index_health(False)

    def _write_jobs(self, indexer: Indexer, next_reconcile: float | None, interval: int) -> None:
        """The writer's loop (see ``_write_loop``)."""
        engine = indexer.engine
        settle: Callable[[], None] | None = None  # the queue update still owed for the jobs in hand
        failures = 0
        while not self.stopping.is_set():
            try:
                if settle is not None:
                    settle()
                    settle = None
                if self.rescan.is_set():
                    self.rescan.clear()
                    for root in self.root_paths():
                        self.queue.put_scan(root, "signal")
                if next_reconcile is not None and time.monotonic() >= next_reconcile:
                    for root in self.root_paths():
                        self.queue.put_scan(root, "periodic")
                    next_reconcile = time.monotonic() + interval
                jobs = self.queue.take(self.config.watch.max_batch_paths)
                if not jobs:
                    with self.writer_mutex:
                        engine.save_snapshots()  # a deferred snapshot, once its delay has passed
                    self._writer_works()
                    failures = 0
                    self.wake.wait(WRITER_IDLE_S)
                    self.wake.clear()
                    continue
                ids = [j.id for j in jobs]
                try:
                    with self.writer_mutex:
                        self._run_jobs(indexer, jobs)
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    if _transient(exc):
                        settle = functools.partial(self.queue.retry, ids, why, count=False)
                        raise
                    log.exception("indexing batch failed")  # this job's own fault: an attempt
                    settle = functools.partial(self.queue.retry, ids, why)
                    settle()
                    settle = None
                    self.stopping.wait(JOB_FAILURE_PAUSE_S)
                    continue
                if self.stopping.is_set():  # interrupted between batches: again at the next start
                    settle = functools.partial(self.queue.retry, ids, "daemon stopped", count=False)
                else:
                    settle = functools.partial(self.queue.done, ids)
                settle()
                settle = None
                self._writer_works()
                failures = 0
            except Exception as exc:  # the writer never dies: it pauses, says why, and retries
                failures += 1
                delay = min(WRITER_BACKOFF_MAX_S, WRITER_BACKOFF_MIN_S * 2 ** min(failures - 1, 8))
                self._writer_trouble(exc, delay)
                self.stopping.wait(delay)
        if settle is not None:  # what is still owed; else recover() requeues it at the next start
            with contextlib.suppress(Exception):
                settle()

    def _run_jobs(self, indexer: Indexer, jobs: list[Job]) -> None:
        info = self.status_info
        by_root: dict[str, list[Job]] = {}
        for job in jobs:
            by_root.setdefault(job.root, []).append(job)
        for root, root_jobs in by_root.items():
            if self.stopping.is_set():
                return
            if root not in self.root_paths():
                continue
            catalog = indexer.engine.catalog
            problem = self._problem(root, catalog)
            if problem is not None:  # nothing removed: the scan once it is back covers these jobs
                self._suspend(root, problem, catalog)
                continue
            scan = self._resume(root, catalog) or any(j.kind == "scan" for j in root_jobs)
            with info.lock:
                info.current_root = root
                info.files_todo = info.files_done = info.chunks = info.tokens = 0
                info.busy_since = time.monotonic()
            try:
                # sync, not run: a root that goes meanwhile is reported, not an error
                paths = [Path(root)] if scan else sorted({Path(j.path) for j in root_jobs if j.path})
                report = indexer.sync(Path(root), paths)
                for gone, why in report.suspended.items():  # it went while being scanned
                    self._suspend(gone, why, catalog)
            finally:
                with info.lock:
                    info.current_root = info.current_file = ""
                    info.busy_since = None
                    info.changes += 1

    def stop(self, grace: float | None = None) -> None:
        """Shut down: stop taking calls (``grace`` seconds for those in flight), stop watching,
        let the writer finish or roll back the batch in hand, then close everything."""
        grace = self.config.server.shutdown_grace_s if grace is None else grace
        self.stopping.set()
        self.wake.set()
        self._set_health(False)
        servers_stopped = [s.stop(grace) for s in self._servers]
        with contextlib.suppress(Exception):
            self.watcher.stop()
        self._join_writer(grace)
        for stopped in servers_stopped:
            stopped.wait(grace + STOP_MARGIN_S)
        self._close()

    def _join_writer(self, grace: float) -> None:
        if self._writer is not None:
            self._writer.join(timeout=max(grace, STOP_MARGIN_S) + WRITER_STOP_S)

    def _close(self) -> None:
        """Close the readers and the engine (saving every snapshot still owed), the queue and
        the socket."""
        with self._readers_lock:
            for r in self._all_readers:
                with contextlib.suppress(Exception):
                    r.close()
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.save_snapshots(force=True)  # the deferred ones too: a fast next start
            self.engine.close()
        self._exit.close()
        self.queue.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


def serve(config: Config, ready: Callable[[Daemon], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT and return the exit status: set up logging and the
    signals, start up, serve until a stop, shut down (docs/architecture.md, "The daemon")."""
    _configure_logging()
    daemon = Daemon(config)
    _handle_signals(daemon)
    _startup(daemon)
    _announce(daemon)
    if ready is not None:
        ready(daemon)
    _main_loop(daemon)
    daemon.stop()
    log.info("stopped")
    return 0


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="ragd: %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports which CPU build it picked


def _handle_signals(daemon: Daemon) -> None:
    """SIGTERM/SIGINT stop the daemon, a second one forces exit (``_forced_exit``); SIGHUP
    rescans every root. The handlers stay to the end, so a late signal never kills the process."""
    seen: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: rescanning every root")
            daemon.rescan.set()
            daemon.wake.set()
            return
        seen.append(signum)
        if len(seen) > 1:
            _forced_exit(daemon, signum)
        log.info("stopping (signal %d); a second signal forces exit", signum)
        daemon.stopping.set()

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)


def _startup(daemon: Daemon) -> None:
    """``Daemon.start()`` on a thread of its own, so that a stop while the models load is acted
    on at once (``_abandon_start``); a failed start is stopped and raised."""
    failure: list[BaseException] = []
    loaded = threading.Event()

    def start() -> None:
        try:
            daemon.start()
        except BaseException as exc:
            failure.append(exc)
        finally:
            loaded.set()

    threading.Thread(target=start, name="ragd-start", daemon=True).start()
    while not loaded.wait(START_POLL_S):
        if daemon.stopping.is_set():  # a stop while the models load: leave the load behind
            _abandon_start(daemon)
    if failure:
        daemon.stop(0)
        raise failure[0]


def _announce(daemon: Daemon) -> None:
    if not daemon.root_paths():
        log.info("no roots yet: add one with `ragd roots add PATH` or [[roots]] in the config")
    log.info("serving on unix:%s%s", daemon.socket,
             f" and tcp {daemon.config.server.tcp} (port {daemon.tcp_port})" if daemon.tcp_port else "")


def _main_loop(daemon: Daemon) -> None:
    """Serve until a stop is asked for (a signal sets ``daemon.stopping``)."""
    while not daemon.stopping.wait(STOP_POLL_S):
        pass


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def _forced_exit(daemon: Daemon, signum: int) -> None:
    """A second signal: exit now (128 + its number). The batch in hand is one SQLite
    transaction, rolled back at the next open; only the socket is worth removing first."""
    with contextlib.suppress(OSError):
        daemon.socket.unlink()
    log.info("forced exit (signal %d)", signum)
    _flush_logs()
    os._exit(128 + signum)


def _abandon_start(daemon: Daemon) -> None:
    """Stop requested while ``start()`` still loads the models (minutes on a first start):
    stop answering, remove the socket and exit 0 without waiting for the load, which may be
    inside a conversion that cannot be interrupted. Nothing is lost: the catalog is SQLite
    (an open transaction rolls back), a conversion writes to a temp folder first."""
    daemon._set_health(False)
    for server in list(daemon._servers):
        with contextlib.suppress(Exception):
            server.stop(0)
    with contextlib.suppress(OSError):
        daemon.socket.unlink()
    _flush_logs()
    # Straight to the descriptor: the loading thread may be inside a library call that holds
    # or redirects Python's stderr stream, and os._exit flushes nothing.
    with contextlib.suppress(OSError):
        os.write(2, b"ragd: stopped while loading\n")
    os._exit(0)
