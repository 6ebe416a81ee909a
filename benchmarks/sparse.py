"""Sparse retrieval benchmark: ``Catalog.sparse_search`` (BGE-M3 lexical weights, inverted
index in SQLite) on synthetic indexes of 10k, 100k and 1M chunks.

    .venv/bin/python benchmarks/sparse.py [--json] [--chunks 10000,100000,1000000] [--queries 100]
                                          [--limit 100] [--weights idf|flat] [--check 5]

The index is synthetic, with BGE-M3's vocabulary (250,002 token ids, 4 special ids never
used) and statistics chosen to look like its lexical weights:

* token frequencies follow Zipf's law (exponent 1.0 over 249,997 tokens, token ids a fixed
  random permutation of the ranks); a chunk is the set of distinct tokens of a stream of
  draws, cut at 60-120 distinct tokens (uniform), so the most frequent tokens are in nearly
  every chunk, as stop words and punctuation are;
* ``--weights idf`` (default): a posting's weight is ``base(rank) x U(0.5, 1.2)`` with
  ``base`` rising with the log of the token's frequency rank from 0.04 (rank 1) to 0.30
  (rank >= 20,000), i.e. weights in 0.02..0.36, frequent tokens low, as BGE-M3 gives
  "is"/"of" ~0.06-0.08 and rare pieces 0.13-0.33 (its model card's example);
  ``--weights flat``: ``U(0.01, 0.35)`` regardless of frequency (a harder case for pruning);
* queries: 5-20 distinct tokens drawn from the same distribution, with weights from the same model.

Each index is written once with ``Catalog``'s own schema (so any migration the catalog
performs on open also runs) into ``.cache/bench-sparse/`` and reused; the postings are
inserted in primary-key order. Timings are of ``Catalog.sparse_search`` with a warm OS page
cache (one untimed pass over the queries first); "postings" is the sum of the posting-list
lengths of the query's tokens, which an exhaustive evaluation reads, and "touched" what the
current ``sparse_search`` read (when it reports it). ``--check N`` compares the first N
queries' results with an exhaustive SQL evaluation (score within 1e-9, same chunks up to ties).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, percentile

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-sparse"
VOCAB = 250_002
FIRST_ID = 4  # <s> <pad> </s> <unk>; the last id (250001) is <mask>
N_TOKENS = VOCAB - FIRST_ID - 1
ZIPF_S = 1.0
GENERATOR_VERSION = 1
MODEL_NAME = "bench-sparse@synthetic"
BLOCK = 20_000  # chunks generated at once


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


class Vocabulary:
    """Zipf frequencies over the token ranks and the weight model."""

    def __init__(self, weights: str, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        ranks = np.arange(1, N_TOKENS + 1, dtype=np.float64)
        p = ranks**-ZIPF_S
        self.cdf = np.cumsum(p / p.sum())
        self.cdf[-1] = 1.0
        self.token_of_rank = (rng.permutation(N_TOKENS) + FIRST_ID).astype(np.int32)  # rank index -> token id
        self.weights = weights

    def draw_ranks(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return np.searchsorted(self.cdf, rng.random(shape)).astype(np.int32)  # 0-based rank

    def weight(self, rng: np.random.Generator, rank0: np.ndarray) -> np.ndarray:
        if self.weights == "flat":
            w = rng.uniform(0.01, 0.35, rank0.shape)
        else:
            base = 0.04 + 0.26 * np.minimum(1.0, np.log(rank0 + 1.0) / math.log(20_000))
            w = base * rng.uniform(0.5, 1.2, rank0.shape)
        return w.astype(np.float32)

    def sets(self, rng: np.random.Generator, n: int, low: int, high: int, draws: int) -> list[np.ndarray]:
        """``n`` sets of distinct 0-based ranks: the first ``U(low, high)`` distinct of a Zipf stream."""
        ranks = self.draw_ranks(rng, (n, draws))
        want = rng.integers(low, high + 1, n)
        order = np.argsort(ranks, axis=1, kind="stable")
        srt = np.take_along_axis(ranks, order, axis=1)
        first_sorted = np.ones_like(srt, dtype=bool)
        first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
        first = np.zeros_like(first_sorted)
        np.put_along_axis(first, order, first_sorted, axis=1)  # first occurrence, in draw order
        keep = first & (np.cumsum(first, axis=1) <= want[:, None])
        return [ranks[i][keep[i]] for i in range(n)]


def db_path(chunks: int, weights: str, seed: int) -> Path:
    return CACHE / f"sparse-{chunks}-{weights}-s{seed}-v{GENERATOR_VERSION}.db"


def build(chunks: int, vocab: Vocabulary, seed: int) -> Path:
    """Write (or reuse) the synthetic index of ``chunks`` chunks; returns the catalog path."""
    from ragd.store.catalog import Catalog

    path = db_path(chunks, vocab.weights, seed)
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("complete"):
        return path
    for stale in (path, meta, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    started = time.monotonic()
    rng = np.random.default_rng(1000 + seed)
    raw = rng.bytes(16 * chunks)
    hashes = np.array([raw[i : i + 16].hex() for i in range(0, 16 * chunks, 16)])  # like blake2b-128 hex
    hash_rank = np.empty(chunks, dtype=np.int32)
    hash_rank[np.argsort(hashes)] = np.arange(chunks, dtype=np.int32)  # primary-key order of each chunk
    log(f"[{chunks}] generating postings")
    tok_parts, doc_parts, w_parts = [], [], []
    for start in range(0, chunks, BLOCK):
        n = min(BLOCK, chunks - start)
        sets = vocab.sets(rng, n, 60, 120, 200)
        lens = np.fromiter((len(s) for s in sets), dtype=np.int64, count=n)
        ranks0 = np.concatenate(sets)
        tok_parts.append(vocab.token_of_rank[ranks0])
        doc_parts.append(np.repeat(hash_rank[start : start + n], lens))
        w_parts.append(vocab.weight(rng, ranks0))
    tokens, docs, weights = np.concatenate(tok_parts), np.concatenate(doc_parts), np.concatenate(w_parts)
    del tok_parts, doc_parts, w_parts
    order = np.argsort(tokens.astype(np.int64) << 32 | docs.astype(np.int64), kind="stable")
    tokens, docs, weights = tokens[order], docs[order], weights[order]
    del order
    sorted_hashes = np.sort(hashes)
    total = len(tokens)
    log(f"[{chunks}] {total:,} postings ({total / chunks:.1f} per chunk); writing {path.name}")
    catalog = Catalog(path)
    model = catalog.model_key(MODEL_NAME, 1024)
    conn = catalog.db.conn
    conn.execute("PRAGMA cache_size=-262144")
    step = 1_000_000
    for i in range(0, total, step):
        rows = zip([model] * min(step, total - i), tokens[i : i + step].tolist(),
                   sorted_hashes[docs[i : i + step]].tolist(), weights[i : i + step].tolist(), strict=True)
        with conn:
            conn.executemany("INSERT INTO sparse(model, token, chunk_hash, weight) VALUES (?, ?, ?, ?)", rows)
        log(f"[{chunks}] {min(total, i + step):,} / {total:,} postings, {time.monotonic() - started:.0f} s")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    catalog.close()
    df = np.bincount(tokens, minlength=VOCAB)
    np.save(path.with_suffix(".df.npy"), df)
    meta.write_text(json.dumps({"complete": True, "chunks": chunks, "postings": int(total), "weights": vocab.weights,
                                "seed": seed, "build_s": round(time.monotonic() - started, 1)}))
    return path


def make_queries(vocab: Vocabulary, n: int, seed: int) -> list[dict[int, float]]:
    rng = np.random.default_rng(2000 + seed)
    out = []
    for ranks0 in vocab.sets(rng, n, 5, 20, 60):
        w = vocab.weight(rng, ranks0)
        out.append({int(t): float(x) for t, x in zip(vocab.token_of_rank[ranks0], w, strict=True)})
    return out


def exhaustive(catalog: Any, model: int, weights: dict[int, float], limit: int) -> list[tuple[str, float]]:
    """Every posting of every query token, summed and sorted in SQL (the reference)."""
    values = ",".join("(?, ?)" for _ in weights)
    params: list[Any] = [x for tok, w in weights.items() for x in (int(tok), float(w))]
    rows = catalog.db.execute(
        f"WITH q(token, w) AS (VALUES {values}) "
        "SELECT s.chunk_hash, SUM(s.weight * q.w) AS score FROM q JOIN sparse s "
        "ON s.model = ? AND s.token = q.token GROUP BY s.chunk_hash ORDER BY score DESC, s.chunk_hash LIMIT ?",
        [*params, model, limit],
    )
    return [(str(h), float(s)) for h, s in rows]


def same_results(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    """Equal scores (1e-9) rank by rank, and the same chunks except where scores tie at the cut."""
    if len(got) != len(want):
        return False
    if any(abs(a[1] - b[1]) > 1e-9 for a, b in zip(got, want, strict=True)):
        return False
    cut = want[-1][1] if want else 0.0
    strict_got = {h for h, s in got if s > cut + 1e-9}
    strict_want = {h for h, s in want if s > cut + 1e-9}
    return strict_got == strict_want



def run_size(chunks: int, vocab: Vocabulary, args: argparse.Namespace) -> dict[str, Any]:
    from ragd.store.catalog import Catalog

    path = build(chunks, vocab, args.seed)
    df = np.load(path.with_suffix(".df.npy"))
    t = time.perf_counter()
    catalog = Catalog(path)  # runs any migration of the sparse table
    open_s = time.perf_counter() - t
    model = catalog.model_key(MODEL_NAME, 1024)
    queries = make_queries(vocab, args.queries, args.seed)
    supports_stats = "stats" in Catalog.sparse_search.__code__.co_varnames

    def one(q: dict[int, float]) -> tuple[list[tuple[str, float]], dict[str, Any]]:
        stats: dict[str, Any] = {}
        if supports_stats:
            return catalog.sparse_search(model, q, args.limit, stats=stats), stats  # type: ignore[call-arg]
        return catalog.sparse_search(model, q, args.limit), stats

    log(f"[{chunks}] warm-up pass over {len(queries)} queries")
    warm_start = time.monotonic()
    done = 0
    for q in queries:
        one(q)
        done += 1
        if time.monotonic() - warm_start > args.max_seconds:
            break
    queries = queries[:done]
    times, cpu, touched = [], [], []
    for q in queries:
        t, c = time.perf_counter(), time.process_time()
        _, stats = one(q)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        touched.append(sum(int(stats.get(k, 0)) for k in ("postings_read", "postings_scanned", "postings_looked_up")))
    postings = [int(sum(df[t] for t in q)) for q in queries]
    checked = mismatches = 0
    for q in queries[: args.check]:
        checked += 1
        if not same_results(one(q)[0], exhaustive(catalog, model, q, args.limit)):
            mismatches += 1
    size = path.stat().st_size
    out: dict[str, Any] = {
        "chunks": chunks,
        "postings_total": int(df.sum()),
        "db_bytes": size,
        "open_s": round(open_s, 2),
        "queries": len(times),
        "query_tokens_mean": round(statistics.mean(len(q) for q in queries), 1),
        "p50_ms": round(percentile(times, 0.5), 2),
        "p95_ms": round(percentile(times, 0.95), 2),
        "max_ms": round(max(times), 2),
        "cpu_p50_ms": round(percentile(cpu, 0.5), 2),
        "cpu_p95_ms": round(percentile(cpu, 0.95), 2),
        "postings_per_query_p50": int(percentile([float(x) for x in postings], 0.5)),
        "postings_per_query_p95": int(percentile([float(x) for x in postings], 0.95)),
        "checked_against_exhaustive": checked,
        "mismatches": mismatches,
    }
    if supports_stats:
        out["touched_per_query_p50"] = int(percentile([float(x) for x in touched], 0.5))
        out["touched_per_query_p95"] = int(percentile([float(x) for x in touched], 0.95))
    if args.exhaustive:
        ex = []
        for q in queries[: args.exhaustive]:
            t = time.perf_counter()
            exhaustive(catalog, model, q, args.limit)
            ex.append((time.perf_counter() - t) * 1000)
        out["exhaustive_queries"] = len(ex)
        out["exhaustive_p50_ms"] = round(percentile(ex, 0.5), 1)
        out["exhaustive_p95_ms"] = round(percentile(ex, 0.95), 1)
    catalog.close()
    return out



def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--chunks", default="10000,100000,1000000", help="index sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=100, help="timed queries per size")
    parser.add_argument("--limit", type=int, default=100, help="results per query (search's pool)")
    parser.add_argument("--weights", default="idf", choices=["idf", "flat"], help="weight model (see above)")
    parser.add_argument("--check", type=int, default=5, help="queries compared with an exhaustive evaluation")
    parser.add_argument("--exhaustive", type=int, default=0, help="also time the exhaustive SQL on N queries")
    parser.add_argument("--max-seconds", type=float, default=240, help="fewer queries when a pass takes longer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.chunks.split(",") if s.strip()]
    vocab = Vocabulary(args.weights)
    load = [os.getloadavg()[0]]
    results = []
    for n in sizes:
        results.append(run_size(n, vocab, args))
        load.append(os.getloadavg()[0])
        log(json.dumps(results[-1]))
    result = {"machine": machine(), "weights": args.weights, "limit": args.limit, "load_average": load,
              "sizes": results}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'chunks':>9} {'postings':>12} {'p50 ms':>8} {'p95 ms':>8} {'postings/query p50':>19} "
              f"{'touched p50':>12} {'checked':>8}")
        for r in results:
            print(f"{r['chunks']:>9,} {r['postings_total']:>12,} {r['p50_ms']:>8} {r['p95_ms']:>8} "
                  f"{r['postings_per_query_p50']:>19,} {r.get('touched_per_query_p50', '-'):>12} "
                  f"{r['checked_against_exhaustive'] - r['mismatches']}/{r['checked_against_exhaustive']}")
        print(f"{result['machine']['cpu']}, {result['machine']['cores']} cores, load {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
