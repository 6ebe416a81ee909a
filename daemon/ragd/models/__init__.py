"""Embedder and reranker backends, chosen from the config by ``load_models``.

The configured embedder is used when it can be found and loaded; otherwise, with
``models.fallback = "minilm"``, the packaged all-MiniLM-L6-v2 takes its place with
reranking off, and every reason is kept in ``LoadedModels.degraded`` so callers can say so.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ragd.errors import ModelLoadError, ModelNotFoundError
from ragd.models.base import Embedder, Embeddings, LoadedModels, Reranker
from ragd.models.resolve import MINILM, ModelLocation, model_fingerprint, resolve_model

if TYPE_CHECKING:
    from ragd.config import ModelsConfig

__all__ = [
    "Embedder",
    "Embeddings",
    "LoadedModels",
    "Reranker",
    "load_embedder",
    "load_models",
    "load_reranker",
    "resolve_model",
]


def load_embedder(location: ModelLocation, cfg: ModelsConfig) -> Embedder:
    from ragd.models.flag import FlagEmbedder

    return FlagEmbedder(
        location.require(),
        model_fingerprint(location),
        device=cfg.device,
        precision=cfg.precision,
        batch_size=cfg.batch_size,
        multi_vector=cfg.multi_vector,
    )


def load_reranker(location: ModelLocation, cfg: ModelsConfig) -> Reranker:
    from ragd.models.flag import FlagCrossEncoder

    return FlagCrossEncoder(
        location.require(), model_fingerprint(location), device=cfg.device, precision=cfg.precision,
        batch_size=cfg.batch_size,
    )


def load_models(cfg: ModelsConfig, *, rerank: bool = True, warn: bool = True) -> LoadedModels:
    """Load the configured models, falling back as configured; raise when nothing usable remains.

    ``rerank=False`` skips loading the reranker (a search with ``--no-rerank`` or indexing).
    With ``warn`` each degradation is also printed on stderr.
    """
    degraded: list[str] = []
    embedder: Embedder | None = None
    reranker_allowed = True
    try:
        embedder = load_embedder(resolve_model(cfg.embedder), cfg)
    except (ModelNotFoundError, ModelLoadError) as exc:
        if cfg.fallback != MINILM or cfg.embedder == MINILM:
            raise
        degraded.append(f"embedder unavailable ({exc}); using the fallback {MINILM} with reranking off")
        embedder = load_embedder(resolve_model(MINILM), cfg)
        reranker_allowed = False
    degraded.extend(getattr(embedder, "notes", []))

    reranker: Reranker | None = None
    if rerank and reranker_allowed and cfg.reranker != "none":
        try:
            reranker = load_reranker(resolve_model(cfg.reranker), cfg)
            degraded.extend(getattr(reranker, "notes", []))
        except (ModelNotFoundError, ModelLoadError) as exc:
            degraded.append(f"reranker unavailable ({exc}); reranking off")
    if warn:
        for reason in degraded:
            print(f"ragd: degraded: {reason}", file=sys.stderr)
    return LoadedModels(embedder=embedder, reranker=reranker, degraded=degraded)
