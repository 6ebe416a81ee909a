"""Inference benchmark: FlagEmbedding's default CPU path against ragd's, side by side on the
same inputs, for the exact BGE-M3 / bge-reranker-v2-m3 architectures (random weights).

    .venv/bin/python benchmarks/inference.py [--json] [--texts 8] [--precision auto] [--rounds 1]

Baseline: ``BGEM3FlagModel.encode`` (dense + lexical weights) and ``FlagReranker.compute_score``
with their defaults. ragd: ``FlagEmbedder.embed_documents`` and ``FlagCrossEncoder.score`` at
``--precision``. Texts are SciFact abstracts (title + text, mixed lengths) from ../shared/data;
the rerank query is a SciFact claim. Tokens are the real (unpadded) input tokens, special tokens
included, counted the same way for both paths. The models are built once into
``.cache/bench-models/`` (about 2.2 GB each; inference cost does not depend on weight values).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "beir" / "scifact"
CACHE = ROOT / ".cache" / "bench-models"
INT8_LIMIT = 1400.0  # tokens/s: the estimate of the int8 ceiling on this 2-core CPU


def texts_and_query(n: int) -> tuple[list[str], str]:
    texts: list[str] = []
    with (DATA / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            texts.append(f"{doc.get('title', '')}. {doc['text']}".strip())
            if len(texts) >= n:
                break
    with (DATA / "queries.jsonl").open(encoding="utf-8") as fh:
        query = json.loads(fh.readline())["text"]
    return texts, query


def build_models() -> tuple[Path, Path]:
    from ragd.models.synthetic import build_m3_embedder, build_reranker

    m3, rr = CACHE / "m3-full", CACHE / "reranker-full"
    if not (m3 / "model.safetensors").is_file():
        build_m3_embedder(m3, size="full")
    if not (rr / "model.safetensors").is_file():
        build_reranker(rr, size="full")
    return m3, rr


def timed(fn: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--texts", type=int, default=8, help="texts embedded and passages reranked")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds per path (median)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from ragd.models.flag import FlagCrossEncoder, FlagEmbedder

    texts, query = texts_and_query(args.texts)
    m3_folder, rr_folder = build_models()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # --- embedding ---
    log(f"loading embedders ({args.precision})")
    ours = FlagEmbedder(m3_folder, "bench-m3", device="cpu", precision=args.precision)
    ref = ours if ours.precision == "fp32" else FlagEmbedder(m3_folder, "ref-m3", device="cpu", precision="fp32")
    embed_tokens = sum(len(x) for x in ours.tokenizer(texts)["input_ids"])
    ours.embed_documents(texts[:1])
    ref._model.encode(texts[:1], return_dense=True, return_sparse=True)
    log("embedding: FlagEmbedding encode")
    base_embed_s = timed(lambda: ref._model.encode(texts, return_dense=True, return_sparse=True), args.rounds)
    log("embedding: ragd")
    embed_s = timed(lambda: ours.embed_documents(texts), args.rounds)
    ours = ref = None  # type: ignore[assignment]  # free ~4 GB before the rerankers load

    # --- reranking ---
    log("loading rerankers")
    rr = FlagCrossEncoder(rr_folder, "bench-rr", device="cpu", precision=args.precision)
    rr_ref = rr if rr.precision == "fp32" else FlagCrossEncoder(rr_folder, "ref-rr", device="cpu", precision="fp32")
    tok = rr.tokenizer
    q_ids = tok(query, add_special_tokens=False)["input_ids"]
    room = rr.max_length - len(q_ids) - tok.num_special_tokens_to_add(pair=True)
    rerank_tokens = sum(len(q_ids) + min(room, len(p)) + 4 for p in tok(texts, add_special_tokens=False)["input_ids"])
    pairs = [(query, t) for t in texts]
    rr.score(query, texts[:1])
    rr_ref._model.compute_score(pairs[:1])
    log("reranking: FlagReranker compute_score")
    base_rerank_s = timed(lambda: rr_ref._model.compute_score(pairs), args.rounds)
    log("reranking: ragd")
    rerank_s = timed(lambda: rr.score(query, texts), args.rounds)

    result: dict[str, Any] = {
        "texts": len(texts),
        "precision": rr.precision,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "embed_tokens": embed_tokens,
        "rerank_tokens": rerank_tokens,
        "baseline_embed_tokens_per_s": round(embed_tokens / base_embed_s, 1),
        "embed_tokens_per_s": round(embed_tokens / embed_s, 1),
        "baseline_rerank_tokens_per_s": round(rerank_tokens / base_rerank_s, 1),
        "rerank_tokens_per_s": round(rerank_tokens / rerank_s, 1),
    }
    result["embed_ratio"] = round(result["embed_tokens_per_s"] / result["baseline_embed_tokens_per_s"], 2)
    result["rerank_ratio"] = round(result["rerank_tokens_per_s"] / result["baseline_rerank_tokens_per_s"], 2)
    result["embed_fraction_of_int8_limit"] = round(result["embed_tokens_per_s"] / INT8_LIMIT, 3)
    result["rerank_fraction_of_int8_limit"] = round(result["rerank_tokens_per_s"] / INT8_LIMIT, 3)
    # How many ~300-token candidates (plus the query) the reranker scores in a 2 s deadline.
    per_candidate = 300 + len(q_ids) + 4
    result["rerank_candidates_in_2s"] = round(2.0 * result["rerank_tokens_per_s"] / per_candidate, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'':12}{'FlagEmbedding':>16}{'ragd':>12}{'ratio':>8}")
        print(f"{'embed tok/s':12}{result['baseline_embed_tokens_per_s']:>16}{result['embed_tokens_per_s']:>12}"
              f"{result['embed_ratio']:>8}")
        print(f"{'rerank tok/s':12}{result['baseline_rerank_tokens_per_s']:>16}{result['rerank_tokens_per_s']:>12}"
              f"{result['rerank_ratio']:>8}")
        print(f"precision {result['precision']}, {result['threads']} threads, load {result['load_average']:.1f}; "
              f"{result['rerank_candidates_in_2s']} candidates of ~300 tokens fit a 2 s rerank deadline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
