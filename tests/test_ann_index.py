"""The FAISS index by size: exact up to ``exact_limit``, then an IVF index built in the
background while the exact one answers. Real FAISS on a few thousand clustered vectors:
recall against exact search, adds and removes made during the build, short filters scored
exactly, snapshots of an IVF index and of another kind, and the storage options."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_tree
from ragd.store import vectors as vectors_module
from ragd.store.base import ChunkFilter
from ragd.store.vectors import IndexPlan, VectorIndex

DIM = 64
N = 3000
PLAN = IndexPlan(exact_limit=200, nprobe=8)

pytestmark = pytest.mark.models("fake")


def clustered(n: int, seed: int, topics: int = 60, spread: float = 0.6) -> np.ndarray:
    """Unit vectors around ``topics`` random centres, as ``benchmarks/ann.py`` makes them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, DIM), dtype=np.float32)
    out = centres[rng.integers(0, topics, n)] + rng.standard_normal((n, DIM), dtype=np.float32) * spread
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


DATA = clustered(N, 0)
QUERIES = DATA[::30] + np.random.default_rng(1).standard_normal((100, DIM), dtype=np.float32) * 0.05
QUERIES /= np.linalg.norm(QUERIES, axis=1, keepdims=True)


def exact_top(data: dict[int, np.ndarray], query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[int]:
    ids = np.array(sorted(data if allowed is None else set(allowed.tolist()) & data.keys()), dtype=np.int64)
    scores = np.stack([data[i] for i in ids.tolist()]) @ query
    return [int(ids[i]) for i in np.argsort(-scores, kind="stable")[:k]]


def recall(index: VectorIndex, data: dict[int, np.ndarray], k: int = 10) -> float:
    hits = [len({i for i, _ in index.search(q, k)} & set(exact_top(data, q, k))) / k for q in QUERIES]
    return float(np.mean(hits))


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Holds a background build at its start (before it reads anything) until set."""
    release, real = threading.Event(), vectors_module.ivf_lists

    def held(n: int) -> int:
        assert release.wait(30), "the build was never released"
        return real(n)

    monkeypatch.setattr(vectors_module, "ivf_lists", held)
    yield release
    release.set()


def built(plan: IndexPlan = PLAN) -> tuple[VectorIndex, dict[int, np.ndarray]]:
    index = VectorIndex(DIM, plan=plan)
    ids = np.arange(1, N + 1, dtype=np.int64)
    index.add(ids, DATA)
    assert index.wait(60), "the IVF build did not finish"
    return index, dict(zip(ids.tolist(), DATA, strict=True))


def test_past_the_limit_an_ivf_index_is_built_in_the_background(gate: threading.Event) -> None:
    """Past ``exact_limit`` the build runs beside searches: the exact index answers (exactly)
    until the IVF index is swapped in, which then answers with recall@10 >= 0.95."""
    index = VectorIndex(DIM, plan=PLAN)
    ids = np.arange(1, N + 1, dtype=np.int64)
    data = dict(zip(ids.tolist(), DATA, strict=True))
    index.add(ids[:150], DATA[:150])
    assert not index.building and not index.approximate  # under the limit: exact, nothing to build
    index.add(ids[150:], DATA[150:])
    assert index.building and not index.approximate
    for q in QUERIES[:10]:  # answered while the build waits
        assert [i for i, _ in index.search(q, 10)] == exact_top(data, q, 10)
    gate.set()
    assert index.wait(60)
    assert index.approximate and not index.building and index.builds == 1
    assert index.describe().startswith("ivf")
    assert sorted(index.ids().tolist()) == ids.tolist()
    assert recall(index, data) >= 0.95


def test_adds_and_removes_during_the_build_are_not_lost(gate: threading.Event) -> None:
    """What the writer does while the IVF index is trained (removes, adds, an id removed and
    added back with another vector, more adds than are replayed under the lock) is replayed
    into it before the swap: a removed id never comes back, an added one is found."""
    index = VectorIndex(DIM, plan=PLAN)
    ids = np.arange(1, N + 1, dtype=np.int64)
    index.add(ids, DATA)
    assert index.building
    data = dict(zip(ids.tolist(), DATA, strict=True))
    removed = ids[::7]
    index.remove(removed)
    for i in removed.tolist():
        del data[i]
    fresh = clustered(vectors_module.LAST_REPLAY + 100, 2)
    new_ids = np.arange(N + 1, N + 1 + len(fresh), dtype=np.int64)
    index.add(new_ids, fresh)
    data.update(zip(new_ids.tolist(), fresh, strict=True))
    index.remove(new_ids[:5])
    for i in new_ids[:5].tolist():
        del data[i]
    back = int(removed[0])  # removed above, added again with another vector
    index.add(np.array([back]), fresh[:1])
    data[back] = fresh[0]
    gate.set()
    assert index.wait(60) and index.approximate
    assert sorted(index.ids().tolist()) == sorted(data)
    gone = set(removed.tolist()[1:]) | set(new_ids[:5].tolist())
    for i in list(removed[1:20]) + list(new_ids[:5]):
        query = DATA[int(i) - 1] if i <= N else fresh[int(i) - N - 1]
        assert not gone & {c for c, _ in index.search(query, 10)}
    for j in range(5, len(fresh), 50):
        assert index.search(fresh[j], 1)[0][0] == int(new_ids[j])
    assert index.search(fresh[0], 1)[0][0] == back
    assert recall(index, data) >= 0.95


def test_a_writer_and_a_searcher_beside_a_running_build() -> None:
    """No gate: while the build really runs, one thread searches without pause and the writer
    adds and removes in small batches; the index ends with exactly the writer's ids, and no
    search ever failed or returned an id that was never added."""
    index = VectorIndex(DIM, plan=PLAN)
    ids = np.arange(1, N + 1, dtype=np.int64)
    index.add(ids, DATA)
    assert index.building
    expected = set(ids.tolist())
    stop, answered = threading.Event(), [0]
    problems: list[str] = []

    def searcher() -> None:
        while not stop.is_set():
            try:
                hits = index.search(QUERIES[answered[0] % len(QUERIES)], 10)
            except Exception as exc:  # any failure is the finding
                problems.append(repr(exc))
                return
            if not hits or any(i < 1 or i > 2 * N for i, _ in hits):
                problems.append(f"bad hits {hits}")
            answered[0] += 1

    thread = threading.Thread(target=searcher)
    thread.start()
    rng, next_id, rounds, during = np.random.default_rng(5), N + 1, 0, 0
    try:
        while (index.building or rounds < 20) and rounds < 2000:
            during += index.building
            gone = rng.choice(sorted(expected), 5, replace=False)
            index.remove(gone)
            expected -= set(gone.tolist())
            fresh = np.arange(next_id, next_id + 5, dtype=np.int64)
            index.add(fresh, DATA[fresh - N - 1])
            expected |= set(fresh.tolist())
            next_id, rounds = next_id + 5, rounds + 1
    finally:
        stop.set()
        thread.join(30)
    assert index.wait(60) and index.approximate
    assert not problems and answered[0] > 0 and during > 0
    assert set(index.ids().tolist()) == expected and index.count == len(expected)


def test_an_ivf_index_grown_past_its_training_is_trained_again() -> None:
    """Trained on 300 vectors, the IVF index is built again once it holds ``regrow`` (4x) as
    many, with more lists; every vector is still there."""
    index = VectorIndex(DIM, plan=PLAN)
    index.add(np.arange(1, 301, dtype=np.int64), DATA[:300])
    assert index.wait(60) and index.approximate and index.builds == 1
    first = index._index.nlist
    index.add(np.arange(301, 1201, dtype=np.int64), DATA[300:1200])  # 4x: not yet past it
    assert not index.building and index.builds == 1
    index.add(np.arange(1201, N + 1, dtype=np.int64), DATA[1200:])
    assert index.wait(60) and index.builds == 2 and index._index.nlist > first
    assert sorted(index.ids().tolist()) == list(range(1, N + 1))
    assert recall(index, dict(zip(range(1, N + 1), DATA, strict=True))) >= 0.95


def test_a_short_filter_gives_exact_results_on_the_ivf_index() -> None:
    """An allow-list scattered over the lists: a probe of a few lists would miss some of it,
    so its vectors are scored exactly. A long one still finds its exact top 10."""
    index, data = built()
    rng = np.random.default_rng(3)
    for q in QUERIES[:20]:
        allowed = rng.choice(np.arange(1, N + 1), 40, replace=False)
        got = index.search(q, 10, ChunkFilter(allowed))
        assert [i for i, _ in got] == exact_top(data, q, 10, allowed)
        assert [s for _, s in got] == pytest.approx([float(data[i] @ q) for i, _ in got], abs=1e-5)
    allowed = np.append(rng.choice(np.arange(1, N + 1), 5, replace=False), [10**9])  # one id without a vector
    assert {i for i, _ in index.search(QUERIES[0], 10, ChunkFilter(allowed))} == set(allowed[:5].tolist())
    wide = rng.choice(np.arange(1, N + 1), vectors_module.SMALL_FILTER + 300, replace=False)
    hits = [len({i for i, _ in index.search(q, 10, ChunkFilter(wide))} & set(exact_top(data, q, 10, wide))) / 10
            for q in QUERIES]
    assert np.mean(hits) >= 0.95


def test_nprobe_zero_scans_a_sixteenth_of_the_lists() -> None:
    assert IndexPlan().probes(4000) == 250 and IndexPlan().probes(10) == 1
    assert IndexPlan(nprobe=32).probes(4000) == 32 and IndexPlan(nprobe=32).probes(10) == 10
    index, data = built(IndexPlan(exact_limit=200))
    assert recall(index, data) >= 0.95


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_compact_storage_keeps_recall(storage: str) -> None:
    index, data = built(IndexPlan(exact_limit=200, nprobe=8, vectors=storage))
    assert index.describe() == f"ivf{index._index.nlist} {storage}"
    assert recall(index, data) >= 0.95


def test_an_ivf_snapshot_round_trips_and_another_kind_is_stale(tmp_path: Path) -> None:
    """The snapshot holds the IVF index and says so in its label; read back with the same
    plan it answers the same, while a plan asking for other storage, or exact search at
    that size, finds it stale (None: the caller rebuilds from the catalog)."""
    index, _ = built()
    path = tmp_path / "m.faiss"
    index.save(path, 7, "model")
    expect = (index.count, int(index.ids().sum()))
    loaded = VectorIndex.load(path, 7, "model", DIM, expect, PLAN)
    assert loaded is not None and loaded.approximate and not loaded.building
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    for q in QUERIES[:10]:
        assert loaded.search(q, 10) == index.search(q, 10)
    loaded.remove(np.array([1, 2]))  # the hashed direct map came back with it
    assert loaded.count == N - 2
    assert VectorIndex.load(path, 7, "model", DIM, expect, IndexPlan(exact_limit=200, vectors="int8")) is None
    assert VectorIndex.load(path, 7, "model", DIM, expect, IndexPlan(exact_limit=N)) is None
    assert VectorIndex.load(path, 8, "model", DIM, expect, PLAN) is None


def test_searches_answer_while_a_snapshot_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot of a large index takes seconds to write: searches go on meanwhile (only
    adds and removes wait for it), and the snapshot holds what the index held when it began."""
    index, _ = built()
    writing, release = threading.Event(), threading.Event()
    real = vectors_module.atomic_write

    def held(path: Path, write: Any) -> None:
        writing.set()
        assert release.wait(30)
        real(path, write)

    monkeypatch.setattr(vectors_module, "atomic_write", held)
    path = tmp_path / "m.faiss"
    saver = threading.Thread(target=index.save, args=(path, 1, "model"))
    saver.start()
    try:
        assert writing.wait(30)
        answered = threading.Event()

        def ask() -> None:
            if index.search(QUERIES[0], 10):
                answered.set()

        threading.Thread(target=ask, daemon=True).start()
        assert answered.wait(10), "a search waited for the snapshot"
    finally:
        release.set()
        saver.join(30)
    loaded = VectorIndex.load(path, 1, "model", DIM, (index.count, int(index.ids().sum())), PLAN)
    assert loaded is not None and loaded.search(QUERIES[0], 10) == index.search(QUERIES[0], 10)


def test_an_exact_snapshot_past_the_limit_serves_then_grows(tmp_path: Path, gate: threading.Event) -> None:
    """An exact snapshot (as earlier versions wrote) of more vectors than the limit is read
    and serves at once; ``tune`` builds its IVF index in the background."""
    exact = VectorIndex(DIM, plan=IndexPlan(exact_limit=10 * N))
    exact.add(np.arange(1, N + 1, dtype=np.int64), DATA)
    path = tmp_path / "m.faiss"
    exact.save(path, 3, "model")
    loaded = VectorIndex.load(path, 3, "model", DIM, None, PLAN)
    assert loaded is not None and not loaded.approximate
    loaded.tune()
    assert loaded.building
    assert loaded.search(QUERIES[0], 10) == exact.search(QUERIES[0], 10)
    gate.set()
    assert loaded.wait(60) and loaded.approximate


def test_a_failed_build_leaves_the_exact_index_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that fails (out of memory, say) is logged; the exact index answers, and no
    other build starts by itself until the contents are replaced (a rebuild)."""
    calls: list[int] = []

    def broken(dim: int, nlist: int, vectors: str) -> Any:
        calls.append(nlist)
        raise MemoryError("no room for the IVF index")

    monkeypatch.setattr(vectors_module, "_ivf", broken)
    index = VectorIndex(DIM, plan=PLAN)
    data = dict(zip(range(1, N + 1), DATA, strict=True))
    index.add(np.arange(1, N + 1, dtype=np.int64), DATA)
    assert index.wait(30) and not index.approximate and len(calls) == 1
    index.add(np.array([N + 1]), DATA[:1])
    assert not index.building and len(calls) == 1
    assert [i for i, _ in index.search(QUERIES[1], 10)] == exact_top({**data, N + 1: DATA[0]}, QUERIES[1], 10)
    monkeypatch.undo()
    index.replace(VectorIndex.rebuild(FakeCatalog(DATA), 0, DIM, PLAN))
    assert index.wait(60) and index.approximate


class FakeCatalog:
    """A ``DenseSource`` of the given vectors under ids 1..n, in two blocks."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def iter_dense(self, model: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        half = len(self.data) // 2
        yield np.arange(1, half + 1, dtype=np.int64), self.data[:half]
        yield np.arange(half + 1, len(self.data) + 1, dtype=np.int64), self.data[half:]


def test_a_replace_during_a_build_drops_it(gate: threading.Event) -> None:
    """A rebuild from the catalog replaces the contents while a build runs: that build is
    dropped (never swapped in over the new contents), and one starts on them."""
    index = VectorIndex(DIM, plan=PLAN)
    index.add(np.arange(1, N + 1, dtype=np.int64), DATA)
    assert index.building
    other = VectorIndex(DIM, plan=PLAN)
    other._index.add_with_ids(DATA[:1000], np.arange(5001, 6001, dtype=np.int64))
    index.replace(other)
    gate.set()
    assert index.wait(60) and index.approximate and index.builds == 1
    assert sorted(index.ids().tolist()) == list(range(5001, 6001))


NOTES: dict[str, str | bytes] = {
    f"note{i:03d}.txt": f"Note {i} about topic {i % 7} with words {i * 13 % 101} and {i % 11}.\n" for i in range(140)
}


def test_the_local_store_builds_ivf_and_rebuilds_a_snapshot_of_other_storage(
    tmp_path: Path, engine_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, gate: threading.Event,
) -> None:
    """Through the engine: past ``store.exact_limit`` the dense store becomes an IVF index in
    the background and its snapshot holds it; opened with another ``store.vectors`` the
    snapshot is stale and rebuilt from the catalog."""
    from ragd.indexer import index_paths
    from ragd.search import SearchOptions, search

    root = tmp_path / "notes"
    write_tree(root, NOTES)
    engine = engine_factory(store={"exact_limit": 100, "nprobe": 4})
    index_paths(engine, [root])  # its build is held (``gate``) until the run has saved its snapshots
    vectors: Any = engine.store.dense
    assert vectors.count == 140 and vectors.building and not vectors.approximate
    assert engine.unsaved_snapshots() == []
    gate.set()
    assert vectors.wait(60) and vectors.approximate
    assert engine.unsaved_snapshots() == ["vectors"]  # the swap asks for a snapshot of the IVF index
    engine.save_snapshots(force=True)
    assert engine.unsaved_snapshots() == []
    top = search(engine, "Note 17 about topic 3", SearchOptions(mode="dense", rerank=False)).hits[0].path
    engine.close()
    rebuilt: list[int] = []
    real = VectorIndex.rebuild.__func__  # type: ignore[attr-defined]

    def counted(cls: type[VectorIndex], *args: Any) -> VectorIndex:
        rebuilt.append(1)
        return real(cls, *args)

    monkeypatch.setattr(VectorIndex, "rebuild", classmethod(counted))
    same = engine_factory(store={"exact_limit": 100, "nprobe": 4})
    assert same.store.dense.approximate and not rebuilt
    assert search(same, "Note 17 about topic 3", SearchOptions(mode="dense", rerank=False)).hits[0].path == top
    same.close()
    gate.clear()  # the rebuilt store's IVF build is held again, so it is seen exact first
    other = engine_factory(store={"exact_limit": 100, "nprobe": 4, "vectors": "float16"})
    assert not other.store.dense.approximate and rebuilt == [1]
    gate.set()
    assert other.store.dense.wait(60) and other.store.dense.approximate
