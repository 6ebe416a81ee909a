"""Watching roots: watchdog observers -> debounced batches -> the durable ``JobQueue``.

Events are collected per root; a root's batch is written when no event came for
``debounce_s`` (and at least every ``max_delay_s`` under a constant stream). Created, modified
and deleted paths and both ends of a move become path jobs (the writer indexes what exists
and removes what does not, so an editor's atomic save is one job for the target); a changed
folder (created, deleted, moved) becomes one job for the folder, which covers the files under
it; a batch larger than ``max_batch_paths`` becomes one scan of the root.

Where events may have been lost, the root gets a scan job instead: the kernel's inotify queue
overflowed (watchdog 7 handles ``IN_Q_OVERFLOW`` silently, so ragd's inotify emitter hooks its
``on_queue_overflow``), a folder could not be watched (e.g. the inotify watch limit), the root's
watch ended (its folder was deleted, moved, replaced or unmounted), or an emitter or the
observer thread died. A check every ``check_interval_s`` notices the last three and watches the
root again once its folder is back.

Symlinks are never followed (watchdog's default: ``IN_DONT_FOLLOW``, symlinked folders are not
watched), so loops are harmless; a root that is itself a symlink is watched at its target.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver, ObservedWatch

from ragd.paths import PathFilter
from ragd.store.jobs import JobQueue
from ragd.walk import walk

log = logging.getLogger(__name__)

TROUBLE = "ragd_trouble"
"""``event_type`` of ``WatchTroubleEvent``."""

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


if sys.platform == "linux":
    from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD, Mask, WatchDescriptor

    _CREATE_DIR = Mask(InotifyConstants.IN_CREATE | InotifyConstants.IN_ISDIR)

    @dataclass
    class _WatchGroup(InotifyWatchGroup):
        """watchdog's inotify watch group, reporting what it otherwise handles silently."""

        on_trouble: Callable[[str, str], None] | None = None
        _reported: set[bytes] = field(default_factory=set, init=False)

        def _trouble(self, reason: str, detail: bytes = b"") -> None:
            if self.on_trouble is not None:
                self.on_trouble(reason, os.fsdecode(detail))

        def on_queue_overflow(self) -> None:
            """The kernel dropped events (IN_Q_OVERFLOW): watchdog rebuilds the watches; ragd rescans."""
            super().on_queue_overflow()
            if self.is_active:
                self._trouble("overflow")

        def on_watch_deleted(self, wd: WatchDescriptor) -> None:
            """The kernel ended a watch (IN_IGNORED): the root's means its folder is gone or unmounted."""
            root_lost = self.is_active and self._active_callbacks_by_watch.get(wd) == self.path
            super().on_watch_deleted(wd)
            if root_lost:
                self._trouble("watch-lost", self.path)

        def _add_callback(self, path: bytes) -> None:
            """A sub-folder that cannot be watched is reported and skipped, so the rest of the
            root stays watched. watchdog skips it without a word, except that since 7.1.1 it
            raises when the watch limit runs out while a root is first watched, which would
            leave the whole root unwatched. Only the first such folder is logged and reported (the
            root then falls back to scans): a full watch limit may refuse thousands."""
            try:
                super()._add_callback(path)
            except OSError:
                if path == self.path:
                    raise
            node = self._find_node_by_path(path)
            if node is not None and node.wd >= 0:  # watchdog marks a node without a watch with wd -1
                return
            try:
                unwatched = stat.S_ISDIR(os.lstat(path).st_mode)
            except FileNotFoundError:
                unwatched = False  # gone meanwhile: nothing to watch
            except OSError:
                unwatched = True  # e.g. a path longer than PATH_MAX
            if unwatched:
                self._unwatched(path)

        def _unwatched(self, path: bytes) -> None:
            if path in self._reported:
                return
            self._reported.add(path)
            if len(self._reported) == 1:
                log.warning("cannot watch %s (inotify watch limit fs.inotify.max_user_watches, no access, or "
                            "a path too long); changes there are found by scans", os.fsdecode(path))
                self._trouble("watch-error", path)

        def _add_all_callbacks(self, path: bytes) -> None:
            """Watch ``path`` and, when recursive, every folder below it, walking with ragd's
            iterative ``walk``: watchdog's ``os.walk`` recurses per level and fails with
            RecursionError on a folder nested deeper than about 1,000 levels."""
            self._add_callback(path)
            if not (self.is_recursive and os.path.isdir(path)):
                return

            def unlisted(exc: OSError) -> None:
                if not isinstance(exc, FileNotFoundError | NotADirectoryError) and exc.filename is not None:
                    self._unwatched(os.fsencode(exc.filename))

            for folder, dirnames, _ in walk(path, unlisted, follow_symlinks=self.follow_symlink):
                for name in dirnames:
                    full = os.path.join(folder, name)
                    if self.follow_symlink or not os.path.islink(full):
                        self._add_callback(full)

        def _recursive_simulate(self, src_path: bytes) -> list[InotifyEvent]:
            """Created events for what a new or moved-in folder already holds (its files may
            have come before its watch), found with the iterative ``walk`` (see above)."""
            events: list[InotifyEvent] = []
            for folder, dirnames, filenames in walk(src_path, follow_symlinks=self.follow_symlink):
                node = self._find_node_by_path(folder)
                if node is None:  # not watched: its own IN_CREATE (or a scan) reports its content
                    continue
                events.extend(InotifyEvent(node.wd, _CREATE_DIR, 0, name) for name in dirnames)
                events.extend(InotifyEvent(node.wd, InotifyConstants.IN_CREATE, 0, name) for name in filenames)
            return events

    class _Emitter(InotifyEmitter):
        """watchdog's inotify emitter with ragd's watch group; trouble becomes a ``WatchTroubleEvent``."""

        def on_thread_start(self) -> None:
            self._inotify = _WatchGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
                on_trouble=self._trouble,
            )

        def _trouble(self, reason: str, detail: str) -> None:
            self.queue_event(WatchTroubleEvent(self.watch.path, reason=reason, detail=detail))

    class InotifyTroubleObserver(BaseObserver):
        """An inotify observer (one inotify instance) whose emitters report overflows and lost watches."""

        def __init__(self) -> None:
            self.inotify_fd = InotifyFD()
            self.inotify_fd.start()
            super().__init__(_Emitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self.inotify_fd)

        def healthy(self) -> bool:
            """False once the thread reading the inotify descriptor has died."""
            return self.inotify_fd.is_alive()

        def on_thread_stop(self) -> None:
            super().on_thread_stop()
            self.inotify_fd.stop()
            self.inotify_fd.join()


def default_observer() -> BaseObserver:
    """inotify with trouble reports on Linux; watchdog's platform observer elsewhere."""
    if sys.platform == "linux":
        return InotifyTroubleObserver()
    from watchdog.observers import Observer

    return Observer()


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
    next_scan: float = 0.0  # the next fallback scan while the root is not fully watched


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher, root: Path) -> None:
        super().__init__()
        self._watcher = watcher
        self._root = root

    def dispatch(self, event: FileSystemEvent) -> None:
        self._watcher._dispatch(self._root, event)


class Watcher:
    """watchdog observers over roots -> debounced batches -> JobQueue."""

    def __init__(
        self,
        queue: JobQueue,
        debounce_s: float = 0.5,
        observer_factory: Callable[[], BaseObserver] | None = None,
        on_change: Callable[[], None] | None = None,
        *,
        max_batch_paths: int = 1000,
        max_delay_s: float = 2.0,
        check_interval_s: float = 1.0,
        fallback_scan_s: float = 300.0,
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
        self._observer: BaseObserver | None = None
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
        if not self._running():
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
            if observer.is_alive():
                observer.join()
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
        if isinstance(event, WatchTroubleEvent):
            log.warning("watch %s: %s%s; the root will be scanned", root, event.reason,
                        f" ({event.detail})" if event.detail else "")
            if event.reason == "watch-lost":
                self._request_check(root)
            elif event.reason == "watch-error" and event.detail:
                with self._lock:
                    state = self._roots.get(root)
                    if state is not None and state.watch is not None and not state.partial:
                        state.partial = event.detail
                        state.next_scan = time.monotonic() + self._fallback_scan
            self._owe_scan(root, event.reason)
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
                    self._cond.wait(max(0.005, min(deadlines) - now))
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
            watch = self._observer.schedule(_Handler(self, state.root), state.watch_path, recursive=True)
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
            healthy = getattr(observer, "healthy", None)
            if not observer.is_alive() or (callable(healthy) and not healthy()):
                log.error("watcher: the file system observer died; restarting it and scanning every root")
                self._restart_observer(states)
                return
            alive = {e.watch for e in list(observer.emitters) if e.is_alive()}
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
                if state.watch is not None and state.partial:
                    self._fallback(state)

    def _fallback(self, state: _Root) -> None:
        """A root not fully watched (its folder exists) is scanned every ``fallback_scan_s``."""
        now = time.monotonic()
        if now >= state.next_scan:
            state.next_scan = now + self._fallback_scan
            self._queue_scan(state.root, "watch-fallback")

    def _restart_observer(self, states: list[_Root]) -> None:
        old = self._observer
        if old is not None:
            try:
                old.stop()
                if old.is_alive():
                    old.join(timeout=5)
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
