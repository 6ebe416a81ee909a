"""Sparse (BGE-M3 lexical) retrieval in memory: a mirror of one model's sparse weights, summed
in numpy. Like FAISS for the dense vectors it is a cache of the catalog, never the only copy:
built at load from the per-embedding blobs (``Catalog.sparse_rows``) and kept current by the
writer (``add`` after each committed batch, ``remove`` after garbage collection).

Layout: every posting (token, slot, weight), a slot per chunk hash. The base part is sorted by
token, so a token's postings are one slice (``ptr``); postings added since are appended to a
delta, scanned whole per query with a token table, and merged into the base (one sort) once
they pass a twentieth of it. A query's score for a chunk is FlagEmbedding's lexical matching
score, the sum over shared tokens of query weight x document weight: one ``np.bincount`` over
the query tokens' postings, O(P) for P postings, ~10x cheaper a posting than SQLite summing
them and ~30x cheaper than handling them in Python (benchmarks/README.md). Memory: 8 bytes a
posting (int32 slot, float32 weight), ~1.4 KB for a chunk of 180 distinct tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ragd.models.base import SparseWeights

COMPACT_FRACTION = 0.05
"""The delta (plus removed hashes' postings) is merged into the base once it holds this
fraction of the base's postings... (a merge sorts every posting: ~3 s for 18M, 100k chunks,
about once per 5k chunks embedded, which takes the embedder the better part of an hour)"""
COMPACT_MIN = 1 << 18
"""...and at least this many (scanning a delta costs ~2 ms a query per 1M postings)."""


def arrays(weights: SparseWeights) -> tuple[np.ndarray, np.ndarray]:
    """One embedding's weights as (int32 tokens, float32 weights)."""
    tokens = np.fromiter(weights.keys(), dtype="<i4", count=len(weights))
    values = np.fromiter(weights.values(), dtype="<f4", count=len(weights))
    return tokens, values


def encode(weights: SparseWeights) -> bytes:
    """One embedding's weights as stored in the catalog: int32 tokens, then float32 weights."""
    tokens, values = arrays(weights)
    return tokens.tobytes() + values.tobytes()


def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    n = len(blob) // 8
    return np.frombuffer(blob, dtype="<i4", count=n), np.frombuffer(blob, dtype="<f4", count=n, offset=4 * n)


@dataclass(frozen=True)
class _View:
    """What one search reads: replaced as a whole by compaction, so never seen half-built."""

    hashes: list[str]  # slot -> chunk hash (only appended to until the next compaction)
    keys: np.ndarray  # the base's distinct tokens, sorted (int32)
    ptr: np.ndarray  # keys[i]'s postings are base_slot/base_weight[ptr[i]:ptr[i + 1]] (int64)
    base_slot: np.ndarray  # int32
    base_weight: np.ndarray  # float32
    delta: tuple[np.ndarray, np.ndarray, np.ndarray]  # (token, slot, weight), unsorted


_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_F32 = np.zeros(0, dtype=np.float32)


class SparseIndex:
    """The sparse weights of every live chunk hash of one model, searchable in memory.

    One writer (``add``, ``remove``, ``compact``; serialised by a lock) and any number of
    concurrent ``search`` calls, which take the current view under a short lock and compute
    without it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards swapping _view / _alive
        self._write = threading.Lock()  # one mutation at a time
        self._view = _View([], _EMPTY_I32, np.zeros(1, dtype=np.int64), _EMPTY_I32, _EMPTY_F32,
                           (_EMPTY_I32, _EMPTY_I32, _EMPTY_F32))
        self._slots: dict[str, int] = {}  # live hash -> slot
        self._alive = np.zeros(0, dtype=bool)  # slot -> still live
        self._dead_postings = 0
        self._sizes: dict[int, int] = {}  # slot -> postings (for counting dead ones)

    @classmethod
    def build(cls, rows: Iterable[tuple[str, bytes]]) -> SparseIndex:
        """From ``(chunk hash, encoded weights)`` rows (``Catalog.sparse_rows``)."""
        index = cls()
        index.add(((h, *decode(blob)) for h, blob in rows), compact=False)
        index.compact()
        return index

    # -- size ---------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Live chunk hashes."""
        return len(self._slots)

    @property
    def postings(self) -> int:
        """Postings held, dead ones (not yet compacted away) included."""
        view = self._view
        return len(view.base_slot) + len(view.delta[0])

    @property
    def nbytes(self) -> int:
        view = self._view
        return sum(a.nbytes for a in (view.keys, view.ptr, view.base_slot, view.base_weight, *view.delta))

    # -- writes -------------------------------------------------------------------------
    def add(self, items: Iterable[tuple[str, np.ndarray, np.ndarray]], *, compact: bool = True) -> None:
        """Add (or replace) chunk hashes with their (tokens, weights); ``compact=False``
        leaves the merge to the caller."""
        with self._write:
            view = self._view
            tokens: list[np.ndarray] = []
            slots: list[np.ndarray] = []
            weights: list[np.ndarray] = []
            new_hashes: list[str] = []
            replaced: list[int] = []
            next_slot = len(view.hashes)
            for h, tok, w in items:
                old = self._slots.get(h)
                if old is not None:
                    replaced.append(old)
                slot = next_slot + len(new_hashes)
                new_hashes.append(h)
                self._slots[h] = slot
                self._sizes[slot] = len(tok)
                tokens.append(np.asarray(tok, dtype=np.int32))
                weights.append(np.asarray(w, dtype=np.float32))
                slots.append(np.full(len(tok), slot, dtype=np.int32))
            if not new_hashes:
                return
            alive = np.concatenate([self._alive, np.ones(len(new_hashes), dtype=bool)])
            for old in replaced:
                alive[old] = False
                self._dead_postings += self._sizes.pop(old, 0)
            old_tokens, old_slots, old_weights = view.delta
            delta = (np.concatenate([old_tokens, *tokens]), np.concatenate([old_slots, *slots]),
                     np.concatenate([old_weights, *weights]))
            with self._lock:
                view.hashes.extend(new_hashes)
                self._alive = alive
                self._view = _View(view.hashes, view.keys, view.ptr, view.base_slot, view.base_weight, delta)
            if compact and self._should_compact():
                self._compact_locked()

    def remove(self, hashes: Iterable[str]) -> None:
        """Forget chunk hashes (unknown ones are ignored)."""
        with self._write:
            for h in hashes:
                slot = self._slots.pop(h, None)
                if slot is not None:
                    self._alive[slot] = False
                    self._dead_postings += self._sizes.pop(slot, 0)
            if self._should_compact():
                self._compact_locked()

    def compact(self) -> None:
        """Merge the delta into the base and drop the postings of removed hashes."""
        with self._write:
            self._compact_locked()

    def _should_compact(self) -> bool:
        view = self._view
        base = len(view.base_slot)
        waste = len(view.delta[0]) + self._dead_postings
        return waste >= COMPACT_MIN and waste >= COMPACT_FRACTION * base

    def _compact_locked(self) -> None:
        view, alive = self._view, self._alive
        tokens = np.concatenate([np.repeat(view.keys, np.diff(view.ptr)), view.delta[0]])
        slots = np.concatenate([view.base_slot, view.delta[1]])
        weights = np.concatenate([view.base_weight, view.delta[2]])
        live = np.flatnonzero(alive)
        if len(live) < len(alive):  # drop the removed hashes' postings, renumber the slots
            keep = alive[slots]
            renumber = np.full(len(alive), -1, dtype=np.int32)
            renumber[live] = np.arange(len(live), dtype=np.int32)
            tokens, slots, weights = tokens[keep], renumber[slots[keep]], weights[keep]
            hashes = [view.hashes[i] for i in live.tolist()]
            sizes = {int(renumber[s]): n for s, n in self._sizes.items() if alive[s]}
        else:
            hashes, sizes = list(view.hashes), dict(self._sizes)
        order = np.argsort(tokens, kind="stable")  # stable: a list keeps its slot order
        tokens, slots, weights = tokens[order], slots[order], weights[order]
        starts = np.flatnonzero(np.diff(tokens)) + 1 if len(tokens) else np.zeros(0, dtype=np.int64)
        keys = tokens[np.concatenate([[0], starts])] if len(tokens) else _EMPTY_I32
        ptr = np.concatenate([[0], starts, [len(tokens)]]).astype(np.int64) if len(tokens) else np.zeros(1, np.int64)
        with self._lock:
            self._view = _View(hashes, keys.astype(np.int32), ptr, slots, weights.astype(np.float32),
                               (_EMPTY_I32, _EMPTY_I32, _EMPTY_F32))
            self._alive = np.ones(len(hashes), dtype=bool)
        self._slots = {h: i for i, h in enumerate(hashes)}
        self._sizes = sizes
        self._dead_postings = 0

    # -- reads --------------------------------------------------------------------------
    def search(self, weights: SparseWeights, limit: int) -> list[tuple[str, float]]:
        """The ``limit`` chunk hashes with the highest lexical matching score (the sum over
        shared tokens of query weight x document weight), best first, ties by hash; every
        chunk sharing a token with the query is a candidate (as in the catalog's SQL sum)."""
        if not weights or limit <= 0:
            return []
        with self._lock:  # slots below n are named in view.hashes and covered by alive
            view, alive = self._view, self._alive
            n = len(alive)
        q_tokens = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
        q_weights = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
        slot_parts: list[np.ndarray] = []
        score_parts: list[np.ndarray] = []
        if len(view.keys):
            at = np.searchsorted(view.keys, q_tokens)
            present = at < len(view.keys)
            present[present] = view.keys[at[present]] == q_tokens[present]
            for i, qw in zip(at[present].tolist(), q_weights[present].tolist(), strict=True):
                lo, hi = int(view.ptr[i]), int(view.ptr[i + 1])
                slot_parts.append(view.base_slot[lo:hi])
                score_parts.append(np.multiply(view.base_weight[lo:hi], qw, dtype=np.float64))
        d_tokens, d_slots, d_weights = view.delta
        if len(d_tokens):
            hit = np.isin(d_tokens, q_tokens, kind="table")
            if hit.any():
                order = np.argsort(q_tokens)
                sorted_tokens = q_tokens[order]
                tok = d_tokens[hit]
                slot_parts.append(d_slots[hit])
                score_parts.append(d_weights[hit] * q_weights[order][np.searchsorted(sorted_tokens, tok)])
        if not slot_parts:
            return []
        slots = np.concatenate(slot_parts)
        scores = np.bincount(slots, weights=np.concatenate(score_parts), minlength=n)
        seen = np.zeros(n, dtype=bool)
        seen[slots] = True
        seen &= alive[:n]
        candidates = np.flatnonzero(seen)
        if len(candidates) > limit:
            values = scores[candidates]
            cut = values[np.argpartition(-values, limit - 1)[:limit]].min()
            candidates = candidates[values >= cut]  # ties at the cut are settled by hash below
        ranked = sorted(((view.hashes[i], float(scores[i])) for i in candidates.tolist()),
                        key=lambda hs: (-hs[1], hs[0]))
        return ranked[:limit]
