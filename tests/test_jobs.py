"""ragd.store.jobs: the durable change queue (dedupe, order, requeue while running, retry, recovery)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragd.store.catalog import Catalog
from ragd.store.jobs import MAX_ATTEMPTS, Job, JobQueue

R = "/r"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "catalog.db"


@pytest.fixture
def q(db: Path) -> Iterator[JobQueue]:
    queue = JobQueue(db)
    yield queue
    queue.close()


def keys(jobs: list[Job]) -> list[tuple[str | None, str]]:
    return [(j.path, j.kind) for j in jobs]


def test_put_dedupes_pending_paths(q: JobQueue) -> None:
    assert q.put_paths(R, ["/r/a", "/r/b", "/r/a"], "modified") == 2
    assert q.put_paths(R, ["/r/a", "/r/c"], "created") == 1
    assert q.put_paths(R, [], "created") == 0
    assert q.pending() == 3 and q.pending(R) == 3 and q.pending("/other") == 0
    jobs = q.take(10)
    assert keys(jobs) == [("/r/a", "path"), ("/r/b", "path"), ("/r/c", "path")]
    assert jobs[0].root == R and jobs[0].reason == "modified" and jobs[0].attempts == 0
    assert q.take(10) == []  # all running
    q.done([j.id for j in jobs])
    assert q.pending() == 0


def test_scans_first_and_one_pending_scan_per_root(q: JobQueue) -> None:
    q.put_paths("/s", ["/s/x"], "modified")
    assert q.put_scan(R, "start") is True
    assert q.put_scan(R, "periodic") is False
    jobs = q.take(1)
    assert len(jobs) == 1 and jobs[0].kind == "scan" and jobs[0].path is None and jobs[0].reason == "start"
    assert keys(q.take(5)) == [("/s/x", "path")]


def test_pending_scan_covers_path_jobs_of_its_root(q: JobQueue) -> None:
    q.put_paths(R, ["/r/a", "/r/b"], "modified")
    q.put_paths("/s", ["/s/a"], "modified")
    assert q.put_scan(R, "overflow")
    assert q.pending(R) == 1  # the paths were dropped: the scan sees them
    assert q.put_paths(R, ["/r/c"], "created") == 0
    scan = q.take(1)[0]
    # once the scan runs, new changes are queued again (the scan may have passed them already)
    assert q.put_paths(R, ["/r/c"], "created") == 1
    q.done([scan.id])
    assert keys(q.take(5)) == [("/s/a", "path"), ("/r/c", "path")]


def test_requeue_while_running_is_not_lost(q: JobQueue) -> None:
    q.put_paths(R, ["/r/a"], "modified")
    (running,) = q.take(5)
    assert q.put_paths(R, ["/r/a"], "modified") == 1  # a newer change arrives while the old one runs
    assert q.put_paths(R, ["/r/a"], "modified") == 0
    assert q.take(5) == []  # not twice at once
    q.done([running.id])
    (again,) = q.take(5)
    assert again.path == "/r/a" and again.id != running.id
    q.done([again.id])
    assert q.pending() == 0

    q.put_scan(R, "start")
    (scan,) = q.take(5)
    assert q.put_scan(R, "overflow") is True  # a scan running does not cover changes after it started
    q.done([scan.id])
    assert [j.reason for j in q.take(5)] == ["overflow"]


def test_retry_goes_to_the_back_then_fails_after_max_attempts(q: JobQueue) -> None:
    q.put_paths(R, ["/r/a", "/r/b"], "modified")
    first = q.take(1)[0]
    q.retry([first.id], "boom")
    assert keys(q.take(1)) == [("/r/b", "path")]
    for attempt in range(1, MAX_ATTEMPTS):
        (job,) = q.take(5)
        assert job.path == "/r/a" and job.attempts == attempt
        q.retry([job.id], f"boom {attempt}")
    assert q.take(5) == []
    (failed,) = q.failed(R)
    assert failed.job.path == "/r/a" and failed.job.attempts == MAX_ATTEMPTS
    assert failed.error == f"boom {MAX_ATTEMPTS - 1}"
    assert q.pending(R) == 1  # /r/b still running
    # a new change to the file is tried afresh; success clears the recorded failure
    assert q.put_paths(R, ["/r/a"], "modified") == 1
    (fresh,) = q.take(5)
    assert fresh.attempts == 0
    q.done([fresh.id])
    assert q.failed() == []


def test_retry_merges_into_a_newer_pending_job(q: JobQueue) -> None:
    q.put_paths(R, ["/r/a"], "modified")
    (job,) = q.take(5)
    q.put_paths(R, ["/r/a"], "deleted")
    q.retry([job.id], "boom")
    jobs = q.take(5)
    assert [(j.path, j.reason, j.attempts) for j in jobs] == [("/r/a", "deleted", 0)]


def test_recover_after_a_crash(db: Path) -> None:
    q1 = JobQueue(db)
    q1.put_paths(R, ["/r/a", "/r/b"], "modified")
    q1.put_scan("/s", "start")
    taken = q1.take(2)
    assert len(taken) == 2
    q1.put_paths(R, ["/r/a"], "modified")  # requeued while running
    q1._db.close()  # a crash: nothing more happens on this connection

    q2 = JobQueue(db)
    assert q2.recover() == 2
    jobs = q2.take(10)
    assert sorted(keys(jobs), key=str) == sorted([(None, "scan"), ("/r/a", "path"), ("/r/b", "path")], key=str)
    by_path = {j.path: j for j in jobs}
    assert by_path[None].attempts == 1  # an interrupted job counts as an attempt
    assert by_path["/r/a"].attempts == 0  # the newer pending job stands for the interrupted one
    assert q2.recover() == 3
    q2.close()


def test_a_job_that_keeps_crashing_the_daemon_ends_failed(db: Path) -> None:
    q = JobQueue(db)
    q.put_paths(R, ["/r/poison"], "created")
    for _ in range(MAX_ATTEMPTS):
        assert len(q.take(1)) == 1
        q.recover()
    assert q.take(1) == [] and q.failed()[0].error.startswith("interrupted")
    q.close()


def test_drop_root(q: JobQueue) -> None:
    q.put_paths(R, ["/r/a"], "modified")
    q.put_scan(R, "start")
    q.put_paths("/s", ["/s/a"], "modified")
    q.take(1)
    q.drop_root(R)
    assert q.pending(R) == 0 and q.pending() == 1


def test_shares_the_catalog_file_and_works_across_threads(db: Path) -> None:
    catalog = Catalog(db)  # the catalog's own connection and tables in the same file
    catalog.add_root("/r")
    q = JobQueue(db)
    errors: list[BaseException] = []

    def producer(n: int) -> None:
        try:
            for i in range(50):
                q.put_paths(R, [f"/r/{n}/{i}"], "created")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    seen = 0
    while any(t.is_alive() for t in threads) or q.pending():
        jobs = q.take(20)
        with catalog.db.conn:  # the writer's catalog transaction interleaves with queue writes
            catalog.db.execute("UPDATE roots SET added_at = added_at WHERE path = '/r'")
        q.done([j.id for j in jobs])
        seen += len(jobs)
    for t in threads:
        t.join()
    assert not errors and seen == 150
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "files", "chunks"} <= tables
    q.close()
    catalog.close()
