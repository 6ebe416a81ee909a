"""What the torch and OpenVINO backends share: the limits and pooling a model folder declares,
and the loop both run. Each text is tokenised once, batches group inputs of similar length
(``batching``), each batch is computed once and post-processed; unlike FlagEmbedding's
``encode`` and ``compute_score`` (which compute the first batch twice to probe the batch size
and truncate silently), texts longer than the model takes are never cut silently.

A backend's class says how a batch runs (``_run``) and, for the embedder, how its outputs
become vectors (``_heads``); everything else is here.
"""

from __future__ import annotations

import abc
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ragd.errors import ModelLoadError, UsageError
from ragd.models.base import Embeddings, FloatArray, SparseWeights
from ragd.models.batching import Batch, Batching
from ragd.models.cpu import model_id_for, resolve_precision
from ragd.models.m3 import is_m3_folder
from ragd.models.tokens import Tokens


def declared_pooling(folder: Path) -> str:
    """The pooling a sentence-transformers folder declares (``1_Pooling/config.json``), else CLS."""
    cfg = folder / "1_Pooling" / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        if data.get("pooling_mode_mean_tokens"):
            return "mean"
        if data.get("pooling_mode_lasttoken"):
            return "last_token"
    return "cls"


def declared_max_length(folder: Path, tokenizer: Any) -> int:
    """Largest input length (special tokens included) the model was trained for."""
    limits: list[int] = []
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        value = json.loads(st.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(value, int):
            limits.append(value)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    positions = cfg.get("max_position_embeddings")
    if isinstance(positions, int):
        # RoBERTa-family models reserve padding_idx + 1 positions.
        offset = (cfg.get("pad_token_id", 0) + 1) if cfg.get("model_type") in {"xlm-roberta", "roberta"} else 0
        limits.append(positions - offset)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:
        limits.append(model_max)
    return min(limits) if limits else 512


def sigmoid(logits: Any) -> list[float]:
    """The reranker's score of each logit, written so that no logit overflows exp()."""
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    return [float(v) for v in (0.5 * (1.0 + np.tanh(0.5 * values))).tolist()]


class EmbedderBase(abc.ABC):
    """BGE-M3 (dense + lexical weights, optional multi-vector) or a dense-only encoder with CLS
    or mean pooling: the ``Embedder`` protocol over a backend's ``_run`` and ``_heads``."""

    backend: str
    batching: ClassVar[Batching]
    schedules_itself: bool = False
    tokenizer: Tokens
    dim: int

    def __init__(self, folder: Path, model_id: str, precision: str, device: str, batch_size: int,
                 multi_vector: bool) -> None:
        self.device = device
        self.precision, self.notes = resolve_precision(precision, device, self.backend, "embedder")
        self.model_id = model_id_for(model_id, self.precision, self.backend)
        self.batch_size = batch_size
        self.m3 = is_m3_folder(folder)
        self.multi_vector = multi_vector and self.m3
        self.has_sparse = self.m3
        self.pooling = "cls" if self.m3 else declared_pooling(folder)
        self.parallel = 1

    def text_batching(self) -> Batching:
        """How this embedder groups its texts into batches (its backend's rules by default)."""
        return self.batching

    def _use_tokens(self, tokenizer: Tokens, folder: Path) -> None:
        """Take ``tokenizer`` and the limits ``folder`` declares with it."""
        if self.pooling not in ("cls", "mean"):
            raise ModelLoadError(f"cannot load embedder from {folder}: pooling {self.pooling!r} is not supported "
                                 "(cls and mean are)")
        self.tokenizer = tokenizer
        self._unused = tokenizer.unused_ids
        self.input_limit = declared_max_length(folder, tokenizer)
        self.max_tokens = self.input_limit - tokenizer.num_special()

    def _probe_dim(self) -> int:
        return int(self._encode(["dimension probe"], self.input_limit).dense.shape[1])

    @abc.abstractmethod
    def _run(self, padded: Sequence[Batch], foreground: bool) -> Iterator[tuple[int, Any]]:
        """(position, hidden states) of each padded batch, in any order; ``foreground`` for a
        search's inputs, which go before indexing batches where the backend schedules itself."""

    @abc.abstractmethod
    def _heads(self, hidden: Any, ids: np.ndarray, mask: np.ndarray) -> tuple[
            np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Dense vectors, token weights (M3) and ColBERT vectors (M3 with ``multi_vector``)."""

    def hold(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.tokenizer.ids(texts, special=False)]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each of the embedder's tokens in ``text`` (no special tokens)."""
        return self.tokenizer.offsets(text)

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        if not texts:
            return Embeddings(dense=np.zeros((0, self.dim), dtype=np.float32))
        return self._encode(list(texts), self.input_limit, foreground=False)

    def embed_query(self, text: str) -> Embeddings:
        n = self.count_tokens([text])[0]
        if n > self.max_tokens:
            raise UsageError(f"query is too long: {n} tokens, the embedder takes at most {self.max_tokens}")
        return self._encode([text], self.input_limit)

    def embed_queries(self, texts: Sequence[str]) -> Embeddings:
        """Several query inputs at a search's priority (a long query's windows), each cut to
        the input limit."""
        return self._encode(list(texts), self.input_limit)

    def _encode(self, texts: list[str], max_length: int, foreground: bool = True) -> Embeddings:
        """FlagEmbedding's outputs (pooling, L2 normalisation, lexical weights = max ReLU weight
        per token id without special tokens, ColBERT vectors without CLS), batch by batch."""
        all_ids = self.tokenizer.ids(texts, max_length=max_length)
        dense_out: list[FloatArray | None] = [None] * len(texts)
        sparse_out: list[SparseWeights] = [{} for _ in texts]
        colbert_out: list[FloatArray | None] = [None] * len(texts)
        batches, padded = self.text_batching().padded(self.tokenizer, all_ids, self.batch_size)
        for n, hidden in self._run(padded, foreground):
            dense, weights, colbert = self._heads(hidden, *padded[n])
            for row, i in enumerate(batches[n]):
                dense_out[i] = dense[row]
                if weights is not None:
                    lex: SparseWeights = {}
                    for tok, w in zip(all_ids[i], weights[row].tolist(), strict=False):
                        if w > 0 and tok not in self._unused and w > lex.get(tok, 0.0):
                            lex[tok] = float(w)
                    sparse_out[i] = lex
                if colbert is not None:
                    colbert_out[i] = colbert[row, : len(all_ids[i]) - 1]
        dense_matrix = np.stack([d for d in dense_out if d is not None]).astype(np.float32)
        return Embeddings(
            dense=dense_matrix,
            sparse=sparse_out if self.m3 else None,
            colbert=[c for c in colbert_out if c is not None] if self.multi_vector else None,
        )


class RerankerBase(abc.ABC):
    """A bge-reranker style cross-encoder: the ``Reranker`` protocol over a backend's ``_run``.
    Inputs are built as FlagReranker's ``compute_score`` builds them (``<s> query </s></s>
    passage </s>``, the query cut to 3/4 of ``max_length`` tokens, the passage to what is
    left) and the score is the sigmoid of the logit."""

    backend: str
    batching: ClassVar[Batching]
    schedules_itself: bool = False
    tokenizer: Tokens

    def __init__(self, model_id: str, precision: str, device: str, batch_size: int) -> None:
        self.model_id = model_id
        self.device = device
        self.precision, self.notes = resolve_precision(precision, device, self.backend, "reranker")
        self.batch_size = batch_size
        self.parallel = 1

    def _use_tokens(self, tokenizer: Tokens, folder: Path) -> None:
        """Take ``tokenizer`` and the limits ``folder`` declares with it."""
        self.tokenizer = tokenizer
        self.max_length = min(512, declared_max_length(folder, tokenizer))
        self.query_max_length = self.max_length * 3 // 4

    @abc.abstractmethod
    def _run(self, padded: Sequence[Batch], foreground: bool) -> Iterator[tuple[int, Any]]:
        """(position, logits) of each padded batch, in any order."""

    def pair_batching(self) -> Batching:
        """How this reranker groups its pairs into batches (its backend's rules by default)."""
        return self.batching

    def hold(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def _pair_inputs(self, query: str, passages: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """``<s> query </s></s> passage </s>`` token ids: query cut to 3/4 of ``max_length``,
        passage cut to what is left (FlagReranker's rules)."""
        return self.tokenizer.pairs(query, passages, max_length or self.max_length)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each of the reranker's tokens in ``text`` (no special tokens)."""
        return self.tokenizer.offsets(text)

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        inputs = self._pair_inputs(query, passages)
        out = [0.0] * len(inputs)
        batches, padded = self.pair_batching().padded(self.tokenizer, inputs, self.batch_size)
        for n, logits in self._run(padded, True):  # a search's pairs go before indexing batches
            for i, v in zip(batches[n], sigmoid(logits), strict=True):
                out[i] = v
        return out
