"""Storage: the SQLite catalog (source of truth) and the FAISS vector cache."""

from ragd.store.catalog import Catalog, ChunkRow, FileRow, FileUpdate, NewChunk, NewEmbedding
from ragd.store.vectors import VectorIndex

__all__ = ["Catalog", "ChunkRow", "FileRow", "FileUpdate", "NewChunk", "NewEmbedding", "VectorIndex"]
