"""Which FAISS index for a large ragd index: exact inner product against HNSW and IVF on
synthetic 1024-dimensional unit vectors, clustered like text embeddings.

For each size: build time, memory of the index, search p50 / p95 for one query (ragd searches
one query at a time) and recall@10 against the exact index. Vectors are a mixture of Gaussian
clusters (one per "topic") normalised to unit length; queries are perturbed copies of indexed
vectors. Every index type can remove ids (``IndexIDMap2`` / IVF's direct map), as ragd needs.

    .venv/bin/python benchmarks/ann.py [--sizes 100000,1000000] [--queries 200] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

DIM = 1024


def vectors(n: int, rng: np.random.Generator, topics: int, spread: float) -> np.ndarray:
    """``n`` unit vectors around ``topics`` random centres (noise ``spread`` per dimension, in
    units of a centre's own), made in blocks to bound memory."""
    centres = rng.standard_normal((topics, DIM), dtype=np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = centres[rng.integers(0, topics, stop - start)]
        block += rng.standard_normal(block.shape, dtype=np.float32) * spread
        out[start:stop] = block
    faiss.normalize_L2(out)
    return out


def queries_from(data: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    picked = data[rng.choice(len(data), count, replace=False)].copy()
    picked += rng.standard_normal(picked.shape, dtype=np.float32) * 0.03
    faiss.normalize_L2(picked)
    return picked


def index_bytes(index: Any) -> int:
    return len(faiss.serialize_index(index))


def timed_search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    ids = np.empty((len(queries), k), dtype=np.int64)
    times = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        _, found = index.search(q[None, :], k)
        times.append((time.perf_counter() - t) * 1000)
        ids[i] = found[0]
    return ids, times


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def builders(n: int) -> dict[str, Callable[[np.ndarray], Any]]:
    nlist = int(4 * np.sqrt(n))

    def flat(data: np.ndarray) -> Any:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        index.add_with_ids(data, np.arange(len(data), dtype=np.int64))
        return index

    def hnsw(data: np.ndarray, m: int = 32) -> Any:
        inner = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(data, np.arange(len(data), dtype=np.int64))
        return index

    def ivf(data: np.ndarray, kind: str = "flat") -> Any:
        quantizer = faiss.IndexFlatIP(DIM)
        if kind == "sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, DIM, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, DIM, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = data[np.random.default_rng(1).choice(len(data), min(len(data), 64 * nlist), replace=False)]
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids by id
        index.add_with_ids(data, np.arange(len(data), dtype=np.int64))
        return index

    return {"exact": flat, "hnsw32": hnsw, f"ivf{nlist}-flat": ivf,
            f"ivf{nlist}-sq8": lambda d: ivf(d, "sq8")}


def search_settings(name: str, index: Any) -> list[tuple[str, Callable[[], None]]]:
    """The search-time knobs tried per index type: (label, apply)."""
    if name.startswith("hnsw"):
        inner = faiss.downcast_index(index.index)
        return [(f"efSearch={ef}", lambda ef=ef: setattr(inner.hnsw, "efSearch", ef)) for ef in (64, 128, 256)]
    if name.startswith("ivf"):
        return [(f"nprobe={p}", lambda p=p: setattr(index, "nprobe", p)) for p in (16, 32, 64)]
    return [("", lambda: None)]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads (build and search)")
    parser.add_argument("--only", default="", help="comma-separated index names to run (default: all)")
    parser.add_argument("--spread", type=float, default=1.2,
                        help="noise around each topic; larger is harder for approximate indexes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
                              "dim": DIM, "spread": args.spread, "sizes": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        data = vectors(n, rng, topics=max(100, n // 1000), spread=args.spread)
        queries = queries_from(data, args.queries, rng)
        rows: list[dict[str, Any]] = []
        truth = None
        for name, build in builders(n).items():
            if args.only and name.split("-")[0].rstrip("0123456789") not in args.only.split(",") and name != "exact":
                continue
            t = time.perf_counter()
            index = build(data)
            build_s = time.perf_counter() - t
            size = index_bytes(index)
            for label, apply in search_settings(name, index):
                apply()
                found, times = timed_search(index, queries, 10)
                if truth is None:
                    truth = found
                row = {"index": name, "search": label, "build_s": round(build_s, 1), "bytes": size,
                       "p50_ms": round(float(np.percentile(times, 50)), 2),
                       "p95_ms": round(float(np.percentile(times, 95)), 2),
                       "recall@10": round(recall(found, truth), 4), "load": round(os.getloadavg()[0], 2)}
                rows.append(row)
                if not args.json:
                    print(n, json.dumps(row), flush=True)
            del index
        report["sizes"][str(n)] = rows
        del data
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
