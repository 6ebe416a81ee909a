"""Long queries: nDCG@10 of each collection's long-query form (each document's judged
questions joined into one query, ``ragd.evaluate.long_queries``) with the real
all-MiniLM-L6-v2 (fp32, as the quality tests run it), for dense, lexical and hybrid, and
for the dense signal two ways of reading a query longer than the embedder: every window
combined (what ragd does) against the first window only (truncation).

    .venv/bin/python benchmarks/long_queries.py [--json] [DATASET ...]

DATASET names folders of ../shared/data/beir (default: covid-qa xquad-r-zh xquad-r-en
scifact). Indexes are cached in .cache/eval, shared with the quality tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import ragd.query
from ragd.config import parse_config
from ragd.evaluate import long_queries, open_eval, score_queries

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "beir"
CACHE = ROOT / ".cache" / "eval"
DATASETS = ("covid-qa", "xquad-r-zh", "xquad-r-en", "scifact")


def measure(name: str) -> dict[str, Any]:
    config = parse_config({"models": {"embedder": "minilm", "reranker": "none", "fallback": "none",
                                      "precision": "fp32"}})
    index = open_eval(DATA / name, config, CACHE)
    try:
        index = dataclasses.replace(index, dataset=long_queries(index.dataset))
        row: dict[str, Any] = {"dataset": name, "queries": len(index.dataset.queries)}
        for mode in ("dense", "lexical", "hybrid"):
            report = score_queries(index, mode=mode)
            row[mode] = round(report.metrics["ndcg@10"], 4)
            if mode == "dense":
                row["query_use"] = report.query_use
        budget = ragd.query.MAX_EMBED_TOKENS
        ragd.query.MAX_EMBED_TOKENS = index.engine.models.embedder.max_tokens  # one window: truncation
        try:
            for mode in ("dense", "hybrid"):
                row[f"{mode}_first_window"] = round(score_queries(index, mode=mode).metrics["ndcg@10"], 4)
        finally:
            ragd.query.MAX_EMBED_TOKENS = budget
        return row
    finally:
        index.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for name in args.datasets:
        rows.append(measure(name))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # each collection as soon as it is measured
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| collection | long queries | mean / max tokens | read in windows | dense | dense, first window only "
          "| lexical | hybrid | hybrid, first window only |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        qu = r["query_use"]
        print(f"| {r['dataset']} | {r['queries']} | {qu['mean_tokens']:g} / {qu['max_tokens']:g} "
              f"| {qu['windowed_queries']:g} | {r['dense']:.4f} | {r['dense_first_window']:.4f} "
              f"| {r['lexical']:.4f} | {r['hybrid']:.4f} | {r['hybrid_first_window']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
