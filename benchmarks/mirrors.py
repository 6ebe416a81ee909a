"""The search mirrors' memory and speed (``store/postings.py``): the sparse mirror
(``SparseIndex``, BGE-M3 lexical weights keyed by chunk hash) and the full-text mirror
(``LexicalIndex``, BM25 keyed by chunk id), in memory and memory-mapped, on synthetic
indexes of 100k and 1M chunks.

    .venv/bin/python benchmarks/mirrors.py [--json] [--chunks 100000,1000000] [--forms memory,mapped]
                                           [--mirrors sparse,lexical] [--queries 200] [--before DIR]

``--before DIR`` adds the form "before": the in-memory mirror of another checkout's
``daemon`` folder (e.g. ``git archive`` of the commit before the mapped form), run the same way.

Data (seeded, the same for every form):

* sparse: BGE-M3's vocabulary (250k token ids) with Zipf token frequencies and the weights of
  ``sparse.py`` (its ``Vocabulary``): a chunk holds the first U(50, 150) distinct tokens of a
  Zipf stream; keys are 32-hex chunk hashes (blake2b-128, as the indexer writes them); a
  query is 5-20 distinct tokens of the same stream;
* lexical: a word vocabulary of 500k terms ``t<rank>`` with Zipf frequencies; a chunk is the
  first U(50, 150) distinct words of a Zipf stream, each repeated 1 + Geometric(0.6) - 1
  times, as space-separated text (``Catalog.lexical_rows``); keys are chunk ids 1..N; a
  query is 2-8 words of the same stream.

Each (mirror, form, size) runs in two fresh processes, so the memory of one step never
counts in the next: the first makes the rows, then builds the mirror from them as the catalog
yields them (build time and memory are of the build alone) and saves its snapshot; the second loads that
snapshot and answers the queries (one untimed pass first, so the page cache is warm).
Memory is read from /proc/self/status: ``RssAnon`` (the process's own memory) and
``RssFile`` (file pages mapped in: the page cache, which the kernel can drop and read
back), each less what the process held before the mirror; "peak" is VmHWM (anonymous and
file-backed together, so a mapped build's written pages count) less the same, and "peak
anon" the highest RssAnon sampled every 20 ms during the build, less the same. Snapshot size
counts every file the snapshot is made of.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, percentile
from sparse import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-mirrors"
BLOCK = 20_000
WORDS = 500_000


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def memory() -> dict[str, int]:
    """RssAnon, RssFile and VmHWM of this process, bytes."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


class Words:
    """Zipf over a word vocabulary, for the full-text rows."""

    def __init__(self) -> None:
        ranks = np.arange(1, WORDS + 1, dtype=np.float64)
        p = ranks**-1.0
        self.cdf = np.cumsum(p / p.sum())
        self.cdf[-1] = 1.0
        self.names = np.array([f"t{i}" for i in range(WORDS)])

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return np.searchsorted(self.cdf, rng.random(shape)).astype(np.int32)


def distinct_prefix(ranks: np.ndarray, want: np.ndarray) -> list[np.ndarray]:
    """Per row, its first ``want`` distinct values in draw order."""
    order = np.argsort(ranks, axis=1, kind="stable")
    srt = np.take_along_axis(ranks, order, axis=1)
    first_sorted = np.ones_like(srt, dtype=bool)
    first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
    first = np.zeros_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    keep = first & (np.cumsum(first, axis=1) <= want[:, None])
    return [ranks[i][keep[i]] for i in range(len(ranks))]


def sparse_rows(chunks: int, seed: int = 1) -> Iterator[tuple[str, bytes]]:
    """(chunk hash, encoded weights), block by block, as ``Catalog.sparse_rows`` yields them."""
    vocab = Vocabulary("idf")
    rng = np.random.default_rng(seed)
    for start in range(0, chunks, BLOCK):
        n = min(BLOCK, chunks - start)
        raw = rng.bytes(16 * n)
        sets = distinct_prefix(vocab.draw_ranks(rng, (n, 260)), rng.integers(50, 151, n))
        for i, ranks0 in enumerate(sets):
            tokens = vocab.token_of_rank[ranks0]
            yield raw[16 * i : 16 * i + 16].hex(), tokens.astype("<i4").tobytes() + vocab.weight(rng, ranks0).tobytes()


def sparse_queries(count: int, seed: int = 7) -> list[dict[int, float]]:
    vocab = Vocabulary("idf")
    rng = np.random.default_rng(seed)
    sets = distinct_prefix(vocab.draw_ranks(rng, (count, 40)), rng.integers(5, 21, count))
    return [dict(zip(vocab.token_of_rank[r].tolist(), vocab.weight(rng, r).astype(float).tolist(), strict=True))
            for r in sets]


def lexical_rows(chunks: int, seed: int = 2) -> Iterator[tuple[int, str]]:
    """(chunk id, terms as stored), as ``Catalog.lexical_rows`` yields them."""
    words = Words()
    rng = np.random.default_rng(seed)
    for start in range(0, chunks, BLOCK):
        n = min(BLOCK, chunks - start)
        sets = distinct_prefix(words.draw(rng, (n, 300)), rng.integers(50, 151, n))
        for i, ranks in enumerate(sets):
            repeat = rng.geometric(0.6, len(ranks))
            yield start + i + 1, " ".join(words.names[np.repeat(ranks, repeat)].tolist())


def lexical_queries(count: int, seed: int = 8) -> list[list[str]]:
    words = Words()
    rng = np.random.default_rng(seed)
    sets = distinct_prefix(words.draw(rng, (count, 20)), rng.integers(2, 9, count))
    return [words.names[r].tolist() for r in sets]


def snapshot_bytes(path: Path) -> int:
    """The snapshot file and every file of the mapped bases beside it."""
    total = path.stat().st_size if path.is_file() else 0
    for entry in path.parent.iterdir():
        if entry.is_dir():
            total += sum(f.stat().st_size for f in entry.iterdir())
    return total


def kind_of(mirror: str) -> Any:
    from ragd.store.postings import LexicalIndex, SparseIndex

    return SparseIndex if mirror == "sparse" else LexicalIndex


class PeakAnon:
    """The highest RssAnon seen while inside, sampled every 20 ms (the kernel keeps a peak only
    of anonymous and file-backed memory together, VmHWM)."""

    def __enter__(self) -> PeakAnon:
        self.peak = memory()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, memory()["RssAnon"])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory()["RssAnon"])


def step_build(mirror: str, form: str, chunks: int, folder: Path) -> dict[str, Any]:
    kind = kind_of(mirror)
    path = folder / f"{mirror}.npz"
    rows: list[Any] = list(sparse_rows(chunks) if mirror == "sparse" else lexical_rows(chunks))
    gc.collect()
    before = memory()
    started = time.perf_counter()
    with PeakAnon() as peak:
        index = kind.build(iter(rows), mapped=path) if form == "mapped" else kind.build(iter(rows))
    built = time.perf_counter() - started
    gc.collect()
    after = memory()
    started = time.perf_counter()
    index.save(path, 1, "bench")
    saved = time.perf_counter() - started
    return {"build_s": built, "save_s": saved, "postings": index.postings, "keys": index.count,
            "anon_after_build": after["RssAnon"] - before["RssAnon"],
            "file_after_build": after["RssFile"] - before["RssFile"],
            "peak_build": after["VmHWM"] - before["VmHWM"], "peak_anon_build": peak.peak - before["RssAnon"],
            "arrays_bytes": index.nbytes, "snapshot_bytes": snapshot_bytes(path)}


def step_load(mirror: str, form: str, chunks: int, folder: Path, queries: int) -> dict[str, Any]:
    kind = kind_of(mirror)
    path = folder / f"{mirror}.npz"
    qs: list[Any] = sparse_queries(queries) if mirror == "sparse" else lexical_queries(queries)
    gc.collect()
    before = memory()
    started = time.perf_counter()
    index = kind.load(path, 1, "bench", mapped=True) if form == "mapped" else kind.load(path, 1, "bench")
    loaded = time.perf_counter() - started
    assert index is not None and index.count == chunks, "the snapshot did not load"
    gc.collect()
    after_load = memory()
    for q in qs:  # warm
        index.search(q, 100)
    times = []
    for q in qs:
        started = time.perf_counter()
        index.search(q, 100)
        times.append((time.perf_counter() - started) * 1000)
    after = memory()
    first = index.search(qs[0], 10)
    return {"load_s": loaded, "anon_after_load": after_load["RssAnon"] - before["RssAnon"],
            "file_after_load": after_load["RssFile"] - before["RssFile"],
            "anon_after_queries": after["RssAnon"] - before["RssAnon"],
            "file_after_queries": after["RssFile"] - before["RssFile"],
            "p50_ms": statistics.median(times), "p95_ms": percentile(times, 0.95),
            "top": [[str(k), s] for k, s in first]}


def run_step(args: list[str], daemon: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if daemon:
        env["PYTHONPATH"] = daemon
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise RuntimeError(f"{args}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", default="100000,1000000")
    ap.add_argument("--forms", default="memory,mapped")
    ap.add_argument("--mirrors", default="sparse,lexical")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--before", help="a daemon folder whose in-memory mirrors are measured as the form 'before'")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--step", nargs=4, metavar=("STEP", "MIRROR", "FORM", "CHUNKS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        step, mirror, form, chunks = args.step
        folder = CACHE / f"{mirror}-{form}-{chunks}"
        if step == "build":
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            out = step_build(mirror, form, int(chunks), folder)
        else:
            out = step_load(mirror, form, int(chunks), folder, args.queries)
        print(json.dumps(out))
        return
    results: list[dict[str, Any]] = []
    for chunks in [int(c) for c in args.chunks.split(",")]:
        for mirror in args.mirrors.split(","):
            for form in (["before"] if args.before else []) + args.forms.split(","):
                daemon = args.before if form == "before" else None
                log(f"[{mirror} {form} {chunks}] building")
                built = run_step(["--step", "build", mirror, form, str(chunks)], daemon)
                log(f"[{mirror} {form} {chunks}] loading and searching")
                loaded = run_step(["--step", "load", mirror, form, str(chunks), "--queries", str(args.queries)], daemon)
                row = {"mirror": mirror, "form": form, "chunks": chunks, **built, **loaded}
                results.append(row)
                log(json.dumps({k: v for k, v in row.items() if k != "top"}))
                shutil.rmtree(CACHE / f"{mirror}-{form}-{chunks}", ignore_errors=True)
    tops = {}
    for r in results:  # every form must answer alike
        tops.setdefault((r["mirror"], r["chunks"]), []).append(r.pop("top"))
    same = all(all(t == ts[0] for t in ts) for ts in tops.values())
    report = {"machine": machine(), "load_avg": os.getloadavg(), "results": results, "forms_agree": same}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    mb = 1 << 20
    print(f"{'mirror':8} {'form':7} {'chunks':>9} {'postings':>12} {'anon MB':>8} {'file MB':>8} {'peak MB':>8} "
          f"{'snap MB':>8} {'build s':>8} {'load s':>7} {'p50 ms':>7} {'p95 ms':>7}")
    for r in results:
        print(f"{r['mirror']:8} {r['form']:7} {r['chunks']:>9,} {r['postings']:>12,} "
              f"{r['anon_after_queries'] / mb:>8.0f} {r['file_after_queries'] / mb:>8.0f} {r['peak_build'] / mb:>8.0f} "
              f"{r['snapshot_bytes'] / mb:>8.0f} {r['build_s']:>8.1f} {r['load_s']:>7.2f} {r['p50_ms']:>7.2f} "
              f"{r['p95_ms']:>7.2f}")
    print(f"forms agree: {same}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
