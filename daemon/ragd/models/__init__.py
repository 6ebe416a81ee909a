"""Embedder and reranker backends, chosen from the config by ``load_models``.

The configured embedder is used when it can be found and loaded; otherwise, with
``models.fallback = "minilm"``, the packaged all-MiniLM-L6-v2 takes its place with
reranking off, and every reason is kept in ``LoadedModels.degraded`` so callers can say so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def cache_dir(cfg: ModelsConfig) -> Path:
    """Where converted models are kept: ``models.cache_dir``, else ``$XDG_CACHE_HOME/ragd``."""
    from ragd.models.openvino import default_cache_dir

    return Path(os.path.expanduser(cfg.cache_dir)).absolute() if cfg.cache_dir else default_cache_dir()


def load_embedder(
    location: ModelLocation, cfg: ModelsConfig, calibration: Sequence[Path] = (), **extra: Any
) -> Embedder:
    from ragd.models.flag import FlagEmbedder

    return FlagEmbedder(
        location.require(),
        model_fingerprint(location),
        device=cfg.device,
        precision=cfg.precision,
        batch_size=cfg.batch_size,
        multi_vector=cfg.multi_vector,
        backend=cfg.backend,
        cache_dir=cache_dir(cfg),
        calibration=calibration,
        **extra,
    )


def load_reranker(
    location: ModelLocation, cfg: ModelsConfig, calibration: Sequence[Path] = (), **extra: Any
) -> Reranker:
    from ragd.models.flag import FlagCrossEncoder

    return FlagCrossEncoder(
        location.require(), model_fingerprint(location), device=cfg.device, precision=cfg.precision,
        batch_size=cfg.batch_size, backend=cfg.backend, cache_dir=cache_dir(cfg), calibration=calibration,
        **extra,
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


def convert_models(
    cfg: ModelsConfig, roles: Sequence[str], calibration: Sequence[Path] = (), *, force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Convert (and for int8 quantise) the configured models for the OpenVINO backend now,
    instead of on first use; with ``force`` or ``calibration`` even when a conversion is cached.
    Returns one description per role (model, precision, what its float operations compute in,
    folder, seconds, calibration samples)."""
    import time

    from ragd.errors import UsageError

    out: list[dict[str, Any]] = []
    started = time.time()
    for role in roles:
        setting = cfg.embedder if role == "embedder" else cfg.reranker
        if setting == "none":
            continue
        load = load_embedder if role == "embedder" else load_reranker
        model = load(resolve_model(setting), cfg, calibration, force_convert=force or bool(calibration),
                     progress=progress)
        runner = getattr(model, "_runner", None)
        if runner is None:
            raise UsageError(
                f"{role} {setting}: runs on {getattr(model, 'backend', 'torch')}, not OpenVINO; nothing to convert "
                "(set models.backend = \"openvino\" or \"auto\" on a CPU)"
            )
        meta = runner.location.meta() or {}
        precision = getattr(model, "precision", "")
        note = None
        if calibration and precision != "int8":
            note = (f"--calibration applies to static int8 only; the {role} runs in {precision}"
                    + (" (int8 weights, fp32 arithmetic)" if precision == "w8" else "")
                    + " (set models.precision = \"int8\" to calibrate it)")
        out.append({"role": role, "model": setting, "precision": precision, "note": note,
                    "arithmetic": runner.arithmetic, "folder": str(runner.location.folder),
                    "converted": meta.get("created", 0) >= started,
                    "seconds": meta.get("seconds"),
                    "calibration_samples": meta.get("calibration_samples"), "openvino": meta.get("openvino")})
    return out
