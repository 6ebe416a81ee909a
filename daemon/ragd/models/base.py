"""The small interfaces every embedder and reranker backend implements."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
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


class Scheduled(Protocol):
    """How a model shares the CPU with searches. A model that ``schedules_itself`` (the
    OpenVINO backend's process-wide scheduler) puts searches first on its own, and ``hold``
    keeps indexing batches out while inside; otherwise ``engine.ModelGate`` does both."""

    schedules_itself: bool
    notes: list[str]
    """Why the model runs below its configured setting, for ``LoadedModels.degraded``."""

    def hold(self) -> contextlib.AbstractContextManager[None]: ...


class Embedder(Scheduled, Protocol):
    """Turns texts into vectors. ``max_tokens`` is the most text tokens one input may hold
    (special tokens excluded); callers must not pass longer texts. ``has_sparse`` and
    ``multi_vector`` say whether ``Embeddings.sparse`` and ``Embeddings.colbert`` are filled."""

    model_id: str
    dim: int
    max_tokens: int
    has_sparse: bool
    multi_vector: bool

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def embed_documents(self, texts: Sequence[str]) -> Embeddings: ...

    def embed_query(self, text: str) -> Embeddings: ...

    def embed_queries(self, texts: Sequence[str]) -> Embeddings: ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]: ...


class Reranker(Scheduled, Protocol):
    """Scores (query, passage) pairs; higher is more relevant. ``max_length`` is the most
    tokens one pair may hold (0: no limit known); ``parallel`` how many batches run side by
    side; ``token_offsets`` the character spans of a text's tokens in the reranker's tokenizer."""

    model_id: str
    max_length: int
    parallel: int

    def score(self, query: str, passages: Sequence[str]) -> list[float]: ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]: ...


@dataclass
class LoadedModels:
    """What ``load_models`` could get, and the reasons anything is less than configured."""

    embedder: Embedder
    reranker: Reranker | None
    degraded: list[str] = field(default_factory=list)


class Holds:
    """How many searches keep background work out (``ModelGate.hold``, ``Scheduler.hold``),
    counted under the condition the background work waits on, which each leaving holder
    notifies (after ``on_release``, under the same lock)."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self.count = 0

    @contextlib.contextmanager
    def __call__(self, on_release: Callable[[], None] | None = None) -> Iterator[None]:
        with self._cond:
            self.count += 1
        try:
            yield
        finally:
            with self._cond:
                self.count -= 1
                if on_release is not None:
                    on_release()
                self._cond.notify_all()
