"""The part of a long chunk the reranker reads: a window of at most ``max_tokens`` of the
reranker's tokens around the sentence that best matches the query.

A cross-encoder's cost grows with its input, and a chunk may be longer than the reranker needs
to judge it. Each sentence is scored by the distinct query terms it holds, a term weighing
more the fewer sentences of the chunk hold it (``log(1 + sentences / sentences holding it)``);
the window puts the best sentence (the earliest on ties) a quarter of the way in, leaving
context on both sides. Words match on their first six letters (a crude stem: "transmission"
matches "transmitted"). On COVID-QA the window holds the whole answer span for 96% of the
question/answer pairs at 352 tokens of 512-token chunks (benchmarks/windowing.py), 92% at 256,
86% at 192, 77% at 128 (the narrowest a deadline shrinks it to by default, see
``rerank.rerank``).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable

Offsets = Callable[[str], list[tuple[int, int]]]

_WORD = re.compile(r"\w+")
_SENTENCE = re.compile(r"(?:[^.!?\n]|[.!?](?![\s.!?]|$))+(?:[.!?]+|\n|$)")
LEAD = 0.25  # share of the room around the best sentence that goes before it
_STOP = frozenset(
    "a an and are as at be by can could did do does for from had has have how i if in into is it its"
    " may might of on or should than that the their there these they this those to was we were what"
    " when where which while who whom why will with would you your not no".split()
)


def _stem(word: str) -> str:
    return word.lower()[:6]


def query_terms(query: str) -> set[str]:
    """The query's content words, stemmed (stopwords and single characters dropped)."""
    return {_stem(w) for w in _WORD.findall(query) if w.lower() not in _STOP and len(w) > 1}


def best_window(query: str, text: str, max_tokens: int, offsets: Offsets) -> tuple[int, int]:
    """Character span ``(start, end)`` of the best window of ``text``; the whole text when it
    has at most ``max_tokens`` tokens. ``offsets`` gives each token's character span."""
    spans = offsets(text)
    if len(spans) <= max_tokens or max_tokens < 1:
        return 0, len(text)
    terms = query_terms(query)
    sentences = [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]
    found = [{_stem(w) for w in _WORD.findall(text[a:b])} & terms for a, b in sentences]
    holding: dict[str, int] = {}
    for f in found:
        for w in f:
            holding[w] = holding.get(w, 0) + 1
    weight = {w: math.log(1 + len(sentences) / n) for w, n in holding.items()}
    own = [sum(weight[w] for w in f) for f in found]
    score = own  # adding a share of the neighbours' scores measured worse on COVID-QA
    token_starts = [a for a, _ in spans]
    first = 0
    if score and max(score) > 0:
        best = max(range(len(score)), key=lambda i: (score[i], -i))
        a, b = sentences[best]
        s_first = max(0, bisect.bisect_right(token_starts, a) - 1)
        s_last = max(s_first, bisect.bisect_left(token_starts, b) - 1)
        room = max(0, max_tokens - (s_last - s_first + 1))
        first = s_first - int(room * LEAD)
        if not room:  # a sentence longer than the window: centre on its query terms
            hits = [m.start() for m in _WORD.finditer(text, a, b) if _stem(m.group()) in terms]
            middle = bisect.bisect_right(token_starts, (hits[0] + hits[-1]) // 2) - 1
            first = min(max(s_first, middle - max_tokens // 2), max(s_first, s_last + 1 - max_tokens))
    first = min(max(0, first), len(spans) - max_tokens)
    return spans[first][0], spans[first + max_tokens - 1][1]
