"""Sparse retrieval: the SQL sum (``store/retrieval.py``, through ``Catalog.sparse_search``) pruned
(MaxScore) equals an exhaustive sum, the bounds table survives deletes, a catalog from before
the bounds table or the blobs is migrated on open (``store/schema.py``); the in-memory mirror
(``store/postings.py``) answers as the exact sum and snapshots as it is."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from ragd.store import retrieval, schema
from ragd.store.catalog import Catalog


@pytest.fixture(autouse=True)
def _prune_small_indexes(monkeypatch: pytest.MonkeyPatch) -> None:
    """These indexes are small: prune them anyway, as a large one would be."""
    monkeypatch.setattr(retrieval, "SPARSE_PRUNE_FROM", 0)


def _fill(catalog: Catalog, model: int, chunks: int, seed: int = 0) -> dict[str, dict[int, float]]:
    """Zipf-ish postings: frequent tokens (low ids) in most chunks with low weights."""
    rng = random.Random(seed)
    docs: dict[str, dict[int, float]] = {}
    rows = []
    for _ in range(chunks):
        h = f"{rng.getrandbits(128):032x}"
        toks = {min(int(rng.paretovariate(0.8)), 3000) for _ in range(40)}
        docs[h] = {t: round(rng.uniform(0.5, 1.2) * (0.04 + 0.03 * min(t, 8)), 6) for t in toks}
        rows += [(model, t, h, w) for t, w in docs[h].items()]
    with catalog.db.conn:
        catalog.db.conn.executemany("INSERT INTO sparse(model, token, chunk_hash, weight) VALUES (?, ?, ?, ?)", rows)
    return docs


def _brute(docs: dict[str, dict[int, float]], query: dict[int, float], limit: int) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for h, d in docs.items():
        shared = [w * d[t] for t, w in query.items() if t in d]
        if shared:
            scores[h] = sum(shared)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def _same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert len(got) == len(want)
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=1e-12)
    cut = want[-1][1] if want else 0.0
    assert {h for h, s in got if s > cut + 1e-9} == {h for h, s in want if s > cut + 1e-9}


def _queries(n: int, seed: int = 1) -> list[dict[int, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        toks = {min(int(rng.paretovariate(0.8)), 3000) for _ in range(rng.randint(3, 15))}
        out.append({t: rng.uniform(0.5, 1.2) * (0.04 + 0.03 * min(t, 8)) for t in toks})
    return out


def test_pruned_results_equal_exhaustive(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.db")
    model = catalog.model_key("m", 4)
    docs = _fill(catalog, model, 3000)
    used = {"lists_read": 0, "lists_scanned": 0, "lists_looked_up": 0}
    for limit in (1, 10, 100):
        for q in _queries(40):
            stats: dict[str, int] = {}
            got = catalog.sparse_search(model, q, limit, stats=stats)
            _same(got, _brute(docs, q, limit))
            _same(got, retrieval.sparse_exhaustive(catalog.db, model, q, limit))
            for key in used:
                used[key] += stats[key]
    assert all(used.values()), used  # every way of reading a list was exercised
    catalog.close()


def test_bounds_stay_valid_after_deletes_and_other_models(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.db")
    model = catalog.model_key("m", 4)
    other = catalog.model_key("other", 4)
    docs = _fill(catalog, model, 1500)
    _fill(catalog, other, 500, seed=7)
    gone = sorted(docs)[::3]
    with catalog.db.conn:
        catalog.db.conn.executemany("DELETE FROM sparse WHERE chunk_hash = ?", [(h,) for h in gone])
    for h in gone:
        del docs[h]
    for q in _queries(30, seed=3):
        _same(catalog.sparse_search(model, q, 20), _brute(docs, q, 20))
    # a query weight pruning cannot bound falls back to the exhaustive sum
    q = {1: 0.0, 2: 0.3}
    _same(catalog.sparse_search(model, q, 5), _brute(docs, q, 5))
    catalog.close()


def test_catalog_without_bounds_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    catalog = Catalog(path)
    model = catalog.model_key("m", 4)
    docs = _fill(catalog, model, 800)
    # what a catalog written by a ragd without sparse_stats looks like
    with catalog.db.conn:
        for name in ("sparse_stats_insert", "sparse_stats_update", "sparse_stats_delete"):
            catalog.db.conn.execute(f"DROP TRIGGER {name}")
        catalog.db.conn.execute("DROP TABLE sparse_stats")
        catalog.db.conn.execute("DELETE FROM meta WHERE key = 'sparse_stats_version'")
    catalog.close()

    reopened = Catalog(path)
    n = reopened.db.execute("SELECT count(*) FROM sparse").fetchone()[0]
    assert n == sum(len(d) for d in docs.values())  # nothing lost
    listed = reopened.db.execute("SELECT sum(postings) FROM sparse_stats WHERE model = ?", [model]).fetchone()[0]
    assert listed == n
    for q in _queries(20, seed=5):
        _same(reopened.sparse_search(model, q, 10), _brute(docs, q, 10))
    reopened.close()


def test_falls_back_to_the_exhaustive_sum_when_pruning_does_not_pay(tmp_path: Path) -> None:
    """Flat weights (frequent tokens as heavy as rare ones) leave little to prune."""
    catalog = Catalog(tmp_path / "catalog.db")
    model = catalog.model_key("m", 4)
    rng = random.Random(3)
    docs: dict[str, dict[int, float]] = {}
    for _ in range(1500):
        toks = {min(int(rng.paretovariate(0.8)), 3000) for _ in range(40)}
        docs[f"{rng.getrandbits(128):032x}"] = {t: rng.uniform(0.01, 0.35) for t in toks}
    with catalog.db.conn:
        catalog.db.conn.executemany(
            "INSERT INTO sparse(model, token, chunk_hash, weight) VALUES (?, ?, ?, ?)",
            [(model, t, h, w) for h, d in docs.items() for t, w in d.items()],
        )
    fell_back = 0
    for q in _queries(30, seed=9):
        flat = {t: rng.uniform(0.01, 0.35) for t in q}
        stats: dict[str, int] = {}
        _same(catalog.sparse_search(model, flat, 50, stats=stats), _brute(docs, flat, 50))
        fell_back += stats.get("exhaustive", 0)
    assert fell_back > 0
    catalog.close()


# -- the in-memory mirror (ragd.store.postings) -----------------------------------------
def _docs(n: int, seed: int) -> dict[str, dict[int, float]]:
    rng = random.Random(seed)
    out: dict[str, dict[int, float]] = {}
    for _ in range(n):
        toks = {min(int(rng.paretovariate(0.8)), 3000) for _ in range(40)}
        # float32-exact weights: the mirror keeps float32, as the model produces
        out[f"{rng.getrandbits(128):032x}"] = {t: float(np.float32(rng.uniform(0.02, 0.36))) for t in toks}
    return out


def _mirror_same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert len(got) == len(want)
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
    cut = want[-1][1] if want else 0.0
    assert {h for h, s in got if s > cut + 1e-9} == {h for h, s in want if s > cut + 1e-9}


def test_mirror_equals_the_exact_sum_through_adds_removes_and_compaction(
    monkeypatch: pytest.MonkeyPatch, mirror_home: Path | None,
) -> None:
    """The mirror (in memory and mapped) answers as summing every posting does (same chunks,
    scores, tie order by hash) from its base, from a delta of later additions, after
    replacing and removing hashes, and after merging the delta into the base."""
    from ragd.store import postings
    from ragd.store.codec import arrays
    from ragd.store.postings import SparseIndex

    monkeypatch.setattr(postings, "COMPACT_MIN", 1 << 40)  # merge only when told below
    monkeypatch.setattr(postings, "MERGE_BLOCK", 5000)  # a merge in several blocks
    docs = _docs(2000, seed=11)
    index = SparseIndex(mirror_home)
    index.add((h, *arrays(d)) for h, d in list(docs.items())[:1500])
    index.compact()
    index.add((h, *arrays(d)) for h, d in list(docs.items())[1500:])  # a delta beside the base
    live = dict(docs)
    assert index.count == 2000 and len(index._view.delta[0]) > 0
    queries = _queries(30, seed=4)
    for q in queries:
        for limit in (1, 10, 100):
            _mirror_same(index.search(q, limit), _brute(live, q, limit))

    gone = sorted(live)[::4]
    index.remove(gone)
    for h in gone:
        del live[h]
    replaced = sorted(live)[::7]
    fresh = _docs(len(replaced), seed=12)
    for h, d in zip(replaced, fresh.values(), strict=True):
        live[h] = d
    index.add((h, *arrays(live[h])) for h in replaced)
    index.remove(["not-a-hash"])  # unknown hashes are ignored
    assert index.count == len(live)
    for q in queries:
        _mirror_same(index.search(q, 50), _brute(live, q, 50))

    index.compact()
    assert len(index._view.delta[0]) == 0 and index.postings == sum(len(d) for d in live.values())
    for q in queries:
        _mirror_same(index.search(q, 50), _brute(live, q, 50))
    # ties are broken by hash, as the SQL sum orders them
    tie = SparseIndex()
    tie.add([("b", np.array([5], np.int32), np.array([0.5], np.float32)),
             ("a", np.array([5], np.int32), np.array([0.5], np.float32)),
             ("c", np.array([5, 6], np.int32), np.array([0.5, 0.1], np.float32))])
    assert tie.search({5: 1.0, 6: 1.0}, 2) == [("c", pytest.approx(0.6)), ("a", 0.5)]
    assert tie.search({7: 1.0}, 5) == [] and tie.search({}, 5) == [] and SparseIndex().search({5: 1.0}, 3) == []


def test_mirror_compacts_itself_when_the_delta_grows(monkeypatch: pytest.MonkeyPatch,
                                                    mirror_home: Path | None) -> None:
    from ragd.store import postings
    from ragd.store.codec import arrays
    from ragd.store.postings import SparseIndex

    monkeypatch.setattr(postings, "COMPACT_MIN", 1000)
    docs = _docs(600, seed=21)
    index = SparseIndex(mirror_home)
    items = list(docs.items())
    for start in range(0, len(items), 20):  # indexing batches
        index.add((h, *arrays(d)) for h, d in items[start : start + 20])
    assert len(index._view.delta[0]) < max(1000, postings.COMPACT_FRACTION * len(index._view.base.slot)) + 20 * 40
    assert len(index._view.base.slot) > 0
    for q in _queries(20, seed=22):
        _mirror_same(index.search(q, 20), _brute(docs, q, 20))


def test_catalog_without_sparse_blobs_is_migrated_and_the_mirror_built_from_it(tmp_path: Path) -> None:
    """Embeddings written before ``embeddings.sparse`` existed get their blobs from the
    postings on open; the mirror built from the catalog then equals the SQL sum."""
    from ragd.store.catalog import NewEmbedding
    from ragd.store.postings import SparseIndex

    path = tmp_path / "catalog.db"
    catalog = Catalog(path)
    model = catalog.model_key("m", 4)
    other = catalog.model_key("other", 4)
    docs = _docs(700, seed=31)
    catalog.apply(model, [NewEmbedding(h, np.ones(4, np.float32) / 2, d) for h, d in docs.items()], [])
    catalog.apply(other, [NewEmbedding(h, np.ones(4, np.float32) / 2, {1: 0.9}) for h in list(docs)[:50]], [])
    built = SparseIndex.build(catalog.sparse_rows(model))
    assert built.count == len(docs)
    # what a catalog written by a ragd without the blob column looks like
    with catalog.db.conn:
        catalog.db.conn.execute("UPDATE embeddings SET sparse = NULL")
        catalog.db.conn.execute("DELETE FROM meta WHERE key = 'sparse_blobs_version'")
    catalog.close()

    reopened = Catalog(path)
    migrated = SparseIndex.build(reopened.sparse_rows(model))
    assert migrated.count == len(docs) and migrated.postings == sum(len(d) for d in docs.values())
    assert SparseIndex.build(reopened.sparse_rows(other)).search({1: 1.0}, 100)[0][1] == pytest.approx(0.9)
    for q in _queries(20, seed=32):
        want = retrieval.sparse_exhaustive(reopened.db, model, q, 25)
        _mirror_same(migrated.search(q, 25), want)
        _mirror_same(built.search(q, 25), want)
    reopened.close()


def test_a_catalog_upgraded_by_another_process_is_a_clear_error(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """While one process holds the write lock (upgrading a large catalog takes minutes), a
    second one opening the catalog gets a message that says so, not a raw SQLite error."""
    import sqlite3

    from ragd.errors import StoreError

    path = tmp_path / "catalog.db"
    catalog = Catalog(path)
    with catalog.db.conn:
        catalog.db.conn.execute("DELETE FROM meta WHERE key = 'sparse_blobs_version'")
    catalog.close()
    holder = sqlite3.connect(str(path))
    holder.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_S", 0.2)
    try:
        with pytest.raises(StoreError, match="being upgraded by another ragd process"):
            Catalog(path)
    finally:
        holder.rollback()
        holder.close()
    reopened = Catalog(path)  # and once the lock is gone, the upgrade runs
    assert reopened._meta("sparse_blobs_version") == schema.SPARSE_BLOBS_VERSION
    reopened.close()


def test_a_snapshot_holds_the_mirror_as_it_is_and_loads_only_for_its_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror_home: Path | None,
) -> None:
    """``save`` writes base, delta and removed keys as they are; ``load`` gives back a mirror
    (in the same form) that answers, counts and keeps changing as the original does, and
    nothing (so the caller builds) for another generation, another label, another form, a
    damaged file or no file."""
    from ragd.store import postings
    from ragd.store.codec import arrays
    from ragd.store.mapped import bases
    from ragd.store.postings import LexicalIndex, SparseIndex

    monkeypatch.setattr(postings, "COMPACT_MIN", 1 << 40)  # keep a delta and dead postings
    mapped = mirror_home is not None
    docs = _docs(900, seed=31)
    items = list(docs.items())
    path = mirror_home or tmp_path / "m.sparse.npz"
    index = SparseIndex(mirror_home)
    index.add((h, *arrays(d)) for h, d in items[:600])
    index.compact()
    index.add((h, *arrays(d)) for h, d in items[600:])
    index.remove([h for h, _ in items[::5]])
    replaced = _docs(40, seed=32)
    index.add((h, *arrays(d)) for (h, _), d in zip(items[1::9], replaced.values(), strict=False))
    assert len(index._view.delta[0]) > 0 and index._dead_postings > 0
    index.save(path, 7, "m3")
    if mapped:  # bases no snapshot names: one older than the named one, one newer (another merge's)
        older, newer = (path.parent / f"{path.stem}.{c * 32}.base" for c in "ab")
        for folder, age in ((older, -60), (newer, 60)):
            folder.mkdir()
            stamp = next(bases(path)).stat().st_mtime + age
            os.utime(folder, (stamp, stamp))
    loaded = SparseIndex.load(path, 7, "m3", mapped=mapped)
    if mapped:
        assert not older.exists() and newer.exists()
    assert loaded is not None
    assert (loaded.count, loaded.postings, loaded._dead_postings) == (index.count, index.postings, index._dead_postings)
    queries = _queries(20, seed=33)
    for q in queries:
        assert loaded.search(q, 30) == index.search(q, 30)
    more = list(_docs(50, seed=34).items())
    for m in (index, loaded):  # both keep changing the same way
        m.add((h, *arrays(d)) for h, d in more)
        m.remove([h for h, _ in items[2::11]])
        m.compact()
    assert loaded.count == index.count and loaded.postings == index.postings
    for q in queries:
        assert loaded.search(q, 30) == index.search(q, 30)

    index.save(path, 7, "m3")  # the loaded one's save removed the base this one named
    assert len(list(bases(path))) == (1 if mapped else 0)  # and a save leaves only its own
    assert SparseIndex.load(path, 7, "m3", mapped=mapped) is not None
    assert SparseIndex.load(path, 8, "m3", mapped=mapped) is None  # the catalog moved on
    assert SparseIndex.load(path, 7, "other-model", mapped=mapped) is None
    assert SparseIndex.load(path, 7, "m3", mapped=not mapped) is None  # the other form
    assert LexicalIndex.load(path, 7, "m3", mapped=mapped) is None  # another kind of mirror
    assert SparseIndex.load(tmp_path / "missing.npz", 7, "m3", mapped=mapped) is None
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert SparseIndex.load(damaged, 7, "m3", mapped=mapped) is None

    # the BM25 mirror keeps its vocabulary: term ids mean the same after loading
    lex_path = tmp_path / "lexical.npz"
    lex = LexicalIndex.build([(1, "heron nest river"), (2, "bread starter flour bread"), (3, "river delta")],
                             lex_path if mapped else None)
    lex.add_terms([(4, "heron fishing river river")])
    lex.remove([3])
    lex.save(lex_path, 3, "lexical")
    back = LexicalIndex.load(lex_path, 3, "lexical", mapped=mapped)
    assert back is not None and back.count == 3
    for terms in (["heron"], ["river", "bread"], ["delta"], ["unknown"]):
        assert back.search(terms, 5) == lex.search(terms, 5)
    for m in (lex, back):
        m.add_terms([(5, "sourdough bread heron")])
    assert back.search(["bread", "heron"], 5) == lex.search(["bread", "heron"], 5)


def test_mapped_and_in_memory_mirrors_answer_alike_to_the_bit(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rows, additions, replacements, removals and merges give the same answers,
    scores to the bit, in both forms, for the sparse and the BM25 mirror; a mapped build
    sorts its rows into several runs on disk and merges them in several blocks, and every
    later merge streams the base in several blocks. The mapped form's postings are file
    mappings, not copies."""
    from ragd.store import postings
    from ragd.store.codec import arrays, encode
    from ragd.store.mapped import bases
    from ragd.store.postings import LexicalIndex, SparseIndex

    monkeypatch.setattr(postings, "BUILD_ROWS", 50)
    monkeypatch.setattr(postings, "MAPPED_DELTA", 4000)
    monkeypatch.setattr(postings, "MERGE_BLOCK", 1500)
    monkeypatch.setattr(postings, "COMPACT_MIN", 3000)
    docs = _docs(1200, seed=41)
    home = tmp_path / "m.sparse.npz"
    memory = SparseIndex.build((h, encode(d)) for h, d in docs.items())
    mapped = SparseIndex.build(((h, encode(d)) for h, d in docs.items()), home)
    assert memory.home is None and mapped.home == home
    assert isinstance(mapped._view.base.slot, np.memmap) and not isinstance(memory._view.base.slot, np.memmap)
    assert [p.name for p in home.parent.iterdir()] == [next(bases(home)).name]  # no run left behind
    twice = list(docs.items())[:5]  # a key given twice: its last postings count
    rows_twice = [(h, encode(d)) for h, d in twice] + [(twice[0][0], encode(twice[1][1]))]
    assert (SparseIndex.build(rows_twice, tmp_path / "twice.npz").search({t: 1.0 for t in twice[1][1]}, 10)
            == SparseIndex.build(rows_twice).search({t: 1.0 for t in twice[1][1]}, 10))
    queries = _queries(25, seed=42)
    live = dict(docs)

    def same() -> None:
        assert memory.count == mapped.count == len(live)
        for q in queries:
            got = mapped.search(q, 30)
            assert got == memory.search(q, 30)
            _mirror_same(got, _brute(live, q, 30))

    same()
    rng = random.Random(43)
    for step in range(6):
        fresh = _docs(150, seed=100 + step)
        replaced = rng.sample(sorted(live), 40)
        for h, d in zip(replaced, _docs(40, seed=200 + step).values(), strict=True):
            fresh[h] = d
        gone = rng.sample(sorted(set(live) - set(replaced)), 60)
        for index in (memory, mapped):
            index.add((h, *arrays(d)) for h, d in fresh.items())
            index.remove([*gone, "not-a-hash"])
        live.update(fresh)
        for h in gone:
            del live[h]
        same()
    assert len(list(bases(home))) == 1
    for index in (memory, mapped):
        index.compact()
    same()

    words = [f"w{i}" for i in range(300)]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    lex_rng = random.Random(44)

    def text() -> str:
        return " ".join(lex_rng.choices(words, weights, k=lex_rng.randint(0, 40)))

    rows = [(cid, text()) for cid in range(1, 900)]
    lex_home = tmp_path / "lexical.npz"
    lex_memory = LexicalIndex.build(rows)
    lex_mapped = LexicalIndex.build(rows, lex_home)
    lex_queries = [text().split()[:5] for _ in range(25)]

    def lex_same() -> None:
        assert lex_memory.count == lex_mapped.count
        for q in lex_queries:
            assert lex_mapped.search(q, 20) == lex_memory.search(q, 20)
            assert lex_mapped.document_frequency(q) == lex_memory.document_frequency(q)

    lex_same()
    for _ in range(4):
        batch = [(cid, text()) for cid in lex_rng.sample(range(1, 1200), 120)]
        gone_ids = lex_rng.sample(range(1, 1200), 50)
        for lex in (lex_memory, lex_mapped):
            lex.remove(gone_ids)
            lex.add_terms(batch)
        lex_same()
    for lex in (lex_memory, lex_mapped):
        lex.compact()
    lex_same()
