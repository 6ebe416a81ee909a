"""Query -> retrieve (dense, plus sparse when the embedder has it) -> fuse -> filter ->
rerank the top candidates -> hits with snippets, scores and per-stage timings."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ragd.engine import Engine
from ragd.errors import IndexEmptyError, UsageError

MAX_K = 1000
MAX_CANDIDATES = 1000
MAX_QUERY_CHARS = 4096


@dataclass(frozen=True)
class SearchOptions:
    """One request. ``None`` takes the config's default."""

    k: int | None = None
    candidates: int | None = None
    rerank: bool | None = None
    path_prefix: str | None = None


@dataclass
class Hit:
    chunk_id: int
    path: str
    start_line: int
    end_line: int
    heading: list[str]
    snippet: str
    score: float
    retrieval_score: float
    rerank_score: float | None
    text: str = field(repr=False, default="")


@dataclass
class SearchResult:
    query: str
    hits: list[Hit]
    timings: dict[str, float]
    models: dict[str, str | None]
    degraded: list[str]
    candidates: int
    reranked: int

    def to_json(self, with_text: bool = False) -> dict[str, Any]:
        hits = []
        for h in self.hits:
            d = asdict(h)
            if not with_text:
                d.pop("text")
            hits.append(d)
        return {
            "query": self.query,
            "hits": hits,
            "timings": self.timings,
            "models": self.models,
            "degraded": self.degraded,
            "candidates": self.candidates,
            "reranked": self.reranked,
        }


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def validate(query: str, k: int, candidates: int) -> str:
    """The stripped query, or UsageError naming what is wrong."""
    q = query.strip()
    if not q:
        raise UsageError("query is empty: give the words to search for")
    if len(q) > MAX_QUERY_CHARS:
        raise UsageError(f"query is too long: {len(q)} characters, at most {MAX_QUERY_CHARS}")
    if not 1 <= k <= MAX_K:
        raise UsageError(f"k must be from 1 to {MAX_K}, got {k}")
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise UsageError(f"candidates must be from 1 to {MAX_CANDIDATES}, got {candidates}")
    return q


def normalise(scores: dict[int, float]) -> dict[int, float]:
    """Min-max scale to [0, 1]; a single or constant list scales to 1."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi - lo < 1e-12:
        return {i: 1.0 for i in scores}
    return {i: (s - lo) / (hi - lo) for i, s in scores.items()}


def fuse(signals: dict[str, dict[int, float]], weights: dict[str, float]) -> dict[int, float]:
    """Weighted sum of min-max normalised scores. With one signal, its raw scores are kept
    so that a retrieval score stays a cosine similarity."""
    live = {name: s for name, s in signals.items() if s and weights.get(name, 0) > 0}
    if len(live) == 1:
        return dict(next(iter(live.values())))
    fused: dict[int, float] = {}
    for name, scores in live.items():
        w = weights[name]
        for cid, s in normalise(scores).items():
            fused[cid] = fused.get(cid, 0.0) + w * s
    return fused


_WORD = re.compile(r"\w{3,}", re.UNICODE)


def snippet(text: str, query: str, limit: int) -> str:
    """Up to ``limit`` characters of the chunk, starting near the first query word found."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    lower = flat.lower()
    positions = [lower.find(w.lower()) for w in _WORD.findall(query)]
    hits = [p for p in positions if p >= 0]
    start = max(0, min(hits) - limit // 4) if hits else 0
    if start > 0:
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < start + 20 else start
    end = min(len(flat), start + limit)
    out = flat[start:end]
    return ("…" if start > 0 else "") + out + ("…" if end < len(flat) else "")


def _allowed_ids(engine: Engine, prefix: str | None) -> np.ndarray | None:
    if prefix is None:
        return None
    return np.array(engine.catalog.chunk_ids_under(prefix), dtype=np.int64)


def normalise_prefix(prefix: str | None) -> str | None:
    """A --path value as an absolute path prefix (relative values are taken from the cwd)."""
    if prefix is None or prefix == "":
        return None
    expanded = os.path.expanduser(prefix)
    absolute = os.path.abspath(expanded)
    return absolute + "/" if expanded.endswith("/") and not absolute.endswith("/") else absolute


def search(engine: Engine, query: str, options: SearchOptions | None = None) -> SearchResult:
    """Run one search through every stage; see the module docstring."""
    opts = options or SearchOptions()
    cfg = engine.config.search
    k = cfg.k if opts.k is None else opts.k
    candidates = cfg.candidates if opts.candidates is None else opts.candidates
    q = validate(query, k, candidates)
    want_rerank = cfg.rerank if opts.rerank is None else opts.rerank
    prefix = normalise_prefix(opts.path_prefix)
    timings: dict[str, float] = {}
    t_total = time.perf_counter()

    if engine.catalog.count_chunks() == 0:
        raise IndexEmptyError("the index is empty: run `ragd index PATH` first")
    t = time.perf_counter()
    models = engine.models
    vectors = engine.vectors
    timings["load_ms"] = _ms(t)

    t = time.perf_counter()
    qemb = models.embedder.embed_query(q)
    timings["embed_ms"] = _ms(t)

    pool = max(cfg.retrieve, candidates, k)
    allowed = _allowed_ids(engine, prefix)
    t = time.perf_counter()
    dense = dict(vectors.search(qemb.dense[0], pool, allowed))
    timings["dense_ms"] = _ms(t)

    signals: dict[str, dict[int, float]] = {"dense": dense}
    if qemb.sparse is not None and cfg.sparse_weight > 0:
        t = time.perf_counter()
        by_hash = engine.catalog.sparse_search(engine.model_key, qemb.sparse[0], pool)
        ids = engine.catalog.chunk_ids_by_hash([h for h, _ in by_hash])
        allowed_set = None if allowed is None else set(allowed.tolist())
        sparse: dict[int, float] = {}
        for h, s in by_hash:
            for cid in ids.get(h, []):
                if allowed_set is None or cid in allowed_set:
                    sparse[cid] = s
        signals["sparse"] = sparse
        timings["sparse_ms"] = _ms(t)

    t = time.perf_counter()
    fused = fuse(signals, {"dense": cfg.dense_weight, "sparse": cfg.sparse_weight})
    ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
    timings["fuse_ms"] = _ms(t)

    top = ranked[: max(k, candidates)]
    rows = engine.catalog.chunks([cid for cid, _ in top])
    top = [(cid, s) for cid, s in top if cid in rows]

    reranker = models.reranker if want_rerank else None
    rerank_scores: dict[int, float] = {}
    if reranker is not None and top:
        t = time.perf_counter()
        head = top[:candidates]
        scores = reranker.score(q, [rows[cid].text for cid, _ in head])
        rerank_scores = {cid: s for (cid, _), s in zip(head, scores, strict=True)}
        timings["rerank_ms"] = _ms(t)
        reranked_part = sorted(head, key=lambda cs: -rerank_scores[cs[0]])
        top = reranked_part + top[candidates:]

    hits = []
    for cid, retrieval in top[:k]:
        row = rows[cid]
        rr = rerank_scores.get(cid)
        hits.append(Hit(
            chunk_id=cid, path=row.path, start_line=row.start_line, end_line=row.end_line,
            heading=list(row.heading), snippet=snippet(row.text, q, cfg.snippet_chars),
            score=round(rr if rr is not None else retrieval, 6), retrieval_score=round(retrieval, 6),
            rerank_score=None if rr is None else round(rr, 6), text=row.text,
        ))
    timings["total_ms"] = _ms(t_total)
    degraded = list(models.degraded)
    return SearchResult(
        query=q, hits=hits, timings=timings,
        models={"embedder": models.embedder.model_id, "reranker": reranker.model_id if reranker else None},
        degraded=degraded, candidates=len(fused), reranked=len(rerank_scores),
    )


def rank_documents(hits: Sequence[Hit]) -> list[str]:
    """Paths in order of their best chunk (for callers that want documents, not chunks)."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h.path, None)
    return list(seen)
