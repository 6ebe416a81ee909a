"""The catalog's SQLite schema, its version and its migrations: ``open_database`` opens (creating
or upgrading in place) a ``catalog.db``; the other functions take its ``sqlite_utils.Database``.

A step that fills something a catalog made by an earlier ragd lacks (full-text rows, posting
list bounds, sparse blobs) runs once, in one transaction, recorded by a version in ``meta``;
a second process that opens the catalog meanwhile waits for it or fails with a clear error.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from ragd import lexical
from ragd.errors import StoreError
from ragd.store.codec import encode as encode_sparse
from ragd.store.private import private_db, private_dir

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

# SQLite keeps this text as written, so it stays byte for byte (its "ragd.store.sparse.encode"
# is store/codec.py's encode).
SCHEMA = """
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


def open_database(path: Path) -> sqlite_utils.Database:
    """The catalog at ``path`` (0600, in a 0700 folder: it holds every document's full text),
    created or upgraded to ``SCHEMA_VERSION``, in WAL mode with foreign keys on."""
    private_dir(path.parent)
    private_db(path)
    try:
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open the catalog {path}: {exc}") from exc
    upgrade(db, path)
    return db


def upgrade(db: sqlite_utils.Database, path: Path) -> None:
    """Bring a catalog's schema version and derived tables up to date (see the module docstring)."""
    version = read_meta(db, "schema_version")
    if version is None:
        with db.atomic():
            write_meta(db, "schema_version", str(SCHEMA_VERSION))
            write_meta(db, "generation", "0")
    elif int(version) == 1:
        upgrade_to_pages(db)
    elif int(version) != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has catalog schema {version}, this ragd reads {SCHEMA_VERSION}: "
            "move the data folder away and index again"
        )
    try:
        ensure_lexical(db)
        ensure_sparse_stats(db)
        ensure_sparse_blobs(db)
    except sqlite3.OperationalError as exc:
        db.close()
        if "locked" in str(exc):
            raise StoreError(
                f"{path} is being upgraded by another ragd process (a one-time step that takes "
                "minutes for a large index): try again when it has finished"
            ) from exc
        raise StoreError(f"cannot upgrade the catalog {path}: {exc}") from exc


def read_meta(db: sqlite_utils.Database, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return None if row is None else str(row[0])


def write_meta(db: sqlite_utils.Database, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [key, value])


def upgrade_to_pages(db: sqlite_utils.Database) -> None:
    """Schema 1 -> 2 in place: add the chunks' page columns (0: no pages) and have the next
    scan read again the files this version extracts differently (skipped binaries that may
    be documents now, HTML and notebooks indexed as raw markup). Unchanged text is not
    embedded again: embeddings are keyed by the chunk text's hash."""
    with db.atomic():
        if read_meta(db, "schema_version") != "1":  # another process did it
            return
        columns = {str(r[1]) for r in db.execute("PRAGMA table_info(chunks)")}
        for column in ("page", "end_page"):
            if column not in columns:
                db.execute(f"ALTER TABLE chunks ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        suffixes = " OR ".join("lower(path) LIKE ?" for _ in REREAD_SUFFIXES)
        db.execute(
            f"UPDATE files SET content_hash = NULL, mtime_ns = -1 WHERE status != 'indexed' OR {suffixes}",
            [f"%{s}" for s in REREAD_SUFFIXES],
        )
        write_meta(db, "schema_version", str(SCHEMA_VERSION))


def ensure_sparse_blobs(db: sqlite_utils.Database) -> None:
    """Give every embedding of a catalog made before ``embeddings.sparse`` existed its weights
    as a blob (what the in-memory mirror is built from): one pass over the postings grouped
    by chunk."""
    if read_meta(db, "sparse_blobs_version") == SPARSE_BLOBS_VERSION:
        return
    with db.atomic():
        columns = {str(r[1]) for r in db.execute("PRAGMA table_info(embeddings)")}
        if "sparse" not in columns:
            db.execute("ALTER TABLE embeddings ADD COLUMN sparse BLOB")
        if read_meta(db, "sparse_blobs_version") == SPARSE_BLOBS_VERSION:  # another process did it
            return
        cur = db.execute("SELECT model, chunk_hash, token, weight FROM sparse ORDER BY model, chunk_hash")
        key: tuple[int, str] | None = None
        weights: dict[int, float] = {}

        def flush() -> None:
            if key is not None:
                db.execute("UPDATE embeddings SET sparse = ? WHERE model = ? AND chunk_hash = ?",
                           [encode_sparse(weights), key[0], key[1]])

        while rows := cur.fetchmany(4096):
            for model, chunk_hash, token, weight in rows:
                if key != (model, chunk_hash):
                    flush()
                    key, weights = (int(model), str(chunk_hash)), {}
                weights[int(token)] = float(weight)
        flush()
        write_meta(db, "sparse_blobs_version", SPARSE_BLOBS_VERSION)


def ensure_sparse_stats(db: sqlite_utils.Database) -> None:
    """Fill ``sparse_stats`` from the postings of a catalog made before it existed (its
    triggers keep it current from then on): one pass over the table in key order."""
    if read_meta(db, "sparse_stats_version") == SPARSE_STATS_VERSION:
        return
    with db.atomic():
        if read_meta(db, "sparse_stats_version") == SPARSE_STATS_VERSION:  # another process did it
            return
        db.execute("DELETE FROM sparse_stats")
        db.execute(
            "INSERT INTO sparse_stats(model, token, max_weight, min_weight, postings) "
            "SELECT model, token, max(weight), min(weight), count(*) FROM sparse GROUP BY model, token"
        )
        write_meta(db, "sparse_stats_version", SPARSE_STATS_VERSION)


def ensure_lexical(db: sqlite_utils.Database) -> None:
    """Fill the full-text table from the chunks when it was made by another tokeniser version
    or did not exist yet (a catalog from before it): cheap, nothing is embedded."""
    if read_meta(db, "lexical_version") == lexical.TOKENIZER_VERSION:
        return
    with db.atomic():
        if read_meta(db, "lexical_version") == lexical.TOKENIZER_VERSION:  # another process did it
            return
        db.execute("DELETE FROM lexical")
        cur = db.execute("SELECT id, text FROM chunks ORDER BY id")
        while rows := cur.fetchmany(2048):
            db.conn.executemany(
                "INSERT INTO lexical(rowid, terms) VALUES (?, ?)",
                [(int(i), lexical.document_terms(str(t))) for i, t in rows],
            )
        write_meta(db, "lexical_version", lexical.TOKENIZER_VERSION)
