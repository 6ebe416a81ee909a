"""A folder nested deeper than Python's recursion limit (1,200 levels) costs nothing: it is
walked, indexed and watched like any other, on its own and through the daemon, also after a
restart. A tree deeper than PATH_MAX loses only the folders beyond it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deeptree import deep_path, make_deep, remove_deep
from test_daemon import daemon_factory, idle, top_path, wait_for  # noqa: F401 (daemon_factory: a fixture)
from test_watch import Jobs, make_watcher, queue  # noqa: F401 (make_watcher, queue: fixtures)

from ragd.indexer import Indexer, Scope, _walk
from ragd.paths import PathFilter
from ragd.store.jobs import JobQueue
from ragd.watch import Watcher

pytestmark = pytest.mark.models("fake")

DEPTH = 1200
assert DEPTH > sys.getrecursionlimit()
DEEP_TEXT = "Abyssal anglerfish lure prey with a bioluminescent esca in the deep sea.\n"


@pytest.fixture
def deep_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "deep-root"
    (root / "top").mkdir(parents=True)
    (root / "top" / "shallow.md").write_text("# Shallow\n\nA note near the top of the tree.\n")
    top = make_deep(root, DEPTH, files={"bottom.md": DEEP_TEXT})
    yield root
    remove_deep(top)


def test_the_walk_reaches_the_bottom(deep_root: Path) -> None:
    scope = Scope(deep_root, 1, deep_root, PathFilter())
    found = {p.name for p, _ in _walk(scope)}
    assert found == {"shallow.md", "bottom.md"}


def test_the_indexer_indexes_the_bottom(deep_root: Path, engine_factory: Callable[..., Any]) -> None:
    engine = engine_factory()
    report = Indexer(engine).run([deep_root])
    assert report.files_indexed == 2 and not report.failures and not report.suspended
    assert engine.catalog.file_row(str(deep_path(deep_root / "d", DEPTH) / "bottom.md")) is not None


@pytest.mark.skipif(sys.platform != "linux", reason="inotify observer")
def test_the_watcher_watches_the_bottom(deep_root: Path, queue: Any,  # noqa: F811
                                        make_watcher: Callable[..., Watcher]) -> None:  # noqa: F811
    jobs = Jobs(queue, deep_root)
    w = make_watcher()
    w.watch(deep_root, PathFilter())
    w.start()
    assert w.lost() == [] and w.trouble() == {}
    bottom = deep_path(deep_root / "d", DEPTH)
    (bottom / "new.md").write_text("fresh")
    jobs.wait_for(os.path.relpath(bottom / "new.md", deep_root), timeout=10)
    (deep_root / "top" / "other.md").write_text("x")  # and the rest of the root as well
    jobs.wait_for("top/other.md")


def test_the_daemon_adds_serves_and_restarts_with_it(deep_root: Path, tmp_path: Path,
                                                     daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    daemon, client, _ = daemon_factory()
    wait_for(lambda: idle(client), what="first index")
    client.add_root(str(deep_root))  # failed with "maximum recursion depth exceeded"
    bottom = str(deep_path(deep_root / "d", DEPTH) / "bottom.md")
    wait_for(lambda: top_path(client, DEEP_TEXT) == bottom, timeout=60, what="the deepest file found")
    assert daemon.watcher.trouble() == {}
    daemon.stop(0)
    daemon, client, _ = daemon_factory()  # every later start failed
    assert client.health() == "SERVING"
    assert str(deep_root) in {r.path for r in client.roots()}
    assert daemon.watcher.trouble() == {}
    wait_for(lambda: idle(client), what="index after restart")
    assert top_path(client, DEEP_TEXT) == bottom


def test_beyond_path_max_only_the_unreachable_folders_are_lost(tmp_path: Path,
                                                               engine_factory: Callable[..., Any]) -> None:
    root = tmp_path / "long"
    root.mkdir()
    (root / "near.md").write_text("A note that is easy to reach.\n")
    top = make_deep(root, 900, name="level", files={"far.md": "Unreachable by path.\n"})  # ~5,400 characters
    try:
        engine = engine_factory()
        report = Indexer(engine).run([root])
        assert report.files_indexed == 1 and not report.suspended
        assert engine.catalog.file_row(str(root / "near.md")) is not None
        if sys.platform == "linux":
            w = Watcher(JobQueue(tmp_path / "queue" / "catalog.db"))
            w.watch(root, PathFilter())
            w.start()
            try:
                assert w.lost() == []
                wait_for(lambda: root in w.trouble(), timeout=10, what="the unwatched folders reported")
                assert "some folders not watched" in w.trouble()[root]
            finally:
                w.stop()
    finally:
        remove_deep(top)


def test_walk_yields_what_os_walk_does(tmp_path: Path) -> None:
    from ragd.walk import walk

    root = tmp_path / "tree"
    for rel in ("a/b/c", "a/d", "e"):
        (root / rel).mkdir(parents=True)
    for rel in ("x.md", "a/y.md", "a/b/c/z.md", "e/w.md"):
        (root / rel).write_text(rel)
    (root / "a" / "link-dir").symlink_to(root / "e")
    (root / "a" / "link-file").symlink_to(root / "x.md")
    (root / "a" / "dangling").symlink_to(root / "nowhere")

    def listing(walker: Any) -> list[tuple[str, list[str], list[str]]]:
        return [(str(d), sorted(ds), sorted(fs)) for d, ds, fs in walker]

    assert listing(walk(str(root))) == listing(os.walk(str(root)))
    assert listing(walk(os.fsencode(root))) == listing(os.walk(os.fsencode(root)))
    pruned = []
    for folder, dirnames, _ in walk(str(root)):
        pruned.append(folder)
        dirnames[:] = [d for d in dirnames if d != "b"]
    assert str(root / "a" / "b") not in pruned and str(root / "a" / "d") in pruned
    errors: list[OSError] = []
    assert list(walk(str(root / "missing"), errors.append)) == [] and isinstance(errors[0], FileNotFoundError)
