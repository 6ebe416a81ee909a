"""Inference benchmark: FlagEmbedding's default CPU path against ragd's, side by side on the
same inputs, for the exact BGE-M3 / bge-reranker-v2-m3 architectures (random weights).

    .venv/bin/python benchmarks/inference.py [--json] [--texts 8] [--precision auto] [--backend auto] [--rounds 1]
    .venv/bin/python benchmarks/inference.py --peers [--json] [peers.py's options]

Baseline: ``BGEM3FlagModel.encode`` (dense + lexical weights) and ``FlagReranker.compute_score``
with their defaults. ragd: ``FlagEmbedder.embed_documents`` and ``FlagCrossEncoder.score`` at
``--precision`` on ``--backend`` (OpenVINO models are converted once into
``.cache/bench-models/openvino``; the conversion time is reported, not counted). Texts are
SciFact abstracts (title + text, mixed lengths) from ../shared/data; the rerank query is a
SciFact claim. Tokens are the real (unpadded) input tokens, special tokens included, counted
the same way for both paths. The models are built once into ``.cache/bench-models/`` (about
2.2 GB each; inference cost does not depend on weight values).
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

from common import machine

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
    if "--peers" in sys.argv[1:]:  # ragd beside sentence-transformers' int8 engines: peers.py
        from peers import main as peers_main

        sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != "--peers"]
        return peers_main()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--texts", type=int, default=8, help="texts embedded and passages reranked")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"])
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds per path (median)")
    parser.add_argument("--peers", action="store_true",
                        help="run peers.py instead (ragd beside sentence-transformers' OpenVINO and ONNX int8)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from ragd.models import open_embedder, open_reranker
    from ragd.models.flag import FlagCrossEncoder, FlagEmbedder

    texts, query = texts_and_query(args.texts)
    m3_folder, rr_folder = build_models()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # --- embedding ---
    log(f"loading embedders ({args.precision}, {args.backend})")
    opts = {"device": "cpu", "precision": args.precision, "backend": args.backend, "cache_dir": CACHE}
    t0 = time.perf_counter()
    ours = open_embedder(m3_folder, "bench-m3", **opts)
    embed_load_s = time.perf_counter() - t0
    reference = ours.precision == "fp32" and ours.backend == "torch"
    ref = ours if reference else FlagEmbedder(m3_folder, "ref-m3", device="cpu", precision="fp32")
    embed_tokens = sum(len(x) for x in ours.tokenizer.ids(texts))
    ours.embed_documents(texts[:1])
    ref._model.encode(texts[:1], return_dense=True, return_sparse=True)
    log("embedding: FlagEmbedding encode")
    outputs: dict[str, Any] = {}

    def baseline_embed() -> None:
        outputs["ref"] = ref._model.encode(texts, return_dense=True, return_sparse=True)["dense_vecs"]

    def ragd_embed() -> None:
        outputs["ours"] = ours.embed_documents(texts).dense

    base_embed_s = timed(baseline_embed, args.rounds)
    log("embedding: ragd")
    embed_s = timed(ragd_embed, args.rounds)
    # Agreement with the reference on these texts (random weights: a sanity check, the gate
    # on real weights is tests/test_openvino.py).
    embed_cosine = float(np.mean(np.sum(np.asarray(outputs["ref"]) * outputs["ours"], axis=1)))
    embed_precision = ours.precision
    ours = ref = None  # type: ignore[assignment]  # free ~4 GB before the rerankers load

    # --- reranking ---
    log("loading rerankers")
    t0 = time.perf_counter()
    rr = open_reranker(rr_folder, "bench-rr", **opts)
    rerank_load_s = time.perf_counter() - t0
    reference = rr.precision == "fp32" and rr.backend == "torch"
    rr_ref = rr if reference else FlagCrossEncoder(rr_folder, "ref-rr", device="cpu", precision="fp32")
    rerank_tokens = sum(len(x) for x in rr._pair_inputs(query, texts))  # the pairs as scored, special tokens included
    # The query's share of a pair: its tokens (cut to 3/4 of the length, as scored) and the pair's special tokens.
    pair_overhead = (len(rr.tokenizer.ids([query], special=False, max_length=rr.max_length * 3 // 4)[0])
                     + rr.tokenizer.num_special(pair=True))
    pairs = [(query, t) for t in texts]
    rr.score(query, texts[:1])
    rr_ref._model.compute_score(pairs[:1])
    log("reranking: FlagReranker compute_score")
    def baseline_rerank() -> None:
        outputs["ref_scores"] = rr_ref._model.compute_score(pairs)

    def ragd_rerank() -> None:
        outputs["scores"] = rr.score(query, texts)

    base_rerank_s = timed(baseline_rerank, args.rounds)
    log("reranking: ragd")
    rerank_s = timed(ragd_rerank, args.rounds)
    rerank_spearman = float(spearmanr(outputs["ref_scores"], outputs["scores"]).statistic)

    result: dict[str, Any] = {
        "machine": machine(),
        "texts": len(texts),
        "embed_precision": embed_precision,
        "precision": rr.precision,
        "backend": rr.backend,
        "embed_load_s": round(embed_load_s, 1),
        "rerank_load_s": round(rerank_load_s, 1),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "embed_tokens": embed_tokens,
        "rerank_tokens": rerank_tokens,
        "baseline_embed_tokens_per_s": round(embed_tokens / base_embed_s, 1),
        "embed_tokens_per_s": round(embed_tokens / embed_s, 1),
        "baseline_rerank_tokens_per_s": round(rerank_tokens / base_rerank_s, 1),
        "rerank_tokens_per_s": round(rerank_tokens / rerank_s, 1),
        "embed_mean_cosine_to_baseline": round(embed_cosine, 5),
        "rerank_spearman_to_baseline": round(rerank_spearman, 4),
    }
    result["embed_ratio"] = round(result["embed_tokens_per_s"] / result["baseline_embed_tokens_per_s"], 2)
    result["rerank_ratio"] = round(result["rerank_tokens_per_s"] / result["baseline_rerank_tokens_per_s"], 2)
    result["embed_fraction_of_int8_limit"] = round(result["embed_tokens_per_s"] / INT8_LIMIT, 3)
    result["rerank_fraction_of_int8_limit"] = round(result["rerank_tokens_per_s"] / INT8_LIMIT, 3)
    # How many ~300-token candidates (plus the query) the reranker scores in a 2 s deadline.
    per_candidate = 300 + pair_overhead
    result["rerank_candidates_in_2s"] = round(2.0 * result["rerank_tokens_per_s"] / per_candidate, 1)
    # The same when a deadline narrows the window to search.rerank_min_tokens (benchmarks/search.py
    # measures it through search()).
    from ragd.config import SearchConfig

    narrowest = min(SearchConfig().rerank_min_tokens, 300)
    result["rerank_candidates_in_2s_narrowed"] = round(
        2.0 * result["rerank_tokens_per_s"] / (narrowest + pair_overhead), 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'':12}{'FlagEmbedding':>16}{'ragd':>12}{'ratio':>8}")
        print(f"{'embed tok/s':12}{result['baseline_embed_tokens_per_s']:>16}{result['embed_tokens_per_s']:>12}"
              f"{result['embed_ratio']:>8}")
        print(f"{'rerank tok/s':12}{result['baseline_rerank_tokens_per_s']:>16}{result['rerank_tokens_per_s']:>12}"
              f"{result['rerank_ratio']:>8}")
        isa = ", ".join(result["machine"]["isa"]) or "instruction sets unknown"
        print(f"{result['backend']} embedder {result['embed_precision']} / reranker {result['precision']}, "
              f"{result['threads']} threads ({isa}), "
              f"load {result['load_average']:.1f}; "
              f"{result['rerank_candidates_in_2s']} candidates of ~300 tokens fit a 2 s rerank deadline, "
              f"{result['rerank_candidates_in_2s_narrowed']} in {narrowest}-token windows")
        print(f"agreement with the baseline: dense mean cosine {result['embed_mean_cosine_to_baseline']}, "
              f"rerank Spearman {result['rerank_spearman_to_baseline']} over {len(texts)} passages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
