"""BGE-M3's output heads with numpy: the dense, lexical and ColBERT outputs computed from the
transformer's hidden states with the arithmetic of FlagEmbedding's ``_dense_embedding`` /
``_sparse_embedding`` / ``_colbert_embedding``, so a converted model runs without torch. The
heads' weights are saved next to the converted model (``M3_HEADS``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

M3_HEADS = "m3_heads.npz"


def is_m3_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a BGE-M3 model (its ColBERT and sparse heads beside the encoder)."""
    return (folder / "colbert_linear.pt").is_file() and (folder / "sparse_linear.pt").is_file()


def m3_heads(model: Any) -> dict[str, np.ndarray]:
    """The sparse and ColBERT heads of FlagEmbedding's M3 ``model`` as float32 arrays."""
    arrays = {
        "sparse_weight": model.sparse_linear.weight, "sparse_bias": model.sparse_linear.bias,
        "colbert_weight": model.colbert_linear.weight, "colbert_bias": model.colbert_linear.bias,
    }
    return {k: v.detach().float().cpu().numpy() for k, v in arrays.items()}


def save_m3_heads(heads: dict[str, np.ndarray], folder: Path) -> None:
    """``heads`` next to the converted model, written atomically."""
    tmp = folder / f".{M3_HEADS}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, sparse_weight=heads["sparse_weight"], sparse_bias=heads["sparse_bias"],
                     colbert_weight=heads["colbert_weight"], colbert_bias=heads["colbert_bias"])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / M3_HEADS)
    finally:
        tmp.unlink(missing_ok=True)


def load_m3_heads(folder: Path) -> dict[str, np.ndarray] | None:
    """The heads ``save_m3_heads`` wrote, or None when missing or unreadable."""
    try:
        with np.load(folder / M3_HEADS) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, KeyError):
        return None


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (torch's ``normalize``: norms below 1e-12 count as 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def heads_numpy(
    hidden: np.ndarray, mask: np.ndarray, pooling: str, heads: dict[str, np.ndarray] | None, multi_vector: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Dense vectors (``pooling``: ``cls`` or ``mean``, L2-normalised), and with M3's ``heads``
    the token weights and, with ``multi_vector``, the ColBERT vectors (without CLS)."""
    hidden = hidden.astype(np.float32, copy=False)
    if pooling == "mean":
        m = mask[:, :, None].astype(np.float32)
        dense = (hidden * m).sum(axis=1) / m.sum(axis=1)
    else:
        dense = hidden[:, 0]
    dense = l2_normalize(dense)
    if heads is None:
        return dense, None, None
    weights = np.maximum(hidden @ heads["sparse_weight"].T + heads["sparse_bias"], 0.0)[..., 0]
    colbert = None
    if multi_vector:
        vecs = (hidden[:, 1:] @ heads["colbert_weight"].T + heads["colbert_bias"]) * mask[:, 1:, None]
        colbert = l2_normalize(vecs.astype(np.float32))
    return dense, weights, colbert
