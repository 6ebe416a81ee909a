"""Writer faults: the catalog locked by another process, a full disk, a read-only file system.
The writer thread survives each, retries with backoff, says so meanwhile (``writer_problem``,
the Index service's health) while searches keep answering from what is committed, and
indexes every change once the fault is gone; nothing committed is lost.

The full disk is real (a small tmpfs under the data folder) where this process may mount one
(root on Linux); elsewhere, and for the read-only catalog, the error is injected where SQLite
raises it."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_daemon
from test_daemon import idle, top_path, wait_for

import ragd.store.schema
from ragd.store.catalog import Catalog

pytestmark = pytest.mark.models("fake")

EXTRA = {f"extra/bird{i:02d}.md": f"# Bird {i}\n\nThe bird number {i} called wren{i} sings at dawn in hedge {i}.\n"
         for i in range(12)}

daemon_factory = test_daemon.daemon_factory  # the fixture, shared


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def indexed_files(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {str(r[0]) for r in conn.execute("SELECT path FROM files WHERE status = 'indexed'")}
    finally:
        conn.close()


def _can_mount(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(where)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path | None]:
    """``tmp_path/data`` on an 8 MB tmpfs when mounting works here, else None (inject)."""
    data = tmp_path / "data"
    mounted = _can_mount(data)
    yield data if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(data)], capture_output=True, timeout=30)


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite waits 30 s for a lock before it fails; the tests wait 0.3 s."""
    monkeypatch.setattr(ragd.store.schema, "BUSY_TIMEOUT_S", 0.3)


def _trouble(daemon: Any, client: Any, needle: str) -> str:
    problem = wait_for(lambda: daemon.writer_problem(), timeout=30, what="the writer to report its problem")
    assert needle in problem.lower(), problem
    assert daemon._writer.is_alive()
    assert client.health("ragd.v1.Index") == "NOT_SERVING"
    assert client.health() == "SERVING"  # searches still answer from what is committed
    assert top_path(client, "glaciers in Iceland with ice cores") is not None
    st = client.status()
    assert st.files_indexed >= 2
    assert st.writer_error and needle in st.writer_error.lower()  # Status tells the truth meanwhile
    return str(problem)


def _recovered(daemon: Any, client: Any, notes: Path) -> None:
    wait_for(lambda: not daemon.writer_problem(), timeout=60, what="the writer to work again")
    wait_for(lambda: idle(client), timeout=60, what="the new files indexed")
    db = daemon.config.data_dir / "catalog.db"
    assert {str(notes / p) for p in EXTRA} <= indexed_files(db)
    assert client.health("ragd.v1.Index") == "SERVING"
    assert client.status().writer_error is None
    assert integrity(db) == "ok"
    assert top_path(client, "wren7 sings at dawn in hedge 7") == str(notes / "extra/bird07.md")


def _queue_extra(daemon: Any, notes: Path, fault: Callable[[], None]) -> None:
    """Write the new files and queue them, then start the fault while the writer waits for
    its mutex, so the fault meets the writer mid-work or at its next take."""
    with daemon.writer_mutex:
        for rel, text in EXTRA.items():
            (notes / rel).parent.mkdir(parents=True, exist_ok=True)
            (notes / rel).write_text(text, encoding="utf-8")
        daemon.queue.put_scan(str(notes), "test")
        daemon.wake.set()
        fault()


def test_the_writer_survives_a_catalog_locked_by_another_process(
    daemon_factory: Callable[..., Any], short_busy_timeout: None,
) -> None:
    """Issue 25 #2: a lock held by another process (here ``BEGIN EXCLUSIVE`` on another
    connection) made the writer thread end with a traceback while the daemon kept reporting
    serving, and no change was indexed again."""
    daemon, client, notes = daemon_factory(watch={"enabled": False})
    wait_for(lambda: idle(client), what="initial index")
    other = sqlite3.connect(daemon.config.data_dir / "catalog.db", isolation_level=None)
    try:
        _queue_extra(daemon, notes, lambda: other.execute("BEGIN EXCLUSIVE"))
        _trouble(daemon, client, "locked")
        wait_for(lambda: "retrying in 2 s" in daemon.writer_problem() or "retrying in 4 s" in daemon.writer_problem(),
                 timeout=30, what="a second try, later")
        assert client.status().files_pending >= 1  # the change is still queued, not lost
    finally:
        other.execute("ROLLBACK")
        other.close()
    _recovered(daemon, client, notes)
    assert not daemon.queue.failed()  # the lock counted against no job


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
    return filler


@contextlib.contextmanager
def _injected(monkeypatch: pytest.MonkeyPatch, code: int, message: str) -> Iterator[Callable[[bool], None]]:
    """Catalog writes fail as SQLite fails them (``code``) while the switch is on."""
    state = {"on": False}
    real = Catalog.apply

    def apply(self: Catalog, *args: Any, **kwargs: Any) -> Any:
        if state["on"]:
            exc = sqlite3.OperationalError(message)
            exc.sqlite_errorcode = code
            raise exc
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Catalog, "apply", apply)
    yield lambda on: state.__setitem__("on", on)


def test_the_writer_survives_a_full_disk(
    daemon_factory: Callable[..., Any], small_fs: Path | None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk under the data folder: the writer pauses and says so, nothing committed is
    lost (the catalog stays intact and searchable), and once space is freed every queued
    change is indexed."""
    if small_fs is not None:
        daemon, client, notes = daemon_factory(watch={"enabled": False})
        wait_for(lambda: idle(client), what="initial index")
        filler: list[Path] = []
        _queue_extra(daemon, notes, lambda: filler.append(_fill(small_fs)))
        _trouble(daemon, client, "full")
        assert integrity(daemon.config.data_dir / "catalog.db") == "ok"
        filler[0].unlink()
        _recovered(daemon, client, notes)
        assert not daemon.queue.failed()
    else:
        _injected_fault(daemon_factory, monkeypatch, 13, "database or disk is full", "full")


def test_the_writer_survives_a_briefly_read_only_catalog(
    daemon_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The catalog refuses writes for a while (SQLite's READONLY, as after a remount read-only;
    injected, since a file system with files open for writing cannot be remounted read-only
    and root may write whatever the modes say), then takes them again."""
    _injected_fault(daemon_factory, monkeypatch, 8, "attempt to write a readonly database", "readonly")


def _injected_fault(daemon_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, code: int, message: str,
                    needle: str) -> None:
    with _injected(monkeypatch, code, message) as switch:
        daemon, client, notes = daemon_factory(watch={"enabled": False})
        wait_for(lambda: idle(client), what="initial index")
        _queue_extra(daemon, notes, lambda: switch(True))
        _trouble(daemon, client, needle)
        switch(False)
    _recovered(daemon, client, notes)
    assert not daemon.queue.failed()


def test_a_job_that_fails_by_itself_still_counts_its_attempts(
    daemon_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug on one job is not a fault of the machine: the writer goes on with the others,
    reports no problem, and the job ends ``failed`` after its attempts, as before."""
    from ragd import indexer as indexer_module

    daemon, client, notes = daemon_factory(watch={"enabled": False})
    wait_for(lambda: idle(client), what="initial index")
    real_sync = indexer_module.Indexer.sync

    def broken_sync(self: Any, root: Path, paths: Any) -> Any:
        if any(p.name == "broken.md" for p in paths):
            raise ValueError("a bug on this file")
        return real_sync(self, root, paths)

    monkeypatch.setattr(indexer_module.Indexer, "sync", broken_sync)
    monkeypatch.setattr(daemon.stopping, "wait", lambda timeout=None: False)  # no pause between tries
    (notes / "broken.md").write_text("# Broken\n\nThis one fails.\n", encoding="utf-8")
    daemon.queue.put_paths(str(notes), [str(notes / "broken.md")], "test")
    daemon.wake.set()
    wait_for(lambda: daemon.queue.failed(), timeout=60, what="the job to fail for good")
    assert daemon.writer_problem() == ""
    assert daemon._writer.is_alive()
    (notes / "fine.md").write_text("# Fine\n\nPelicans scoop fish into their throat pouches.\n", encoding="utf-8")
    daemon.queue.put_paths(str(notes), [str(notes / "fine.md")], "test")
    daemon.wake.set()
    wait_for(lambda: top_path(client, "Pelicans scoop fish") == str(notes / "fine.md"), what="the next job")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_writer_thread_ending_is_reported(daemon_factory: Callable[..., Any]) -> None:
    """Should the writer thread end anyway (a BaseException from a library), Status and
    health are not left saying all is well."""
    daemon, client, _notes = daemon_factory(watch={"enabled": False})
    wait_for(lambda: idle(client), what="initial index")

    def die(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit("simulated end of the writer thread")

    daemon.queue.take = die  # type: ignore[method-assign]
    daemon.wake.set()
    wait_for(lambda: not daemon._writer.is_alive(), what="the writer thread to end")
    assert "ended" in daemon.writer_problem()
    assert client.health("ragd.v1.Index") == "NOT_SERVING"
    assert client.health() == "SERVING"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_os_errors_of_the_machine_are_transient(code: int) -> None:
    from ragd.server import _transient

    assert _transient(OSError(code, os.strerror(code)))
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = OSError(code, os.strerror(code))
    assert _transient(wrapped)
    assert not _transient(ValueError("a bug"))
    bug = sqlite3.OperationalError("no such column: x")
    bug.sqlite_errorcode = 1
    assert not _transient(bug)
