"""Dense vectors in FAISS: a cache of the catalog, never the only copy.

``IndexIDMap2`` over an inner-product flat index, ids = chunk ids. Snapshots are written to
a temp file, fsynced and renamed, with a sidecar that records the catalog generation they
contain; a missing, stale or unreadable snapshot is rebuilt from SQLite.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragd.models.base import FloatArray

if TYPE_CHECKING:
    from ragd.store.catalog import Catalog


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class VectorIndex:
    """Exact inner-product search over L2-normalised vectors (cosine similarity)."""

    def __init__(self, dim: int, index: Any = None) -> None:
        import faiss

        # One query at a time: FAISS's OpenMP split of one query's scan costs more than it
        # saves (100k x 1,024 on 2 cores: 17 ms on one thread, 28 ms on two, 68 ms on two
        # while another thread computes, as a search's side stages do), so it runs on one.
        faiss.omp_set_num_threads(1)
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # FAISS indexes are not safe under concurrent add/remove and search: one lock guards all.
        self._lock = threading.RLock()

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: FloatArray) -> None:
        if len(ids):
            with self._lock:
                self._index.add_with_ids(
                    np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim),
                    np.ascontiguousarray(ids, dtype=np.int64),
                )

    def remove(self, ids: np.ndarray | list[int]) -> None:
        import faiss

        if len(ids):
            with self._lock:
                self._index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))

    def replace(self, other: VectorIndex) -> None:
        """Take over ``other``'s contents in place, so every holder of this object sees them."""
        with self._lock:
            self._index = other._index

    def search(
        self, query: FloatArray, n: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Top ``n`` (chunk id, cosine) pairs, optionally only among ``allowed`` ids."""
        import faiss

        if self.count == 0 or n <= 0:
            return []
        params = None
        if allowed is not None:
            if len(allowed) == 0:
                return []
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        with self._lock:
            scores, ids = self._index.search(q, min(n, self.count), params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def save(self, path: Path, generation: int, model: str) -> None:
        import faiss

        with self._lock:
            atomic_write(path, lambda tmp: faiss.write_index(self._index, tmp))
            meta = {"generation": generation, "model": model, "count": self.count, "dim": self.dim}
        atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path, generation: int, model: str, dim: int) -> VectorIndex | None:
        """The snapshot at ``path`` if it holds exactly ``generation`` of ``model``, else None."""
        import faiss

        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            if meta.get("generation") != generation or meta.get("model") != model or meta.get("dim") != dim:
                return None
            index = faiss.read_index(str(path))
        except (OSError, ValueError, RuntimeError):
            return None
        if int(index.ntotal) != int(meta.get("count", -1)) or int(index.d) != dim:
            return None
        return cls(dim, index)

    @classmethod
    def rebuild(cls, catalog: Catalog, model: int, dim: int) -> VectorIndex:
        index = cls(dim)
        for ids, vecs in catalog.iter_dense(model):
            index.add(ids, vecs)
        return index
