"""The vector-store seam: what the engine, the indexer and search ask of whichever backend
holds the dense vectors and BGE-M3's lexical weights.

Two backends implement ``VectorStore``: ``local.py`` (FAISS and the in-memory sparse mirror,
snapshots in the data folder) and ``milvus.py`` (one Milvus collection, Milvus Lite or a
server); ``ragd.store.open_store`` picks one by ``store.backend``. Either is a cache of the
catalog (SQLite stays the truth): it is opened against the catalog and made to agree with it
before it is served. The full-text (BM25) signal is not a
backend's: it stays in SQLite FTS5 and its in-memory mirror for both.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ragd.models.base import FloatArray, SparseWeights

if TYPE_CHECKING:
    from ragd.filters import Filters
    from ragd.store.catalog import BatchResult, Catalog, ChunkRow, NewEmbedding


@dataclass(frozen=True)
class ChunkFilter:
    """The chunks a search may return: ``ids`` (an allow-list of this daemon's chunk ids), or
    every chunk when None. Each backend translates it: an id selector for FAISS, a boolean
    expression for Milvus. ``scope`` is the request's filters (path prefix folded in), which
    a shared collection applies to other daemons' rows by their stored fields; None: every
    such row."""

    ids: np.ndarray | None = None
    scope: Filters | None = None

    @property
    def everything(self) -> bool:
        return self.ids is None

    @property
    def nothing(self) -> bool:
        return self.ids is not None and len(self.ids) == 0

    @functools.cached_property
    def id_set(self) -> frozenset[int] | None:
        """``ids`` as a set (made once per filter: a search and its side threads share it)."""
        return None if self.ids is None else frozenset(self.ids.tolist())


EVERY_CHUNK = ChunkFilter()


@dataclass(frozen=True)
class StoreContext:
    """What a backend is opened with: the catalog it mirrors (the engine's own connection,
    the writer's) and the embedder whose vectors it holds."""

    catalog: Catalog
    data_dir: Path
    model_id: str  # the embedder's id (labels snapshots and collections)
    model_key: int  # its row in the catalog's ``models`` table
    dim: int
    has_sparse: bool  # the embedder gives lexical weights (BGE-M3)
    mirrors: bool  # in-memory caches may be built (False: a one-shot search asks SQLite)
    mirror_form: str = "auto"  # store.mirrors: "memory", "mapped" or "auto" (by size)


class DenseStore(Protocol):
    """The dense side of a backend, as searches read it."""

    @property
    def count(self) -> int: ...

    def ids(self) -> np.ndarray: ...

    def search(self, query: FloatArray, n: int, where: ChunkFilter = EVERY_CHUNK) -> list[tuple[int, float]]:
        """The top ``n`` (chunk id, inner product) among the chunks ``where`` allows."""
        ...


class SparseStore(Protocol):
    """The lexical-weights side of a backend, as searches read it."""

    @property
    def count(self) -> int: ...

    def search_chunks(self, weights: SparseWeights, n: int, where: ChunkFilter,
                      catalog: Catalog) -> list[tuple[int, float]]:
        """(chunk id, lexical matching score) of the best ``n`` matches among the chunks
        ``where`` allows, best first. ``catalog`` is the calling thread's connection, for a
        store that keys its postings by chunk hash."""
        ...


class VectorStore(ABC):
    """One backend: a dense store and (for an embedder with lexical weights) a sparse store,
    kept current by the writer and flushed with the catalog generation they hold."""

    name = ""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    @property
    @abstractmethod
    def dense(self) -> DenseStore: ...

    @property
    @abstractmethod
    def sparse(self) -> SparseStore | None:
        """None for an embedder without lexical weights."""

    @abstractmethod
    def add(self, embeddings: Sequence[NewEmbedding], result: BatchResult) -> None:
        """Follow a committed batch (``Catalog.apply``): its removed chunks go, its added
        chunks (``result.added``) get their vectors (``embeddings``, else the catalog's)."""

    @abstractmethod
    def remove(self, ids: Sequence[int]) -> None:
        """Chunks left the catalog."""

    @abstractmethod
    def collected(self, hashes: Sequence[str]) -> None:
        """The catalog dropped the embeddings of these chunk hashes (garbage collection)."""

    @abstractmethod
    def check(self) -> list[str]:
        """Rebuild, in place, each part whose contents disagree with the catalog; their names."""

    @abstractmethod
    def rebuild(self) -> None:
        """Everything again from the catalog, in place (readers see the new contents)."""

    @abstractmethod
    def unsaved(self, generation: int) -> list[str]:
        """The parts whose flushed state is older than ``generation``."""

    @abstractmethod
    def save(self, names: Sequence[str], generation: int) -> None:
        """Flush (snapshot) the parts ``names`` as holding ``generation``; a failure is
        logged, not raised (it only costs a slower next start)."""

    # A shared collection (Milvus) also holds other daemons' rows ("origins"). Its searches
    # return them under negative ids, which only these three methods resolve; a store of one
    # daemon's rows (FAISS) answers each with nothing.
    def foreign_rows(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        """The rows (``ChunkRow.origin`` set) of the other daemons' chunks among ``ids``, from
        the fields stored beside their vectors; ids no longer held are left out."""
        return {}

    def foreign_note(self, where: ChunkFilter) -> str | None:
        """Why other daemons' rows were left out of a search within ``where`` (a filter their
        stored fields cannot answer), or None when they were not."""
        return None

    def origin_of(self, path: str) -> str | None:
        """The other daemon (origin) whose rows hold the file ``path``, if any."""
        return None

    def shared_count(self) -> int:
        """How many other daemons' rows the searches also read."""
        return 0

    def describe(self) -> str:
        """The dense index in a few words, for ``Status`` (``faiss ivf4000 int8``)."""
        return self.name

    def snapshot_paths(self) -> dict[str, Path]:
        """The files in the data folder this backend snapshots to, by part."""
        return {}

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to let go of
        """Let go of connections (a client, a server's handle)."""

