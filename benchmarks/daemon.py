"""Daemon benchmark: change-to-searchable latency, and search latency while a large folder is
indexing versus idle. Runs a real daemon (in this process) with the real all-MiniLM-L6-v2
(`minilm`) and talks to it over its Unix socket through ragd_client, as a user's tools do.

    .venv/bin/python benchmarks/daemon.py [--json] [--notes 5] [--searches 40] [--docs 1500]

The large folder is SciFact's corpus from ../shared/data (one file per abstract).
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "beir" / "scifact" / "corpus.jsonl"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--notes", type=int, default=5, help="notes written for the latency test")
    parser.add_argument("--searches", type=int, default=40, help="searches per latency sample")
    parser.add_argument("--docs", type=int, default=1500, help="documents in the large folder")
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
    for i, d in enumerate(docs[:50]):
        (notes / f"seed-{i}.txt").write_text(f"{d['title']}\n{d['text']}\n", encoding="utf-8")
    cfg = parse_config({
        "data_dir": str(tmp / "data"), "roots": [{"path": str(notes)}, {"path": str(big)}],
        "models": {"embedder": "minilm", "reranker": "none", "fallback": "none"},
        "server": {"socket": str(tmp / "run" / "ragd.sock")},
    }, source=tmp / "config.toml")
    daemon = Daemon(cfg)
    daemon.start()
    client = ragd_client.Client(address=f"unix://{daemon.socket}", timeout=120)
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "embedder": "minilm", "debounce_ms":
                              cfg.watch.debounce_ms}
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
        for i, d in enumerate(docs):
            (big / f"doc-{i}.txt").write_text(f"{d['title']}\n{d['text']}\n", encoding="utf-8")
        wait_busy(client)
        busy = timed_searches(client, queries)
        still_busy = client.status().files_pending > 0
        result["search_idle_ms"] = {"p50": round(percentile(idle, 0.5), 1), "p95": round(percentile(idle, 0.95), 1)}
        result["search_indexing_ms"] = {"p50": round(percentile(busy, 0.5), 1),
                                        "p95": round(percentile(busy, 0.95), 1)}
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


if __name__ == "__main__":
    threading.excepthook = lambda a: print(f"thread error: {a.exc_value}", file=sys.stderr)
    sys.exit(main())
