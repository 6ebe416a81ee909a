"""One embedding's lexical (sparse) weights as the catalog stores them in ``embeddings.sparse``:
int32 tokens, then float32 weights, little-endian. Imports nothing else of the store."""

from __future__ import annotations

import numpy as np

from ragd.models.base import SparseWeights


def arrays(weights: SparseWeights) -> tuple[np.ndarray, np.ndarray]:
    """One embedding's weights as (int32 tokens, float32 weights)."""
    tokens = np.fromiter(weights.keys(), dtype="<i4", count=len(weights))
    values = np.fromiter(weights.values(), dtype="<f4", count=len(weights))
    return tokens, values


def encode(weights: SparseWeights) -> bytes:
    """One embedding's weights as stored in the catalog: int32 tokens, then float32 weights."""
    tokens, values = arrays(weights)
    return tokens.tobytes() + values.tobytes()


def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``encode``'s blob back as (int32 tokens, float32 weights), views of ``blob``."""
    n = len(blob) // 8
    return np.frombuffer(blob, dtype="<i4", count=n), np.frombuffer(blob, dtype="<f4", count=n, offset=4 * n)
