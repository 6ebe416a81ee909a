"""Dense vectors in FAISS: a cache of the catalog, never the only copy.

``IndexIDMap2`` over an inner-product flat index, ids = chunk ids. Snapshots are written to
a temp file, fsynced and renamed. The file itself says what it holds: a header (``MAGIC``,
the CRC-32 of FAISS's bytes, then JSON: catalog generation, model, dimension, count and the
sum of its ids) before FAISS's bytes, so a snapshot can never be paired with another one's
label, and a damaged one is noticed. A missing, stale, foreign, damaged or unreadable
snapshot is rebuilt from SQLite.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ragd.models.base import FloatArray
from ragd.store.base import EVERY_CHUNK, ChunkFilter
from ragd.store.private import atomic_write

MAGIC = b"RAGD-FAISS-1\n"
"""First bytes of a snapshot; then, little-endian, the CRC-32 of the FAISS bytes and the length
of the JSON label (4 bytes each), the label, and FAISS's own bytes."""


class DenseSource(Protocol):
    """What ``VectorIndex.rebuild`` reads: ``Catalog`` is one."""

    def iter_dense(self, model: int) -> Iterable[tuple[np.ndarray, FloatArray]]: ...


class VectorIndex:
    """Exact inner-product search over L2-normalised vectors (cosine similarity): the local
    backend's dense store."""

    def __init__(self, dim: int, index: Any = None) -> None:
        import faiss

        # One thread: FAISS's OpenMP split of one query's scan costs more than it saves,
        # most of all beside a search's side stages (docs/performance.md, Search caches).
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

    def search(self, query: FloatArray, n: int, where: ChunkFilter = EVERY_CHUNK) -> list[tuple[int, float]]:
        """Top ``n`` (chunk id, cosine) pairs among the ids ``where`` allows (an id selector)."""
        import faiss

        if self.count == 0 or n <= 0 or where.nothing:
            return []
        params = None
        if where.ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(where.ids, dtype=np.int64))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        with self._lock:
            scores, ids = self._index.search(q, min(n, self.count), params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def ids(self) -> np.ndarray:
        """The chunk ids the index holds."""
        import faiss

        with self._lock:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def save(self, path: Path, generation: int, model: str) -> None:
        """Snapshot to ``path`` with its label inside the same file (see the module docstring)."""
        import faiss

        with self._lock:
            ids = self.ids()
            meta = {"generation": generation, "model": model, "count": self.count, "dim": self.dim,
                    "id_sum": int(ids.sum())}
            header = json.dumps(meta).encode("utf-8")

            def write(tmp: str) -> None:
                crc = 0

                def out(chunk: bytes) -> None:
                    nonlocal crc
                    crc = zlib.crc32(chunk, crc)
                    fh.write(chunk)

                with open(tmp, "wb") as fh:
                    fh.write(MAGIC + struct.pack("<II", 0, len(header)) + header)
                    faiss.write_index(self._index, faiss.PyCallbackIOWriter(out))  # type: ignore[attr-defined]
                    fh.seek(len(MAGIC))
                    fh.write(struct.pack("<I", crc))

            atomic_write(path, write)
        legacy = path.with_suffix(".json")  # the sidecar label of earlier versions
        if legacy.exists():
            legacy.unlink()

    @classmethod
    def load(cls, path: Path, generation: int, model: str, dim: int,
             expect: tuple[int, int] | None = None) -> VectorIndex | None:
        """The snapshot at ``path`` if its own label says it holds exactly ``generation`` of
        ``model`` and its contents agree with the label (count and sum of ids; with ``expect``,
        also the catalog's (count, sum of ids)), else None."""
        import faiss

        try:
            with open(path, "rb") as fh:
                if fh.read(len(MAGIC)) != MAGIC:
                    return None
                crc, size = struct.unpack("<II", fh.read(8))
                if size > 1 << 20:
                    return None
                meta = json.loads(fh.read(size).decode("utf-8"))
                if not isinstance(meta, dict):
                    return None
                if meta.get("generation") != generation or meta.get("model") != model or meta.get("dim") != dim:
                    return None
                seen = 0

                def read(n: int) -> bytes:
                    nonlocal seen
                    chunk = fh.read(n)
                    seen = zlib.crc32(chunk, seen)
                    return chunk

                index = faiss.read_index(faiss.PyCallbackIOReader(read))  # type: ignore[attr-defined]
                if seen != crc or fh.read(1):  # damaged, or more than FAISS wrote
                    return None
        except (OSError, ValueError, RuntimeError, struct.error, UnicodeDecodeError):
            return None
        if int(index.d) != dim or not hasattr(index, "id_map"):
            return None
        loaded = cls(dim, index)
        ids = loaded.ids()
        found = (loaded.count, int(ids.sum()))
        if found != (meta.get("count"), meta.get("id_sum")) or (expect is not None and found != expect):
            return None
        return loaded

    @classmethod
    def rebuild(cls, catalog: DenseSource, model: int, dim: int) -> VectorIndex:
        """A new index of every vector of ``model`` the catalog holds (``Catalog.iter_dense``)."""
        index = cls(dim)
        for ids, vecs in catalog.iter_dense(model):
            index.add(ids, vecs)
        return index
