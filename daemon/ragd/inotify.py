"""The one place ragd relies on watchdog's private inotify internals, behind a check at import.

watchdog has no public hook for two things ragd needs on Linux: hearing of a sub-folder that
could not be watched (watchdog skips it without a word), and watching trees deeper than the
recursion limit (its walks use ``os.walk``, which recurses on Python 3.11). ``InotifyTroubleObserver``
subclasses watchdog's inotify watch group and emitter for these. ``PROBLEM`` is "" when the
internals have the shape listed in ``_SHAPE``; otherwise ``ragd.watch`` falls back to watchdog's
public ``Observer`` and periodic scans, so a watchdog release can degrade watching, never break
it (docs/architecture.md, "Watching"; issue 27).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from watchdog.events import FileSystemEvent
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver

from ragd.walk import walk

log = logging.getLogger(__name__)

NOT_WATCHED = "ragd_not_watched"
"""``event_type`` of ``FolderNotWatchedEvent``."""


@dataclass(unsafe_hash=True)
class FolderNotWatchedEvent(FileSystemEvent):
    """Not a change: ``src_path``, a folder below a watch, could not be watched (the inotify
    watch limit, no access, a path too long), so its changes go unreported."""

    event_type = NOT_WATCHED
    is_directory = True


_SHAPE: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    # (what, under watchdog.*: the parameters its call takes first, in order; None: only that it exists)
    ("events.EventsLostEvent", None),  # overflows are reported publicly (7.1+), so no hook is needed for them
    ("observers.inotify.InotifyWatchGroup", ("_inotify_fd", "path", "event_mask", "is_recursive", "follow_symlink")),
    ("observers.inotify.InotifyWatchGroup.is_active", None),
    ("observers.inotify.InotifyWatchGroup._add_callback", ("self", "path")),
    ("observers.inotify.InotifyWatchGroup._add_all_callbacks", ("self", "path")),
    ("observers.inotify.InotifyWatchGroup._recursive_simulate", ("self", "src_path")),
    ("observers.inotify.InotifyWatchGroup._find_node_by_path", ("self", "path")),
    ("observers.inotify.DirNode", ("name", "wd")),
    ("observers.inotify.InotifyEmitter.on_thread_start", ("self",)),
    ("observers.inotify.InotifyEmitter.get_event_mask_from_filter", ("self",)),
    ("observers.inotify_c.InotifyFD", ()),
    ("observers.inotify_c.InotifyEvent", ("wd", "mask", "cookie", "name")),
    ("observers.inotify_c.InotifyConstants.IN_CREATE", None),
    ("observers.inotify_c.InotifyConstants.IN_ISDIR", None),
    ("observers.inotify_c.Mask", None),
)
_EMITTER_SETS = ("_inotify_fd", "_inotify")
"""Attributes ``InotifyEmitter.__init__`` sets that ragd's emitter reads or replaces."""


def _lookup(dotted: str) -> Any:
    """``watchdog.<dotted>``: a module, then attributes; AttributeError or ImportError when missing."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module("watchdog." + ".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"watchdog.{dotted}")


def _takes(obj: Any, names: tuple[str, ...]) -> bool:
    """Whether ``obj`` can be called with ``names`` first, in order, and nothing else required."""
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return False
    if [p.name for p in params[: len(names)]] != list(names):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params[len(names):])


def check_internals() -> str:
    """"" when watchdog's internals have the shape ``InotifyTroubleObserver`` relies on, else the
    first difference found."""
    if sys.platform != "linux":
        return "inotify is Linux only"
    try:
        where = f"watchdog {importlib.metadata.version('watchdog')}"
    except importlib.metadata.PackageNotFoundError:
        where = "watchdog"
    for dotted, params in _SHAPE:
        try:
            obj = _lookup(dotted)
        except Exception:  # missing, or its module fails to import
            return f"{where}: {dotted} is missing"
        if params is not None and not _takes(obj, params):
            return f"{where}: {dotted} does not take ({', '.join(params)})"
    try:
        emitter_init = _lookup("observers.inotify.InotifyEmitter.__init__")
        if "inotify_fd" not in inspect.signature(emitter_init).parameters:
            return f"{where}: InotifyEmitter takes no inotify_fd"
        if not set(_EMITTER_SETS) <= set(emitter_init.__code__.co_names):
            return f"{where}: InotifyEmitter does not set {' and '.join(_EMITTER_SETS)}"
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(BaseObserver.__init__).parameters.values()):
            return f"{where}: BaseObserver passes no arguments to its emitters"
        if getattr(_lookup("observers.inotify"), "_INVALID_WD", None) != -1:
            return f"{where}: a folder without a watch is no longer marked with wd -1"
    except Exception as exc:  # a shape too different to inspect
        return f"{where}: {type(exc).__name__}: {exc}"
    return ""


PROBLEM = check_internals()
""""" when ``InotifyTroubleObserver`` can be used; else why not (``ragd.watch`` then falls back)."""

if not PROBLEM:
    try:
        from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
        from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD, Mask

        _CREATE_DIR = Mask(InotifyConstants.IN_CREATE | InotifyConstants.IN_ISDIR)

        @dataclass
        class _WatchGroup(InotifyWatchGroup):
            """watchdog's watch group, reporting a folder it cannot watch and walking with ``ragd.walk``."""

            on_unwatched: Callable[[str], None] | None = None
            _reported: set[bytes] = field(default_factory=set, init=False)

            def _add_callback(self, path: bytes) -> None:
                """Watch one folder. One that cannot be watched is skipped and reported, so the rest
                of the root stays watched (watchdog 7.1.1 raises for it on the watch limit); the
                root's own failure still raises."""
                try:
                    super()._add_callback(path)
                except OSError:
                    if path == self.path:
                        raise
                node = self._find_node_by_path(path)
                if node is not None and node.wd >= 0:  # a node without a watch has wd -1
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
                """Log and report the first folder only: the root then falls back to scans, and a
                full watch limit may refuse thousands."""
                if path in self._reported:
                    return
                self._reported.add(path)
                if len(self._reported) == 1:
                    log.warning("cannot watch %s (inotify watch limit fs.inotify.max_user_watches, no access, or "
                                "a path too long); changes there are found by scans", os.fsdecode(path))
                    if self.on_unwatched is not None:
                        self.on_unwatched(os.fsdecode(path))

            def _add_all_callbacks(self, path: bytes) -> None:
                """Watch ``path`` and, when recursive, every folder below it, walking with ``ragd.walk``."""
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
                """Created events for what a new or moved-in folder already holds (its files may have
                come before its watch), found with ``ragd.walk``."""
                events: list[InotifyEvent] = []
                for folder, dirnames, filenames in walk(src_path, follow_symlinks=self.follow_symlink):
                    node = self._find_node_by_path(folder)
                    if node is None:  # not watched: its own IN_CREATE (or a scan) reports its content
                        continue
                    events.extend(InotifyEvent(node.wd, _CREATE_DIR, 0, name) for name in dirnames)
                    events.extend(InotifyEvent(node.wd, InotifyConstants.IN_CREATE, 0, name) for name in filenames)
                return events

        class _Emitter(InotifyEmitter):
            """watchdog's inotify emitter with ragd's watch group."""

            def on_thread_start(self) -> None:
                self._inotify = _WatchGroup(
                    self._inotify_fd,
                    os.fsencode(self.watch.path),
                    is_recursive=self.watch.is_recursive,
                    event_mask=self.get_event_mask_from_filter(),
                    follow_symlink=self.watch.follow_symlink,
                    on_unwatched=self._unwatched,
                )

            def _unwatched(self, folder: str) -> None:
                self.queue_event(FolderNotWatchedEvent(folder))

        class InotifyTroubleObserver(BaseObserver):
            """watchdog's inotify observer (one inotify instance, read by the ``inotify_fd`` thread)
            whose emitters report folders they cannot watch."""

            def __init__(self) -> None:
                self.inotify_fd = InotifyFD()
                self.inotify_fd.start()
                super().__init__(_Emitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self.inotify_fd)

            def on_thread_stop(self) -> None:
                super().on_thread_stop()
                self.inotify_fd.stop()
                self.inotify_fd.join()

    except Exception as exc:  # a shape the checks above did not foresee
        PROBLEM = f"watchdog's inotify observer cannot be extended: {type(exc).__name__}: {exc}"
