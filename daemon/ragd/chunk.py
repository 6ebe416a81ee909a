"""Split a document into chunks that fit the embedder, following the document's structure.

Sections come first (markdown ATX/setext headings outside fenced code, rst underlined titles);
a chunk never spans two sections. Within a section the text is cut into the coarsest units
that fit the budget -- blocks (blank-line separated, fenced code kept whole), then lines,
sentences, clauses, words and, as a last resort, characters -- and the units are packed
greedily. Every chunk's token count is measured on its final text with the embedder's own
counter (which is not additive), so the budget always holds; unit counts only guide where to
cut, and each cut costs one counter call when the guess is right, a few more otherwise.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Chunk", "HeadingLike", "TokenCounter", "chunk_document"]

TokenCounter = Callable[[Sequence[str]], list[int]]
"""Counts the tokens of each text with the embedder's tokenizer, special tokens excluded."""


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its original text (stripped), 1-based line span, heading path and,
    for paged formats, its first and last page (1-based; 0 when the format has no pages)."""

    text: str
    start_line: int
    end_line: int
    heading: tuple[str, ...]
    token_count: int
    page: int = 0
    end_page: int = 0


class HeadingLike(Protocol):
    """A heading given by the extractor: 1-based line, level (1 = top) and title."""

    @property
    def line(self) -> int: ...

    @property
    def level(self) -> int: ...

    @property
    def title(self) -> str: ...


# Unit levels, coarse to fine.
_SECTION, _BLOCK, _LINE, _SENTENCE, _CLAUSE, _WORD, _PIECE, _CHAR = range(8)

_CLOSERS = "\"')\\]’”»」』）》"
_SENTENCE_END = re.compile(rf"[.!?…]+[{_CLOSERS}]*(?=\s)|[。！？；]+[{_CLOSERS}]*")
_CLAUSE_END = re.compile(rf"[,;:]+[{_CLOSERS}]*(?=\s)|[，、：]+[{_CLOSERS}]*")
_WORDS = re.compile(r"\S+")
_NEWLINE = re.compile("\n")
_PUNCTUATION = re.compile(r"[^\w\s]+")
_WIDE_CHARS = re.compile("[\u1100-\u11ff\u2e80-\ua4cf\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff]")

_MD_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?\s*$")
_MD_ATX_CLOSE = re.compile(r"(?:^|[ \t]+)#+$")
_MD_SETEXT = re.compile(r" {0,3}(=+|-+)\s*$")
_MD_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)$")
_MD_NOT_PARAGRAPH = re.compile(r"\s*(?:[>|]|[-*+](?:\s|$)|\d{1,9}[.)](?:\s|$))| {4}|\t")
_RST_ADORNMENT = re.compile(r"([=\-~^\"'*+#])\1+\s*$")


@dataclass(frozen=True)
class _Heading:
    line: int  # 0-based index of the heading's first line (the overline, if any)
    level: int
    title: str


@dataclass
class _Unit:
    """A span of the text that starts and ends with non-whitespace, with its (estimated) tokens."""

    start: int
    end: int
    level: int
    tokens: float


@dataclass
class _Section:
    start: int
    end: int
    heading: tuple[str, ...]
    blocks: list[tuple[int, int]]


class _Counter:
    """Memoising, batching front of the token counter."""

    def __init__(self, fn: TokenCounter) -> None:
        self.fn = fn
        self.cache: dict[str, int] = {}

    def count(self, texts: Sequence[str]) -> list[int]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            got = self.fn(missing)
            if len(got) != len(missing):
                raise ValueError(f"token counter returned {len(got)} counts for {len(missing)} texts")
            self.cache.update(zip(missing, got, strict=True))
        return [self.cache[t] for t in texts]


def chunk_document(
    text: str, kind: str, count_tokens: TokenCounter, max_tokens: int, overlap_tokens: int,
    headings: Sequence[HeadingLike] | None = None, page_lines: Sequence[int] = (),
) -> list[Chunk]:
    """Chunks of at most ``max_tokens`` tokens covering all of ``text``, in document order.

    ``kind`` is "markdown", "rst", "code" or "text" (other kinds: no heading syntax);
    ``overlap_tokens`` (at most half the budget is used) is how much of a section's previous
    chunk each later chunk repeats. ``headings`` (an extractor's, by line) replace the ones
    found from the kind's syntax; ``page_lines`` (the 1-based line where each page starts)
    give each chunk its first and last page.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if not text.strip():
        return []
    chunker = _Chunker(text, kind, _Counter(count_tokens), max_tokens, max(0, min(overlap_tokens, max_tokens // 2)))
    if headings is not None:
        chunker.given = [_Heading(h.line - 1, h.level, h.title) for h in headings]
    chunks = chunker.run()
    if not page_lines:
        return chunks
    starts = list(page_lines)
    return [dataclasses.replace(c, page=max(1, bisect_right(starts, c.start_line)),
                                end_page=max(1, bisect_right(starts, c.end_line))) for c in chunks]


class _Chunker:
    def __init__(self, text: str, kind: str, counter: _Counter, max_tokens: int, overlap: int) -> None:
        self.text = text
        self.kind = kind
        self.counter = counter
        self.max = max_tokens
        self.overlap = overlap
        self.line_starts = [0, *(m.end() for m in re.finditer("\n", text))]
        self.given: list[_Heading] | None = None

    # -- driver -------------------------------------------------------------------------

    def run(self) -> list[Chunk]:
        sections = self._sections()
        counts = self.counter.count([self.text[s.start : s.end] for s in sections])
        out: list[list[Chunk]] = []
        big: list[tuple[int, _Section, int]] = []
        for sec, n in zip(sections, counts, strict=True):
            if n <= self.max:
                out.append([self._chunk(sec.start, sec.end, sec.heading, n)])
            else:
                big.append((len(out), sec, n))
                out.append([])
        for (idx, sec, _), units in zip(big, self._atoms([(sec, n) for _, sec, n in big]), strict=True):
            out[idx] = self._pack(sec, units)
        return [c for section_chunks in out for c in section_chunks]

    def _chunk(self, start: int, end: int, heading: tuple[str, ...], tokens: int) -> Chunk:
        first = bisect_right(self.line_starts, start)
        last = bisect_right(self.line_starts, end - 1)
        return Chunk(self.text[start:end], first, last, heading, tokens)

    # -- structure ----------------------------------------------------------------------

    def _sections(self) -> list[_Section]:
        """Sections (trimmed spans) with heading paths and blank-line separated blocks."""
        lines = self.text.split("\n")
        in_fence = [False] * len(lines)
        if self.given is not None:
            headings = sorted((h for h in self.given if 0 <= h.line < len(lines)), key=lambda h: h.line)
        elif self.kind == "markdown":
            headings = _markdown_headings(lines, in_fence)
        elif self.kind == "rst":
            headings = _rst_headings(lines)
        else:
            headings = []
        bounds: list[tuple[int, tuple[str, ...]]] = [] if headings and headings[0].line == 0 else [(0, ())]
        stack: list[tuple[int, str]] = []
        for h in headings:
            while stack and stack[-1][0] >= h.level:
                stack.pop()
            stack.append((h.level, h.title))
            bounds.append((h.line, tuple(t for _, t in stack if t)))
        sections: list[_Section] = []
        for k, (first, heading) in enumerate(bounds):
            last = bounds[k + 1][0] if k + 1 < len(bounds) else len(lines)
            blocks = self._blocks(lines, in_fence, first, last)
            if blocks:
                sections.append(_Section(blocks[0][0], blocks[-1][1], heading, blocks))
        return sections

    def _blocks(self, lines: list[str], in_fence: list[bool], first: int, last: int) -> list[tuple[int, int]]:
        """Blank-line separated blocks of lines ``first`` to ``last`` (blank lines in fences kept)."""
        blocks: list[tuple[int, int]] = []
        begin: int | None = None
        for k in range(first, last + 1):
            blank = k == last or (not lines[k].strip() and not in_fence[k])
            if blank and begin is not None:
                end = self.line_starts[k - 1] + len(lines[k - 1])
                span = _trim(self.text, self.line_starts[begin], end)
                if span is not None:
                    blocks.append(span)
                begin = None
            elif not blank and begin is None:
                begin = k
        return blocks

    # -- units --------------------------------------------------------------------------

    def _atoms(self, big: list[tuple[_Section, int]]) -> list[list[_Unit]]:
        """Per section, the coarsest units estimated to fit the budget.

        Blocks and lines are counted (one counter call per level for the whole document), as
        they decide what is kept whole; finer pieces share their parent's count by weight.
        """
        units = [[_Unit(sec.start, sec.end, _SECTION, n)] for sec, n in big]
        while True:
            fresh: list[_Unit] = []
            again = False
            for idx, (sec, _) in enumerate(big):
                refined: list[_Unit] = []
                for u in units[idx]:
                    if u.tokens <= self.max or u.level == _CHAR:
                        refined.append(u)
                        continue
                    parts = self._refine(u, sec)
                    if parts[0].level <= _LINE:
                        fresh.extend(parts)
                    else:
                        again = True
                    refined.extend(parts)
                units[idx] = refined
            if fresh:
                counts = self.counter.count([self.text[u.start : u.end] for u in fresh])
                for u, n in zip(fresh, counts, strict=True):
                    u.tokens = n
            elif not again:
                return units

    def _refine(self, unit: _Unit, section: _Section | None = None) -> list[_Unit]:
        """``unit`` cut at the next finer level, its tokens shared among the pieces by weight."""
        level, spans = self._split(unit, section)
        weights = [_weight(self.text, s, e) for s, e in spans]
        scale = unit.tokens / (sum(weights) or 1.0)
        return [_Unit(s, e, level, w * scale) for (s, e), w in zip(spans, weights, strict=True)]

    def _split(self, unit: _Unit, section: _Section | None = None) -> tuple[int, list[tuple[int, int]]]:
        """The next finer level that cuts ``unit`` into several pieces, and the pieces."""
        text, start, end = self.text, unit.start, unit.end
        for level in range(unit.level + 1, _CHAR):
            if level == _BLOCK:
                if section is None or unit.level != _SECTION:
                    continue
                spans = section.blocks
            elif level == _LINE:
                spans = _cut(text, start, end, _NEWLINE)
            elif level == _SENTENCE:
                spans = _cut(text, start, end, _SENTENCE_END)
            elif level == _CLAUSE:
                spans = _cut(text, start, end, _CLAUSE_END)
            elif level == _WORD:
                spans = [(m.start(), m.end()) for m in _WORDS.finditer(text, start, end)]
            else:
                spans = _cut(text, start, end, _PUNCTUATION)
            if len(spans) > 1:
                return level, spans
        return _CHAR, [(k, k + 1) for k in range(start, end) if not text[k].isspace()]

    # -- packing ------------------------------------------------------------------------

    def _pack(self, sec: _Section, atoms: list[_Unit]) -> list[Chunk]:
        """Greedy packing of ``atoms`` into chunks, each later one starting with an overlap."""
        prefix = _prefix_sums(atoms)
        chunks: list[Chunk] = []
        previous: list[_Unit] = []
        i = 0
        while i < len(atoms):
            tails = self._tails(previous)
            found = self._fit(atoms, prefix, i, tails[0]) if tails else None
            if found is None and len(tails) > 1:
                tail = self._choose_tail(atoms[i], tails)
                if tail:
                    found = self._fit(atoms, prefix, i, tail)
            if found is None:
                found = self._fit(atoms, prefix, i, [])
            if found is None:  # atom i alone is over the budget: its estimate was too low
                atom = atoms[i]
                if atom.level == _CHAR:
                    raise ValueError(f"max_tokens={self.max} cannot hold even one character here")
                atom.tokens = self.counter.count([self.text[atom.start : atom.end]])[0]
                atoms[i : i + 1] = self._refine(atom)
                prefix = _prefix_sums(atoms)
                continue
            start, j, tokens, tail = found
            chunks.append(self._chunk(start, atoms[j].end, sec.heading, tokens))
            previous = [*tail, *atoms[i : j + 1]]
            i = j + 1
        return chunks

    def _tails(self, units: list[_Unit]) -> list[list[_Unit]]:
        """Candidate overlaps: suffixes of ``units`` within the overlap budget, largest first.

        Whole units are preferred; when even the last one is too big it is cut finer (with
        estimated counts) until some suffix fits. The whole previous chunk is never repeated.
        """
        if not self.overlap or not units:
            return []
        units = list(units)
        while True:
            tails: list[list[_Unit]] = []
            total = 0.0
            for k in range(len(units) - 1, 0, -1):
                total += units[k].tokens
                if total > self.overlap:
                    break
                tails.append(units[k:])
            if tails:
                return tails[::-1]
            if units[-1].level == _CHAR:
                return []
            units = [*units[:-1], *self._refine(units[-1])]

    def _choose_tail(self, first: _Unit, tails: list[list[_Unit]]) -> list[_Unit]:
        """A smaller one of ``tails`` (largest first; the first one failed) within the overlap
        budget that leaves room for the unit ``first`` after it; ``[]`` when none is found soon."""
        text = self.text
        sized = [(sum(u.tokens for u in t), t) for t in tails]
        begin, end = tails[0][0].start, tails[0][-1].end
        measured = self.counter.count([text[begin:end]])[0]  # cached by the failed attempt
        estimated = sized[0][0]
        target = self.overlap * estimated / measured if measured > 0 else estimated
        for _ in range(6):
            tail = next((t for est, t in sized[1:] if est <= target), None)
            if tail is None:
                return []
            begin = tail[0].start
            overlap, total = self.counter.count([text[begin:end], text[begin : first.end]])
            if overlap <= self.overlap and total <= self.max:
                return tail
            target *= 0.6
        return []

    def _fit(
        self, atoms: list[_Unit], prefix: list[float], i: int, tail: list[_Unit]
    ) -> tuple[int, int, int, list[_Unit]] | None:
        """Largest ``j >= i`` whose chunk (``tail`` overlap, then atoms ``i..j``) fits the budget.

        Returns (start offset, j, tokens, tail) or ``None`` when the overlap is over its budget
        or leaves no room for atom ``i``. Guesses come from the unit estimates, scaled by the
        last measurement, then interpolated between measured bounds, then bisected; the
        answer is always measured.
        """
        text, n = self.text, len(atoms)
        start = tail[0].start if tail else atoms[i].start
        shift = sum(u.tokens for u in tail) - prefix[i]  # estimate(j) = prefix[j + 1] + shift

        def guess_at(estimate: float, lo: int, hi: int) -> int:
            j = bisect_right(prefix, estimate - shift, lo + 1, hi + 1) - 2
            return min(max(j, lo + 1), hi - 1)

        lo, hi = i - 1, n  # atoms up to lo are known to fit, up to hi known not to (n: past the end)
        hi_tokens = 0
        guess = guess_at(self.max, lo, hi)
        if tail:
            lo_tokens, tokens = self.counter.count([text[start : atoms[i - 1].end], text[start : atoms[guess].end]])
            if lo_tokens > self.overlap:
                return None
        else:
            lo_tokens, tokens = 0, self.counter.count([text[start : atoms[guess].end]])[0]
        for step in itertools.count(1):
            if tokens <= self.max:
                lo, lo_tokens = guess, tokens
            else:
                hi, hi_tokens = guess, tokens
            if hi == lo + 1 or (lo >= i and self.max - lo_tokens <= self.max // 32):
                break  # done, or close enough to the budget
            at_lo = prefix[lo + 1] + shift
            if hi == n:  # not bracketed yet: extrapolate with the measured/estimated ratio
                estimated = prefix[guess + 1] + shift
                ratio = tokens / estimated if estimated > 0 and tokens > 0 else 1.0
                if lo_tokens + ratio * atoms[lo + 1].tokens > self.max:
                    break  # the next atom is estimated not to fit: trust the estimate
                guess = guess_at(at_lo + (self.max - lo_tokens) / ratio, lo, hi)
            elif step < 4:  # bracketed: interpolate between the measured bounds
                span = prefix[hi + 1] + shift - at_lo
                slope = (hi_tokens - lo_tokens) / span if span > 0 else 0.0
                if slope <= 0:
                    guess = (lo + hi) // 2
                else:
                    guess = guess_at(at_lo + (self.max - lo_tokens) / slope, lo, hi)
            else:
                guess = (lo + hi) // 2
            tokens = self.counter.count([text[start : atoms[guess].end]])[0]
        if lo < i:
            return None
        return start, lo, lo_tokens, tail


def _prefix_sums(units: list[_Unit]) -> list[float]:
    """``sums[k]``: the estimated tokens of ``units[:k]``."""
    sums = [0.0]
    for u in units:
        sums.append(sums[-1] + u.tokens)
    return sums


def _weight(text: str, start: int, end: int) -> float:
    """Rough relative token weight: a wide (CJK) character counts like four narrow ones."""
    wide = len(_WIDE_CHARS.findall(text, start, end))
    return (end - start - wide) / 4 + wide


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``(start, end)`` without surrounding whitespace, ``None`` when nothing is left."""
    seg = text[start:end]
    stripped = seg.strip()
    if not stripped:
        return None
    left = len(seg) - len(seg.lstrip())
    return start + left, start + left + len(stripped)


def _cut(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Trimmed, non-empty pieces of ``text[start:end]`` cut after each match of ``pattern``."""
    spans: list[tuple[int, int]] = []
    prev = start
    for cut in [*(m.end() for m in pattern.finditer(text, start, end)), end]:
        span = _trim(text, prev, cut)
        if span is not None:
            spans.append(span)
        prev = cut
    return spans


def _markdown_headings(lines: list[str], in_fence: list[bool]) -> list[_Heading]:
    """ATX and setext headings outside fenced code and front matter; marks fenced lines."""
    headings: list[_Heading] = []
    skip = 0
    if lines and lines[0].strip() in ("---", "+++"):
        mark = lines[0].strip()
        for k in range(1, len(lines)):
            if lines[k].strip() in (mark, "..."):
                skip = k + 1
                break
    fence: tuple[str, int] | None = None
    paragraph = False  # the previous line can carry a setext underline
    for k in range(skip, len(lines)):
        line = lines[k]
        if fence is not None:
            in_fence[k] = True
            m = _MD_FENCE.match(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= fence[1] and not m.group(2).strip():
                fence = None
            continue
        m = _MD_FENCE.match(line)
        if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            fence = (m.group(1)[0], len(m.group(1)))
            in_fence[k] = True
            paragraph = False
            continue
        m = _MD_ATX.match(line)
        if m:
            title = _MD_ATX_CLOSE.sub("", m.group(2) or "").strip()
            headings.append(_Heading(k, len(m.group(1)), title))
            paragraph = False
            continue
        m = _MD_SETEXT.match(line)
        if m and paragraph:  # the title is the line above (a multi-line paragraph keeps the rest)
            headings.append(_Heading(k - 1, 1 if m.group(1)[0] == "=" else 2, lines[k - 1].strip()))
            paragraph = False
            continue
        paragraph = bool(line.strip()) and not _MD_NOT_PARAGRAPH.match(line)
    return headings


def _rst_headings(lines: list[str]) -> list[_Heading]:
    """Underlined (optionally overlined) section titles; levels by order of first appearance."""
    headings: list[_Heading] = []
    styles: list[tuple[str, bool]] = []
    k = after_title = 0
    n = len(lines)
    while k < n:
        found: tuple[int, str, str, bool, int] | None = None  # first line, title, char, overline, next
        over = _RST_ADORNMENT.match(lines[k])
        if over and k + 2 < n:
            title = lines[k + 1].strip()
            under = _RST_ADORNMENT.match(lines[k + 2])
            if (title and under and under.group(1) == over.group(1) and not _RST_ADORNMENT.match(lines[k + 1])
                    and len(lines[k + 2].rstrip()) >= len(title)):
                found = (k, title, over.group(1), True, k + 3)
        if found is None and k + 1 < n and lines[k].strip() and not lines[k][0].isspace():
            under = _RST_ADORNMENT.match(lines[k + 1])
            if (under and not over and (k == after_title or not lines[k - 1].strip())
                    and len(lines[k + 1].rstrip()) >= len(lines[k].rstrip())):
                found = (k, lines[k].strip(), under.group(1), False, k + 2)
        if found is None:
            k += 1
            continue
        first, title, char, overline, k = found
        after_title = k
        style = (char, overline)
        if style not in styles:
            styles.append(style)
        headings.append(_Heading(first, styles.index(style) + 1, title))
    return headings
