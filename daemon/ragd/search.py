"""A search, stage by stage (``search`` lists them in order): prepare the request, load the
models, embed the query (full-text retrieval runs beside it), restrict to the chunks the
filters allow, dense retrieval (sparse beside it), leave out what the request excludes, fuse,
rescore with ColBERT vectors, read the rows, rerank the head under the deadline
(``ragd.rerank``), and build the hits with snippets, scores and per-stage timings.

``mode`` picks the retrievers: ``hybrid`` (every signal the embedder has, plus full-text),
``dense``, ``sparse`` (BGE-M3 lexical weights) or ``lexical`` (BM25, works with any
embedder; the query is not embedded). Fusion is a weighted sum of min-max normalised
scores or weighted reciprocal rank fusion (``search.fusion``), per-signal weights from the
config or the request. With ``models.multi_vector`` on, hybrid mode adds a fourth signal,
``colbert``: FlagEmbedding's ColBERT score of the top ``search.colbert_candidates`` fused
candidates, fused with the others (candidates without stored vectors get no colbert part)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ragd.engine import Engine
from ragd.errors import CancelledError, IndexEmptyError, NotFoundError, UsageError
from ragd.filters import Filters, matches, normalise_filters
from ragd.lexical import terms as query_terms
from ragd.models.base import Embeddings, FloatArray, Reranker, SparseWeights
from ragd.query import QueryUse, select_terms
from ragd.query import embed as embed_query
from ragd.requests import FUSIONS, MODES, RETRIEVERS, SIGNALS, check_counts, check_query
from ragd.rerank import Reranked, rerank, rerank_query
from ragd.store.base import EVERY_CHUNK, ChunkFilter, DenseStore, SparseStore
from ragd.store.catalog import Catalog, ChunkRow
from ragd.store.codec import decode as decode_sparse
from ragd.store.postings import LexicalIndex

if TYPE_CHECKING:
    from ragd.config import SearchConfig

EMBEDDED_SIGNALS = ("dense", "sparse", "colbert")  # the signals that need the query embedded
LexicalFound = tuple[list[tuple[int, float]], float]  # chunk ids with BM25 scores, the stage's ms
SparseFound = tuple[list[tuple[int, float]], float]  # chunk ids with lexical matching scores, the stage's ms


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
    origin: str = ""  # another daemon's chunk in a shared collection (chunk_id < 0): its origin; "" for ours


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


class SearchCancelled(CancelledError):
    """The caller went away or its deadline passed before the answer was ready."""


@dataclass(eq=False)
class SearchState:
    """One search on its way through the stages: the request with the config's defaults
    applied (``prepare``), then what each stage found. ``check`` is the cancellation point
    between stages."""

    engine: Engine
    opts: SearchOptions
    query: str  # validated; a search by example's is its chunk's text
    k: int
    candidates: int
    pool: int  # how many candidates each retriever returns
    rerank: bool
    mode: str
    fusion: str
    weights: dict[str, float]  # per signal: the request's, else the config's
    prefix: str | None
    filters: Filters | None
    like: ChunkRow | None = None  # the chunk a search by example is like
    use: QueryUse = field(default_factory=QueryUse)
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    # What the stages find, in their order:
    signal_weights: dict[str, float] = field(default_factory=dict)  # the signals that run
    vectors: DenseStore | None = None
    reranker: Reranker | None = None  # None when this search does not rerank
    bm25: LexicalIndex | None = None  # the full-text mirror; None asks FTS5
    embedded: Embeddings | None = None
    where: ChunkFilter = EVERY_CHUNK  # the chunk ids a hit may have, for the vector store
    allowed_set: frozenset[int] | None = None
    signals: dict[str, dict[int, float]] = field(default_factory=dict)  # signal -> chunk id -> score
    fused: dict[int, float] = field(default_factory=dict)
    ranked: list[tuple[int, float]] = field(default_factory=list)  # fused, best first
    top: list[tuple[int, float]] = field(default_factory=list)  # the hits so far, in order, rows read
    rows: dict[int, ChunkRow] = field(default_factory=dict)
    reranked: Reranked = field(default_factory=lambda: Reranked({}, 0))
    notes: list[str] = field(default_factory=list)  # what the result misses and why (with ``degraded``)

    @property
    def settings(self) -> SearchConfig:
        return self.engine.config.search

    @property
    def embeds(self) -> bool:
        return any(name in self.signal_weights for name in EMBEDDED_SIGNALS)

    def check(self) -> None:
        if self.opts.cancelled is not None and self.opts.cancelled():
            raise SearchCancelled("the search was cancelled")

    def allows(self, chunk_id: int) -> bool:
        """Whether a hit may have this id; another daemon's (negative: a shared collection
        applied the filters to its stored fields) always may."""
        return self.allowed_set is None or chunk_id < 0 or chunk_id in self.allowed_set


def search(engine: Engine, query: str, options: SearchOptions | None = None) -> SearchResult:
    """Run one search through its stages, in order."""
    with contextlib.ExitStack() as held:  # a deadline search's hold on the models, until it returns
        s = prepare(engine, query, options or SearchOptions())
        load(s, held)
        lexical = start_lexical(s)  # beside the query embedding
        embed(s)
        restrict(s)
        sparse = start_sparse(s)  # beside the dense stage
        retrieve_dense(s)
        finish_sparse(s, sparse)
        finish_lexical(s, lexical)
        leave_out(s)
        fuse_signals(s)
        rescore_colbert(s)
        read_rows(s)
        rerank_head(s)
        return build_result(s)


# -- the stages -----------------------------------------------------------------------
def prepare(engine: Engine, query: str, opts: SearchOptions) -> SearchState:
    """The request with the config's defaults applied, the query validated (a search by
    example's is its chunk's text); UsageError or NotFoundError for a bad request."""
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
    return SearchState(
        engine=engine, opts=opts, query=q, k=k, candidates=candidates, pool=max(cfg.retrieve, candidates, k),
        rerank=cfg.rerank if opts.rerank is None else opts.rerank,
        mode=opts.mode or cfg.mode, fusion=opts.fusion or cfg.fusion,
        weights={"dense": cfg.dense_weight, "sparse": cfg.sparse_weight, "lexical": cfg.lexical_weight,
                 "colbert": cfg.colbert_weight, **(opts.weights or {})},
        prefix=normalise_prefix(opts.path_prefix),
        filters=normalise_filters(opts.filters) if opts.filters is not None else None,
        like=like, use=use,
    )


def load(s: SearchState, held: contextlib.ExitStack) -> None:
    """The models and vectors (loaded on first use: ``load_ms``) and the signals that run.
    A search that reranks under a deadline holds the models from here (``held``), so that no
    indexing batch starts between its query embedding and its reranking."""
    engine = s.engine
    if engine.catalog.count_chunks() == 0 and not engine.shared_chunks():
        raise IndexEmptyError("the index is empty: run `ragd index PATH` first")
    t = time.perf_counter()
    models = engine.models
    s.vectors = engine.vectors
    s.timings["load_ms"] = _ms(t)
    s.reranker = models.reranker if s.rerank else None
    if s.opts.deadline is not None and s.reranker is not None:
        held.enter_context(engine.gate.hold(s.reranker))
    s.signal_weights = resolve_signals(s.mode, s.weights, bool(models.embedder.has_sparse), s.fusion,
                                       bool(models.embedder.multi_vector))


def start_lexical(s: SearchState) -> concurrent.futures.Future[LexicalFound] | None:
    """Full-text retrieval: the in-memory mirror is fetched here (built on first use through
    this engine's own connection); when the query is embedded, BM25 starts now on a side
    thread (``Engine.beside``), else it runs in line in ``finish_lexical``."""
    if "lexical" not in s.signal_weights:
        return None
    s.bm25 = s.engine.lexical if s.prefix is None and s.engine.mirrors else None
    return s.engine.beside(functools.partial(lexical_search, s)) if s.embeds else None


def lexical_search(s: SearchState, catalog: Catalog) -> LexicalFound:
    """BM25's top ``pool`` chunks over the query's rarest terms, from the mirror, or from
    FTS5 through ``catalog`` (a path prefix, no mirrors); with the stage's time."""
    started = time.perf_counter()
    every = query_terms(s.query)
    if s.bm25 is not None:
        chosen = select_terms(every, s.bm25.document_frequency)
        found = s.bm25.search(chosen, s.pool)
    else:
        chosen = select_terms(every, catalog.lexical_document_frequency)
        found = catalog.lexical_search(s.query, s.pool, s.prefix, terms=chosen)
    s.use.terms, s.use.terms_used = len(set(every)), len(chosen)
    return found, _ms(started)


def embed(s: SearchState) -> None:
    """The query's embedding (or, searching by example, the chunk's stored one: nothing is
    embedded), when a signal needs it; then the first cancellation point."""
    if s.embeds:
        t = time.perf_counter()
        # A query is a few tokens: it runs alongside an indexing batch instead of waiting for
        # it; the long reranker calls use the gate.
        s.embedded = (_stored_query(s.engine, s.like.id) if s.like is not None
                      else embed_query(s.engine.models.embedder, s.query, s.use))
        s.timings["embed_ms"] = _ms(t)
    s.check()


def restrict(s: SearchState) -> None:
    """The chunk ids a hit may have: the path prefix, the filters, and never a suspended root's;
    the filters also go to the store as they are (``scope``), for other daemons' rows in a
    shared collection, and what it cannot apply to them becomes a note."""
    scope = _with_prefix(s.filters, s.prefix)
    hidden = s.engine.catalog.suspended_roots()
    allowed = _allowed_ids(s.engine, s.prefix, s.filters, hidden) if scope is not None or hidden else None
    s.where = ChunkFilter(allowed, scope)
    s.allowed_set = s.where.id_set
    if scope is not None and s.embeds:
        note = s.engine.store.foreign_note(s.where)
        if note:
            s.notes.append(note)


def start_sparse(s: SearchState) -> concurrent.futures.Future[SparseFound] | None:
    """Learned-sparse retrieval on a side thread, beside the dense stage. The sparse store
    (built on first use) is fetched here, through this engine's connection: the side thread
    touches only its own."""
    if s.embedded is None or s.embedded.sparse is None or "sparse" not in s.signal_weights:
        return None
    store = s.engine.sparse
    if store is None:
        return None
    return s.engine.beside(functools.partial(sparse_search, s, store, s.embedded.sparse[0]))


def sparse_search(s: SearchState, store: SparseStore, weights: SparseWeights, catalog: Catalog) -> SparseFound:
    """The chunks of the top ``pool`` matches by lexical matching score within the allowed
    ids, and the stage's time."""
    started = time.perf_counter()
    return store.search_chunks(weights, s.pool, s.where, catalog), _ms(started)


def retrieve_dense(s: SearchState) -> None:
    """The dense store's top ``pool`` chunks by cosine, within the allowed ids."""
    if s.embedded is None or s.vectors is None or "dense" not in s.signal_weights:
        return
    t = time.perf_counter()
    s.signals["dense"] = dict(s.vectors.search(s.embedded.dense[0], s.pool, s.where))
    s.timings["dense_ms"] = _ms(t)


def finish_sparse(s: SearchState, job: concurrent.futures.Future[SparseFound] | None) -> None:
    """The sparse stage's chunks (every chunk of each hash found), within the allowed ids."""
    if job is None:
        return
    found, s.timings["sparse_ms"] = job.result()
    s.signals["sparse"] = {cid: score for cid, score in found if s.allows(cid)}


def finish_lexical(
    s: SearchState, job: concurrent.futures.Future[LexicalFound] | None
) -> None:
    """The full-text stage's chunks (from its side thread, or run now), within the allowed ids."""
    if "lexical" not in s.signal_weights:
        return
    found, s.timings["lexical_ms"] = job.result() if job is not None else lexical_search(s, s.engine.catalog)
    s.signals["lexical"] = {c: v for c, v in found if s.allows(c)}


def leave_out(s: SearchState) -> None:
    """Drop what the request excludes from every signal, before fusion (``_excluded``)."""
    excluded = _excluded(s.engine, s.like, s.opts)
    if excluded:
        s.signals = {name: {c: v for c, v in found.items() if c not in excluded} for name, found in s.signals.items()}


def fuse_signals(s: SearchState) -> None:
    """One score per candidate (``fuse``) and the candidates ranked by it, ties by chunk id."""
    t = time.perf_counter()
    _fuse_and_rank(s)
    s.timings["fuse_ms"] = _ms(t)


def rescore_colbert(s: SearchState) -> None:
    """With multi-vectors: the ColBERT score of the top ``search.colbert_candidates`` fused
    candidates becomes a signal, and every signal is fused again (it reorders, never adds)."""
    if "colbert" not in s.signal_weights or s.embedded is None or s.embedded.colbert is None or not s.ranked:
        return
    s.check()
    t = time.perf_counter()
    query_vecs = s.embedded.colbert[0]
    head = [cid for cid, _ in s.ranked[: s.settings.colbert_candidates]]
    stored = s.engine.catalog.colbert_by_chunk(s.engine.model_key, head, int(query_vecs.shape[1]))
    s.signals["colbert"] = colbert_scores(query_vecs, stored)
    _fuse_and_rank(s)
    s.timings["colbert_ms"] = _ms(t)


def _fuse_and_rank(s: SearchState) -> None:
    s.fused = fuse(s.signals, s.signal_weights, s.fusion, s.settings.rrf_k)
    s.ranked = sorted(s.fused.items(), key=lambda kv: (-kv[1], kv[0]))


def read_rows(s: SearchState) -> None:
    """The rows of the top ``max(k, candidates)``, read through the main connection at the
    end, so a hit is never a chunk it cannot show (a side connection may see a later commit)."""
    top = s.ranked[: max(s.k, s.candidates)]
    s.rows = s.engine.catalog.chunks([cid for cid, _ in top if cid > 0])
    foreign = [cid for cid, _ in top if cid < 0]
    if foreign:  # other daemons' chunks in a shared collection, from the fields stored with them
        s.rows.update(s.engine.store.foreign_rows(foreign))
    s.top = [(cid, score) for cid, score in top if cid in s.rows]


def rerank_head(s: SearchState) -> None:
    """The top ``candidates`` reranked (``ragd.rerank.rerank``: within the deadline, if any)
    and put first by their rerank score; the rest keep retrieval order. ``on_retrieval``
    gets the retrieval ranking first."""
    if s.reranker is None or not s.top:
        return
    s.check()
    if s.opts.on_retrieval is not None:
        s.opts.on_retrieval(build_result(s))
    cfg, t = s.settings, time.perf_counter()
    head = s.top[: s.candidates]
    s.reranked = rerank(
        s.reranker, rerank_query(s.reranker, s.query, cfg.rerank_max_tokens, s.use), head,
        {cid: s.rows[cid].text for cid, _ in head}, pace=s.engine.rerank_pace, gate=s.engine.gate,
        widest=cfg.rerank_max_tokens, narrowest=cfg.rerank_floor, deadline=s.opts.deadline, check=s.check,
    )
    scores = s.reranked.scores
    s.timings["rerank_ms"] = _ms(t)
    first = sorted((cs for cs in s.top if cs[0] in scores), key=lambda cs: -scores[cs[0]])
    s.top = first + [cs for cs in s.top if cs[0] not in scores]


def build_result(s: SearchState) -> SearchResult:
    """The first ``k`` of ``top`` as hits (a rerank score, where there is one, is the score),
    with the timings so far and ``total_ms``."""
    scores = s.reranked.scores
    hits = []
    for cid, retrieval in s.top[: s.k]:
        row = s.rows[cid]
        rr = scores.get(cid)
        hits.append(Hit(
            chunk_id=cid, path=row.path, start_line=row.start_line, end_line=row.end_line,
            heading=list(row.heading), snippet=snippet(row.text, s.query, s.settings.snippet_chars),
            score=round(rr if rr is not None else retrieval, 6), retrieval_score=round(retrieval, 6),
            rerank_score=None if rr is None else round(rr, 6), page=row.page, end_page=row.end_page,
            text=row.text, origin=row.origin,
        ))
    s.timings["total_ms"] = _ms(s.started)
    models = s.engine.models
    return SearchResult(
        query=s.query, hits=hits, timings=dict(s.timings),
        models={"embedder": models.embedder.model_id,
                "reranker": s.reranker.model_id if s.reranker and scores else None},
        degraded=[*models.degraded, *s.notes], candidates=len(s.fused), reranked=len(scores),
        rerank_window=s.reranked.window, query_use=replace(s.use),
    )


# -- scoring ----------------------------------------------------------------------------
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


# -- helpers ----------------------------------------------------------------------------
def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


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
        f = _with_prefix(filters, prefix) or Filters()
        if not f.active:
            return np.array(engine.catalog.chunk_ids_outside_suspended(), dtype=np.int64)
        return np.array(engine.catalog.chunk_ids_where(lambda p, r, m: r not in hidden and matches(f, p, r, m)),
                        dtype=np.int64)
    if filters is not None and filters.active:
        scope = _with_prefix(filters, prefix)
        assert scope is not None
        return np.array(engine.catalog.chunk_ids_where(lambda p, r, m: matches(scope, p, r, m)), dtype=np.int64)
    if prefix is None:
        return None
    return np.array(engine.catalog.chunk_ids_under(prefix), dtype=np.int64)


def _with_prefix(filters: Filters | None, prefix: str | None) -> Filters | None:
    """The request's filters with the path prefix among their prefixes; None when nothing filters."""
    f = filters if filters is not None and filters.active else Filters()
    if prefix is not None:
        f = replace(f, path_prefixes=(*f.path_prefixes, prefix))
    return f if f.active else None


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


def _excluded(engine: Engine, like: ChunkRow | None, opts: SearchOptions) -> set[int]:
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


def rank_documents(hits: Sequence[Hit]) -> list[str]:
    """Paths in order of their best chunk (for callers that want documents, not chunks)."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h.path, None)
    return list(seen)
