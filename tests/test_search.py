"""Search over a small indexed folder with the fake models: stages, filters, errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ragd.engine import Engine
from ragd.errors import IndexEmptyError, UsageError
from ragd.indexer import index_paths
from ragd.search import SearchOptions, fuse, normalise, search, snippet

pytestmark = pytest.mark.models("fake")
BOTH_STORES = pytest.mark.stores("faiss", "milvus")  # the vector-store backends this test runs on

DOCS = {
    "glaciers.md": "# Glaciers\n\nIce cores from glaciers record the climate of past centuries.\n",
    "bread.txt": "Sourdough bread needs a starter made of flour and water.\n",
    "rivers/delta.txt": "River deltas form where rivers deposit sediment into the sea.\n",
    "rivers/nile.md": "# Nile\n\nThe Nile delta is one of the largest river deltas.\n",
}


@pytest.fixture
def indexed(index_tree: Any) -> Any:
    return index_tree(DOCS)


@BOTH_STORES
def test_search_returns_hits_with_every_field(indexed: Any) -> None:
    engine, root = indexed
    result = search(engine, "sourdough bread starter", SearchOptions(k=3, candidates=4))
    assert len(result.hits) == 3
    for hit in result.hits:
        assert Path(hit.path).is_relative_to(root)
        assert hit.start_line >= 1 and hit.end_line >= hit.start_line
        assert hit.rerank_score is not None and hit.score == hit.rerank_score
        assert hit.snippet
    assert result.reranked == 4 and result.rerank_window == 0  # short files, read whole
    scores = [h.rerank_score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert {"embed_ms", "dense_ms", "sparse_ms", "fuse_ms", "rerank_ms", "total_ms"} <= set(result.timings)
    assert result.models["embedder"] and result.models["reranker"]
    data = result.to_json()
    assert set(data["hits"][0]) >= {"path", "start_line", "end_line", "heading", "snippet", "score",
                                    "retrieval_score", "rerank_score"}
    assert data["rerank_window"] == result.rerank_window


@BOTH_STORES
def test_exact_text_query_finds_its_file_with_sparse(indexed: Any) -> None:
    """A query made of a file's own words finds it through the sparse weights alone."""
    engine, root = indexed
    result = search(engine, "Sourdough bread needs a starter made of flour and water.", SearchOptions(rerank=False))
    assert result.hits[0].path == str(root / "bread.txt")
    assert result.hits[0].rerank_score is None and result.reranked == 0


@BOTH_STORES
def test_path_prefix_filters(indexed: Any) -> None:
    engine, root = indexed
    result = search(engine, "delta", SearchOptions(k=10, rerank=False, path_prefix=str(root / "rivers")))
    assert result.hits and all(h.path.startswith(str(root / "rivers")) for h in result.hits)
    assert len(result.hits) == 2
    none = search(engine, "delta", SearchOptions(rerank=False, path_prefix=str(root / "nowhere")))
    assert none.hits == []


@BOTH_STORES
def test_heading_path_is_reported(indexed: Any) -> None:
    engine, _root = indexed
    result = search(engine, "Nile delta", SearchOptions(k=10, rerank=False))
    nile = [h for h in result.hits if h.path.endswith("nile.md")]
    assert nile and nile[0].heading == ["Nile"]


@pytest.mark.parametrize(
    ("query", "k", "message"),
    [("   ", 5, "query is empty"), ("x", 0, "k must be"), ("x", 100000, "k must be")],
)
def test_bad_requests(indexed: Any, query: str, k: int, message: str) -> None:
    engine, _ = indexed
    with pytest.raises(UsageError, match=message):
        search(engine, query, SearchOptions(k=k))


@BOTH_STORES
def test_empty_index(engine_factory: Any) -> None:
    engine = engine_factory()
    with pytest.raises(IndexEmptyError, match="index is empty"):
        search(engine, "anything")


def test_fusion_normalises_and_weights() -> None:
    assert normalise({1: 2.0, 2: 4.0}) == {1: 0.0, 2: 1.0}
    fused = fuse({"dense": {1: 0.9, 2: 0.5}, "sparse": {2: 10.0, 3: 5.0}}, {"dense": 1.0, "sparse": 0.5})
    assert fused == {1: 1.0, 2: 0.5, 3: 0.0}
    # One live signal keeps its raw scores (cosines stay cosines).
    assert fuse({"dense": {1: 0.9}, "sparse": {}}, {"dense": 1.0, "sparse": 0.3}) == {1: 0.9}


def test_snippet_centres_on_query_words() -> None:
    text = "intro " * 100 + "the answer is forty-two " + "outro " * 100
    s = snippet(text, "answer", 80)
    assert "answer" in s and s.startswith("…") and s.endswith("…") and len(s) <= 82


class _SlowReranker:
    """Takes ``per_token`` seconds per token of each query-passage pair (the query's and the
    passage's words plus 4 special tokens), like a CPU cross-encoder; records what it read.
    Implements the whole ``Reranker`` protocol, with no limit on its input (``max_length`` 0)."""

    model_id = "slow"
    max_length = 0
    parallel = 1
    schedules_itself = False

    def __init__(self, per_token: float) -> None:
        self.per_token = per_token
        self.calls: list[int] = []
        self.read: list[str] = []
        self.notes: list[str] = []

    def hold(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        import time

        self.calls.append(len(passages))
        self.read.extend(passages)
        time.sleep(self.per_token * sum(self.pair_tokens(query, p) for p in passages))
        return [1.0] * len(passages)

    def pair_tokens(self, query: str, passage: str) -> int:
        return len(self.token_offsets(query)) + len(self.token_offsets(passage)) + 4

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)]


def _rerank(
    reranker: Any, head: list[tuple[int, float]], texts: dict[int, str], deadline: float | None, *,
    pace: Any = None, gate: Any = None, query: str = "q", widest: int = 352, narrowest: int = 128,
) -> Any:
    """``ragd.rerank.rerank`` as a search with the default window settings calls it."""
    from ragd.engine import ModelGate
    from ragd.rerank import RerankPace, rerank

    pace = pace if pace is not None else RerankPace(lambda: reranker, widest, narrowest)
    return rerank(reranker, query, head, texts, pace=pace, gate=gate or ModelGate(), widest=widest,
                  narrowest=narrowest, deadline=deadline)


SHORT = {i: f"passage number {i}" for i in range(20)}


def test_rerank_deadline_is_met_even_on_the_first_search() -> None:
    """A deadline shorter than one batch: the first search measures one passage first, later
    ones size their batches by the measured pace; both return on time."""
    import time

    from ragd.rerank import RerankPace

    reranker = _SlowReranker(0.1 / 8)  # "q" + "passage number i" + 4: 0.1 s a passage
    pace = RerankPace(lambda: reranker, 352, 128)
    head = [(i, 1.0) for i in range(20)]
    for _ in range(2):
        started = time.monotonic()
        reranked = _rerank(reranker, head, SHORT, started + 0.5, pace=pace)
        took = time.monotonic() - started
        assert took <= 0.55, took
        assert 3 <= len(reranked.scores) <= 5
        assert list(reranked.scores) == list(range(len(reranked.scores)))  # in retrieval order
        assert reranked.window == 0  # short passages, read whole
    assert reranker.calls[0] == 1 and max(reranker.calls) <= 4
    reranked = _rerank(reranker, head, SHORT, None, pace=pace)
    assert len(reranked.scores) == 20 and reranker.calls[-1] == 20


def test_primed_pace_keeps_the_first_deadline_search_on_time() -> None:
    """With the pace measured at start-up (as the daemon does), even the first search with a
    deadline sizes its batches and returns on time."""
    import time

    from ragd.rerank import RerankPace

    reranker = _SlowReranker(0.1 / 8)
    pace = RerankPace(lambda: reranker, 16, 4)
    primed = pace.prime()
    # one pair at each window, then a full batch at the narrowest, each shape once untimed
    assert primed is not None and reranker.calls == [1, 1, 1, 1, 4, 4]
    assert primed.seconds(8) >= 8 * reranker.per_token
    assert pace.estimate(reranker) == primed and pace.estimate(_SlowReranker(0.1)) is None
    head = [(i, 1.0) for i in range(20)]
    started = time.monotonic()
    reranked = _rerank(reranker, head, SHORT, started + 0.35, pace=pace)
    assert time.monotonic() - started <= 0.385
    assert 2 <= len(reranked.scores) <= 3 and reranker.calls[6] > 1


def test_a_long_batch_is_not_the_last_step_before_the_deadline() -> None:
    """Four passages would end within 90% of the time left, but a batch beyond one round plans
    to use two thirds of that, so the search scores them in steps, each sized by the time
    then left, and a batch that runs slow leaves time for the pace to catch up."""
    import time

    from ragd.rerank import Pace, RerankPace

    reranker = _SlowReranker(0.1 / 8)  # 0.1 s a passage
    pace = RerankPace(lambda: reranker, 352, 128)
    pace.remember(reranker, Pace(0.0, reranker.per_token))
    started = time.monotonic()
    reranked = _rerank(reranker, [(i, 1.0) for i in range(20)], SHORT, started + 0.55, pace=pace)
    assert time.monotonic() - started <= 0.55
    assert reranker.calls[0] == 3, reranker.calls  # 0.3 s of the 0.495 planned; 4 (0.4 s) before
    assert len(reranked.scores) == sum(reranker.calls) >= 4


class _ClockedReranker(_SlowReranker):
    """A reranker on a simulated clock (``ragd.rerank`` reads it through ``monotonic``): a
    batch takes ``per_batch`` seconds plus ``per_token`` a pair token, as a pass's fixed work
    (a GPU's launches, the int8 reranker's branch weights) makes a single pair cost more per
    token than a full batch."""

    def __init__(self, per_batch: float, per_token: float) -> None:
        super().__init__(per_token)
        self.per_batch, self.now = per_batch, 0.0

    def monotonic(self) -> float:
        return self.now

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        self.calls.append(len(passages))
        self.now += self.per_batch + self.per_token * sum(self.pair_tokens(query, p) for p in passages)
        return [1.0] * len(passages)


def test_fit_pace_splits_a_batch_into_its_fixed_part_and_its_tokens() -> None:
    from ragd.rerank import Pace, fit_pace

    pace = fit_pace([(100, 0.1), (400, 0.25)])
    assert pace.batch == pytest.approx(0.05) and pace.token == pytest.approx(0.0005)
    assert fit_pace([(100, 0.1), (400, 0.5)]) == Pace(0.0, 0.00125)  # no sensible intercept: per token
    assert fit_pace([(100, 0.1)]) == Pace(0.0, 0.001)
    noisy = [(100, 0.1), (250, 0.2), (400, 0.25)]  # the line is scaled to cover every batch
    assert all(fit_pace(noisy).seconds(t) >= s - 1e-12 for t, s in noisy)


def test_the_pace_keeps_a_batch_s_fixed_cost_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where each batch costs a fixed 50 ms besides its tokens, the primed pace says so: the
    first search with a deadline reads all 20 passages whole in time, instead of narrowing
    their window by a per-token pace taken from single pairs (that pace overstates a batch of
    four by half); a single pair is planned at its whole cost."""
    import types

    import ragd.rerank
    from ragd.rerank import RerankPace, _batch

    reranker = _ClockedReranker(0.05, 0.0001)
    monkeypatch.setattr(ragd.rerank, "time", types.SimpleNamespace(monotonic=reranker.monotonic))
    pace = RerankPace(lambda: reranker, 352, 128)
    primed = pace.prime()
    assert primed is not None
    assert primed.batch == pytest.approx(0.05) and primed.token == pytest.approx(0.0001)
    query = " ".join(f"w{i}" for i in range(30))
    texts = {i: " ".join(f"t{i}x{j}" for j in range(300)) for i in range(20)}
    head = [(i, 1.0) for i in range(20)]
    for _ in range(2):
        started = reranker.now
        reranked = _rerank(reranker, head, texts, started + 1.94, pace=pace, query=query)
        assert len(reranked.scores) == 20 and reranked.window == 0  # whole: 334 tokens a pair
        assert reranker.now - started <= 1.94
    pair = 30 + 128 + 4
    assert _batch([pair] * 4, 1, primed, reranker.now + (0.05 + 0.0001 * pair) / 0.9 + 1e-3) == 1
    assert _batch([pair] * 4, 1, primed, reranker.now + (0.05 + 0.0001 * pair) / 0.9 - 1e-3) == 0


class _CompilingReranker(_SlowReranker):
    """A _SlowReranker whose first run of each input shape (passages, longest pair) takes
    ``compile_s`` more, like a converted model building its kernels for a new shape."""

    def __init__(self, per_token: float, compile_s: float) -> None:
        super().__init__(per_token)
        self.compile_s = compile_s
        self.shapes: set[tuple[int, int]] = set()

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        import time

        shape = (len(passages), max(self.pair_tokens(query, p) for p in passages))
        if shape not in self.shapes:
            self.shapes.add(shape)
            time.sleep(self.compile_s)
        return super().score(query, passages)


def test_primed_pace_leaves_out_the_first_run_of_a_shape() -> None:
    """The pace the daemon measures at start-up is the model's steady one: a shape's first run
    (kernels being built) is not timed, so the first deadline searches do not size their
    batches by a pace three times too slow."""
    from ragd.rerank import measure_pace

    reranker = _CompilingReranker(0.005, compile_s=0.5)
    pace = measure_pace(reranker, 40, 10)
    # Timed with its first run, the 10-word pair (16 tokens with the query and the special
    # tokens) would take 0.58 s, not 0.08.
    assert 16 * reranker.per_token <= pace.seconds(16) < 1.5 * 16 * reranker.per_token, pace
    assert reranker.calls == [1, 1, 1, 1, 4, 4] and len(reranker.shapes) == 3


def test_the_engine_owns_the_rerank_pace_and_primes_it_from_the_config(indexed: Any) -> None:
    """``Engine.rerank_pace`` measures the engine's own reranker at ``search.rerank_max_tokens``
    and ``rerank_floor`` (a one-shot search: the floor only); the engine's readers share it,
    and an engine without a reranker has nothing to measure."""
    from ragd.models.base import LoadedModels
    from ragd.rerank import RerankPace

    engine, _ = indexed
    reranker = engine.models.reranker
    assert engine.rerank_pace.estimate(reranker) is None
    primed = engine.rerank_pace.prime()
    assert primed is not None and primed.token > 0 and engine.rerank_pace.estimate(reranker) == primed
    cfg = engine.config.search
    assert (engine.rerank_pace.widest, engine.rerank_pace.narrowest) == (cfg.rerank_max_tokens, cfg.rerank_floor)
    reader = engine.reader()
    try:
        assert reader.rerank_pace is engine.rerank_pace
    finally:
        reader.close()
    stub = _CompilingReranker(0.0, compile_s=0.0)
    RerankPace(lambda: stub, 40, 10).prime(widest=False)
    assert len(stub.shapes) == 2 and stub.calls == [1, 1, 4, 4]  # the narrowest window only
    with Engine(engine.config, LoadedModels(engine.models.embedder, None)) as plain:
        assert plain.rerank_pace.prime() is None


class _Sleep:
    """An inference request that takes ``seconds`` unless cancelled; notes when it started."""

    def __init__(self, seconds: float, starts: list[float] | None = None) -> None:
        import threading

        self.seconds, self.starts = seconds, starts
        self.cancelled = threading.Event()
        self.ends = 0.0

    def infer(self, inputs: object) -> None:
        self.start_async(inputs)
        self.wait()

    def start_async(self, inputs: object) -> None:
        import time

        if self.starts is not None:
            self.starts.append(time.monotonic())
        self.cancelled.clear()
        self.ends = time.monotonic() + self.seconds

    def wait(self) -> None:
        import time

        if self.cancelled.wait(max(0.0, self.ends - time.monotonic())):
            raise RuntimeError("Infer Request was canceled")

    def cancel(self) -> None:
        self.cancelled.set()

    def get_compiled_model(self) -> _Sleep:
        return self

    def create_infer_request(self) -> _Sleep:
        return _Sleep(self.seconds, self.starts)


class _ScheduledReranker(_SlowReranker):
    """Like the OpenVINO reranker: prepares its inputs outside the scheduler (10 ms), then
    runs them in one foreground request; ``hold`` is the scheduler's (or none at all)."""

    schedules_itself = True

    def __init__(self, per_token: float, scheduler: Any, holds: bool) -> None:
        super().__init__(per_token)
        self.scheduler, self.holds = scheduler, holds
        self.spans: list[tuple[float, float]] = []

    def hold(self) -> Any:
        import contextlib

        return self.scheduler.hold() if self.holds else contextlib.nullcontext()

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        import time

        time.sleep(0.01)
        q = len(self.token_offsets(query))
        seconds = self.per_token * sum(q + len(self.token_offsets(p)) + 4 for p in passages)
        started = time.monotonic()
        self.scheduler.run(_Sleep(seconds), {}, True)
        self.spans.append((started, time.monotonic()))
        return [1.0] * len(passages)


def test_a_deadline_search_keeps_indexing_batches_out_between_its_rerank_batches() -> None:
    """With a deadline, an indexing batch waiting for the scheduler does not get in between
    two rerank batches (it would make the search late by up to a batch); it runs after the
    reranking. Without the hold it does get in."""
    import threading
    import time

    from ragd.engine import ModelGate
    from ragd.models.openvino.scheduler import Scheduler
    from ragd.rerank import RerankPace

    gate = ModelGate()
    head = [(i, 1.0) for i in range(20)]
    crossed = []
    for holds in (True, False):
        scheduler = Scheduler(1)
        scheduler.RESERVE_S = 0.0
        reranker = _ScheduledReranker(0.1 / 8, scheduler, holds)
        pace = RerankPace(lambda reranker=reranker: reranker, 16, 16)
        pace.prime()
        reranker.spans.clear()
        indexing: list[float] = []
        stop = threading.Event()

        def writer(scheduler: Any = scheduler, indexing: list[float] = indexing, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                scheduler.run(_Sleep(0.03, indexing), {}, False)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        time.sleep(0.05)
        started = time.monotonic()
        reranked = _rerank(reranker, head, SHORT, started + 1.5, pace=pace, gate=gate)
        assert time.monotonic() - started <= 1.5 + (0 if holds else 0.5)
        time.sleep(0.1)
        stop.set()
        t.join(5)
        spans = reranker.spans
        assert len(spans) >= 3 and len(reranked.scores) >= 8
        crossed.append(sum(spans[0][1] < x < spans[-1][0] for x in indexing))
        assert indexing[-1] > spans[-1][1]  # indexing goes on after it
    assert crossed[0] == 0 and crossed[1] >= 1, crossed


def test_the_model_gate_holds_indexing_out_for_torch_models() -> None:
    """The same hold for models that the engine's gate serialises (torch): searches' batches
    go on, an indexing batch waits until the hold ends."""
    import threading

    from ragd.engine import ModelGate

    gate = ModelGate()
    started = threading.Event()

    def index_batch() -> None:
        with gate.background():
            started.set()

    with gate.hold():
        t = threading.Thread(target=index_batch, daemon=True)
        t.start()
        assert not started.wait(0.2)
        with gate.foreground():
            pass
        assert not started.wait(0.1)
    assert started.wait(5)
    t.join(5)


def test_a_search_with_a_deadline_holds_the_models_from_its_query_embedding_to_its_rerank(
    indexed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An indexing batch could otherwise start between the query embedding and the first
    rerank batch and make the search late; without a deadline nothing is held."""
    import contextlib
    import time
    from collections.abc import Iterator

    from ragd.engine import ModelGate

    engine, _ = indexed
    events: list[str] = []

    class Recording(ModelGate):
        @contextlib.contextmanager
        def hold(self, model: object = None) -> Iterator[None]:
            events.append("hold")
            with super().hold(model):
                yield
            events.append("release")

    monkeypatch.setattr(engine, "gate", Recording())
    models = engine.models
    embed_query, score = models.embedder.embed_query, models.reranker.score
    monkeypatch.setattr(models.embedder, "embed_query", lambda q: events.append("embed") or embed_query(q))
    monkeypatch.setattr(models.reranker, "score", lambda q, ps: events.append("rerank") or score(q, ps))
    result = search(engine, "river deltas", SearchOptions(candidates=3, deadline=time.monotonic() + 30))
    assert result.reranked == 3
    assert events[0] == "hold" and events[1] == "embed" and events[-1] == "release"
    assert events.count("release") == events.count("hold") and "rerank" in events
    events.clear()
    search(engine, "river deltas", SearchOptions(candidates=3))
    assert "hold" not in events and events[0] == "embed" and "rerank" in events


LONG = [" ".join([f"filler{i}x{j}" for j in range(90)] + ["the heron nests in reeds."]
                 + [f"tail{i}x{j}" for j in range(110)]) for i in range(20)]


def test_a_deadline_narrows_the_window_so_every_candidate_is_reranked() -> None:
    """20 passages of 205 words, ~0.1 s each read whole, and 1 s: one narrower window for all
    (still around the sentence with the query's words) reranks all 20 on time; with the
    narrowing floor at the full window, only the first ~9 are reranked, also on time."""
    import time

    from ragd.rerank import RerankPace

    head = [(i, 1.0) for i in range(20)]
    texts = dict(enumerate(LONG))
    query = "where does the heron nest"
    reranker = _SlowReranker(0.0005)
    pace = RerankPace(lambda: reranker, 352, 32)
    pace.prime()
    reranker.read.clear()
    started = time.monotonic()
    reranked = _rerank(reranker, head, texts, started + 1.0, pace=pace, query=query, narrowest=32)
    took = time.monotonic() - started
    assert took <= 1.0, took
    assert len(reranked.scores) == 20
    assert 32 <= reranked.window < 205 - 20  # narrower than the passages
    assert len(reranker.read) == 20
    for passage in reranker.read:
        assert len(passage.split()) <= reranked.window and "the heron nests in reeds." in passage
    reranker.read.clear()
    started = time.monotonic()
    reranked = _rerank(reranker, head, texts, started + 1.0, pace=pace, query=query, narrowest=352)
    assert time.monotonic() - started <= 1.0
    assert 6 <= len(reranked.scores) <= 10 and reranked.window == 0  # read whole
    assert all(p in LONG for p in reranker.read)
    reranker.read.clear()
    reranked = _rerank(reranker, head[:3], texts, None, pace=pace, query=query, narrowest=32)  # no deadline: whole
    assert reranked.window == 0 and reranker.read == LONG[:3]
    reranked = _rerank(reranker, head[:3], texts, None, pace=pace, query=query, widest=100, narrowest=100)
    assert reranked.window == 100 and all(len(p.split()) == 100 for p in reranker.read[3:])


def test_the_window_fits_the_budget() -> None:
    from ragd.rerank import PAIR_EXTRA_TOKENS, fit_window

    lengths = [500, 300, 100, 40]
    q = 6

    def cost(w: int) -> int:
        return sum(q + PAIR_EXTRA_TOKENS + min(n, w) for n in lengths)

    assert fit_window(lengths, q, cost(500), 16, 352) == 352  # everything fits at the limit
    for budget in (cost(352) - 1, cost(200), cost(200) + 1, cost(120), cost(64) + 50):
        w = fit_window(lengths, q, budget, 16, 352)
        assert cost(w) <= budget < cost(w + 1)
    assert fit_window(lengths, q, cost(16) - 1, 16, 352) == 16  # nothing fits: the floor


@BOTH_STORES
def test_the_fuse_stage_ranks_candidates_by_fused_score_ties_by_chunk_id(indexed: Any) -> None:
    """``fuse_signals`` on its own: the state's signals fused with its weights, ranked best
    first (ties by chunk id), its time in ``fuse_ms``; ``leave_out`` drops excluded chunks first."""
    from ragd.search import fuse_signals, leave_out, prepare

    engine, _ = indexed
    s = prepare(engine, "river deltas", SearchOptions(fusion="weighted"))
    s.signal_weights = {"dense": 1.0, "lexical": 1.0}
    s.signals = {"dense": {3: 0.9, 1: 0.5, 2: 0.5}, "lexical": {2: 4.0, 5: 1.0}}
    fuse_signals(s)
    assert s.fused == fuse(s.signals, s.signal_weights, "weighted", engine.config.search.rrf_k)
    assert s.ranked == [(2, 1.0), (3, 1.0), (1, 0.0), (5, 0.0)]
    assert list(s.timings) == ["fuse_ms"]
    rrf = prepare(engine, "river deltas", SearchOptions(fusion="rrf"))
    rrf.signal_weights, rrf.signals = s.signal_weights, s.signals
    fuse_signals(rrf)
    assert [cid for cid, _ in rrf.ranked] == [2, 3, 1, 5]  # 2 is second and first
    like = prepare(engine, "river deltas", SearchOptions(exclude_path="/nowhere"))
    like.signal_weights, like.signals = s.signal_weights, {name: dict(v) for name, v in s.signals.items()}
    leave_out(like)  # no chunk of /nowhere: nothing is dropped
    assert like.signals == s.signals


@BOTH_STORES
def test_the_rerank_stage_puts_the_reranked_head_first_and_keeps_the_rest_in_retrieval_order(
    indexed: Any,
) -> None:
    """``rerank_head`` on its own: ``on_retrieval`` gets the retrieval ranking, the top
    ``candidates`` are ordered by their rerank scores, the rest follow in retrieval order,
    and the result carries the rerank scores and the reranker's id."""
    from ragd.search import build_result, prepare, read_rows, rerank_head

    class ByLength(_SlowReranker):
        def score(self, query: str, passages: Sequence[str]) -> list[float]:
            super().score(query, passages)
            return [float(len(p)) for p in passages]

    engine, _ = indexed
    ids = [h.chunk_id for h in search(engine, "delta", SearchOptions(k=4, rerank=False)).hits]
    retrieval: list[Any] = []
    s = prepare(engine, "delta", SearchOptions(k=4, candidates=3, on_retrieval=retrieval.append))
    s.ranked = [(cid, 1.0 - i / 10) for i, cid in enumerate(ids)]
    read_rows(s)
    s.reranker = ByLength(0.0)
    rerank_head(s)
    [first] = retrieval
    assert [h.chunk_id for h in first.hits] == ids and first.reranked == 0 and first.models["reranker"] is None
    head = sorted(ids[:3], key=lambda cid: -len(s.rows[cid].text))
    assert [cid for cid, _ in s.top] == [*head, ids[3]]
    assert set(s.reranked.scores) == set(ids[:3]) and "rerank_ms" in s.timings
    result = build_result(s)
    assert result.reranked == 3 and result.models["reranker"] == "slow"
    assert [h.score for h in result.hits[:3]] == [float(len(s.rows[cid].text)) for cid in head]
    assert result.hits[3].rerank_score is None and result.hits[3].score == round(0.7, 6)


def test_full_text_and_sparse_stages_run_beside_the_embedding(indexed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hybrid search starts BM25 on a side thread before the query is embedded, and sparse
    retrieval beside the dense stage, each reading SQLite through the thread's own catalog
    connection; the answer is the same whether the side stage ends first or last (the
    embedding held back until BM25 started)."""
    import threading

    from ragd.store.catalog import Catalog
    from ragd.store.postings import LexicalIndex

    engine, root = indexed
    in_line = search(engine, "river deltas and sediment", SearchOptions(rerank=False))
    started = threading.Event()
    seen: dict[str, Any] = {}
    lexical, chunk_ids_by_hash = LexicalIndex.search, Catalog.chunk_ids_by_hash
    fts5 = Catalog.lexical_search

    def lexical_search(self: LexicalIndex, *args: Any, **kwargs: Any) -> Any:
        seen["lexical"] = (threading.current_thread().name, False)
        started.set()
        return lexical(self, *args, **kwargs)

    def fts5_search(self: Catalog, *args: Any, **kwargs: Any) -> Any:  # with a path prefix
        seen["fts5"] = (threading.current_thread().name, self is engine.catalog)
        return fts5(self, *args, **kwargs)

    def sparse_chunk_ids(self: Catalog, *args: Any, **kwargs: Any) -> Any:  # the end of the sparse stage
        seen["sparse"] = (threading.current_thread().name, self is engine.catalog)
        return chunk_ids_by_hash(self, *args, **kwargs)

    embedder = engine.models.embedder
    embed_query = embedder.embed_query

    def slow_embed_query(text: str) -> Any:
        seen["lexical_before_embedding"] = started.wait(timeout=10)  # in line, it would never start
        return embed_query(text)

    monkeypatch.setattr(LexicalIndex, "search", lexical_search)
    monkeypatch.setattr(Catalog, "lexical_search", fts5_search)
    monkeypatch.setattr(Catalog, "chunk_ids_by_hash", sparse_chunk_ids)
    monkeypatch.setattr(embedder, "embed_query", slow_embed_query)
    beside = search(engine, "river deltas and sediment", SearchOptions(rerank=False))
    assert seen["lexical_before_embedding"] is True
    for stage in ("lexical", "sparse"):
        thread, main_connection = seen[stage]
        assert thread.startswith("ragd-search") and not main_connection, (stage, seen[stage])
    assert [(h.chunk_id, h.score) for h in beside.hits] == [(h.chunk_id, h.score) for h in in_line.hits]
    assert {"lexical_ms", "sparse_ms"} <= set(beside.timings)
    prefixed = search(engine, "river deltas", SearchOptions(rerank=False, path_prefix=str(root / "rivers")))
    assert prefixed.hits and all(h.path.startswith(str(root / "rivers")) for h in prefixed.hits)
    assert seen["fts5"][0].startswith("ragd-search") and not seen["fts5"][1]
    engine.close()
    assert engine._side is None and not engine._side_catalogs


def test_sparse_retrieval_reads_a_memory_mirror_the_indexer_keeps_current(indexed: Any) -> None:
    """Sparse retrieval sums the in-memory mirror of the catalog's sparse weights: it
    answers as the catalog's own sum does, takes a new file's chunks when the batch commits,
    forgets deleted ones at garbage collection, and a fresh engine builds the same from disk.
    The BM25 mirror follows the same batches."""
    engine, root = indexed
    mirror = engine.sparse
    assert mirror is not None
    model = engine.model_key
    stored = engine.catalog.db.execute("SELECT count(*) FROM embeddings WHERE model = ? AND sparse IS NOT NULL",
                                       [model]).fetchone()[0]
    assert mirror.count == stored > 0

    def same_as_catalog(text: str) -> None:
        weights = engine.models.embedder.embed_query(text).sparse[0]
        got, want = mirror.search(weights, 20), engine.catalog.sparse_search(model, weights, 20)
        assert [h for h, _ in got] == [h for h, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-6)

    for text in ("sourdough bread starter", "river deltas and sediment", "glaciers"):
        same_as_catalog(text)

    (root / "quokka.md").write_text("# Quokkas\n\nQuokkas hop around Rottnest Island near Perth.\n", encoding="utf-8")
    index_paths(engine, [root])
    assert engine.sparse is mirror and mirror.count == stored + 1  # kept current, not rebuilt
    for mode in ("sparse", "lexical"):  # the BM25 mirror follows the same batches
        top = search(engine, "Quokkas hop around Rottnest Island", SearchOptions(mode=mode, rerank=False)).hits
        assert top[0].path == str(root / "quokka.md"), mode
    same_as_catalog("Quokkas hop around Rottnest Island")

    (root / "quokka.md").unlink()
    index_paths(engine, [root])
    assert mirror.count == stored
    for mode in ("sparse", "lexical"):
        after = search(engine, "Quokkas hop around Rottnest Island", SearchOptions(mode=mode, rerank=False)).hits
        assert all(h.path != str(root / "quokka.md") for h in after), mode
    assert engine.lexical.count == engine.catalog.count_chunks()

    fresh = engine.reader()
    rebuilt = Engine(engine.config, engine.models)
    try:
        assert fresh.sparse is mirror
        weights = engine.models.embedder.embed_query("sourdough bread starter").sparse[0]
        assert rebuilt.sparse is not None and rebuilt.sparse is not mirror
        got, want = rebuilt.sparse.search(weights, 20), mirror.search(weights, 20)
        assert want and [h for h, _ in got] == [h for h, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-6)
    finally:
        fresh.close()
        rebuilt.close()


def test_mirrors_are_snapshot_and_a_restart_loads_the_current_snapshot(
    indexed: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer snapshots the mirrors with the catalog generation they hold; an engine
    started on the same data folder loads them instead of building, answers the same, and
    builds again when the catalog has moved on or a snapshot is damaged."""
    from ragd.store.postings import LexicalIndex, SparseIndex

    engine, root = indexed
    sparse, lexical = engine.sparse, engine.lexical  # built (and saved) on first use
    assert sparse is not None
    (root / "quokka.md").write_text("# Quokkas\n\nQuokkas hop around Rottnest Island near Perth.\n", encoding="utf-8")
    index_paths(engine, [root])  # the run ends by saving the snapshots
    sparse_path = engine.snapshot_paths()["sparse"]
    lexical_path = engine.snapshot_paths()["lexical"]
    assert sparse_path.is_file() and lexical_path.is_file()

    builds: list[str] = []
    for kind in (SparseIndex, LexicalIndex):
        real = kind.build.__func__  # type: ignore[attr-defined]
        monkeypatch.setattr(kind, "build", classmethod(lambda cls, rows, *a, real=real: builds.append(cls.__name__)
                                                       or real(cls, rows, *a)))
    queries = ("Quokkas hop around Rottnest Island", "sourdough bread starter", "river deltas and sediment")

    def answers(e: Engine) -> list[list[int]]:
        return [[h.chunk_id for h in search(e, q, SearchOptions(mode=mode, rerank=False)).hits]
                for q in queries for mode in ("sparse", "lexical", "hybrid")]

    with Engine(engine.config, engine.models) as restarted:
        assert restarted.sparse is not None and restarted.sparse.count == sparse.count
        assert restarted.lexical.count == lexical.count
        assert builds == []  # loaded, not built
        assert answers(restarted) == answers(engine)

    (root / "quokka.md").unlink()  # the catalog moves on; this engine's snapshots are not saved
    with Engine(engine.config, engine.models) as other:
        index_paths(other, [root])
    with Engine(engine.config, engine.models) as later:
        assert later.sparse is not None and later.lexical is not None
        assert builds == ["SparseIndex", "LexicalIndex"]  # the old snapshots were stale
        assert later.lexical.count == later.catalog.count_chunks()
    builds.clear()
    lexical_path.write_bytes(b"not a snapshot")
    with Engine(engine.config, engine.models) as damaged:
        assert damaged.sparse is not None and damaged.lexical.count == damaged.catalog.count_chunks()
        assert builds == ["LexicalIndex"]


def test_auto_maps_the_mirrors_of_a_large_index(indexed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``store.mirrors = "auto"`` (the default) keeps a small index's mirrors in memory and maps
    them from ``MAPPED_FROM`` keys on (a snapshot of the other form is built again); the
    answers are the same."""
    from ragd.store import postings

    engine, _root = indexed
    sparse = engine.sparse
    assert sparse is not None and sparse.home is None and engine.lexical.home is None
    queries = ("sourdough bread starter", "river deltas and sediment")

    def answers(e: Engine) -> list[list[tuple[int, float]]]:
        return [[(h.chunk_id, h.score) for h in search(e, q, SearchOptions(mode=mode, rerank=False)).hits]
                for q in queries for mode in ("sparse", "lexical", "hybrid")]

    expected = answers(engine)
    monkeypatch.setattr(postings, "MAPPED_FROM", 1)
    with Engine(engine.config, engine.models) as large:
        paths = large.snapshot_paths()
        assert large.sparse is not None and large.sparse.home == paths["sparse"]
        assert large.lexical.home == paths["lexical"]
        assert answers(large) == expected


def test_a_snapshot_that_cannot_be_written_costs_only_a_slower_start(
    indexed: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk or a read-only data folder: the mirrors are built and searched as ever, a
    warning says the snapshot was not saved, and the next save tries again."""
    import errno

    from ragd.store.postings import Postings

    engine, root = indexed
    real_save = Postings.save

    def full_disk(self: Postings, path: Path, generation: int, label: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Postings, "save", full_disk)
    with caplog.at_level("WARNING", logger="ragd.engine"):
        assert engine.lexical.count == engine.catalog.count_chunks()
        assert engine.sparse is not None
        hits = search(engine, "Sourdough bread needs a starter", SearchOptions(mode="hybrid", rerank=False)).hits
    assert hits[0].path == str(root / "bread.txt")
    assert "cannot save the lexical mirror's snapshot" in caplog.text and "No space left" in caplog.text
    assert not engine.snapshot_paths()["lexical"].exists()
    monkeypatch.setattr(Postings, "save", real_save)
    engine.save_snapshots()  # the catalog did not change, but this generation was never saved
    assert engine.snapshot_paths()["lexical"].is_file() and engine.snapshot_paths()["sparse"].is_file()


def test_a_vector_snapshot_that_cannot_be_written_costs_only_a_slower_start(
    indexed: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Likewise for FAISS: the index is rebuilt and searched, and an indexing run completes
    with every batch committed, with a warning instead of an error."""
    import errno

    from ragd.store.vectors import VectorIndex

    engine, root = indexed

    def full_disk(self: VectorIndex, path: Path, generation: int, model: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(VectorIndex, "save", full_disk)
    engine.snapshot_paths()["vectors"].unlink()  # the next engine must rebuild (and try to save)
    with caplog.at_level("WARNING", logger="ragd.engine"), Engine(engine.config, engine.models) as fresh:
        assert fresh.vectors.count == fresh.catalog.count_embedded_chunks(fresh.model_key)
        hits = search(fresh, "Sourdough bread needs a starter", SearchOptions(mode="dense", rerank=False)).hits
        assert hits[0].path == str(root / "bread.txt")
        (root / "quokka.md").write_text("# Quokkas\n\nQuokkas hop around Rottnest Island.\n", encoding="utf-8")
        report = index_paths(fresh, [root])
        assert report.files_failed == 0 and report.files_indexed == 1
        assert fresh.catalog.files_under(str(root / "quokka.md"))
    assert "cannot save the vector snapshot" in caplog.text and "No space left" in caplog.text


def test_a_mirror_that_disagrees_with_the_catalog_is_rebuilt_in_place(indexed: Any) -> None:
    """After an indexing run the mirrors' sizes are checked against the catalog; one that
    lost track is rebuilt, in place (the daemon's readers hold the same objects)."""
    engine, root = indexed
    lexical, sparse = engine.lexical, engine.sparse
    assert sparse is not None
    some_chunk = engine.catalog.db.execute("SELECT rowid FROM lexical LIMIT 1").fetchone()[0]
    some_hash = engine.catalog.db.execute("SELECT chunk_hash FROM embeddings WHERE sparse IS NOT NULL").fetchone()[0]
    lexical.remove([some_chunk])
    sparse.remove([some_hash])
    assert engine.check_mirrors() == ["lexical", "sparse"]
    assert engine.lexical is lexical and engine.sparse is sparse
    assert lexical.count == engine.catalog.count_chunks()
    assert sparse.count == engine.catalog.count_sparse(engine.model_key)
    assert engine.check_mirrors() == []
    hits = search(engine, "Sourdough bread needs a starter", SearchOptions(mode="lexical", rerank=False)).hits
    assert hits[0].path == str(root / "bread.txt")
    lexical.remove([some_chunk])
    index_paths(engine, [root])  # the run ends with the check
    assert lexical.count == engine.catalog.count_chunks()


@BOTH_STORES
def test_without_mirrors_a_search_asks_sqlite_and_answers_the_same(indexed: Any) -> None:
    """A one-shot search in a process of its own (`ragd search` with no daemon) builds no
    mirror: sparse and full-text retrieval ask SQLite, with the same hits and scores."""
    engine, _ = indexed
    with Engine(engine.config, engine.models, mirrors=False) as plain:
        for mode in ("hybrid", "sparse", "lexical"):
            for query in ("river deltas and sediment", "sourdough starter", "glaciers climate"):
                a = search(engine, query, SearchOptions(mode=mode, rerank=False)).hits
                b = search(plain, query, SearchOptions(mode=mode, rerank=False)).hits
                assert [h.chunk_id for h in a] == [h.chunk_id for h in b], (mode, query)
                assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-6), (mode, query)
        assert plain._lexical is None and getattr(plain.store, "mirror", None) is None
