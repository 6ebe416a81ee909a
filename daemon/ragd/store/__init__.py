"""Storage: the SQLite catalog (source of truth) and the caches mirrored from it; which module
does which job: docs/architecture.md, Storage. ``open_store`` is the vector-store factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragd.store.catalog import Catalog, ChunkRow, FileRow, FileUpdate, NewChunk, NewEmbedding
from ragd.store.vectors import VectorIndex

if TYPE_CHECKING:
    from ragd.config import StoreConfig
    from ragd.store.base import StoreContext, VectorStore

__all__ = ["Catalog", "ChunkRow", "FileRow", "FileUpdate", "NewChunk", "NewEmbedding", "VectorIndex", "open_store",
           "shares"]


def open_store(config: StoreConfig, ctx: StoreContext) -> VectorStore:
    """The backend ``store.backend`` names, opened and made to agree with the catalog; the
    backends' modules (and their libraries) are imported only here."""
    if config.backend == "milvus":
        from ragd.store.milvus import MilvusStore

        return MilvusStore.open(config, ctx)
    from ragd.store.local import LocalStore
    from ragd.store.vectors import IndexPlan

    return LocalStore.open(ctx, IndexPlan(config.exact_limit, config.nprobe, config.vectors))


def shares(config: StoreConfig) -> bool:
    """Whether the backend may hold other daemons' rows too (a Milvus collection can be shared)."""
    return config.backend == "milvus"
