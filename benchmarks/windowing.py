"""Reranker windowing on COVID-QA: how often the window the reranker reads holds the answer.

    .venv/bin/python benchmarks/windowing.py [--json] [--max-tokens N] [--chunk-tokens 512]

Each (question, answer) pair of ../shared/data/beir/covid-qa/answers.jsonl: the paper is cut
into chunks as ragd indexes it (``chunk_document`` at ``--chunk-tokens``, the default
``chunking.max_tokens``, with 64 tokens of overlap), the first chunk that holds the whole
answer span is the reranker's candidate, and ``best_window`` picks at most ``--max-tokens``
tokens of it (default: ``search.rerank_max_tokens``). Tokens are counted with an XLM-R style
tokenizer (the synthetic reranker's; the real bge-reranker-v2-m3 tokenizer cannot be
downloaded here). Reports the share of pairs whose answer lies wholly inside the window.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "beir" / "covid-qa"


def main() -> int:
    from ragd.config import SearchConfig

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--max-tokens", type=int, default=SearchConfig().rerank_max_tokens)
    parser.add_argument("--chunk-tokens", type=int, default=512)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from ragd.chunk import chunk_document
    from ragd.models.synthetic import build_tokenizer
    from ragd.window import best_window

    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer(Path(tmp))
        tok = AutoTokenizer.from_pretrained(tmp)

    def count(texts: list[str]) -> list[int]:
        return [len(x) for x in tok(list(texts), add_special_tokens=False)["input_ids"]]

    def offsets(text: str) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in tok(text, add_special_tokens=False, return_offsets_mapping=True)
                ["offset_mapping"]]

    corpus = {}
    for line in (DATA / "corpus.jsonl").open(encoding="utf-8"):
        doc = json.loads(line)
        corpus[doc["_id"]] = doc["text"]
    queries = {}
    for line in (DATA / "queries.jsonl").open(encoding="utf-8"):
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    chunks: dict[str, list[str]] = {}
    pairs = inside = windowed = no_chunk = 0
    for line in (DATA / "answers.jsonl").open(encoding="utf-8"):
        a = json.loads(line)
        answer = a["answer"].strip()
        doc_id = a["corpus-id"]
        if doc_id not in chunks:
            chunks[doc_id] = [c.text for c in chunk_document(corpus[doc_id], "text", count, args.chunk_tokens, 64)]
        holder = next((c for c in chunks[doc_id] if answer in c), None)
        pairs += 1
        if holder is None:
            no_chunk += 1  # the answer straddles two chunks: no window choice is involved
            continue
        start, end = best_window(queries[a["query-id"]], holder, args.max_tokens, offsets)
        windowed += (start, end) != (0, len(holder))
        window = holder[start:end]
        inside += answer in window
    judged = pairs - no_chunk
    result = {
        "pairs": pairs, "judged": judged, "answer_split_across_chunks": no_chunk, "windowed": windowed,
        "max_tokens": args.max_tokens, "chunk_tokens": args.chunk_tokens,
        "contains_answer": round(inside / judged, 4) if judged else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"window {args.max_tokens} tokens of chunks up to {args.chunk_tokens}: answer inside the window "
              f"for {inside}/{judged} pairs ({result['contains_answer']:.1%}); {windowed} chunks were windowed; "
              f"{no_chunk} answers straddle two chunks (not judged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
