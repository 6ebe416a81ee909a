"""Damaged, stale and foreign snapshots: every cache snapshot (FAISS, the sparse and full-text
mirrors) that does not hold exactly what the catalog holds is detected and rebuilt from
SQLite, never served; the daemon is NOT_SERVING until it is consistent. Snapshots are written
only when a cache changed, the daemon defers them (a one-line edit does not rewrite them),
and the temp files of a save that was killed are removed at the next open."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_daemon
from test_daemon import _health, idle, wait_for

import ragd_client
from conftest import write_tree
from ragd.engine import Engine
from ragd.indexer import index_paths
from ragd.search import SearchOptions, search
from ragd.store.mapped import bases
from ragd.store.vectors import VectorIndex

pytestmark = pytest.mark.models("fake")

NOTES = {
    "alpha.md": "# Alpha\n\nThe alpha project studies glaciers in Iceland with ice cores.\n",
    "bread.txt": "Sourdough bread needs a starter made of flour and water.\n",
    "delta.rst": "Delta\n=====\n\nRiver deltas collect sediment where the water slows down.\n",
}
NEW_TEXT = "Kestrels hover over motorway verges while hunting voles."

daemon_factory = test_daemon.daemon_factory  # the fixture, shared


def held_ids(vectors: VectorIndex) -> set[int]:
    import faiss

    return set(faiss.vector_to_array(vectors._index.id_map).tolist())


def catalog_ids(engine: Engine) -> set[int]:
    rows = engine.catalog.db.execute(
        "SELECT c.id FROM chunks c JOIN embeddings e ON e.model = ? AND e.chunk_hash = c.content_hash",
        [engine.model_key]).fetchall()
    return {int(r[0]) for r in rows}


def dense_top(engine: Engine, query: str) -> str:
    return search(engine, query, SearchOptions(mode="dense", rerank=False, k=1)).hits[0].path


@pytest.fixture(params=["memory", "mapped"])
def indexed(request: pytest.FixtureRequest, tmp_path: Path,
            engine_factory: Callable[..., Engine]) -> Iterator[tuple[Engine, Path]]:
    """Three notes indexed, with the mirrors in memory or mapped (``store.mirrors``)."""
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    engine = engine_factory(store={"mirrors": request.param})
    index_paths(engine, [root])
    _ = engine.sparse, engine.lexical  # built and snapshot on first use
    engine.save_snapshots()
    yield engine, root


def test_an_older_snapshot_with_a_current_label_is_rebuilt(indexed: tuple[Engine, Path]) -> None:
    """Issue 25 #11: an older FAISS snapshot put back beside the current label (the sidecar of
    earlier versions) with the same number of vectors was served, so the edited file's new
    chunk never appeared in dense results. The label is inside the snapshot now, and its ids
    are checked against the catalog."""
    engine, root = indexed
    path = engine.snapshot_paths()["vectors"]
    old = path.read_bytes()
    count = engine.vectors.count
    (root / "bread.txt").write_text(NEW_TEXT + "\n", encoding="utf-8")  # one chunk for one: same count
    index_paths(engine, [root])
    assert engine.vectors.count == count
    path.write_bytes(old)  # the older snapshot, beside whatever label the current one has
    with Engine(engine.config, engine.models) as fresh:
        assert held_ids(fresh.vectors) == catalog_ids(fresh)
        assert dense_top(fresh, NEW_TEXT) == str(root / "bread.txt")


def test_a_snapshot_whose_ids_disagree_with_its_label_is_rebuilt(indexed: tuple[Engine, Path]) -> None:
    """A snapshot labelled with the current generation but holding other ids (an id set that
    lies, e.g. written by a bug or copied from another data folder) is not trusted either."""
    engine, root = indexed
    vectors = engine.vectors
    wrong = VectorIndex(vectors.dim)
    ids = vectors.ids()
    wrong.add(ids + 1000, np.random.default_rng(0).random((len(ids), vectors.dim), dtype=np.float32))
    wrong.save(engine.snapshot_paths()["vectors"], engine.catalog.generation(), engine.models.embedder.model_id)
    with Engine(engine.config, engine.models) as fresh:
        assert held_ids(fresh.vectors) == catalog_ids(fresh)
        assert dense_top(fresh, "Sourdough bread starter") == str(root / "bread.txt")


def _damage(path: Path, how: str, older: bytes) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zeroed":
        path.write_bytes(b"\0" * len(data))
    elif how == "deleted":
        path.unlink()
    elif how == "older":
        path.write_bytes(older)
    elif how == "flipped":  # one byte in the middle of the data (of the largest array of an npz)
        middle = len(data) // 2
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                big = max(zf.infolist(), key=lambda i: i.compress_size)
            with path.open("rb") as fh:  # the local header: 30 bytes, then name and extra field
                fh.seek(big.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", fh.read(4))
            middle = big.header_offset + 30 + name_len + extra_len + big.compress_size // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    else:
        raise AssertionError(how)


DAMAGES = ("truncated", "zeroed", "deleted", "older", "flipped")
CACHES = ("vectors", "sparse", "lexical")


def snapshot_files(engine: Engine) -> dict[str, Path]:
    """Every file a cache's snapshot is made of, by "<cache>" (the snapshot file) or
    "<cache> <file>" (the files of a mapped mirror's base folder)."""
    paths = {name: engine.snapshot_paths()[name] for name in CACHES}
    for name in ("sparse", "lexical"):
        folders = list(bases(paths[name]))
        assert len(folders) == (0 if engine.lexical.home is None else 1)  # the one the snapshot names
        for folder in folders:
            paths.update({f"{name} {p.name}": p for p in folder.iterdir()})
    return paths


def test_every_damaged_snapshot_is_detected_and_rebuilt(
    indexed: tuple[Engine, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Each cache's snapshot, and each mapped mirror's largest array and manifest, damaged
    each way (truncated, zeroed, deleted, an older one put back, one byte flipped): the next
    engine builds that cache from SQLite instead of serving it, and its searches answer as
    an engine built from scratch does."""
    engine, root = indexed
    older = {name: p.read_bytes() for name, p in snapshot_files(engine).items()}
    (root / "bread.txt").write_text(NEW_TEXT + "\n", encoding="utf-8")
    from ragd.store import postings
    with monkeypatch.context() as m:  # every change merged into a new base, so an older one differs
        m.setattr(postings, "COMPACT_MIN", 0)
        m.setattr(postings, "COMPACT_FRACTION", 0.0)
        index_paths(engine, [root])
    engine.save_snapshots()
    paths = snapshot_files(engine)
    assert set(paths) == set(older) and len(paths) == (3 if engine.lexical.home is None else 3 + 2 * 8)
    for name in ("sparse", "lexical"):  # of a base: its manifest, and its largest array that changed
        arrays = sorted((p for t, p in paths.items() if t.startswith(f"{name} ") and t.endswith(".npy")
                         and p.read_bytes() != older[t]), key=lambda p: p.stat().st_size)
        for target in [t for t in paths if t.startswith(f"{name} ") and t.endswith(".npy")]:
            if paths[target] != arrays[-1]:
                del paths[target]
    assert len(paths) == (3 if engine.lexical.home is None else 7)
    folder = engine.data_dir / "vectors"
    good = tmp_path / "good"
    shutil.copytree(folder, good)  # a rebuild's save removes base folders the snapshot no longer names
    queries = (NEW_TEXT, "glaciers in Iceland", "river deltas sediment")

    def answers(e: Engine) -> list[list[int]]:
        return [[h.chunk_id for h in search(e, q, SearchOptions(mode=mode, rerank=False)).hits]
                for q in queries for mode in ("dense", "sparse", "lexical")]

    expected = answers(engine)
    rebuilt: list[str] = []
    real_rebuild = VectorIndex.rebuild.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(VectorIndex, "rebuild", classmethod(
        lambda cls, *a: rebuilt.append("vectors") or real_rebuild(cls, *a)))
    from ragd.store.postings import LexicalIndex, SparseIndex
    for kind, name in ((SparseIndex, "sparse"), (LexicalIndex, "lexical")):
        real = kind.build.__func__  # type: ignore[attr-defined]
        monkeypatch.setattr(kind, "build", classmethod(
            lambda cls, rows, *a, real=real, name=name: rebuilt.append(name) or real(cls, rows, *a)))
    tried = 0
    for target, path in paths.items():
        for how in DAMAGES:
            shutil.rmtree(folder)  # every other snapshot intact and current
            shutil.copytree(good, folder)
            _damage(path, how, older[target])
            rebuilt.clear()
            with Engine(engine.config, engine.models) as fresh:
                _ = fresh.vectors, fresh.sparse, fresh.lexical
                assert rebuilt == [target.split()[0]], (target, how, rebuilt)
                assert answers(fresh) == expected, (target, how)
            tried += 1
    assert tried == len(paths) * len(DAMAGES)


def test_the_daemon_is_not_serving_until_its_caches_are_consistent(
    daemon_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, loaded_models: Any,
) -> None:
    """A damaged snapshot found at start: health says NOT_SERVING while the cache is rebuilt
    from SQLite, and the first answers after SERVING hold every chunk."""
    daemon, client, notes = daemon_factory()
    wait_for(lambda: idle(client), what="initial index")
    data_dir = daemon.config.data_dir
    daemon.stop(0)
    snapshot = next((data_dir / "vectors").glob("*.faiss"))
    snapshot.write_bytes(snapshot.read_bytes()[:100])  # truncated

    release = threading.Event()
    real_rebuild = VectorIndex.rebuild.__func__  # type: ignore[attr-defined]

    def slow_rebuild(cls: type[VectorIndex], *args: Any) -> VectorIndex:
        release.wait(30)
        return real_rebuild(cls, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(VectorIndex, "rebuild", classmethod(slow_rebuild))
    box: dict[str, Any] = {}
    starter = threading.Thread(target=lambda: box.setdefault("started", daemon_factory()))
    starter.start()
    try:
        sock = daemon.socket
        wait_for(sock.exists, what="the socket")
        probe = ragd_client.Client(address=f"unix://{sock}", timeout=10)
        wait_for(lambda: _health(probe) == "NOT_SERVING", what="NOT_SERVING while the cache is rebuilt")
        assert not probe.status().serving
    finally:
        release.set()
        starter.join(60)
    _daemon2, client2, _ = box["started"]
    assert client2.health() == "SERVING"
    engine = _daemon2.engine
    assert held_ids(engine.vectors) == catalog_ids(engine)
    hits = client2.search("Sourdough bread needs a starter", k=1, rerank=False, mode="dense").hits
    assert hits and hits[0].path == str(notes / "beta.txt")


def test_a_one_line_edit_does_not_rewrite_the_snapshots_in_the_daemon(indexed: tuple[Engine, Path]) -> None:
    """Issue 25 #12: every indexing run rewrote and fsynced every snapshot. Now an unchanged
    run writes none, and with the daemon's delay an edit is written once the delay has
    passed (or at stop), not by every run."""
    engine, root = indexed
    snapshots = sorted((engine.data_dir / "vectors").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in snapshots}
    index_paths(engine, [root])  # nothing changed
    assert {p: p.stat().st_mtime_ns for p in snapshots} == stamps
    engine.snapshot_delay_s = 3600.0
    with (root / "alpha.md").open("a", encoding="utf-8") as fh:
        fh.write("One more line about crevasses.\n")
    index_paths(engine, [root])
    assert {p: p.stat().st_mtime_ns for p in snapshots} == stamps
    assert engine.unsaved_snapshots()  # the caches hold the edit; only the snapshots wait
    assert engine.save_snapshots(force=True)
    assert not engine.unsaved_snapshots()
    with Engine(engine.config, engine.models) as fresh:
        _ = fresh.vectors, fresh.sparse, fresh.lexical
        assert fresh.unsaved_snapshots() == []  # all three loaded from their snapshots, current


def test_temp_files_of_a_killed_save_are_removed_at_open(indexed: tuple[Engine, Path]) -> None:
    """Issue 25 #12: a save killed between writing and renaming left ``*.tmp`` files that
    nobody removed. A temp file carries its writer's pid; at open, those whose writer is
    gone are removed, one whose writer still runs is left alone."""
    engine, _root = indexed
    folder = engine.data_dir / "vectors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [folder / f"lexical.npz.{dead.pid}.k2j4h5g6.tmp", folder / "old-version.faiss.x8d7s6a5.tmp"]
    alive = folder / f"lexical.npz.{1}.abcdefgh.tmp"  # pid 1 runs
    for p in (*stale, alive):
        p.write_bytes(b"half a snapshot")
    half_base = folder / f"lexical.{dead.pid}.q1w2e3r4.tmp"  # a mapped mirror's base being written
    half_base.mkdir()
    (half_base / "slot.npy").write_bytes(b"half an array")
    with Engine(engine.config, engine.models):
        pass
    assert not any(p.exists() for p in (*stale, half_base))
    assert alive.exists()


def test_a_real_kill_during_a_save_leaves_no_temp_file_after_restart(
    indexed: tuple[Engine, Path], tmp_path: Path,
) -> None:
    """The same with a real process killed (SIGKILL) while it writes a snapshot."""
    engine, _root = indexed
    folder = engine.data_dir / "vectors"
    script = tmp_path / "save_forever.py"
    script.write_text(
        "import sys, time\nfrom pathlib import Path\nfrom ragd.store.private import atomic_write\n"
        "def write(tmp):\n    Path(tmp).write_bytes(b'x')\n    print('writing', flush=True)\n    time.sleep(60)\n"
        "atomic_write(Path(sys.argv[1]), write)\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(folder / "lexical.npz")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        temps = list(folder.glob("*.tmp"))
        assert len(temps) == 1
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert temps[0].exists()
    with Engine(engine.config, engine.models) as fresh:
        _ = fresh.lexical
    assert not list(folder.glob("*.tmp"))
