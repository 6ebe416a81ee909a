"""Reranker windowing: a long chunk is read through its best-matching window of bounded tokens."""

from __future__ import annotations

import re
from pathlib import Path

from ragd.config import SearchConfig
from ragd.models.flag import FlagCrossEncoder
from ragd.window import best_window, query_terms


def words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


FILLER = " ".join(f"filler{i} words about nothing" for i in range(60))
TEXT = FILLER + " The placenta expresses DC-SIGNR and transmission of HIV-1 to the child drops. " + FILLER


def test_short_text_is_read_whole() -> None:
    assert best_window("anything", "a short text", 10, words) == (0, len("a short text"))


def test_window_holds_the_query_terms_within_the_bound() -> None:
    start, end = best_window("What reduces HIV-1 transmission to children?", TEXT, 40, words)
    window = TEXT[start:end]
    assert "transmission of HIV-1" in window
    assert len(words(window)) <= 40
    assert query_terms("What reduces the transmission?") == {"reduce", "transm"}


def test_the_window_is_counted_in_the_rerankers_tokens(tiny_models: dict[str, Path]) -> None:
    rr = FlagCrossEncoder(tiny_models["reranker"], "tiny", precision="fp32")
    start, end = best_window("HIV-1 transmission", TEXT, 64, rr.token_offsets)
    window = TEXT[start:end]
    assert "transmission of HIV-1" in window and len(rr.token_offsets(window)) <= 64
    assert len(rr.token_offsets(TEXT)) > 64
    assert SearchConfig().rerank_min_tokens <= SearchConfig().rerank_max_tokens
