"""The small interfaces every embedder and reranker backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
SparseWeights = dict[int, float]


@dataclass
class Embeddings:
    """Embeddings of n texts: dense (n, dim) L2-normalised rows, plus optional M3 outputs."""

    dense: FloatArray
    sparse: list[SparseWeights] | None = None
    colbert: list[FloatArray] | None = None


class Embedder(Protocol):
    """Turns texts into vectors. ``max_tokens`` is the most text tokens one input may hold
    (special tokens excluded); callers must not pass longer texts."""

    model_id: str
    dim: int
    max_tokens: int
    has_sparse: bool

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def embed_documents(self, texts: Sequence[str]) -> Embeddings: ...

    def embed_query(self, text: str) -> Embeddings: ...


class Reranker(Protocol):
    """Scores (query, passage) pairs; higher is more relevant."""

    model_id: str

    def score(self, query: str, passages: Sequence[str]) -> list[float]: ...


@dataclass
class LoadedModels:
    """What ``load_models`` could get, and the reasons anything is less than configured."""

    embedder: Embedder
    reranker: Reranker | None
    degraded: list[str] = field(default_factory=list)
