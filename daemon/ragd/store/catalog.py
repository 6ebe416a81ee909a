"""The catalog: SQLite (through sqlite-utils, WAL) is the source of truth for roots, files,
chunks, embeddings and sparse weights. Everything else (FAISS) is rebuilt from it.

Embeddings are keyed by (model, chunk text hash): a chunk that is unchanged, renamed or
copied is never embedded twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from ragd import lexical
from ragd.errors import StoreError
from ragd.models.base import FloatArray, SparseWeights
from ragd.store.private import private_db, private_dir
from ragd.store.sparse import encode as encode_sparse

SCHEMA_VERSION = 2
"""2: chunks carry their first and last page (``page``, ``end_page``); 1 is upgraded in place."""
REREAD_SUFFIXES = (".html", ".htm", ".xhtml", ".shtml", ".ipynb", ".eml", ".mbox", ".rtf")
"""Formats schema 1 indexed as raw text that now have an extractor: read again after the upgrade."""
BUSY_TIMEOUT_S = 30.0
"""How long a connection waits for another one's write lock before failing."""
SPARSE_BLOBS_VERSION = "1"
"""Stored in the catalog once every embedding row carries its sparse weights as a blob."""
SPARSE_STATS_VERSION = "1"
"""Stored in the catalog once ``sparse_stats`` holds every posting list's bounds."""
SPARSE_PRUNE_BUDGET = 0.2
"""``sparse_search`` sums every posting in SQL instead once pruning has handled this fraction
of the query's postings in Python (measured: ~1.2 us a posting there, ~0.45 us summed in SQL)."""
SPARSE_PRUNE_FROM = 50_000
"""Queries whose lists hold fewer postings than this are summed exhaustively (a few ms)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, dim INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS roots (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    root_id INTEGER NOT NULL REFERENCES roots(id) ON DELETE CASCADE,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT,
    status TEXT NOT NULL,          -- indexed | skipped | failed
    error TEXT,
    kind TEXT,
    encoding TEXT,
    model INTEGER,                 -- models.id the chunks were embedded with
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_root ON files(root_id);
-- Roots whose folder is missing, unreadable or suddenly empty (unmounted?): their files stay in
-- the index, unscanned and not served, until the folder is back. A table of its own, created
-- where missing, so that no schema version changes for it.
CREATE TABLE IF NOT EXISTS suspended_roots (
    root_id INTEGER PRIMARY KEY REFERENCES roots(id) ON DELETE CASCADE,
    reason TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL,
    heading TEXT NOT NULL,         -- JSON array of the heading path
    token_count INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    page INTEGER NOT NULL DEFAULT 0,      -- first page (1-based), 0 for formats without pages
    end_page INTEGER NOT NULL DEFAULT 0   -- last page
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(content_hash);
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY,
    model INTEGER NOT NULL REFERENCES models(id),
    chunk_hash TEXT NOT NULL,
    dense BLOB NOT NULL,           -- float32, L2-normalised
    colbert BLOB,                  -- float16 (tokens x dim), only with models.multi_vector
    sparse BLOB,                   -- lexical weights (ragd.store.sparse.encode), for the in-memory mirror
    UNIQUE (model, chunk_hash)
);
CREATE TABLE IF NOT EXISTS sparse (
    model INTEGER NOT NULL,
    token INTEGER NOT NULL,
    chunk_hash TEXT NOT NULL,
    weight REAL NOT NULL,
    PRIMARY KEY (model, token, chunk_hash)
) WITHOUT ROWID;
-- Per posting list (model, token): bounds of its weights and its length, kept by the triggers
-- below, for sparse_search's pruning. max_weight / min_weight are the largest / smallest
-- weight ever written (a delete never narrows them, so they stay bounds); postings is a cost
-- hint only (an INSERT OR REPLACE of an existing posting counts it twice).
CREATE TABLE IF NOT EXISTS sparse_stats (
    model INTEGER NOT NULL,
    token INTEGER NOT NULL,
    max_weight REAL NOT NULL,
    min_weight REAL NOT NULL,
    postings INTEGER NOT NULL,
    PRIMARY KEY (model, token)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS sparse_stats_insert AFTER INSERT ON sparse BEGIN
    INSERT INTO sparse_stats(model, token, max_weight, min_weight, postings)
    VALUES (new.model, new.token, new.weight, new.weight, 1)
    ON CONFLICT (model, token) DO UPDATE SET max_weight = max(max_weight, excluded.max_weight),
        min_weight = min(min_weight, excluded.min_weight), postings = postings + 1;
END;
CREATE TRIGGER IF NOT EXISTS sparse_stats_update AFTER UPDATE ON sparse BEGIN
    UPDATE sparse_stats SET postings = postings - 1 WHERE model = old.model AND token = old.token;
    INSERT INTO sparse_stats(model, token, max_weight, min_weight, postings)
    VALUES (new.model, new.token, new.weight, new.weight, 1)
    ON CONFLICT (model, token) DO UPDATE SET max_weight = max(max_weight, excluded.max_weight),
        min_weight = min(min_weight, excluded.min_weight), postings = postings + 1;
END;
CREATE TRIGGER IF NOT EXISTS sparse_stats_delete AFTER DELETE ON sparse BEGIN
    UPDATE sparse_stats SET postings = postings - 1 WHERE model = old.model AND token = old.token;
END;
-- Full-text (BM25) rows, one per chunk (rowid = chunks.id): the chunk's terms from
-- ragd.lexical, space-separated, so FTS5 only splits on spaces. Written by apply() in the
-- chunk's transaction; the trigger removes them with their chunk (cascades included).
CREATE VIRTUAL TABLE IF NOT EXISTS lexical USING fts5(terms, tokenize = 'unicode61 remove_diacritics 0');
CREATE TRIGGER IF NOT EXISTS chunks_lexical_delete AFTER DELETE ON chunks BEGIN
    DELETE FROM lexical WHERE rowid = old.id;
END;
"""


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
        private_dir(path.parent)  # the catalog holds every document's full text: 0700 / 0600
        private_db(path)
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            self.db = sqlite_utils.Database(conn)
            self.db.enable_wal()
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the catalog {path}: {exc}") from exc
        self.path = path
        version = self._meta("schema_version")
        if version is None:
            with self.db.atomic():
                self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._set_meta("generation", "0")
        elif int(version) == 1:
            self._upgrade_to_pages()
        elif int(version) != SCHEMA_VERSION:
            raise StoreError(
                f"{path} has catalog schema {version}, this ragd reads {SCHEMA_VERSION}: "
                "move the data folder away and index again"
            )
        try:
            self._ensure_lexical()
            self._ensure_sparse_stats()
            self._ensure_sparse_blobs()
        except sqlite3.OperationalError as exc:
            self.db.close()
            if "locked" in str(exc):
                raise StoreError(
                    f"{path} is being upgraded by another ragd process (a one-time step that takes "
                    "minutes for a large index): try again when it has finished"
                ) from exc
            raise StoreError(f"cannot upgrade the catalog {path}: {exc}") from exc

    def _upgrade_to_pages(self) -> None:
        """Schema 1 -> 2 in place: add the chunks' page columns (0: no pages) and have the next
        scan read again the files this version extracts differently (skipped binaries that may
        be documents now, HTML and notebooks indexed as raw markup). Nothing is embedded again
        for text that is unchanged, since embeddings are keyed by the chunk text's hash."""
        with self.db.atomic():
            if self._meta("schema_version") != "1":  # another process did it
                return
            columns = {str(r[1]) for r in self.db.execute("PRAGMA table_info(chunks)")}
            for column in ("page", "end_page"):
                if column not in columns:
                    self.db.execute(f"ALTER TABLE chunks ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
            suffixes = " OR ".join("lower(path) LIKE ?" for _ in REREAD_SUFFIXES)
            self.db.execute(
                f"UPDATE files SET content_hash = NULL, mtime_ns = -1 WHERE status != 'indexed' OR {suffixes}",
                [f"%{s}" for s in REREAD_SUFFIXES],
            )
            self._set_meta("schema_version", str(SCHEMA_VERSION))

    def _ensure_sparse_blobs(self) -> None:
        """Give every embedding of a catalog made before ``embeddings.sparse`` existed its
        weights as a blob (the in-memory mirror is built from them): once, one pass over the
        postings grouped by chunk (SQLite sorts them; ~1 min for 100k chunks)."""
        if self._meta("sparse_blobs_version") == SPARSE_BLOBS_VERSION:
            return
        with self.db.atomic():
            columns = {str(r[1]) for r in self.db.execute("PRAGMA table_info(embeddings)")}
            if "sparse" not in columns:
                self.db.execute("ALTER TABLE embeddings ADD COLUMN sparse BLOB")
            if self._meta("sparse_blobs_version") == SPARSE_BLOBS_VERSION:  # another process did it
                return
            cur = self.db.execute("SELECT model, chunk_hash, token, weight FROM sparse ORDER BY model, chunk_hash")
            key: tuple[int, str] | None = None
            weights: dict[int, float] = {}

            def flush() -> None:
                if key is not None:
                    self.db.execute("UPDATE embeddings SET sparse = ? WHERE model = ? AND chunk_hash = ?",
                                    [encode_sparse(weights), key[0], key[1]])

            while rows := cur.fetchmany(4096):
                for model, chunk_hash, token, weight in rows:
                    if key != (model, chunk_hash):
                        flush()
                        key, weights = (int(model), str(chunk_hash)), {}
                    weights[int(token)] = float(weight)
            flush()
            self._set_meta("sparse_blobs_version", SPARSE_BLOBS_VERSION)

    def _ensure_sparse_stats(self) -> None:
        """Fill ``sparse_stats`` from the postings in a catalog made before it existed (its
        triggers keep it current from then on): one pass over the table in key order."""
        if self._meta("sparse_stats_version") == SPARSE_STATS_VERSION:
            return
        with self.db.atomic():
            if self._meta("sparse_stats_version") == SPARSE_STATS_VERSION:  # another process did it
                return
            self.db.execute("DELETE FROM sparse_stats")
            self.db.execute(
                "INSERT INTO sparse_stats(model, token, max_weight, min_weight, postings) "
                "SELECT model, token, max(weight), min(weight), count(*) FROM sparse GROUP BY model, token"
            )
            self._set_meta("sparse_stats_version", SPARSE_STATS_VERSION)

    def _ensure_lexical(self) -> None:
        """Fill the full-text table from the chunks when it was made by another tokeniser
        version or did not exist yet (a catalog from before it): cheap, nothing is embedded."""
        if self._meta("lexical_version") == lexical.TOKENIZER_VERSION:
            return
        with self.db.atomic():
            if self._meta("lexical_version") == lexical.TOKENIZER_VERSION:  # another process did it
                return
            self.db.execute("DELETE FROM lexical")
            cur = self.db.execute("SELECT id, text FROM chunks ORDER BY id")
            while rows := cur.fetchmany(2048):
                self.db.conn.executemany(
                    "INSERT INTO lexical(rowid, terms) VALUES (?, ?)",
                    [(int(i), lexical.document_terms(str(t))) for i, t in rows],
                )
            self._set_meta("lexical_version", lexical.TOKENIZER_VERSION)

    def close(self) -> None:
        self.db.close()

    # -- meta -------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [key, value])

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
        out: dict[int, ChunkRow] = {}
        for i in range(0, len(ids), 500):
            part = list(ids[i : i + 500])
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                "SELECT c.id, f.path, c.ordinal, c.text, c.start_line, c.end_line, c.heading, c.token_count,"
                f" c.content_hash, c.page, c.end_page FROM chunks c JOIN files f ON f.id = c.file_id"
                f" WHERE c.id IN ({marks})",
                part,
            )
            for r in rows:
                out[int(r[0])] = ChunkRow(
                    int(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4]), int(r[5]),
                    tuple(json.loads(r[6])), int(r[7]), str(r[8]), int(r[9]), int(r[10]),
                )
        return out

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

    def sparse_search(
        self, model: int, weights: SparseWeights, limit: int, stats: dict[str, int] | None = None
    ) -> list[tuple[str, float]]:
        """The ``limit`` chunk hashes with the highest lexical matching score (FlagEmbedding's:
        the sum over shared tokens of query weight x document weight), best first, ties by
        hash. Exact: the same chunks and scores as summing every posting of every query token.

        Each posting list is contiguous in the ``sparse`` primary key (model, token, hash): one
        index seek, then a range. Summing every list costs O(P), P = the sum of the query
        tokens' list lengths: millions of postings at 1M chunks for a query holding a frequent
        token. So the sum is pruned, MaxScore style, and stays exact, using that a token adds
        at most its query weight x the largest weight in its list (``sparse_stats``):

        1. Lists are read from the shortest. theta, a lower bound of the answer's ``limit``-th
           score, is the ``limit``-th exact score (one primary-key seek per token and chunk)
           of the best chunks so far, refreshed when a refresh costs less than what is next.
           A chunk first seen in a list can add at most the bounds of the longer lists, so it
           needs a minimum weight there: when cheaper, only those postings leave SQLite (the
           list is scanned inside it) and chunks seen before are looked up. Chunks whose
           partial score + the longer lists' bounds is below theta are dropped.
        2. Once the unread lists' bounds sum below theta, no unseen chunk can enter the answer:
           the unread tokens, largest bound first, are looked up for the chunks left (or their
           list read, when shorter), dropping chunks after each.
        3. Pruning costs ~3x per posting what summing inside SQLite does, so below
           ``SPARSE_PRUNE_FROM`` postings in all, and once it has
           handled ``SPARSE_PRUNE_BUDGET`` x P postings (or theta says it will), the
           exhaustive SQL sum answers instead (weights it cannot bound, too).

        Cost: O(postings read + chunks looked up x log N), at most ~(1 + 3 x the budget) x the
        exhaustive O(P). ``stats``, when given, receives what was done: postings_read /
        lists_read (whole lists), postings_scanned / lists_scanned (inside SQLite, above a
        weight), postings_looked_up / lists_looked_up, and exhaustive = 1 when that answered."""
        counts = {"postings_read": 0, "postings_scanned": 0, "postings_looked_up": 0,
                  "lists_read": 0, "lists_scanned": 0, "lists_looked_up": 0}
        if stats is not None:
            stats.update(counts)
        if not weights or limit <= 0:
            return []
        query = {int(t): float(w) for t, w in weights.items()}
        bounds: dict[int, tuple[float, float, int]] = {}  # token -> (max weight, min weight, postings)
        tokens = list(query)
        for i in range(0, len(tokens), 500):
            part = tokens[i : i + 500]
            for tok, hi, lo, n in self.db.execute(
                "SELECT token, max_weight, min_weight, postings FROM sparse_stats WHERE model = ? AND token IN "
                f"({','.join('?' * len(part))})", [model, *part]
            ):
                bounds[int(tok)] = (float(hi), float(lo), int(n))
        if any(not 0 < query[t] < float("inf") or not b[1] >= 0 for t, b in bounds.items()):
            # Pruning needs every contribution >= 0 (a partial score is then a lower bound).
            return self._sparse_exhaustive(model, query, limit, counts, stats)
        if sum(b[2] for b in bounds.values()) < SPARSE_PRUNE_FROM:
            return self._sparse_exhaustive(model, query, limit, counts, stats)
        ub = {t: query[t] * b[0] for t, b in bounds.items()}  # most a token can add to a score
        acc: dict[str, float] = {}  # chunk hash -> partial score

        class OverBudget(Exception):
            """Pruning is not paying off for this query: the exhaustive sum is cheaper."""

        # A posting handled in Python (read or looked up) costs ~3x one summed inside SQLite:
        # past this many, the exhaustive sum would have been about as quick.
        budget = SPARSE_PRUNE_BUDGET * sum(b[2] for b in bounds.values())
        spent = 0.0

        def spend(units: float) -> None:
            nonlocal spent
            spent += units
            if spent > budget:
                raise OverBudget

        def best(n: int) -> tuple[list[str], float]:
            """The ``n`` chunks with the best partial scores (any order) and the n-th score."""
            if len(acc) < n:
                return list(acc), -1.0
            keys = list(acc)
            values = np.fromiter(acc.values(), dtype=np.float64, count=len(keys))
            idx = np.argpartition(values, len(keys) - n)[len(keys) - n :]
            return [keys[i] for i in idx.tolist()], float(values[idx].min())

        def keep_from(cut: float) -> dict[str, float]:
            """The chunks whose partial score is at least ``cut`` (all of them when that is
            most: dropping chunks only saves work)."""
            values = np.fromiter(acc.values(), dtype=np.float64, count=len(acc))
            idx = np.flatnonzero(values >= cut)
            if len(idx) > 0.8 * len(acc):
                return acc
            keys = list(acc)
            return dict(zip(map(keys.__getitem__, idx.tolist()), values[idx].tolist(), strict=True))

        def add(part: dict[str, float], only_known: bool = False) -> None:
            """Add ``part``'s contributions to ``acc`` (only to the chunks in it already)."""
            common = acc.keys() & part.keys()  # the per-chunk Python work is for these only
            sums = {h: acc[h] + part[h] for h in common}
            if not only_known:
                acc.update(part)
            acc.update(sums)

        def read_list(tok: int, only_known: bool = False) -> None:
            spend(bounds[tok][2])
            rows = self.db.execute(
                "SELECT chunk_hash, weight * ? FROM sparse WHERE model = ? AND token = ?", [query[tok], model, tok]
            )
            add(dict(rows), only_known)
            counts["postings_read"] += bounds[tok][2]
            counts["lists_read"] += 1

        def lookup(toks: list[int], hashes: list[str], below: float = float("inf")) -> dict[str, float]:
            """The sum of ``toks``' contributions (postings with weight < ``below``) to each of
            ``hashes`` (absent: nothing): one primary-key seek per token and chunk."""
            spend(len(toks) * len(hashes))
            counts["postings_looked_up"] += len(toks) * len(hashes)
            if len(toks) == 1:
                return dict(self.db.execute(
                    "SELECT chunk_hash, weight * ? FROM sparse WHERE model = ? AND token = ? "
                    "AND chunk_hash IN (SELECT value FROM json_each(?)) AND weight < ?",
                    [query[toks[0]], model, toks[0], json.dumps(hashes), below],
                ))
            values = ",".join("(?, ?)" for _ in toks)
            return dict(self.db.execute(
                f"WITH q(token, w) AS (VALUES {values}) SELECT s.chunk_hash, SUM(s.weight * q.w) FROM q "
                "JOIN sparse s ON s.model = ? AND s.token = q.token "
                "AND s.chunk_hash IN (SELECT value FROM json_each(?)) AND s.weight < ? GROUP BY s.chunk_hash",
                [*(x for t in toks for x in (t, query[t])), model, json.dumps(hashes), below],
            ))

        def exact_theta(unread: list[int]) -> float:
            """The ``limit``-th best exact score among the best partial ones: a lower bound
            of the answer's ``limit``-th score (every contribution is >= 0)."""
            seeds, _ = best(limit)
            if len(seeds) < limit:
                return -1.0
            extra = lookup(unread, seeds) if unread else {}
            return min(acc[h] + extra.get(h, 0.0) for h in seeds)

        def read_above(tok: int, tau: float) -> None:
            """Postings of ``tok`` with weight >= ``tau`` (the index range is scanned inside
            SQLite, only those rows come out), plus seeks for the chunks seen before."""
            below = lookup([tok], list(acc), below=tau)
            spend(0.1 * bounds[tok][2])
            add(dict(self.db.execute(
                "SELECT chunk_hash, weight * ? FROM sparse WHERE model = ? AND token = ? AND weight >= ?",
                [query[tok], model, tok, tau],
            )))
            add(below, only_known=True)
            counts["postings_scanned"] += bounds[tok][2]
            counts["lists_scanned"] += 1

        def outside(x: float) -> float:  # x plus a margin that absorbs rounding
            return x * (1 + 1e-9) + 1e-12

        try:
            # (1) read lists from the shortest. A chunk first seen in list t can score at most
            # its weight there x q_t + the bounds of the longer lists, so once theta is known only
            # the postings of t above a weight need to come out (the rest of the list is scanned
            # inside SQLite; chunks seen before are looked up) and chunks whose partial score +
            # those bounds is below theta are dropped. Once no chunk first seen from here on can
            # reach theta, the reading stops. theta is refreshed (the exact scores of the best
            # chunks so far) before a list that costs more than a refresh, and once the reading
            # since the last refresh cost as much as one.
            order = sorted(bounds, key=lambda t: (bounds[t][2], t))
            after = [0.0] * (len(order) + 1)  # after[i]: the bounds of order[i:] summed
            for k in range(len(order) - 1, -1, -1):
                after[k] = after[k + 1] + ub[order[k]]
            theta = -1.0
            i = 0
            since = 0
            while i < len(order) and not theta > outside(after[i]):
                tok = order[i]
                hi, lo, n = bounds[tok]
                if since and len(acc) >= limit and n > limit * (len(order) - i):
                    # a refresh costs less than this list: theta as good as can be first
                    theta = max(theta, exact_theta(order[i:]))
                    since = 0
                    if theta > outside(after[i]):
                        break
                if theta > 0:  # the reading needed before theta stops it, if theta rose no more
                    stop = next((k for k in range(i, len(order)) if theta > outside(after[k])), len(order))
                    if spent + sum(bounds[t][2] for t in order[i:stop]) > budget:
                        raise OverBudget
                tau = (theta - outside(after[i + 1])) / query[tok]  # the weight a new chunk needs here
                above = n if hi <= lo else n * min(1.0, max(0.0, (hi - tau) / (hi - lo)))  # if weights are uniform
                if acc and tau > lo and n * 0.1 + above + len(acc) < n:
                    read_above(tok, tau)
                else:
                    read_list(tok)
                since += n
                i += 1
                if theta > 0:
                    acc = keep_from(theta - outside(after[i]))
                if i < len(order) and len(acc) >= limit and since >= limit * (len(order) - i):
                    theta = max(theta, exact_theta(order[i:]))
                    since = 0
            # (2) the tokens left, largest bound first: only chunks seen can still reach theta;
            # each token is looked up for them, or its list read when that is cheaper
            rest = sorted(order[i:], key=lambda t: (-ub[t], t))
            if rest:
                theta = max(theta, exact_theta(rest))
            for j, tok in enumerate(rest):
                left = sum(ub[t] for t in rest[j:])
                theta = max(theta, best(limit)[1])
                acc = keep_from(theta - outside(left))
                if not acc:
                    break
                if len(acc) < bounds[tok][2]:
                    add(lookup([tok], list(acc)), only_known=True)
                    counts["lists_looked_up"] += 1
                else:
                    read_list(tok, only_known=True)

        except OverBudget:
            return self._sparse_exhaustive(model, query, limit, counts, stats)
        if stats is not None:
            stats.update(counts)
        _, kth = best(limit)
        return sorted(((h, v) for h, v in acc.items() if v >= kth), key=lambda kv: (-kv[1], kv[0]))[:limit]

    def _sparse_exhaustive(
        self, model: int, query: dict[int, float], limit: int, counts: dict[str, int], stats: dict[str, int] | None
    ) -> list[tuple[str, float]]:
        """Every posting of every query token, summed in SQL (for weights pruning cannot bound)."""
        values = ",".join("(?, ?)" for _ in query)
        params: list[Any] = []
        for tok, w in query.items():
            params.extend([tok, w])
        rows = self.db.execute(
            f"WITH q(token, w) AS (VALUES {values}) "
            "SELECT s.chunk_hash, SUM(s.weight * q.w) AS score FROM q JOIN sparse s "
            "ON s.model = ? AND s.token = q.token GROUP BY s.chunk_hash ORDER BY score DESC, s.chunk_hash LIMIT ?",
            [*params, model, limit],
        )
        out = [(str(h), float(s)) for h, s in rows]
        if stats is not None:
            listed = self.db.execute(
                f"SELECT coalesce(sum(postings), 0), count(*) FROM sparse_stats WHERE model = ? AND token IN "
                f"({','.join('?' * len(query))})", [model, *query]
            ).fetchone()
            counts["postings_read"] += int(listed[0])
            counts["lists_read"] += int(listed[1])
            counts["exhaustive"] = 1
            stats.update(counts)
        return out

    def lexical_document_frequency(self, terms: Sequence[str]) -> dict[str, int]:
        """How many chunks hold each term (FTS5's own counts, through a temporary fts5vocab
        table of this connection); terms no chunk has are left out."""
        self.db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.lexical_vocab USING fts5vocab(main, lexical, row)")
        out: dict[str, int] = {}
        unique = list(dict.fromkeys(terms))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            for term, doc in self.db.execute(f"SELECT term, doc FROM temp.lexical_vocab WHERE term IN ({marks})",
                                             part):
                out[str(term)] = int(doc)
        return out

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

    def lexical_search(self, query: str, limit: int, prefix: str | None = None,
                       terms: Sequence[str] | None = None) -> list[tuple[int, float]]:
        """Chunk ids by BM25 (FTS5's ``bm25()``, k1 = 1.2, b = 0.75) over any of the query's
        terms (see ragd.lexical; ``terms`` when the caller chose them), best first, as positive
        scores; only files under ``prefix`` when given."""
        expr = lexical.query_expression(query) if terms is None else lexical.terms_expression(terms)
        if expr is None:
            return []
        where = ""
        params: list[Any] = [expr]
        if prefix is not None:
            where = (" AND rowid IN (SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id"
                     " WHERE substr(f.path, 1, ?) = ?)")
            params += [len(prefix), prefix]
        rows = self.db.execute(
            f"SELECT rowid, bm25(lexical) AS s FROM lexical WHERE lexical MATCH ?{where} ORDER BY s LIMIT ?",
            [*params, limit],
        )
        return [(int(cid), -float(s)) for cid, s in rows]

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
