"""Query -> retrieve (dense, sparse when the embedder has it, full-text BM25) -> fuse ->
filter -> [ColBERT rescoring of the top fused candidates] -> rerank the top candidates ->
hits with snippets, scores and per-stage timings.

``mode`` picks the retrievers: ``hybrid`` (every signal the embedder has, plus full-text),
``dense``, ``sparse`` (BGE-M3 lexical weights) or ``lexical`` (BM25, works with any
embedder; the query is not embedded). Fusion is a weighted sum of min-max normalised
scores or weighted reciprocal rank fusion (``search.fusion``), per-signal weights from the
config or the request. With ``models.multi_vector`` on, hybrid mode adds a fourth signal,
``colbert``: FlagEmbedding's ColBERT score of the top ``search.colbert_candidates`` fused
candidates, fused with the others (candidates without stored vectors get no colbert part)."""

from __future__ import annotations

import contextlib
import os
import re
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ragd.engine import Engine
from ragd.errors import CancelledError, IndexEmptyError, NotFoundError, UsageError
from ragd.filters import Filters, matches, normalise_filters
from ragd.lexical import terms as query_terms
from ragd.models.base import Embeddings, FloatArray
from ragd.query import QueryUse, rerank_part, select_terms
from ragd.query import embed as embed_query
from ragd.requests import FUSIONS, MODES, RETRIEVERS, SIGNALS, check_counts, check_query
from ragd.store.catalog import Catalog
from ragd.store.sparse import SparseIndex
from ragd.store.sparse import decode as decode_sparse
from ragd.window import best_window


@dataclass(frozen=True)
class SearchOptions:
    """One request. ``None`` takes the config's default."""

    k: int | None = None
    candidates: int | None = None
    rerank: bool | None = None
    path_prefix: str | None = None
    mode: str | None = None
    weights: Mapping[str, float] | None = None  # per signal (dense, sparse, lexical, colbert); missing from config
    fusion: str | None = None
    filters: Filters | None = None
    deadline: float | None = None  # time.monotonic() by which the answer is due; reranking stops in time
    cancelled: Callable[[], bool] | None = None  # polled between stages; True stops with SearchCancelled
    on_retrieval: Callable[[SearchResult], None] | None = None  # gets the retrieval-stage result before rerank
    like_chunk_id: int | None = None  # "more like this": the query is this chunk's stored vectors and terms
    like_same_file: bool = False  # with like_chunk_id: keep the other chunks of its file among the hits
    exclude_path: str | None = None  # leave this file's chunks out of the hits (a file's text as the query)


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
    page: int = 0  # first page of the chunk (1-based); 0 for formats without pages
    end_page: int = 0  # last page
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
    rerank_window: int = 0  # the window (tokens) that cut at least one reranked passage; 0 = all read whole
    query_use: QueryUse = field(default_factory=QueryUse)

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
            "rerank_window": self.rerank_window,
            "query_use": self.query_use.to_json(),
        }


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def validate(query: str, k: int, candidates: int) -> str:
    """The stripped query, or UsageError naming what is wrong."""
    q = check_query(query)
    check_counts(k, candidates)
    return q


def normalise(scores: dict[int, float]) -> dict[int, float]:
    """Min-max scale to [0, 1]; a single or constant list scales to 1."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi - lo < 1e-12:
        return {i: 1.0 for i in scores}
    return {i: (s - lo) / (hi - lo) for i, s in scores.items()}


def fuse(
    signals: Mapping[str, dict[int, float]], weights: Mapping[str, float], method: str = "weighted",
    rrf_k: int = 60,
) -> dict[int, float]:
    """Combine per-signal scores. ``weighted``: sum of weight x confidence x min-max
    normalised score, where a signal's confidence for this query is how clearly its best
    candidate stands out: 1 - the mean normalised score of its ranks 2 to 11 (1 with fewer
    than two candidates, 0 when all tie). A signal that cannot tell its candidates apart
    (an English-only embedder on a Chinese query) thus cannot drag a sharp one down.
    ``rrf``: sum of weight / (rrf_k + rank), rank 1 the best of each signal. With one
    signal, its raw scores are kept so that a retrieval score stays a cosine or BM25 score."""
    live = {name: s for name, s in signals.items() if s and weights.get(name, 0) > 0}
    if len(live) == 1:
        return dict(next(iter(live.values())))
    fused: dict[int, float] = {}
    for name, scores in live.items():
        w = weights[name]
        if method == "rrf":
            ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (cid, _) in enumerate(ranked, 1):
                fused[cid] = fused.get(cid, 0.0) + w / (rrf_k + rank)
        else:
            norm = normalise(scores)
            w *= confidence(norm)
            for cid, s in norm.items():
                fused[cid] = fused.get(cid, 0.0) + w * s
    return fused


def confidence(normalised: Mapping[int, float], depth: int = 10) -> float:
    """1 - the mean of the normalised scores ranked 2 to depth + 1 (see ``fuse``)."""
    if len(normalised) < 2:
        return 1.0
    runners = sorted(normalised.values(), reverse=True)[1 : depth + 1]
    return 1.0 - sum(runners) / len(runners)


def colbert_score(query: FloatArray, passage: FloatArray) -> float:
    """FlagEmbedding's ``BGEM3FlagModel.colbert_score``: for each query token vector its best
    inner product with any passage token vector, summed and divided by the query's tokens."""
    return float((query @ passage.T).max(axis=1).sum() / query.shape[0])


def colbert_scores(query: FloatArray, passages: Mapping[int, FloatArray]) -> dict[int, float]:
    """``colbert_score`` of each passage (chunk id -> (tokens, dim) vectors); empty ones are left out."""
    if query.shape[0] == 0:
        return {}
    q = np.ascontiguousarray(query, dtype=np.float32)
    return {cid: colbert_score(q, p) for cid, p in passages.items() if p.shape[0] > 0}


def resolve_signals(
    mode: str, weights: Mapping[str, float], has_sparse: bool, fusion: str, has_colbert: bool = False
) -> dict[str, float]:
    """The weight of each signal that runs for ``mode``; UsageError for a bad request.
    ``colbert`` (with ``has_colbert``: the embedder keeps multi-vectors) runs in hybrid mode
    only, and only beside a retriever, since it rescores their candidates."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if fusion not in FUSIONS:
        raise UsageError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    for name, w in weights.items():
        if name not in SIGNALS:
            raise UsageError(f"unknown signal {name!r} in weights (known: {', '.join(SIGNALS)})")
        if not (w >= 0 and w < float("inf")):
            raise UsageError(f"weight of {name} must be a number >= 0, got {w}")
    if mode == "sparse" and not has_sparse:
        raise UsageError("mode sparse needs an embedder with lexical weights (BGE-M3); this one has none")
    if mode != "hybrid":
        return {mode: 1.0}
    chosen = {name: float(weights[name]) for name in SIGNALS if weights.get(name, 0) > 0}
    if not has_sparse:
        chosen.pop("sparse", None)
    if not has_colbert:
        chosen.pop("colbert", None)
    if not chosen:
        raise UsageError("every signal has weight 0: give at least one a weight above 0")
    if not any(name in chosen for name in RETRIEVERS):
        raise UsageError("every retrieving signal (dense, sparse, lexical) has weight 0, and colbert only "
                         "rescores their candidates: give one of them a weight above 0")
    return chosen


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


def _allowed_ids(engine: Engine, prefix: str | None, filters: Filters | None = None,
                 hidden: Collection[str] = ()) -> np.ndarray | None:
    """The chunk ids a search may return, None for all. ``hidden``: suspended roots, whose
    files are kept while their folder is missing or unmounted but never served."""
    if hidden:
        f = filters if filters is not None and filters.active else Filters()
        if prefix is not None:
            f = replace(f, path_prefixes=(*f.path_prefixes, prefix))
        if not f.active:
            return np.array(engine.catalog.chunk_ids_outside_suspended(), dtype=np.int64)
        return np.array(engine.catalog.chunk_ids_where(lambda p, r, m: r not in hidden and matches(f, p, r, m)),
                        dtype=np.int64)
    if filters is not None and filters.active:
        if prefix is not None:
            filters = replace(filters, path_prefixes=(*filters.path_prefixes, prefix))
        f = filters
        return np.array(engine.catalog.chunk_ids_where(lambda p, r, m: matches(f, p, r, m)), dtype=np.int64)
    if prefix is None:
        return None
    return np.array(engine.catalog.chunk_ids_under(prefix), dtype=np.int64)


class SearchCancelled(CancelledError):
    """The caller went away or its deadline passed before the answer was ready."""


def normalise_prefix(prefix: str | None) -> str | None:
    """A --path value as an absolute path prefix (relative values are taken from the cwd)."""
    if prefix is None or prefix == "":
        return None
    expanded = os.path.expanduser(prefix)
    absolute = os.path.abspath(expanded)
    return absolute + "/" if expanded.endswith("/") and not absolute.endswith("/") else absolute


def _stored_query(engine: Engine, chunk_id: int) -> Embeddings:
    """A chunk's stored embedding as a query's: nothing is embedded again."""
    dim = int(engine.models.embedder.dim)
    try:
        dense, lexical, colbert = engine.catalog.stored_query(engine.model_key, chunk_id, dim)
    except KeyError:
        raise NotFoundError(f"like_chunk_id: chunk {chunk_id} has no embedding from this embedder yet") from None
    weights = None
    if lexical is not None:
        tokens, values = decode_sparse(lexical)
        weights = [dict(zip(tokens.tolist(), values.tolist(), strict=True))]
    return Embeddings(dense=dense.reshape(1, -1), sparse=weights, colbert=None if colbert is None else [colbert])


def _excluded(engine: Engine, like: Any, opts: SearchOptions) -> set[int]:
    """Chunks a search leaves out: the chunk it is like (and by default the rest of its
    file), and the chunks of ``exclude_path``."""
    out: set[int] = set()
    if like is not None:
        out.add(like.id)
        if not opts.like_same_file:
            out.update(engine.catalog.chunk_ids_of(like.path))
    if opts.exclude_path:
        out.update(engine.catalog.chunk_ids_of(opts.exclude_path))
    return out


def _rerank_query(reranker: Any, query: str, window: int, use: QueryUse) -> str:
    """The part of the query the reranker reads: all of it when it fits beside a passage
    window of ``window`` tokens in the reranker's input, else its start."""
    offsets = getattr(reranker, "token_offsets", None)
    limit = int(getattr(reranker, "max_length", 0) or 0)
    if offsets is None or not limit:
        return query
    spans = offsets(query)
    room = max(MIN_RERANK_QUERY_TOKENS, limit - window - PAIR_EXTRA_TOKENS)
    use.rerank_tokens = min(len(spans), room)
    return rerank_part(query, spans, room)


def search(engine: Engine, query: str, options: SearchOptions | None = None) -> SearchResult:
    """Run one search through every stage; see the module docstring."""
    with contextlib.ExitStack() as held:
        return _search(engine, query, options or SearchOptions(), held)


def _search(engine: Engine, query: str, opts: SearchOptions, held: contextlib.ExitStack) -> SearchResult:
    """``search``; a search that reranks under a deadline enters the models' hold into
    ``held`` (see ``_rerank``) as soon as they are loaded, so that no indexing batch starts
    between its query embedding and its reranking either."""
    cfg = engine.config.search
    k = cfg.k if opts.k is None else opts.k
    candidates = cfg.candidates if opts.candidates is None else opts.candidates
    use = QueryUse()
    like = None
    if opts.like_chunk_id is not None:
        like = engine.catalog.chunks([opts.like_chunk_id]).get(opts.like_chunk_id)
        if like is None:
            raise NotFoundError(f"like_chunk_id: no chunk {opts.like_chunk_id}")
        query = like.text
        use.like_chunk_id = like.id
    q = validate(query, k, candidates)
    want_rerank = cfg.rerank if opts.rerank is None else opts.rerank
    weights = {"dense": cfg.dense_weight, "sparse": cfg.sparse_weight, "lexical": cfg.lexical_weight,
               "colbert": cfg.colbert_weight, **(opts.weights or {})}
    fusion = opts.fusion or cfg.fusion
    mode = opts.mode or cfg.mode
    prefix = normalise_prefix(opts.path_prefix)
    filters = normalise_filters(opts.filters) if opts.filters is not None else None
    timings: dict[str, float] = {}
    t_total = time.perf_counter()

    def check() -> None:
        if opts.cancelled is not None and opts.cancelled():
            raise SearchCancelled("the search was cancelled")

    if engine.catalog.count_chunks() == 0:
        raise IndexEmptyError("the index is empty: run `ragd index PATH` first")
    t = time.perf_counter()
    models = engine.models
    vectors = engine.vectors
    timings["load_ms"] = _ms(t)
    if opts.deadline is not None and want_rerank and models.reranker is not None:
        held.enter_context(engine.gate.hold(models.reranker))
    signal_weights = resolve_signals(mode, weights, bool(models.embedder.has_sparse), fusion,
                                     bool(getattr(models.embedder, "multi_vector", False)))

    pool = max(cfg.retrieve, candidates, k)
    signals: dict[str, dict[int, float]] = {}
    embeds = "dense" in signal_weights or "sparse" in signal_weights or "colbert" in signal_weights

    # Full-text retrieval (BM25 over the in-memory mirror; FTS5 in SQLite, on the side
    # thread's own connection, for a path prefix) starts now, beside the query embedding
    # (Engine.beside). Sparse retrieval (the in-memory mirror, then the hashes' chunk ids from
    # SQLite) starts as soon as the embedding is there, beside the dense stage. The mirrors
    # are fetched here: built on first use through this engine's own connection.
    bm25 = engine.lexical if "lexical" in signal_weights and prefix is None and engine.mirrors else None

    def lexical_stage(catalog: Catalog) -> tuple[list[tuple[int, float]], float]:
        started = time.perf_counter()
        every = query_terms(q)
        if bm25 is not None:
            chosen = select_terms(every, bm25.document_frequency)
            found = bm25.search(chosen, pool)
        else:
            chosen = select_terms(every, catalog.lexical_document_frequency)
            found = catalog.lexical_search(q, pool, prefix, terms=chosen)
        use.terms, use.terms_used = len(set(every)), len(chosen)
        return found, _ms(started)

    def sparse_stage(
        catalog: Catalog, index: SparseIndex | int, weights: Any
    ) -> tuple[list[tuple[str, float]], dict[str, list[int]], float]:
        started = time.perf_counter()
        if isinstance(index, int):  # no mirror: the catalog's pruned sum, for this model key
            by_hash = catalog.sparse_search(index, weights, pool)
        else:
            by_hash = index.search(weights, pool)
        return by_hash, catalog.chunk_ids_by_hash([h for h, _ in by_hash]), _ms(started)

    lexical_job = engine.beside(lexical_stage) if "lexical" in signal_weights and embeds else None
    sparse_job = None
    qemb = None
    if embeds:
        t = time.perf_counter()
        # A query is a few tokens: it runs alongside an indexing batch instead of waiting for
        # it (inference does not change the model; on OpenVINO it takes a core from the batch);
        # the long reranker calls use the gate.
        qemb = _stored_query(engine, like.id) if like is not None else embed_query(models.embedder, q, use)
        timings["embed_ms"] = _ms(t)
    check()
    filtered = prefix is not None or (filters is not None and filters.active)
    hidden = engine.catalog.suspended_roots()
    allowed = _allowed_ids(engine, prefix, filters, hidden) if filtered or hidden else None
    allowed_set = None if allowed is None else set(allowed.tolist())
    if qemb is not None and qemb.sparse is not None and "sparse" in signal_weights:
        # The mirror (or, without mirrors, the model key) is fetched here, built on first use
        # through this engine's connection: the side thread touches only its own connection.
        mirror = engine.sparse if engine.mirrors else None
        sparse_index: SparseIndex | int = mirror if mirror is not None else engine.model_key
        lexical_weights = qemb.sparse[0]
        sparse_job = engine.beside(lambda catalog: sparse_stage(catalog, sparse_index, lexical_weights))
    if qemb is not None and "dense" in signal_weights:
        t = time.perf_counter()
        signals["dense"] = dict(vectors.search(qemb.dense[0], pool, allowed))
        timings["dense_ms"] = _ms(t)

    if sparse_job is not None:
        by_hash, ids, timings["sparse_ms"] = sparse_job.result()
        sparse: dict[int, float] = {}
        for h, s in by_hash:
            for cid in ids.get(h, []):
                if allowed_set is None or cid in allowed_set:
                    sparse[cid] = s
        signals["sparse"] = sparse

    if "lexical" in signal_weights:
        lexical_hits, timings["lexical_ms"] = (lexical_job.result() if lexical_job is not None
                                               else lexical_stage(engine.catalog))
        signals["lexical"] = {c: v for c, v in lexical_hits if allowed_set is None or c in allowed_set}

    excluded = _excluded(engine, like, opts)
    if excluded:
        signals = {name: {c: v for c, v in found.items() if c not in excluded} for name, found in signals.items()}
    t = time.perf_counter()
    fused = fuse(signals, signal_weights, fusion, cfg.rrf_k)
    ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
    timings["fuse_ms"] = _ms(t)

    if "colbert" in signal_weights and qemb is not None and qemb.colbert is not None and ranked:
        check()
        t = time.perf_counter()
        query_vecs = qemb.colbert[0]
        head = [cid for cid, _ in ranked[: cfg.colbert_candidates]]
        stored = engine.catalog.colbert_by_chunk(engine.model_key, head, int(query_vecs.shape[1]))
        signals["colbert"] = colbert_scores(query_vecs, stored)
        fused = fuse(signals, signal_weights, fusion, cfg.rrf_k)
        ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        timings["colbert_ms"] = _ms(t)

    top = ranked[: max(k, candidates)]
    rows = engine.catalog.chunks([cid for cid, _ in top])
    top = [(cid, s) for cid, s in top if cid in rows]

    reranker = models.reranker if want_rerank else None

    def result(order: list[tuple[int, float]], rerank_scores: dict[int, float], window: int = 0) -> SearchResult:
        hits = []
        for cid, retrieval in order[:k]:
            row = rows[cid]
            rr = rerank_scores.get(cid)
            hits.append(Hit(
                chunk_id=cid, path=row.path, start_line=row.start_line, end_line=row.end_line,
                heading=list(row.heading), snippet=snippet(row.text, q, cfg.snippet_chars),
                score=round(rr if rr is not None else retrieval, 6), retrieval_score=round(retrieval, 6),
                rerank_score=None if rr is None else round(rr, 6), page=row.page, end_page=row.end_page,
                text=row.text,
            ))
        timings["total_ms"] = _ms(t_total)
        return SearchResult(
            query=q, hits=hits, timings=dict(timings),
            models={"embedder": models.embedder.model_id,
                    "reranker": reranker.model_id if reranker and rerank_scores else None},
            degraded=list(models.degraded), candidates=len(fused), reranked=len(rerank_scores),
            rerank_window=window, query_use=replace(use),
        )

    rerank_scores: dict[int, float] = {}
    window = 0
    if reranker is not None and top:
        check()
        if opts.on_retrieval is not None:
            opts.on_retrieval(result(top, {}))
        t = time.perf_counter()
        reranked = _rerank(engine, reranker, _rerank_query(reranker, q, cfg.rerank_max_tokens, use),
                           top[:candidates], rows, opts.deadline, check)
        rerank_scores, window = reranked.scores, reranked.window
        timings["rerank_ms"] = _ms(t)
        reranked_part = sorted((cs for cs in top if cs[0] in rerank_scores), key=lambda cs: -rerank_scores[cs[0]])
        top = reranked_part + [cs for cs in top if cs[0] not in rerank_scores]
    return result(top, rerank_scores, window)


# Seconds per unit of reranker input, per reranker, measured by earlier searches: a search
# with a deadline sizes even its first batch, and its window, by it instead of finding out
# after the deadline. The unit is a token of the query-passage pair for a reranker that says
# where its tokens fall (``token_offsets``), else a passage.
_RERANK_PACE: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
PAIR_EXTRA_TOKENS = 4  # <s> query </s></s> passage </s>
MIN_RERANK_QUERY_TOKENS = 32  # a long query's part the reranker reads, however wide the passage window
FIT_SHARE = 0.9  # of the time left that the window and each batch plan to use (the rest absorbs the pace's noise)


def _remember_pace(reranker: Any, pace: float) -> bool:
    """Keep ``pace`` for ``reranker``; False when it cannot be weakly referenced."""
    try:
        _RERANK_PACE[reranker] = pace
    except TypeError:
        return False
    return True


def prime_rerank_pace(reranker: Any, *lengths: int) -> float | None:
    """Score passages of each of ``lengths`` tokens (the window's limits), as many at a time
    as the reranker runs side by side, and remember the slowest pace, so the first search
    with a deadline sizes its window and batches by a measurement instead of overshooting
    while it takes one (short inputs cost a little more per token: ~1.4 ms against ~1.15 at
    352 tokens for the int8 bge-reranker-v2-m3 architecture on 2 cores). Each length runs
    once before it is timed: a converted model's first run of a shape builds its kernels,
    which made the pace ~3x too slow (int8 reranker on a 2-core AMX CPU: 3.3 ms per token
    on the first run against 1.15 after), and the first searches then reranked too few.
    Returns the pace (seconds per pair token, or per passage for a reranker without
    ``token_offsets``)."""
    query = "warm-up query"
    n = max(1, int(getattr(reranker, "parallel", 1)))
    offsets = getattr(reranker, "token_offsets", None)
    pace = 0.0
    for length in sorted(set(lengths)) or [1]:
        passage = " ".join(["the"] * max(1, length))  # one token per word in these vocabularies
        units = 1 if offsets is None else len(offsets(query)) + len(offsets(passage)) + PAIR_EXTRA_TOKENS
        reranker.score(query, [passage] * n)  # the shape's first run, not timed
        started = time.monotonic()
        reranker.score(query, [passage] * n)
        pace = max(pace, (time.monotonic() - started) / (n * units))
    return pace if _remember_pace(reranker, pace) else None


def fit_window(lengths: Sequence[int], query_tokens: int, budget: float, low: int, high: int) -> int:
    """The largest window in ``low..high`` tokens at which every passage (``lengths`` tokens
    each, read up to the window, plus the query and the pair's special tokens) fits in
    ``budget`` tokens; ``low`` when even that does not fit."""
    def cost(window: int) -> int:
        return sum(query_tokens + PAIR_EXTRA_TOKENS + min(n, window) for n in lengths)

    if cost(high) <= budget:
        return high
    while low < high:  # cost grows with the window: find the largest that fits
        mid = (low + high + 1) // 2
        if cost(mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


@dataclass
class Reranked:
    scores: dict[int, float]
    window: int  # the window that cut at least one reranked passage; 0 when every one was read whole


def _rerank(
    engine: Engine, reranker: Any, query: str, head: list[tuple[int, float]], rows: Mapping[int, Any],
    deadline: float | None, check: Callable[[], None],
) -> Reranked:
    """Rerank ``head`` in retrieval order, each long passage by its best window.

    With a deadline and a known pace, the window first shrinks (from
    ``search.rerank_max_tokens`` down to ``search.rerank_min_tokens``) until every candidate
    fits in the time left, one window for all so their scores compare; then batches go in
    retrieval order, each sized by the measured pace to end within 90% of the time left,
    stopping before one that would not. Without a pace yet, one round is measured first at
    the full window. A round is as many passages as the reranker runs side by side (one per
    stream on OpenVINO); batches hold at most 4 passages or one round."""
    scores: dict[int, float] = {}
    try:
        pace: float | None = _RERANK_PACE.get(reranker)
    except TypeError:  # not weak-referenceable: measure within this search only
        pace = None
    cfg = engine.config.search
    window = cfg.rerank_max_tokens
    offsets = getattr(reranker, "token_offsets", None)
    spans: dict[int, list[tuple[int, int]]] = {}
    query_tokens = 0
    if offsets is not None:
        spans = {cid: offsets(rows[cid].text) for cid, _ in head}
        query_tokens = len(offsets(query))
        if deadline is not None and pace is not None:
            budget = FIT_SHARE * (deadline - time.monotonic()) / pace
            window = fit_window([len(spans[cid]) for cid, _ in head], query_tokens, budget, cfg.rerank_floor, window)

    def units(cid: int) -> int:
        if offsets is None:
            return 1
        return query_tokens + PAIR_EXTRA_TOKENS + min(len(spans[cid]), window)

    def text(cid: int) -> str:
        full = rows[cid].text
        if offsets is None:
            return str(full)
        a, b = best_window(query, full, window, lambda _text: spans[cid])
        return str(full[a:b])

    per_round = max(1, int(getattr(reranker, "parallel", 1)))
    # With a deadline, no indexing batch may start between two rerank batches (it would
    # make the search late by up to a batch: ~0.5 s on a 2-core CPU).
    with engine.gate.hold(reranker) if deadline is not None else contextlib.nullcontext():
        i = 0
        while i < len(head):
            check()
            n = len(head) - i
            if deadline is not None:
                if pace is None:
                    n = min(n, per_round)
                else:
                    left = FIT_SHARE * (deadline - time.monotonic())
                    total, n = 0, 0
                    for cid, _ in head[i : i + max(4, per_round)]:
                        total += units(cid)
                        if total * pace > left:
                            break
                        n += 1
                    if n < 1:
                        break
            part = head[i : i + n]
            with engine.gate.foreground(reranker):
                started = time.monotonic()
                values = reranker.score(query, [text(cid) for cid, _ in part])
                took = (time.monotonic() - started) / sum(units(cid) for cid, _ in part)
            pace = took if pace is None else 0.5 * pace + 0.5 * took
            _remember_pace(reranker, pace)
            scores.update({cid: v for (cid, _), v in zip(part, values, strict=True)})
            i += n
    cut = offsets is not None and any(len(spans[cid]) > window for cid in scores)
    return Reranked(scores, window if cut else 0)


def rank_documents(hits: Sequence[Hit]) -> list[str]:
    """Paths in order of their best chunk (for callers that want documents, not chunks)."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h.path, None)
    return list(seen)
