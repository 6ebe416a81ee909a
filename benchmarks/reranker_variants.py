"""Which reranker configurations keep the ranking on this CPU, and how fast each runs beside the
fastest peer: one process, one pair at a time, the configurations taken in turn.

    .venv/bin/python benchmarks/reranker_variants.py [--texts 24] [--rounds 2]
        [--variants peer,ov-w8,ov-fp32,ort-fp32,...] [--json] [--prepare-only]

Variants (the random bge-reranker-v2-m3 architecture of ``inference.py``, full size):

- ``peer``: sentence-transformers' dynamic int8 ONNX export at batch 1 (``peers.py`` makes it),
  its session run bare; the fastest peer on a CPU without VNNI.
- ``peer-ov``: sentence-transformers' static int8 OpenVINO export (``peers.py`` makes it), compiled
  bare as ``peers.py --profile`` does; the fastest peer on a CPU with VNNI.
- ``ov-int8``, ``ov-w8``, ``ov-fp32``: ragd's converted OpenVINO models, through ragd's ``Runner``
  (``int8``: static int8 with the scored row in float, ``auto``'s choice where the CPU has VNNI
  or AMX; ``w8``: int8 weights, fp32 arithmetic, ``auto``'s choice elsewhere; ``fp32``).
- ``ort-fp32``: the reranker exported to ONNX as ragd's ``int8-dynamic`` embedder is (TorchScript
  exporter, attention fused by ONNX Runtime's transformer optimizer), run in fp32.
- ``ort-u8``, ``ort-s8``: that export quantised whole to ONNX Runtime's dynamic int8 (u8 or s8
  weights per channel; inputs u8 per tensor as they run).
- ``ort-u8-qkv``, ``ort-u8-ao``, ``ort-u8-up``, ``ort-u8-down``: one kind of projection in int8
  (the fused Q/K/V, the attention output, the feed-forward's first and second MatMul), the rest
  fp32: where the ranking is lost.
- ``ort-u8-branch``: every row in int8 but the scored one (``<s>``), which each layer computes in
  fp32 beside them, as ragd's OpenVINO int8 reranker does (``convert._cls_row_in_float``;
  export not fused).

Spearman is to FlagEmbedding's fp32 scores of the same pairs (computed once, cached). Each
round runs every variant over all pairs, the order reversing every round; the ratio to the peer
is the median of the rounds' paired ratios. Exports live in ``.cache/bench-models/reranker-variants``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import machine
from inference import CACHE, build_models, texts_and_query
from peers import RERANK_MAX_LENGTH, peer_folder, spearman, st_file

FOLDER = CACHE / "reranker-variants"
KINDS = {"qkv": r"^Attention_\d+$", "ao": r"attention/output/dense/MatMul", "up": r"intermediate/dense/MatMul",
         "down": r"layer\.\d+/output/dense/MatMul"}
VARIANTS = ("peer", "peer-ov", "ov-int8", "ov-w8", "ov-fp32", "ort-fp32", "ort-u8", "ort-s8", "ort-u8-qkv", "ort-u8-ao",
            "ort-u8-up", "ort-u8-down", "ort-u8-branch")
Run = Callable[[dict[str, np.ndarray]], Any]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reference(source: Path, query: str, texts: list[str]) -> list[float]:
    path = FOLDER / f"flagembedding-{len(texts)}.json"
    if not path.is_file():
        from FlagEmbedding import FlagReranker

        log("scoring the pairs with FlagEmbedding fp32 (the reference), once")
        model = FlagReranker(str(source), devices="cpu", use_fp16=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([float(s) for s in model.compute_score([[query, t] for t in texts])]))
    return [float(s) for s in json.loads(path.read_text())]


def export(source: Path, branch: bool) -> Path:
    """The reranker (logits out) exported to ONNX; fused unless ``branch``."""
    folder = FOLDER / ("branch" if branch else "float")
    target = folder / ("model.onnx" if branch else "fused.onnx")
    if target.is_file():
        return target
    import torch
    from transformers import AutoModelForSequenceClassification

    from ragd.models.openvino.convert import _cls_row_in_float
    from ragd.models.openvino.onnx import OPSET, _fuse
    from ragd.models.openvino.trace import traceable

    log(f"exporting the reranker to ONNX{' with the scored row in a branch' if branch else ''}")
    folder.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(source), dtype=torch.float32).eval()
    ids = torch.tensor([[0, 10, 11, 12, 2], [0, 13, 2, 1, 1]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "output": {0: "batch"}}
    with torch.inference_mode(), _cls_row_in_float(model, []) if branch else contextlib.nullcontext():
        torch.onnx.export(traceable(model, "logits"), (ids, mask), str(folder / "model.onnx"), dynamo=False,
                          opset_version=OPSET, input_names=["input_ids", "attention_mask"], output_names=["output"],
                          dynamic_axes=axes)
    if branch:
        return target
    fused, attentions = _fuse(folder / "model.onnx", log)
    if not attentions:
        raise SystemExit("the attention was not fused")
    return fused


def quantised(source: Path, variant: str) -> Path:
    """``variant``'s int8 model, quantised from the export once."""
    import onnx

    from ragd.models.openvino.onnx import _quantise

    target = FOLDER / variant / "model.onnx"
    if target.is_file():
        return target
    weights = "s8" if variant == "ort-s8" else "u8"
    exported = export(source, branch=variant.endswith("-branch"))
    nodes = [n.name for n in onnx.load(str(exported), load_external_data=False).graph.node
             if n.op_type in ("MatMul", "Attention")]
    kind = variant.split("-")[-1]
    if kind in KINDS:  # only that kind in int8
        exclude = [n for n in nodes if not re.search(KINDS[kind], n)]
    elif kind == "branch":  # the branch's own products stay fp32
        exclude = [n for n in nodes if "/cls_" in n]
    else:
        exclude = []
    log(f"quantising {variant}: {weights} weights, {len(exclude)} of {len(nodes)} products left fp32")
    target.parent.mkdir(parents=True, exist_ok=True)
    _quantise(exported, target, exclude, weights, external=False)
    return target


def ort_session(path: Path, peer: bool = False) -> Run:
    """``path`` in ragd's ONNX Runtime session (its options for every variant, the peer's too,
    but the peer keeps every graph fusion, as its own session does)."""
    from ragd.models.openvino.onnx import UNFUSED, OnnxSession

    session = OnnxSession(path, len(os.sched_getaffinity(0)), () if peer else UNFUSED).session
    return lambda feed: session.run(None, feed)[0]


def ragd_runner(source: Path, precision: str) -> Run:
    from ragd.models import open_reranker

    model: Any = open_reranker(source, "bench-rr", device="cpu", precision=precision, backend="openvino",
                               cache_dir=CACHE)
    return lambda feed: model.runner(feed["input_ids"], feed["attention_mask"])


def ov_peer(path: Path) -> Run:
    """The peer's OpenVINO model compiled bare, one stream on every core (as ``peers.py --profile``)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": len(os.sched_getaffinity(0)),
                                                          "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    return lambda feed: request.infer(feed)[0]


def build(variant: str, source: Path) -> Run:
    if variant == "peer":
        folder = peer_folder(source, "rerank")
        path = folder / st_file("st-onnx-int8")
        if not path.is_file():
            raise SystemExit(f"no peer export at {path}: run benchmarks/peers.py --roles rerank first")
        return ort_session(path, peer=True)
    if variant == "peer-ov":
        path = peer_folder(source, "rerank") / st_file("st-openvino-int8")
        if not path.is_file():
            raise SystemExit(f"no peer export at {path}: run benchmarks/peers.py --roles rerank first")
        return ov_peer(path)
    if variant.startswith("ov-"):
        return ragd_runner(source, variant[3:])
    if variant == "ort-fp32":
        return ort_session(export(source, branch=False))
    return ort_session(quantised(source, variant))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--prepare-only", action="store_true", help="export and convert, measure nothing")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "peer" not in names:
        names.insert(0, "peer")
    _, source = build_models()
    texts, query = texts_and_query(args.texts)
    ref = reference(source, query, texts)
    if args.prepare_only:
        for name in names:
            log(f"preparing {name}")
            build(name, source)  # dropped at once: only the files on disk are wanted
        return 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    feeds = []
    for text in texts:
        encoded = tokenizer(query, text, truncation="only_second", max_length=RERANK_MAX_LENGTH, return_tensors="np")
        feeds.append({k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    tokens = sum(int(f["input_ids"].shape[1]) for f in feeds)
    runs = {}
    for name in names:
        runs[name] = build(name, source)
        runs[name](feeds[0])  # warm
    seconds: dict[str, list[float]] = {n: [] for n in names}
    scores: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            log(f"round {r + 1}: {name}")
            t = time.perf_counter()
            scores[name] = [float(np.asarray(runs[name](f)).reshape(-1)[0]) for f in feeds]
            seconds[name].append(time.perf_counter() - t)
    rows = []
    for name in names:
        ratios = [p / s for p, s in zip(seconds["peer"], seconds[name], strict=True)]
        rows.append({"variant": name, "spearman_to_fp32": round(spearman(scores[name], ref), 4),
                     "tokens_per_s": round(tokens / statistics.median(seconds[name]), 1),
                     "ratio_to_peer": round(statistics.median(ratios), 3),
                     "paired_ratios": [round(x, 3) for x in ratios]})
    result = {"machine": machine(), "pairs": len(feeds), "tokens": tokens, "rounds": args.rounds, "variants": rows}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{len(feeds)} pairs, {tokens} tokens, {args.rounds} rounds in turn; {machine()}")
        print(f"{'variant':16s} {'Spearman':>9s} {'tok/s':>8s} {'to peer':>8s}")
        for row in rows:
            print(f"{row['variant']:16s} {row['spearman_to_fp32']:9.4f} {row['tokens_per_s']:8.1f} "
                  f"{row['ratio_to_peer']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
