"""Metric definitions checked against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ragd.errors import UsageError
from ragd.evaluate import load_beir, mrr_at, ndcg_at, recall_at, score_run


def test_ndcg_binary_and_graded() -> None:
    assert ndcg_at(["a", "b"], {"a": 1}) == 1.0
    assert ndcg_at(["x", "a"], {"a": 1}) == pytest.approx(1 / math.log2(3))
    graded = ndcg_at(["b", "a"], {"a": 2, "b": 1})
    ideal = 3 / 1 + 1 / math.log2(3)
    assert graded == pytest.approx((1 + 3 / math.log2(3)) / ideal)
    assert ndcg_at(["x"] * 10 + ["a"], {"a": 1}) == 0.0  # beyond the cut-off


def test_recall_and_mrr() -> None:
    assert recall_at(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}) == pytest.approx(2 / 3)
    assert mrr_at(["x", "y", "a"], {"a": 1}) == pytest.approx(1 / 3)
    assert mrr_at(["x"], {"a": 1}) == 0.0
    scores = score_run({"q1": ["a"]}, {"q1": {"a": 1}, "q2": {"b": 1}})
    assert scores["ndcg@10"] == 0.5 and scores["mrr@10"] == 0.5


def test_load_beir_errors_name_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="corpus"):
        load_beir(tmp_path)
