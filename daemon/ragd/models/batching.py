"""How tokenised inputs are grouped into batches: longest first, within a budget of padded
tokens and ``models.batch_size`` items, each batch padded only to its longest input. Each
backend has its own budget (``TORCH``, ``OPENVINO``; the measurements behind them:
docs/performance.md and docs/architecture.md, "Models")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragd.models.tokens import Tokens

TOKEN_BUDGET = 4096
"""Padded tokens (items x longest input) per forward pass with torch."""
OPENVINO_TOKEN_BUDGET = 512
"""Smaller with OpenVINO: one compiled model serves indexing and searches, so a search waits
for at most one such batch, and OpenVINO runs a single input near full speed."""
OPENVINO_INT8_RERANK_TOKEN_BUDGET = 1024
"""The int8 reranker's batches: its scored row's float branch reads all its weights once per
batch, so two pairs a batch share that read (docs/performance.md, "Batching"). A search's
rerank batches are foreground work and stay at most ``rerank.BATCH_PASSAGES`` passages."""
SHAPE_STEP = 16
"""OpenVINO batches pad to a multiple of this many tokens, so the compiled kernels of a shape
are reused (a new shape costs more on its first run)."""
MAX_PADDING_WASTE = 0.08
"""OpenVINO: a batch takes another input only while padding stays under this fraction."""

Batch = tuple[np.ndarray, np.ndarray]
"""(input ids, attention mask) of one padded batch."""


def budget_batches(
    lengths: Sequence[int], max_items: int, budget: int = TOKEN_BUDGET, max_waste: float | None = None,
    step: int = 1,
) -> list[list[int]]:
    """Indices grouped longest first so that each batch's padded size (items x longest, rounded
    up to ``step``) stays within ``budget`` tokens and ``max_items`` items (a longer input goes
    alone), and, with ``max_waste``, padding is at most that fraction of the batch's tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        longest = -(-(lengths[current[0]] if current else lengths[i]) // step) * step
        padded = (len(current) + 1) * longest
        if current and (padded > budget or len(current) >= max_items
                        or (max_waste is not None and 1 - (real + lengths[i]) / padded > max_waste)):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class Batching:
    """One backend's batching rules (``budget_batches``' arguments)."""

    budget: int
    max_waste: float | None = None
    step: int = 1

    def padded(self, tokens: Tokens, ids: Sequence[Sequence[int]], max_items: int) -> tuple[
            list[list[int]], list[Batch]]:
        """Positions of ``ids`` grouped into batches, and each batch padded (its length rounded
        up to ``step``) as (input ids, attention mask)."""
        batches = budget_batches([len(x) for x in ids], max_items, self.budget, self.max_waste, self.step)
        return batches, [tokens.pad([ids[i] for i in idx], self.step) for idx in batches]


TORCH = Batching(TOKEN_BUDGET)
OPENVINO = Batching(OPENVINO_TOKEN_BUDGET, MAX_PADDING_WASTE, SHAPE_STEP)
ONNX = Batching(OPENVINO_TOKEN_BUDGET, MAX_PADDING_WASTE)
"""ONNX Runtime (``int8-dynamic``) has no compiled shapes to reuse: its batches are not padded
to a step."""
OPENVINO_INT8_RERANK = Batching(OPENVINO_INT8_RERANK_TOKEN_BUDGET, MAX_PADDING_WASTE, SHAPE_STEP)
