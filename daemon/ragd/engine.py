"""The opened index: catalog, vector cache and models for one data folder.

The indexer, the search path, the CLI and the server all work through an ``Engine``; it
owns the SQLite connection, loads the FAISS snapshot (or rebuilds it from SQLite) and holds
the models with the reasons they are degraded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ragd.errors import RagdError
from ragd.models.base import Holds, LoadedModels, Scheduled
from ragd.rerank import RerankPace
from ragd.store.catalog import BatchResult, Catalog, NewEmbedding
from ragd.store.codec import arrays as sparse_arrays
from ragd.store.postings import LexicalIndex, Postings, SparseIndex
from ragd.store.private import private_dir, private_folder_files
from ragd.store.vectors import VectorIndex

if TYPE_CHECKING:
    from ragd.config import Config

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=Postings)


def _zip_intact(path: Path) -> bool:
    """Whether every member of the zip (npz) at ``path`` matches its CRC-32: numpy reads
    arrays without checking it, so a damaged byte would otherwise be served."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


class ModelGate:
    """Serialises use of the models, searches first: an indexing batch waits while any
    search is waiting, so a query never queues behind more than the batch in hand.

    Models that schedule themselves (``schedules_itself``: the OpenVINO backend, where the
    indexing batches leave a core free for searches) pass through. ``hold`` keeps indexing
    batches out for a while (a search with a deadline, between its rerank batches)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0
        self._holds = Holds(self._cond)

    @contextlib.contextmanager
    def hold(self, model: Scheduled | None = None) -> Iterator[None]:
        """While inside, indexing batches do not start (one already running finishes);
        foreground work still takes the model batch by batch."""
        if model is not None and model.schedules_itself:
            with model.hold():
                yield
            return
        with self._holds():
            yield

    @contextlib.contextmanager
    def foreground(self, model: Scheduled | None = None) -> Iterator[None]:
        if model is not None and model.schedules_itself:
            yield
            return
        with self._cond:
            self._waiting += 1
            while self._busy:
                self._cond.wait()
            self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    @contextlib.contextmanager
    def background(self, model: Scheduled | None = None) -> Iterator[None]:
        if model is not None and model.schedules_itself:
            yield
            return
        with self._cond:
            while self._busy or self._waiting or self._holds.count:
                self._cond.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class Engine:
    """Index state for ``config.data_dir``; models are loaded on first use."""

    def __init__(self, config: Config, models: LoadedModels | None = None, *, rerank: bool = True,
                 mirrors: bool = True) -> None:
        self.config = config
        # Searches read in-memory mirrors of the sparse weights and the full-text rows, built
        # on first use (seconds for a large index); a one-shot search in a process of its own
        # asks SQLite instead (mirrors=False).
        self.mirrors = mirrors
        self.data_dir = config.data_dir
        self._models = models
        self._want_reranker = rerank
        self.catalog = Catalog(self.data_dir / "catalog.db")
        # Snapshots may be older versions' 0644 files, or a killed save's temp files.
        private_folder_files(self.data_dir / "vectors")
        self._vectors: VectorIndex | None = None
        self._vectors_saved: int | None = None  # catalog generation of the FAISS snapshot on disk
        # Snapshots are written at most this often (seconds; 0 = at every save_snapshots): the
        # daemon defers them, so a one-line edit does not rewrite and fsync every snapshot.
        self.snapshot_delay_s = 0.0
        self._unsaved_since: float | None = None
        self._sparse: SparseIndex | None = None
        self._lexical: LexicalIndex | None = None
        self._mirrors_saved: dict[str, int] = {}  # mirror -> catalog generation of its snapshot
        self._model_key: int | None = None
        self.gate = ModelGate()
        # The reranker's seconds per pair token, for searches with a deadline; ``prime`` it while
        # nobody waits (the daemon at start-up), and every reranking search updates it.
        self.rerank_pace = RerankPace(lambda: self.models.reranker, config.search.rerank_max_tokens,
                                      config.search.rerank_floor)
        # One load at a time: a thread asking for the models, the vectors or the model key while
        # another loads them (e.g. a Search or Status call during a first-start conversion) waits
        # for that load instead of starting its own on the same SQLite connection.
        self._load_lock = threading.RLock()
        self._side: concurrent.futures.ThreadPoolExecutor | None = None
        self._side_catalogs: list[Catalog] = []
        self._side_local = threading.local()

    def reader(self) -> Engine:
        """Another catalog connection sharing this engine's models, vectors and gate, for a
        thread that searches while this one writes (SQLite WAL lets readers run alongside).

        Loads this engine first (or waits for the load in progress): once loaded, nothing
        here touches this engine's connection, which belongs to its writer."""
        with self._load_lock:
            models, vectors, key = self.models, self.vectors, self.model_key
            sparse, lexical = self.sparse, self.lexical
        other = Engine(self.config, models, rerank=self._want_reranker)
        other._vectors = vectors
        other._model_key = key
        other._sparse = sparse
        other._lexical = lexical
        other.gate = self.gate
        other.rerank_pace = self.rerank_pace
        return other

    # -- models -----------------------------------------------------------------------
    @property
    def models(self) -> LoadedModels:
        if self._models is None:
            with self._load_lock:
                if self._models is None:
                    from ragd.models import load_models

                    self._models = load_models(self.config.models, rerank=self._want_reranker)
        return self._models

    @property
    def model_key(self) -> int:
        if self._model_key is None:
            with self._load_lock:
                if self._model_key is None:
                    emb = self.models.embedder
                    self._model_key = self.catalog.model_key(emb.model_id, emb.dim)
        return self._model_key

    # -- vectors ----------------------------------------------------------------------
    def _snapshot_path(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.models.embedder.model_id)
        return self.data_dir / "vectors" / f"{slug}.faiss"

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index for the current embedder: the snapshot if current, else rebuilt."""
        if self._vectors is None:
            with self._load_lock:
                if self._vectors is None:
                    self._vectors = self._load_vectors()
        return self._vectors

    def _load_vectors(self) -> VectorIndex:
        """The snapshot when its own label and its ids agree with the catalog, else rebuilt."""
        emb = self.models.embedder
        generation = self.catalog.generation()
        index = VectorIndex.load(self._snapshot_path(), generation, emb.model_id, emb.dim,
                                 expect=self._catalog_ids())
        if index is None:
            index = VectorIndex.rebuild(self.catalog, self.model_key, emb.dim)
            self._save_vectors(index)
        else:
            self._vectors_saved = generation
        return index

    def _catalog_ids(self) -> tuple[int, int]:
        """(count, sum) of the ids of the chunks that have a vector of this embedder: what the
        FAISS cache must hold."""
        row = self.catalog.db.execute(
            "SELECT count(*), coalesce(sum(c.id), 0) FROM chunks c "
            "JOIN embeddings e ON e.model = ? AND e.chunk_hash = c.content_hash", [self.model_key],
        ).fetchone()
        return int(row[0]), int(row[1])

    @property
    def sparse(self) -> SparseIndex | None:
        """The in-memory mirror of the embedder's sparse weights (None for an embedder
        without them), built from the catalog on first use."""
        if self._sparse is None and self.models.embedder.has_sparse:
            with self._load_lock:
                if self._sparse is None:
                    self._sparse = self._load_mirror(SparseIndex, "sparse")
        return self._sparse

    @property
    def lexical(self) -> LexicalIndex:
        """The in-memory BM25 mirror of the catalog's full-text rows, built on first use."""
        if self._lexical is None:
            with self._load_lock:
                if self._lexical is None:
                    self._lexical = self._load_mirror(LexicalIndex, "lexical")
        return self._lexical

    def _mirror_snapshot(self, name: str) -> tuple[Path, str]:
        """Where the snapshot of mirror ``name`` lives and what it is labelled with (the sparse
        weights belong to one embedder; the full-text rows to none)."""
        if name == "sparse":
            return self._snapshot_path().with_suffix(".sparse.npz"), self.models.embedder.model_id
        return self.data_dir / "vectors" / "lexical.npz", "lexical"

    def _mirror_source(self, name: str) -> tuple[int, Callable[[], Postings]]:
        """How many keys the catalog holds for mirror ``name``, and how to build it from there."""
        if name == "sparse":
            key = self.model_key
            return self.catalog.count_sparse(key), lambda: SparseIndex.build(self.catalog.sparse_rows(key))
        return self.catalog.count_chunks(), lambda: LexicalIndex.build(self.catalog.lexical_rows())

    def _load_mirror(self, kind: type[M], name: str) -> M:
        """The snapshot of mirror ``name`` when it holds the catalog's current generation (and
        as many keys), else built from the catalog and saved."""
        path, label = self._mirror_snapshot(name)
        generation = self.catalog.generation()
        index = kind.load(path, generation, label) if _zip_intact(path) else None
        count, build = self._mirror_source(name)
        if index is not None and index.count == count:
            self._mirrors_saved[name] = generation
            return index
        built = build()
        assert isinstance(built, kind)
        self._save_mirror(name, built, generation)
        return built

    def _save_mirror(self, name: str, mirror: Postings, generation: int) -> None:
        """Snapshot one mirror; a snapshot that cannot be written (a full disk, a read-only
        data folder) is only a slower next start, so it is logged, not raised."""
        path, label = self._mirror_snapshot(name)
        try:
            mirror.save(path, generation, label)
        except OSError as exc:
            log.warning("cannot save the %s mirror's snapshot %s (%s); the next start builds it again",
                        name, path, exc)
            return
        self._mirrors_saved[name] = generation

    def check_mirrors(self) -> list[str]:
        """Rebuild an in-memory mirror whose size disagrees with the catalog (a stale cache is
        rebuilt, never served); returns the names of those rebuilt."""
        rebuilt: list[str] = []
        with self._load_lock:
            for name, mirror in (("lexical", self._lexical), ("sparse", self._sparse)):
                if mirror is None:
                    continue
                count, build = self._mirror_source(name)
                if mirror.count != count:
                    mirror.replace(build())  # in place: the daemon's readers hold this object
                    rebuilt.append(name)
                    self._mirrors_saved.pop(name, None)  # a snapshot of this generation may hold the same error
        return rebuilt

    def forget_chunks(self, ids: list[int]) -> None:
        """Chunks left the catalog: drop them from the caches keyed by chunk id."""
        self.vectors.remove(ids)
        if self._lexical is not None:
            self._lexical.remove(ids)

    def batch_written(self, embeddings: Sequence[NewEmbedding], result: BatchResult) -> None:
        """A batch committed (``Catalog.apply``): the in-memory mirrors that are built follow
        it (the chunks it removed, its new embeddings' sparse weights, its chunks' terms)."""
        self.forget_chunks(result.removed_ids)
        if self._sparse is not None:
            self._sparse.add((e.chunk_hash, *sparse_arrays(e.sparse)) for e in embeddings if e.sparse is not None)
        if self._lexical is not None:
            self._lexical.add_terms(result.terms.items())

    def collect_garbage(self) -> None:
        """Drop embeddings no chunk uses any more, from the catalog and the sparse mirror."""
        gone = self.catalog.collect_garbage()
        if self._sparse is not None:
            self._sparse.remove(gone)

    def rebuild_vectors(self) -> None:
        """Rebuild the FAISS cache from the catalog, in place (readers see the new contents)."""
        fresh = VectorIndex.rebuild(self.catalog, self.model_key, self.models.embedder.dim)
        if self._vectors is None:
            self._vectors = fresh
        else:
            self._vectors.replace(fresh)
        self.save_vectors()

    def save_vectors(self) -> None:
        if self._vectors is not None:
            self._save_vectors(self._vectors)

    def _save_vectors(self, index: VectorIndex) -> None:
        """Snapshot FAISS; one that cannot be written (a full disk, a read-only data folder)
        only makes the next start rebuild it, so it is logged, not raised."""
        path = self._snapshot_path()
        generation = self.catalog.generation()
        try:
            index.save(path, generation, self.models.embedder.model_id)
        except OSError as exc:
            log.warning("cannot save the vector snapshot %s (%s); the next start rebuilds it", path, exc)
            return
        self._vectors_saved = generation

    def unsaved_snapshots(self) -> list[str]:
        """The loaded caches whose snapshot on disk is older than the catalog (or missing)."""
        generation = self.catalog.generation()
        out = ["vectors"] if self._vectors is not None and self._vectors_saved != generation else []
        return out + [name for name, mirror in (("sparse", self._sparse), ("lexical", self._lexical))
                      if mirror is not None and self._mirrors_saved.get(name) != generation]

    def save_snapshots(self, *, force: bool = False) -> list[str]:
        """Snapshot the loaded caches that changed since their snapshot (FAISS, the mirrors),
        for a fast next start; returns those written. The writer calls it, with every committed
        change already applied to the caches. With ``snapshot_delay_s`` (the daemon) a change
        is written once that long has passed since the first unsaved one, unless ``force``:
        a crash meanwhile costs only a rebuild from SQLite at the next start."""
        stale = self.unsaved_snapshots()
        if not stale:
            self._unsaved_since = None
            return []
        now = time.monotonic()
        if self._unsaved_since is None:
            self._unsaved_since = now
        if not force and now - self._unsaved_since < self.snapshot_delay_s:
            return []
        generation = self.catalog.generation()
        if "vectors" in stale and self._vectors is not None:
            self._save_vectors(self._vectors)
        for name, mirror in (("sparse", self._sparse), ("lexical", self._lexical)):
            if name in stale and mirror is not None:
                self._save_mirror(name, mirror, generation)
        self._unsaved_since = None if not self.unsaved_snapshots() else now
        return stale

    # -- writers ----------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the data folder's writer lock: one indexing process at a time."""
        private_dir(self.data_dir)
        fd = os.open(self.data_dir / "writer.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise RagdError(
                    f"another ragd process is writing to {self.data_dir} (lock writer.lock is held): "
                    "if `ragd serve` is running, use `ragd roots add PATH` or `ragd reindex` instead"
                ) from exc
            yield
        finally:
            os.close(fd)

    # -- search stages beside each other ------------------------------------------------
    SIDE_THREADS = 2

    def beside(self, fn: Callable[[Catalog], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on one of this engine's side threads, with that thread's own catalog
        connection (SQLite reads run in parallel on separate connections): a search's
        full-text and sparse stages run there while its query is embedded and its dense
        stage runs. Each is a single-threaded SQLite scan, so on a CPU with cores to spare the
        stages overlap instead of adding up."""
        if self._side is None:
            self._side = concurrent.futures.ThreadPoolExecutor(self.SIDE_THREADS, thread_name_prefix="ragd-search")
        return self._side.submit(self._on_side, fn)

    def _on_side(self, fn: Callable[[Catalog], T]) -> T:
        catalog = getattr(self._side_local, "catalog", None)
        if catalog is None:
            catalog = self._side_local.catalog = Catalog(self.catalog.path)
            self._side_catalogs.append(catalog)
        return fn(catalog)

    def close(self) -> None:
        if self._side is not None:
            self._side.shutdown(wait=True)
            self._side = None
        for catalog in self._side_catalogs:
            catalog.close()
        self._side_catalogs.clear()
        self.catalog.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
