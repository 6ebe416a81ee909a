"""FlagEmbedding backends: the reference implementation for BGE-M3, dense models and the
bge-reranker cross-encoder. Heavy imports happen here and nowhere else."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragd.errors import ModelLoadError, UsageError
from ragd.models.base import Embeddings, FloatArray, SparseWeights

log = logging.getLogger(__name__)


def _quiet_imports() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # FlagEmbedding's own per-call bars
    for name in ("transformers", "FlagEmbedding", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # e.g. "sequence length is longer than..." while counting tokens


def pick_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def precision_flags(precision: str, device: str) -> tuple[dict[str, bool], list[str]]:
    """FlagEmbedding's fp16/bf16 switches for a precision setting, and notes when unmet."""
    notes: list[str] = []
    if precision == "auto":
        precision = "fp16" if device.startswith("cuda") else "fp32"
    if precision == "int8":
        notes.append("precision int8 is not available on the FlagEmbedding path; using fp32")
        precision = "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        notes.append("precision fp16 needs a GPU; using fp32 on the CPU")
        precision = "fp32"
    return {"use_fp16": precision == "fp16", "use_bf16": precision == "bf16"}, notes


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


def is_m3_folder(folder: Path) -> bool:
    return (folder / "colbert_linear.pt").is_file() and (folder / "sparse_linear.pt").is_file()


class FlagEmbedder:
    """BGE-M3 (dense + lexical weights, optional multi-vector) or a dense-only encoder."""

    def __init__(
        self,
        folder: Path,
        model_id: str,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 16,
        multi_vector: bool = False,
    ) -> None:
        _quiet_imports()
        self.model_id = model_id
        self.device = pick_device(device)
        flags, self.notes = precision_flags(precision, self.device)
        self.batch_size = batch_size
        self.m3 = is_m3_folder(folder)
        self.multi_vector = multi_vector and self.m3
        self.has_sparse = self.m3
        try:
            if self.m3:
                from FlagEmbedding import BGEM3FlagModel

                self._model: Any = BGEM3FlagModel(
                    str(folder), devices=self.device, normalize_embeddings=True, **flags
                )
            else:
                from FlagEmbedding import FlagModel

                self._model = FlagModel(
                    str(folder),
                    devices=self.device,
                    pooling_method=declared_pooling(folder),
                    normalize_embeddings=True,
                    **flags,
                )
        except Exception as exc:
            raise ModelLoadError(f"cannot load embedder from {folder}: {exc}") from exc
        self.tokenizer = self._model.tokenizer
        model = self._model.model
        if self.device == "cpu":
            model.float()
        model.to(self.device)
        model.eval()
        self._unused = self._unused_token_ids()
        self.input_limit = declared_max_length(folder, self.tokenizer)
        special = len(self.tokenizer("", add_special_tokens=True)["input_ids"])
        self.max_tokens = self.input_limit - special
        self.dim = int(self._encode(["dimension probe"], self.input_limit).dense.shape[1])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def _unused_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for name in ("cls_token", "eos_token", "pad_token", "unk_token"):
            token = self.tokenizer.special_tokens_map.get(name)
            if token is not None:
                ids.add(int(self.tokenizer.convert_tokens_to_ids(token)))
        return ids

    def _encode(self, texts: list[str], max_length: int) -> Embeddings:
        """Encode in length-sorted batches of ``batch_size`` with FlagEmbedding's modules.

        Same modules and post-processing as FlagEmbedding's ``encode`` (pooling, L2
        normalisation, lexical weights = max ReLU weight per token id without special tokens,
        ColBERT vectors without CLS), but each batch is computed once (``encode`` runs its
        first batch twice to probe the batch size) and texts are never truncated silently.
        """
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        dense_out: list[FloatArray | None] = [None] * len(texts)
        sparse_out: list[SparseWeights] = [{} for _ in texts]
        colbert_out: list[FloatArray | None] = [None] * len(texts)
        model = self._model.model
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                if self.m3:
                    out = model(
                        enc, return_dense=True, return_sparse=True, return_colbert_vecs=self.multi_vector
                    )
                    dense = out["dense_vecs"]
                else:
                    hidden = model(**enc, return_dict=True).last_hidden_state
                    dense = self._model.pooling(hidden, enc["attention_mask"])
                dense = torch.nn.functional.normalize(dense.float(), dim=-1).cpu().numpy()
                for row, i in enumerate(idx):
                    dense_out[i] = dense[row]
                if self.m3:
                    weights = out["sparse_vecs"].squeeze(-1).float().cpu().numpy()
                    input_ids = enc["input_ids"].cpu().numpy()
                    for row, i in enumerate(idx):
                        lex: SparseWeights = {}
                        for tok, w in zip(input_ids[row].tolist(), weights[row].tolist(), strict=True):
                            if w > 0 and tok not in self._unused and w > lex.get(tok, 0.0):
                                lex[tok] = float(w)
                        sparse_out[i] = lex
                if self.multi_vector:
                    vecs = out["colbert_vecs"].float().cpu().numpy()
                    lengths = enc["attention_mask"].sum(dim=1).cpu().numpy()
                    for row, i in enumerate(idx):
                        colbert_out[i] = vecs[row, : int(lengths[row]) - 1]
        dense_matrix = np.stack([d for d in dense_out if d is not None]).astype(np.float32)
        return Embeddings(
            dense=dense_matrix,
            sparse=sparse_out if self.m3 else None,
            colbert=[c for c in colbert_out if c is not None] if self.multi_vector else None,
        )

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        if not texts:
            return Embeddings(dense=np.zeros((0, self.dim), dtype=np.float32))
        return self._encode(list(texts), self.input_limit)

    def embed_query(self, text: str) -> Embeddings:
        n = self.count_tokens([text])[0]
        if n > self.max_tokens:
            raise UsageError(f"query is too long: {n} tokens, the embedder takes at most {self.max_tokens}")
        return self._encode([text], self.input_limit)


class FlagCrossEncoder:
    """bge-reranker style cross-encoder through FlagEmbedding's FlagReranker."""

    def __init__(
        self, folder: Path, model_id: str, device: str = "auto", precision: str = "auto", batch_size: int = 16
    ) -> None:
        _quiet_imports()
        self.model_id = model_id
        self.device = pick_device(device)
        flags, self.notes = precision_flags(precision, self.device)
        self.batch_size = batch_size
        try:
            from FlagEmbedding import FlagReranker

            self._model: Any = FlagReranker(
                str(folder), devices=self.device, use_fp16=flags["use_fp16"], use_bf16=flags["use_bf16"]
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load reranker from {folder}: {exc}") from exc
        self.max_length = min(512, declared_max_length(folder, self._model.tokenizer))

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        pairs = [(query, p) for p in passages]
        scores = self._model.compute_score(
            pairs, batch_size=min(self.batch_size, len(pairs)), max_length=self.max_length, normalize=True
        )
        if isinstance(scores, float):
            scores = [scores]
        return [float(s) for s in scores]
