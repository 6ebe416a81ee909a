"""The local backend (``store.backend = "faiss"``): dense vectors in FAISS (``vectors.py``) and
the lexical weights in their mirror (``postings.SparseIndex``, in memory or mapped), each snapshot in the
data folder with the catalog generation it holds and rebuilt from SQLite when its snapshot
is missing, stale or damaged (docs/architecture.md, Storage)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ragd.models.base import SparseWeights
from ragd.store.base import ChunkFilter, DenseStore, SparseStore, StoreContext, VectorStore
from ragd.store.catalog import BatchResult, Catalog, NewEmbedding
from ragd.store.codec import arrays as sparse_arrays
from ragd.store.postings import SparseIndex, chunks_of_hashes, load_mirror, save_mirror
from ragd.store.vectors import IndexPlan, VectorIndex

log = logging.getLogger(__name__)


class SqlSparse:
    """The sparse store without a mirror (a one-shot search): the catalog's pruned SQL sum."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    @property
    def count(self) -> int:
        return self.ctx.catalog.count_sparse(self.ctx.model_key)

    def search_chunks(self, weights: SparseWeights, n: int, where: ChunkFilter,
                      catalog: Catalog) -> list[tuple[int, float]]:
        return chunks_of_hashes(catalog.sparse_search(self.ctx.model_key, weights, n), where, catalog)


class LocalStore(VectorStore):
    """FAISS plus the sparse mirror, snapshot under ``data_dir/vectors``."""

    name = "faiss"

    def __init__(self, ctx: StoreContext, vectors: VectorIndex) -> None:
        super().__init__(ctx)
        self.vectors = vectors
        self.mirror: SparseIndex | None = None  # built on first use of ``sparse``, with mirrors
        self._saved: dict[str, int] = {}  # part -> catalog generation of its snapshot on disk
        self._saved_builds = vectors.builds  # IVF indexes swapped in when the vectors were last saved
        self._building = threading.Lock()

    @classmethod
    def open(cls, ctx: StoreContext, plan: IndexPlan | None = None) -> LocalStore:
        """The FAISS snapshot when its own label and its ids agree with the catalog, else
        rebuilt from the catalog (and saved). Either serves at once; past ``plan.exact_limit``
        an exact index is the one served while its IVF index is built in the background."""
        plan = plan or IndexPlan()
        generation = ctx.catalog.generation()
        path = _slug_path(ctx)
        index = VectorIndex.load(path, generation, ctx.model_id, ctx.dim, _catalog_ids(ctx), plan)
        if index is None:
            store = cls(ctx, VectorIndex.rebuild(ctx.catalog, ctx.model_key, ctx.dim, plan))
            store.save(["vectors"], generation)
        else:
            store = cls(ctx, index)
            store._saved["vectors"] = generation
        if ctx.mirrors:  # a one-shot search ends before a build would
            store.vectors.tune()
        return store

    # -- the stores ---------------------------------------------------------------------
    @property
    def dense(self) -> DenseStore:
        return self.vectors

    @property
    def sparse(self) -> SparseStore | None:
        if not self.ctx.has_sparse:
            return None
        if not self.ctx.mirrors:
            return SqlSparse(self.ctx)
        if self.mirror is None:
            with self._building:  # one build: the first callers wait for it
                if self.mirror is None:
                    self.mirror = self._load_sparse()
        return self.mirror

    def _load_sparse(self) -> SparseIndex:
        catalog, key = self.ctx.catalog, self.ctx.model_key
        generation = catalog.generation()
        path = self.snapshot_paths()["sparse"]
        mirror, loaded = load_mirror(SparseIndex, path, generation, self.ctx.model_id, catalog.count_sparse(key),
                                     lambda mapped: SparseIndex.build(catalog.sparse_rows(key), mapped),
                                     self.ctx.mirror_form)
        if loaded:
            self._saved["sparse"] = generation
        elif save_mirror("sparse", mirror, path, generation, self.ctx.model_id):
            self._saved["sparse"] = generation
        return mirror

    # -- the writer ---------------------------------------------------------------------
    def add(self, embeddings: Sequence[NewEmbedding], result: BatchResult) -> None:
        self.remove(result.removed_ids)
        if self.mirror is not None:
            self.mirror.add((e.chunk_hash, *sparse_arrays(e.sparse)) for e in embeddings if e.sparse is not None)
        if result.added:
            fresh = {e.chunk_hash: e.dense for e in embeddings}
            missing = [h for _, h in result.added if h not in fresh]
            fresh.update(self.ctx.catalog.dense_by_hash(self.ctx.model_key, missing))
            ids = np.array([cid for cid, _ in result.added], dtype=np.int64)
            self.vectors.add(ids, np.stack([fresh[h] for _, h in result.added]))

    def remove(self, ids: Sequence[int]) -> None:
        self.vectors.remove(list(ids))

    def collected(self, hashes: Sequence[str]) -> None:
        if self.mirror is not None:
            self.mirror.remove(hashes)

    def check(self) -> list[str]:
        catalog, key = self.ctx.catalog, self.ctx.model_key
        rebuilt: list[str] = []
        if self.vectors.count != catalog.count_embedded_chunks(key):
            self.rebuild()  # a stale cache is rebuilt, never served
            rebuilt.append("vectors")
        if self.mirror is not None and self.mirror.count != catalog.count_sparse(key):
            # in place (readers hold it), in the form it has
            self.mirror.replace(SparseIndex.build(catalog.sparse_rows(key), self.mirror.home))
            rebuilt.append("sparse")
            self._saved.pop("sparse", None)  # a snapshot of this generation may hold the same error
        return rebuilt

    def rebuild(self) -> None:
        self.vectors.replace(VectorIndex.rebuild(self.ctx.catalog, self.ctx.model_key, self.ctx.dim,
                                                 self.vectors.plan))
        self.save(["vectors"], self.ctx.catalog.generation())

    def close(self) -> None:
        self.vectors.close()  # a background IVF build stops at its next step

    def describe(self) -> str:
        return f"faiss {self.vectors.describe()}"

    # -- snapshots ----------------------------------------------------------------------
    def snapshot_paths(self) -> dict[str, Path]:
        path = _slug_path(self.ctx)
        return {"vectors": path, "sparse": path.with_suffix(".sparse.npz")}

    def unsaved(self, generation: int) -> list[str]:
        parts = ["vectors"] + (["sparse"] if self.mirror is not None else [])
        out = [name for name in parts if self._saved.get(name) != generation]
        if "vectors" not in out and self.vectors.builds != self._saved_builds:
            out.insert(0, "vectors")  # an IVF index swapped in since: worth a snapshot of its own
        return out

    def save(self, names: Sequence[str], generation: int) -> None:
        paths = self.snapshot_paths()
        if "vectors" in names:
            builds = self.vectors.builds
            try:
                self.vectors.save(paths["vectors"], generation, self.ctx.model_id)
            except OSError as exc:
                log.warning("cannot save the vector snapshot %s (%s); the next start rebuilds it",
                            paths["vectors"], exc)
            else:
                self._saved["vectors"] = generation
                self._saved_builds = builds
        if "sparse" in names and self.mirror is not None:
            if save_mirror("sparse", self.mirror, paths["sparse"], generation, self.ctx.model_id):
                self._saved["sparse"] = generation


def _slug_path(ctx: StoreContext) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ctx.model_id)
    return ctx.data_dir / "vectors" / f"{slug}.faiss"


def _catalog_ids(ctx: StoreContext) -> tuple[int, int]:
    """(count, sum) of the ids of the chunks that have a vector of this embedder: what the
    FAISS cache must hold."""
    row = ctx.catalog.db.execute(
        "SELECT count(*), coalesce(sum(c.id), 0) FROM chunks c "
        "JOIN embeddings e ON e.model = ? AND e.chunk_hash = c.content_hash", [ctx.model_key],
    ).fetchone()
    return int(row[0]), int(row[1])
