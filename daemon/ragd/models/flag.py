"""The torch backend: FlagEmbedding's own modules, the reference implementation for BGE-M3,
dense models and the bge-reranker cross-encoder, and the GPU path. torch, transformers and
FlagEmbedding are imported here, when a model loads, and nowhere else (the OpenVINO backend
loads them through ``load_flag_embedder`` / ``load_flag_reranker`` only to convert a model).

On the CPU the models run in ``precision`` fp32, bf16 autocast or torch dynamic int8
(``cpu.resolve_precision``); on a GPU FlagEmbedding's fp16/bf16 switches apply.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragd.errors import ModelLoadError
from ragd.models.batching import TORCH, Batch
from ragd.models.cpu import pick_device
from ragd.models.encoder import EmbedderBase, RerankerBase
from ragd.models.tokens import Tokens, load_tokens


def _quiet_imports() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # FlagEmbedding's own per-call bars
    for name in ("transformers", "FlagEmbedding", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # e.g. "sequence length is longer than..." while counting tokens


def _half_flags(precision: str, device: str) -> dict[str, bool]:
    """FlagEmbedding's fp16/bf16 switches: on a GPU only (on the CPU the weights stay fp32 and
    ragd's loop applies bf16 or int8)."""
    gpu = device.startswith("cuda")
    return {"use_fp16": gpu and precision == "fp16", "use_bf16": gpu and precision == "bf16"}


def flag_tokens(folder: Path, model: Any) -> Tokens:
    """The folder's tokenizer (``load_tokens``), from FlagEmbedding's where the folder has no
    ``tokenizer.json``."""
    return load_tokens(folder, getattr(model.tokenizer, "backend_tokenizer", None))


def load_flag_embedder(folder: Path, device: str, precision: str, *, m3: bool, pooling: str) -> tuple[Any, Any]:
    """FlagEmbedding's ``BGEM3FlagModel`` (``m3``) or ``FlagModel`` with ``pooling``, on
    ``device``, and its transformer (M3's heads are on the model, not the transformer)."""
    _quiet_imports()
    flags = _half_flags(precision, device)
    try:
        if m3:
            from FlagEmbedding import BGEM3FlagModel

            flag: Any = BGEM3FlagModel(str(folder), devices=device, normalize_embeddings=True, **flags)
        else:
            from FlagEmbedding import FlagModel

            flag = FlagModel(str(folder), devices=device, pooling_method=pooling, normalize_embeddings=True, **flags)
    except Exception as exc:
        raise ModelLoadError(f"cannot load embedder from {folder}: {exc}") from exc
    model = flag.model
    if device == "cpu":
        model.float()
    model.to(device)
    model.eval()
    return flag, (model.model if m3 else model)


def load_flag_reranker(folder: Path, device: str, precision: str) -> Any:
    """FlagEmbedding's ``FlagReranker`` on ``device``; off a GPU its model in fp32, ready for
    ragd's own loop."""
    _quiet_imports()
    flags = _half_flags(precision, device)
    try:
        from FlagEmbedding import FlagReranker

        flag = FlagReranker(str(folder), devices=device, **flags)
    except Exception as exc:
        raise ModelLoadError(f"cannot load reranker from {folder}: {exc}") from exc
    if not device.startswith("cuda"):
        flag.model.float().to(device).eval()
    return flag


def quantize_int8(module: Any) -> None:
    """Replace ``module``'s Linear layers by dynamically quantised int8 ones, in place."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice for quantised tensors
        # Per-channel weight scales: closer to fp32 than per tensor (docs/performance.md).
        torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def autocast(mode: str, device: str) -> Any:
    """bf16 autocast on the CPU for ``mode == "bf16"``, else a no-op context."""
    import torch

    if mode == "bf16" and not device.startswith("cuda"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _torch_batches(padded: Sequence[Batch], device: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position, model inputs) of each padded batch, as tensors on ``device``."""
    import torch

    for n, (ids, mask) in enumerate(padded):
        yield n, {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}


class FlagEmbedder(EmbedderBase):
    """BGE-M3 or a dense encoder through FlagEmbedding's modules, heads included (the
    reference: tests check its outputs equal FlagEmbedding's ``encode``)."""

    backend = "torch"
    batching = TORCH

    def __init__(
        self,
        folder: Path,
        model_id: str,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 16,
        multi_vector: bool = False,
    ) -> None:
        super().__init__(folder, model_id, precision, pick_device(device), batch_size, multi_vector)
        self._model, self._encoder = load_flag_embedder(folder, self.device, self.precision, m3=self.m3,
                                                        pooling=self.pooling)
        self._use_tokens(flag_tokens(folder, self._model), folder)
        if self.precision == "int8":
            quantize_int8(self._encoder)  # M3's small heads stay fp32
        self.dim = self._probe_dim()

    def _run(self, padded: Sequence[Batch], foreground: bool) -> Iterator[tuple[int, Any]]:
        import torch

        for n, enc in _torch_batches(padded, self.device):
            with torch.inference_mode(), autocast(self.precision, self.device):
                hidden = self._encoder(**enc, return_dict=True).last_hidden_state
            yield n, hidden

    def _heads(self, hidden: Any, ids: np.ndarray, mask_np: np.ndarray) -> tuple[
            np.ndarray, np.ndarray | None, np.ndarray | None]:
        import torch

        model = self._model.model
        mask = torch.from_numpy(mask_np).to(self.device)
        with torch.inference_mode(), autocast(self.precision, self.device):
            weights = colbert = None
            if self.m3:
                dense = model._dense_embedding(hidden, mask)
                sparse_vecs = model._sparse_embedding(hidden, torch.from_numpy(ids).to(self.device),
                                                      return_embedding=False)
                weights = sparse_vecs.squeeze(-1).float().cpu().numpy()
                if self.multi_vector:
                    colbert = torch.nn.functional.normalize(
                        model._colbert_embedding(hidden, mask), dim=-1).float().cpu().numpy()
            else:
                dense = self._model.pooling(hidden, mask)
            dense = torch.nn.functional.normalize(dense.float(), dim=-1).cpu().numpy()
        return dense, weights, colbert


class FlagCrossEncoder(RerankerBase):
    """A bge-reranker cross-encoder through FlagEmbedding's ``FlagReranker``: on a GPU its
    ``compute_score`` (the reference); on the CPU ragd's loop over the same modules, in fp32,
    bf16 autocast or with int8 encoder weights (tests check it equals ``compute_score``)."""

    backend = "torch"
    batching = TORCH

    def __init__(
        self,
        folder: Path,
        model_id: str,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 16,
    ) -> None:
        super().__init__(model_id, precision, pick_device(device), batch_size)
        self.own_loop = not self.device.startswith("cuda")
        self._model = load_flag_reranker(folder, self.device, self.precision)
        self._use_tokens(flag_tokens(folder, self._model), folder)
        if self.own_loop and self.precision == "int8":
            quantize_int8(self._model.model.base_model)  # the encoder; the classification head stays fp32

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages or self.own_loop:
            return super().score(query, passages)
        pairs = [(query, p) for p in passages]
        scores = self._model.compute_score(
            pairs, batch_size=min(self.batch_size, len(pairs)), max_length=self.max_length, normalize=True
        )
        if isinstance(scores, float):
            scores = [scores]
        return [float(s) for s in scores]

    def _run(self, padded: Sequence[Batch], foreground: bool) -> Iterator[tuple[int, Any]]:
        import torch

        for n, enc in _torch_batches(padded, self.device):
            with torch.inference_mode(), autocast(self.precision, self.device):
                logits = self._model.model(**enc, return_dict=True).logits.float().cpu().numpy()
            yield n, logits
