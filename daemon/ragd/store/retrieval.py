"""Sparse and full-text retrieval in SQL, over the catalog's ``sparse`` and ``lexical`` tables.

Searches read the in-memory mirrors of these tables (``store/postings.py``: ``SparseIndex``,
``LexicalIndex``), which answer as the functions here do; these stay as the reference the
mirrors are tested against, for ``benchmarks/sparse.py``, and for full text under a path
prefix (FTS5 filters inside the query). ``Catalog`` exposes them as methods.

- ``sparse_search``: BGE-M3's lexical matching score, the sum over shared tokens of query
  weight x document weight, pruned MaxScore style and exact.
- ``lexical_search``: FTS5's ``bm25()`` over any of the query's terms (``ragd.lexical``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlite_utils

from ragd import lexical
from ragd.models.base import SparseWeights

SPARSE_PRUNE_BUDGET = 0.2
"""``sparse_search`` sums every posting in SQL instead once pruning has handled this fraction
of the query's postings in Python (docs/performance.md, Search caches)."""
SPARSE_PRUNE_FROM = 50_000
"""Queries whose lists hold fewer postings than this are summed exhaustively (a few ms)."""

Bounds = dict[int, tuple[float, float, int]]
"""token -> (largest weight, smallest weight, postings) of its list, from ``sparse_stats``."""


def sparse_search(
    db: sqlite_utils.Database, model: int, weights: SparseWeights, limit: int, stats: dict[str, int] | None = None
) -> list[tuple[str, float]]:
    """The ``limit`` chunk hashes with the highest lexical matching score (FlagEmbedding's:
    the sum over shared tokens of query weight x document weight), best first, ties by
    hash. Exact: the same chunks and scores as summing every posting of every query token.

    A posting list is contiguous in the ``sparse`` primary key (model, token, hash): one
    seek, then a range. Summing every list is O(P), P = the query tokens' postings, so the
    sum is pruned with each list's bounds (``sparse_stats``): a token adds at most its query
    weight x its list's largest weight (``_PrunedSum``). Below ``SPARSE_PRUNE_FROM``
    postings, for weights pruning cannot bound, and once pruning has cost
    ``SPARSE_PRUNE_BUDGET`` x P, the exhaustive SQL sum answers instead.

    ``stats``, when given, receives what was done: postings_read / lists_read (whole lists),
    postings_scanned / lists_scanned (inside SQLite, above a weight), postings_looked_up /
    lists_looked_up, and exhaustive = 1 when the exhaustive sum answered."""
    counts = {"postings_read": 0, "postings_scanned": 0, "postings_looked_up": 0,
              "lists_read": 0, "lists_scanned": 0, "lists_looked_up": 0}
    if stats is not None:
        stats.update(counts)
    if not weights or limit <= 0:
        return []
    query = {int(t): float(w) for t, w in weights.items()}
    bounds = _list_bounds(db, model, query)
    if any(not 0 < query[t] < float("inf") or not b[1] >= 0 for t, b in bounds.items()):
        # Pruning needs every contribution >= 0 (a partial score is then a lower bound).
        return sparse_exhaustive(db, model, query, limit, stats, counts)
    if sum(b[2] for b in bounds.values()) < SPARSE_PRUNE_FROM:
        return sparse_exhaustive(db, model, query, limit, stats, counts)
    try:
        ranked = _PrunedSum(db, model, query, bounds, limit, counts).run()
    except _OverBudget:
        return sparse_exhaustive(db, model, query, limit, stats, counts)
    if stats is not None:
        stats.update(counts)
    return ranked


def sparse_exhaustive(
    db: sqlite_utils.Database, model: int, query: dict[int, float], limit: int,
    stats: dict[str, int] | None = None, counts: dict[str, int] | None = None,
) -> list[tuple[str, float]]:
    """Every posting of every query token, summed in SQL: ``sparse_search``'s answer without
    pruning. ``stats`` receives ``counts`` (what was done before) plus this sum's reading."""
    values = ",".join("(?, ?)" for _ in query)
    params: list[Any] = []
    for tok, w in query.items():
        params.extend([tok, w])
    rows = db.execute(
        f"WITH q(token, w) AS (VALUES {values}) "
        "SELECT s.chunk_hash, SUM(s.weight * q.w) AS score FROM q JOIN sparse s "
        "ON s.model = ? AND s.token = q.token GROUP BY s.chunk_hash ORDER BY score DESC, s.chunk_hash LIMIT ?",
        [*params, model, limit],
    )
    out = [(str(h), float(s)) for h, s in rows]
    if stats is not None:
        counts = dict(counts or {})
        listed = db.execute(
            f"SELECT coalesce(sum(postings), 0), count(*) FROM sparse_stats WHERE model = ? AND token IN "
            f"({','.join('?' * len(query))})", [model, *query]
        ).fetchone()
        counts["postings_read"] = counts.get("postings_read", 0) + int(listed[0])
        counts["lists_read"] = counts.get("lists_read", 0) + int(listed[1])
        counts["exhaustive"] = 1
        stats.update(counts)
    return out


def _list_bounds(db: sqlite_utils.Database, model: int, query: dict[int, float]) -> Bounds:
    """The bounds of the query tokens' lists (tokens no chunk has are left out)."""
    bounds: Bounds = {}
    tokens = list(query)
    for i in range(0, len(tokens), 500):
        part = tokens[i : i + 500]
        for tok, hi, lo, n in db.execute(
            "SELECT token, max_weight, min_weight, postings FROM sparse_stats WHERE model = ? AND token IN "
            f"({','.join('?' * len(part))})", [model, *part]
        ):
            bounds[int(tok)] = (float(hi), float(lo), int(n))
    return bounds


class _OverBudget(Exception):
    """Pruning is not paying off for this query: the exhaustive sum is cheaper."""


def _outside(x: float) -> float:
    """``x`` plus a margin that absorbs rounding."""
    return x * (1 + 1e-9) + 1e-12


class _PrunedSum:
    """One query's pruned sum, in two phases (``run``):

    1. Lists are read from the shortest. theta, a lower bound of the answer's ``limit``-th
       score, is the ``limit``-th exact score (primary-key seeks) of the best chunks so far.
       A chunk first seen in a list can add at most the bounds of the longer lists, so it
       needs a minimum weight there: when cheaper, only those postings leave SQLite and the
       chunks seen before are looked up. Chunks that cannot reach theta are dropped.
    2. Once the unread lists' bounds sum below theta, no unseen chunk can enter the answer:
       the unread tokens, largest bound first, are looked up for the chunks left (or their
       list read, when shorter), dropping chunks after each.

    Every contribution is >= 0, so a partial score is a lower bound of the chunk's score.
    ``_OverBudget`` is raised once the work passes the budget."""

    def __init__(self, db: sqlite_utils.Database, model: int, query: dict[int, float], bounds: Bounds,
                 limit: int, counts: dict[str, int]) -> None:
        self.db, self.model, self.query, self.bounds, self.limit = db, model, query, bounds, limit
        self.counts = counts
        self.ub = {t: query[t] * b[0] for t, b in bounds.items()}  # the most a token can add to a score
        self.acc: dict[str, float] = {}  # chunk hash -> partial score
        # A posting handled in Python (read or looked up) costs ~3x one summed inside SQLite:
        # past this many, the exhaustive sum would have been about as quick.
        self.budget = SPARSE_PRUNE_BUDGET * sum(b[2] for b in bounds.values())
        self.spent = 0.0

    def run(self) -> list[tuple[str, float]]:
        order = sorted(self.bounds, key=lambda t: (self.bounds[t][2], t))
        theta, read = self._read_shortest_first(order)
        self._look_up_the_rest(order[read:], theta)
        _, kth = self._best(self.limit)
        return sorted(((h, v) for h, v in self.acc.items() if v >= kth), key=lambda kv: (-kv[1], kv[0]))[: self.limit]

    # -- the two phases -----------------------------------------------------------------
    def _read_shortest_first(self, order: list[int]) -> tuple[float, int]:
        """Phase 1: read lists from the shortest until no chunk first seen later can reach
        theta; returns theta and how many lists of ``order`` were read. theta is refreshed
        before a list that costs more than a refresh, and once the reading since the last
        refresh cost as much as one."""
        bounds, limit = self.bounds, self.limit
        after = [0.0] * (len(order) + 1)  # after[i]: the bounds of order[i:] summed
        for k in range(len(order) - 1, -1, -1):
            after[k] = after[k + 1] + self.ub[order[k]]
        theta = -1.0
        i = 0
        since = 0
        while i < len(order) and not theta > _outside(after[i]):
            tok = order[i]
            hi, lo, n = bounds[tok]
            if since and len(self.acc) >= limit and n > limit * (len(order) - i):
                # a refresh costs less than this list: theta as good as can be first
                theta = max(theta, self._exact_theta(order[i:]))
                since = 0
                if theta > _outside(after[i]):
                    break
            if theta > 0:  # the reading needed before theta stops it, if theta rose no more
                stop = next((k for k in range(i, len(order)) if theta > _outside(after[k])), len(order))
                if self.spent + sum(bounds[t][2] for t in order[i:stop]) > self.budget:
                    raise _OverBudget
            tau = (theta - _outside(after[i + 1])) / self.query[tok]  # the weight a new chunk needs here
            above = n if hi <= lo else n * min(1.0, max(0.0, (hi - tau) / (hi - lo)))  # if weights are uniform
            if self.acc and tau > lo and n * 0.1 + above + len(self.acc) < n:
                self._read_above(tok, tau)
            else:
                self._read_list(tok)
            since += n
            i += 1
            if theta > 0:
                self._keep_from(theta - _outside(after[i]))
            if i < len(order) and len(self.acc) >= limit and since >= limit * (len(order) - i):
                theta = max(theta, self._exact_theta(order[i:]))
                since = 0
        return theta, i

    def _look_up_the_rest(self, unread: list[int], theta: float) -> None:
        """Phase 2: the tokens left, largest bound first, for the chunks that can still
        reach theta: each looked up for them, or its list read when that is cheaper."""
        rest = sorted(unread, key=lambda t: (-self.ub[t], t))
        if rest:
            theta = max(theta, self._exact_theta(rest))
        for j, tok in enumerate(rest):
            left = sum(self.ub[t] for t in rest[j:])
            theta = max(theta, self._best(self.limit)[1])
            self._keep_from(theta - _outside(left))
            if not self.acc:
                break
            if len(self.acc) < self.bounds[tok][2]:
                self._add(self._lookup([tok], list(self.acc)), only_known=True)
                self.counts["lists_looked_up"] += 1
            else:
                self._read_list(tok, only_known=True)

    # -- partial scores -----------------------------------------------------------------
    def _spend(self, units: float) -> None:
        self.spent += units
        if self.spent > self.budget:
            raise _OverBudget

    def _best(self, n: int) -> tuple[list[str], float]:
        """The ``n`` chunks with the best partial scores (any order) and the n-th score."""
        acc = self.acc
        if len(acc) < n:
            return list(acc), -1.0
        keys = list(acc)
        values = np.fromiter(acc.values(), dtype=np.float64, count=len(keys))
        idx = np.argpartition(values, len(keys) - n)[len(keys) - n :]
        return [keys[i] for i in idx.tolist()], float(values[idx].min())

    def _keep_from(self, cut: float) -> None:
        """Keep the chunks whose partial score is at least ``cut`` (all of them when that is
        most: dropping chunks only saves work)."""
        acc = self.acc
        values = np.fromiter(acc.values(), dtype=np.float64, count=len(acc))
        idx = np.flatnonzero(values >= cut)
        if len(idx) > 0.8 * len(acc):
            return
        keys = list(acc)
        self.acc = dict(zip(map(keys.__getitem__, idx.tolist()), values[idx].tolist(), strict=True))

    def _add(self, part: dict[str, float], only_known: bool = False) -> None:
        """Add ``part``'s contributions to the partial scores (only to the chunks there already)."""
        acc = self.acc
        common = acc.keys() & part.keys()  # the per-chunk Python work is for these only
        sums = {h: acc[h] + part[h] for h in common}
        if not only_known:
            acc.update(part)
        acc.update(sums)

    def _exact_theta(self, unread: list[int]) -> float:
        """The ``limit``-th best exact score among the best partial ones: a lower bound of
        the answer's ``limit``-th score (every contribution is >= 0)."""
        seeds, _ = self._best(self.limit)
        if len(seeds) < self.limit:
            return -1.0
        extra = self._lookup(unread, seeds) if unread else {}
        return min(self.acc[h] + extra.get(h, 0.0) for h in seeds)

    # -- reading postings ---------------------------------------------------------------
    def _read_list(self, tok: int, only_known: bool = False) -> None:
        """Every posting of ``tok``."""
        n = self.bounds[tok][2]
        self._spend(n)
        rows = self.db.execute(
            "SELECT chunk_hash, weight * ? FROM sparse WHERE model = ? AND token = ?",
            [self.query[tok], self.model, tok],
        )
        self._add(dict(rows), only_known)
        self.counts["postings_read"] += n
        self.counts["lists_read"] += 1

    def _read_above(self, tok: int, tau: float) -> None:
        """Postings of ``tok`` with weight >= ``tau`` (the index range is scanned inside
        SQLite, only those rows come out), plus seeks for the chunks seen before."""
        below = self._lookup([tok], list(self.acc), below=tau)
        self._spend(0.1 * self.bounds[tok][2])
        self._add(dict(self.db.execute(
            "SELECT chunk_hash, weight * ? FROM sparse WHERE model = ? AND token = ? AND weight >= ?",
            [self.query[tok], self.model, tok, tau],
        )))
        self._add(below, only_known=True)
        self.counts["postings_scanned"] += self.bounds[tok][2]
        self.counts["lists_scanned"] += 1

    def _lookup(self, toks: list[int], hashes: list[str], below: float = float("inf")) -> dict[str, float]:
        """The sum of ``toks``' contributions (postings with weight < ``below``) to each of
        ``hashes`` (absent: nothing): one primary-key seek per token and chunk."""
        self._spend(len(toks) * len(hashes))
        self.counts["postings_looked_up"] += len(toks) * len(hashes)
        query, model = self.query, self.model
        if len(toks) == 1:
            return dict(self.db.execute(
                "SELECT chunk_hash, weight * ? FROM sparse WHERE model = ? AND token = ? "
                "AND chunk_hash IN (SELECT value FROM json_each(?)) AND weight < ?",
                [query[toks[0]], model, toks[0], json.dumps(hashes), below],
            ))
        values = ",".join("(?, ?)" for _ in toks)
        return dict(self.db.execute(
            f"WITH q(token, w) AS (VALUES {values}) SELECT s.chunk_hash, SUM(s.weight * q.w) FROM q "
            "JOIN sparse s ON s.model = ? AND s.token = q.token "
            "AND s.chunk_hash IN (SELECT value FROM json_each(?)) AND s.weight < ? GROUP BY s.chunk_hash",
            [*(x for t in toks for x in (t, query[t])), model, json.dumps(hashes), below],
        ))


def lexical_search(db: sqlite_utils.Database, query: str, limit: int, prefix: str | None = None,
                   terms: Sequence[str] | None = None) -> list[tuple[int, float]]:
    """Chunk ids by BM25 (FTS5's ``bm25()``, k1 = 1.2, b = 0.75) over any of the query's
    terms (see ragd.lexical; ``terms`` when the caller chose them), best first, as positive
    scores; only files under ``prefix`` when given."""
    expr = lexical.query_expression(query) if terms is None else lexical.terms_expression(terms)
    if expr is None:
        return []
    where = ""
    params: list[Any] = [expr]
    if prefix is not None:
        where = (" AND rowid IN (SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id"
                 " WHERE substr(f.path, 1, ?) = ?)")
        params += [len(prefix), prefix]
    rows = db.execute(
        f"SELECT rowid, bm25(lexical) AS s FROM lexical WHERE lexical MATCH ?{where} ORDER BY s LIMIT ?",
        [*params, limit],
    )
    return [(int(cid), -float(s)) for cid, s in rows]


def lexical_document_frequency(db: sqlite_utils.Database, terms: Sequence[str]) -> dict[str, int]:
    """How many chunks hold each term (FTS5's own counts, through a temporary fts5vocab table
    of this connection); terms no chunk has are left out."""
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.lexical_vocab USING fts5vocab(main, lexical, row)")
    out: dict[str, int] = {}
    unique = list(dict.fromkeys(terms))
    for i in range(0, len(unique), 500):
        part = unique[i : i + 500]
        marks = ",".join("?" * len(part))
        for term, doc in db.execute(f"SELECT term, doc FROM temp.lexical_vocab WHERE term IN ({marks})", part):
            out[str(term)] = int(doc)
    return out
