"""Posting lists summed in numpy: the mirrors searches read for sparse and full-text
retrieval. ``SparseIndex`` mirrors one model's BGE-M3 lexical weights (keyed by chunk hash),
``LexicalIndex`` the full-text terms for BM25 (keyed by chunk id); each answers as its SQL
reference in ``store/retrieval.py`` does. Like FAISS for the dense vectors each is a cache of
the catalog, never the only copy: built at load (``Catalog.sparse_rows`` blobs,
``Catalog.lexical_rows``) and kept current by the writer (added after each committed batch,
removed with their chunks or at garbage collection).

Layout (``Postings``): every posting (token, slot, weight), a slot per key. The base part is
sorted by token, so a token's postings are one slice (``ptr``), and its slots are numbered in
key order, so a key's slot is a binary search in its sorted keys; postings added since are
appended to a delta (with a dict of its keys), scanned whole per query, and merged into the
base once they pass a twentieth of it. A query's score is one ``np.bincount`` over the query
tokens' postings, O(P) for P postings. 8 bytes a posting (int32 slot, float32 weight).

Two forms, the same code and the same answers (``mirror_form``): in memory, or with the base
as ``.npy`` files mapped read-only (``store/mapped.py``), where the page cache holds the
postings and the process only the delta and a byte a key. A merge streams the base block by
block into a new base (a new folder when mapped), so neither form sorts the whole index.
Measurements: docs/performance.md, Search caches.

Snapshots (``save`` / ``load``): the delta and live slots as they are, in one ``.npz`` written
atomically with the catalog generation they mirror, and the base either in the same file or
(mapped) named by it; the daemon loads a current one at start instead of building and builds
when it is missing, stale or damaged.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import threading
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import numpy as np

from ragd.models.base import SparseWeights
from ragd.store.base import ChunkFilter
from ragd.store.codec import decode
from ragd.store.mapped import ARRAYS, BaseWriter, bases, drop_bases, open_base
from ragd.store.private import atomic_write, private_dir, temp_folder

if TYPE_CHECKING:
    from ragd.store.catalog import Catalog

log = logging.getLogger(__name__)

COMPACT_FRACTION = 0.05
"""The delta (plus removed keys' postings) is merged into the base once it holds this fraction
of the base's postings (a merge rewrites every posting)..."""
COMPACT_MIN = 1 << 18
"""...and at least this many (a query scans the whole delta): docs/performance.md, Search caches."""
MAPPED_DELTA = 1 << 23
"""A mapped mirror merges its delta into the base once it holds this many postings, however
large the base, and a mapped build writes a sorted run every this many: a merge's memory is a
few times its delta's, so this bounds the process's own memory."""
BUILD_ROWS = 20_000
"""Catalog rows decoded at once by a build."""
MERGE_BLOCK = 1 << 22
"""Base postings a merge handles at once."""
MAPPED_FROM = 300_000
"""``mirrors = "auto"``: keys from which a mirror is mapped (docs/performance.md, Search caches)."""
SNAPSHOT_VERSION = 2


def mirror_form(setting: str, count: int) -> bool:
    """Whether a mirror of ``count`` keys is mapped under ``store.mirrors`` = ``setting``."""
    return setting == "mapped" or (setting == "auto" and count >= MAPPED_FROM)


_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_F32 = np.zeros(0, dtype=np.float32)
_EMPTY_F64 = np.zeros(0, dtype=np.float64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_NO_DELTA = (_EMPTY_I32, _EMPTY_I32, _EMPTY_F32)


@dataclass(frozen=True)
class _Base:
    """The merged postings, never changed once made: in memory, or mapped from folder ``name``."""

    keys: np.ndarray  # slot -> key, ascending (int64 chunk ids, or hashes as bytes)
    values: np.ndarray  # slot -> a float the scoring may use (BM25: the chunk's length), float64
    sizes: np.ndarray  # slot -> its postings, int32
    tokens: np.ndarray  # the distinct tokens, sorted (int32)
    ptr: np.ndarray  # tokens[i]'s postings are slot/weight[ptr[i]:ptr[i + 1]] (int64)
    slot: np.ndarray  # int32
    weight: np.ndarray  # float32
    name: str | None = None


@dataclass(frozen=True)
class _View:
    """What one search reads: replaced as a whole by a merge, so never seen half-built."""

    base: _Base
    keys: list[Any]  # slot len(base.keys) + i -> key; only appended to until the next merge
    values: np.ndarray  # the delta slots' values (float64)
    delta: tuple[np.ndarray, np.ndarray, np.ndarray]  # (token, slot, weight), unsorted


@dataclass(frozen=True)
class _Part:
    """Keys with their postings, ready to append: ``local`` numbers the keys from 0."""

    keys: list[Any]
    tokens: np.ndarray  # int32
    local: np.ndarray  # int32
    weights: np.ndarray  # float32
    sizes: np.ndarray  # postings per key, int64
    values: np.ndarray  # float64


@dataclass(frozen=True)
class _Gathered:
    """The postings of a query's tokens, from the base and the delta, live slots only."""

    slots: np.ndarray  # int32
    weights: np.ndarray  # float32
    query_token: np.ndarray  # index into the query's tokens, per posting
    view: _View
    n: int  # slots below n are named by the view


def _base_of(a: dict[str, np.ndarray], name: str | None = None) -> _Base:
    return _Base(a["keys"], a["values"], a["sizes"], a["tokens"], a["ptr"], a["slot"], a["weight"], name)


def _take(base: np.ndarray, delta: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Per slot, ``base[slot]`` for a base slot, else ``delta[slot - len(base)]``."""
    nb = len(base)
    out = np.empty(len(slots), dtype=np.result_type(base.dtype, delta.dtype))
    in_base = slots < nb
    out[in_base] = base[slots[in_base]]
    out[~in_base] = delta[slots[~in_base] - nb]
    return out


def _join(parts: list[_Part]) -> _Part:
    """Parts as one, their keys numbered on."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(p.keys) for p in parts[:-1]])
    return _Part([k for p in parts for k in p.keys], np.concatenate([p.tokens for p in parts]),
                 np.concatenate([p.local + np.int32(o) for p, o in zip(parts, offsets, strict=True)]),
                 np.concatenate([p.weights for p in parts]), np.concatenate([p.sizes for p in parts]),
                 np.concatenate([p.values for p in parts]))


class Postings:
    """Posting lists (token -> slots with a weight each), a slot per key; the base in memory,
    or mapped from folders beside snapshot path ``mapped``.

    One writer (``add``, ``remove``, ``compact``; serialised by a lock) and any number of
    concurrent searches, which take the current view under a short lock and compute
    without it."""

    INT_KEYS: ClassVar[bool] = False  # keys are ints (else str)

    def __init__(self, mapped: Path | None = None) -> None:
        self._lock = threading.Lock()  # guards swapping _view / _alive and the totals
        self._write = threading.Lock()  # one mutation at a time
        self._home = mapped
        empty_keys = _EMPTY_I64 if self.INT_KEYS else np.zeros(0, dtype="S1")
        self._view = _View(_Base(empty_keys, _EMPTY_F64, _EMPTY_I32, _EMPTY_I32, np.zeros(1, dtype=np.int64),
                                 _EMPTY_I32, _EMPTY_F32), [], _EMPTY_F64, _NO_DELTA)
        self._alive = np.zeros(0, dtype=bool)  # slot -> still live
        self._delta_slots: dict[Any, int] = {}  # live key of the delta -> slot
        self._delta_sizes = _EMPTY_I64  # delta slot -> postings
        self._dead_postings = 0
        self._live = 0  # live keys
        self._value_sum = 0.0  # of the live keys' values (counts, so exact in float64)
        self._pinned: str | None = None  # the base folder the snapshot on disk names

    # -- keys ---------------------------------------------------------------------------
    def _encode(self, keys: Sequence[Any]) -> np.ndarray:
        """Keys as the base stores them: int64, or UTF-8 bytes (which sort as the strings do)."""
        if self.INT_KEYS:
            return np.fromiter(keys, dtype=np.int64, count=len(keys))
        return np.array([k.encode() for k in keys], dtype=np.bytes_) if keys else np.zeros(0, dtype="S1")

    def _key_of(self, view: _View, slot: int) -> Any:
        nb = len(view.base.keys)
        if slot >= nb:
            return view.keys[slot - nb]
        key = view.base.keys[slot]
        return int(key) if self.INT_KEYS else bytes(key).decode()

    def _base_slots(self, keys: Sequence[Any]) -> np.ndarray:
        """Each key's base slot where it is live there, else -1."""
        base_keys = self._view.base.keys
        if not len(base_keys) or not keys:
            return np.full(len(keys), -1, dtype=np.int64)
        encoded = self._encode(keys)
        at = np.searchsorted(base_keys, encoded).clip(max=len(base_keys) - 1)
        hit = (base_keys[at] == encoded) & self._alive[at]
        return np.where(hit, at, -1)

    # -- size ---------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Live keys."""
        return self._live

    @property
    def home(self) -> Path | None:
        """The snapshot path its base folders lie beside, when mapped."""
        return self._home

    @property
    def postings(self) -> int:
        """Postings held, dead ones (not yet compacted away) included."""
        view = self._view
        return len(view.base.slot) + len(view.delta[0])

    @property
    def nbytes(self) -> int:
        """Bytes of every array held, mapped ones included."""
        view = self._view
        b = view.base
        return self._alive.nbytes + sum(a.nbytes for a in (
            b.keys, b.values, b.sizes, b.tokens, b.ptr, b.slot, b.weight, view.values, *view.delta))

    # -- writes -------------------------------------------------------------------------
    def add(self, items: Iterable[tuple[Any, np.ndarray, np.ndarray]], *, values: Iterable[float] = (),
            compact: bool = True) -> None:
        """Add (or replace) keys with their (tokens, weights), and their ``values`` in the
        same order when the scoring uses them; ``compact=False`` leaves the merge to the
        caller."""
        with self._write:
            part = _part_of(items, values)
            if part is not None:
                self._append(part)
            if compact and self._should_compact():
                self._compact_locked()

    def _append(self, part: _Part) -> None:
        """Add ``part``'s keys after the last slot (a key given twice: the last wins). The
        caller holds the write lock."""
        view = self._view
        first, n = len(self._alive), len(part.keys)
        in_base = self._base_slots(part.keys)
        dead: list[int] = []
        for i, key in enumerate(part.keys):
            old = self._delta_slots.get(key)
            if old is None and in_base[i] >= 0:
                old = int(in_base[i])
            if old is not None:
                dead.append(old)
            self._delta_slots[key] = first + i
        old_tokens, old_slots, old_weights = view.delta
        if len(old_tokens):
            delta = (np.concatenate([old_tokens, part.tokens]),
                     np.concatenate([old_slots, part.local + np.int32(first)]),
                     np.concatenate([old_weights, part.weights]))
        else:  # a build's first part: taken as it is, not copied
            delta = (part.tokens, part.local + np.int32(first), part.weights)
        alive = np.concatenate([self._alive, np.ones(n, dtype=bool)])
        delta_sizes = np.concatenate([self._delta_sizes, part.sizes])
        values = np.concatenate([view.values, part.values])
        with self._lock:
            view.keys.extend(part.keys)
            self._alive, self._delta_sizes = alive, delta_sizes
            self._view = _View(view.base, view.keys, values, delta)
            self._live += n
            self._value_sum += float(part.values.sum())
        self._kill(dead)

    def _kill(self, slots: Sequence[int] | np.ndarray) -> None:
        """Mark distinct live ``slots`` dead."""
        if not len(slots):
            return
        at = np.asarray(slots, dtype=np.int64)
        view = self._view
        self._dead_postings += int(_take(view.base.sizes, self._delta_sizes, at).sum())
        gone = float(_take(view.base.values, view.values, at).sum())
        with self._lock:
            self._alive[at] = False
            self._live -= len(at)
            self._value_sum -= gone

    def remove(self, keys: Iterable[Any]) -> None:
        """Forget keys (unknown ones are ignored)."""
        with self._write:
            gone: list[int] = []
            rest: list[Any] = []
            for key in keys:
                slot = self._delta_slots.pop(key, None)
                if slot is None:
                    rest.append(key)
                else:
                    gone.append(slot)
            in_base = self._base_slots(rest)
            self._kill(np.unique(np.concatenate([np.asarray(gone, dtype=np.int64), in_base[in_base >= 0]])))
            if self._should_compact():
                self._compact_locked()

    def compact(self) -> None:
        """Merge the delta into the base and drop the postings of removed keys."""
        with self._write:
            self._compact_locked()

    def _should_compact(self) -> bool:
        view = self._view
        base = len(view.base.slot)
        waste = len(view.delta[0]) + self._dead_postings
        return waste >= COMPACT_MIN and (waste >= COMPACT_FRACTION * base
                                         or (self._home is not None and len(view.delta[0]) >= MAPPED_DELTA))

    def _compact_locked(self) -> None:
        """Merge: the live keys of base and delta, in key order, become the new base's slots;
        the base's postings are streamed block by block with the sorted delta's inserted at
        the end of their token's run. The caller holds the write lock."""
        view, alive = self._view, self._alive
        base = view.base
        nb = len(base.keys)
        base_live = np.flatnonzero(alive[:nb])
        delta_live = np.flatnonzero(alive[nb:])
        delta_keys = self._encode([view.keys[i] for i in delta_live.tolist()])
        order = np.argsort(delta_keys, kind="stable")
        delta_keys, delta_live = delta_keys[order], delta_live[order]
        base_keys = base.keys[base_live]
        total = len(base_live) + len(delta_live)
        delta_rank = np.searchsorted(base_keys, delta_keys) + np.arange(len(delta_keys))
        from_base = np.ones(total, dtype=bool)
        from_base[delta_rank] = False
        base_rank = np.flatnonzero(from_base)
        renumber = np.full(len(alive), -1, dtype=np.int32)
        renumber[base_live] = base_rank
        renumber[nb + delta_live] = delta_rank

        writer = BaseWriter(self._home) if self._home is not None else None
        arrays: dict[str, np.ndarray] = {}

        def alloc(name: str, dtype: Any, length: int) -> np.ndarray:
            arrays[name] = writer.array(name, dtype, length) if writer is not None else np.empty(length, dtype)
            return arrays[name]

        try:
            for name, dtype, old, new in (("keys", np.result_type(base_keys, delta_keys), base_keys, delta_keys),
                                          ("values", np.float64, base.values[base_live], view.values[delta_live]),
                                          ("sizes", np.int32, base.sizes[base_live], self._delta_sizes[delta_live])):
                out = alloc(name, dtype, total)
                out[base_rank] = old
                out[delta_rank] = new
            arrays["tokens"], arrays["ptr"] = _merge(base, view.delta, alive, renumber, alloc)
            if writer is None:
                merged = _base_of(arrays)
            else:
                assert self._home is not None
                writer.put("tokens", arrays["tokens"])
                writer.put("ptr", arrays["ptr"])
                name = writer.finish(type(self).__name__)
                arrays.clear()
                merged = _base_of(open_base(self._home.parent / name, type(self).__name__, check=False), name)
        except BaseException:
            if writer is not None:
                writer.abandon()
            raise
        with self._lock:
            self._view = _View(merged, [], _EMPTY_F64, _NO_DELTA)
            self._alive = np.ones(total, dtype=bool)
        self._delta_slots, self._delta_sizes, self._dead_postings = {}, _EMPTY_I64, 0
        if base.name is not None and base.name != self._pinned and self._home is not None:
            drop_bases(self._home, lambda n: n != base.name)

    def replace(self, other: Postings) -> None:
        """Take over ``other``'s contents in place, so every holder of this object sees them."""
        with self._write:
            with self._lock:
                self._view, self._alive = other._view, other._alive
                self._live, self._value_sum = other._live, other._value_sum
                self._take_extra(other)
            self._delta_slots, self._delta_sizes = other._delta_slots, other._delta_sizes
            self._dead_postings, self._home = other._dead_postings, other._home

    def _take_extra(self, other: Postings) -> None:
        """What a subclass keeps beside the postings, taken over by ``replace``."""

    # -- snapshots ----------------------------------------------------------------------
    def save(self, path: Path, generation: int, label: str) -> None:
        """Write the delta and live slots as they are (no merge) to ``path``, atomically, with
        the base (in memory) or the name of its folder (mapped), recording the catalog
        ``generation`` and the ``label`` (what they mirror) that ``load`` must match. A
        mapped mirror's base folders other than its current one are removed."""
        with self._write:
            if self._home is not None and self._view.base.name is None:
                self._compact_locked()  # a mapped mirror never merged has no folder to name yet
            view, alive = self._view, self._alive
            base = view.base
            meta = {"version": SNAPSHOT_VERSION, "kind": type(self).__name__, "generation": generation,
                    "label": label, "form": "mapped" if self._home is not None else "memory", "base": base.name}
            arrays: dict[str, Any] = {
                "meta": np.asarray(json.dumps(meta)), "alive": alive,
                "delta_keys": self._encode(view.keys[: len(alive) - len(base.keys)]),
                "delta_values": view.values[: len(alive) - len(base.keys)], "delta_token": view.delta[0],
                "delta_slot": view.delta[1], "delta_weight": view.delta[2], **self._extra_arrays(),
            }
            if base.name is None:
                arrays.update({f"base_{name}": getattr(base, name) for name in ARRAYS})

            def write(tmp: str) -> None:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)

            atomic_write(path, write)
            if base.name is not None:
                self._pinned = base.name
                drop_bases(path, lambda n: n == base.name)

    @classmethod
    def load(cls, path: Path, generation: int, label: str, *, mapped: bool = False) -> Self | None:
        """The snapshot at ``path`` if it mirrors exactly ``generation`` of ``label`` in the form
        asked for, else None (missing, stale, written by another version, unreadable, or its
        base folder missing or damaged)."""
        want = {"version": SNAPSHOT_VERSION, "kind": cls.__name__, "generation": generation, "label": label,
                "form": "mapped" if mapped else "memory"}
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if not isinstance(meta, dict) or {k: meta.get(k) for k in want} != want:
                    return None
                arrays = {name: data[name] for name in data.files}
            name = meta.get("base")
            if mapped:
                if not isinstance(name, str) or name not in {f.name for f in bases(path)}:
                    return None
                base = _base_of(open_base(path.parent / name, cls.__name__), name)
            else:
                base = _base_of({n: arrays[f"base_{n}"] for n in ARRAYS})
            index = cls(path if mapped else None)
            index._restore(base, arrays)
        except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile):
            return None
        folder = index._view.base.name
        if folder is not None:  # older bases are left from before; a newer one may be another process's merge
            index._pinned = folder
            drop_bases(path, lambda n: n == folder, newer_kept=path.parent / folder)
        return index

    def _restore(self, base: _Base, a: dict[str, np.ndarray]) -> None:
        """Take a snapshot's base and delta, after checking that they agree."""
        key_kind = "i" if self.INT_KEYS else "S"
        dtypes_agree = (
            base.keys.dtype.kind == key_kind and base.values.dtype == np.float64 and base.sizes.dtype == np.int32
            and base.tokens.dtype == np.int32 and base.ptr.dtype == np.int64 and base.slot.dtype == np.int32
            and base.weight.dtype == np.float32 and all(x.ndim == 1 for x in (base.keys, base.slot, base.ptr))
        )
        nb = len(base.keys)
        if not dtypes_agree or not (len(base.values) == len(base.sizes) == nb
                                    and len(base.ptr) == len(base.tokens) + 1 and base.ptr[0] == 0
                                    and base.ptr[-1] == len(base.slot) == len(base.weight)
                                    and int(base.sizes.sum()) == len(base.slot)):
            raise ValueError("inconsistent base")
        if nb > 1 and not bool(np.all(base.keys[1:] > base.keys[:-1])):
            raise ValueError("the base's keys are not in order")
        if len(base.slot) and not 0 <= int(base.slot.min()) <= int(base.slot.max()) < nb:
            raise ValueError("a base posting names no key")
        delta_keys = a["delta_keys"]
        keys = [int(k) for k in delta_keys.tolist()] if self.INT_KEYS else [bytes(k).decode() for k in delta_keys]
        alive = a["alive"].astype(bool)
        delta = (a["delta_token"].astype(np.int32), a["delta_slot"].astype(np.int32),
                 a["delta_weight"].astype(np.float32))
        values = a["delta_values"].astype(np.float64)
        n = nb + len(keys)
        if not (len(alive) == n and len(values) == len(keys) and len(delta[0]) == len(delta[1]) == len(delta[2])):
            raise ValueError("inconsistent delta")
        if len(delta[1]) and not nb <= int(delta[1].min()) <= int(delta[1].max()) < n:
            raise ValueError("a delta posting names no key")
        delta_sizes = np.bincount(delta[1] - nb, minlength=len(keys)).astype(np.int64)
        self._view, self._alive = _View(base, keys, values, delta), alive
        live_delta = np.flatnonzero(alive[nb:])
        self._delta_slots = {keys[i]: nb + i for i in live_delta.tolist()}
        if len(self._delta_slots) != len(live_delta) or (self._base_slots(list(self._delta_slots)) >= 0).any():
            raise ValueError("a key is live in two slots")
        self._delta_sizes = delta_sizes
        base_alive = alive[:nb]
        self._live = int(np.count_nonzero(alive))
        self._value_sum = float(base.values[base_alive].sum()) + float(values[alive[nb:]].sum())
        self._dead_postings = int(base.sizes[~base_alive].sum()) + int(delta_sizes[~alive[nb:]].sum())
        self._restore_extra(a)

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        """What a subclass keeps beside the postings, for a snapshot."""
        return {}

    def _restore_extra(self, arrays: dict[str, np.ndarray]) -> None:
        """Read back what ``_extra_arrays`` saved."""

    # -- reads --------------------------------------------------------------------------
    def _gather(self, q_tokens: np.ndarray, scale: np.ndarray | None = None) -> _Gathered:
        """Every live posting of the query's tokens (int64, distinct); with ``scale`` (a float64
        per query token) the weights come multiplied by their token's, and no query_token."""
        with self._lock:  # slots below n are named by the view and covered by alive
            view, alive = self._view, self._alive
            n = len(alive)
            all_live = self._live == n
        base = view.base
        slot_parts: list[np.ndarray] = []
        weight_parts: list[np.ndarray] = []
        which_parts: list[np.ndarray] = []
        if len(base.tokens):
            at = np.searchsorted(base.tokens, q_tokens)
            present = at < len(base.tokens)
            present[present] = base.tokens[at[present]] == q_tokens[present]
            for qi, i in zip(np.flatnonzero(present).tolist(), at[present].tolist(), strict=True):
                lo, hi = int(base.ptr[i]), int(base.ptr[i + 1])
                slot_parts.append(base.slot[lo:hi])
                if scale is None:
                    weight_parts.append(base.weight[lo:hi])
                    which_parts.append(np.full(hi - lo, qi, dtype=np.int32))
                else:
                    weight_parts.append(base.weight[lo:hi] * scale[qi])
        d_tokens, d_slots, d_weights = view.delta
        if len(d_tokens):
            hit = np.isin(d_tokens, q_tokens, kind="table")
            if hit.any():
                order = np.argsort(q_tokens)
                slot_parts.append(d_slots[hit])
                which = order[np.searchsorted(q_tokens[order], d_tokens[hit])].astype(np.int32)
                if scale is None:
                    weight_parts.append(d_weights[hit])
                    which_parts.append(which)
                else:
                    weight_parts.append(d_weights[hit] * scale[which])
        if not slot_parts:
            return _Gathered(_EMPTY_I32, _EMPTY_F32, _EMPTY_I32, view, n)
        slots = np.concatenate(slot_parts)
        weights = np.concatenate(weight_parts)
        which = np.concatenate(which_parts) if which_parts else _EMPTY_I32
        if not all_live:
            live = alive[slots]
            slots, weights = slots[live], weights[live]
            which = which[live] if len(which) else which
        return _Gathered(slots, weights, which, view, n)

    def _best(self, got: _Gathered, contributions: np.ndarray, limit: int) -> list[tuple[Any, float]]:
        """The ``limit`` keys with the highest summed contributions, best first, ties by key;
        every key with a posting among the gathered ones is a candidate."""
        if not len(got.slots):
            return []
        scores = np.bincount(got.slots, weights=contributions, minlength=got.n)
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) < limit:  # else the best are positive, hence seen: the unseen need no pass
            seen = np.zeros(got.n, dtype=bool)
            seen[got.slots] = True
            candidates = np.flatnonzero(seen)
        if len(candidates) > limit:  # (np.partition is slow near the end of many equal values: negated)
            values = scores[candidates]
            candidates = candidates[values >= -np.partition(-values, limit - 1)[limit - 1]]  # ties: by key below
        ranked = sorted(((self._key_of(got.view, i), float(scores[i])) for i in candidates.tolist()),
                        key=lambda ks: (-ks[1], ks[0]))
        return ranked[:limit]

    # -- builds -------------------------------------------------------------------------
    def _build_from(self, parts: Iterable[_Part]) -> None:
        """Append ``parts`` (a build's rows, batch by batch) and merge them once; a mapped
        mirror sorts them into runs on disk first (``_build_runs``)."""
        with self._write:
            if self._home is not None:
                self._build_runs(parts, self._home)
                return
            pending = list(parts)
            self._append_all(pending)
            self._compact_locked()

    def _build_runs(self, parts: Iterable[_Part], home: Path) -> None:
        """A mapped build, an external merge sort: every ``MAPPED_DELTA`` postings the pending
        parts, sorted by token, are written to a run (temp files), and the runs are merged
        once into the base, ``MERGE_BLOCK`` postings' worth of tokens at a time, so the
        build's memory stays bounded and each posting is written twice whatever the size.
        A key given twice keeps its last postings. The caller holds the write lock."""
        private_dir(home.parent)
        folder = temp_folder(home.parent, home.stem)
        try:
            keys: list[Any] = []
            values: list[np.ndarray] = []
            sizes: list[np.ndarray] = []
            runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            pending: list[_Part] = []
            held = 0

            def spill() -> None:
                part = _join(pending)
                pending.clear()
                order = np.argsort(part.tokens, kind="stable")
                run = []
                for name, arr in (("token", part.tokens[order]), ("slot", part.local[order] + np.int32(len(keys))),
                                  ("weight", part.weights[order])):
                    path = folder / f"{len(runs)}.{name}.npy"
                    np.save(path, arr)
                    run.append(np.load(path, mmap_mode="r"))
                runs.append((run[0], run[1], run[2]))
                keys.extend(part.keys)
                values.append(part.values)
                sizes.append(part.sizes)

            for part in parts:
                pending.append(part)
                held += len(part.tokens)
                if held >= MAPPED_DELTA:
                    spill()
                    held = 0
            if pending:
                spill()
            merged = _merge_runs(self._encode(keys), np.concatenate(values or [_EMPTY_F64]),
                                 np.concatenate(sizes or [_EMPTY_I64]), runs, BaseWriter(home), type(self).__name__)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        base = _base_of(open_base(home.parent / merged, type(self).__name__, check=False), merged)
        with self._lock:
            self._view = _View(base, [], _EMPTY_F64, _NO_DELTA)
            self._alive = np.ones(len(base.keys), dtype=bool)
            self._live, self._value_sum = len(base.keys), float(base.values.sum())

    def _append_all(self, parts: list[_Part]) -> None:
        """Append ``parts`` as one and empty the list (so they are freed before a merge)."""
        if parts:
            part = _join(parts)
            parts.clear()
            self._append(part)


def _part_of(items: Iterable[tuple[Any, np.ndarray, np.ndarray]], values: Iterable[float] = ()) -> _Part | None:
    """(key, tokens, weights) items, with their values when given, as one part (None if none)."""
    keys: list[Any] = []
    tokens: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for key, tok, w in items:
        keys.append(key)
        tokens.append(np.asarray(tok, dtype=np.int32))
        weights.append(np.asarray(w, dtype=np.float32))
    if not keys:
        return None
    given = np.fromiter(values, dtype=np.float64)
    if len(given) not in (0, len(keys)):
        raise ValueError(f"{len(given)} values for {len(keys)} keys")
    sizes = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(keys))
    return _Part(keys, np.concatenate(tokens), np.repeat(np.arange(len(keys), dtype=np.int32), sizes),
                 np.concatenate(weights), sizes, given if len(given) else np.zeros(len(keys)))


def _batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(rows)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _merge_runs(keys: np.ndarray, values: np.ndarray, sizes: np.ndarray,
                runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], writer: BaseWriter, kind: str) -> str:
    """Write a base from runs of (token, build slot, weight) sorted by token, a build slot per
    entry of ``keys`` (the last of equal keys wins); returns the base folder's name."""
    try:
        order = np.argsort(keys, kind="stable")
        alive = np.ones(len(keys), dtype=bool)
        if len(keys) > 1:
            alive[order[:-1][keys[order][1:] == keys[order][:-1]]] = False  # an earlier one of equal keys
        order = order[alive[order]]
        renumber = np.full(len(keys), -1, dtype=np.int32)
        renumber[order] = np.arange(len(order), dtype=np.int32)
        writer.put("keys", keys[order])
        writer.put("values", values[order])
        writer.put("sizes", sizes[order].astype(np.int32))
        every = alive.all()
        distinct: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        for run_tokens, run_slots, _ in runs:
            live_tokens = np.asarray(run_tokens) if every else run_tokens[alive[run_slots]]
            starts = np.flatnonzero(np.diff(live_tokens, prepend=np.int32(-1)) != 0)
            distinct.append(live_tokens[starts])
            counts.append(np.diff(np.append(starts, len(live_tokens))))
        tokens = np.unique(np.concatenate(distinct or [_EMPTY_I32])).astype(np.int32)
        per_token = np.zeros(len(tokens), dtype=np.int64)
        for d, c in zip(distinct, counts, strict=True):
            per_token[np.searchsorted(tokens, d)] += c
        ptr = np.append(0, np.cumsum(per_token)).astype(np.int64)
        total = int(ptr[-1])
        out_slot, out_weight = writer.array("slot", np.int32, total), writer.array("weight", np.float32, total)
        bounds = np.unique(np.append(np.searchsorted(ptr, np.arange(0, total, MERGE_BLOCK), side="right") - 1,
                                     len(tokens)))
        for lo, hi in itertools.pairwise(bounds.tolist()):
            parts = []
            for run_tokens, run_slots, run_weights in runs:  # each run's slice of tokens[lo:hi]
                a, b = np.searchsorted(run_tokens, [tokens[lo], tokens[hi] if hi < len(tokens) else np.inf])
                parts.append((run_tokens[a:b], run_slots[a:b], run_weights[a:b]))
            block_tokens = np.concatenate([p[0] for p in parts])
            block_slots = np.concatenate([p[1] for p in parts])
            block_weights = np.concatenate([p[2] for p in parts])
            if not every:
                live = alive[block_slots]
                block_tokens, block_slots, block_weights = block_tokens[live], block_slots[live], block_weights[live]
            by_token = np.argsort(block_tokens, kind="stable")
            out_slot[ptr[lo] : ptr[hi]] = renumber[block_slots[by_token]]
            out_weight[ptr[lo] : ptr[hi]] = block_weights[by_token]
        writer.put("tokens", tokens)
        writer.put("ptr", ptr)
        return writer.finish(kind)
    except BaseException:
        writer.abandon()
        raise


def _merge(base: _Base, delta: tuple[np.ndarray, np.ndarray, np.ndarray], alive: np.ndarray,
           renumber: np.ndarray, alloc: Callable[[str, Any, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Write the live postings of ``base`` and ``delta``, slots renumbered, sorted by token,
    into ``alloc``'s "slot" and "weight" arrays, ``MERGE_BLOCK`` base postings at a time;
    returns the new (tokens, ptr). A delta posting goes after its token's base postings."""
    d_tokens, d_slots, d_weights = delta
    keep = alive[d_slots]
    if not keep.all():
        d_tokens, d_slots, d_weights = d_tokens[keep], d_slots[keep], d_weights[keep]
    del keep
    order = np.argsort(d_tokens, kind="stable")
    d_tokens, d_weights = d_tokens[order], d_weights[order]
    d_slots = renumber[d_slots[order]]
    del order
    tokens, ptr = base.tokens, base.ptr
    count = len(base.slot)
    run_start = np.flatnonzero(np.diff(d_tokens, prepend=np.int32(-1)) != 0)  # the delta's runs of one token
    d_distinct = d_tokens[run_start]
    d_counts = np.diff(np.append(run_start, len(d_tokens)))
    run_end = np.cumsum(d_counts)
    run_at = ptr[np.searchsorted(tokens, d_distinct, side="right")]  # a run goes before this base posting
    total = int(base.sizes[alive[: len(base.keys)]].sum()) + len(d_tokens)
    out_slot, out_weight = alloc("slot", np.int32, total), alloc("weight", np.float32, total)
    if not count:  # no base: the sorted delta is the merge
        out_slot[:], out_weight[:] = d_slots, d_weights
        return d_distinct.astype(np.int32), np.append(0, run_end).astype(np.int64)
    base_counts = np.zeros(len(tokens), dtype=np.int64)
    written = done = runs_done = 0
    for lo in range(0, count, MERGE_BLOCK):
        hi = min(lo + MERGE_BLOCK, count)
        slots, weights = np.asarray(base.slot[lo:hi]), np.asarray(base.weight[lo:hi])
        kept = alive[slots]
        first, last = np.searchsorted(ptr, [lo, hi], side="right") - 1  # tokens starting in the block
        runs = np.diff(np.clip(ptr[first : last + 2], lo, hi))
        token_of = np.repeat(np.arange(first, first + len(runs)), runs)
        base_counts += np.bincount(token_of[kept], minlength=len(tokens))
        runs_end = len(run_at) if hi >= count else int(np.searchsorted(run_at, hi, side="right"))
        end = int(run_end[runs_end - 1]) if runs_end else 0
        kept_before = np.concatenate([[0], np.cumsum(kept)])
        at = np.repeat(kept_before[run_at[runs_done:runs_end] - lo], d_counts[runs_done:runs_end])
        is_delta = np.zeros(int(kept_before[-1]) + end - done, dtype=bool)  # the block merged
        is_delta[at + np.arange(end - done)] = True
        out = slice(written, written + len(is_delta))
        out_slot[out][is_delta], out_weight[out][is_delta] = d_slots[done:end], d_weights[done:end]
        out_slot[out][~is_delta], out_weight[out][~is_delta] = renumber[slots[kept]], weights[kept]
        written, done, runs_done = written + len(is_delta), end, runs_end
    if written != total:
        raise AssertionError(f"merged {written} postings, expected {total}")
    union = np.union1d(tokens, d_distinct).astype(np.int32)
    counts = np.zeros(len(union), dtype=np.int64)
    counts[np.searchsorted(union, tokens)] += base_counts
    counts[np.searchsorted(union, d_distinct)] += d_counts
    nonzero = counts > 0
    return union[nonzero], np.concatenate([[0], np.cumsum(counts[nonzero])]).astype(np.int64)


class SparseIndex(Postings):
    """The sparse weights of every live chunk hash of one model, searchable in numpy: the
    local backend's sparse store (``search_chunks``)."""

    @classmethod
    def build(cls, rows: Iterable[tuple[str, bytes]], mapped: Path | None = None) -> SparseIndex:
        """From ``(chunk hash, encoded weights)`` rows (``Catalog.sparse_rows``); mapped from
        folders beside snapshot path ``mapped`` when given."""
        index = cls(mapped)
        index._build_from(part for batch in _batches(rows, BUILD_ROWS)
                          if (part := _part_of((h, *decode(blob)) for h, blob in batch)) is not None)
        return index

    def search(self, weights: SparseWeights, limit: int) -> list[tuple[str, float]]:
        """The ``limit`` chunk hashes with the highest lexical matching score (the sum over
        shared tokens of query weight x document weight), best first, ties by hash; every
        chunk sharing a token with the query is a candidate (as in ``retrieval.sparse_search``)."""
        if not weights or limit <= 0:
            return []
        q_tokens = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
        q_weights = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
        got = self._gather(q_tokens, q_weights)
        return self._best(got, got.weights, limit)

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
    INT_KEYS = True

    def __init__(self, mapped: Path | None = None) -> None:
        super().__init__(mapped)
        # term -> id; a missing term gets the next id on lookup (``vocab[w]``)
        self._vocab: defaultdict[str, int] = defaultdict()
        self._vocab.default_factory = self._vocab.__len__

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str]], mapped: Path | None = None) -> LexicalIndex:
        """From ``(chunk id, stored terms)`` rows (``Catalog.lexical_rows``), in bulk; mapped
        from folders beside snapshot path ``mapped`` when given."""
        index = cls(mapped)
        index._build_from(index._bulk(batch) for batch in _batches(rows, BUILD_ROWS))
        return index

    def _bulk(self, rows: list[tuple[int, str]]) -> _Part:
        """Rows as a part: every (term, chunk) pair counted by one sort of term x chunk keys,
        which also leaves the postings in token order."""
        lookup = self._vocab.__getitem__
        keys: list[int] = []
        lengths: list[int] = []
        ids: list[int] = []
        for chunk_id, text in rows:
            words = text.split()
            keys.append(chunk_id)
            lengths.append(len(words))
            ids.extend(map(lookup, words))
        n = len(keys)
        doc = np.repeat(np.arange(n, dtype=np.int64), lengths)
        pairs, counts = np.unique(np.asarray(ids, dtype=np.int64) * n + doc, return_counts=True)
        local = (pairs % n).astype(np.int32)
        return _Part(keys, (pairs // n).astype(np.int32), local, counts.astype(np.float32),
                     np.bincount(local, minlength=n).astype(np.int64), np.asarray(lengths, dtype=np.float64))

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
        base = view.base
        wanted = np.fromiter(ids.values(), dtype=np.int64, count=len(ids))
        counts = np.zeros(len(wanted), dtype=np.int64)
        if len(base.tokens):  # the base: each token's postings run from ptr[i] to ptr[i + 1]
            at = np.searchsorted(base.tokens, wanted).clip(max=len(base.tokens) - 1)
            found = base.tokens[at] == wanted
            counts[found] += (base.ptr[at + 1] - base.ptr[at])[found]
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
            rows, total = self._live, self._value_sum
        average = total / rows if rows else 1.0
        df = np.bincount(got.query_token, minlength=len(known)).astype(np.float64)
        idf = np.log((rows - df + 0.5) / (df + 0.5))
        idf[idf <= 0] = 1e-6
        tf = got.weights.astype(np.float64)
        lengths = _take(got.view.base.values, got.view.values, got.slots)
        norm = self.K1 * (1 - self.B + self.B * lengths / (average or 1.0))
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
                build: Callable[[Path | None], Postings], form: str = "auto") -> tuple[M, bool]:
    """(the mirror, whether it came from its snapshot): the snapshot at ``path`` when it
    holds exactly ``generation`` of ``label`` with ``count`` keys in the form ``form`` asks
    for at that count (``mirror_form``), else ``build(path if mapped else None)``."""
    mapped = mirror_form(form, count)
    index = kind.load(path, generation, label, mapped=mapped) if zip_intact(path) else None
    if index is not None and index.count == count:
        return index, True
    built = build(path if mapped else None)
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
