"""Watching roots: watchdog events -> debounced batches per root -> the durable ``JobQueue``.

A root's batch is written once no event came for ``debounce_s`` (and at least every
``max_delay_s``): changed paths become path jobs, a changed folder one job for the folder, a
batch over ``max_batch_paths`` one scan of the root. Where events may have been lost (an
overflow, a folder that cannot be watched, a watch or an observer that ended) the root gets a
scan instead. docs/architecture.md, "Watching", gives the reasons; ``ragd.inotify`` holds the
only use of watchdog's internals.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import watchdog.events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from ragd import inotify
from ragd.config import WatchConfig
from ragd.inotify import FolderNotWatchedEvent
from ragd.paths import PathFilter
from ragd.store.jobs import JobQueue

log = logging.getLogger(__name__)

_MIN_WAIT_S = 0.005  # the debounce thread never waits less (a deadline just past)

DEBOUNCE_S = WatchConfig.debounce_ms / 1000
MAX_BATCH_PATHS = WatchConfig.max_batch_paths
MAX_DELAY_S = 2.0
"""Under a constant stream of events a root's batch is still written this often."""
CHECK_INTERVAL_S = 1.0
"""How often the watches are checked: ended, folder replaced, observer dead."""
FALLBACK_SCAN_S = 300.0
"""How often a root that is not fully watched is scanned instead."""
OBSERVER_JOIN_S = 5.0
"""How long a dead observer is waited for before it is replaced."""

TROUBLE = "ragd_trouble"
"""``event_type`` of ``WatchTroubleEvent``."""
EVENTS_LOST: str = getattr(watchdog.events, "EVENT_TYPE_EVENTS_LOST", "events_lost")
"""``event_type`` of watchdog's ``EventsLostEvent`` (7.1+): the kernel's queue overflowed."""

_REASONS = {"created": "created", "modified": "modified", "closed": "modified", "attrib": "modified",
            "deleted": "deleted", "moved": "moved"}
"""watchdog event types that mean a change, and the job reason each gives."""


@dataclass(unsafe_hash=True)
class WatchTroubleEvent(FileSystemEvent):
    """Not a change: events under ``src_path`` (a watched folder) may have been lost.

    ``reason`` is ``"overflow"``, ``"watch-error"`` or ``"watch-lost"``; ``detail`` names the
    folder concerned when there is one. Tests inject these like any other event.
    """

    event_type = TROUBLE
    reason: str = "watch-error"
    detail: str = ""


def _trouble(event: FileSystemEvent) -> WatchTroubleEvent | None:
    """The trouble an event reports, as ragd's own event; None for a change."""
    if isinstance(event, WatchTroubleEvent):
        return event
    if event.event_type == EVENTS_LOST:
        return WatchTroubleEvent(event.src_path, reason="overflow")
    if isinstance(event, FolderNotWatchedEvent):
        return WatchTroubleEvent(event.src_path, reason="watch-error", detail=os.fsdecode(event.src_path))
    return None


class WatchObserver:
    """ragd's observer type: a watchdog observer and the little more the Watcher asks of it.

    ``reader`` is a thread the observer needs besides its own (inotify's reader), checked by
    ``healthy``. ``blind_spot`` says why losses of events may go unreported ("" when none may);
    the Watcher then scans every root every ``fallback_scan_s`` as well.
    """

    def __init__(self, observer: BaseObserver, *, reader: threading.Thread | None = None,
                 blind_spot: str = "") -> None:
        self.observer = observer
        self.reader = reader
        self.blind_spot = blind_spot

    def start(self) -> None:
        self.observer.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the observer and wait for it (at most ``timeout`` seconds)."""
        self.observer.stop()
        if self.observer.is_alive():
            self.observer.join(timeout)

    def healthy(self) -> bool:
        """False once the observer or its reader has died: the Watcher then replaces it."""
        return self.observer.is_alive() and (self.reader is None or self.reader.is_alive())

    def schedule(self, handler: FileSystemEventHandler, folder: str) -> ObservedWatch:
        return self.observer.schedule(handler, folder, recursive=True)

    def unschedule(self, watch: ObservedWatch) -> None:
        self.observer.unschedule(watch)

    def live_watches(self) -> set[ObservedWatch]:
        """The watches whose emitter still runs (watchdog ends one whose folder was deleted)."""
        return {e.watch for e in list(self.observer.emitters) if e.is_alive()}


def default_observer() -> WatchObserver:
    """ragd's inotify observer on Linux, watchdog's platform observer elsewhere. Where the inotify
    internals ragd relies on changed (``inotify.PROBLEM``), watchdog's public observer, with every
    root also scanned periodically: a watchdog release degrades watching but cannot break it."""
    if sys.platform != "linux":
        return WatchObserver(Observer())
    if not inotify.PROBLEM:
        observer = inotify.InotifyTroubleObserver()
        return WatchObserver(observer, reader=observer.inotify_fd)
    _log_fallback(inotify.PROBLEM)
    return WatchObserver(Observer(), blind_spot="watched by watchdog's public observer, which does not report "
                                                f"folders it cannot watch ({inotify.PROBLEM})")


@functools.cache
def _log_fallback(problem: str) -> None:
    log.warning("the inotify internals ragd relies on have changed (%s): watching with watchdog's public "
                "observer, and scanning every root periodically as well", problem)


@dataclass
class _Root:
    """One watched root: its filter, its watch, and the batch being debounced."""

    root: Path
    prefix: str  # str(root) + "/"
    watch_path: str  # the folder the observer watches: the root with symlinks resolved
    filter: PathFilter
    watch: ObservedWatch | None = None
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder when watched
    batch: dict[str, str] = field(default_factory=dict)  # path -> reason of its latest event
    dirs: set[str] = field(default_factory=set)  # paths in the batch that were folders
    first: float = 0.0
    last: float = 0.0
    check: bool = False  # check the watch at the next tick
    warned: bool = False  # "cannot watch" was logged; not again until it works
    failure: str = ""  # why the root's folder cannot be watched, when it exists
    partial: str = ""  # the first folder below the root that could not be watched
    retry_at: float = 0.0  # a watch that failed other than by OSError is tried again then
    next_scan: float = 0.0  # the next fallback scan while the root is not fully watched (or watched blind)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher, root: Path) -> None:
        super().__init__()
        self._watcher = watcher
        self._root = root

    def dispatch(self, event: FileSystemEvent) -> None:
        self._watcher._dispatch(self._root, event)


class Watcher:
    """A watchdog observer over the roots -> debounced batches -> JobQueue."""

    def __init__(
        self,
        queue: JobQueue,
        debounce_s: float = DEBOUNCE_S,
        observer_factory: Callable[[], WatchObserver] | None = None,
        on_change: Callable[[], None] | None = None,
        *,
        max_batch_paths: int = MAX_BATCH_PATHS,
        max_delay_s: float = MAX_DELAY_S,
        check_interval_s: float = CHECK_INTERVAL_S,
        fallback_scan_s: float = FALLBACK_SCAN_S,
    ) -> None:
        self._queue = queue
        self._debounce = max(0.0, debounce_s)
        self._max_delay = max(max_delay_s, self._debounce)
        self._factory = observer_factory or default_observer
        self._on_change = on_change
        self._max_batch = max(1, max_batch_paths)
        self._check_interval = check_interval_s
        self._fallback_scan = max(check_interval_s, fallback_scan_s)
        self.on_check: Callable[[], None] | None = None  # called by the debounce thread at every check
        # _lock guards the roots and batches and is held only briefly, never around observer calls:
        # watchdog's dispatcher holds its own lock while it calls the handler, which takes _lock.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._obs_lock = threading.RLock()  # serialises observer changes; never taken by the handler
        self._roots: dict[Path, _Root] = {}
        self._scans_owed: dict[Path, str] = {}  # scans to queue: reported by a handler, or refused by the database
        self._scans_new = False  # a handler owes a scan: write it now rather than at the next check
        self._observer: WatchObserver | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- public -------------------------------------------------------------------------------
    def watch(self, root: Path, path_filter: PathFilter) -> None:
        """Watch ``root`` recursively (again, with this filter, if already watched). A root that
        cannot be watched now is logged and retried every check; its first watch queues a scan."""
        root = Path(os.path.abspath(root))
        state = _Root(root, str(root).rstrip(os.sep) + os.sep, os.path.realpath(root), path_filter)
        with self._obs_lock:
            with self._lock:
                old = self._roots.get(root)
                if old is not None:
                    state.batch, state.dirs, state.first, state.last = old.batch, old.dirs, old.first, old.last
                self._roots[root] = state
            if old is not None:
                self._unschedule(old)
            if self._observer is not None:
                self._schedule(state)

    def unwatch(self, root: Path) -> None:
        """Stop watching ``root``; its batch not yet written is dropped (jobs stay: see ``JobQueue.drop_root``)."""
        root = Path(os.path.abspath(root))
        with self._obs_lock:
            with self._lock:
                state = self._roots.pop(root, None)
            if state is not None:
                self._unschedule(state)

    def watching(self) -> list[Path]:
        """The roots given to ``watch`` (whether or not their watch is active right now)."""
        with self._lock:
            return sorted(self._roots)

    def lost(self) -> list[Path]:
        """Roots whose watch is not active (folder missing or not watchable); retried every check."""
        with self._lock:
            return sorted(s.root for s in self._roots.values() if s.watch is None) if self._running() else []

    def trouble(self) -> dict[Path, str]:
        """Roots not (fully) watched right now, with the reason; each falls back to a scan every
        ``fallback_scan_s`` while its folder exists (a missing folder is watched again when back)."""
        observer = self._observer
        if observer is None:
            return {}
        every = f"scanned every {self._fallback_scan:.0f} s instead"
        out: dict[Path, str] = {}
        with self._lock:
            for s in self._roots.values():
                if s.watch is None:
                    out[s.root] = f"not watched: {s.failure}; {every}" if s.failure else \
                        "not watched: the folder is missing; watched again once it is back"
                elif s.partial:
                    out[s.root] = (f"some folders not watched (first: {s.partial}; the inotify watch limit "
                                   f"fs.inotify.max_user_watches, no access, or a path too long); {every}")
                elif observer.blind_spot:
                    out[s.root] = f"{observer.blind_spot}; scanned every {self._fallback_scan:.0f} s as well"
        return out

    def start(self) -> None:
        """Start the observer, watch every root, and start the debounce thread."""
        with self._obs_lock:
            if self._observer is not None:
                return
            with self._lock:
                self._stopping = False
            observer = self._factory()
            observer.start()  # before any watch, so one bad root cannot fail the start
            self._observer = observer
            for state in self._states():
                self._schedule(state)
            self._thread = threading.Thread(target=self._run, name="ragd-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop and join the observer and the debounce thread; write every pending batch."""
        with self._obs_lock:
            observer, self._observer = self._observer, None
            thread, self._thread = self._thread, None
        if observer is not None:
            observer.stop()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        self._flush_all()

    def inject(self, root: Path, events: Iterable[FileSystemEvent]) -> None:
        """Feed events as if ``root``'s observer reported them (tests: storms, overflows, odd orders)."""
        root = Path(os.path.abspath(root))
        for event in events:
            self._dispatch(root, event)

    def flush(self) -> None:
        """Write every pending batch now, debounced or not."""
        self._flush_all()

    # -- events (observer threads) ------------------------------------------------------------
    def _dispatch(self, root: Path, event: FileSystemEvent) -> None:
        try:
            self._handle(root, event)
        except Exception:  # a bug here must not kill watchdog's dispatcher thread
            log.exception("watch %s: cannot handle %r", root, event)
            self._owe_scan(root, "watch-error")

    def _handle(self, root: Path, event: FileSystemEvent) -> None:
        trouble = _trouble(event)
        if trouble is not None:
            log.warning("watch %s: %s%s; the root will be scanned", root, trouble.reason,
                        f" ({trouble.detail})" if trouble.detail else "")
            if trouble.reason == "watch-lost":
                self._request_check(root)
            elif trouble.reason == "watch-error" and trouble.detail:
                with self._lock:
                    state = self._roots.get(root)
                    if state is not None and state.watch is not None and not state.partial:
                        state.partial = trouble.detail
                        state.next_scan = time.monotonic() + self._fallback_scan
            self._owe_scan(root, trouble.reason)
            return
        reason = _REASONS.get(event.event_type)
        if reason is None or (event.is_directory and reason == "modified"):
            return  # opened / closed without writing / a folder's own metadata
        now = time.monotonic()
        with self._cond:
            state = self._roots.get(root)
            if state is None:
                return
            src = os.fsdecode(event.src_path)
            if event.is_directory and reason == "deleted" and src == state.watch_path:
                state.check = True  # the root itself: its watch has ended
                self._cond.notify_all()
                return
            raw = [src, os.fsdecode(event.dest_path)] if reason == "moved" else [src]
            added = False
            for one in raw:
                path = self._under_root(state, one)
                if path is None or not self._accepts(state, path, event.is_directory):
                    continue
                state.batch.pop(path, None)  # re-insert: the batch keeps the order of latest events
                state.batch[path] = reason
                if event.is_directory:
                    state.dirs.add(path)
                added = True
            if added:
                if not state.first:
                    state.first = now
                state.last = now
                self._cond.notify_all()

    @staticmethod
    def _under_root(state: _Root, path: str) -> str | None:
        """The event path as a path under the root (events name the watched, resolved folder)."""
        if not path or path == state.watch_path:
            return None
        if not path.startswith(state.watch_path.rstrip(os.sep) + os.sep):
            return None
        return state.prefix + path[len(state.watch_path.rstrip(os.sep)) + 1:]

    @staticmethod
    def _accepts(state: _Root, path: str, is_dir: bool) -> bool:
        rel = path[len(state.prefix):].replace(os.sep, "/")
        if not is_dir:
            return state.filter.accepts(rel)
        parts = rel.split("/")
        return all(state.filter.accepts_dir("/".join(parts[: i + 1])) for i in range(len(parts)))

    # -- the debounce thread ------------------------------------------------------------------
    def _run(self) -> None:
        next_check = time.monotonic() + self._check_interval
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._stopping:
                        return  # stop() writes what is left once the observer has stopped
                    due = [s for s in self._roots.values() if s.batch and self._is_due(s, now)]
                    check = now >= next_check or any(s.check for s in self._roots.values())
                    if due or check or self._scans_new:
                        break
                    deadlines = [next_check] + [min(s.last + self._debounce, s.first + self._max_delay)
                                                for s in self._roots.values() if s.batch]
                    self._cond.wait(max(_MIN_WAIT_S, min(deadlines) - now))
                batches = [self._take_batch(s) for s in due]
            try:
                self._write_owed_scans()  # before the batches: a pending scan covers their paths
                self._write(batches)
                if check:
                    next_check = time.monotonic() + self._check_interval
                    self._check_watches()
                    if self.on_check is not None:
                        self.on_check()
            except Exception:  # keep watching whatever happens
                log.exception("watcher: unexpected error")

    def _is_due(self, state: _Root, now: float) -> bool:
        return now - state.last >= self._debounce or now - state.first >= self._max_delay

    @staticmethod
    def _take_batch(state: _Root) -> tuple[Path, dict[str, str], set[str]]:
        batch, dirs = state.batch, state.dirs
        state.batch, state.dirs, state.first, state.last = {}, set(), 0.0, 0.0
        return state.root, batch, dirs

    def _flush_all(self) -> None:
        with self._cond:
            batches = [self._take_batch(s) for s in self._roots.values() if s.batch]
        self._write_owed_scans()
        self._write(batches)

    def _write(self, batches: list[tuple[Path, dict[str, str], set[str]]]) -> None:
        """Write batches to the queue; a batch the database refuses goes back to be retried."""
        wrote = False
        for root, batch, dirs in batches:
            paths = _collapse(batch, dirs)
            try:
                if len(paths) > self._max_batch:
                    self._queue.put_scan(str(root), "burst")
                else:
                    by_reason: dict[str, list[str]] = {}
                    for path, reason in paths.items():
                        by_reason.setdefault(reason, []).append(path)
                    for reason, group in by_reason.items():
                        self._queue.put_paths(str(root), group, reason)
                wrote = True
            except Exception:
                log.exception("watch %s: cannot queue %d changed paths; retrying", root, len(paths))
                self._requeue(root, batch, dirs)
        if wrote:
            self._changed()

    def _requeue(self, root: Path, batch: dict[str, str], dirs: set[str]) -> None:
        with self._cond:
            state = self._roots.get(root)
            if state is None:
                return
            for path, reason in batch.items():
                state.batch.setdefault(path, reason)
            state.dirs |= dirs
            now = time.monotonic()
            state.first = state.first or now
            state.last = now

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("watcher: on_change failed")

    def _owe_scan(self, root: Path, reason: str) -> None:
        """A handler's scan is written by the debounce thread: no database work in watchdog's threads."""
        with self._cond:
            self._scans_owed.setdefault(root, reason)
            self._scans_new = True
            self._cond.notify_all()

    def _queue_scan(self, root: Path, reason: str) -> None:
        try:
            self._queue.put_scan(str(root), reason)
        except Exception:
            log.exception("watch %s: cannot queue a scan (%s); retrying at the next check", root, reason)
            with self._cond:
                self._scans_owed.setdefault(root, reason)
            return
        self._changed()

    def _write_owed_scans(self) -> None:
        with self._cond:
            owed, self._scans_owed, self._scans_new = self._scans_owed, {}, False
        for root, reason in owed.items():
            if root in self._roots:
                self._queue_scan(root, reason)

    def _request_check(self, root: Path) -> None:
        with self._cond:
            state = self._roots.get(root)
            if state is not None:
                state.check = True
                self._cond.notify_all()

    # -- watches ------------------------------------------------------------------------------
    def _running(self) -> bool:
        return self._observer is not None

    def _states(self) -> list[_Root]:
        with self._lock:
            return list(self._roots.values())

    def _schedule(self, state: _Root) -> bool:
        """Watch one root (``_obs_lock`` held); False, logged, when it cannot be watched now.

        Whatever fails costs this root its watch, never the watcher: an OSError (folder
        missing, no access, watch limit) is retried at every check; anything else (e.g. a bug
        met on an odd tree) only every ``fallback_scan_s``. Meanwhile the root is scanned then."""
        assert self._observer is not None
        now = time.monotonic()
        if now < state.retry_at:
            return False
        try:
            st = os.stat(state.watch_path)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(f"not a folder: {state.watch_path}")
            watch = self._observer.schedule(_Handler(self, state.root), state.watch_path)
        except Exception as exc:
            missing = isinstance(exc, FileNotFoundError | NotADirectoryError)
            why = f"{exc.strerror or exc}" if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            if not state.warned:
                log.warning("cannot watch %s: %s; %s", state.root, why,
                            f"retrying every {self._check_interval:.0f} s" if isinstance(exc, OSError)
                            else f"it is scanned every {self._fallback_scan:.0f} s instead")
            if not isinstance(exc, OSError):
                state.retry_at = now + self._fallback_scan
            with self._lock:
                if not missing and not state.failure:
                    state.next_scan = now + self._fallback_scan
                state.watch, state.warned, state.failure = None, True, "" if missing else why
            return False
        with self._lock:
            state.watch, state.ident, state.warned = watch, (st.st_dev, st.st_ino), False
            state.failure, state.partial, state.retry_at = "", "", 0.0
            if self._observer.blind_spot:  # just watched, and scanned: the next scan is due in full
                state.next_scan = now + self._fallback_scan
        return True

    def _unschedule(self, state: _Root) -> None:
        """Drop a root's watch (``_obs_lock`` held); a watch already gone is fine."""
        watch, state.watch = state.watch, None
        if watch is None or self._observer is None:
            return
        try:
            self._observer.unschedule(watch)
        except (KeyError, OSError, RuntimeError) as exc:
            log.debug("unschedule %s: %s", state.root, exc)

    def _check_watches(self) -> None:
        """Re-watch roots whose watch ended or whose folder changed; restart a dead observer."""
        with self._obs_lock:
            observer = self._observer
            if observer is None:
                return
            with self._lock:
                states = list(self._roots.values())
                for s in states:
                    s.check = False
            if not observer.healthy():
                log.error("watcher: the file system observer died; restarting it and scanning every root")
                self._restart_observer(states)
                return
            alive = observer.live_watches()
            for state in states:
                if state.watch is not None:
                    if state.watch in alive and _ident(state.watch_path) == state.ident:
                        continue
                    log.warning("watch %s: the watch ended (folder deleted, moved, replaced or unmounted)",
                                state.root)
                    self._unschedule(state)
                    self._queue_scan(state.root, "watch-lost")
                if self._schedule(state):
                    self._queue_scan(state.root, "watch-restored")
                elif state.failure:
                    self._fallback(state)
            for state in states:
                if state.watch is not None and (state.partial or observer.blind_spot):
                    self._fallback(state)

    def _fallback(self, state: _Root) -> None:
        """A root not fully watched (its folder exists) is scanned every ``fallback_scan_s``; so is
        every root under an observer with a ``blind_spot``."""
        now = time.monotonic()
        if now >= state.next_scan:
            state.next_scan = now + self._fallback_scan
            self._queue_scan(state.root, "watch-fallback")

    def _restart_observer(self, states: list[_Root]) -> None:
        old = self._observer
        if old is not None:
            try:
                old.stop(timeout=OBSERVER_JOIN_S)
            except Exception:
                log.exception("watcher: cannot stop the dead observer")
        observer = self._factory()
        observer.start()
        self._observer = observer
        for state in states:
            state.watch = None
            self._schedule(state)
            self._queue_scan(state.root, "watch-error")


def _ident(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _collapse(batch: dict[str, str], dirs: set[str]) -> dict[str, str]:
    """Drop paths under a folder that is itself in the batch: the folder's job covers them."""
    if not dirs:
        return batch
    out: dict[str, str] = {}
    for path, reason in batch.items():
        parent = os.path.dirname(path)
        covered = False
        while parent and parent != os.path.dirname(parent):
            if parent in dirs:
                covered = True
                break
            parent = os.path.dirname(parent)
        if not covered:
            out[path] = reason
    return out
