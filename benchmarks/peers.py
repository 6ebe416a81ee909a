"""Peer benchmark: ragd against what a user after speed would pick instead, on the same inputs.

    .venv/bin/python benchmarks/peers.py [--json] [--texts 24] [--small] [--rounds 1]
        [--roles embed,rerank] [--engines ...] [--calibration-samples 64] [--precision auto]
        [--alternate N] [--profile [--profile-tokens N]]

Engines (each configuration in a process of its own, so peak RSS is its own):

- ``flagembedding``: ``BGEM3FlagModel.encode`` / ``FlagReranker.compute_score`` in torch fp32,
  their default batch size; the fp32 reference every agreement is measured against.
- ``ragd``: ``FlagEmbedder.embed_documents`` / ``FlagCrossEncoder.score`` at ``--precision``
  (its own batching), converted once into ``.cache/bench-models/openvino``.
- ``st-openvino-int8``: sentence-transformers with ``backend="openvino"`` and the model from
  its ``export_static_quantized_openvino_model`` (NNCF static int8 through optimum-intel),
  calibrated on ``--calibration-samples`` SciFact abstracts that are not among the timed texts.
- ``st-onnx-int8``: ``backend="onnx"`` and ``export_dynamic_quantized_onnx_model`` with the
  CPU's own preset (``avx512_vnni``, ``avx2`` or ``arm64``), run by ONNX Runtime.

The sentence-transformers engines run at their default batch size (32) and at batch size 1.
With ``--alternate N``, ragd and the fastest peer configuration then run in turn N more times
(a process each; which of the two goes first swaps every turn, so a drift in one direction
or an edge for either position cancels out) and the median of the N paired ratios is
reported beside the single run's: a shared or virtual machine's speed drifts over minutes by
more than the gaps measured here.
The embedder is BGE-M3's dense path (CLS pooling, normalised); the cross-encoder reads at most
512 tokens, as ragd and FlagReranker do. Tokens/s counts the same tokens for every engine
(ragd's inputs, special tokens included), so the ratios are ratios of wall time. Models are
the random BGE-M3 / bge-reranker-v2-m3 architectures of ``inference.py``; ``--small`` keeps
their width and vocabulary but only ``--small-layers`` layers (a quick check of the same code
path; exports and conversions are cached per size). The peers need the ``bench`` extra:
``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import machine
from inference import CACHE, DATA, build_models, texts_and_query

ENGINES = ("flagembedding", "ragd", "st-openvino-int8", "st-onnx-int8")
REFERENCE = "flagembedding"
ST_ENGINES = ("st-openvino-int8", "st-onnx-int8")
ST_DEFAULT_BATCH = 32  # SentenceTransformer.encode and CrossEncoder.predict
RERANK_MAX_LENGTH = 512
GATE_SPEARMAN = 0.98
GATE_COSINE = 0.995


# ---------------------------------------------------------------- pure helpers (tested)

def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given their mean rank."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's of the ranks)."""
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom else 0.0


def mean_cosine(a: Any, b: Any) -> float:
    """Mean cosine similarity of matching rows."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    num = (x * y).sum(axis=1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def label(row: dict[str, Any]) -> str:
    batch = row.get("batch")
    return f"{row['engine']} (batch {batch})" if batch else row["engine"]


def fastest(rows: Sequence[dict[str, Any]], role: str, *, gate: float | None = None,
            speed: str = "tokens_per_s") -> dict[str, Any] | None:
    """The peer configuration (any engine but ragd) with the most ``speed`` for ``role``;
    with ``gate``, only those whose agreement with fp32 reaches it."""
    key = "agreement_to_fp32"
    peers = [r for r in rows if r["role"] == role and r["engine"] != "ragd" and r.get(speed)
             and (gate is None or (r.get(key) is not None and r[key] >= gate))]
    return max(peers, key=lambda r: r[speed]) if peers else None


def summarize(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON object: ``meta``, every row (``peers``), ragd's numbers and its ratios."""
    out: dict[str, Any] = dict(meta)
    out["peers"] = [r for r in rows if r["engine"] != "ragd"]
    out["ragd"] = {r["role"]: r for r in rows if r["engine"] == "ragd"}
    for role, short, gate in (("embed", "embed", GATE_COSINE), ("rerank", "rerank", GATE_SPEARMAN)):
        ours = out["ragd"].get(role)
        best = fastest(rows, role)
        best_ok = fastest(rows, role, gate=gate)
        speed = ours.get("tokens_per_s") if ours else None
        out[f"{short}_tokens_per_s"] = speed
        out[f"{short}_fastest_peer"] = label(best) if best else None
        out[f"{short}_ratio_to_fastest_peer"] = round(speed / best["tokens_per_s"], 3) if speed and best else None
        out[f"{short}_fastest_peer_at_gate"] = label(best_ok) if best_ok else None
        out[f"{short}_ratio_to_fastest_peer_at_gate"] = (
            round(speed / best_ok["tokens_per_s"], 3) if speed and best_ok else None)
        # The same by CPU time (all the process's threads): on a loaded machine wall time
        # depends on what else runs; CPU time less so (it misses poor use of the cores).
        best_cpu, ours_cpu = fastest(rows, role, speed="tokens_per_cpu_s"), ours and ours.get("tokens_per_cpu_s")
        out[f"{short}_ratio_to_fastest_peer_cpu"] = (
            round(ours_cpu / best_cpu["tokens_per_cpu_s"], 3) if ours_cpu and best_cpu else None)
        out[f"{short}_fastest_peer_cpu"] = label(best_cpu) if best_cpu else None
    embed, rerank = out["ragd"].get("embed"), out["ragd"].get("rerank")
    out["embed_mean_cosine_to_fp32"] = embed.get("agreement_to_fp32") if embed else None
    out["rerank_spearman_to_fp32"] = rerank.get("agreement_to_fp32") if rerank else None
    return out


def turns(n: int) -> list[tuple[int, str]]:
    """(turn, "ragd" or "peer") for ``n`` turns taken in turn, the first of each pair swapping
    every turn (ragd, peer, peer, ragd, ...)."""
    return [(t, name) for t in range(n) for name in (("ragd", "peer") if t % 2 == 0 else ("peer", "ragd"))]


def paired_ratios(ours: Sequence[float], peer: Sequence[float]) -> dict[str, Any]:
    """ragd's speed over the peer's from runs taken in turn: the peer's seconds over ragd's,
    pair by pair (a machine whose speed drifts over minutes drifts alike within a pair)."""
    ratios = sorted(p / o for o, p in zip(ours, peer, strict=True) if o > 0)
    if not ratios:
        return {"pairs": 0, "median": None, "min": None, "max": None, "ratios": []}
    mid = len(ratios) // 2
    median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
    return {"pairs": len(ratios), "median": round(median, 3), "min": round(ratios[0], 3),
            "max": round(ratios[-1], 3), "ratios": [round(r, 3) for r in ratios]}


def table(summary: dict[str, Any]) -> str:
    """A plain-text table of every row, then ragd's ratios."""
    rows = list(summary["peers"]) + list(summary["ragd"].values())
    lines = [f"{'role':7}{'engine':30}{'tok/s':>9}{'tok/CPU-s':>11}{'peak RSS MB':>13}{'load s':>8}"
             f"{'to fp32':>9}{'load avg':>10}"]
    for r in sorted(rows, key=lambda r: (r["role"], -(r.get("tokens_per_s") or 0))):
        if r.get("error"):
            lines.append(f"{r['role']:7}{label(r):30}  failed: {r['error']}")
            continue
        agree = r.get("agreement_to_fp32")
        lines.append(f"{r['role']:7}{label(r):30}{r['tokens_per_s']:>9.1f}{r.get('tokens_per_cpu_s') or '-':>11}"
                     f"{r['peak_rss_mb']:>13.0f}"
                     f"{r['load_s']:>8.1f}{agree if agree is not None else '-':>9}"
                     f"{r.get('load_average', 0):>10.1f}")
    for role in ("embed", "rerank"):
        ratio = summary.get(f"{role}_ratio_to_fastest_peer")
        if ratio is not None:
            lines.append(f"ragd {role}: {ratio}x the fastest peer ({summary[f'{role}_fastest_peer']}); "
                         f"{summary.get(f'{role}_ratio_to_fastest_peer_at_gate')}x the fastest at the "
                         f"accuracy gate ({summary.get(f'{role}_fastest_peer_at_gate')}); by CPU time "
                         f"{summary.get(f'{role}_ratio_to_fastest_peer_cpu')}x "
                         f"({summary.get(f'{role}_fastest_peer_cpu')})")
        turns = summary.get(f"{role}_ratio_to_fastest_peer_alternating")
        if turns and turns["pairs"]:
            lines.append(f"ragd {role}, run in turn with {turns['peer']}: {turns['median']}x at the median "
                         f"({turns['min']}-{turns['max']}x over {turns['pairs']} pairs of runs)")
    return "\n".join(lines)


def configurations(engines: Sequence[str], roles: Sequence[str]) -> list[dict[str, Any]]:
    """What to run, one process each: the reference first (the others are compared with it),
    then ragd, then every sentence-transformers engine at its default batch size and at 1."""
    order = [REFERENCE] + [e for e in engines if e != REFERENCE]
    runs = []
    for role in roles:
        for engine in order:
            if engine in ST_ENGINES:
                runs += [{"engine": engine, "role": role, "batch": b} for b in (ST_DEFAULT_BATCH, 1)]
            else:
                runs.append({"engine": engine, "role": role, "batch": None})
    return runs


# ---------------------------------------------------------------- models and peers' files

def build_small_models(layers: int) -> tuple[Path, Path]:
    """The benchmark's architectures (width, heads, vocabulary) with ``layers`` layers."""
    m3, rr = CACHE / f"m3-small{layers}", CACHE / f"reranker-small{layers}"
    if (m3 / "model.safetensors").is_file() and (rr / "model.safetensors").is_file():
        return m3, rr  # the parent stays small: torch is imported only to build
    import torch
    from transformers import XLMRobertaForSequenceClassification, XLMRobertaModel

    from ragd.models.synthetic import FULL_VOCAB, _config, build_tokenizer

    if not (m3 / "model.safetensors").is_file():
        m3.mkdir(parents=True, exist_ok=True)
        config = _config("full", build_tokenizer(m3, FULL_VOCAB))
        config.num_hidden_layers = layers
        torch.manual_seed(0)
        XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(str(m3))
        torch.save(torch.nn.Linear(config.hidden_size, config.hidden_size).state_dict(), m3 / "colbert_linear.pt")
        torch.save(torch.nn.Linear(config.hidden_size, 1).state_dict(), m3 / "sparse_linear.pt")
    if not (rr / "model.safetensors").is_file():
        rr.mkdir(parents=True, exist_ok=True)
        config = _config("full", build_tokenizer(rr, FULL_VOCAB), num_labels=1)
        config.num_hidden_layers = layers
        torch.manual_seed(1)
        XLMRobertaForSequenceClassification(config).save_pretrained(str(rr))
    return m3, rr


def onnx_preset() -> str:
    """export_dynamic_quantized_onnx_model's preset for this CPU."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    isa = set(machine()["isa"])
    return "avx512_vnni" if "avx512_vnni" in isa else "avx512" if "avx512f" in isa else "avx2"


def onnx_suffix() -> str:
    """The ONNX export's file suffix, named here: the helper's own name holds the preset's
    weight type (``qint8`` with AVX-512, ``quint8`` with AVX2), which this script would have to guess."""
    return f"int8_{onnx_preset()}"


def st_file(engine: str) -> str:
    return ("openvino/openvino_model_qint8_quantized.xml" if engine == "st-openvino-int8"
            else f"onnx/model_{onnx_suffix()}.onnx")


def peer_folder(source: Path, role: str) -> Path:
    """A sentence-transformers copy of ``source`` (its exports are written beside it):
    BGE-M3's dense path (CLS pooling, normalised) or the cross-encoder's files, hard-linked."""
    folder = source.parent / "peers" / source.name
    if role == "embed":
        if not (folder / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer
            from sentence_transformers.models import Normalize, Pooling, Transformer

            encoder = Transformer(str(source), max_seq_length=8192)
            model = SentenceTransformer(modules=[encoder, Pooling(encoder.get_word_embedding_dimension(), "cls"),
                                                 Normalize()], device="cpu")
            model.save(str(folder))
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and not (folder / path.name).exists():
            os.link(path, folder / path.name)
    return folder


def calibration_folder(n: int, skip: int) -> Path:
    """``n`` SciFact abstracts after the first ``skip`` (the timed ones) as a local dataset."""
    folder = CACHE / "peers" / f"calibration-{n}"
    path = folder / "train.jsonl"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        with (DATA / "corpus.jsonl").open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i < max(skip, 1000):
                    continue
                doc = json.loads(line)
                rows.append(json.dumps({"sentence": f"{doc.get('title', '')}. {doc['text']}".strip()}))
                if len(rows) >= n:
                    break
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def st_model(engine: str, role: str, folder: Path, file_name: str | None) -> Any:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    backend = "openvino" if engine == "st-openvino-int8" else "onnx"
    kwargs: dict[str, Any] = {"model_kwargs": {"file_name": file_name}} if file_name else {}
    if role == "embed":
        return SentenceTransformer(str(folder), backend=backend, device="cpu", **kwargs)
    return CrossEncoder(str(folder), backend=backend, device="cpu", max_length=RERANK_MAX_LENGTH, **kwargs)


def prepare_st(engine: str, role: str, source: Path, calibration: int, skip: int) -> float:
    """Export and quantise with sentence-transformers' own helpers, once; seconds it took."""
    folder = peer_folder(source, role)
    if (folder / st_file(engine)).is_file():
        return 0.0
    t0 = time.perf_counter()
    model = st_model(engine, role, folder, None)  # exports the fp32 model in memory
    if engine == "st-openvino-int8":
        from optimum.intel import OVQuantizationConfig
        from sentence_transformers import export_static_quantized_openvino_model

        export_static_quantized_openvino_model(
            model, OVQuantizationConfig(num_samples=calibration), str(folder),
            dataset_name=str(calibration_folder(calibration, skip)), dataset_config_name="default",
            dataset_split="train", column_name="sentence")
    else:
        from sentence_transformers import export_dynamic_quantized_onnx_model

        export_dynamic_quantized_onnx_model(model, onnx_preset(), str(folder), file_suffix=onnx_suffix())
    return time.perf_counter() - t0


# ---------------------------------------------------------------- one configuration (child)

def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss can carry the
    parent's peak into a child started with vfork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one engine, warm it on one input, time ``rounds`` runs over all the texts."""
    engine, role, batch = spec["engine"], spec["role"], spec["batch"]
    texts, query, rounds = spec["texts"], spec["query"], spec["rounds"]
    source = Path(spec["embedder"] if role == "embed" else spec["reranker"])
    result: dict[str, Any] = {"engine": engine, "role": role, "batch": batch}
    if spec.get("prepare_only"):  # exports and conversions, in a process of their own (their memory is not counted)
        if engine in ST_ENGINES:
            result["prepare_s"] = round(prepare_st(engine, role, source, spec["calibration"], len(texts)), 1)
            return result
        if engine != "ragd":
            return result
    t0 = time.perf_counter()
    run: Any
    if engine == REFERENCE:
        from FlagEmbedding import BGEM3FlagModel, FlagReranker

        if role == "embed":
            model = BGEM3FlagModel(str(source), devices="cpu", use_fp16=False)

            def run(items: list[str]) -> Any:
                return model.encode(items, return_dense=True, return_sparse=True)["dense_vecs"]
        else:
            model = FlagReranker(str(source), devices="cpu", use_fp16=False)

            def run(items: list[str]) -> Any:
                return model.compute_score([[query, t] for t in items])
    elif engine == "ragd":
        from ragd.models import open_embedder, open_reranker

        opts = {"device": "cpu", "precision": spec["precision"], "backend": "auto", "cache_dir": CACHE}
        if role == "embed":
            model = open_embedder(source, "bench-m3", **opts)

            def run(items: list[str]) -> Any:
                return model.embed_documents(items).dense
        else:
            model = open_reranker(source, "bench-rr", **opts)

            def run(items: list[str]) -> Any:
                return model.score(query, items)
        result["precision"] = model.precision
        if spec.get("prepare_only"):
            result["prepare_s"] = round(time.perf_counter() - t0, 1)
            return result
    else:
        model = st_model(engine, role, peer_folder(source, role), st_file(engine))
        size = batch or ST_DEFAULT_BATCH
        if role == "embed":
            def run(items: list[str]) -> Any:
                return model.encode(items, batch_size=size, convert_to_numpy=True)
        else:
            def run(items: list[str]) -> Any:
                return model.predict([[query, t] for t in items], batch_size=size, convert_to_numpy=True,
                                     show_progress_bar=False)
    result["load_s"] = round(time.perf_counter() - t0, 1)
    run(texts[:1])
    times, cpu, out = [], [], None
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        out = run(texts)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)  # every thread of the process: less swayed by other load
    result["seconds"] = sorted(times)[len(times) // 2]
    result["cpu_seconds"] = sorted(cpu)[len(cpu) // 2]
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["load_average"] = os.getloadavg()[0]
    values = np.asarray(out, dtype=np.float64)
    result["output"] = values.tolist()
    return result


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path), str(out_path)],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0 or not out_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"engine": spec["engine"], "role": spec["role"], "batch": spec["batch"],
                    "error": " | ".join(tail) or f"exit {proc.returncode}"}
        return dict(json.loads(out_path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------- where the reranker's time goes

def op_precision(exec_type: str) -> str:
    """The precision OpenVINO's CPU plugin ran a node in, from its kernel name
    (``brgemm_avx512_I8`` -> ``I8``, ``jit_avx512_FP32`` -> ``FP32``)."""
    tail = exec_type.rsplit("_", 1)[-1].upper()
    return tail if tail in ("I8", "U8", "FP32", "F32", "BF16", "FP16", "F16", "I32", "I64") else "other"


def layer_of(name: str) -> str:
    """``layer.N`` of a node's name, ``rest`` for nodes outside the encoder's layers."""
    import re

    found = re.search(r"layer[._/](\d+)[._/]", name)
    return f"layer {int(found.group(1)):02d}" if found else "rest"


def aggregate(nodes: Sequence[tuple[str, str, str, float]]) -> dict[str, Any]:
    """Per-node (name, type, kernel, microseconds) -> totals by type and precision and by layer."""
    total = sum(n[3] for n in nodes) or 1.0
    by_kind: dict[str, float] = {}
    by_layer: dict[str, float] = {}
    for name, kind, kernel, us in nodes:
        key = f"{kind} {op_precision(kernel)}"
        by_kind[key] = by_kind.get(key, 0.0) + us
        by_layer[layer_of(name)] = by_layer.get(layer_of(name), 0.0) + us
    kinds = sorted(by_kind.items(), key=lambda kv: -kv[1])
    return {"total_ms": round(total / 1000, 2),
            "by_kind": [{"kind": k, "ms": round(v / 1000, 2), "share": round(v / total, 3)} for k, v in kinds],
            "by_layer": {k: round(v / 1000, 2) for k, v in sorted(by_layer.items())}}


Profiled = tuple[Any, dict[str, np.ndarray], dict[str, Any]]
"""A model to profile (an IR path or an ``ov.Model``), its inputs and its compile settings."""


def profile(models: dict[str, Profiled], repeats: int) -> dict[str, dict[str, Any]]:
    """Compile each model with per-node performance counters and time them in turn, ``repeats``
    runs each, the first of each round swapping; each timed run follows an untimed one of the
    same model (the first run after another model's ran measurably slower). Returns, per name,
    the last timed run's counters aggregated and the median wall time."""
    import openvino as ov

    core = ov.Core()
    requests = {}
    for name, (model, _inputs, config) in models.items():
        if not isinstance(model, ov.Model):
            model = core.read_model(str(model))
        requests[name] = core.compile_model(model, "CPU", {**config, "PERF_COUNT": True}).create_infer_request()
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            inputs = models[name][1]
            requests[name].infer(inputs)
            t = time.perf_counter()
            requests[name].infer(inputs)
            times[name].append(time.perf_counter() - t)
    out = {}
    for name, request in requests.items():
        nodes = [(p.node_name, p.node_type, p.exec_type, p.real_time.total_seconds() * 1e6)
                 for p in request.get_profiling_info() if str(p.status).endswith("EXECUTED") and
                 not str(p.status).endswith("NOT_EXECUTED")]
        out[name] = aggregate(nodes)
        out[name]["wall_ms"] = round(sorted(times[name])[len(times[name]) // 2] * 1000, 1)
    return out


def cut_to_tokens(count: Callable[[str], int], text: str, tokens: int) -> str:
    """The longest run of ``text``'s first words whose input is at most ``tokens`` long by
    ``count`` (0: ``text`` whole)."""
    words = text.split()
    if tokens <= 0 or count(text) <= tokens:
        return text
    low, high = 1, len(words)
    while low < high:
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid])) <= tokens:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low])


def profile_against_peer(role: str, source: Path, text: str, repeats: int, tokens: int = 0,
                         query: str = "") -> dict[str, Any]:
    """ragd's converted embedder or reranker (``role``; as ``Runner`` compiles it) and the
    OpenVINO peer's static int8 model on the same input, batch 1: ``text`` cut so that the
    input is at most ``tokens`` long (0: whole; a rerank pair of ``query`` and ``text`` up to
    512 tokens)."""
    import openvino as ov

    from ragd.models import open_embedder, open_reranker
    from ragd.models.cpu import cpu_cores
    from ragd.models.openvino.runner import dynamic_group, read_for_cpu
    from ragd.models.tokens import load_tokens

    words = load_tokens(source)

    def encode(t: str) -> list[int]:
        if role == "embed":
            return list(words.ids([t], max_length=8192)[0])
        return list(words.pairs(query, [t], RERANK_MAX_LENGTH)[0])

    ids = np.asarray([encode(cut_to_tokens(lambda t: len(encode(t)), text, tokens))], dtype=np.int64)
    mask = np.ones_like(ids)
    opts: dict[str, Any] = {"device": "cpu", "precision": "auto", "backend": "auto", "cache_dir": CACHE}
    model: Any = (open_embedder(source, "bench-m3", **opts) if role == "embed"
                  else open_reranker(source, "bench-rr", **opts))
    location = model.runner.location
    config = {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": cpu_cores(),
              "INFERENCE_PRECISION_HINT": model.runner.arithmetic,
              "DYNAMIC_QUANTIZATION_GROUP_SIZE": dynamic_group(location)}
    ours = model.runner._inputs(ids, mask)
    del model
    models: dict[str, Profiled] = {"ragd": (read_for_cpu(ov.Core(), location)[0], ours, config)}
    peer = peer_folder(source, role) / st_file("st-openvino-int8")
    if peer.is_file():
        models["st-openvino-int8"] = (peer, {"input_ids": ids, "attention_mask": mask},
                                      {"INFERENCE_NUM_THREADS": cpu_cores(), "NUM_STREAMS": 1})
    return {"role": role, "tokens": int(ids.shape[1]), "precision": location.precision, **profile(models, repeats)}


def print_profile(result: dict[str, Any], top: int = 14) -> None:
    role = "embedder" if result.get("role") == "embed" else "reranker"
    print(f"{role} profile, 1 x {result['tokens']} tokens (ragd {result['precision']})")
    for name in ("ragd", "st-openvino-int8"):
        if name not in result:
            continue
        r = result[name]
        print(f"  {name}: {r['wall_ms']} ms wall, {r['total_ms']} ms in nodes")
        for k in r["by_kind"][:top]:
            print(f"    {k['kind']:40}{k['ms']:>9.2f} ms{k['share']:>7.1%}")
        print("    per layer: " + ", ".join(f"{k.split()[-1]}:{v}" for k, v in r["by_layer"].items()))


# ---------------------------------------------------------------- the run (parent)

def load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def agreement(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``agreement_to_fp32`` from its ``output`` (which it drops): mean cosine
    of the dense vectors or Spearman of the scores, against the reference's outputs."""
    reference = {r["role"]: r["output"] for r in rows if r["engine"] == REFERENCE and "output" in r}
    for r in rows:
        output = r.pop("output", None)
        ref = reference.get(r["role"])
        if output is not None and ref is not None:
            r["agreement_to_fp32"] = round(
                mean_cosine(ref, output) if r["role"] == "embed" else spearman(ref, output), 4)


def token_counts(embedder: Path, reranker: Path, texts: list[str], query: str) -> tuple[int, int, int]:
    """The inputs' tokens as ragd feeds them (special tokens included), and the query's share
    of a rerank pair (its tokens and the pair's special tokens)."""
    from ragd.models.tokens import load_tokens

    embed = sum(len(x) for x in load_tokens(embedder).ids(texts, max_length=8192))
    tokens = load_tokens(reranker)
    rerank = sum(len(x) for x in tokens.pairs(query, texts, RERANK_MAX_LENGTH))
    overhead = len(tokens.ids([query], special=False, max_length=RERANK_MAX_LENGTH * 3 // 4)[0])
    return embed, rerank, overhead + tokens.num_special(pair=True)


def candidates_in_2s(tokens_per_s: float | None, pair_overhead: int, passage: int = 300) -> float | None:
    """How many candidates of ``passage`` tokens (plus the query) a 2 s rerank deadline scores."""
    return round(2.0 * tokens_per_s / (passage + pair_overhead), 1) if tokens_per_s else None


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--texts", type=int, default=24, help="texts embedded and passages reranked")
    parser.add_argument("--small", action="store_true", help="the same architectures with fewer layers")
    parser.add_argument("--small-layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds per configuration (median)")
    parser.add_argument("--roles", default="embed,rerank")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8", "int8-dynamic"],
                        help="ragd's precision")
    parser.add_argument("--calibration-samples", type=int, default=64,
                        help="SciFact abstracts the OpenVINO peer calibrates on (padded to 384 tokens)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration")
    parser.add_argument("--save", help="JSON lines of the measured configurations "
                        "(default .cache/bench-models/peers-<size>-<n>texts.jsonl)")
    parser.add_argument("--resume", action="store_true", help="reuse the configurations measured in --save")
    parser.add_argument("--prepare-only", action="store_true", help="export and convert, measure nothing")
    parser.add_argument("--alternate", type=int, default=0, metavar="N",
                        help="then run ragd and the fastest peer in turn N more times each; report their ratio")
    parser.add_argument("--profile", action="store_true",
                        help="per-node profile of ragd's and the OpenVINO peer's int8 models (both converted), "
                             "for each of --roles")
    parser.add_argument("--profile-tokens", type=int, default=0, metavar="N",
                        help="profile an input of at most N tokens (the longest text cut; default: whole, "
                             "a rerank pair up to 512)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(Path(args.child[0]).read_text(encoding="utf-8"))
        Path(args.child[1]).write_text(json.dumps(child(spec)), encoding="utf-8")
        return 0
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines: {', '.join(sorted(unknown))}")
    roles = [r for r in args.roles.split(",") if r]
    if not roles or set(roles) - {"embed", "rerank"}:
        parser.error("--roles takes embed, rerank or both")
    texts, query = texts_and_query(args.texts)
    embedder, reranker = build_small_models(args.small_layers) if args.small else build_models()
    if args.profile:
        longest = max(texts, key=len)
        results = []
        for role in roles:
            found = profile_against_peer(role, embedder if role == "embed" else reranker, longest,
                                         max(3, args.rounds), args.profile_tokens, query)
            results.append({"machine": machine(), "load_average": os.getloadavg()[0], **found})
            if not args.json:
                print_profile(results[-1])
        if args.json:
            print(json.dumps(results[0] if len(results) == 1 else results))
        return 0
    embed_tokens, rerank_tokens, pair_overhead = token_counts(embedder, reranker, texts, query)
    base = {"texts": texts, "query": query, "rounds": args.rounds, "embedder": str(embedder),
            "reranker": str(reranker), "precision": args.precision, "calibration": args.calibration_samples}
    load_start = os.getloadavg()[0]
    # Every measured configuration is appended to --save as it finishes; --resume reuses them
    # (same texts, size and rounds), so a long run can be continued or split.
    size = f"small{args.small_layers}" if args.small else "full"
    save = Path(args.save) if args.save else CACHE / f"peers-{size}-{len(texts)}texts.jsonl"
    done = {(r["engine"], r["role"], r["batch"]): r for r in load_rows(save)} if args.resume else {}
    if not args.resume:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text("", encoding="utf-8")
    rows: list[dict[str, Any]] = []
    prepared: dict[tuple[str, str], dict[str, Any]] = {}
    for config in configurations(engines, roles):
        key = (config["engine"], config["role"])
        row = done.get((config["engine"], config["role"], config["batch"]))
        if row is None:
            log(f"{config['role']}: {label(config)} (load {os.getloadavg()[0]:.1f})")
            if config["engine"] != REFERENCE and key not in prepared:
                log("  preparing (export, quantisation or conversion; cached)")
                prepared[key] = run_child({**base, **config, "prepare_only": True}, args.timeout)
                log(f"  prepared: {prepared[key]}")
            if args.prepare_only:
                continue
            row = run_child({**base, **config}, args.timeout)
            if key in prepared:
                row["prepare_s"] = prepared[key].get("prepare_s")
                if "error" in prepared[key]:
                    row["error"] = "prepare: " + prepared[key]["error"]
            if "error" in row:
                log(f"  failed: {row['error']}")
            else:
                tokens = embed_tokens if row["role"] == "embed" else rerank_tokens
                row["tokens_per_s"] = round(tokens / row.pop("seconds"), 1)
                row["tokens_per_cpu_s"] = round(tokens / row.pop("cpu_seconds"), 1)
                with save.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
        rows.append(row)
    if args.prepare_only:
        return 0
    for r in rows:  # rows saved by an earlier version carry the seconds
        if "cpu_seconds" in r:
            r["tokens_per_cpu_s"] = round((embed_tokens if r["role"] == "embed" else rerank_tokens)
                                          / r.pop("cpu_seconds"), 1)
    agreement(rows)
    meta = {"machine": machine(), "small": args.small, "layers": args.small_layers if args.small else 24,
            "texts": len(texts), "embed_tokens": embed_tokens, "rerank_tokens": rerank_tokens,
            "rounds": args.rounds, "calibration_samples": args.calibration_samples, "onnx_preset": onnx_preset(),
            "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
            "load_average_rows": [min((r["load_average"] for r in rows if "load_average" in r), default=None),
                                  max((r["load_average"] for r in rows if "load_average" in r), default=None)]}
    summary = summarize(rows, meta)
    for role in roles if args.alternate > 0 else ():
        ours_config = next((c for c in configurations(engines, [role]) if c["engine"] == "ragd"), None)
        peer = fastest(rows, role)
        if ours_config is None or peer is None:
            continue
        peer_config = {k: peer[k] for k in ("engine", "role", "batch")}
        seconds: dict[str, list[float]] = {"ragd": [], "peer": []}
        for turn, name in turns(args.alternate):
            config = ours_config if name == "ragd" else peer_config
            log(f"{role}, in turn {turn + 1}/{args.alternate}: {label(config)} (load {os.getloadavg()[0]:.1f})")
            row = run_child({**base, **config}, args.timeout)
            if "error" in row:  # the pairs so far are reported
                log(f"  failed: {row['error']}")
                break
            seconds[name].append(row["seconds"])
        pairs = min(len(seconds["ragd"]), len(seconds["peer"]))
        summary[f"{role}_ratio_to_fastest_peer_alternating"] = {
            "peer": label(peer), **paired_ratios(seconds["ragd"][:pairs], seconds["peer"][:pairs])}
    # Estimated from the rate, whole ~300-token candidates and 128-token windows (the narrowest
    # a deadline makes them); benchmarks/search.py measures it through search().
    best = fastest(rows, "rerank")
    for name, speed in (("", summary.get("rerank_tokens_per_s")), ("fastest_peer_", best and best["tokens_per_s"])):
        summary[f"rerank_{name}candidates_in_2s"] = candidates_in_2s(speed, pair_overhead)
        summary[f"rerank_{name}candidates_in_2s_128"] = candidates_in_2s(speed, pair_overhead, 128)
    if args.json:
        print(json.dumps(summary))
    else:
        m = summary["machine"]
        print(f"{m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}); {len(texts)} texts, "
              f"{embed_tokens} / {rerank_tokens} tokens, {summary['layers']} layers; "
              f"load {load_start:.1f} -> {summary['load_average_end']:.1f} (measured rows "
              f"{' - '.join(f'{x:.1f}' for x in summary['load_average_rows'] if x is not None)})")
        print(table(summary))
        print(f"a 2 s rerank deadline: ragd {summary['rerank_candidates_in_2s']} candidates of ~300 tokens "
              f"({summary['rerank_candidates_in_2s_128']} in 128-token windows), the fastest peer "
              f"{summary['rerank_fastest_peer_candidates_in_2s']} "
              f"({summary['rerank_fastest_peer_candidates_in_2s_128']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
