"""The reranker under a deadline: the part of the query it reads, one passage window for
every candidate that fits the time left, and batches sized by the measured pace.

``RerankPace`` (one per engine, ``Engine.rerank_pace``) keeps the reranker's ``Pace`` (seconds
a batch plus seconds per pair token) across searches, so a search with a deadline sizes even
its first batch by it;
``rerank`` scores the candidates in retrieval order and stops before a batch that would end
late. How the pace and the window were measured and chosen: docs/performance.md, "The rerank
pace"; docs/architecture.md, "The daemon".
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ragd.models.base import Reranker
from ragd.query import QueryUse, rerank_part
from ragd.window import best_window

PAIR_EXTRA_TOKENS = 4  # <s> query </s></s> passage </s>
MIN_RERANK_QUERY_TOKENS = 32  # a long query's part the reranker reads, however wide the passage window
FIT_SHARE = 0.9  # of the time left that the window and each batch plan to use (the rest absorbs the pace's noise)
STEP_SHARE = 2 / 3  # of that, what a batch beyond one round plans to use: a long batch is not the last step
BATCH_PASSAGES = 4  # passages a batch holds at most, unless one round (``Reranker.parallel``) holds more
PACE_WEIGHT = 0.5  # of the pace so far against the newest batch's, in the running pace
PRIME_QUERY = "warm-up query"


class Gate(Protocol):
    """What reranking needs of ``engine.ModelGate``: searches first, indexing held out."""

    def hold(self, model: Reranker) -> contextlib.AbstractContextManager[None]: ...

    def foreground(self, model: Reranker) -> contextlib.AbstractContextManager[None]: ...


@dataclass(frozen=True)
class Pace:
    """What a rerank batch takes: ``batch`` seconds whatever it holds (a pass's fixed work,
    such as reading the weights of the int8 reranker's scored-row branch) plus ``token``
    seconds per pair token. A single pair then costs more per token than a full batch."""

    batch: float
    token: float

    def seconds(self, tokens: int, batches: int = 1) -> float:
        return batches * self.batch + tokens * self.token

    def scaled(self, factor: float) -> Pace:
        return Pace(self.batch * factor, self.token * factor)


def fit_pace(points: Sequence[tuple[int, float]]) -> Pace:
    """The pace through measured batches (pair tokens, seconds): a least-squares line, scaled
    up until no batch took longer than it says; all per token when the line has no sensible
    intercept (one point, or noise)."""
    tokens = np.array([t for t, _ in points], dtype=np.float64)
    seconds = np.array([s for _, s in points], dtype=np.float64)
    per_token = Pace(0.0, float(np.max(seconds / tokens)))
    if len(set(tokens.tolist())) < 2:
        return per_token
    slope, intercept = np.polyfit(tokens, seconds, 1)
    if slope <= 0 or intercept < 0:
        return per_token
    line = Pace(float(intercept), float(slope))
    return line.scaled(max(1.0, float(np.max(seconds / (intercept + slope * tokens)))))


def measure_pace(reranker: Reranker, *lengths: int, batch: int = BATCH_PASSAGES) -> Pace:
    """``reranker``'s ``Pace``: one round of passages of each of ``lengths`` tokens, and a
    full batch (``batch`` passages, or one round if that holds more) at the shortest. Each
    shape runs once untimed first, since a converted model's first run of a shape builds its
    kernels."""
    n = max(1, reranker.parallel)
    sizes = sorted(set(lengths)) or [1]
    shapes = [(n, length) for length in sizes] + ([(batch, sizes[0])] if batch > n else [])
    points = []
    for pairs, length in shapes:
        passage = " ".join(["the"] * max(1, length))  # one token per word in these vocabularies
        units = len(reranker.token_offsets(PRIME_QUERY)) + len(reranker.token_offsets(passage)) + PAIR_EXTRA_TOKENS
        reranker.score(PRIME_QUERY, [passage] * pairs)  # the shape's first run, not timed
        started = time.monotonic()
        reranker.score(PRIME_QUERY, [passage] * pairs)
        points.append((pairs * units, time.monotonic() - started))
    return fit_pace(points)


class RerankPace:
    """The ``Pace`` of an engine's reranker (``reranker()``), measured by ``prime`` and kept
    current by every batch a search reranks. ``widest`` and ``narrowest``
    are the passage windows ``prime`` measures (``search.rerank_max_tokens``, ``rerank_floor``)."""

    def __init__(self, reranker: Callable[[], Reranker | None], widest: int, narrowest: int) -> None:
        self._reranker = reranker
        self.widest, self.narrowest = widest, narrowest
        self._known: tuple[Reranker, Pace] | None = None  # replaced whole: readers never see half of it

    def prime(self, *, widest: bool = True) -> Pace | None:
        """Measure the engine's reranker while nobody waits (None without a reranker), at the
        narrowest window and, unless ``widest`` is False, the widest; the first search with a
        deadline then sizes its window and batches by it instead of overshooting while it measures."""
        reranker = self._reranker()
        if reranker is None:
            return None
        lengths = (self.widest, self.narrowest) if widest else (self.narrowest,)
        pace = measure_pace(reranker, *lengths)
        self.remember(reranker, pace)
        return pace

    def estimate(self, reranker: Reranker) -> Pace | None:
        """The pace known for ``reranker``; None before it was measured."""
        known = self._known
        return known[1] if known is not None and known[0] is reranker else None

    def remember(self, reranker: Reranker, pace: Pace) -> None:
        self._known = (reranker, pace)

    @staticmethod
    def updated(pace: Pace | None, tokens: int, seconds: float) -> Pace:
        """The running pace after a batch of ``tokens`` pair tokens took ``seconds``: its
        shape kept, its speed moved towards the batch's (all per token without a pace yet)."""
        if pace is None or pace.seconds(tokens) <= 0:
            return Pace(0.0, seconds / max(1, tokens))
        return pace.scaled(PACE_WEIGHT + (1 - PACE_WEIGHT) * seconds / pace.seconds(tokens))


def rerank_query(reranker: Reranker, query: str, window: int, use: QueryUse) -> str:
    """The part of the query the reranker reads: all of it when it fits beside a passage
    window of ``window`` tokens in the reranker's input, else its start."""
    limit = reranker.max_length
    if not limit:
        return query
    spans = reranker.token_offsets(query)
    room = max(MIN_RERANK_QUERY_TOKENS, limit - window - PAIR_EXTRA_TOKENS)
    use.rerank_tokens = min(len(spans), room)
    return rerank_part(query, spans, room)


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


def _batch(units: Sequence[int], per_round: int, pace: Pace | None, deadline: float | None) -> int:
    """How many of the next candidates (``units``: their pair tokens) one batch scores; 0
    when not even one would end within ``FIT_SHARE`` of the time left. Beyond one round a
    batch plans to end within ``STEP_SHARE`` of that, so one slow batch cannot overrun the
    deadline by much and the next is sized by the pace it measured."""
    if deadline is None:
        return len(units)
    if pace is None:  # one round, measured
        return min(len(units), per_round)
    left = FIT_SHARE * (deadline - time.monotonic())
    total, n = 0, 0
    for u in units[: max(BATCH_PASSAGES, per_round)]:
        total += u
        if pace.seconds(total) > (left if n < per_round else STEP_SHARE * left):
            break
        n += 1
    return n


def rerank(
    reranker: Reranker, query: str, head: Sequence[tuple[int, float]], texts: Mapping[int, str], *,
    pace: RerankPace, gate: Gate, widest: int, narrowest: int, deadline: float | None = None,
    check: Callable[[], None] = lambda: None,
) -> Reranked:
    """Rerank ``head`` (chunk id, retrieval score) in retrieval order, each long passage by
    its best window of at most ``widest`` tokens.

    With a deadline and a known pace, the window first shrinks (down to ``narrowest``) until
    every candidate fits in the time left, one window for all so their scores compare; then
    batches go in retrieval order, each sized by the pace to end within ``FIT_SHARE`` of the
    time left, stopping before one that would not. Without a pace yet, one round is measured
    first at the widest window. With a deadline the models are held (``gate.hold``): no
    indexing batch starts between two rerank batches. ``check`` runs before each batch."""
    scores: dict[int, float] = {}
    known = pace.estimate(reranker)
    spans = {cid: reranker.token_offsets(texts[cid]) for cid, _ in head}
    query_tokens = len(reranker.token_offsets(query))
    window = widest
    per_round = max(1, reranker.parallel)
    if deadline is not None and known is not None:
        batches = math.ceil(len(head) / max(BATCH_PASSAGES, per_round))
        budget = (FIT_SHARE * (deadline - time.monotonic()) - known.seconds(0, batches)) / max(known.token, 1e-9)
        window = fit_window([len(spans[cid]) for cid, _ in head], query_tokens, budget, narrowest, window)
    units = [query_tokens + PAIR_EXTRA_TOKENS + min(len(spans[cid]), window) for cid, _ in head]

    def text(cid: int) -> str:
        a, b = best_window(query, texts[cid], window, lambda _text: spans[cid])
        return texts[cid][a:b]

    with gate.hold(reranker) if deadline is not None else contextlib.nullcontext():
        i = 0
        while i < len(head):
            check()
            n = _batch(units[i:], per_round, known, deadline)
            if n < 1:
                break
            part = head[i : i + n]
            with gate.foreground(reranker):
                started = time.monotonic()
                values = reranker.score(query, [text(cid) for cid, _ in part])
                took = time.monotonic() - started
            known = RerankPace.updated(known, sum(units[i : i + n]), took)
            pace.remember(reranker, known)
            scores.update({cid: v for (cid, _), v in zip(part, values, strict=True)})
            i += n
    cut = any(len(spans[cid]) > window for cid in scores)
    return Reranked(scores, window if cut else 0)
