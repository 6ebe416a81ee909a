"""ragd.watch: debounced batches into the job queue, filters, folders, trouble -> scans; synthetic event
storms through ``Watcher.inject`` and the real inotify observer on a temporary folder."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)
from watchdog.observers.api import BaseObserver, EventEmitter

from ragd import inotify
from ragd.config import WatchConfig, parse_config
from ragd.errors import ConfigError
from ragd.inotify import FolderNotWatchedEvent
from ragd.paths import PathFilter
from ragd.store.jobs import Job, JobQueue
from ragd.watch import Watcher, WatchObserver, WatchTroubleEvent

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="inotify observer")


class _NullEmitter(EventEmitter):
    """Emits nothing: the tests inject events themselves."""

    def queue_events(self, timeout: float) -> None:
        self.stopped_event.wait(timeout)


def null_observer() -> WatchObserver:
    return WatchObserver(BaseObserver(_NullEmitter, timeout=0.05))


class Jobs:
    """Takes jobs from the queue as the writer would, and remembers them."""

    def __init__(self, queue: JobQueue, root: Path) -> None:
        self.queue = queue
        self.root = root
        self.seen: list[Job] = []

    def drain(self) -> list[Job]:
        jobs = self.queue.take(1000)
        self.queue.done([j.id for j in jobs])
        self.seen += jobs
        return jobs

    def rel(self, jobs: list[Job] | None = None) -> set[str]:
        """Relative paths of path jobs; "<scan:reason>" for scans."""
        return {os.path.relpath(j.path, self.root) if j.path else f"<scan:{j.reason}>"
                for j in (self.seen if jobs is None else jobs)}

    def wait_for(self, *expected: str, timeout: float = 5.0) -> set[str]:
        """Poll until every expected entry was seen; returns all seen since the last reset."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            if set(expected) <= self.rel():
                return self.rel()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {sorted(set(expected) - self.rel())}; "
                                     f"saw {sorted(self.rel())}")
            time.sleep(0.02)

    def reset(self) -> None:
        self.seen = []


def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    q = JobQueue(tmp_path / "data" / "catalog.db")
    yield q
    q.close()


@pytest.fixture
def jobs(queue: JobQueue, root: Path) -> Jobs:
    return Jobs(queue, root)


@pytest.fixture
def make_watcher(queue: JobQueue) -> Iterator[Callable[..., Watcher]]:
    made: list[Watcher] = []

    def make(**kwargs: object) -> Watcher:
        kwargs.setdefault("debounce_s", 0.1)
        kwargs.setdefault("check_interval_s", 0.2)
        watcher = Watcher(queue, **kwargs)  # type: ignore[arg-type]
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.stop()


# --- synthetic events --------------------------------------------------------------------------


def test_storm_is_debounced_into_one_job_per_path(root: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    changes = threading.Event()
    w = make_watcher(observer_factory=null_observer, on_change=changes.set, debounce_s=0.2)
    w.watch(root, PathFilter())
    w.start()
    a, b = str(root / "a.md"), str(root / "b.md")
    storm = [FileModifiedEvent(a) for _ in range(300)] + [FileCreatedEvent(b), FileClosedEvent(b)]
    w.inject(root, [*storm, DirModifiedEvent(str(root)), FileOpenedEvent(a), FileClosedNoWriteEvent(a)])
    assert jobs.drain() == []  # still within the debounce
    assert changes.wait(5)
    assert jobs.wait_for("a.md", "b.md") == {"a.md", "b.md"}
    assert len(jobs.seen) == 2 and {j.reason for j in jobs.seen} == {"modified"}


def test_constant_stream_is_flushed_every_max_delay(root: Path, jobs: Jobs,
                                                    make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(observer_factory=null_observer, debounce_s=0.2, max_delay_s=0.4)
    w.watch(root, PathFilter())
    w.start()
    started = time.monotonic()
    first_seen = None
    while time.monotonic() - started < 1.5:  # an event every 20 ms never leaves 0.2 s of quiet
        w.inject(root, [FileModifiedEvent(str(root / "log.txt"))])
        if first_seen is None and jobs.drain():
            first_seen = time.monotonic() - started
        time.sleep(0.02)
    assert first_seen is not None and first_seen < 1.2


def test_atomic_save_and_moves(root: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(observer_factory=null_observer)
    w.watch(root, PathFilter())
    note, tmp = str(root / "note.md"), str(root / ".note.md.swp")
    w.inject(root, [
        FileCreatedEvent(tmp), FileModifiedEvent(tmp), FileMovedEvent(tmp, note),  # editor's atomic save
        FileMovedEvent(str(root / "a.md"), str(root / "sub" / "b.md")),  # a rename inside the root
        FileMovedEvent(str(root / "gone.md"), str(root.parent / "elsewhere.md")),  # moved out of the root
        FileMovedEvent(str(root.parent / "outside.md"), str(root / "in.md")),  # moved in
        FileModifiedEvent(str(root.parent / "not-ours.md")),
    ])
    w.flush()
    assert jobs.wait_for() == {"note.md", "a.md", os.path.join("sub", "b.md"), "gone.md", "in.md"}
    assert {j.reason for j in jobs.seen} == {"moved"}


def test_filters_and_default_excludes(root: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(observer_factory=null_observer)
    w.watch(root, PathFilter(include=["**/*.md"], exclude=["private/"]))
    names = ["a.md", "b.txt", ".hidden.md", ".git/HEAD", "node_modules/x/y.md", "build/out.md", "x/__pycache__/c.md",
             "private/p.md", "docs/c.md", "note.md~", "x.tmp"]
    w.inject(root, [FileModifiedEvent(str(root / n)) for n in names])
    w.inject(root, [DirCreatedEvent(str(root / ".venv")), DirCreatedEvent(str(root / "node_modules" / "pkg")),
                    DirDeletedEvent(str(root / "docs" / "old"))])
    w.flush()
    assert jobs.wait_for() == {"a.md", os.path.join("docs", "c.md"), os.path.join("docs", "old")}


def test_folder_jobs_cover_the_files_under_them(root: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(observer_factory=null_observer)
    w.watch(root, PathFilter())
    new, old = root / "new", root / "old"
    w.inject(root, [
        DirCreatedEvent(str(new)), FileCreatedEvent(str(new / "a.md")), DirCreatedEvent(str(new / "deep")),
        FileCreatedEvent(str(new / "deep" / "b.md")),
        DirMovedEvent(str(old), str(root / "renamed")),
        FileMovedEvent(str(old / "c.md"), str(root / "renamed" / "c.md")),
        FileDeletedEvent(str(root / "top.md")),
    ])
    w.flush()
    assert jobs.wait_for() == {"new", "old", "renamed", "top.md"}
    assert {j.reason for j in jobs.seen if j.path and j.path.endswith("top.md")} == {"deleted"}


def test_odd_orderings_end_as_one_job(root: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(observer_factory=null_observer)
    w.watch(root, PathFilter())
    p = str(root / "a.md")
    w.inject(root, [FileDeletedEvent(p), FileCreatedEvent(p), FileModifiedEvent(p), FileDeletedEvent(p),
                    FileMovedEvent(p, p), FileCreatedEvent(p)])
    w.flush()
    assert [j.reason for j in jobs.drain()] == ["created"]  # the latest event names the reason


def test_a_burst_becomes_one_scan(root: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(observer_factory=null_observer, max_batch_paths=10)
    w.watch(root, PathFilter())
    w.inject(root, [FileCreatedEvent(str(root / f"f{i}.md")) for i in range(11)])
    w.flush()
    assert jobs.wait_for() == {"<scan:burst>"}
    w.inject(root, [FileCreatedEvent(str(root / f"f{i}.md")) for i in range(10)])
    w.flush()
    assert len(jobs.drain()) == 10


def test_trouble_events_queue_a_scan_at_once(root: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    changes: list[int] = []
    w = make_watcher(observer_factory=null_observer, on_change=lambda: changes.append(1), check_interval_s=30)
    w.watch(root, PathFilter())
    w.inject(root, [FileModifiedEvent(str(root / "a.md")), WatchTroubleEvent(str(root), reason="overflow")])
    w.flush()
    assert jobs.drain() and jobs.rel() == {"<scan:overflow>"} and changes  # the scan covers a.md
    w.start()  # the debounce thread writes a scan at once, without waiting for a check or a debounce
    w.inject(root, [WatchTroubleEvent(str(root), reason="watch-error", detail=str(root / "x"))])
    jobs.wait_for("<scan:watch-error>", timeout=3)


def test_what_watchdog_and_the_inotify_seam_report_becomes_trouble(root: Path, jobs: Jobs,
                                                                   make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(observer_factory=null_observer, check_interval_s=30)
    w.watch(root, PathFilter())
    w.start()
    w.inject(root, [EventsLostEvent(str(root), is_directory=True)])  # watchdog's own report of an overflow
    assert jobs.wait_for("<scan:overflow>", timeout=3) == {"<scan:overflow>"}
    w.inject(root, [FolderNotWatchedEvent(str(root / "x"))])  # ragd.inotify's report of a folder refused
    jobs.wait_for("<scan:watch-error>", timeout=3)
    assert f"first: {root / 'x'}" in w.trouble()[root]


def test_stop_writes_pending_batches_and_joins_threads(root: Path, jobs: Jobs,
                                                       make_watcher: Callable[..., Watcher]) -> None:
    before = set(threading.enumerate())
    w = make_watcher(observer_factory=null_observer, debounce_s=30)
    w.watch(root, PathFilter())
    w.start()
    w.inject(root, [FileCreatedEvent(str(root / "a.md"))])
    w.stop()
    assert jobs.drain() and jobs.rel() == {"a.md"}
    assert set(threading.enumerate()) <= before
    w.unwatch(root)
    assert w.watching() == []


def test_watch_config() -> None:
    cfg = parse_config({"watch": {"reconcile_interval_s": 0, "debounce_ms": 0}})
    assert cfg.watch == WatchConfig(reconcile_interval_s=0, debounce_ms=0)
    assert WatchConfig() == WatchConfig(enabled=True, debounce_ms=500, reconcile_interval_s=3600, max_batch_paths=1000)
    with pytest.raises(ConfigError, match=r"watch.reconcile_interval_s: expected 0 \(off\) or an integer from 60 "
                                          r"to 604800, got 30"):
        parse_config({"watch": {"reconcile_interval_s": 30}})
    with pytest.raises(ConfigError, match=r"watch\.debounce_ms: expected an integer from 0 to 60000, got 60001"):
        parse_config({"watch": {"debounce_ms": 60001}})
    with pytest.raises(ConfigError, match=r"watch\.max_batch_paths"):
        parse_config({"watch": {"max_batch_paths": 0}})


# --- the real observer (inotify) ---------------------------------------------------------------


@linux_only
def test_real_files(root: Path, tmp_path: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    (root / "sub").mkdir()
    w = make_watcher()
    w.watch(root, PathFilter())
    w.start()
    assert w.watching() == [root] and w.lost() == []

    (root / "a.md").write_text("hello")
    assert jobs.wait_for("a.md") == {"a.md"}
    jobs.reset()

    tmp = root / ".a.md.tmp"  # an editor's atomic save: write a hidden temp file, rename it over the target
    tmp.write_text("hello again")
    os.replace(tmp, root / "a.md")
    assert jobs.wait_for("a.md") == {"a.md"}
    jobs.reset()

    os.rename(root / "a.md", root / "sub" / "b.md")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("x")
    (root / "node_modules").mkdir()
    (root / "node_modules" / "m.js").write_text("x")
    assert jobs.wait_for("a.md", "sub/b.md") == {"a.md", "sub/b.md"}
    jobs.reset()

    (root / "sub" / "b.md").unlink()
    assert jobs.wait_for("sub/b.md") == {"sub/b.md"}
    assert [j.reason for j in jobs.seen] == ["deleted"]
    jobs.reset()

    (root / "newdir" / "deep").mkdir(parents=True)
    (root / "newdir" / "deep" / "c.md").write_text("x")
    assert jobs.wait_for("newdir") <= {"newdir", "newdir/deep", "newdir/deep/c.md"}
    jobs.reset()
    time.sleep(0.2)
    (root / "newdir" / "deep" / "d.md").write_text("x")  # the new folders are watched too
    assert jobs.wait_for("newdir/deep/d.md") == {"newdir/deep/d.md"}
    jobs.reset()

    shutil.rmtree(root / "newdir")
    assert jobs.wait_for("newdir") == {"newdir"}  # the folder's job covers what was under it


@linux_only
def test_symlinks_are_not_followed(root: Path, tmp_path: Path, jobs: Jobs,
                                   make_watcher: Callable[..., Watcher]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "loop").symlink_to(root)  # a loop is harmless: never walked
    w = make_watcher()
    w.watch(root, PathFilter())
    w.start()
    (outside / "secret.md").write_text("x")
    (root / "inside.md").write_text("x")
    assert jobs.wait_for("inside.md") == {"inside.md"}
    time.sleep(0.2)
    assert jobs.drain() == []


@linux_only
def test_symlinked_root_is_watched_at_its_target(tmp_path: Path, queue: JobQueue,
                                                 make_watcher: Callable[..., Watcher]) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    w = make_watcher()
    w.watch(link, PathFilter())
    w.start()
    (real / "a.md").write_text("x")
    link_jobs = Jobs(queue, link)
    link_jobs.wait_for("a.md")
    assert link_jobs.seen[0].root == str(link) and link_jobs.seen[0].path == str(link / "a.md")


@linux_only
def test_kernel_queue_overflow_queues_a_scan(root: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, WatchDescriptor

    w = make_watcher()
    w.watch(root, PathFilter())
    w.start()
    assert w._observer is not None
    observer = w._observer.observer
    assert isinstance(observer, inotify.InotifyTroubleObserver)
    # What the kernel sends when its queue overflows (wd -1, IN_Q_OVERFLOW): watchdog rebuilds its
    # watches and reports EventsLostEvent.
    observer.inotify_fd.handle_event(InotifyEvent(WatchDescriptor(-1), InotifyConstants.IN_Q_OVERFLOW, 0, b""))
    assert jobs.wait_for("<scan:overflow>") == {"<scan:overflow>"}
    (root / "after.md").write_text("x")  # the rebuilt watches still report changes
    jobs.wait_for("after.md")


@linux_only
def test_lost_root_is_scanned_and_watched_again(root: Path, tmp_path: Path, jobs: Jobs,
                                                make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher()
    w.watch(root, PathFilter())
    w.start()
    shutil.rmtree(root)
    jobs.wait_for("<scan:watch-lost>")
    until(lambda: w.lost() == [root])
    jobs.reset()
    root.mkdir()
    until(lambda: w.lost() == [])
    (root / "back.md").write_text("x")
    jobs.wait_for("back.md")
    assert any(j.kind == "scan" for j in jobs.seen)  # "watch-restored", or a "watch-lost" still pending
    jobs.reset()

    os.rename(root, tmp_path / "moved-away")  # the watch would follow the folder: it must be dropped
    jobs.wait_for("<scan:watch-lost>")
    (tmp_path / "moved-away" / "x.md").write_text("x")
    time.sleep(0.3)
    assert "x.md" not in {os.path.basename(j.path or "") for j in jobs.seen + jobs.drain()}


@linux_only
def test_dead_emitter_or_observer_is_replaced(root: Path, jobs: Jobs, make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher()
    w.watch(root, PathFilter())
    w.start()
    assert w._observer is not None
    observer = w._observer.observer
    for emitter in list(observer.emitters):
        emitter.stop()
    jobs.wait_for("<scan:watch-lost>")  # a scan after the watch is back is one pending scan with it
    until(lambda: w.lost() == [] and w._observer is not None and len(w._observer.observer.emitters) == 1)
    (root / "a.md").write_text("x")
    jobs.wait_for("a.md")
    jobs.reset()

    observer.stop()
    observer.join()
    jobs.wait_for("<scan:watch-error>")
    assert w._observer is not None and w._observer.observer is not observer and w.lost() == []
    (root / "b.md").write_text("x")
    jobs.wait_for("b.md")


@linux_only
def test_a_folder_that_cannot_be_watched_queues_a_scan(root: Path, jobs: Jobs, monkeypatch: pytest.MonkeyPatch,
                                                       make_watcher: Callable[..., Watcher]) -> None:
    import errno

    from watchdog.observers.inotify_c import InotifyFD

    real_add = InotifyFD.add_callback

    def add_callback(self: InotifyFD, path: bytes, *args: object) -> object:
        if path.endswith(b"/full"):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return real_add(self, path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(InotifyFD, "add_callback", add_callback)
    (root / "full").mkdir()
    w = make_watcher()
    w.watch(root, PathFilter())
    w.start()
    assert jobs.wait_for("<scan:watch-error>") == {"<scan:watch-error>"}
    (root / "ok.md").write_text("x")  # the rest of the root is still watched
    jobs.wait_for("ok.md")


# --- when watchdog's internals change ---------------------------------------------------------


@linux_only
def test_the_guard_names_what_changed_in_watchdogs_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog.observers.inotify import InotifyWatchGroup

    assert inotify.check_internals() == ""
    monkeypatch.delattr(InotifyWatchGroup, "_recursive_simulate")
    assert "InotifyWatchGroup._recursive_simulate is missing" in inotify.check_internals()
    monkeypatch.undo()
    monkeypatch.setattr(InotifyWatchGroup, "_add_callback", lambda self, path, mask: None)
    assert "InotifyWatchGroup._add_callback does not take (self, path)" in inotify.check_internals()


@linux_only
def test_changed_internals_fall_back_to_the_public_observer_and_rescans(
        root: Path, jobs: Jobs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        make_watcher: Callable[..., Watcher]) -> None:
    from ragd import watch

    # The guard fails as for a release without a method ragd relies on (watchdog itself left intact).
    monkeypatch.setattr(inotify, "_SHAPE", (*inotify._SHAPE, ("observers.inotify.InotifyWatchGroup._gone", None)))
    monkeypatch.setattr(inotify, "PROBLEM", inotify.check_internals())  # what the check at import finds
    watch._log_fallback.cache_clear()
    w = make_watcher(fallback_scan_s=0.5)
    w.watch(root, PathFilter())
    w.start()
    assert w._observer is not None and not isinstance(w._observer.observer, inotify.InotifyTroubleObserver)
    (root / "a.md").write_text("x")  # watchdog's public observer still reports changes
    jobs.wait_for("a.md")
    jobs.reset()
    jobs.wait_for("<scan:watch-fallback>")  # and every root is scanned as well, again and again
    jobs.reset()
    jobs.wait_for("<scan:watch-fallback>")
    assert "InotifyWatchGroup._gone is missing" in w.trouble()[root] and "scanned every" in w.trouble()[root]
    assert w.lost() == []
    w._observer.observer.stop()  # a replaced observer is the public one again, logged once in all
    jobs.wait_for("<scan:watch-error>")
    fallbacks = [r for r in caplog.records if "public observer" in r.getMessage()]
    assert len(fallbacks) == 1 and "InotifyWatchGroup._gone is missing" in fallbacks[0].getMessage()
