"""Posting lists in memory, summed in numpy: the mirrors searches read for sparse and full-text
retrieval. ``SparseIndex`` mirrors one model's BGE-M3 lexical weights (keyed by chunk hash),
``LexicalIndex`` the full-text terms for BM25 (keyed by chunk id); each answers as its SQL
reference in ``store/retrieval.py`` does. Like FAISS for the dense vectors each is a cache of
the catalog, never the only copy: built at load (``Catalog.sparse_rows`` blobs,
``Catalog.lexical_rows``) and kept current by the writer (added after each committed batch,
removed with their chunks or at garbage collection).

Layout (``Postings``): every posting (token, slot, weight), a slot per key. The base part is
sorted by token, so a token's postings are one slice (``ptr``); postings added since are
appended to a delta, scanned whole per query, and merged into the base (one sort) once they
pass a twentieth of it. A query's score is one ``np.bincount`` over the query tokens'
postings, O(P) for P postings. Memory: 8 bytes a posting (int32 slot, float32 weight).
Measurements: docs/performance.md, Search caches.

Snapshots (``save`` / ``load``): the arrays as they are, base, delta and live slots, in one
``.npz`` written atomically, with the catalog generation they mirror; the daemon loads a
current one at start instead of building and builds when it is missing, stale or unreadable.
"""

from __future__ import annotations

import json
import logging
import threading
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import numpy as np

from ragd.models.base import SparseWeights
from ragd.store.base import ChunkFilter
from ragd.store.codec import decode
from ragd.store.private import atomic_write

if TYPE_CHECKING:
    from ragd.store.catalog import Catalog

log = logging.getLogger(__name__)

COMPACT_FRACTION = 0.05
"""The delta (plus removed keys' postings) is merged into the base once it holds this fraction
of the base's postings (a merge sorts every posting)..."""
COMPACT_MIN = 1 << 18
"""...and at least this many (a query scans the whole delta): docs/performance.md, Search caches."""
SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class _View:
    """What one search reads: replaced as a whole by compaction, so never seen half-built."""

    keys: list[Any]  # slot -> key (chunk hash or chunk id; only appended to until the next compaction)
    values: np.ndarray  # slot -> a float the scoring may use (BM25: the chunk's length), float64
    tokens: np.ndarray  # the base's distinct tokens, sorted (int32)
    ptr: np.ndarray  # tokens[i]'s postings are base_slot/base_weight[ptr[i]:ptr[i + 1]] (int64)
    base_slot: np.ndarray  # int32
    base_weight: np.ndarray  # float32
    delta: tuple[np.ndarray, np.ndarray, np.ndarray]  # (token, slot, weight), unsorted


_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_F32 = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class _Gathered:
    """The postings of a query's tokens, from the base and the delta, live slots only."""

    slots: np.ndarray  # int32
    weights: np.ndarray  # float32
    query_token: np.ndarray  # index into the query's tokens, per posting
    view: _View
    n: int  # slots below n are named in view.keys


class Postings:
    """Posting lists (token -> slots with a weight each), a slot per key, in memory.

    One writer (``add``, ``remove``, ``compact``; serialised by a lock) and any number of
    concurrent searches, which take the current view under a short lock and compute
    without it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards swapping _view / _alive
        self._write = threading.Lock()  # one mutation at a time
        self._view = _View([], np.zeros(0), _EMPTY_I32, np.zeros(1, dtype=np.int64), _EMPTY_I32, _EMPTY_F32,
                           (_EMPTY_I32, _EMPTY_I32, _EMPTY_F32))
        self._slots: dict[Any, int] = {}  # live key -> slot
        self._alive = np.zeros(0, dtype=bool)  # slot -> still live
        self._dead_postings = 0
        self._sizes: dict[int, int] = {}  # slot -> postings (for counting dead ones)

    # -- size ---------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Live keys."""
        return len(self._slots)

    @property
    def postings(self) -> int:
        """Postings held, dead ones (not yet compacted away) included."""
        view = self._view
        return len(view.base_slot) + len(view.delta[0])

    @property
    def nbytes(self) -> int:
        view = self._view
        return sum(a.nbytes for a in (view.values, view.tokens, view.ptr, view.base_slot, view.base_weight,
                                      *view.delta))

    # -- writes -------------------------------------------------------------------------
    def add(self, items: Iterable[tuple[Any, np.ndarray, np.ndarray]], *, values: Iterable[float] = (),
            compact: bool = True) -> None:
        """Add (or replace) keys with their (tokens, weights), and their ``values`` in the
        same order when the scoring uses them; ``compact=False`` leaves the merge to the
        caller."""
        with self._write:
            view = self._view
            tokens: list[np.ndarray] = []
            slots: list[np.ndarray] = []
            weights: list[np.ndarray] = []
            new_keys: list[Any] = []
            replaced: list[int] = []
            next_slot = len(view.keys)
            for key, tok, w in items:
                old = self._slots.get(key)
                if old is not None:
                    replaced.append(old)
                slot = next_slot + len(new_keys)
                new_keys.append(key)
                self._slots[key] = slot
                self._sizes[slot] = len(tok)
                tokens.append(np.asarray(tok, dtype=np.int32))
                weights.append(np.asarray(w, dtype=np.float32))
                slots.append(np.full(len(tok), slot, dtype=np.int32))
            if not new_keys:
                return
            new_values = np.fromiter(values, dtype=np.float64)
            if len(new_values) not in (0, len(new_keys)):
                raise ValueError(f"{len(new_values)} values for {len(new_keys)} keys")
            alive = np.concatenate([self._alive, np.ones(len(new_keys), dtype=bool)])
            for old in replaced:
                alive[old] = False
                self._dead_postings += self._sizes.pop(old, 0)
            old_tokens, old_slots, old_weights = view.delta
            delta = (np.concatenate([old_tokens, *tokens]), np.concatenate([old_slots, *slots]),
                     np.concatenate([old_weights, *weights]))
            all_values = np.concatenate([view.values, new_values if len(new_values) else np.zeros(len(new_keys))])
            with self._lock:
                view.keys.extend(new_keys)
                self._alive = alive
                self._view = _View(view.keys, all_values, view.tokens, view.ptr, view.base_slot, view.base_weight,
                                   delta)
            if compact and self._should_compact():
                self._compact_locked()

    def remove(self, keys: Iterable[Any]) -> None:
        """Forget keys (unknown ones are ignored)."""
        with self._write:
            for key in keys:
                slot = self._slots.pop(key, None)
                if slot is not None:
                    self._alive[slot] = False
                    self._dead_postings += self._sizes.pop(slot, 0)
            if self._should_compact():
                self._compact_locked()

    def compact(self) -> None:
        """Merge the delta into the base and drop the postings of removed keys."""
        with self._write:
            self._compact_locked()

    def _should_compact(self) -> bool:
        view = self._view
        base = len(view.base_slot)
        waste = len(view.delta[0]) + self._dead_postings
        return waste >= COMPACT_MIN and waste >= COMPACT_FRACTION * base

    def _compact_locked(self) -> None:
        view, alive = self._view, self._alive
        tokens = np.concatenate([np.repeat(view.tokens, np.diff(view.ptr)), view.delta[0]])
        slots = np.concatenate([view.base_slot, view.delta[1]])
        weights = np.concatenate([view.base_weight, view.delta[2]])
        live = np.flatnonzero(alive)
        values = view.values[: len(alive)]
        if len(live) < len(alive):  # drop the removed keys' postings, renumber the slots
            keep = alive[slots]
            renumber = np.full(len(alive), -1, dtype=np.int32)
            renumber[live] = np.arange(len(live), dtype=np.int32)
            tokens, slots, weights = tokens[keep], renumber[slots[keep]], weights[keep]
            keys = [view.keys[i] for i in live.tolist()]
            values = values[live]
            sizes = {int(renumber[s]): n for s, n in self._sizes.items() if alive[s]}
        else:
            keys, sizes = list(view.keys), dict(self._sizes)
        order = np.argsort(tokens, kind="stable")  # stable: a list keeps its slot order
        self._install(keys, values, tokens[order], slots[order], weights[order], sizes)

    def _install(self, keys: list[Any], values: np.ndarray, tokens: np.ndarray, slots: np.ndarray,
                 weights: np.ndarray, sizes: dict[int, int]) -> None:
        """Make postings sorted by token (then slot) the base, with no delta and every key
        live. The caller holds the write lock."""
        if len(tokens):
            starts = np.flatnonzero(np.diff(tokens)) + 1
            distinct = tokens[np.concatenate([[0], starts])].astype(np.int32)
            ptr = np.concatenate([[0], starts, [len(tokens)]]).astype(np.int64)
        else:
            distinct, ptr = _EMPTY_I32, np.zeros(1, dtype=np.int64)
        with self._lock:
            self._view = _View(keys, np.asarray(values, dtype=np.float64), distinct, ptr,
                               slots.astype(np.int32), weights.astype(np.float32), (_EMPTY_I32, _EMPTY_I32, _EMPTY_F32))
            self._alive = np.ones(len(keys), dtype=bool)
        self._slots = {k: i for i, k in enumerate(keys)}
        self._sizes = sizes
        self._dead_postings = 0

    def replace(self, other: Postings) -> None:
        """Take over ``other``'s contents in place, so every holder of this object sees them."""
        with self._write:
            with self._lock:
                self._view, self._alive = other._view, other._alive
                self._take_extra(other)
            self._slots, self._sizes, self._dead_postings = other._slots, other._sizes, other._dead_postings

    def _take_extra(self, other: Postings) -> None:
        """What a subclass keeps beside the postings, taken over by ``replace``."""

    # -- snapshots ----------------------------------------------------------------------
    def save(self, path: Path, generation: int, label: str) -> None:
        """Write the postings as they are (no merge) to ``path``, atomically, recording the
        catalog ``generation`` and the ``label`` (what they mirror) that ``load`` must match."""
        with self._write:
            view, alive = self._view, self._alive
            meta = {"version": SNAPSHOT_VERSION, "kind": type(self).__name__, "generation": generation,
                    "label": label}
            arrays: dict[str, Any] = {
                "meta": np.asarray(json.dumps(meta)), "keys": np.asarray(view.keys[: len(alive)]),
                "values": view.values[: len(alive)], "tokens": view.tokens, "ptr": view.ptr,
                "base_slot": view.base_slot, "base_weight": view.base_weight, "delta_token": view.delta[0],
                "delta_slot": view.delta[1], "delta_weight": view.delta[2], "alive": alive,
                **self._extra_arrays(),
            }

            def write(tmp: str) -> None:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)

            atomic_write(path, write)

    @classmethod
    def load(cls, path: Path, generation: int, label: str) -> Self | None:
        """The snapshot at ``path`` if it mirrors exactly ``generation`` of ``label``, else None
        (missing, stale, written by another version or unreadable)."""
        want = {"version": SNAPSHOT_VERSION, "kind": cls.__name__, "generation": generation, "label": label}
        try:
            with np.load(path, allow_pickle=False) as data:
                if json.loads(str(data["meta"])) != want:
                    return None
                arrays = {name: data[name] for name in data.files}
            index = cls()
            index._restore(arrays)
        except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile):
            return None
        return index

    def _restore(self, a: dict[str, np.ndarray]) -> None:
        keys = a["keys"].tolist()
        alive = a["alive"].astype(bool)
        delta = (a["delta_token"].astype(np.int32), a["delta_slot"].astype(np.int32),
                 a["delta_weight"].astype(np.float32))
        view = _View(keys, a["values"].astype(np.float64), a["tokens"].astype(np.int32), a["ptr"].astype(np.int64),
                     a["base_slot"].astype(np.int32), a["base_weight"].astype(np.float32), delta)
        n = len(keys)
        slots = np.concatenate([view.base_slot, delta[1]])
        shapes_agree = (
            len(alive) == len(view.values) == n and len(view.ptr) == len(view.tokens) + 1
            and view.ptr[-1] == len(view.base_slot) == len(view.base_weight)
            and len(delta[0]) == len(delta[1]) == len(delta[2])
        )
        if not shapes_agree or (len(slots) and not 0 <= slots.min() <= slots.max() < n):
            raise ValueError("inconsistent snapshot")
        sizes = np.bincount(slots, minlength=n)
        live = np.flatnonzero(alive)
        self._view, self._alive = view, alive
        self._slots = {keys[i]: i for i in live.tolist()}
        if len(self._slots) != len(live):
            raise ValueError("a key is live in two slots")
        self._sizes = dict(zip(live.tolist(), sizes[live].tolist(), strict=True))
        self._dead_postings = int(sizes[~alive].sum())
        self._restore_extra(a)

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        """What a subclass keeps beside the postings, for a snapshot."""
        return {}

    def _restore_extra(self, arrays: dict[str, np.ndarray]) -> None:
        """Read back what ``_extra_arrays`` saved."""

    # -- reads --------------------------------------------------------------------------
    def _gather(self, q_tokens: np.ndarray) -> _Gathered:
        """Every live posting of the query's tokens (int64, distinct)."""
        with self._lock:  # slots below n are named in view.keys and covered by alive
            view, alive = self._view, self._alive
            n = len(alive)
        slot_parts: list[np.ndarray] = []
        weight_parts: list[np.ndarray] = []
        which_parts: list[np.ndarray] = []
        if len(view.tokens):
            at = np.searchsorted(view.tokens, q_tokens)
            present = at < len(view.tokens)
            present[present] = view.tokens[at[present]] == q_tokens[present]
            for qi, i in zip(np.flatnonzero(present).tolist(), at[present].tolist(), strict=True):
                lo, hi = int(view.ptr[i]), int(view.ptr[i + 1])
                slot_parts.append(view.base_slot[lo:hi])
                weight_parts.append(view.base_weight[lo:hi])
                which_parts.append(np.full(hi - lo, qi, dtype=np.int32))
        d_tokens, d_slots, d_weights = view.delta
        if len(d_tokens):
            hit = np.isin(d_tokens, q_tokens, kind="table")
            if hit.any():
                order = np.argsort(q_tokens)
                slot_parts.append(d_slots[hit])
                weight_parts.append(d_weights[hit])
                which_parts.append(order[np.searchsorted(q_tokens[order], d_tokens[hit])].astype(np.int32))
        if not slot_parts:
            return _Gathered(_EMPTY_I32, _EMPTY_F32, _EMPTY_I32, view, n)
        slots = np.concatenate(slot_parts)
        weights = np.concatenate(weight_parts)
        which = np.concatenate(which_parts)
        live = alive[slots]
        if not live.all():
            slots, weights, which = slots[live], weights[live], which[live]
        return _Gathered(slots, weights, which, view, n)

    @staticmethod
    def _best(got: _Gathered, contributions: np.ndarray, limit: int) -> list[tuple[Any, float]]:
        """The ``limit`` keys with the highest summed contributions, best first, ties by key;
        every key with a posting among the gathered ones is a candidate."""
        if not len(got.slots):
            return []
        scores = np.bincount(got.slots, weights=contributions, minlength=got.n)
        seen = np.zeros(got.n, dtype=bool)
        seen[got.slots] = True
        candidates = np.flatnonzero(seen)
        if len(candidates) > limit:
            values = scores[candidates]
            cut = values[np.argpartition(-values, limit - 1)[:limit]].min()
            candidates = candidates[values >= cut]  # ties at the cut are settled by key below
        ranked = sorted(((got.view.keys[i], float(scores[i])) for i in candidates.tolist()),
                        key=lambda ks: (-ks[1], ks[0]))
        return ranked[:limit]


class SparseIndex(Postings):
    """The sparse weights of every live chunk hash of one model, searchable in memory: the
    local backend's sparse store (``search_chunks``)."""

    @classmethod
    def build(cls, rows: Iterable[tuple[str, bytes]]) -> SparseIndex:
        """From ``(chunk hash, encoded weights)`` rows (``Catalog.sparse_rows``)."""
        index = cls()
        index.add(((h, *decode(blob)) for h, blob in rows), compact=False)
        index.compact()
        return index

    def search(self, weights: SparseWeights, limit: int) -> list[tuple[str, float]]:
        """The ``limit`` chunk hashes with the highest lexical matching score (the sum over
        shared tokens of query weight x document weight), best first, ties by hash; every
        chunk sharing a token with the query is a candidate (as in ``retrieval.sparse_search``)."""
        if not weights or limit <= 0:
            return []
        q_tokens = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
        q_weights = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
        got = self._gather(q_tokens)
        return self._best(got, got.weights * q_weights[got.query_token], limit)

    def search_chunks(self, weights: SparseWeights, n: int, where: ChunkFilter,
                      catalog: Catalog) -> list[tuple[int, float]]:
        """``search``'s top ``n`` hashes as the chunk ids that have them (each with its hash's
        score, best first), within ``where``."""
        return chunks_of_hashes(self.search(weights, n), where, catalog)


def chunks_of_hashes(by_hash: list[tuple[str, float]], where: ChunkFilter,
                     catalog: Catalog) -> list[tuple[int, float]]:
    """Every chunk id of each (hash, score), in the hashes' order, within ``where``."""
    ids = catalog.chunk_ids_by_hash([h for h, _ in by_hash])
    allowed = where.id_set
    return [(cid, score) for h, score in by_hash for cid in ids.get(h, [])
            if allowed is None or cid in allowed]


class LexicalIndex(Postings):
    """BM25 over the chunks' full-text terms (``ragd.lexical``), computed as SQLite FTS5's
    ``bm25()`` computes it for the catalog's ``lexical`` table (k1 1.2, b 0.75; idf
    ln((N - n + 0.5) / (n + 0.5)), at least 1e-6; a chunk's length is its number of terms,
    the average over every chunk), so it answers as ``retrieval.lexical_search`` does. Keys are
    chunk ids, tokens are term ids from a vocabulary that only grows, weights are term
    counts, and each slot's value is the chunk's length. 6-8 bytes a (chunk, distinct term)
    pair plus the vocabulary."""

    K1 = 1.2
    B = 0.75

    def __init__(self) -> None:
        super().__init__()
        # term -> id; a missing term gets the next id on lookup (``vocab[w]``)
        self._vocab: defaultdict[str, int] = defaultdict()
        self._vocab.default_factory = self._vocab.__len__

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str]]) -> LexicalIndex:
        """From ``(chunk id, stored terms)`` rows (``Catalog.lexical_rows``), in bulk: every
        (term, chunk) pair is counted by one sort of term x chunk keys, which also leaves
        the postings in the order the base keeps them."""
        index = cls()
        lookup = index._vocab.__getitem__
        keys: list[int] = []
        lengths: list[int] = []
        ids: list[int] = []
        for chunk_id, text in rows:
            words = text.split()
            keys.append(chunk_id)
            lengths.append(len(words))
            ids.extend(map(lookup, words))
        if not ids:
            index.add_terms(zip(keys, [""] * len(keys), strict=True))
            return index
        n = len(keys)
        doc = np.repeat(np.arange(n, dtype=np.int64), lengths)
        pairs, counts = np.unique(np.asarray(ids, dtype=np.int64) * n + doc, return_counts=True)
        slots = pairs % n
        sizes = dict(enumerate(np.bincount(slots, minlength=n).tolist()))
        with index._write:  # already in the base's order: no sort
            index._install(keys, np.asarray(lengths, dtype=np.float64), pairs // n, slots, counts, sizes)
        return index

    def _take_extra(self, other: Postings) -> None:
        assert isinstance(other, LexicalIndex)
        self._vocab = other._vocab  # a term's id must mean what the taken postings mean by it

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {"vocab": np.asarray(list(self._vocab), dtype=str)}  # in id order: ids are insertion order

    def _restore_extra(self, arrays: dict[str, np.ndarray]) -> None:
        self._vocab.update((term, i) for i, term in enumerate(arrays["vocab"].tolist()))
        if len(self._vocab) != len(arrays["vocab"]):
            raise ValueError("a term twice in the vocabulary")

    def add_terms(self, rows: Iterable[tuple[int, str]], *, compact: bool = True) -> None:
        """Add (or replace) chunks with their terms as stored (``lexical.document_terms``:
        space-separated, which is how FTS5 splits them)."""
        lookup = self._vocab.__getitem__
        items: list[tuple[int, np.ndarray, np.ndarray]] = []
        lengths: list[int] = []
        for chunk_id, text in rows:
            words = text.split()
            ids = np.fromiter(map(lookup, words), dtype=np.int32, count=len(words))
            distinct, counts = np.unique(ids, return_counts=True)
            items.append((chunk_id, distinct, counts.astype(np.float32)))
            lengths.append(len(words))
        self.add(items, values=lengths, compact=compact)

    def document_frequency(self, terms: Iterable[str]) -> dict[str, int]:
        """How many chunks hold each term (postings of removed chunks not yet compacted away
        included: it only ranks terms by rarity); terms no chunk has are left out."""
        ids = {t: i for t in dict.fromkeys(terms) if (i := self._vocab.get(t)) is not None}
        if not ids:
            return {}
        view = self._view
        wanted = np.fromiter(ids.values(), dtype=np.int64, count=len(ids))
        counts = np.zeros(len(wanted), dtype=np.int64)
        if len(view.tokens):  # the base: each token's postings run from ptr[i] to ptr[i + 1]
            at = np.searchsorted(view.tokens, wanted).clip(max=len(view.tokens) - 1)
            found = view.tokens[at] == wanted
            counts[found] += (view.ptr[at + 1] - view.ptr[at])[found]
        if len(view.delta[0]):
            tokens, per_token = np.unique(view.delta[0], return_counts=True)
            at = np.searchsorted(tokens, wanted).clip(max=len(tokens) - 1)
            found = tokens[at] == wanted
            counts[found] += per_token[at][found]
        return {t: int(c) for t, c in zip(ids, counts.tolist(), strict=True) if c > 0}

    def search(self, terms: Iterable[str], limit: int) -> list[tuple[int, float]]:
        """The ``limit`` chunk ids with the best BM25 score for any of ``terms`` (the
        query's, from ``lexical.terms``), best first (ties by id), as positive scores."""
        ids = [self._vocab.get(t) for t in dict.fromkeys(terms)]
        known = [i for i in ids if i is not None]
        if not known or limit <= 0:
            return []
        got = self._gather(np.array(known, dtype=np.int64))
        if not len(got.slots):
            return []
        with self._lock:
            alive = self._alive[: got.n].copy()
        lengths = got.view.values[: got.n]
        rows = int(np.count_nonzero(alive))
        average = float(lengths[alive].sum()) / rows if rows else 1.0
        df = np.bincount(got.query_token, minlength=len(known)).astype(np.float64)
        idf = np.log((rows - df + 0.5) / (df + 0.5))
        idf[idf <= 0] = 1e-6
        tf = got.weights.astype(np.float64)
        norm = self.K1 * (1 - self.B + self.B * lengths[got.slots] / (average or 1.0))
        return self._best(got, idf[got.query_token] * tf * (self.K1 + 1) / (tf + norm), limit)


M = TypeVar("M", bound=Postings)


def zip_intact(path: Path) -> bool:
    """Whether every member of the zip (npz) at ``path`` matches its CRC-32: numpy reads
    arrays without checking it, so a damaged byte would otherwise be served."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def load_mirror(kind: type[M], path: Path, generation: int, label: str, count: int,
                build: Callable[[], Postings]) -> tuple[M, bool]:
    """(the mirror, whether it came from its snapshot): the snapshot at ``path`` when it
    holds exactly ``generation`` of ``label`` with ``count`` keys, else ``build()``."""
    index = kind.load(path, generation, label) if zip_intact(path) else None
    if index is not None and index.count == count:
        return index, True
    built = build()
    assert isinstance(built, kind)
    return built, False


def save_mirror(name: str, mirror: Postings, path: Path, generation: int, label: str) -> bool:
    """Snapshot one mirror; one that cannot be written (a full disk, a read-only data folder)
    is only a slower next start, so it is logged, not raised. Whether it was written."""
    try:
        mirror.save(path, generation, label)
    except OSError as exc:
        log.warning("cannot save the %s mirror's snapshot %s (%s); the next start builds it again",
                    name, path, exc)
        return False
    return True
