"""The durable change queue: table ``jobs`` in the catalog's SQLite file, on its own connection.

The watcher puts jobs (a changed path, or a whole-root scan); the single writer takes them,
marks them done or retries them. A job is ``pending``, ``running`` or ``failed``; at most one
pending job exists per (root, path) (``path`` is ``""`` for a scan), so a storm of events for
one file is one job. A job put again while it runs gets a fresh pending row beside the
running one, so ``done`` of the running one never loses the newer change. ``recover`` turns
what a crash left ``running`` back into ``pending``. A pending scan makes pending path jobs of
its root redundant: ``put_scan`` deletes them and ``put_paths`` adds none while it waits.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragd.errors import StoreError
from ragd.store import schema
from ragd.store.private import private_db, private_dir

MAX_ATTEMPTS = 5
"""A job that failed this many times is marked ``failed`` (kept, with its error) instead of retried."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    root TEXT NOT NULL,
    path TEXT NOT NULL,            -- '' for a whole-root scan
    kind TEXT NOT NULL,            -- path | scan
    reason TEXT NOT NULL,
    state TEXT NOT NULL,           -- pending | running | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    seq INTEGER NOT NULL,          -- queue order: raised when a job goes (back) to pending
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_pending ON jobs(root, path) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_key ON jobs(root, path, state);
CREATE INDEX IF NOT EXISTS jobs_order ON jobs(state, kind, seq);
"""

_COLUMNS = "id, root, path, kind, reason, attempts"


@dataclass(frozen=True)
class Job:
    """One unit of work for the writer: a changed path, or a scan of a whole root."""

    id: int
    root: str  # absolute root path
    path: str | None  # absolute path of a changed file or folder; None for a whole-root scan
    kind: str  # "path" | "scan"
    reason: str  # "created", "modified", "deleted", "moved", "start", "periodic", "overflow", ...
    attempts: int


@dataclass(frozen=True)
class FailedJob:
    """A job given up after ``MAX_ATTEMPTS`` tries, with the last error."""

    job: Job
    error: str


class JobQueue:
    """The ``jobs`` table; thread-safe (one connection behind a lock), every change one transaction."""

    def __init__(self, db_path: Path) -> None:
        private_dir(db_path.parent)
        private_db(db_path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(db_path), check_same_thread=False, timeout=schema.BUSY_TIMEOUT_S,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._tx():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the job queue in {db_path}: {exc}") from exc
        self.path = db_path

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: waits up to 30 s for the catalog's writer)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            with suppress(sqlite3.Error):  # an error may have ended the transaction already
                self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except BaseException:  # a full disk or a lock at COMMIT: leave no transaction open behind
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT coalesce(max(seq), 0) + 1 FROM jobs").fetchone()
        return int(row[0])

    # -- producers ------------------------------------------------------------------------
    def put_paths(self, root: str, paths: Iterable[str], reason: str) -> int:
        """Queue changed paths under ``root``; returns how many new pending jobs there are.

        A path that already has a pending job is not queued twice; one that is running gets a
        pending job beside it. Nothing is added while a scan of the root is pending.
        """
        unique = list(dict.fromkeys(paths))
        if not unique:
            return 0
        now = time.time()
        with self._lock, self._tx() as db:
            if self._scan_pending(root):
                return 0
            seq = self._next_seq()
            cur = db.executemany(
                "INSERT OR IGNORE INTO jobs(root, path, kind, reason, state, seq, updated_at) "
                "VALUES (?, ?, 'path', ?, 'pending', ?, ?)",
                [(root, p, reason, seq + i, now) for i, p in enumerate(unique)],
            )
            return max(cur.rowcount, 0)

    def put_scan(self, root: str, reason: str) -> bool:
        """Queue a scan of the whole root (at most one pending per root); pending path jobs of the
        root are dropped, as the scan covers them. Returns whether a new scan was queued."""
        with self._lock, self._tx() as db:
            db.execute("DELETE FROM jobs WHERE root = ? AND kind = 'path' AND state = 'pending'", [root])
            cur = db.execute(
                "INSERT OR IGNORE INTO jobs(root, path, kind, reason, state, seq, updated_at) "
                "VALUES (?, '', 'scan', ?, 'pending', ?, ?)",
                [root, reason, self._next_seq(), time.time()],
            )
            return cur.rowcount > 0

    def _scan_pending(self, root: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM jobs WHERE root = ? AND path = '' AND state = 'pending'", [root]
        ).fetchone()
        return row is not None

    # -- the consumer ---------------------------------------------------------------------
    def take(self, limit: int) -> list[Job]:
        """Up to ``limit`` pending jobs, scans first, then paths oldest first; marks them running.

        A job whose (root, path) is already running is left pending until that one finishes.
        """
        if limit < 1:
            return []
        with self._lock, self._tx() as db:
            rows: list[tuple[Any, ...]] = []
            for kind in ("scan", "path"):
                rows += db.execute(
                    f"SELECT {_COLUMNS} FROM jobs AS j WHERE state = 'pending' AND kind = ? AND NOT EXISTS ("
                    "SELECT 1 FROM jobs AS r WHERE r.root = j.root AND r.path = j.path AND r.state = 'running')"
                    " ORDER BY seq, id LIMIT ?",
                    [kind, limit - len(rows)],
                ).fetchall()
            db.executemany(
                "UPDATE jobs SET state = 'running', updated_at = ? WHERE id = ?",
                [(time.time(), r[0]) for r in rows],
            )
        return [_job(r) for r in rows]

    def done(self, ids: Sequence[int]) -> None:
        """Finished: delete these jobs and any earlier failure recorded for the same path."""
        if not ids:
            return
        with self._lock, self._tx() as db:
            for job_id in ids:
                db.execute(
                    "DELETE FROM jobs WHERE state = 'failed' AND (root, path) IN "
                    "(SELECT root, path FROM jobs WHERE id = ?)", [job_id])
                db.execute("DELETE FROM jobs WHERE id = ? AND state != 'pending'", [job_id])

    def retry(self, ids: Sequence[int], error: str, *, count: bool = True) -> None:
        """Failed this time: back to pending at the end of the queue with attempts + 1; after
        ``MAX_ATTEMPTS`` the job is marked ``failed`` and keeps ``error``. If the same path was put
        again meanwhile, that newer pending job stands for both. ``count=False`` (a stop, or a
        fault of the machine such as a lock or a full disk, not of the job) adds no attempt."""
        if not ids:
            return
        with self._lock, self._tx() as db:
            for job_id in ids:
                self._requeue(db, job_id, error, count=count)

    def _requeue(self, db: sqlite3.Connection, job_id: int, error: str, *, count: bool = True) -> None:
        row = db.execute("SELECT root, path, attempts FROM jobs WHERE id = ? AND state = 'running'",
                         [job_id]).fetchone()
        if row is None:
            return
        root, path, attempts = row[0], row[1], int(row[2]) + (1 if count else 0)
        newer = db.execute("SELECT 1 FROM jobs WHERE root = ? AND path = ? AND state = 'pending'",
                           [root, path]).fetchone()
        if newer is not None:
            db.execute("DELETE FROM jobs WHERE id = ?", [job_id])
        elif attempts >= MAX_ATTEMPTS:
            db.execute("DELETE FROM jobs WHERE root = ? AND path = ? AND state = 'failed'", [root, path])
            db.execute("UPDATE jobs SET state = 'failed', attempts = ?, error = ?, updated_at = ? WHERE id = ?",
                       [attempts, error, time.time(), job_id])
        else:
            db.execute("UPDATE jobs SET state = 'pending', attempts = ?, error = ?, seq = ?, updated_at = ? "
                       "WHERE id = ?", [attempts, error, self._next_seq(), time.time(), job_id])

    def recover(self) -> int:
        """At start: every job left ``running`` (by a crash or a kill) goes back to pending, counting
        as an attempt, so a job that crashes the daemon each time ends ``failed``. Returns how many."""
        with self._lock, self._tx() as db:
            ids = [int(r[0]) for r in db.execute("SELECT id FROM jobs WHERE state = 'running' ORDER BY seq, id")]
            for job_id in ids:
                self._requeue(db, job_id, "interrupted (the daemon stopped while this job ran)")
        return len(ids)

    # -- inspection and upkeep ------------------------------------------------------------
    def pending(self, root: str | None = None) -> int:
        """Jobs not finished yet (pending or running), for one root or all."""
        sql = "SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')"
        args: list[str] = []
        if root is not None:
            sql += " AND root = ?"
            args.append(root)
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    def failed(self, root: str | None = None) -> list[FailedJob]:
        """Jobs given up after ``MAX_ATTEMPTS`` tries, oldest first."""
        sql = f"SELECT {_COLUMNS}, error FROM jobs WHERE state = 'failed'"
        args: list[str] = []
        if root is not None:
            sql += " AND root = ?"
            args.append(root)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY updated_at, id", args).fetchall()
        return [FailedJob(_job(r[:6]), str(r[6] or "")) for r in rows]

    def drop_root(self, root: str) -> None:
        """Forget every job of a root (it is no longer indexed)."""
        with self._lock, self._tx() as db:
            db.execute("DELETE FROM jobs WHERE root = ?", [root])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _job(row: Sequence[Any]) -> Job:
    return Job(id=int(row[0]), root=str(row[1]), path=str(row[2]) or None, kind=str(row[3]),
               reason=str(row[4]), attempts=int(row[5]))
