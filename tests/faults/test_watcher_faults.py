"""Watcher faults on the real inotify observer: a burst of 10,000 creations that overflows the
kernel's event queue, an exhausted inotify watch limit (ENOSPC) for some folders or for the
root itself, and, through the daemon, the tree and the index converging after a burst and
after a folder of 2,000 files is renamed, with nothing embedded again that did not change.

Sizes: the watcher-level burst is always 10,000 files; the daemon-level cases use
``RAGD_FAULT_FILES`` files (default 2,000, the issue's size for the rename)."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon import daemon_factory, idle, wait_for  # noqa: F401 (daemon_factory: a fixture)
from test_watch import Jobs, make_watcher, queue, until  # noqa: F401 (make_watcher, queue: fixtures)

from ragd.paths import PathFilter
from ragd.watch import Watcher

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="inotify observer"), pytest.mark.models("fake")]

BURST = 10_000
FILES = int(os.environ.get("RAGD_FAULT_FILES", "2000"))


def watch_group(watcher: Watcher) -> Any:
    """The inotify watch group of the watcher's only root."""
    assert watcher._observer is not None
    (emitter,) = list(watcher._observer.observer.emitters)
    return emitter._inotify  # type: ignore[attr-defined]


def burst(watcher: Watcher, folder: Path, n: int, text: Callable[[int], str] = lambda i: f"note {i}\n") -> None:
    """Create ``n`` files in ``folder`` while the thread that reads the inotify descriptor is
    stalled, so that the kernel's queue of fs.inotify.max_queued_events (16,384 by default;
    each file here makes 3 or 4 events) overflows: watchdog 7 reads into a queue of its own,
    so a burst alone no longer overflows, but a busy or starved process still can."""
    folder.mkdir(parents=True, exist_ok=True)
    key = os.fsencode(folder)
    group = watch_group(watcher)
    until(lambda: (node := group._find_node_by_path(key)) is not None and node.wd >= 0)  # watched first
    inotify = watcher._observer.reader  # type: ignore[union-attr]  # the thread that reads the inotify descriptor
    gate = threading.Event()
    read = inotify._read_event_buffer

    def stalled(*args: Any, **kwargs: Any) -> Any:
        gate.wait()
        return read(*args, **kwargs)

    inotify._read_event_buffer = stalled
    try:
        for i in range(n):
            (folder / f"n{i:05d}.md").write_text(text(i))
        # A small burst is padded with attribute changes (two files in turn: the kernel merges
        # an event equal to the last one queued) until the queue must overflow.
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        for i in range(max(0, limit + 1000 - 3 * n)):
            os.utime(folder / f"n{i % 2:05d}.md")
    finally:
        del inotify._read_event_buffer
        gate.set()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def test_a_burst_of_10000_creations_overflows_into_one_scan(root: Path, queue: Any,  # noqa: F811
                                                             make_watcher: Callable[..., Watcher]) -> None:  # noqa: F811
    jobs = Jobs(queue, root)
    w = make_watcher()
    w.watch(root, PathFilter())
    w.start()
    burst(w, root / "burst", BURST)
    jobs.wait_for("<scan:overflow>", timeout=60)
    quiet = time.monotonic() + 1.0  # the events read before the overflow: at most one batch more
    while time.monotonic() < quiet:
        if jobs.drain():
            quiet = time.monotonic() + 1.0
        time.sleep(0.05)
    # the events read before the stall are path jobs, at most a batch; the scans cover the rest
    assert sum(j.kind == "path" for j in jobs.seen) <= 1000
    jobs.reset()
    (root / "burst" / "after.md").write_text("x")  # watchdog rebuilt the watches: still watched
    jobs.wait_for("burst/after.md", timeout=10)
    assert w.trouble() == {}


class WatchLimit:
    """inotify_add_watch failing with ENOSPC once ``limit`` watches exist, as when
    fs.inotify.max_user_watches is exhausted (the real limit is shared by every process of the
    user, so it is not lowered here)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
        from watchdog.observers.inotify_c import InotifyFD

        self.limit = limit
        self.refused = 0
        real = InotifyFD.add_callback
        added: set[bytes] = set()

        def add_callback(fd: InotifyFD, path: bytes, *args: Any) -> Any:
            if path not in added and len(added) >= self.limit:
                self.refused += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            added.add(path)
            return real(fd, path, *args)

        monkeypatch.setattr(InotifyFD, "add_callback", add_callback)


@pytest.fixture
def tree(root: Path) -> Path:
    for i in range(20):
        (root / f"d{i:02d}").mkdir()
    return root


def test_some_folders_over_the_watch_limit_fall_back_to_scans(tree: Path, queue: Any,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             make_watcher: Callable[..., Watcher]) -> None:  # noqa: F811
    limit = WatchLimit(monkeypatch, 5)
    jobs = Jobs(queue, tree)
    w = make_watcher(fallback_scan_s=0.5)
    w.watch(tree, PathFilter())
    w.start()
    jobs.wait_for("<scan:watch-error>")
    assert limit.refused >= 15 and w.lost() == []
    until(lambda: tree in w.trouble())
    assert "some folders not watched" in w.trouble()[tree] and "scanned every" in w.trouble()[tree]
    jobs.reset()
    jobs.wait_for("<scan:watch-fallback>", timeout=5)  # again and again, while it lasts
    jobs.queue.done([j.id for j in jobs.drain()])
    jobs.reset()
    jobs.wait_for("<scan:watch-fallback>", timeout=5)
    (tree / "top.md").write_text("x")  # what is watched still reports at once
    jobs.wait_for("top.md")


def test_a_root_over_the_watch_limit_is_scanned_until_it_can_be_watched(tree: Path, queue: Any,  # noqa: F811
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       make_watcher: Callable[..., Watcher],  # noqa: F811
                                                                       ) -> None:
    limit = WatchLimit(monkeypatch, 0)
    jobs = Jobs(queue, tree)
    w = make_watcher(fallback_scan_s=0.5)
    w.watch(tree, PathFilter())
    w.start()
    assert w.lost() == [tree]
    assert "No space left on device" in w.trouble()[tree] and "scanned every" in w.trouble()[tree]
    jobs.wait_for("<scan:watch-fallback>", timeout=5)
    limit.limit = 1000  # the limit raised (or watches freed): watched again, and scanned once
    until(lambda: w.lost() == [] and w.trouble() == {})
    jobs.wait_for("<scan:watch-restored>")
    (tree / "d03" / "a.md").write_text("x")
    jobs.wait_for("d03/a.md")


def test_the_daemon_says_which_roots_are_not_watched(monkeypatch: pytest.MonkeyPatch,
                                                     daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    WatchLimit(monkeypatch, 0)
    daemon, client, notes = daemon_factory()
    wait_for(lambda: idle(client), what="first index")
    assert "No space left on device" in daemon.watch_problems()[str(notes)]
    (status,) = client.status().roots
    assert "No space left on device" in (status.watch_problem or "") and "scanned every" in status.watch_problem
    (notes / "late.md").write_text("Written while no watch works: found by the fallback scan.\n")
    daemon.queue.put_scan(str(notes), "watch-fallback")  # what the watcher queues every fallback_scan_s
    daemon.wake.set()
    wait_for(lambda: daemon.reader().catalog.file_row(str(notes / "late.md")) is not None, what="late.md")


# -- through the daemon: the tree and the index converge ----------------------------------------

def embedding_ids(daemon: Any) -> set[int]:
    return {int(r[0]) for r in daemon.reader().catalog.db.execute("SELECT id FROM embeddings")}


def indexed_under(daemon: Any, folder: Path) -> set[str]:
    return set(daemon.reader().catalog.files_under(str(folder)))


def on_disk(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def daemon_and_notes(daemon_factory: Callable[..., Any]) -> Iterator[tuple[Any, Any, Path]]:  # noqa: F811
    daemon, client, notes = daemon_factory()
    wait_for(lambda: idle(client), what="first index")
    yield daemon, client, notes


def test_after_an_overflowing_burst_the_index_equals_the_tree(daemon_and_notes: tuple[Any, Any, Path],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    daemon, client, notes = daemon_and_notes
    before = embedding_ids(daemon)
    burst(daemon.watcher, notes / "burst", FILES,
          lambda i: f"Ledger line {i}: crate {i * 7919 % 10007} shipped to pier {i % 97}.\n")
    wait_for(lambda: idle(client) and indexed_under(daemon, notes) == on_disk(notes), timeout=120,
             what="the index equal to the tree")
    assert any("overflow" in r.getMessage() for r in caplog.records if r.name == "ragd.watch")
    grown = embedding_ids(daemon)
    assert before <= grown and len(grown) == len(before) + FILES
    daemon.queue.put_scan(str(notes), "test")  # a reconcile finds nothing left to do
    daemon.wake.set()
    time.sleep(0.5)
    wait_for(lambda: idle(client), what="reconcile")
    assert embedding_ids(daemon) == grown


def test_renaming_a_folder_of_2000_files_embeds_nothing(daemon_and_notes: tuple[Any, Any, Path]) -> None:
    daemon, client, notes = daemon_and_notes
    folder = notes / "projects"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"p{i:05d}.md").write_text(f"Project {i}: the bridge {i * 7919 % 10007} spans river {i % 97}.\n")
    wait_for(lambda: idle(client) and indexed_under(daemon, folder) == on_disk(folder), timeout=120,
             what="the folder indexed")
    before = embedding_ids(daemon)
    renamed = notes / "archive-2025"
    folder.rename(renamed)
    wait_for(lambda: idle(client) and indexed_under(daemon, notes) == on_disk(notes), timeout=120,
             what="the rename followed")
    assert not indexed_under(daemon, folder) and len(indexed_under(daemon, renamed)) == FILES
    assert embedding_ids(daemon) == before  # nothing embedded, nothing dropped
