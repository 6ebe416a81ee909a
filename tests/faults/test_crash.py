"""``kill -9`` of a real ``ragd serve`` at seeded random moments (loading, scanning,
embedding, committing, saving snapshots, idle) while its tree changes, restarting it each
time. After every kill the catalog passes SQLite's integrity and foreign-key checks; every
few kills, and at the end, the daemon is let settle and must hold exactly the tree: every
file current, none pending, no hit for a deleted file or an overwritten version, FAISS
(or the Milvus collection) holding exactly the catalog's chunks; and the final index equals one built from scratch on
the same tree (same chunks, same vectors, same search results).

``RAGD_FAULT_KILLS`` sets the number of kills (50 by default, ~2-3 minutes on 2 cores;
e.g. ``RAGD_FAULT_KILLS=500``), ``RAGD_FAULT_SEED`` the seed (printed when the test fails).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemons import Serve, write_config

from ragd.config import parse_config
from ragd.engine import Engine
from ragd.indexer import index_paths
from ragd.search import SearchOptions, search

pytestmark = pytest.mark.models("fake")

KILLS = int(os.environ.get("RAGD_FAULT_KILLS", "50"))
SEED = int(os.environ.get("RAGD_FAULT_SEED", "20251206"))
SETTLE_EVERY = 10  # kills between two full checks on a settled daemon
WORDS = ("glacier river delta bread starter flour heron otter kestrel vole comet orbit basalt lichen moss "
         "harbour ferry lantern copper saffron pepper walnut maple cedar quartz granite tide dune").split()


@dataclass
class Tree:
    """The files the test writes, with the marker word of each file's current version."""

    root: Path
    rng: random.Random
    markers: dict[str, str] = field(default_factory=dict)  # relative path -> its current marker
    dead: set[str] = field(default_factory=set)  # markers of deleted or overwritten versions
    serial: int = 0

    def _text(self, rel: str) -> str:
        self.serial += 1
        marker = f"zq{self.serial:05d}x{self.rng.randrange(16 ** 4):04x}"
        old = self.markers.get(rel)
        if old is not None:
            self.dead.add(old)
        self.markers[rel] = marker
        paras = [" ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(8, 40))) + "."
                 for _ in range(self.rng.randint(1, 6))]
        return f"# Note {rel}\n\n{marker} {paras[0]}\n\n" + "\n\n".join(paras[1:]) + "\n"

    def write(self, rel: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._text(rel), encoding="utf-8")

    def delete(self, rel: str) -> None:
        (self.root / rel).unlink()
        self.dead.add(self.markers.pop(rel))

    def rename(self, rel: str, new: str) -> None:
        (self.root / new).parent.mkdir(parents=True, exist_ok=True)
        (self.root / rel).rename(self.root / new)
        self.markers[new] = self.markers.pop(rel)

    def mutate(self, changes: int) -> list[str]:
        """``changes`` random changes: creates, edits, deletes, renames."""
        done = []
        for _ in range(changes):
            names = sorted(self.markers)
            op = self.rng.choice(("create", "create", "edit", "edit", "delete", "rename"))
            if op == "create" or len(names) < 5:
                rel = f"d{self.rng.randrange(4)}/n{self.serial + 1:05d}.md"
                self.write(rel)
            elif op == "edit":
                rel = self.rng.choice(names)
                self.write(rel)
            elif op == "delete":
                rel = self.rng.choice(names)
                self.delete(rel)
            else:
                rel = self.rng.choice(names)
                new = f"d{self.rng.randrange(4)}/r{self.serial + 1:05d}.md"
                self.serial += 1
                self.rename(rel, new)
            done.append(f"{op} {rel}")
        return done


def db_checks(db: Path) -> None:
    if not db.exists():  # killed before it made one
        return
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def catalog_files(db: Path) -> dict[str, tuple[int, int, str]]:
    conn = sqlite3.connect(db)
    try:
        return {str(r[0]): (int(r[1]), int(r[2]), str(r[3]))
                for r in conn.execute("SELECT path, size, mtime_ns, status FROM files")}
    finally:
        conn.close()


def settled_checks(serve: Serve, tree: Tree) -> None:
    """The daemon has settled: it holds exactly the tree, and serves nothing else."""
    st = serve.wait_idle(timeout=180)
    db = serve.folder / "data" / "catalog.db"
    db_checks(db)
    on_disk = {str(tree.root / rel): ((tree.root / rel).stat().st_size, (tree.root / rel).stat().st_mtime_ns)
               for rel in tree.markers}
    held = catalog_files(db)
    stat_held = {p: v[:2] for p, v in held.items()}
    stale = [(p, stat_held[p], on_disk[p]) for p in sorted(set(held) & set(on_disk)) if stat_held[p] != on_disk[p]]
    assert stat_held == on_disk, (  # every file current, nothing of a deleted one
        f"missing {sorted(set(on_disk) - set(held))}, extra {sorted(set(held) - set(on_disk))}, stale {stale}")
    assert all(v[2] == "indexed" for v in held.values())
    assert st.files_pending == 0 and st.files_indexed == len(tree.markers)
    with serve.client() as client:
        for rel, marker in tree.markers.items():
            hits = client.search(marker, k=3, rerank=False, mode="lexical").hits
            assert hits and hits[0].path == str(tree.root / rel), (rel, marker, [h.path for h in hits])
        for marker in sorted(tree.dead):
            hits = client.search(marker, k=3, rerank=False, mode="lexical").hits
            assert not hits, (marker, [(h.path, h.snippet[:60]) for h in hits])
        live = set(on_disk)
        for word in WORDS[:6]:
            for mode in ("dense", "hybrid"):
                paths = {h.path for h in client.search(word, k=20, rerank=False, mode=mode).hits}
                assert paths <= live, (word, mode, paths - live)


def _phase(serve: Serve) -> str:
    """What the daemon was doing just before the kill (for the figures)."""
    if "serving on" not in serve.stderr():
        return "loading"
    try:
        with serve.client(2.0) as client:
            st = client.status()
    except Exception:
        return "loading"
    return "indexing" if st.files_pending or st.current_file else "idle"


def store_section(folder: Path, backend: str) -> dict[str, str]:
    """The ``[store]`` keys of the daemon under ``folder`` (Milvus Lite beside its data)."""
    return {} if backend == "faiss" else {"backend": backend, "uri": str(folder / "milvus" / "ragd.db")}


def engine_for(folder: Path, loaded_models: Any, backend: str = "faiss") -> Engine:
    cfg = parse_config({"data_dir": str(folder / "data"), "models": {"reranker": "none", "fallback": "none"},
                        "store": store_section(folder, backend)}, source=folder / "check.toml")
    return Engine(cfg, models=loaded_models, rerank=False)


def index_contents(engine: Engine) -> tuple[list[tuple[Any, ...]], dict[str, bytes]]:
    rows = sorted(engine.catalog.db.execute(
        "SELECT f.path, c.ordinal, c.text, c.start_line, c.end_line, c.content_hash FROM chunks c "
        "JOIN files f ON f.id = c.file_id").fetchall())
    vectors = {str(r[0]): bytes(r[1]) for r in engine.catalog.db.execute(
        "SELECT chunk_hash, dense FROM embeddings WHERE model = ?", [engine.model_key])}
    return rows, vectors


def answers(engine: Engine, queries: list[str]) -> list[dict[tuple[str, int], float]]:
    return [{(h.path, h.start_line): h.score for h in search(engine, q, SearchOptions(mode=mode, rerank=False,
                                                                                      k=10)).hits}
            for q in queries for mode in ("dense", "sparse", "lexical", "hybrid")]


def same_answers(got: list[dict[tuple[str, int], float]], want: list[dict[tuple[str, int], float]],
                 tol: float = 1e-4) -> None:
    """The same hits with the same scores; the vectors were computed in other batches, so a hit
    may trade places with one whose score is within ``tol`` at the cut (a tie, not a change)."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        cut = min(w.values(), default=0.0)
        for hit in g.keys() & w.keys():
            assert abs(g[hit] - w[hit]) <= tol, (i, hit, g[hit], w[hit])
        for hit in g.keys() ^ w.keys():
            score = g.get(hit, w.get(hit, 0.0))
            assert abs(score - cut) <= tol, (i, hit, score, cut)


@pytest.fixture
def crash_site(tmp_path: Path, model_folders: dict[str, Path], store_backend: str) -> Iterator[tuple[Serve, Tree]]:
    root = tmp_path / "tree"
    tree = Tree(root, random.Random(SEED))
    for i in range(24):
        tree.write(f"d{i % 4}/n{i:05d}.md")
    store = "".join(f'{k} = "{v}"\n' for k, v in store_section(tmp_path, store_backend).items())
    serve = Serve(write_config(tmp_path, model_folders, [root], watch=True,
                               extra=f"[store]\n{store}" if store else ""), tmp_path)
    yield serve, tree
    serve.close()


@pytest.mark.stores("faiss", "milvus")
def test_kill_9_at_random_moments_loses_nothing(
    crash_site: tuple[Serve, Tree], loaded_models: Any, tmp_path: Path, store_backend: str,
) -> None:
    serve, tree = crash_site
    rng = random.Random(SEED + 1)
    db = serve.folder / "data" / "catalog.db"
    history: list[str] = []
    settles = 0
    phases = {"loading": 0, "indexing": 0, "idle": 0}
    started = time.monotonic()
    try:
        for kill in range(1, KILLS + 1):
            serve.start()
            if rng.random() < 0.25:  # while it loads: opening, rebuilding and saving the caches
                time.sleep(rng.uniform(0.0, 2.5))
            else:  # while it indexes what changed while it was down and what changes now
                serve.wait_serving()
                history.append(f"kill {kill}: {', '.join(tree.mutate(rng.randint(3, 12)))}")
                time.sleep(rng.uniform(0.0, 0.8))
            phases[_phase(serve)] += 1
            serve.kill()
            db_checks(db)
            if rng.random() < 0.5:
                history.append(f"kill {kill}, down: {', '.join(tree.mutate(rng.randint(2, 8)))}")
            if kill % SETTLE_EVERY == 0 or kill == KILLS:
                serve.start()
                serve.wait_serving()
                settled_checks(serve, tree)
                assert serve.stop() == 0, serve.stderr()[-2000:]
                settles += 1
                db_checks(db)
    except AssertionError as exc:
        raise AssertionError(f"seed {SEED}, after: {history[-3:]}: {exc}") from exc
    assert settles >= KILLS // SETTLE_EVERY

    # Offline: the vector store as the daemon left it (a FAISS snapshot or rebuilt; the Milvus
    # collection reconciled) holds exactly the catalog's chunks, and the index equals one built
    # from scratch on the same tree.
    with engine_for(serve.folder, loaded_models, store_backend) as engine:
        ids = set(engine.vectors.ids().tolist())
        expected = {int(r[0]) for r in engine.catalog.db.execute(
            "SELECT c.id FROM chunks c JOIN embeddings e ON e.model = ? AND e.chunk_hash = c.content_hash",
            [engine.model_key])}
        assert ids == expected and engine.vectors.count == len(expected)
        scratch_dir = tmp_path / "scratch"
        scratch_dir.mkdir()
        with engine_for(scratch_dir, loaded_models) as scratch:
            index_paths(scratch, [tree.root])
            got_rows, got_vectors = index_contents(engine)
            want_rows, want_vectors = index_contents(scratch)
            assert got_rows == want_rows
            assert got_vectors.keys() == want_vectors.keys()
            for h, blob in want_vectors.items():
                np.testing.assert_allclose(np.frombuffer(got_vectors[h], np.float32), np.frombuffer(blob, np.float32),
                                           atol=1e-5)
            queries = [*WORDS[:8], *list(tree.markers.values())[:8]]
            same_answers(answers(engine, queries), answers(scratch, queries))
    print(f"{KILLS} kills ({phases}), {settles} settled checks, {len(tree.markers)} files, "
          f"{len(tree.dead)} dead versions, {time.monotonic() - started:.0f} s")
    shutil.rmtree(tree.root)
