"""Extraction throughput: pages per second for PDF, files per second for the other formats,
through ``ragd.extract.extract`` with the worker isolation on (as the indexer runs it).

Documents are built with the test fixtures' writers (tests/docfiles.py) from SciFact abstracts
(../shared/data/beir/scifact), so pages hold real prose. For the 100-page PDF the script also
counts the extracted text's tokens (all-MiniLM-L6-v2's WordPiece, a stand-in for BGE-M3's
tokenizer, which is not on this machine) and sets its extraction time against the time to
embed those tokens at a given embedder speed (``--embed-tokens-per-s``; default: the int8
BGE-M3 embedder's ~812 tokens/s on the 2-core VNNI VM, benchmarks/README.md#inference).

    .venv/bin/python benchmarks/extract.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import docfiles  # noqa: E402
from common import machine  # noqa: E402

from ragd.extract import Limits, extract, forget_cached  # noqa: E402
from ragd.extract.isolate import POOL  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "beir" / "scifact" / "corpus.jsonl"
LINES_PER_PAGE = 50
WIDTH = 95


def abstracts(n: int) -> list[str]:
    out: list[str] = []
    with SCIFACT.open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if len(doc["text"].split()) > 150:
                out.append(f"{doc.get('title', '')}. {doc['text']}")
                if len(out) == n:
                    break
    return out


def pdf_pages(texts: list[str], pages: int) -> list[list[str]]:
    """``pages`` pages of 50 wrapped lines of prose."""
    lines = [line for t in texts for line in [*textwrap.wrap(t, WIDTH), ""]]
    while len(lines) < pages * LINES_PER_PAGE:
        lines += lines
    return [lines[p * LINES_PER_PAGE : (p + 1) * LINES_PER_PAGE] for p in range(pages)]


def documents(texts: list[str]) -> dict[str, tuple[str, bytes, int]]:
    """Format -> (file name, bytes, pages or parts the document has)."""
    paras = [t[:600] for t in texts]
    sections = [(f"Section {i}", 1 + i % 2, paras[i % len(paras) : i % len(paras) + 3]) for i in range(40)]
    rows = [[f"r{i}", t[:40], str(i * 3.5), t[40:80]] for i, t in enumerate(paras * 10)]
    mail = [docfiles.eml(f"Message {i}", "ann@example.org", "\n\n".join(paras[i : i + 3])) for i in range(50)]
    return {
        "pdf": ("paper.pdf", docfiles.pdf(pdf_pages(texts, 100)), 100),
        "docx": ("report.docx", docfiles.docx("Report", sections, [["a", "b"], ["c", "d"]]), 40),
        "pptx": ("deck.pptx", docfiles.pptx([(f"Slide {i}", paras[i % len(paras)].split(". ")[:4], paras[i % 7][:200])
                                             for i in range(30)]), 30),
        "xlsx": ("sheet.xlsx", docfiles.xlsx([("Data", rows), ("More", rows)]), 2),
        "odt": ("letter.odt", docfiles.odt(sections), 40),
        "ods": ("sheet.ods", docfiles.ods([("Data", rows), ("More", rows)]), 2),
        "rtf": ("memo.rtf", docfiles.rtf(paras * 3), len(paras) * 3),
        "html": ("article.html", docfiles.html("Article", "Heading", paras * 2), 1),
        "epub": ("book.epub", docfiles.epub("Book", [(f"Chapter {i}", paras[i : i + 5]) for i in range(20)]), 20),
        "eml": ("mail.eml", docfiles.eml("Report", "ann@example.org", paras[0],
                                         [("paper.pdf", docfiles.pdf(pdf_pages(texts, 10)))]), 1),
        "mbox": ("archive.mbox", docfiles.mbox(mail), 50),
        "ipynb": ("nb.ipynb", docfiles.ipynb([("markdown", p) if i % 2 else ("code", f"x{i} = {i}\nprint(x{i})")
                                             for i, p in enumerate(paras)]), len(paras)),
    }


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median seconds of ``repeat`` calls, and the last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        forget_cached()
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2], result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--embed-tokens-per-s", type=float, default=812.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    texts = abstracts(60)
    docs = documents(texts)
    isolated = Limits()
    in_process = Limits(isolate=False)
    rows: list[dict[str, Any]] = []
    POOL.close()
    forget_cached()
    name, data, _ = docs["pdf"]
    started = time.perf_counter()
    extract(Path(name), data, isolated)
    cold = time.perf_counter() - started  # a worker's start included
    for fmt, (name, data, parts) in docs.items():
        path = Path(name)
        seconds, doc = timed(lambda p=path, d=data: extract(p, d, isolated), args.repeat)
        direct, _ = timed(lambda p=path, d=data: extract(p, d, in_process), args.repeat)
        rows.append({
            "format": fmt, "bytes": len(data), "parts": parts, "chars": len(doc.text),
            "seconds": round(seconds, 4), "files_per_s": round(1 / seconds, 1),
            "parts_per_s": round(parts / seconds, 1), "in_process_seconds": round(direct, 4),
        })
    from tokenizers import Tokenizer

    from ragd.models.resolve import minilm_folder

    tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    tokenizer.no_truncation()
    pdf_row = rows[0]
    pdf_text = extract(Path("paper.pdf"), docs["pdf"][1], isolated).text
    tokens = len(tokenizer.encode(pdf_text, add_special_tokens=False).ids)
    embed_s = tokens / args.embed_tokens_per_s
    result = {
        "machine": machine(), "repeat": args.repeat, "first_call_with_worker_start_s": round(cold, 3),
        "formats": rows,
        "pdf_100_pages": {"tokens": tokens, "extract_s": pdf_row["seconds"], "embed_s_at": args.embed_tokens_per_s,
                          "embed_s": round(embed_s, 1), "embed_over_extract": round(embed_s / pdf_row["seconds"], 1)},
    }
    POOL.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['machine']['cpu']} ({result['machine']['cores']} cores); median of {args.repeat}; "
          f"first call with a worker's start {cold:.2f} s")
    print(f"{'format':7} {'KiB':>7} {'parts':>6} {'chars':>8} {'ms':>8} {'files/s':>8} {'parts/s':>8} "
          f"{'in-proc ms':>10}")
    for r in rows:
        print(f"{r['format']:7} {r['bytes'] / 1024:7.0f} {r['parts']:6} {r['chars']:8} {r['seconds'] * 1000:8.1f} "
              f"{r['files_per_s']:8.1f} {r['parts_per_s']:8.1f} {r['in_process_seconds'] * 1000:10.1f}")
    p = result["pdf_100_pages"]
    print(f"100-page PDF: {p['tokens']} tokens, extracted in {p['extract_s']:.3f} s; embedding them at "
          f"{p['embed_s_at']:.0f} tokens/s takes {p['embed_s']:.1f} s ({p['embed_over_extract']:.0f}x the extraction)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
