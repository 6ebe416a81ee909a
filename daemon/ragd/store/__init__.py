"""Storage: the SQLite catalog (source of truth) and the caches mirrored from it; which module
does which job: docs/architecture.md, Storage."""

from ragd.store.catalog import Catalog, ChunkRow, FileRow, FileUpdate, NewChunk, NewEmbedding
from ragd.store.vectors import VectorIndex

__all__ = ["Catalog", "ChunkRow", "FileRow", "FileUpdate", "NewChunk", "NewEmbedding", "VectorIndex"]
