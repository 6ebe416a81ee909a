"""Roots that go away: deleted, replaced by an empty folder, unmounted (a bind mount where the
test may mount), then back. A gone root stays a root (listed, removable), is suspended (its
files kept, none served, nothing scanned), survives a restart so, and is scanned again when it
is back, with nothing embedded again that did not change."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon import daemon_factory, idle, wait_for  # noqa: F401 (daemon_factory: a fixture)

from conftest import write_tree

pytestmark = pytest.mark.models("fake")

NOTES = {f"note{i:02d}.md": f"# Note {i}\n\nThe harbour crane number {i} lifts containers of {word}.\n"
         for i, word in enumerate(["copper", "timber", "coffee", "grain", "cotton", "steel", "salt", "tea"])}
QUERY = "harbour crane lifts containers of timber"


def hits_under(client: Any, root: Path, query: str = QUERY) -> list[str]:
    return [h.path for h in client.search(query, k=20, rerank=False).hits if h.path.startswith(str(root) + "/")]


def root_status(client: Any, root: Path) -> Any:
    (status,) = [r for r in client.status().roots if r.path == str(root)]
    return status


def ids(daemon: Any, table: str) -> set[int]:
    return {int(r[0]) for r in daemon.reader().catalog.db.execute(f"SELECT id FROM {table}")}


def test_a_deleted_root_is_suspended_listed_removable_and_rescanned_when_back(
        tmp_path: Path, daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    daemon, client, _ = daemon_factory()
    wait_for(lambda: idle(client), what="first index")
    extra = tmp_path / "extra"
    write_tree(extra, NOTES)
    client.add_root(str(extra))
    wait_for(lambda: hits_under(client, extra), what="the added root searchable")

    shutil.rmtree(extra)
    # no hit for a deleted file; the root stays a root, suspended
    wait_for(lambda: str(extra) in daemon.suspended_roots() and not hits_under(client, extra),
             what="the deleted root suspended and not served")
    assert "missing" in daemon.suspended_roots()[str(extra)]
    assert "missing" in (root_status(client, extra).suspended or "")  # and Status says so
    assert str(extra) in {r.path for r in client.roots()}

    daemon.stop(0)
    daemon, client, _ = daemon_factory()  # the root disappeared from `roots ls`, its hits stayed
    assert str(extra) in {r.path for r in client.roots()}
    assert str(extra) in daemon.suspended_roots()
    assert not hits_under(client, extra)

    write_tree(extra, NOTES)  # recreated: scanned again
    wait_for(lambda: hits_under(client, extra), what="the recreated root searchable again")
    assert daemon.suspended_roots() == {} and root_status(client, extra).suspended is None

    shutil.rmtree(extra)
    wait_for(lambda: str(extra) in daemon.suspended_roots(), what="suspended again")
    client.remove_root(str(extra))  # "not a root" before
    assert str(extra) not in {r.path for r in client.roots()}
    assert daemon.suspended_roots() == {}
    assert not daemon.reader().catalog.files_under(str(extra))


def test_a_root_is_reported_suspended_only_once_searches_leave_it_out(
        tmp_path: Path, daemon_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from ragd.store.catalog import Catalog

    daemon, client, _ = daemon_factory()
    extra = tmp_path / "extra"
    write_tree(extra, NOTES)
    client.add_root(str(extra))
    wait_for(lambda: idle(client) and hits_under(client, extra), what="the added root searchable")
    reported_before_written: list[bool] = []
    real = Catalog.suspend_root

    def slow(self: Catalog, path: str, reason: str) -> bool:
        time.sleep(0.5)  # as a write waiting on a locked database
        reported_before_written.append(path in daemon.suspended_roots())
        return real(self, path, reason)

    monkeypatch.setattr(Catalog, "suspend_root", slow)
    shutil.rmtree(extra)
    wait_for(lambda: str(extra) in daemon.suspended_roots(), what="the deleted root suspended")
    assert not hits_under(client, extra)  # reported suspended: already left out of searches
    assert reported_before_written and not any(reported_before_written)


def _can_bind_mount(tmp_path: Path) -> bool:
    src, dst = tmp_path / "probe-src", tmp_path / "probe-dst"
    src.mkdir()
    dst.mkdir()
    ok = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True).returncode == 0 \
        if shutil.which("mount") and os.geteuid() == 0 else False
    if ok:
        subprocess.run(["umount", str(dst)], check=True)
    return ok


class Drive:
    """A root that can be taken away and given back: a bind mount, or (without the right to
    mount) the folder swapped for an empty one, as an unmounted mount point looks."""

    def __init__(self, tmp_path: Path, how: str) -> None:
        self.how = how
        self.source = tmp_path / "drive"
        self.root = tmp_path / "mnt"
        write_tree(self.source, NOTES)
        self.root.mkdir()
        self.mounted = False
        self.mount()

    def mount(self) -> None:
        if self.how == "bind":
            subprocess.run(["mount", "--bind", str(self.source), str(self.root)], check=True)
        else:
            self.root.rmdir()
            os.rename(self.source, self.root)
        self.mounted = True

    def unmount(self) -> None:
        if self.how == "bind":
            subprocess.run(["umount", str(self.root)], check=True)
        else:
            os.rename(self.root, self.source)
            self.root.mkdir()
        self.mounted = False


@pytest.fixture(params=["bind", "swap"])
def drive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Drive]:
    if request.param == "bind" and not _can_bind_mount(tmp_path):
        pytest.skip("mount --bind needs root (the swap case covers the same path)")
    d = Drive(tmp_path, request.param)
    yield d
    if d.mounted and d.how == "bind":
        subprocess.run(["umount", str(d.root)], check=False)


def test_an_unmounted_root_is_suspended_not_emptied_and_resumes_without_embedding(
        drive: Drive, daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    daemon, client, _ = daemon_factory()
    client.add_root(str(drive.root))
    wait_for(lambda: idle(client) and hits_under(client, drive.root), what="first index")
    files, embeddings, chunks = ids(daemon, "files"), ids(daemon, "embeddings"), ids(daemon, "chunks")
    assert len(daemon.reader().catalog.files_under(str(drive.root))) == len(NOTES)

    drive.unmount()
    wait_for(lambda: str(drive.root) in daemon.suspended_roots(), what="the unmounted root suspended")
    assert "empty" in daemon.suspended_roots()[str(drive.root)]
    assert "empty" in (root_status(client, drive.root).suspended or "")
    assert not hits_under(client, drive.root)
    daemon.queue.put_scan(str(drive.root), "test")  # a reconcile scan while it is away empties nothing
    daemon.wake.set()
    wait_for(lambda: idle(client), what="the scan done")
    assert ids(daemon, "files") == files and ids(daemon, "embeddings") == embeddings

    daemon.stop(0)  # a restart while it is away: still suspended, still nothing lost
    daemon, client, _ = daemon_factory()
    wait_for(lambda: idle(client), what="idle after restart")
    assert str(drive.root) in daemon.suspended_roots() and not hits_under(client, drive.root)
    assert ids(daemon, "files") == files

    drive.mount()
    wait_for(lambda: not daemon.suspended_roots() and hits_under(client, drive.root), what="resumed")
    wait_for(lambda: idle(client), what="idle after remount")
    assert ids(daemon, "files") == files
    assert ids(daemon, "embeddings") == embeddings  # nothing embedded again
    assert ids(daemon, "chunks") == chunks


def test_ragd_index_keeps_a_gone_root_and_search_leaves_it_out(tmp_path: Path,
                                                              engine_factory: Callable[..., Any]) -> None:
    from ragd.indexer import Indexer
    from ragd.search import SearchOptions, search

    root, away = tmp_path / "drive", tmp_path / "away"
    write_tree(root, NOTES)
    engine = engine_factory()
    first = Indexer(engine).run([root])
    assert first.files_indexed == len(NOTES)

    def found() -> list[str]:
        return [h.path for h in search(engine, QUERY, SearchOptions(k=20, rerank=False)).hits]

    assert found()
    os.rename(root, away)
    gone = Indexer(engine).run()  # every registered root: this one is missing
    assert "missing" in gone.suspended[str(root)] and gone.files_removed == 0
    assert len(engine.catalog.files_under(str(root))) == len(NOTES)
    assert found() == []  # kept, not served (also by a one-shot `ragd search`)
    root.mkdir()  # an empty mount point
    assert "empty" in Indexer(engine).run().suspended[str(root)]
    root.rmdir()
    os.rename(away, root)
    back = Indexer(engine).run()
    assert not back.suspended and back.chunks_embedded == 0 and back.files_indexed == 0
    assert back.files_unchanged == len(NOTES) and found()
    assert engine.catalog.suspended_roots() == {}


def test_root_problem_names_each_way_a_root_can_be_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragd.indexer import root_problem

    root = tmp_path / "root"
    assert "missing" in (root_problem(root, lambda: 3) or "")
    root.write_text("a file now")
    assert "not a folder" in (root_problem(root, lambda: 3) or "")
    root.unlink()
    root.mkdir()
    assert root_problem(root, lambda: 0) is None  # empty and nothing indexed: a new root
    assert "empty while 3" in (root_problem(root, lambda: 3) or "")
    (root / "a.md").write_text("x")
    assert root_problem(root, lambda: 3) is None
    real = os.scandir

    def refused(path: Any) -> Any:
        if os.fspath(path) == str(root):
            raise PermissionError(13, "Permission denied", str(root))
        return real(path)

    monkeypatch.setattr(os, "scandir", refused)  # chmod 000 does not stop root, which runs these tests
    assert "cannot be listed: Permission denied" in (root_problem(root, lambda: 3) or "")


def test_a_folder_that_cannot_be_listed_keeps_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        engine_factory: Callable[..., Any]) -> None:
    from ragd.indexer import Indexer

    root = tmp_path / "root"
    write_tree(root, {"top.md": "On top.\n", "share/a.md": "Alpha on the share.\n", "share/deep/b.md": "Beta.\n"})
    engine = engine_factory()
    assert Indexer(engine).run([root]).files_indexed == 3
    real = os.scandir

    def failing(path: Any) -> Any:
        if os.fspath(path) == str(root / "share"):
            raise OSError(5, "Input/output error", str(root / "share"))  # a share that stopped answering
        return real(path)

    monkeypatch.setattr(os, "scandir", failing)
    report = Indexer(engine).run([root])
    assert report.files_removed == 0 and set(engine.catalog.files_under(str(root / "share"))) == {
        str(root / "share" / "a.md"), str(root / "share" / "deep" / "b.md")}
    monkeypatch.setattr(os, "scandir", real)
    (root / "share" / "a.md").unlink()  # readable again: what is really gone goes
    report = Indexer(engine).run([root])
    assert report.files_removed == 1 and str(root / "share" / "a.md") not in engine.catalog.files_under(str(root))
