"""The opened index: catalog, vector store and models for one data folder.

The indexer, the search path, the CLI and the server all work through an ``Engine``; it
owns the SQLite connection, opens the vector store the config names (``store.backend``,
through ``ragd.store.open_store``; it never knows which one runs), keeps the BM25 mirror and
holds the models with the reasons they are degraded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ragd.errors import RagdError
from ragd.models.base import Holds, LoadedModels, Scheduled
from ragd.rerank import RerankPace
from ragd.store import open_store, shares
from ragd.store.base import DenseStore, SparseStore, StoreContext, VectorStore
from ragd.store.catalog import BatchResult, Catalog, NewEmbedding
from ragd.store.postings import LexicalIndex, load_mirror, save_mirror
from ragd.store.private import private_dir, private_folder_files

if TYPE_CHECKING:
    from ragd.config import Config

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        # Searches read mirrors of the sparse weights and the full-text rows (store.mirrors), built
        # on first use (seconds for a large index); a one-shot search in a process of its own
        # asks SQLite instead (mirrors=False).
        self.mirrors = mirrors
        self.data_dir = config.data_dir
        self._models = models
        self._want_reranker = rerank
        self.catalog = Catalog(self.data_dir / "catalog.db")
        # Snapshots may be older versions' 0644 files, or a killed save's temp files.
        private_folder_files(self.data_dir / "vectors")
        self._store: VectorStore | None = None
        self._owns_store = True  # False for a reader: the store is its engine's
        # Snapshots are written at most this often (seconds; 0 = at every save_snapshots): the
        # daemon defers them, so a one-line edit does not rewrite and fsync every snapshot.
        self.snapshot_delay_s = 0.0
        self._unsaved_since: float | None = None
        self._lexical: LexicalIndex | None = None
        self._lexical_saved: int | None = None  # catalog generation of the BM25 mirror's snapshot
        self._model_key: int | None = None
        self.gate = ModelGate()
        # The reranker's pace (seconds a batch plus per pair token), for searches with a deadline; ``prime`` it while
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
            models, store, key = self.models, self.store, self.model_key
            _, lexical = self.sparse, self.lexical  # the sparse mirror is built here, not by a reader
        other = Engine(self.config, models, rerank=self._want_reranker, mirrors=self.mirrors)
        other._store = store
        other._owns_store = False
        other._model_key = key
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

    # -- the vector store -------------------------------------------------------------
    @property
    def store(self) -> VectorStore:
        """The backend holding the embedder's dense vectors and lexical weights
        (``store.backend``), opened on first use and made to agree with the catalog."""
        if self._store is None:
            with self._load_lock:
                if self._store is None:
                    emb = self.models.embedder
                    ctx = StoreContext(catalog=self.catalog, data_dir=self.data_dir, model_id=emb.model_id,
                                       model_key=self.model_key, dim=int(emb.dim), has_sparse=bool(emb.has_sparse),
                                       mirrors=self.mirrors, mirror_form=self.config.store.mirrors)
                    self._store = open_store(self.config.store, ctx)
        return self._store

    def shared_chunks(self) -> int:
        """Other daemons' chunks the vector store also searches (a shared collection); 0,
        without opening the store, for a backend that holds only this daemon's."""
        return self.store.shared_count() if shares(self.config.store) else 0

    @property
    def vectors(self) -> DenseStore:
        """The dense store of the current embedder."""
        return self.store.dense

    @property
    def sparse(self) -> SparseStore | None:
        """The sparse store of the embedder's lexical weights (None for an embedder without
        them); the local backend builds its mirror on first use."""
        if not self.models.embedder.has_sparse:
            return None
        return self.store.sparse  # lock-free once built: a search never waits for a writer's check

    @property
    def lexical(self) -> LexicalIndex:
        """The BM25 mirror of the catalog's full-text rows (in memory or mapped: ``store.mirrors``),
        built or loaded on first use."""
        if self._lexical is None:
            with self._load_lock:
                if self._lexical is None:
                    self._lexical = self._load_lexical()
        return self._lexical

    def _lexical_path(self) -> Path:
        return self.data_dir / "vectors" / "lexical.npz"

    def snapshot_paths(self) -> dict[str, Path]:
        """The snapshot files in the data folder, by cache (the backend's and the BM25 mirror's)."""
        return {**self.store.snapshot_paths(), "lexical": self._lexical_path()}

    def _load_lexical(self) -> LexicalIndex:
        """The BM25 mirror's snapshot when it holds the catalog's current generation (and as
        many chunks), else built from the catalog and saved."""
        generation = self.catalog.generation()
        mirror, loaded = load_mirror(LexicalIndex, self._lexical_path(), generation, "lexical",
                                     self.catalog.count_chunks(),
                                     lambda mapped: LexicalIndex.build(self.catalog.lexical_rows(), mapped),
                                     self.config.store.mirrors)
        if loaded or save_mirror("lexical", mirror, self._lexical_path(), generation, "lexical"):
            self._lexical_saved = generation
        return mirror

    def check_mirrors(self) -> list[str]:
        """Rebuild, in place, a cache whose contents disagree with the catalog (a stale cache
        is rebuilt, never served); returns the names of those rebuilt."""
        rebuilt: list[str] = []
        with self._load_lock:
            if self._lexical is not None and self._lexical.count != self.catalog.count_chunks():
                # in place (the readers hold it), in the form it has
                self._lexical.replace(LexicalIndex.build(self.catalog.lexical_rows(), self._lexical.home))
                rebuilt.append("lexical")
                self._lexical_saved = None  # a snapshot of this generation may hold the same error
            if self._store is not None:
                rebuilt += self._store.check()
        return rebuilt

    def forget_chunks(self, ids: list[int]) -> None:
        """Chunks left the catalog: drop them from the caches keyed by chunk id."""
        self.store.remove(ids)
        if self._lexical is not None:
            self._lexical.remove(ids)

    def batch_written(self, embeddings: Sequence[NewEmbedding], result: BatchResult) -> None:
        """A batch committed (``Catalog.apply``): the vector store and the BM25 mirror follow
        it (the chunks it removed and added, its new embeddings, its chunks' terms)."""
        self.store.add(embeddings, result)
        if self._lexical is not None:
            self._lexical.remove(result.removed_ids)
            self._lexical.add_terms(result.terms.items())

    def collect_garbage(self) -> None:
        """Drop embeddings no chunk uses any more, from the catalog and the vector store."""
        gone = self.catalog.collect_garbage()
        if self._store is not None:
            self._store.collected(gone)

    def rebuild_vectors(self) -> None:
        """Rebuild the vector store from the catalog, in place (readers see the new contents)."""
        self.store.rebuild()

    def unsaved_snapshots(self) -> list[str]:
        """The loaded caches whose flushed state is older than the catalog (or missing)."""
        generation = self.catalog.generation()
        out = self._store.unsaved(generation) if self._store is not None else []
        return out + (["lexical"] if self._lexical is not None and self._lexical_saved != generation else [])

    def save_snapshots(self, *, force: bool = False) -> list[str]:
        """Snapshot (flush) the loaded caches that changed since their last one, for a fast
        next start; returns those written. The writer calls it, with every committed
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
        if self._store is not None:
            self._store.save([n for n in stale if n != "lexical"], generation)
        if "lexical" in stale and self._lexical is not None:
            if save_mirror("lexical", self._lexical, self._lexical_path(), generation, "lexical"):
                self._lexical_saved = generation
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
        if self._store is not None and self._owns_store:
            self._store.close()
        self.catalog.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
