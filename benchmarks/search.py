"""Search latency benchmark: ``ragd.search.search`` end to end (query embedding included) on
indexes of 10k and 100k chunks, without reranking (hybrid and dense-only) and with reranking
of the top 20 (with and without a 2 s deadline; with the deadline also without narrowing the
rerank window, i.e. `search.rerank_min_tokens` = `rerank_max_tokens`).

    .venv/bin/python benchmarks/search.py [--json] [--sizes 10000,100000] [--queries 30]
                                          [--rerank-queries 3] [--precision auto|fp32|bf16|int8]
                                          [--backend NAME] [--config FILE]

Models: random weights with the exact BGE-M3 and bge-reranker-v2-m3 architectures (built
once into ``.cache/bench-models/`` by ``benchmarks/inference.py``'s helper), loaded through
``ragd.models.load_models`` like a configured model; ``models.precision`` / ``device`` /
``batch_size`` (and ``models.backend`` where this ragd has it) come from ragd's normal config
file (``--config``, ``$RAGD_CONFIG`` or the XDG default; defaults without one), overridden by
``--precision`` / ``--backend``.

Index: embedding 100k real chunks on this CPU would take hours, so the index is written
directly through the indexer's write path (``Catalog.apply`` + ``VectorIndex.add``, as
``Indexer._flush`` does) with real chunk texts, random unit-norm dense vectors of the model's
dimension and synthetic BGE-M3-style lexical weights over the chunk's real token ids
(frequent tokens low, rare ones high, 0.02..0.36). Chunk texts are SciFact abstracts
(title + text) from ../shared/data; beyond the 5,183 originals, variant v of abstract a is
the first half of a's sentences followed by the second half of another abstract's, so BM25,
the sparse posting lists and snippets see realistic text. Built once per size (and per
embedder id: int8/bf16 embeddings are stored apart) into ``.cache/bench-search/<size>/``.

Queries: SciFact's real claims (queries.jsonl). Each configuration runs one untimed query
first. Latency is the wall time of ``search()``; the per-stage numbers are the medians of
``SearchResult.timings``: each stage's own time. They do not add up to the total: full
text and sparse retrieval run on side threads beside the query embedding and the dense stage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, percentile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "beir" / "scifact"
CACHE = ROOT / ".cache" / "bench-search"
BUILD_VERSION = 1
WRITE_BATCH = 1000
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)




def corpus() -> list[tuple[str, str, str]]:
    """(id, title, text) of every SciFact abstract."""
    out = []
    with (DATA / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            out.append((str(d["_id"]), str(d.get("title", "")), str(d["text"])))
    return out


def queries(n: int) -> list[str]:
    with (DATA / "queries.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh][:n]


def chunk_texts(size: int) -> list[tuple[str, str, str]]:
    """(path, title, text) for ``size`` chunks: the abstracts, then mixed variants of them."""
    docs = corpus()
    n = len(docs)
    out = []
    for i in range(size):
        v, a = divmod(i, n)
        doc_id, title, text = docs[a]
        if v:
            other = docs[(a + v * 7919) % n]
            first, second = _SENTENCE.split(text), _SENTENCE.split(other[2])
            text = " ".join(first[: max(1, len(first) // 2)] + second[len(second) // 2 :])
        out.append((f"/bench/scifact/{v:03d}/{doc_id}.txt", title, f"{title}\n{text}"))
    return out


def lexical_weights(token_ids: list[list[int]], rng: np.random.Generator) -> list[dict[int, float]]:
    """BGE-M3-like lexical weights: one per distinct token id, low for frequent tokens."""
    freq = Counter(t for ids in token_ids for t in set(ids))
    rank = {t: r for r, (t, _) in enumerate(freq.most_common(), 1)}
    out = []
    for ids in token_ids:
        distinct = sorted(set(ids))
        base = np.array([base_weight(rank[t]) for t in distinct])
        w = base * rng.uniform(0.5, 1.2, len(distinct))
        out.append({int(t): float(x) for t, x in zip(distinct, w.astype(np.float32), strict=True)})
    return out


def base_weight(rank: int) -> float:
    """Typical BGE-M3 lexical weight of the token with this frequency rank (1 = most frequent)."""
    return 0.04 + 0.26 * min(1.0, float(np.log(rank + 1.0) / np.log(20_000)))


class LexicalStandIn:
    """The loaded embedder, with BGE-M3-like lexical weights put into a query's embedding
    when the random-weight model gives none (its ReLU sparse head outputs 0 for every token;
    the real model weights nearly every token). The query still runs through the model, so
    ``embed_ms`` is the real cost; without this the sparse stage would search nothing."""

    def __init__(self, inner: Any, catalog: Any, model: int) -> None:
        self.inner = inner
        rows = catalog.db.execute(
            "SELECT token FROM sparse_stats WHERE model = ? ORDER BY postings DESC, token", [model]
        ).fetchall()
        self.rank = {int(t): r for r, (t,) in enumerate(rows, 1)}
        self.unused = set(getattr(inner, "_unused", ()))
        self.replaced = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_query(self, text: str) -> Any:
        emb = self.inner.embed_query(text)
        if emb.sparse is not None and not any(emb.sparse):
            ids = self.inner.tokenizer.ids([text], special=False)[0]
            rng = np.random.default_rng(sum(ord(c) for c in text))
            emb.sparse = [{int(t): float(base_weight(self.rank.get(t, len(self.rank) + 1)) * rng.uniform(0.5, 1.2))
                           for t in dict.fromkeys(ids) if t not in self.unused}]
            self.replaced += 1
        return emb


def ensure_index(engine: Any, size: int) -> float:
    """Write ``size`` chunks with embeddings for ``engine``'s embedder unless already there;
    returns the seconds spent."""
    from ragd.indexer import content_hash
    from ragd.store.catalog import FileUpdate, NewChunk, NewEmbedding

    catalog = engine.catalog
    model = engine.model_key
    have_chunks = catalog.count_chunks()
    if have_chunks == size and catalog.count_embedded_chunks(model) == size:
        return 0.0
    if have_chunks not in (0, size):
        raise SystemExit(f"{engine.data_dir} holds {have_chunks} chunks, expected {size}: remove it")
    started = time.monotonic()
    embedder = engine.models.embedder
    catalog.db.execute("PRAGMA cache_size=-262144")
    texts = chunk_texts(size)
    log(f"[{size}] tokenising {size} chunks")
    token_ids: list[list[int]] = []
    for i in range(0, size, 2000):
        token_ids += embedder.tokenizer.ids([t for _, _, t in texts[i : i + 2000]], special=False)
    rng = np.random.default_rng(size)
    sparse = lexical_weights(token_ids, rng) if embedder.has_sparse else [None] * size
    root_id = catalog.add_root("/bench/scifact")
    vectors = engine.vectors
    for start in range(0, size, WRITE_BATCH):
        part = range(start, min(size, start + WRITE_BATCH))
        dense = rng.standard_normal((len(part), embedder.dim)).astype(np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        hashes = [content_hash(texts[i][2].encode("utf-8")) for i in part]
        embeddings = [NewEmbedding(h, dense[j], sparse[i]) for j, (i, h) in enumerate(zip(part, hashes, strict=True))]
        updates = []
        if have_chunks == 0:
            for i, h in zip(part, hashes, strict=True):
                path, title, text = texts[i]
                data = text.encode("utf-8")
                chunk = NewChunk(text, 1, text.count("\n") + 1, (title,), len(token_ids[i]), h)
                updates.append(FileUpdate(root_id, path, len(data), 0, content_hash(data), "indexed",
                                          kind="text", encoding="utf-8", chunks=(chunk,)))
        result = catalog.apply(model, embeddings, updates)
        if result.added:
            fresh = {e.chunk_hash: e.dense for e in embeddings}
            ids = np.array([cid for cid, _ in result.added], dtype=np.int64)
            vectors.add(ids, np.stack([fresh[h] for _, h in result.added]))
        if (start // WRITE_BATCH) % 10 == 9 or part[-1] == size - 1:
            log(f"[{size}] {part[-1] + 1:,} / {size:,} chunks written, {time.monotonic() - started:.0f} s")
    if have_chunks:  # embeddings for another embedder id: the cache follows the catalog
        engine.rebuild_vectors()
    (engine.save_snapshots if hasattr(engine, "save_snapshots") else engine.save_vectors)()  # older ragd
    return time.monotonic() - started


def run_config(engine: Any, qs: list[str], make_options: Any) -> dict[str, Any]:
    from ragd.search import search

    search(engine, qs[0], make_options())  # warm-up, untimed
    walls: list[float] = []
    stages: dict[str, list[float]] = {}
    reranked: list[int] = []
    windows: list[int] = []
    for q in qs:
        opts = make_options()
        t = time.perf_counter()
        result = search(engine, q, opts)
        walls.append((time.perf_counter() - t) * 1000)
        for key, value in result.timings.items():
            stages.setdefault(key, []).append(value)
        reranked.append(result.reranked)
        windows.append(getattr(result, "rerank_window", 0))  # older ragd: no narrowing
    out: dict[str, Any] = {
        "queries": len(walls),
        "p50_ms": round(percentile(walls, 0.5), 1),
        "p95_ms": round(percentile(walls, 0.95), 1),
        "stages_p50_ms": {k: round(statistics.median(v), 1) for k, v in stages.items()},
    }
    if any(reranked):
        out["reranked_mean"] = round(statistics.mean(reranked), 1)
        out["rerank_windows"] = windows
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizes", default="10000,100000", help="index sizes in chunks, comma-separated")
    parser.add_argument("--queries", type=int, default=30, help="timed queries per configuration without rerank")
    parser.add_argument("--rerank-queries", type=int, default=3, help="timed queries with rerank (slow on a CPU)")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16", "int8"],
                        help="models.precision (default: ragd's config)")
    parser.add_argument("--backend", help="models.backend, where this ragd has that key (default: ragd's config)")
    parser.add_argument("--config", help="ragd config file to take models.* settings from")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    from inference import build_models

    from ragd.config import load_config, parse_config
    from ragd.engine import Engine
    from ragd.models import LoadedModels, load_models
    from ragd.search import SearchOptions

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    normal = load_config(args.config).models
    m3, rr = build_models()
    models_table: dict[str, Any] = {
        "embedder": str(m3), "reranker": str(rr) if args.rerank_queries > 0 else "none", "fallback": "none",
        "device": normal.device, "precision": args.precision or normal.precision, "batch_size": normal.batch_size,
    }
    if hasattr(normal, "backend"):
        models_table["backend"] = args.backend or normal.backend
        # Converted models are shared with benchmarks/inference.py (keyed by the model folder).
        models_table["cache_dir"] = normal.cache_dir or str(m3.parent)
    elif args.backend:
        raise SystemExit("--backend: this ragd's config has no models.backend key")
    load_before = os.getloadavg()
    log(f"loading models ({models_table})")
    t = time.perf_counter()
    loaded = None
    result: dict[str, Any] = {"machine": machine(), "sizes": {}}
    for size in sizes:
        cfg = parse_config({"data_dir": str(CACHE / str(size)), "models": models_table}, source=CACHE / "config.toml")
        if loaded is None:
            loaded = load_models(cfg.models, rerank=args.rerank_queries > 0)
            emb = loaded.embedder
            result.update({
                "embedder": emb.model_id, "dim": emb.dim, "precision": getattr(emb, "precision", None),
                "backend": models_table.get("backend"), "load_models_s": round(time.perf_counter() - t, 1),
                "degraded": loaded.degraded,
            })
            try:
                import torch

                result["torch_threads"] = torch.get_num_threads()
            except ImportError:
                pass
        engine = Engine(cfg, loaded)
        built = ensure_index(engine, size)
        stand_in = None
        if loaded.embedder.has_sparse:
            stand_in = LexicalStandIn(loaded.embedder, engine.catalog, engine.model_key)
            engine.close()
            engine = Engine(cfg, LoadedModels(stand_in, loaded.reranker, loaded.degraded))  # type: ignore[arg-type]
        engine.vectors  # noqa: B018  # load the FAISS snapshot before timing
        qs = queries(args.queries)
        rq = queries(args.rerank_queries)
        per: dict[str, Any] = {"chunks": engine.catalog.count_chunks(), "build_s": round(built, 1),
                               "load_average_start": round(os.getloadavg()[0], 2)}
        log(f"[{size}] hybrid, no rerank")
        per["hybrid"] = run_config(engine, qs, lambda: SearchOptions(k=10, rerank=False, mode="hybrid"))
        log(f"[{size}] dense, no rerank")
        per["dense"] = run_config(engine, qs, lambda: SearchOptions(k=10, rerank=False, mode="dense"))
        if rq and loaded.reranker is not None:
            log(f"[{size}] hybrid, rerank top 20")
            per["hybrid_rerank20"] = run_config(
                engine, rq, lambda: SearchOptions(k=10, candidates=20, rerank=True, mode="hybrid"))
            engine.rerank_pace.prime()  # as the daemon does at start-up
            log(f"[{size}] hybrid, rerank top 20, 2 s deadline")
            per["hybrid_rerank20_deadline2s"] = run_config(
                engine, rq, lambda: SearchOptions(k=10, candidates=20, rerank=True, mode="hybrid",
                                                  deadline=time.monotonic() + 2.0))
            if hasattr(engine.config.search, "rerank_min_tokens"):
                log(f"[{size}] hybrid, rerank top 20, 2 s deadline, whole windows only (no narrowing)")
                narrowing = engine.config
                engine.config = replace(narrowing, search=replace(
                    narrowing.search, rerank_min_tokens=narrowing.search.rerank_max_tokens))
                per["hybrid_rerank20_deadline2s_no_narrowing"] = run_config(
                    engine, rq, lambda: SearchOptions(k=10, candidates=20, rerank=True, mode="hybrid",
                                                      deadline=time.monotonic() + 2.0))
                engine.config = narrowing
        per["synthetic_query_lexical_weights"] = bool(stand_in and stand_in.replaced)
        per["load_average_end"] = round(os.getloadavg()[0], 2)
        result["sizes"][str(size)] = per
        log(json.dumps({str(size): per}))
        engine.close()
    result["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['machine']['cpu']}, {result['machine']['cores']} cores; embedder precision "
          f"{result['precision']}, backend {result['backend']}; load {result['load_average']}")
    for size, per in result["sizes"].items():
        for name in ("hybrid", "dense", "hybrid_rerank20", "hybrid_rerank20_deadline2s",
                     "hybrid_rerank20_deadline2s_no_narrowing"):
            if name in per:
                r = per[name]
                st = ", ".join(f"{k[:-3]} {v}" for k, v in r["stages_p50_ms"].items())
                rr = (f"; {r['reranked_mean']} reranked, windows {r['rerank_windows']}"
                      if "reranked_mean" in r else "")
                print(f"{size:>7} {name:40} p50 {r['p50_ms']:>8} ms  p95 {r['p95_ms']:>8} ms  ({st}{rr})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
