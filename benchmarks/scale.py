"""Scale benchmark: ragd's index at hundreds of thousands to millions of chunks, end to end.

For each size a synthetic catalog is written once through the indexer's write path
(``Catalog.apply``: chunk text, full-text terms, dense vectors, BGE-M3-style lexical
weights) into ``.cache/bench-scale/<size>/``. Then each store configuration runs in a
process of its own (so its memory is its own): the engine opens the store from the catalog
(the cold build a first start or a lost snapshot costs, including any background training),
saves and reloads its snapshots, and answers ``--queries`` hybrid and dense searches through
``ragd.search.search``. Reported per configuration: build, save and load seconds, snapshot
bytes on disk, RSS (anonymous and file-backed, and the peak), search p50 / p95, and recall@10
of the dense and hybrid top 10 against the ``exact`` configuration's (same queries).

    .venv/bin/python benchmarks/scale.py [--sizes 100000,1000000] [--queries 200]
                                          [--configs exact,faiss,faiss-int8,milvus-lite] [--json]

``--layer stores`` measures the layer that grows with the index without the catalog (writing
a catalog of a million chunks through ``Catalog.apply`` takes hours on a 2-core machine): the
dense index (``VectorIndex`` as the local backend builds it: exact, then its IVF index built
in the background), the sparse and full-text mirrors (``SparseIndex`` / ``LexicalIndex``,
in ``store.mirrors``'s form for that size) built from the same synthetic rows, and a hybrid
query as ``search`` runs it: sparse and full text on side threads beside the dense search,
then ``fuse``. Recall@10 is against the same signals with exact dense scores.

    .venv/bin/python benchmarks/scale.py --layer stores [--sizes 1000000,5000000]
                                          [--configs faiss,faiss-int8] [--json]

Data (deterministic, ``--seed``): 1024-dimensional unit vectors clustered around one random
centre per 1,000 chunks (noise per dimension ``--spread`` times a centre's, as in
``benchmarks/ann.py``); chunk text of 120 pseudo-words, three quarters drawn from a Zipf-like
vocabulary of 64,000 words and a quarter from the chunk's topic's 40 words; lexical weights
per distinct word, low for frequent words (as ``benchmarks/search.py``). A query is a chunk's
3 rarest words and 2 others, its dense vector the chunk's perturbed (noise 0.03 per
dimension), its lexical weights those words'. The embedder is ragd's fake model at 1,024
dimensions, with the synthetic query embeddings put in (query embedding is not what scales).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, percentile

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-scale"
DIM = 1024
BLOCK = 2000  # chunks per write batch and per generated block
BUILD_VERSION = 1
WORDS = 64_000
TOPIC_WORDS = 40
CHUNK_WORDS = 120

CONFIGS: dict[str, dict[str, Any]] = {
    "exact": {"backend": "faiss", "exact_limit": 2**31 - 1},
    "faiss": {"backend": "faiss"},
    "faiss-int8": {"backend": "faiss", "vectors": "int8"},
    "milvus-lite": {"backend": "milvus", "uri": "{data}/milvus.db"},
}
"""Store settings per configuration (``[store]`` keys; ``{data}`` is the size's folder)."""


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


# -- the synthetic collection -------------------------------------------------------------
class Collection:
    """The synthetic chunks of one size, generated block by block from ``seed``."""

    def __init__(self, size: int, seed: int, spread: float) -> None:
        self.size, self.seed, self.spread = size, seed, spread
        rng = np.random.default_rng(seed)
        self.topics = max(1, size // 1000)
        self.centres = rng.standard_normal((self.topics, DIM), dtype=np.float32)
        syllables = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"][:40]
        self.words = [a + b + c for a in syllables for b in syllables for c in syllables][:WORDS]
        rng.shuffle(self.words)  # the frequency rank is not alphabetical
        p = 1.0 / (np.arange(WORDS) + 2.7)
        self.p = p / p.sum()
        band = np.arange(2000, WORDS)  # topic words come from the rarer part of the vocabulary
        self.topic_words = np.stack([rng.choice(band, TOPIC_WORDS, replace=False) for _ in range(self.topics)])

    def block(self, start: int) -> dict[str, Any]:
        """Chunks ``start`` .. ``start + BLOCK``: topic, dense vectors and word ids."""
        n = min(BLOCK, self.size - start)
        rng = np.random.default_rng([self.seed, start])
        topic = rng.integers(0, self.topics, n)
        dense = self.centres[topic] + rng.standard_normal((n, DIM), dtype=np.float32) * self.spread
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        general = rng.choice(WORDS, size=(n, CHUNK_WORDS * 3 // 4), p=self.p)
        own = self.topic_words[topic][np.arange(n)[:, None], rng.integers(0, TOPIC_WORDS, (n, CHUNK_WORDS // 4))]
        words = np.concatenate([general, own], axis=1)
        rng.permuted(words, axis=1, out=words)
        jitter = rng.uniform(0.5, 1.2, words.shape).astype(np.float32)
        return {"n": n, "dense": dense.astype(np.float32), "words": words, "jitter": jitter}

    def text(self, words: np.ndarray) -> str:
        return " ".join(self.words[w] for w in words.tolist())

    @staticmethod
    def weights(words: np.ndarray, jitter: np.ndarray) -> dict[int, float]:
        """BGE-M3-like lexical weights: one per distinct word (token id 1000 + word id),
        low for frequent words."""
        out: dict[int, float] = {}
        for w, j in zip(words.tolist(), jitter.tolist(), strict=True):
            out.setdefault(1000 + w, float(np.float32(base_weight(w + 1) * j)))
        return out

    def queries(self, count: int) -> list[dict[str, Any]]:
        """``count`` queries, each from a random chunk: its text, dense vector and weights."""
        rng = np.random.default_rng([self.seed, 7])
        picked = sorted(rng.choice(self.size, count, replace=False).tolist())
        out = []
        for idx in picked:
            b = self.block(idx - idx % BLOCK)
            words = b["words"][idx % BLOCK]
            distinct = sorted(set(words.tolist()), reverse=True)  # rarest first
            chosen = distinct[:3] + rng.choice(distinct[3:], 2, replace=False).tolist()
            vec = b["dense"][idx % BLOCK] + rng.standard_normal(DIM).astype(np.float32) * 0.03
            vec /= np.linalg.norm(vec)
            weights = {1000 + w: float(base_weight(w + 1) * rng.uniform(0.5, 1.2)) for w in chosen}
            out.append({"text": " ".join(self.words[w] for w in chosen), "dense": vec.astype(np.float32),
                        "sparse": weights, "chunk": idx})
        return out


def base_weight(rank: int) -> float:
    """Typical BGE-M3 lexical weight of the word with this frequency rank (1 = most frequent)."""
    return 0.04 + 0.26 * min(1.0, float(np.log(rank + 1.0) / np.log(20_000)))


# -- building ------------------------------------------------------------------------------
def config_for(data: Path, store: dict[str, Any], model: Path) -> Any:
    from ragd.config import parse_config

    table = {k: (v.format(data=data) if isinstance(v, str) else v) for k, v in store.items()}
    return parse_config({"data_dir": str(data), "models": {"embedder": str(model), "reranker": "none",
                                                          "fallback": "none"}, "store": table},
                        source=data / "config.toml")


def fake_model() -> Path:
    from ragd.models.fake import write_fake_model

    return write_fake_model(CACHE / "fake-embedder-1024", dim=DIM)


def ensure_catalog(size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Write the size's catalog unless it is there; what it holds and what it took."""
    from ragd.indexer import content_hash
    from ragd.store.catalog import Catalog, FileUpdate, NewChunk, NewEmbedding

    data = CACHE / str(size)
    label = {"version": BUILD_VERSION, "size": size, "seed": args.seed, "spread": args.spread}
    done = data / "built.json"
    if done.exists() and json.loads(done.read_text())["label"] == label:
        return json.loads(done.read_text())
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True, mode=0o700)
    model = fake_model()
    from ragd.models import load_models

    embedder = load_models(config_for(data, {"backend": "faiss"}, model).models, rerank=False, warn=False).embedder
    catalog = Catalog(data / "catalog.db")
    key = catalog.model_key(embedder.model_id, DIM)
    root = catalog.add_root("/bench/scale")
    coll = Collection(size, args.seed, args.spread)
    started = time.monotonic()
    for start in range(0, size, BLOCK):
        b = coll.block(start)
        embeddings, updates = [], []
        for j in range(b["n"]):
            text = coll.text(b["words"][j])
            h = content_hash(text.encode("utf-8"))
            embeddings.append(NewEmbedding(h, b["dense"][j], coll.weights(b["words"][j], b["jitter"][j])))
            chunk = NewChunk(text, 1, 1, (f"topic {start + j}",), CHUNK_WORDS, h)
            updates.append(FileUpdate(root, f"/bench/scale/{(start + j) // 1000:05d}/{start + j}.txt", len(text), 0,
                                      h, "indexed", kind="text", encoding="utf-8", chunks=(chunk,)))
        catalog.apply(key, embeddings, updates)
        if (start // BLOCK) % 25 == 24 or start + BLOCK >= size:
            log(f"[{size}] {start + b['n']:,} / {size:,} chunks written, {time.monotonic() - started:.0f} s")
    catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    catalog.close()
    info = {"label": label, "write_s": round(time.monotonic() - started, 1), "catalog_bytes": folder_bytes(data)}
    done.write_text(json.dumps(info))
    return info


def folder_bytes(path: Path, exclude: tuple[str, ...] = ()) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not any(x in f.name for x in exclude))


def memory() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


# -- one configuration, in its own process ------------------------------------------------------
class QueryEmbedder:
    """The fake embedder, answering the benchmark's queries with their synthetic embeddings."""

    def __init__(self, inner: Any, queries: list[dict[str, Any]]) -> None:
        self.inner = inner
        self.table = {q["text"]: q for q in queries}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_query(self, text: str) -> Any:
        from ragd.models.base import Embeddings

        q = self.table.get(text)
        if q is None:
            return self.inner.embed_query(text)
        return Embeddings(dense=q["dense"][None, :], sparse=[q["sparse"]])


def wait_ready(store: Any, limit_s: float) -> float:
    """Seconds until the dense index's background build (if any) is done, at most ``limit_s``."""
    started = time.monotonic()
    dense = getattr(store, "vectors", None)
    if hasattr(dense, "wait"):
        dense.wait(limit_s)
    return time.monotonic() - started


class Generated:
    """The collection as the catalog would give it to the stores: a ``DenseSource`` and the
    rows the mirrors build from; keeps each query's exact dense top ``pool`` as blocks go by."""

    def __init__(self, coll: Collection, queries: list[dict[str, Any]], pool: int) -> None:
        self.coll, self.pool = coll, pool
        self.q = np.stack([q["dense"] for q in queries])
        self.best = np.full((len(queries), pool), -np.inf, dtype=np.float32)
        self.best_ids = np.full((len(queries), pool), -1, dtype=np.int64)

    def iter_dense(self, model: int) -> Any:
        for start in range(0, self.coll.size, BLOCK):
            dense = self.coll.block(start)["dense"]
            ids = np.arange(start + 1, start + 1 + len(dense), dtype=np.int64)  # chunk ids from 1
            scores = self.q @ dense.T
            merged = np.concatenate([self.best, scores], axis=1)
            merged_ids = np.concatenate([self.best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
            top = np.argsort(-merged, axis=1, kind="stable")[:, : self.pool]
            self.best = np.take_along_axis(merged, top, axis=1)
            self.best_ids = np.take_along_axis(merged_ids, top, axis=1)
            yield ids, dense

    def sparse_rows(self) -> Any:
        """(key, encoded weights): the key stands for a content hash (64 hex digits), here
        the chunk id's, so that a hit maps back to its chunk without a catalog."""
        from ragd.store.codec import encode

        for start in range(0, self.coll.size, BLOCK):
            b = self.coll.block(start)
            for j in range(b["n"]):
                yield format(start + j + 1, "064x"), encode(self.coll.weights(b["words"][j], b["jitter"][j]))

    def lexical_rows(self) -> Any:
        from ragd.lexical import document_terms

        for start in range(0, self.coll.size, BLOCK):
            b = self.coll.block(start)
            for j in range(b["n"]):
                yield start + j + 1, document_terms(self.coll.text(b["words"][j]))


def run_stores(size: int, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The stores alone (``--layer stores``), in this process."""
    import concurrent.futures

    from ragd.config import SearchConfig, StoreConfig
    from ragd.lexical import terms as query_terms
    from ragd.query import select_terms
    from ragd.search import fuse
    from ragd.store.postings import LexicalIndex, SparseIndex, mirror_form
    from ragd.store.vectors import IndexPlan, VectorIndex

    store = CONFIGS[name]
    defaults = StoreConfig()
    plan = IndexPlan(exact_limit=int(store.get("exact_limit", defaults.exact_limit)),
                     nprobe=int(store.get("nprobe", defaults.nprobe)),
                     vectors=str(store.get("vectors", defaults.vectors)))
    search_cfg = SearchConfig()
    pool = search_cfg.retrieve
    weights = {"dense": search_cfg.dense_weight, "sparse": search_cfg.sparse_weight,
               "lexical": search_cfg.lexical_weight}
    coll = Collection(size, args.seed, args.spread)
    queries = coll.queries(args.queries)
    source = Generated(coll, queries, pool)
    out: dict[str, Any] = {"config": name, "store": store, "load_average_start": round(os.getloadavg()[0], 2)}
    folder = CACHE / f"stores-{size}-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t = time.perf_counter()
    dense = VectorIndex.rebuild(source, 0, DIM, plan)
    out["dense_build_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    dense.tune()
    dense.wait(args.wait)
    out["dense_background_s"] = round(time.perf_counter() - t, 1)
    out["dense_index"] = dense.describe()
    mapped = mirror_form(str(store.get("mirrors", defaults.mirrors)), size)
    t = time.perf_counter()
    sparse = SparseIndex.build(source.sparse_rows(), folder / "sparse.npz" if mapped else None)
    out["sparse_build_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    lexical = LexicalIndex.build(source.lexical_rows(), folder / "lexical.npz" if mapped else None)
    out["lexical_build_s"] = round(time.perf_counter() - t, 1)
    out["mirrors"] = "mapped" if mapped else "memory"
    t = time.perf_counter()
    dense.save(folder / "vectors.faiss", 1, "bench")
    sparse.save(folder / "sparse.npz", 1, "bench")
    lexical.save(folder / "lexical.npz", 1, "lexical")
    out["save_s"] = round(time.perf_counter() - t, 1)
    out["snapshot_bytes"] = folder_bytes(folder)
    side = concurrent.futures.ThreadPoolExecutor(2)
    exact = {i: dict(zip(source.best_ids[i].tolist(), source.best[i].tolist(), strict=True))
             for i in range(len(queries))}

    def ranked(scores: dict[int, float]) -> list[int]:
        return [c for c, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]

    def hybrid(q: dict[str, Any]) -> tuple[dict[str, dict[int, float]], list[int]]:
        """The signals, fused and ranked, as ``search`` runs them (what is timed)."""
        lex = side.submit(lambda: lexical.search(select_terms(query_terms(q["text"]), lexical.document_frequency),
                                                 pool))
        sp = side.submit(lambda: sparse.search(q["sparse"], pool))
        found = dict(dense.search(q["dense"], pool))
        signals = {"dense": found, "lexical": dict(lex.result()), "sparse": {int(h, 16): s for h, s in sp.result()}}
        return signals, ranked(fuse(signals, weights))

    hybrid(queries[0])  # warm-up
    walls, got, want, dense_got = [], [], [], []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        signals, order = hybrid(q)
        walls.append((time.perf_counter() - t) * 1000)
        got.append(order[:10])
        want.append(ranked(fuse({**signals, "dense": exact[i]}, weights))[:10])  # the reference, untimed
        dense_got.append(ranked(signals["dense"])[:10])
    dense_walls = []
    for q in queries:
        t = time.perf_counter()
        dense.search(q["dense"], pool)
        dense_walls.append((time.perf_counter() - t) * 1000)
    side.shutdown()
    out["hybrid"] = {"p50_ms": round(percentile(walls, 0.5), 1), "p95_ms": round(percentile(walls, 0.95), 1),
                     "recall_at_10": recall(got, want)}
    out["dense"] = {"p50_ms": round(percentile(dense_walls, 0.5), 1),
                    "p95_ms": round(percentile(dense_walls, 0.95), 1),
                    "recall_at_10": recall(dense_got, [row[:10].tolist() for row in source.best_ids])}
    out["memory"] = memory()
    out["load_average_end"] = round(os.getloadavg()[0], 2)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def run_one(size: int, name: str, args: argparse.Namespace) -> dict[str, Any]:
    from ragd.engine import Engine
    from ragd.models import LoadedModels, load_models
    from ragd.search import SearchOptions, search

    data = CACHE / str(size)
    cfg = config_for(data, CONFIGS[name], fake_model())
    coll = Collection(size, args.seed, args.spread)
    queries = coll.queries(args.queries)
    inner = load_models(cfg.models, rerank=False, warn=False).embedder
    models = LoadedModels(QueryEmbedder(inner, queries), None, [])  # type: ignore[arg-type]
    for path in (data / "vectors").glob("*"):  # a cold build: no snapshot, no collection
        path.unlink()
    for path in data.glob("milvus.db*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out: dict[str, Any] = {"config": name, "store": CONFIGS[name], "load_average_start": round(os.getloadavg()[0], 2)}
    t = time.perf_counter()
    engine = Engine(cfg, models)
    engine.store  # noqa: B018
    _ = engine.sparse, engine.lexical
    out["build_s"] = round(time.perf_counter() - t, 1)
    out["background_s"] = round(wait_ready(engine.store, args.wait), 1)
    t = time.perf_counter()
    engine.save_snapshots(force=True)
    out["save_s"] = round(time.perf_counter() - t, 1)
    out["snapshot_bytes"] = folder_bytes(data / "vectors") if (data / "vectors").exists() else 0
    if CONFIGS[name]["backend"] == "milvus":
        out["milvus_bytes"] = folder_bytes(data, exclude=("catalog.db",)) - out["snapshot_bytes"]
    engine.close()
    t = time.perf_counter()
    engine = Engine(cfg, models)
    engine.store  # noqa: B018
    _ = engine.sparse, engine.lexical
    out["load_s"] = round(time.perf_counter() - t, 1)
    wait_ready(engine.store, args.wait)
    for mode in ("hybrid", "dense"):
        search(engine, queries[0]["text"], SearchOptions(k=10, rerank=False, mode=mode))  # warm-up
        walls, tops = [], []
        for q in queries:
            t = time.perf_counter()
            result = search(engine, q["text"], SearchOptions(k=10, rerank=False, mode=mode))
            walls.append((time.perf_counter() - t) * 1000)
            tops.append([h.chunk_id for h in result.hits])
        out[mode] = {"p50_ms": round(percentile(walls, 0.5), 1), "p95_ms": round(percentile(walls, 0.95), 1),
                     "source_found": round(float(np.mean([q["chunk"] + 1 in top for q, top in zip(queries, tops,
                                                                                                   strict=True)])), 3),
                     "top10": tops}
    out["memory"] = memory()
    out["load_average_end"] = round(os.getloadavg()[0], 2)
    engine.close()
    return out


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)])), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="index sizes in chunks, comma-separated")
    parser.add_argument("--configs", default="exact,faiss,faiss-int8", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=28)
    parser.add_argument("--spread", type=float, default=1.2, help="noise per dimension around a topic's centre")
    parser.add_argument("--wait", type=float, default=3600, help="seconds to wait for background training")
    parser.add_argument("--layer", choices=["catalog", "stores"], default="catalog",
                        help="end to end through the catalog, or the stores alone")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "size:config": run one in this process
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.one:
        size, name = args.one.split(":")
        run = run_stores if args.layer == "stores" else run_one
        print(json.dumps(run(int(size), name, args)))
        return 0
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
    if "exact" in configs and args.layer == "catalog":  # the reference the others are compared with
        configs = ["exact"] + [c for c in configs if c != "exact"]
    result: dict[str, Any] = {"machine": machine(), "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        per: dict[str, Any] = {"configs": {}}
        if args.layer == "catalog":
            built = ensure_catalog(size, args)
            per.update(catalog_write_s=built["write_s"], catalog_bytes=built["catalog_bytes"])
        for name in configs:
            log(f"[{size}] {name}")
            cmd = [sys.executable, __file__, "--one", f"{size}:{name}", "--layer", args.layer,
                   "--queries", str(args.queries),
                   "--seed", str(args.seed), "--spread", str(args.spread), "--wait", str(args.wait)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                log(done.stderr[-3000:])
                per["configs"][name] = {"error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
                continue
            per["configs"][name] = json.loads(done.stdout.strip().splitlines()[-1])
            log(json.dumps({k: v for k, v in per["configs"][name].items() if k not in ("hybrid", "dense")}))
        reference = per["configs"].get("exact", {})
        for got in per["configs"].values():
            for mode in ("hybrid", "dense"):
                if mode in got and mode in reference:
                    got[mode]["recall_at_10"] = recall(got[mode]["top10"], reference[mode]["top10"])
        for got in per["configs"].values():
            for mode in ("hybrid", "dense"):
                got.get(mode, {}).pop("top10", None)
        result["sizes"][str(size)] = per
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['machine']['cpu']}, {result['machine']['cores']} cores")
    if args.layer == "stores":
        for size, per in result["sizes"].items():
            for name, got in per["configs"].items():
                print(f"{int(size):,} {name}: " + json.dumps(got))
        return 0
    for size, per in result["sizes"].items():
        print(f"{int(size):,} chunks: catalog written in {per['catalog_write_s']} s, "
              f"{per['catalog_bytes'] / 1e9:.2f} GB")
        for name, got in per["configs"].items():
            if "error" in got:
                print(f"  {name:12} failed: {got['error']}")
                continue
            mem = got["memory"]
            print(f"  {name:12} build {got['build_s']} s (+{got['background_s']} s background), "
                  f"load {got['load_s']} s, "
                  f"snapshot {got['snapshot_bytes'] / 1e6:.0f} MB, RSS anon {mem['RssAnon'] / 1e9:.2f} GB "
                  f"file {mem['RssFile'] / 1e9:.2f} GB peak {mem['VmHWM'] / 1e9:.2f} GB")
            for mode in ("hybrid", "dense"):
                r = got[mode]
                print(f"      {mode:6} p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
                      f"recall@10 {r.get('recall_at_10', '-')}, "
                      f"source chunk in the top 10 {r['source_found']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
