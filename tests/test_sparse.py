"""Catalog.sparse_search: pruned (MaxScore) results equal an exhaustive sum, the bounds table
survives deletes, and a catalog from before the bounds table is migrated on open."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ragd.store import catalog as catalog_module
from ragd.store.catalog import Catalog


@pytest.fixture(autouse=True)
def _prune_small_indexes(monkeypatch: pytest.MonkeyPatch) -> None:
    """These indexes are small: prune them anyway, as a large one would be."""
    monkeypatch.setattr(catalog_module, "SPARSE_PRUNE_FROM", 0)


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
            _same(got, catalog._sparse_exhaustive(model, q, limit, dict(stats), None))
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
