"""The single writer: scan -> extract -> chunk -> embed (length-sorted batches) -> commit.

Incremental and idempotent: a file whose size and mtime are unchanged is not read; a file
whose bytes are unchanged is not chunked again; a chunk whose text already has an embedding
for the current model is not embedded again. Each batch of files is committed in one SQLite
transaction, after which the FAISS cache follows; a per-file failure is recorded on the
file and never aborts the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ragd.auth import own_paths
from ragd.chunk import chunk_document
from ragd.config import RootConfig
from ragd.engine import Engine
from ragd.errors import CancelledError, ExtractError, UsageError
from ragd.extract import DocumentError, Limits, extract
from ragd.extract import configure as configure_extract
from ragd.paths import PathFilter, inside
from ragd.store.catalog import FileRow, FileUpdate, NewChunk, NewEmbedding
from ragd.walk import walk

EXTRACT_ATTEMPTS = 3
"""Reads of a file that keeps changing while it is extracted before its latest bytes are kept."""


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Progress(Protocol):
    """Receives indexing progress; the CLI draws it as a progress bar."""

    def total(self, files: int) -> None: ...

    def advance(self, files: int = 0, chunks: int = 0, tokens: int = 0, current: str | None = None) -> None: ...


@dataclass
class IndexReport:
    """What one run did; ``failures`` lists (path, status, reason) for files not indexed."""

    files_seen: int = 0
    files_indexed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    files_failed: int = 0
    files_skipped: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    tokens_embedded: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    suspended: dict[str, str] = field(default_factory=dict)  # root -> why its files were kept unscanned


@dataclass(frozen=True)
class Scope:
    """One place to index: a registered root and the path (the root or below it) to scan."""

    root: Path
    root_id: int
    target: Path
    filter: PathFilter


@dataclass
class _Pending:
    update: FileUpdate
    tokens: int = 0


def _resolve_scopes(engine: Engine, paths: Sequence[Path]) -> list[Scope]:
    """Map command-line paths (or, with none, the configured and registered roots) to scopes."""
    configured = {r.path: r for r in engine.config.roots}
    registered = {Path(p) for p in engine.catalog.roots()}
    known_roots = sorted(set(configured) | registered, key=lambda p: len(p.parts), reverse=True)
    targets: list[tuple[Path, Path]] = []
    if not paths:
        if not known_roots:
            raise UsageError("nothing to index: give a PATH, or add [[roots]] to the config")
        targets = [(root, root) for root in sorted(set(configured) | registered)]
    for raw in paths:
        target = Path(os.path.abspath(os.path.expanduser(raw)))
        if not target.exists():
            raise UsageError(f"path does not exist: {raw}")
        root = next((r for r in known_roots if target == r or r in target.parents), None)
        if root is None:
            root = target if target.is_dir() else target.parent
        targets.append((root, target))
    return [scope_for(engine, root, target) for root, target in targets]


def root_problem(root: Path | str, indexed: Callable[[], int]) -> str | None:
    """Why ``root`` must be suspended rather than scanned, or None when it can be scanned.

    A root whose folder is missing, not a folder, unreadable, or empty while ``indexed()`` (its
    files in the catalog) is not 0 looks like an unmounted drive or share, or a folder deleted
    or renamed: scanning it would remove all its files from the index, and a remount would
    embed them all again. Its files are kept (and not served: see ``Daemon``) until it is back.
    """
    path = os.fspath(root)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "the folder is missing (deleted, renamed or unmounted)"
    except OSError as exc:
        return f"the folder cannot be read: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder any more"
    try:
        with os.scandir(path) as entries:
            empty = next(entries, None) is None
    except OSError as exc:
        return f"the folder cannot be listed: {exc.strerror or exc}"
    if empty:
        count = indexed()
        if count:
            return f"the folder is empty while {count} of its files are indexed (unmounted?)"
    return None


def scope_for(engine: Engine, root: Path, target: Path) -> Scope:
    """The scope for ``target`` (the root or a path below it), registering the root."""
    configured = {r.path: r for r in engine.config.roots}
    cfg = configured.get(root, RootConfig(path=root))
    root_id = engine.catalog.add_root(str(root))
    return Scope(root, root_id, target, PathFilter(cfg.include, cfg.exclude, inside(root, own_paths(engine.config))))


def _walk(scope: Scope, unlisted: list[str] | None = None) -> Iterator[tuple[Path, os.stat_result]]:
    """Regular files under the scope that pass the filters; symlinks never lead out of the root.

    Any depth (``ragd.walk`` keeps its own stack). A folder that cannot be listed for a reason
    other than being gone (no access, a path beyond PATH_MAX, an I/O error) is skipped and
    added to ``unlisted``: its files are not known to be gone, so they must not be removed."""
    root_real = os.path.realpath(scope.root)

    def accept(path: Path) -> os.stat_result | None:
        try:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(path)
                if not (real == root_real or real.startswith(root_real + os.sep)):
                    return None
                st = path.stat()
        except OSError:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    if scope.target.is_file() or scope.target.is_symlink():
        rel = scope.target.relative_to(scope.root).as_posix()
        st = accept(scope.target)
        if st is not None and scope.filter.accepts(rel):
            yield scope.target, st
        return
    def failed(exc: OSError) -> None:
        if unlisted is not None and not isinstance(exc, FileNotFoundError | NotADirectoryError):
            unlisted.append(os.fsdecode(exc.filename) if exc.filename is not None else str(scope.target))

    for dirpath, dirnames, filenames in walk(str(scope.target), failed):
        base = Path(dirpath)
        rel_dir = base.relative_to(scope.root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if scope.filter.accepts_dir(prefix + d))
        for name in sorted(filenames):
            if not scope.filter.accepts(prefix + name):
                continue
            path = base / name
            st = accept(path)
            if st is not None:
                yield path, st


class Indexer:
    """Brings the catalog and vectors in line with the files on disk."""

    def __init__(
        self, engine: Engine, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None
    ) -> None:
        self.engine = engine
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        self.cfg = engine.config
        self.embedder = engine.models.embedder
        self.max_tokens = min(self.cfg.chunking.max_tokens, self.embedder.max_tokens)
        self.overlap = min(self.cfg.chunking.overlap_tokens, self.max_tokens // 2)
        self.limits = Limits(**dataclasses.asdict(self.cfg.extract))
        configure_extract(self.limits)  # ReadFile / GetChunk extract within the same limits

    def run(self, paths: Sequence[Path] = (), *, lock: bool = True) -> IndexReport:
        """Index ``paths`` (or every known root). ``lock=False`` when the caller already
        holds the data folder's writer lock (the daemon holds it for its lifetime)."""
        started = time.monotonic()
        report = IndexReport()
        engine = self.engine
        with engine.writer() if lock else contextlib.nullcontext():
            scopes = _resolve_scopes(engine, paths)
            self._run_scopes(scopes, report)
        report.failures = [
            f for f in engine.catalog.failed_files() if any(_under(Path(f[0]), s.target) for s in scopes)
        ]
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def sync(self, root: Path, paths: Sequence[Path]) -> IndexReport:
        """Bring specific paths under ``root`` up to date: what exists is indexed (a folder
        is scanned), what no longer exists leaves the index. The caller holds the writer lock."""
        started = time.monotonic()
        report = IndexReport()
        scopes = [scope_for(self.engine, root, p) for p in paths]
        self._run_scopes(scopes, report)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def _run_scopes(self, scopes: Sequence[Scope], report: IndexReport) -> None:
        engine = self.engine
        _ = engine.store  # opened (and made to agree with the catalog) before changing anything
        for scope in scopes:
            if self.should_stop():
                break
            self._index_scope(scope, report)
        engine.collect_garbage()
        engine.check_mirrors()  # a stale cache is rebuilt, never served
        engine.save_snapshots()

    def _index_scope(self, scope: Scope, report: IndexReport) -> None:
        catalog = self.engine.catalog
        known = catalog.files_under(str(scope.target))
        seen: set[str] = set()
        unlisted: list[str] = []
        todo: list[tuple[Path, os.stat_result, FileRow | None]] = []
        for path, st in _walk(scope, unlisted):
            key = str(path)
            seen.add(key)
            report.files_seen += 1
            row = known.get(key)
            if row is not None and self._unchanged(row, st):
                report.files_unchanged += 1
                continue
            todo.append((path, st, row))
        gone = [p for p in known if p not in seen and not any(_under(Path(p), Path(u)) for u in unlisted)]
        if gone:
            # Checked after the walk: a root unmounted or deleted meanwhile keeps its files.
            whole = scope.target == scope.root
            problem = root_problem(scope.root, lambda: len(known if whole else catalog.files_under(str(scope.root))))
            if problem is not None:
                report.suspended[str(scope.root)] = problem
                catalog.suspend_root(str(scope.root), problem)  # also for `ragd index`: not served
                return
        if scope.target == scope.root and str(scope.root) in catalog.suspended_roots():
            catalog.resume_root(str(scope.root))  # walked whole again: served again
        if gone:
            result = catalog.apply(self.engine.model_key, [], [], deleted_paths=gone)
            self.engine.forget_chunks(result.removed_ids)
            report.files_removed += len(gone)
        if self.progress is not None:
            self.progress.total(len(todo))
        batch: list[_Pending] = []
        batch_chunks = 0
        for path, st, row in todo:
            if self.should_stop():
                break
            pending = self._prepare(scope, path, st, row, report)
            if pending is None:
                continue
            batch.append(pending)
            batch_chunks += len(pending.update.chunks or ())
            if batch_chunks >= self.cfg.indexing.batch_chunks:
                self._flush(batch, report)
                batch, batch_chunks = [], 0
        if batch:
            self._flush(batch, report)

    def _unchanged(self, row: FileRow, st: os.stat_result) -> bool:
        if row.size != st.st_size or row.mtime_ns != st.st_mtime_ns:
            return False
        return row.status != "indexed" or row.model == self.engine.model_key

    def _prepare(
        self, scope: Scope, path: Path, st: os.stat_result, row: FileRow | None, report: IndexReport
    ) -> _Pending | None:
        """Read, extract and chunk one file; failures become a file row with the reason."""
        def update(status: str, digest: str | None, error: str | None = None, **extra: Any) -> FileUpdate:
            return FileUpdate(scope.root_id, str(path), st.st_size, st.st_mtime_ns, digest, status, error, **extra)

        if st.st_size > self.cfg.indexing.max_file_bytes:
            report.files_skipped += 1
            return _Pending(update("skipped", None, f"file too large ({st.st_size} bytes > indexing.max_file_bytes)",
                                   chunks=()))
        for attempt in range(EXTRACT_ATTEMPTS):
            try:
                data = path.read_bytes()
            except OSError as exc:
                report.files_failed += 1
                return _Pending(update("failed", None, f"cannot read: {exc.strerror or exc}", chunks=()))
            digest = content_hash(data)
            if (row is not None and row.content_hash == digest
                    and (row.status != "indexed" or row.model == self.engine.model_key)):
                # Touched but not changed: record the new stat, keep the chunks.
                report.files_unchanged += 1
                return _Pending(update(row.status, digest, row.error, chunks=None))
            failure: tuple[str, str] | None = None
            try:
                doc = extract(path, data, self.limits, self.should_stop)
            except CancelledError:  # stopping: not recorded, so the next run reads it again
                return None
            except DocumentError as exc:  # a document that cannot be read: damaged, encrypted, over a limit
                failure = ("failed", str(exc))
            except ExtractError as exc:  # not text, and no extractor reads it
                failure = ("skipped", str(exc))
            try:
                after = path.stat()
            except OSError:
                break
            if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns) or attempt + 1 == EXTRACT_ATTEMPTS:
                break
            st = after  # changed while it was read or extracted: read it again (the stat recorded stays older)
        if failure is not None:
            status, reason = failure
            if status == "failed":
                report.files_failed += 1
            else:
                report.files_skipped += 1
            return _Pending(update(status, digest, reason, chunks=()))
        try:
            chunks = chunk_document(doc.text, doc.kind, self.embedder.count_tokens, self.max_tokens, self.overlap,
                                    headings=doc.headings, page_lines=doc.page_lines)
        except Exception as exc:  # a chunker bug on one file must not stop the run
            report.files_failed += 1
            return _Pending(update("failed", digest, f"cannot chunk: {type(exc).__name__}: {exc}", chunks=()))
        new = tuple(
            NewChunk(c.text, c.start_line, c.end_line, tuple(c.heading), c.token_count,
                     content_hash(c.text.encode("utf-8")), c.page, c.end_page)
            for c in chunks
        )
        report.files_indexed += 1
        return _Pending(
            update("indexed", digest, kind=doc.kind, encoding=doc.encoding, chunks=new),
            tokens=sum(c.token_count for c in new),
        )

    def _flush(self, batch: list[_Pending], report: IndexReport) -> None:
        """Embed what is missing, commit the batch in one transaction, then update FAISS."""
        engine = self.engine
        model = engine.model_key
        chunks = [c for p in batch for c in (p.update.chunks or ())]
        have = engine.catalog.embedded_hashes(model, (c.content_hash for c in chunks))
        todo: dict[str, NewChunk] = {}
        for c in chunks:
            if c.content_hash not in have and c.content_hash not in todo:
                todo[c.content_hash] = c
        new_embeddings = self._embed(list(todo.values()), batch)
        report.chunks_embedded += len(new_embeddings)
        report.tokens_embedded += sum(c.token_count for c in todo.values())
        report.chunks_reused += len(chunks) - len(new_embeddings)
        result = engine.catalog.apply(model, new_embeddings, [p.update for p in batch])
        engine.batch_written(new_embeddings, result)

    def _embed(self, chunks: list[NewChunk], batch: list[_Pending]) -> list[NewEmbedding]:
        """Embed in length-sorted groups so each model batch pads little; report progress."""
        out: list[NewEmbedding] = []
        order = sorted(chunks, key=lambda c: c.token_count)
        group = max(1, self.cfg.models.batch_size)
        files_left = len(batch)
        for start in range(0, len(order), group):
            part = order[start : start + group]
            with self.engine.gate.background(self.embedder):  # a waiting search goes first
                emb = self.embedder.embed_documents([c.text for c in part])
            for i, c in enumerate(part):
                out.append(NewEmbedding(
                    chunk_hash=c.content_hash,
                    dense=emb.dense[i],
                    sparse=emb.sparse[i] if emb.sparse is not None else None,
                    colbert=emb.colbert[i] if emb.colbert is not None else None,
                ))
            if self.progress is not None:
                self.progress.advance(chunks=len(part), tokens=sum(c.token_count for c in part))
        if self.progress is not None:
            self.progress.advance(files=files_left, current=batch[-1].update.path if batch else None)
        return out


def _under(path: Path, target: Path) -> bool:
    return path == target or target in path.parents


def index_paths(engine: Engine, paths: Iterable[Path] = (), progress: Progress | None = None) -> IndexReport:
    """Index ``paths`` (or every configured and registered root) into ``engine``."""
    return Indexer(engine, progress).run(list(paths))


@dataclass
class WriterStatus:
    """What the daemon's writer thread is doing (a ``Progress``, read by Status and
    WatchStatus under its lock)."""

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
