"""BEIR-format evaluation: load a collection, and score rankings with nDCG@10, Recall@100
and MRR@10 under their standard definitions (graded gains, log2 discount, ideal DCG from
the judged documents).

``open_eval`` indexes a collection with the real indexer into
``cache_dir/<dataset>/<embedder>/index`` (documents materialised once under
``cache_dir/<dataset>/corpus``; embeddings are keyed by chunk hash, so a re-run embeds
nothing), and ``score_queries`` runs every judged query through ``ragd.search.search``,
ranking documents by their best chunk. Where the folder has ``answers.jsonl`` (query id,
document id, answer text), chunk-level metrics are computed too: a chunk is relevant when
it belongs to a relevant document and contains the answer text."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragd.errors import UsageError

if TYPE_CHECKING:
    from ragd.config import Config
    from ragd.engine import Engine
    from ragd.indexer import Progress

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Dataset:
    name: str
    corpus: dict[str, tuple[str, str]]  # doc id -> (title, text)
    queries: dict[str, str]             # query id -> text (only judged queries)
    qrels: Qrels                        # query id -> doc id -> grade
    answers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # query id -> (doc id, answer)


def load_beir(folder: Path, split: str = "test") -> Dataset:
    """Read corpus.jsonl, queries.jsonl and qrels/<split>.tsv; clear errors for a bad folder."""
    paths = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
             "qrels": folder / "qrels" / f"{split}.tsv"}
    for what, p in paths.items():
        if not p.is_file():
            raise UsageError(f"{folder} is not a BEIR folder: {what} file {p} is missing")
    corpus: dict[str, tuple[str, str]] = {}
    for d in _records(paths["corpus"], "_id"):
        corpus[str(d["_id"])] = (str(d.get("title") or ""), str(d.get("text") or ""))
    qrels: Qrels = {}
    for i, line in enumerate(_lines(paths["qrels"])):
        parts = line.rstrip("\n").split("\t")
        if i == 0 and parts[0] == "query-id":
            continue
        if len(parts) >= 3:
            try:
                qrels.setdefault(parts[0], {})[parts[1]] = int(float(parts[2]))
            except ValueError:
                raise UsageError(f"{paths['qrels']}:{i + 1}: the score {parts[2][:40]!r} is not a number") from None
    queries: dict[str, str] = {}
    for d in _records(paths["queries"], "_id", "text"):
        if str(d["_id"]) in qrels:
            queries[str(d["_id"])] = str(d["text"])
    answers: dict[str, list[tuple[str, str]]] = {}
    if (folder / "answers.jsonl").is_file():
        for d in _records(folder / "answers.jsonl", "query-id", "corpus-id", "answer"):
            answers.setdefault(str(d["query-id"]), []).append((str(d["corpus-id"]), str(d["answer"])))
    return Dataset(folder.name, corpus, queries, qrels, answers)


def long_queries(dataset: Dataset, min_parts: int = 2) -> Dataset:
    """The long-query form of a collection: for each document, every question judged relevant
    to it joined into one query (as an assistant passes a whole message), judged against that
    document alone; documents with fewer than ``min_parts`` questions are left out."""
    by_doc: dict[str, list[str]] = {}
    for qid in sorted(dataset.queries):
        for doc, grade in sorted(dataset.qrels.get(qid, {}).items()):
            if grade > 0:
                by_doc.setdefault(doc, []).append(dataset.queries[qid].strip())
    queries: dict[str, str] = {}
    qrels: Qrels = {}
    for doc, texts in sorted(by_doc.items()):
        if len(texts) >= min_parts:
            queries[f"long-{doc}"] = " ".join(texts)
            qrels[f"long-{doc}"] = {doc: 1}
    return Dataset(dataset.name, dataset.corpus, queries, qrels, {})


def _lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file; bytes that are not UTF-8 are a one-line error naming the line."""
    with path.open("rb") as fh:
        for i, raw in enumerate(fh, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageError(f"{path}:{i}: not valid UTF-8 (at byte {exc.start} of the line)") from None


def _records(path: Path, *required: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a .jsonl file, each with the ``required`` keys and text that is
    valid Unicode (no lone surrogates from ``\\udcxx`` escapes)."""
    for i, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{i}: not JSON ({exc.msg})") from None
        if not isinstance(d, dict) or any(key not in d for key in required):
            raise UsageError(f"{path}:{i}: expected an object with {', '.join(required)}")
        for key, value in d.items():
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(f"{path}:{i}: {key} is not valid Unicode text") from None
        yield d


def ndcg_at(ranking: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    dcg = sum((2 ** judged.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranking: Sequence[str], judged: Mapping[str, int], k: int = 100) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranking: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranking[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def score_run(run: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, float]:
    """Mean metrics over every judged query (a query missing from ``run`` scores 0)."""
    n = len(qrels)
    if n == 0:
        return {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    totals = {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    for qid, judged in qrels.items():
        ranking = run.get(qid, [])
        totals["ndcg@10"] += ndcg_at(ranking, judged)
        totals["recall@100"] += recall_at(ranking, judged)
        totals["mrr@10"] += mrr_at(ranking, judged)
    return {m: v / n for m, v in totals.items()}


@dataclass
class EvalReport:
    dataset: str
    embedder: str
    reranker: str | None
    metrics: dict[str, float]
    queries: int
    index_seconds: float
    tokens_per_second: float
    latency_ms: dict[str, float]
    degraded: list[str]
    run: dict[str, list[str]]
    mode: str = "hybrid"
    fusion: str = "weighted"
    weights: dict[str, float] = field(default_factory=dict)
    chunks: int = 0
    tokens_embedded: int = 0
    chunk_metrics: dict[str, float] | None = None  # with answers.jsonl: chunks containing the answer
    deadline_s: float | None = None  # each search's deadline, when one was set
    reranked: dict[str, float] | None = None  # with a reranker: candidates reranked per query, and windows
    query_use: dict[str, float] = field(default_factory=dict)  # the queries' tokens, windows and terms

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "dataset": self.dataset, "embedder": self.embedder, "reranker": self.reranker,
            "mode": self.mode, "fusion": self.fusion, "weights": self.weights,
            **{k: round(v, 4) for k, v in self.metrics.items()},
            "queries": self.queries, "index_seconds": round(self.index_seconds, 2),
            "chunks": self.chunks, "tokens_embedded": self.tokens_embedded,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "latency_ms": self.latency_ms, "degraded": self.degraded,
        }
        if self.chunk_metrics is not None:
            out["chunk_level"] = {k: round(v, 4) for k, v in self.chunk_metrics.items()}
        if self.deadline_s is not None:
            out["deadline_s"] = self.deadline_s
        if self.reranked is not None:
            out["reranked"] = self.reranked
        out["query_use"] = self.query_use
        return out


def _doc_file(doc_id: str) -> str:
    from urllib.parse import quote

    return quote(doc_id, safe="") + ".txt"


def _doc_id(path: str) -> str:
    from urllib.parse import unquote

    return unquote(Path(path).name[: -len(".txt")])


def materialise(dataset: Dataset, folder: Path) -> Path:
    """Write each document as a text file (title, newline, text) so the real indexer reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id, (title, text) in dataset.corpus.items():
        path = folder / _doc_file(doc_id)
        body = f"{title}\n{text}\n" if title else f"{text}\n"
        if not path.exists() or path.read_text(encoding="utf-8") != body:
            path.write_text(body, encoding="utf-8")
    return folder


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {"p50": pct(0.5), "p95": pct(0.95), "max": round(ordered[-1], 2)}


def _slug(setting: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", setting.strip("/"))[-80:] or "model"


@dataclass
class EvalIndex:
    """A collection indexed for evaluation; close() when done."""

    dataset: Dataset
    engine: Engine
    index_seconds: float
    tokens_embedded: int
    corpus: Path
    own: bool = True

    def close(self) -> None:
        if self.own:
            self.engine.close()


def open_eval(
    folder: Path, config: Config, cache_dir: Path, *, rerank: bool = False, engine: Engine | None = None,
    progress: Progress | None = None,
) -> EvalIndex:
    """Load a BEIR folder and bring its cached index up to date (embedding only what is new)."""
    import dataclasses

    from ragd.engine import Engine
    from ragd.indexer import index_paths

    dataset = load_beir(folder)
    base = cache_dir / dataset.name
    corpus = materialise(dataset, base / "corpus")
    data_dir = base / _slug(config.models.embedder) / "index"
    cfg = dataclasses.replace(
        config, data_dir=data_dir, roots=(), store=_eval_store(config, data_dir),
        search=dataclasses.replace(config.search, retrieve=max(config.search.retrieve, 3 * EVAL_DEPTH)),
    )
    own = engine is None
    eng = engine if engine is not None else Engine(cfg, rerank=rerank)
    try:
        report = index_paths(eng, [corpus], progress)
    except BaseException:
        if own:
            eng.close()
        raise
    return EvalIndex(dataset, eng, report.seconds, report.tokens_embedded, corpus, own)


EVAL_DEPTH = 100


def _eval_store(config: Config, data_dir: Path) -> Any:
    """The evaluation index's own vector store, never the configured index's: with Milvus,
    a Milvus Lite file in its folder, or on a server a collection of its own."""
    import dataclasses

    store = config.store
    if store.backend != "milvus":
        return store
    if "://" in store.uri or store.uri.startswith("unix:"):
        import re

        dataset, model = data_dir.parent.parent.name, data_dir.parent.name
        name = re.sub(r"[^A-Za-z0-9_]", "_", f"{store.collection}_eval_{dataset}_{model}")
        return dataclasses.replace(store, collection=name[:255])
    return dataclasses.replace(store, uri=str(data_dir / "milvus.db"))


def _flat(text: str) -> str:
    return " ".join(text.split())


def score_queries(
    index: EvalIndex, *, rerank: bool = False, mode: str | None = None, weights: Mapping[str, float] | None = None,
    fusion: str | None = None, deadline: float | None = None,
) -> EvalReport:
    """Run every judged query through the daemon's search and score the rankings. With
    ``deadline`` (seconds) each search gets that deadline, as a client's would, after the
    rerank pace is measured the way the daemon does at start-up."""
    import dataclasses
    import time

    from ragd.search import SearchOptions, search

    dataset, eng = index.dataset, index.engine
    cfg = eng.config.search
    latencies: list[float] = []
    run: dict[str, list[str]] = {}
    chunk_run: dict[str, list[str]] = {}
    options = SearchOptions(k=3 * EVAL_DEPTH, rerank=rerank, mode=mode, weights=weights, fusion=fusion)
    reranker = eng.models.reranker if rerank else None
    if deadline is not None and reranker is not None:
        eng.rerank_pace.prime()  # as the daemon does at start-up
    reranked: list[int] = []
    windows: list[int] = []
    uses: list[Any] = []
    for qid, text in dataset.queries.items():
        if deadline is not None:
            options = dataclasses.replace(options, deadline=time.monotonic() + deadline)
        t = time.perf_counter()
        result = search(eng, text, options)
        latencies.append((time.perf_counter() - t) * 1000)
        reranked.append(result.reranked)
        windows.append(result.rerank_window)
        uses.append(result.query_use)
        ranking: list[str] = []
        for hit in result.hits:
            doc = _doc_id(hit.path)
            if doc not in ranking:
                ranking.append(doc)
        run[qid] = ranking[:EVAL_DEPTH]
        chunk_run[qid] = [str(h.chunk_id) for h in result.hits[:EVAL_DEPTH]]
    chunk_metrics = None
    if dataset.answers:
        chunk_qrels = _answer_chunks(index)
        chunk_metrics = score_run({q: r for q, r in chunk_run.items() if q in chunk_qrels}, chunk_qrels)
        chunk_metrics["queries"] = float(len(chunk_qrels))
    models = eng.models
    narrowed = [w for w in windows if w]
    rerank_stats = None if reranker is None else {
        "mean": round(sum(reranked) / max(1, len(reranked)), 2), "min": min(reranked, default=0),
        "windowed_queries": len(narrowed), "narrowest_window": min(narrowed, default=0),
    }
    used = {"dense": cfg.dense_weight, "sparse": cfg.sparse_weight, "lexical": cfg.lexical_weight,
            **({"colbert": cfg.colbert_weight} if models.embedder.multi_vector else {}),
            **(weights or {})}
    return EvalReport(
        dataset=dataset.name, embedder=models.embedder.model_id,
        reranker=reranker.model_id if reranker is not None else None,
        metrics=score_run(run, dataset.qrels), queries=len(dataset.queries),
        index_seconds=index.index_seconds,
        tokens_per_second=index.tokens_embedded / index.index_seconds if index.index_seconds else 0.0,
        latency_ms=_percentiles(latencies), degraded=list(models.degraded), run=run,
        mode=mode or cfg.mode, fusion=fusion or cfg.fusion, weights=used, chunks=eng.catalog.count_chunks(),
        tokens_embedded=index.tokens_embedded, chunk_metrics=chunk_metrics, deadline_s=deadline,
        reranked=rerank_stats, query_use=_query_use_stats(uses),
    )


def _query_use_stats(uses: Sequence[Any]) -> dict[str, float]:
    """Mean and largest query tokens, how many queries were read in several windows, and the
    mean share of full-text terms BM25 scored."""
    if not uses:
        return {}
    n = len(uses)
    return {
        "mean_tokens": round(sum(u.tokens for u in uses) / n, 1),
        "max_tokens": max(u.tokens for u in uses),
        "windowed_queries": sum(1 for u in uses if u.windows > 1),
        "mean_windows": round(sum(u.windows for u in uses) / n, 2),
        "terms_used_share": round(sum(u.terms_used / u.terms if u.terms else 1.0 for u in uses) / n, 3),
    }


def _answer_chunks(index: EvalIndex) -> Qrels:
    """Query id -> the chunks (ids as strings) of its relevant document that hold its answer."""
    catalog = index.engine.catalog
    corpus_dir = index.corpus
    texts: dict[str, dict[str, str]] = {}
    out: Qrels = {}
    for qid, pairs in index.dataset.answers.items():
        if qid not in index.dataset.queries:
            continue
        for doc, answer in pairs:
            if doc not in texts:
                ids = catalog.chunk_ids_under(os.path.abspath(corpus_dir / _doc_file(doc)))
                texts[doc] = {str(cid): _flat(row.text) for cid, row in catalog.chunks(ids).items()}
            needle = _flat(answer)
            for cid, text in texts[doc].items():
                if needle and needle in text:
                    out.setdefault(qid, {})[cid] = 1
    return out


def run_eval(
    folder: Path, config: Config, cache_dir: Path, *, rerank: bool = False, engine: Engine | None = None,
    progress: Progress | None = None, mode: str | None = None, weights: Mapping[str, float] | None = None,
    fusion: str | None = None,
) -> EvalReport:
    """Index a BEIR collection (reusing cached embeddings) and score every judged query,
    ranking documents by their best chunk, through the same search code as the daemon."""
    index = open_eval(folder, config, cache_dir, rerank=rerank, engine=engine, progress=progress)
    try:
        return score_queries(index, rerank=rerank, mode=mode, weights=weights, fusion=fusion)
    finally:
        index.close()
