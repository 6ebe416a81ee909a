"""Dense vectors in FAISS: a cache of the catalog, never the only copy.

Exact inner-product search (``IndexIDMap2`` over a flat index, ids = chunk ids) up to
``IndexPlan.exact_limit`` vectors; past it an IVF index with a hashed direct map (removal and
reconstruction by id) is trained on a sample and filled in a background thread while the
exact index keeps answering, then swapped in (docs/architecture.md, Vector stores).
Snapshots are written to a temp file, fsynced and renamed. The file itself says what it
holds: a header (``MAGIC``, the CRC-32 of FAISS's bytes, then JSON: catalog generation,
model, dimension, count, the sum of its ids and the index kind and storage) before FAISS's
bytes, so a snapshot can never be paired with another one's label, and a damaged one is
noticed. A missing, stale, foreign, damaged or unreadable snapshot, or one of another kind
or storage than the plan asks, is rebuilt from SQLite.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ragd.models.base import FloatArray
from ragd.store.base import EVERY_CHUNK, ChunkFilter
from ragd.store.private import atomic_write

log = logging.getLogger(__name__)

MAGIC = b"RAGD-FAISS-1\n"
"""First bytes of a snapshot; then, little-endian, the CRC-32 of the FAISS bytes and the length
of the JSON label (4 bytes each), the label, and FAISS's own bytes."""


class DenseSource(Protocol):
    """What ``VectorIndex.rebuild`` reads: ``Catalog`` is one."""

    def iter_dense(self, model: int) -> Iterable[tuple[np.ndarray, FloatArray]]: ...


TRAIN_PER_LIST = 40  # training sample: vectors per IVF list (FAISS warns under 39)
BLOCK = 8192  # vectors copied per hold of the lock while an IVF index is filled
LAST_REPLAY = 512  # journalled vectors replayed under the lock at the swap; more are replayed before it
AUTO_PROBE = 16  # nprobe 0 scans 1/16 of the lists: recall@10 ~0.95 on real MiniLM vectors (docs)
SMALL_FILTER = 2048  # an allow-list this short is scored exactly on an IVF index (reading each vector by id)


@dataclass(frozen=True)
class IndexPlan:
    """Which index for how many vectors: ``store.exact_limit``, ``store.nprobe``, ``store.vectors``
    (float32, float16 or int8: how the IVF index stores vectors; the exact one keeps float32, or
    float16 for both others, since 8-bit codes need a range trained on data)."""

    exact_limit: int = 50_000
    nprobe: int = 0  # 0: a share of the lists, ``AUTO_PROBE``
    vectors: str = "float32"
    regrow: float = 4.0  # retrain once the IVF index holds this many times the vectors it was trained on

    def probes(self, nlist: int) -> int:
        """Lists an unfiltered search scans."""
        return min(nlist, self.nprobe or -(-nlist // AUTO_PROBE))


def ivf_lists(n: int) -> int:
    """IVF lists for ``n`` vectors: ~4 sqrt(n), with enough vectors per list to train on."""
    return max(1, min(int(4 * np.sqrt(n)), n // TRAIN_PER_LIST))


def _exact(dim: int, vectors: str) -> Any:
    import faiss

    if vectors == "float32":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIDMap2(sq)


def _ivf(dim: int, nlist: int, vectors: str) -> Any:
    import faiss

    quantizer = faiss.IndexFlatIP(dim)
    index: Any
    if vectors == "float32":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        qtype = faiss.ScalarQuantizer.QT_fp16 if vectors == "float16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, qtype, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10  # k-means iterations: recall holds, training takes 2.5x less than the default 25
    return index


def _is_ivf(index: Any) -> bool:
    import faiss

    return isinstance(index, faiss.IndexIVF)


class _Cancelled(Exception):
    """The index was replaced while a build read from it."""


@dataclass
class _Build:
    """A background IVF build: what changed since it took its list of ids."""

    epoch: int
    ids: np.ndarray
    journal: list[tuple[np.ndarray, FloatArray | None]] = field(default_factory=list)  # (ids, vectors or None)
    gone: set[int] = field(default_factory=set)  # ids removed since the build began


class VectorIndex:
    """Inner-product search over L2-normalised vectors (cosine similarity): the local backend's
    dense store. Exact up to ``plan.exact_limit`` vectors, IVF past it (``tune``)."""

    def __init__(self, dim: int, index: Any = None, plan: IndexPlan | None = None, trained_for: int = 0) -> None:
        import faiss

        # One thread: FAISS's OpenMP split of one query's scan costs more than it saves,
        # most of all beside a search's side stages (docs/performance.md, Search caches).
        faiss.omp_set_num_threads(1)
        self.dim = dim
        self.plan = plan or IndexPlan()
        self._index = index if index is not None else _exact(dim, self.plan.vectors)
        self._trained_for = trained_for  # vectors the IVF index was built from (0: exact)
        # FAISS indexes are not safe under concurrent add/remove and search: one lock guards all.
        self._lock = threading.RLock()
        # Changes and snapshots take turns (a snapshot writes outside ``_lock``, beside searches).
        self._changing = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified when a build ends
        self._job: _Build | None = None
        self._epoch = 0  # raised by replace and close: a build of an older epoch is dropped
        self.builds = 0  # IVF indexes swapped in
        self._failed = False  # a build failed: no other starts by itself (a replace tries again)

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    @property
    def approximate(self) -> bool:
        return _is_ivf(self._index)

    @property
    def building(self) -> bool:
        return self._job is not None

    def describe(self) -> str:
        """The index in a few words: ``exact float32``, ``ivf4000 int8``, ``+ building``."""
        with self._lock:
            kind = f"ivf{self._index.nlist}" if self.approximate else "exact"
            storage = self.plan.vectors if self.approximate or self.plan.vectors == "float32" else "float16"
            return f"{kind} {storage}" + (" (building ivf)" if self._job is not None else "")

    def add(self, ids: np.ndarray, vectors: FloatArray) -> None:
        if len(ids):
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
            with self._changing, self._lock:
                self._index.add_with_ids(vecs, ids)
                if self._job is not None:
                    self._job.journal.append((ids.copy(), vecs.copy()))
            self.tune()

    def remove(self, ids: np.ndarray | list[int]) -> None:
        if len(ids):
            gone = np.ascontiguousarray(ids, dtype=np.int64)
            with self._changing, self._lock:
                _remove(self._index, gone)
                if self._job is not None:
                    self._job.journal.append((gone.copy(), None))
                    self._job.gone.update(gone.tolist())

    def replace(self, other: VectorIndex) -> None:
        """Take over ``other``'s contents in place, so every holder of this object sees them;
        a build under way is dropped (and started again on the new contents when due)."""
        other.close()
        with self._changing, self._lock:
            self._epoch += 1
            self._job = None
            self._index, self._trained_for = other._index, other._trained_for
            self._failed = False
            self._settled.notify_all()
        self.tune()

    def tune(self) -> None:
        """Start a background IVF build when the index outgrew its kind: an exact index past
        ``exact_limit``, an IVF index past ``regrow`` times what it was trained on."""
        with self._lock:
            if self._job is not None or self._failed:
                return
            n = self.count
            due = n > self.plan.regrow * self._trained_for if self.approximate else n > self.plan.exact_limit
            if not due:
                return
            job = self._job = _Build(self._epoch, self.ids())
            log.info("dense index: %d vectors, building an IVF index in the background", n)
        threading.Thread(target=self._build, args=(job,), name="ragd-ivf", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no build is under way; False after ``timeout`` seconds."""
        with self._settled:
            return self._settled.wait_for(lambda: self._job is None, timeout)

    def close(self) -> None:
        """Drop a build under way (it stops at its next step)."""
        with self._lock:
            self._epoch += 1
            self._job = None
            self._settled.notify_all()

    def _build(self, job: _Build) -> None:
        """Train and fill an IVF index from the current one, outside the lock but for short
        copies; replay what changed meanwhile, the last of it under the lock with the swap."""
        import faiss

        started = time.monotonic()
        try:
            n = len(job.ids)
            nlist = ivf_lists(n)
            index = _ivf(self.dim, nlist, self.plan.vectors)
            rng = np.random.default_rng(n)
            sample = np.sort(rng.choice(job.ids, min(n, TRAIN_PER_LIST * nlist), replace=False))
            index.train(np.concatenate([self._read(job, sample[i:i + BLOCK])[1] for i in range(0, len(sample), BLOCK)]))
            index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # remove and read by id
            for start in range(0, n, BLOCK):
                kept, vecs = self._read(job, job.ids[start:start + BLOCK])
                if len(kept):
                    index.add_with_ids(vecs, kept)
            while True:
                with self._lock:
                    if job.epoch != self._epoch:
                        return
                    pending, job.journal = job.journal, []
                    if sum(len(ids) for ids, _ in pending) <= LAST_REPLAY:
                        _replay(index, pending)
                        self._index, self._trained_for = index, n
                        self._job = None
                        self.builds += 1
                        self._settled.notify_all()
                        break
                _replay(index, pending)
            log.info("dense index: ivf%d (%s) over %d vectors, built in %.1f s", nlist, self.plan.vectors,
                     n, time.monotonic() - started)
        except _Cancelled:
            return
        except Exception:  # a failed build leaves the current index serving
            log.exception("dense index: the IVF build failed; the current index keeps serving")
            with self._lock:
                if self._job is job:
                    self._job, self._failed = None, True
                    self._settled.notify_all()

    def _read(self, job: _Build, ids: np.ndarray) -> tuple[np.ndarray, FloatArray]:
        """The vectors of ``ids`` still in the index (not removed since ``job`` began), read
        under the lock."""
        with self._lock:
            if job.epoch != self._epoch:
                raise _Cancelled
            if job.gone:
                ids = ids[~np.isin(ids, np.fromiter(job.gone, dtype=np.int64, count=len(job.gone)))]
            return ids, self._index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim), np.float32)

    def search(self, query: FloatArray, n: int, where: ChunkFilter = EVERY_CHUNK) -> list[tuple[int, float]]:
        """Top ``n`` (chunk id, cosine) pairs among the ids ``where`` allows (an id selector)."""
        import faiss

        if self.count == 0 or n <= 0 or where.nothing:
            return []
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        selector = None
        if where.ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(where.ids, dtype=np.int64))
        with self._lock:
            index, count = self._index, self.count
            if not _is_ivf(index):
                params = None if selector is None else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
            elif where.ids is None:
                params = faiss.SearchParametersIVF(nprobe=self.plan.probes(index.nlist))  # type: ignore[call-arg]
            elif len(where.ids) <= SMALL_FILTER:
                return _score(index, where.ids, q[0], n)  # a probe could miss a few allowed ids: all of them
            else:  # probe as many more lists as the filter is rarer, to scan as many allowed vectors
                probes = min(index.nlist, -(-self.plan.probes(index.nlist) * count // len(where.ids)))
                params = faiss.SearchParametersIVF(sel=selector, nprobe=probes)  # type: ignore[call-arg]
            scores, ids = index.search(q, min(n, count), params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def ids(self) -> np.ndarray:
        """The chunk ids the index holds."""
        import faiss

        with self._lock:
            index = self._index
            if not _is_ivf(index):
                return faiss.vector_to_array(index.id_map).astype(np.int64)
            lists = index.invlists
            parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                     for i in range(index.nlist) if lists.list_size(i)]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def _label(self) -> dict[str, Any]:
        index = self._index
        if _is_ivf(index):
            return {"kind": "ivf", "nlist": int(index.nlist), "vectors": self.plan.vectors,
                    "trained_for": self._trained_for}
        return {"kind": "exact", "vectors": self.plan.vectors}

    def save(self, path: Path, generation: int, model: str) -> None:
        """Snapshot to ``path`` with its label inside the same file (see the module docstring).
        Adds and removes wait for it; searches do not (FAISS's write only reads the index),
        and a build swapping in meanwhile leaves this snapshot of the index it replaced."""
        import faiss

        with self._changing:
            with self._lock:
                index = self._index
                ids = self.ids()
                meta = {"generation": generation, "model": model, "count": int(index.ntotal), "dim": self.dim,
                        "id_sum": int(ids.sum()), "index": self._label()}
            header = json.dumps(meta).encode("utf-8")

            def write(tmp: str) -> None:
                crc = 0

                def out(chunk: bytes) -> None:
                    nonlocal crc
                    crc = zlib.crc32(chunk, crc)
                    fh.write(chunk)

                with open(tmp, "wb") as fh:
                    fh.write(MAGIC + struct.pack("<II", 0, len(header)) + header)
                    faiss.write_index(index, faiss.PyCallbackIOWriter(out))  # type: ignore[attr-defined]
                    fh.seek(len(MAGIC))
                    fh.write(struct.pack("<I", crc))

            atomic_write(path, write)
        legacy = path.with_suffix(".json")  # the sidecar label of earlier versions
        if legacy.exists():
            legacy.unlink()

    @classmethod
    def load(cls, path: Path, generation: int, model: str, dim: int, expect: tuple[int, int] | None = None,
             plan: IndexPlan | None = None) -> VectorIndex | None:
        """The snapshot at ``path`` if its own label says it holds exactly ``generation`` of
        ``model`` in the storage ``plan`` asks for (an IVF index only past its exact limit) and
        its contents agree with the label (count and sum of ids; with ``expect``, also the
        catalog's (count, sum of ids)), else None. An exact snapshot past the limit is read:
        ``tune`` builds the IVF index from it."""
        plan = plan or IndexPlan()
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
                kind = meta.get("index", {"kind": "exact", "vectors": "float32"})  # earlier versions: exact
                if not isinstance(kind, dict) or kind.get("vectors") != plan.vectors:
                    return None
                if kind.get("kind") == "ivf" and meta.get("count", 0) <= plan.exact_limit:
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
        if int(index.d) != dim or (kind.get("kind") == "ivf") != _is_ivf(index):
            return None
        if _is_ivf(index) and index.direct_map.type != faiss.DirectMap.Hashtable:  # type: ignore[attr-defined]
            return None
        if not _is_ivf(index) and not hasattr(index, "id_map"):
            return None
        trained = kind.get("trained_for", 0)
        loaded = cls(dim, index, plan, trained if isinstance(trained, int) else 0)
        ids = loaded.ids()
        found = (loaded.count, int(ids.sum()))
        if found != (meta.get("count"), meta.get("id_sum")) or (expect is not None and found != expect):
            return None
        return loaded

    @classmethod
    def rebuild(cls, catalog: DenseSource, model: int, dim: int, plan: IndexPlan | None = None) -> VectorIndex:
        """A new exact index of every vector of ``model`` the catalog holds
        (``Catalog.iter_dense``); ``tune`` starts its IVF build when it is past the limit."""
        index = cls(dim, plan=plan)
        for ids, vecs in catalog.iter_dense(model):
            if len(ids):
                index._index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(ids), dim),
                                          np.ascontiguousarray(ids, dtype=np.int64))
        return index


def _remove(index: Any, ids: np.ndarray) -> None:
    import faiss

    if _is_ivf(index):  # the hashed direct map removes only an IDSelectorArray
        index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
    else:
        index.remove_ids(faiss.IDSelectorBatch(ids))


def _replay(index: Any, journal: list[tuple[np.ndarray, FloatArray | None]]) -> None:
    """Apply journalled adds and removes, in order, to a new index."""
    for ids, vecs in journal:
        if vecs is None:
            _remove(index, ids)
        else:
            index.add_with_ids(vecs, ids)


def _score(index: Any, allowed: np.ndarray, query: FloatArray, n: int) -> list[tuple[int, float]]:
    """Top ``n`` of the ``allowed`` ids by their stored vectors: exact over a short allow-list."""
    ids = np.unique(np.ascontiguousarray(allowed, dtype=np.int64))
    try:
        vecs = index.reconstruct_batch(ids)
    except RuntimeError:  # an allowed id without a vector: one at a time
        kept, rows = [], []
        for i in ids.tolist():
            try:
                rows.append(index.reconstruct(i))
            except RuntimeError:
                continue
            kept.append(i)
        if not kept:
            return []
        ids, vecs = np.array(kept, dtype=np.int64), np.stack(rows)
    scores = vecs @ query
    top = np.argsort(-scores, kind="stable")[:n]
    return [(int(ids[i]), float(scores[i])) for i in top]
