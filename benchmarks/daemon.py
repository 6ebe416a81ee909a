"""Daemon benchmark: change-to-searchable latency, and search latency while a large folder is
indexing versus idle. Runs a real daemon (in this process) with the real all-MiniLM-L6-v2
(`minilm`) and talks to it over its Unix socket through ragd_client, as a user's tools do.

    .venv/bin/python benchmarks/daemon.py [--json] [--notes 5] [--searches 40] [--docs 1500]
                                          [--models minilm|m3] [--seeds 50]

The large folder is SciFact's corpus from ../shared/data (one file per abstract).

Memory: the daemon runs in this process, so its RSS is this process's, read from
/proc/self/status: ``VmRSS`` once idle with its models loaded (after the first searches,
a reranking one included when a reranker is configured), and the peak ``VmHWM`` while busy
(indexing the large folder while searching; the high-water mark is reset just before via
/proc/self/clear_refs), compared with a float32 footprint estimate of the models (4 bytes
per parameter of the embedder and the reranker). ``--models m3`` runs the random-weight
BGE-M3 and bge-reranker-v2-m3 architectures (``benchmarks/inference.py`` builds them) so that
both full-size models are loaded; embedding is slow on a CPU, so use a small ``--docs``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import percentile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "beir" / "scifact" / "corpus.jsonl"



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--notes", type=int, default=5, help="notes written for the latency test")
    parser.add_argument("--searches", type=int, default=40, help="searches per latency sample")
    parser.add_argument("--docs", type=int, default=1500, help="documents in the large folder")
    parser.add_argument("--models", default="minilm", choices=["minilm", "m3"],
                        help="minilm without reranker, or the BGE-M3 + bge-reranker-v2-m3 architectures")
    parser.add_argument("--seeds", type=int, default=50, help="documents in the notes folder at start")
    parser.add_argument("--deadline-searches", type=int, default=5,
                        help="reranked searches of the top 20 with a 2 s deadline, idle and while indexing")
    parser.add_argument("--spaced", type=int, default=8,
                        help="searches --gap apart while indexing, with and without cancelling the batch in hand")
    parser.add_argument("--gap", type=float, default=1.0,
                        help="seconds between spaced searches (over the scheduler's reserve: indexing resumes)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                        help="models.precision (with --models m3: int8 runs the reranker in static int8 too)")
    args = parser.parse_args()

    import ragd_client
    from ragd.config import parse_config
    from ragd.server import Daemon

    if not DATA.is_file():
        print(f"missing {DATA}", file=sys.stderr)
        return 1
    docs = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()[: args.docs]]
    tmp = Path(tempfile.mkdtemp(prefix="ragd-bench-"))
    notes, big = tmp / "notes", tmp / "big"
    notes.mkdir()
    big.mkdir()
    for i, d in enumerate(docs[: args.seeds]):
        (notes / f"seed-{i}.txt").write_text(f"{d['title']}\n{d['text']}\n", encoding="utf-8")
    models = {"embedder": "minilm", "reranker": "none", "fallback": "none", "precision": args.precision}
    if args.models == "m3":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from inference import build_models

        m3, rr = build_models()
        # Converted OpenVINO models are shared with inference.py (keyed by the model folder).
        models = {"embedder": str(m3), "reranker": str(rr), "fallback": "none", "cache_dir": str(m3.parent),
                  "precision": args.precision}
    cfg = parse_config({
        "data_dir": str(tmp / "data"), "roots": [{"path": str(notes)}, {"path": str(big)}],
        "models": models,
        "server": {"socket": str(tmp / "run" / "ragd.sock")},
    }, source=tmp / "config.toml")
    daemon = Daemon(cfg)
    daemon.start()
    client = ragd_client.Client(address=f"unix://{daemon.socket}", timeout=120)
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "embedder": args.models, "precision": args.precision,
                              "debounce_ms": cfg.watch.debounce_ms}
    reranking = models["reranker"] != "none"
    try:
        wait_idle(client)
        # 1. change-to-searchable latency for a small note
        latencies = []
        for i in range(args.notes):
            phrase = f"zebra{i} quokka{i} marmoset{i} observed near the river delta at dawn"
            path = notes / f"note-{i}.md"
            start = time.monotonic()
            path.write_text(f"# Field note {i}\n\n{phrase}\n", encoding="utf-8")
            while True:
                try:
                    hits = client.search(phrase, k=1, rerank=False).hits
                except ragd_client.RagdClientError:
                    hits = []
                if hits and hits[0].path == str(path):
                    break
                if time.monotonic() - start > 60:
                    raise RuntimeError("note never became searchable")
                time.sleep(0.05)
            latencies.append(time.monotonic() - start)
        result["change_to_searchable_s"] = {"p50": round(statistics.median(latencies), 3),
                                            "max": round(max(latencies), 3), "samples": len(latencies)}

        # 2. search latency idle vs while a large folder is indexing
        queries = [d["title"] for d in docs[:args.searches]]
        idle = timed_searches(client, queries)
        if reranking:
            client.search(queries[0], k=4, candidates=4, rerank=True)  # the reranker has run once
        memory: dict[str, Any] = {"idle_rss_mb": proc_status_mb("VmRSS"),
                                  # frameworks in the process (none of them on the OpenVINO path once converted)
                                  "idle_frameworks": sorted(m for m in ("torch", "transformers", "FlagEmbedding")
                                                            if m in sys.modules),
                                  # file-backed pages: weights mapped from their files (only touched rows count)
                                  "idle_rss_file_mb": proc_status_mb("RssFile"),
                                  "idle_rss_anon_mb": proc_status_mb("RssAnon")}
        if reranking:  # after the idle reading: new input shapes grow OpenVINO's memory a little
            result["deadline_2s_idle"] = deadline_searches(client, queries[: args.deadline_searches])
        reset_peak = reset_high_water_mark()
        sampler = RssSampler()
        for i, d in enumerate(docs):
            (big / f"doc-{i}.txt").write_text(f"{d['title']}\n{d['text']}\n", encoding="utf-8")
        wait_busy(client)
        busy = timed_searches(client, queries)
        if reranking:
            client.search(queries[-1], k=10, candidates=12, rerank=True)  # ~ one full 4,096-token batch
            result["deadline_2s_indexing"] = deadline_searches(client, queries[-args.deadline_searches:])
        result["spaced_while_indexing"] = compare_cancelling(
            client, queries, args.spaced, args.deadline_searches if reranking else 0, args.gap)
        still_busy = client.status().files_pending > 0
        sampler.stop()
        memory["busy_peak_rss_mb"] = proc_status_mb("VmHWM") if reset_peak else sampler.peak_mb
        memory["busy_peak_source"] = "VmHWM after clear_refs" if reset_peak else "VmRSS sampled every 50 ms"
        memory["busy_peak_sampled_mb"] = sampler.peak_mb
        memory["process_peak_rss_mb"] = None if reset_peak else proc_status_mb("VmHWM")
        assert daemon.engine is not None
        estimate, missing = float32_bytes(daemon.engine.models)
        memory["models_float32_mb"] = round(estimate / 2**20, 1)
        if missing:
            memory["float32_estimate_misses"] = missing
        memory["idle_rss_over_float32"] = round(memory["idle_rss_mb"] / memory["models_float32_mb"], 2)
        memory["busy_peak_over_float32"] = round(memory["busy_peak_rss_mb"] / memory["models_float32_mb"], 2)
        memory["models"] = {"embedder": daemon.engine.models.embedder.model_id,
                            "reranker": getattr(daemon.engine.models.reranker, "model_id", None)}
        result["memory"] = memory
        result["search_idle_ms"] = {"p50": round(percentile(idle, 0.5), 1), "p95": round(percentile(idle, 0.95), 1),
                                    "max": round(max(idle), 1)}
        result["search_indexing_ms"] = {"p50": round(percentile(busy, 0.5), 1),
                                        "p95": round(percentile(busy, 0.95), 1), "max": round(max(busy), 1)}
        result["indexing_p50_ratio"] = round(percentile(busy, 0.5) / percentile(idle, 0.5), 2)
        result["indexing_still_running_at_end"] = still_busy
    finally:
        client.close()
        daemon.stop(0)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


def proc_status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory line (``VmRSS``, ``VmHWM``, ``RssFile``...) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """The largest VmRSS seen by a background thread polling every 50 ms."""

    def __init__(self) -> None:
        self.peak_mb = proc_status_mb("VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, proc_status_mb("VmRSS"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def float32_bytes(models: Any) -> tuple[int, list[str]]:
    """4 bytes per parameter of the embedder's and the reranker's torch modules (with the
    OpenVINO backend, whose torch transformer is dropped after conversion: the size of the
    float32 weight files the model was converted from), and the ids of backends with neither."""
    total, missing = 0, []
    for backend in (models.embedder, models.reranker):
        if backend is None:
            continue
        runner = getattr(backend, "runner", None)
        module = getattr(getattr(backend, "_model", None), "model", None)
        if runner is not None:
            source = runner.location.source
            total += sum(f.stat().st_size for f in source.iterdir() if f.suffix in (".safetensors", ".pt"))
        elif module is not None and hasattr(module, "parameters"):
            total += 4 * sum(p.numel() for p in module.parameters())
        else:
            missing.append(str(getattr(backend, "model_id", type(backend).__name__)))
    return total, missing


def wait_idle(client: Any, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.status()
        if st.serving and st.files_pending == 0 and not st.current_file:
            return
        time.sleep(0.2)
    raise RuntimeError("daemon never became idle")


def wait_busy(client: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.status().current_file:
            return
        time.sleep(0.05)
    raise RuntimeError("indexing never started")


def timed_searches(client: Any, queries: list[str]) -> list[float]:
    out = []
    for q in queries:
        t = time.perf_counter()
        client.search(q, k=10, rerank=False)
        out.append((time.perf_counter() - t) * 1000)
    return out


def compare_cancelling(client: Any, queries: list[str], plain: int, deadline: int, gap: float) -> dict[str, Any]:
    """Searches ``gap`` seconds apart while indexing (so each finds an indexing batch running,
    as a user's or an agent's occasional search does), alternating between the scheduler
    cancelling the batch in hand for the search (ragd) and waiting for it (before): the same
    daemon, the same moment of indexing. ``plain`` searches without reranking, ``deadline``
    reranked ones of the top 20 with a 2 s deadline, in each mode."""
    from ragd.models.openvino import scheduler as ov_scheduler

    sched = ov_scheduler._scheduler
    if sched is None:
        return {"skipped": "the models do not run on OpenVINO"}
    modes = {"cancel": sched.CANCELS_PER_BATCH, "wait": 0}
    out: dict[str, Any] = {"gap_s": gap}
    for kind, count in (("plain", plain), ("deadline_2s", deadline)):
        walls: dict[str, list[float]] = {m: [] for m in modes}
        reranked: dict[str, list[int]] = {m: [] for m in modes}
        indexing = {m: 0 for m in modes}
        preempted = {m: 0 for m in modes}
        for i in range(count * len(modes)):
            mode = list(modes)[i % len(modes)]
            sched.CANCELS_PER_BATCH = modes[mode]
            time.sleep(gap)
            indexing[mode] += client.status().files_pending > 0
            before = sched.preemptions
            q = queries[i % len(queries)]
            t = time.perf_counter()
            if kind == "plain":
                client.search(q, k=10, rerank=False)
            else:
                reranked[mode].append(client.search(q, k=10, candidates=20, rerank=True, deadline=2.0).reranked)
            walls[mode].append((time.perf_counter() - t) * 1000)
            preempted[mode] += sched.preemptions - before
        for m in modes:
            if walls[m]:
                out[f"{kind}_{m}"] = {
                    "p50_ms": round(percentile(walls[m], 0.5), 1), "max_ms": round(max(walls[m]), 1),
                    "searches": len(walls[m]), "while_indexing": indexing[m], "batches_cancelled": preempted[m],
                    **({"reranked_mean": round(statistics.mean(reranked[m]), 1)} if reranked[m] else {})}
    sched.CANCELS_PER_BATCH = modes["cancel"]
    return out


def deadline_searches(client: Any, queries: list[str]) -> dict[str, Any]:
    """Reranked searches of the top 20 candidates with a 2 s deadline (``deadline_ms``, as an
    agent with a tool deadline sends it): wall time through gRPC, how many were reranked and in
    which window."""
    walls, reranked, windows = [], [], []
    for q in queries:
        t = time.perf_counter()
        r = client.search(q, k=10, candidates=20, rerank=True, deadline=2.0)
        walls.append((time.perf_counter() - t) * 1000)
        reranked.append(r.reranked)
        windows.append(getattr(r, "rerank_window", 0))
    return {"searches": len(walls), "p50_ms": round(percentile(walls, 0.5), 1), "max_ms": round(max(walls), 1),
            "reranked_mean": round(statistics.mean(reranked), 1) if reranked else 0, "rerank_windows": windows}


if __name__ == "__main__":
    threading.excepthook = lambda a: print(f"thread error: {a.exc_value}", file=sys.stderr)
    sys.exit(main())
