"""The catalog: SQLite (through sqlite-utils, WAL) is the source of truth for roots, files,
chunks, embeddings and sparse weights; everything else (FAISS, the in-memory mirrors) is
rebuilt from it. ``Catalog`` holds the reads and the one write path (``apply``); the schema
and its migrations are in ``store/schema.py``, sparse and full-text retrieval in
``store/retrieval.py``.

Embeddings are keyed by (model, chunk text hash): a chunk that is unchanged, renamed or
copied is never embedded twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import ragd.store.retrieval as retrieval
from ragd import lexical
from ragd.errors import StoreError
from ragd.models.base import FloatArray, SparseWeights
from ragd.store.codec import encode as encode_sparse
from ragd.store.schema import open_database, read_meta


@dataclass(frozen=True)
class FileRow:
    id: int
    root_id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str
    error: str | None
    model: int | None


@dataclass(frozen=True)
class ChunkRow:
    id: int
    path: str
    ordinal: int
    text: str
    start_line: int
    end_line: int
    heading: tuple[str, ...]
    token_count: int
    content_hash: str
    page: int = 0  # first page (1-based), 0 for formats without pages
    end_page: int = 0
    origin: str = ""  # the daemon whose chunk it is in a shared collection; "" for this one's


@dataclass(frozen=True)
class NewChunk:
    """A chunk about to be written; its embedding is looked up by ``content_hash``."""

    text: str
    start_line: int
    end_line: int
    heading: tuple[str, ...]
    token_count: int
    content_hash: str
    page: int = 0
    end_page: int = 0


@dataclass(frozen=True)
class FileUpdate:
    """The new state of one file, written in a batch by ``Catalog.apply``."""

    root_id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str
    error: str | None = None
    kind: str | None = None
    encoding: str | None = None
    chunks: tuple[NewChunk, ...] | None = None  # None keeps the file's current chunks


@dataclass(frozen=True)
class NewEmbedding:
    chunk_hash: str
    dense: FloatArray
    sparse: SparseWeights | None = None
    colbert: FloatArray | None = None


@dataclass
class BatchResult:
    """Chunk ids removed and added by a batch, for the vector index to follow."""

    removed_ids: list[int]
    added: list[tuple[int, str]]  # (chunk id, content hash)
    terms: dict[int, str] = field(default_factory=dict)  # chunk id -> its full-text terms, as stored


class Catalog:
    """One SQLite database file; one instance per thread of use."""

    def __init__(self, path: Path) -> None:
        self.db = open_database(path)
        self.path = path

    def close(self) -> None:
        self.db.close()

    # -- meta -------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        return read_meta(self.db, key)

    def generation(self) -> int:
        """A counter raised by every change to chunks or embeddings; FAISS snapshots record it."""
        return int(self._meta("generation") or 0)

    def _bump(self) -> None:
        self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    # -- models -----------------------------------------------------------------------
    def model_key(self, name: str, dim: int) -> int:
        """The id of model ``name``, registered on first use (insert-if-absent, then read back,
        in one transaction): another process (a CLI search beside the daemon) may register it
        at the same moment, and both get the one row."""
        row = self.db.execute("SELECT id, dim FROM models WHERE name = ?", [name]).fetchone()
        if row is None:
            with self.db.atomic():
                self.db.execute("INSERT OR IGNORE INTO models(name, dim) VALUES (?, ?)", [name, dim])
                row = self.db.execute("SELECT id, dim FROM models WHERE name = ?", [name]).fetchone()
        key, stored = row
        if int(stored) != dim:
            raise StoreError(f"model {name} was stored with dimension {stored}, now reports {dim}")
        return int(key)

    # -- roots ------------------------------------------------------------------------
    def add_root(self, path: str) -> int:
        """The id of root ``path``, registered if new (insert-if-absent, as ``model_key``)."""
        row = self.db.execute("SELECT id FROM roots WHERE path = ?", [path]).fetchone()
        if row is not None:
            return int(row[0])
        with self.db.atomic():
            self.db.execute("INSERT OR IGNORE INTO roots(path, added_at) VALUES (?, ?)", [path, time.time()])
            return int(self.db.execute("SELECT id FROM roots WHERE path = ?", [path]).fetchone()[0])

    def roots(self) -> dict[str, int]:
        return {str(p): int(i) for i, p in self.db.execute("SELECT id, path FROM roots ORDER BY path")}

    def remove_root(self, path: str) -> list[int]:
        """Forget a root with its files and chunks; returns the removed chunk ids."""
        with self.db.atomic():
            ids = [
                int(r[0])
                for r in self.db.execute(
                    "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id "
                    "JOIN roots r ON r.id = f.root_id WHERE r.path = ?",
                    [path],
                )
            ]
            self.db.execute("DELETE FROM roots WHERE path = ?", [path])
            self._bump()
        return ids

    def suspend_root(self, path: str, reason: str) -> bool:
        """Mark a registered root suspended (or update why); True when it was not suspended."""
        with self.db.atomic():
            row = self.db.execute("SELECT id FROM roots WHERE path = ?", [path]).fetchone()
            if row is None:
                return False
            new = self.db.execute("SELECT 1 FROM suspended_roots WHERE root_id = ?", [row[0]]).fetchone() is None
            self.db.execute(
                "INSERT INTO suspended_roots(root_id, reason, since) VALUES (?, ?, ?) "
                "ON CONFLICT (root_id) DO UPDATE SET reason = excluded.reason", [row[0], reason, time.time()])
        return new

    def resume_root(self, path: str) -> bool:
        """Clear a root's suspension; True when it was suspended."""
        with self.db.atomic():
            cur = self.db.execute(
                "DELETE FROM suspended_roots WHERE root_id = (SELECT id FROM roots WHERE path = ?)", [path])
        return cur.rowcount > 0

    def suspended_roots(self) -> dict[str, str]:
        """Suspended root -> why."""
        return {str(p): str(r) for p, r in self.db.execute(
            "SELECT r.path, s.reason FROM suspended_roots s JOIN roots r ON r.id = s.root_id ORDER BY r.path")}

    def count_root_files(self, path: str) -> int:
        """How many files of root ``path`` the catalog holds (any status)."""
        row = self.db.execute(
            "SELECT count(*) FROM files f JOIN roots r ON r.id = f.root_id WHERE r.path = ?", [path]).fetchone()
        return int(row[0])

    def chunk_ids_outside_suspended(self) -> list[int]:
        """Every chunk of a root that is not suspended: what a search without filters may return."""
        return [int(r[0]) for r in self.db.execute(
            "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id "
            "WHERE f.root_id NOT IN (SELECT root_id FROM suspended_roots)")]

    # -- files ------------------------------------------------------------------------
    def files_under(self, prefix: str) -> dict[str, FileRow]:
        """Files whose path is ``prefix`` or lies below it (prefix without trailing slash)."""
        below = prefix.rstrip("/") + "/"
        rows = self.db.execute(
            "SELECT id, root_id, path, size, mtime_ns, content_hash, status, error, model FROM files "
            "WHERE path = ? OR substr(path, 1, ?) = ?",
            [prefix, len(below), below],
        )
        return {str(r[2]): FileRow(*r) for r in rows}

    def file_stats(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self.db.execute("SELECT status, count(*) FROM files GROUP BY status")}

    def failed_files(self) -> list[tuple[str, str, str]]:
        rows = self.db.execute(
            "SELECT path, status, coalesce(error, '') FROM files WHERE status != 'indexed' ORDER BY path"
        )
        return [(str(p), str(s), str(e)) for p, s, e in rows]

    # -- embeddings -------------------------------------------------------------------
    def embedded_hashes(self, model: int, hashes: Iterable[str]) -> set[str]:
        found: set[str] = set()
        unique = list(set(hashes))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT chunk_hash FROM embeddings WHERE model = ? AND chunk_hash IN ({marks})", [model, *part]
            )
            found.update(str(r[0]) for r in rows)
        return found

    def dense_by_hash(self, model: int, hashes: Sequence[str]) -> dict[str, FloatArray]:
        out: dict[str, FloatArray] = {}
        unique = list(set(hashes))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT chunk_hash, dense FROM embeddings WHERE model = ? AND chunk_hash IN ({marks})",
                [model, *part],
            )
            for h, blob in rows:
                out[str(h)] = np.frombuffer(blob, dtype=np.float32)
        return out

    def colbert_by_chunk(self, model: int, chunk_ids: Sequence[int], dim: int) -> dict[int, FloatArray]:
        """The multi-vector (ColBERT) vectors of chunks for ``model``, float16 blobs read back
        as float32 (tokens, dim) arrays, in one query. Chunks without vectors (embedded while
        ``models.multi_vector`` was off) are left out."""
        if not chunk_ids:
            return {}
        rows = self.db.execute(
            "SELECT c.id, e.colbert FROM chunks c JOIN embeddings e ON e.model = ? AND e.chunk_hash = c.content_hash"
            " WHERE c.id IN (SELECT value FROM json_each(?)) AND e.colbert IS NOT NULL",
            [model, json.dumps([int(i) for i in chunk_ids])],
        )
        out: dict[int, FloatArray] = {}
        row_bytes = dim * np.dtype(np.float16).itemsize
        for cid, blob in rows:
            if blob and len(blob) % row_bytes == 0:
                out[int(cid)] = np.frombuffer(blob, dtype=np.float16).reshape(-1, dim).astype(np.float32)
        return out

    def iter_dense(self, model: int, batch: int = 4096) -> Iterator[tuple[np.ndarray, FloatArray]]:
        """All (chunk ids, vectors) that have an embedding for ``model``, in batches."""
        cur = self.db.execute(
            "SELECT c.id, e.dense FROM chunks c JOIN embeddings e "
            "ON e.model = ? AND e.chunk_hash = c.content_hash ORDER BY c.id",
            [model],
        )
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            yield ids, vecs

    def embedded_chunks(self, model: int) -> dict[int, str]:
        """Chunk id -> content hash of every chunk with an embedding of ``model``: what a
        vector store must hold."""
        return {int(cid): str(h) for cid, h in self.db.execute(
            "SELECT c.id, c.content_hash FROM chunks c JOIN embeddings e "
            "ON e.model = ? AND e.chunk_hash = c.content_hash", [model])}

    def vectors_by_hash(self, model: int, hashes: Sequence[str]) -> dict[str, tuple[FloatArray, bytes | None]]:
        """Chunk hash -> (dense vector, encoded lexical weights or None) for ``model``."""
        out: dict[str, tuple[FloatArray, bytes | None]] = {}
        unique = list(set(hashes))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            for h, dense, sparse in self.db.execute(
                f"SELECT chunk_hash, dense, sparse FROM embeddings WHERE model = ? AND chunk_hash IN ({marks})",
                [model, *part],
            ):
                out[str(h)] = (np.frombuffer(dense, dtype=np.float32), None if sparse is None else bytes(sparse))
        return out

    def count_embedded_chunks(self, model: int) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM chunks c JOIN embeddings e ON e.model = ? AND e.chunk_hash = c.content_hash",
            [model],
        ).fetchone()
        return int(row[0])

    def count_chunks(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    # -- the one write path -----------------------------------------------------------
    def apply(
        self,
        model: int,
        embeddings: Sequence[NewEmbedding],
        updates: Sequence[FileUpdate],
        deleted_paths: Sequence[str] = (),
    ) -> BatchResult:
        """Write a batch in one transaction: new embeddings and sparse weights, file rows,
        their chunks (replacing the old ones), and deletions. All or nothing."""
        result = BatchResult(removed_ids=[], added=[])
        now = time.time()
        with self.db.atomic():
            for emb in embeddings:
                colbert = None if emb.colbert is None else emb.colbert.astype(np.float16).tobytes()
                self.db.execute(
                    "INSERT OR IGNORE INTO embeddings(model, chunk_hash, dense, colbert, sparse)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [model, emb.chunk_hash, np.ascontiguousarray(emb.dense, dtype=np.float32).tobytes(), colbert,
                     None if emb.sparse is None else encode_sparse(emb.sparse)],
                )
                if emb.sparse:
                    self.db.conn.executemany(
                        "INSERT OR REPLACE INTO sparse(model, token, chunk_hash, weight) VALUES (?, ?, ?, ?)",
                        [(model, tok, emb.chunk_hash, w) for tok, w in emb.sparse.items()],
                    )
            for path in deleted_paths:
                result.removed_ids.extend(self._chunk_ids_of(path))
                self.db.execute("DELETE FROM files WHERE path = ?", [path])
            for up in updates:
                row = self.db.execute("SELECT id FROM files WHERE path = ?", [up.path]).fetchone()
                values: dict[str, Any] = {
                    "root_id": up.root_id, "path": up.path, "size": up.size, "mtime_ns": up.mtime_ns,
                    "content_hash": up.content_hash, "status": up.status, "error": up.error,
                    "kind": up.kind, "encoding": up.encoding, "indexed_at": now,
                }
                if up.chunks is not None:
                    values["model"] = model if up.status == "indexed" else None
                if row is None:
                    cols = ",".join(values)
                    cur = self.db.execute(
                        f"INSERT INTO files({cols}) VALUES ({','.join('?' * len(values))})", list(values.values())
                    )
                    file_id = int(cur.lastrowid or 0)
                else:
                    file_id = int(row[0])
                    sets = ",".join(f"{k} = ?" for k in values)
                    self.db.execute(f"UPDATE files SET {sets} WHERE id = ?", [*values.values(), file_id])
                if up.chunks is None:
                    continue
                result.removed_ids.extend(
                    int(r[0]) for r in self.db.execute("SELECT id FROM chunks WHERE file_id = ?", [file_id])
                )
                self.db.execute("DELETE FROM chunks WHERE file_id = ?", [file_id])
                for ordinal, ch in enumerate(up.chunks):
                    cur = self.db.execute(
                        "INSERT INTO chunks(file_id, ordinal, text, start_line, end_line, heading, token_count,"
                        " content_hash, page, end_page) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [file_id, ordinal, ch.text, ch.start_line, ch.end_line,
                         json.dumps(list(ch.heading), ensure_ascii=False), ch.token_count, ch.content_hash,
                         ch.page, ch.end_page],
                    )
                    chunk_id = int(cur.lastrowid or 0)
                    terms = result.terms[chunk_id] = lexical.document_terms(ch.text)
                    self.db.execute("INSERT INTO lexical(rowid, terms) VALUES (?, ?)", [chunk_id, terms])
                    result.added.append((chunk_id, ch.content_hash))
            if embeddings or deleted_paths or result.removed_ids or result.added:
                self._bump()
        return result

    def _chunk_ids_of(self, path: str) -> list[int]:
        rows = self.db.execute(
            "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path = ?", [path]
        )
        return [int(r[0]) for r in rows]

    def collect_garbage(self) -> list[str]:
        """Drop embeddings and sparse weights no chunk refers to any more; returns their chunk
        hashes (for the in-memory caches keyed by hash)."""
        with self.db.atomic():
            gone = [str(r[0]) for r in self.db.execute(
                "SELECT DISTINCT chunk_hash FROM embeddings WHERE chunk_hash NOT IN (SELECT content_hash FROM chunks)"
            )]
            self.db.execute("DELETE FROM embeddings WHERE chunk_hash NOT IN (SELECT content_hash FROM chunks)")
            self.db.execute("DELETE FROM sparse WHERE chunk_hash NOT IN (SELECT content_hash FROM chunks)")
        return gone

    def lexical_rows(self) -> Iterator[tuple[int, str]]:
        """(chunk id, full-text terms as stored) of every chunk: what ``LexicalIndex.build``
        reads."""
        cur = self.db.execute("SELECT rowid, terms FROM lexical")
        while rows := cur.fetchmany(4096):
            for chunk_id, terms in rows:
                yield int(chunk_id), str(terms)

    def count_sparse(self, model: int) -> int:
        """Embeddings of ``model`` with sparse weights (what the sparse mirror holds)."""
        return int(self.db.execute("SELECT count(*) FROM embeddings WHERE model = ? AND sparse IS NOT NULL",
                                   [model]).fetchone()[0])

    def sparse_rows(self, model: int) -> Iterator[tuple[str, bytes]]:
        """(chunk hash, encoded sparse weights) of every embedding of ``model``: what
        ``SparseIndex.build`` reads. Embeddings no chunk uses yet are included: a chunk may
        take one up again (it is then not embedded again) before garbage collection."""
        cur = self.db.execute("SELECT chunk_hash, sparse FROM embeddings WHERE model = ? AND sparse IS NOT NULL",
                              [model])
        while rows := cur.fetchmany(4096):
            for h, blob in rows:
                yield str(h), bytes(blob)

    # -- reads for search -------------------------------------------------------------
    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        return {row.id: row for row, _, _ in self._chunk_rows(ids, with_file=False)}

    def chunk_sources(self, ids: Sequence[int]) -> dict[int, tuple[ChunkRow, str, int]]:
        """Chunk id -> (its row, its root's path, its file's mtime_ns): what a shared Milvus
        collection keeps beside the vectors, for other daemons' hits and filters."""
        return {row.id: (row, root, mtime) for row, root, mtime in self._chunk_rows(ids, with_file=True)}

    def _chunk_rows(self, ids: Sequence[int], with_file: bool) -> Iterator[tuple[ChunkRow, str, int]]:
        extra, join = (", r.path, f.mtime_ns", " JOIN roots r ON r.id = f.root_id") if with_file else ("", "")
        for i in range(0, len(ids), 500):
            part = list(ids[i : i + 500])
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                "SELECT c.id, f.path, c.ordinal, c.text, c.start_line, c.end_line, c.heading, c.token_count,"
                f" c.content_hash, c.page, c.end_page{extra} FROM chunks c JOIN files f ON f.id = c.file_id{join}"
                f" WHERE c.id IN ({marks})",
                part,
            )
            for r in rows:
                row = ChunkRow(
                    int(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4]), int(r[5]),
                    tuple(json.loads(r[6])), int(r[7]), str(r[8]), int(r[9]), int(r[10]),
                )
                yield (row, str(r[11]), int(r[12])) if with_file else (row, "", 0)

    def chunk_ids_where(self, keep: Callable[[str, str, int], bool]) -> list[int]:
        """Chunk ids of the files for which ``keep(path, root path, mtime_ns)`` holds."""
        files = [
            int(fid)
            for fid, path, root, mtime in self.db.execute(
                "SELECT f.id, f.path, r.path, f.mtime_ns FROM files f JOIN roots r ON r.id = f.root_id"
                " WHERE f.status = 'indexed'"
            )
            if keep(str(path), str(root), int(mtime))
        ]
        out: list[int] = []
        for i in range(0, len(files), 500):
            part = files[i : i + 500]
            marks = ",".join("?" * len(part))
            out.extend(int(r[0]) for r in self.db.execute(f"SELECT id FROM chunks WHERE file_id IN ({marks})", part))
        return out

    def root_stats(self) -> dict[str, dict[str, int]]:
        """Per root path: files by status."""
        out: dict[str, dict[str, int]] = {p: {} for p in self.roots()}
        for path, status, n in self.db.execute(
            "SELECT r.path, f.status, count(*) FROM roots r JOIN files f ON f.root_id = r.id GROUP BY r.path, f.status"
        ):
            out.setdefault(str(path), {})[str(status)] = int(n)
        return out

    def file_row(self, path: str) -> FileRow | None:
        row = self.db.execute(
            "SELECT id, root_id, path, size, mtime_ns, content_hash, status, error, model FROM files WHERE path = ?",
            [path],
        ).fetchone()
        return None if row is None else FileRow(*row)

    def failed_under(self, prefix: str, limit: int = 100) -> list[tuple[str, str, str]]:
        below = prefix.rstrip("/") + "/"
        rows = self.db.execute(
            "SELECT path, status, coalesce(error, '') FROM files WHERE status != 'indexed'"
            " AND substr(path, 1, ?) = ? ORDER BY path LIMIT ?",
            [len(below), below, limit],
        )
        return [(str(p), str(s), str(e)) for p, s, e in rows]

    def chunk_ids_of(self, path: str) -> list[int]:
        """The chunk ids of one indexed file."""
        return self._chunk_ids_of(path)

    def chunk_at(self, path: str, line: int) -> int | None:
        """The chunk of ``path`` whose line span holds ``line`` (the one starting last, where
        chunks overlap); the nearest chunk before it when none does (a line between chunks)."""
        row = self.db.execute(
            "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path = ? AND c.start_line <= ?"
            " ORDER BY (c.end_line >= ?) DESC, c.start_line DESC, c.ordinal LIMIT 1",
            [path, line, line],
        ).fetchone()
        return None if row is None else int(row[0])

    def chunk_ids_under(self, prefix: str) -> list[int]:
        rows = self.db.execute(
            "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE substr(f.path, 1, ?) = ?",
            [len(prefix), prefix],
        )
        return [int(r[0]) for r in rows]

    def stored_query(self, model: int, chunk_id: int, dim: int) -> tuple[FloatArray, bytes | None, FloatArray | None]:
        """A chunk's stored embedding for ``model``: its dense vector, its lexical weights as
        stored (or None) and its multi-vector rows (or None); KeyError when it has none."""
        row = self.db.execute(
            "SELECT e.dense, e.sparse, e.colbert FROM chunks c JOIN embeddings e"
            " ON e.model = ? AND e.chunk_hash = c.content_hash WHERE c.id = ?",
            [model, chunk_id],
        ).fetchone()
        if row is None:
            raise KeyError(chunk_id)
        dense, sparse, colbert = row
        vectors = None
        row_bytes = dim * np.dtype(np.float16).itemsize
        if colbert and len(colbert) % row_bytes == 0:
            vectors = np.frombuffer(colbert, dtype=np.float16).reshape(-1, dim).astype(np.float32)
        return np.frombuffer(dense, dtype=np.float32), None if sparse is None else bytes(sparse), vectors

    def chunk_ids_by_hash(self, hashes: Sequence[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i in range(0, len(hashes), 500):
            part = list(hashes[i : i + 500])
            marks = ",".join("?" * len(part))
            for cid, h in self.db.execute(
                f"SELECT id, content_hash FROM chunks WHERE content_hash IN ({marks}) ORDER BY id", part
            ):
                out.setdefault(str(h), []).append(int(cid))
        return out

    # -- sparse and full-text retrieval in SQL (store/retrieval.py) -----------------------
    def sparse_search(
        self, model: int, weights: SparseWeights, limit: int, stats: dict[str, int] | None = None
    ) -> list[tuple[str, float]]:
        """The ``limit`` chunk hashes with the best lexical matching score: ``retrieval.sparse_search``."""
        return retrieval.sparse_search(self.db, model, weights, limit, stats)

    def lexical_search(self, query: str, limit: int, prefix: str | None = None,
                       terms: Sequence[str] | None = None) -> list[tuple[int, float]]:
        """Chunk ids by FTS5's BM25, best first: ``retrieval.lexical_search``."""
        return retrieval.lexical_search(self.db, query, limit, prefix, terms)

    def lexical_document_frequency(self, terms: Sequence[str]) -> dict[str, int]:
        """How many chunks hold each term, by FTS5: ``retrieval.lexical_document_frequency``."""
        return retrieval.lexical_document_frequency(self.db, terms)
