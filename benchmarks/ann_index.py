"""ragd's own dense index at scale: ``VectorIndex`` (store/vectors.py) started on a large
catalog with no snapshot, as the daemon starts: the exact index is built from the catalog and
serves while the IVF index is trained and filled in the background, then swapped in.

Synthetic clustered 1024-d unit vectors as in ``ann.py`` (made block by block, never all in
memory beside the index). Reports: the exact build, search p50 / p95 of the exact index
while the IVF build runs beside it, the build's time, search p50 / p95 and recall@10 of the
IVF index (against exact float32 scores, computed as the blocks stream by), filtered
searches (random allow-lists), peak and final RSS, the snapshot's size and load time.

    .venv/bin/python benchmarks/ann_index.py [--size 1000000] [--vectors float32,int8] [--nprobe 0]
        [--nprobes 16,64] [--spread 1.2] [--filters 1000,10000,100000] [--json]
    .venv/bin/python benchmarks/ann_index.py --catalog DATA_DIR/catalog.db [--nprobes 8,32,64]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann import DIM, queries_from, recall

from ragd.store.base import ChunkFilter
from ragd.store.vectors import IndexPlan, VectorIndex

BLOCK = 50_000


class Synthetic:
    """A ``DenseSource`` of ``n`` clustered vectors that keeps, as the blocks go by, the exact
    top 10 of each query (float32 inner products)."""

    def __init__(self, n: int, spread: float, queries: int) -> None:
        self.n, self.spread = n, spread
        rng = np.random.default_rng(0)
        self.centres = rng.standard_normal((max(100, n // 1000), DIM), dtype=np.float32)
        self.queries = queries_from(self.block(0, min(n, BLOCK)), queries, rng)
        self.best = np.full((queries, 10), -np.inf, dtype=np.float32)
        self.best_ids = np.full((queries, 10), -1, dtype=np.int64)

    def block(self, start: int, stop: int) -> np.ndarray:
        rng = np.random.default_rng(1000 + start)
        out = self.centres[rng.integers(0, len(self.centres), stop - start)]
        out += rng.standard_normal(out.shape, dtype=np.float32) * self.spread
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def iter_dense(self, model: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, self.n, BLOCK):
            stop = min(self.n, start + BLOCK)
            vecs, ids = self.block(start, stop), np.arange(start, stop, dtype=np.int64)
            scores = np.concatenate([self.best, self.queries @ vecs.T], axis=1)
            every = np.concatenate([self.best_ids, np.broadcast_to(ids, (len(self.queries), len(ids)))], axis=1)
            top = np.argsort(-scores, axis=1)[:, :10]
            self.best, self.best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(every, top, 1)
            yield ids, vecs


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        line = next(ln for ln in fh if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def timed(index: VectorIndex, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    found = np.full((len(queries), 10), -1, dtype=np.int64)
    times = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        hits = index.search(q, 10)
        times.append((time.perf_counter() - t) * 1000)
        found[i, : len(hits)] = [h for h, _ in hits]
    return found, times


def pct(times: list[float]) -> str:
    return f"{np.percentile(times, 50):.2f} / {np.percentile(times, 95):.2f}"


def run(n: int, storage: str, args: argparse.Namespace) -> dict[str, Any]:
    source = Synthetic(n, args.spread, args.queries)
    plan = IndexPlan(exact_limit=args.exact_limit, nprobe=args.nprobe, vectors=storage)
    t = time.perf_counter()
    index = VectorIndex.rebuild(source, 0, DIM, plan)
    row: dict[str, Any] = {"size": n, "vectors": storage, "exact_build_s": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    index.tune()
    during: list[float] = []
    while index.building and len(during) < args.queries:  # the exact index answers beside the build
        during += timed(index, source.queries[len(during) % len(source.queries):][:10])[1]
    index.wait()
    row["ivf_build_s"] = round(time.perf_counter() - t, 1)
    row["exact_p50_p95_ms_during_build"] = pct(during) if during else ""
    row["index"] = index.describe()
    row["probes"] = plan.probes(index._index.nlist)
    found, times = timed(index, source.queries)
    found, times = timed(index, source.queries)  # the second pass: pages warm
    row["ivf_p50_p95_ms"] = pct(times)
    row["recall@10"] = round(recall(found, source.best_ids), 4)
    for probes in (int(p) for p in args.nprobes.split(",") if p):
        index.plan = dataclasses.replace(plan, nprobe=probes)
        found, times = timed(index, source.queries)
        row[f"nprobe{probes}_p50_p95_ms_recall"] = f"{pct(times)} / {recall(found, source.best_ids):.4f}"
    index.plan = plan
    rng = np.random.default_rng(2)
    for size in (int(f) for f in args.filters.split(",") if f):
        where = ChunkFilter(np.sort(rng.choice(n, min(n, size), replace=False)).astype(np.int64))
        times = []
        for q in source.queries[:20]:
            t = time.perf_counter()
            index.search(q, 100, where)
            times.append((time.perf_counter() - t) * 1000)
        row[f"filter{size}_p50_p95_ms"] = pct(times)
    row["rss_mb"] = round(rss_mb())
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "snapshot.faiss"
        t = time.perf_counter()
        index.save(path, 1, "bench")
        row["save_s"] = round(time.perf_counter() - t, 1)
        row["snapshot_mb"] = round(path.stat().st_size / 2**20)
        expect = (index.count, int(index.ids().sum()))
        del index
        t = time.perf_counter()
        loaded = VectorIndex.load(path, 1, "bench", DIM, expect, plan)
        row["load_s"] = round(time.perf_counter() - t, 1)
        assert loaded is not None and loaded.approximate
    row["load"] = round(os.getloadavg()[0], 2)
    return row


def real(path: str, storage: str, args: argparse.Namespace) -> dict[str, Any]:
    """Recall on a ragd catalog's own dense vectors (read-only): ``--queries`` chunks held out
    as queries, the rest in an IVF index however few they are (``exact_limit`` 100)."""
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    data = np.stack([np.frombuffer(b, dtype=np.float32) for (b,) in db.execute("SELECT dense FROM embeddings")])
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    order = np.random.default_rng(0).permutation(len(data))
    queries, data = data[order[: args.queries]], np.ascontiguousarray(data[order[args.queries:]])
    truth = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    plan = IndexPlan(exact_limit=100, nprobe=args.nprobe, vectors=storage)
    index = VectorIndex(data.shape[1], plan=plan)
    index.add(np.arange(len(data), dtype=np.int64), data)
    index.wait()
    row: dict[str, Any] = {"catalog": path, "vectors": storage, "size": len(data), "index": index.describe()}
    for probes in [0] + [int(p) for p in args.nprobes.split(",") if p]:
        index.plan = dataclasses.replace(plan, nprobe=probes)
        found, times = timed(index, queries)
        row[f"nprobe{probes or index.plan.probes(index._index.nlist)}_p50_ms_recall"] = (
            f"{np.percentile(times, 50):.2f} / {recall(found, truth):.4f}")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--vectors", default="float32,int8", help="store.vectors values to run, comma-separated")
    parser.add_argument("--nprobe", type=int, default=IndexPlan.nprobe, help="store.nprobe (0: 1/16 of the lists)")
    parser.add_argument("--exact-limit", type=int, default=IndexPlan.exact_limit)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--spread", type=float, default=1.2, help="noise around each topic, as in ann.py")
    parser.add_argument("--nprobes", default="", help="more nprobe values to time after the build, e.g. 16,64")
    parser.add_argument("--filters", default="1000,10000,100000",
                        help="allow-list sizes to time filtered searches (top 100) with")
    parser.add_argument("--tmp", default=None, help="folder for the snapshot (default: the system's)")
    parser.add_argument("--catalog", default="", help="a ragd catalog.db: recall on its vectors instead")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for storage in args.vectors.split(","):
        rows.append(real(args.catalog, storage, args) if args.catalog else run(args.size, storage, args))
        if not args.json:
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(), "spread": args.spread,
                          "nprobe": args.nprobe, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
