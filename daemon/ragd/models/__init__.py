"""Embedder and reranker backends, chosen from the config by ``load_models``.

``open_embedder`` / ``open_reranker`` are the factory: they resolve ``models.backend``
(``cpu.resolve_backend``) and construct the one class for it, ``flag.FlagEmbedder`` /
``FlagCrossEncoder`` (torch) or ``openvino.models.OpenVINOEmbedder`` / ``OpenVINOCrossEncoder``;
a folder holding ``FAKE_MARKER`` loads the test models of ``fake``. Backends are imported
inside these functions only, so importing this package stays light.

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
from ragd.models.fake import MARKER as FAKE_MARKER
from ragd.models.resolve import MINILM, ModelLocation, model_fingerprint, resolve_model

if TYPE_CHECKING:
    from ragd.config import ModelsConfig
    from ragd.models.encoder import EmbedderBase, RerankerBase


__all__ = [
    "Embedder",
    "Embeddings",
    "LoadedModels",
    "Reranker",
    "load_embedder",
    "load_models",
    "load_reranker",
    "open_embedder",
    "open_reranker",
    "resolve_model",
]


def cache_dir(cfg: ModelsConfig) -> Path:
    """Where converted models are kept: ``models.cache_dir``, else ``$XDG_CACHE_HOME/ragd``."""
    from ragd.models.openvino.cache import default_cache_dir

    return Path(os.path.expanduser(cfg.cache_dir)).absolute() if cfg.cache_dir else default_cache_dir()


def open_embedder(
    folder: Path, model_id: str, *, device: str = "auto", precision: str = "auto", backend: str = "auto",
    batch_size: int = 16, multi_vector: bool = False, cache_dir: Path | None = None, calibration: Sequence[Path] = (),
    progress: Callable[[str], None] | None = None, force_convert: bool = False,
) -> EmbedderBase:
    """The embedder in ``folder``, of the class for the backend ``backend`` resolves to
    (``cpu.resolve_backend``), with the reasons a setting is not met first in its ``notes``.
    ``cache_dir``, ``calibration``, ``progress`` and ``force_convert`` concern OpenVINO's
    conversion only."""
    from ragd.models.cpu import pick_device, resolve_backend

    device = pick_device(device)
    chosen, notes = resolve_backend(backend, device)
    model: EmbedderBase
    if chosen == "openvino":
        from ragd.models.openvino.models import OpenVINOEmbedder

        model = OpenVINOEmbedder(folder, model_id, precision=precision, batch_size=batch_size,
                                 multi_vector=multi_vector, cache_dir=cache_dir, calibration=calibration,
                                 progress=progress, force_convert=force_convert)
    else:
        from ragd.models.flag import FlagEmbedder

        model = FlagEmbedder(folder, model_id, device=device, precision=precision, batch_size=batch_size,
                             multi_vector=multi_vector)
    model.notes[:0] = notes
    return model


def open_reranker(
    folder: Path, model_id: str, *, device: str = "auto", precision: str = "auto", backend: str = "auto",
    batch_size: int = 16, cache_dir: Path | None = None, calibration: Sequence[Path] = (),
    progress: Callable[[str], None] | None = None, force_convert: bool = False,
) -> RerankerBase:
    """The reranker in ``folder``, as ``open_embedder`` opens an embedder."""
    from ragd.models.cpu import pick_device, resolve_backend

    device = pick_device(device)
    chosen, notes = resolve_backend(backend, device)
    model: RerankerBase
    if chosen == "openvino":
        from ragd.models.openvino.models import OpenVINOCrossEncoder

        model = OpenVINOCrossEncoder(folder, model_id, precision=precision, batch_size=batch_size,
                                     cache_dir=cache_dir, calibration=calibration, progress=progress,
                                     force_convert=force_convert)
    else:
        from ragd.models.flag import FlagCrossEncoder

        model = FlagCrossEncoder(folder, model_id, device=device, precision=precision, batch_size=batch_size)
    model.notes[:0] = notes
    return model


def load_embedder(
    location: ModelLocation, cfg: ModelsConfig, calibration: Sequence[Path] = (), *,
    progress: Callable[[str], None] | None = None, force_convert: bool = False,
) -> Embedder:
    """The embedder a setting points to, loaded as ``cfg`` says (``open_embedder``)."""
    folder = location.require()
    if (folder / FAKE_MARKER).is_file():
        from ragd.models.fake import FakeEmbedder

        return FakeEmbedder(folder, model_fingerprint(location), multi_vector=cfg.multi_vector)
    return open_embedder(
        folder, model_fingerprint(location), device=cfg.device, precision=cfg.precision, backend=cfg.backend,
        batch_size=cfg.batch_size, multi_vector=cfg.multi_vector, cache_dir=cache_dir(cfg),
        calibration=calibration, progress=progress, force_convert=force_convert,
    )


def load_reranker(
    location: ModelLocation, cfg: ModelsConfig, calibration: Sequence[Path] = (), *,
    progress: Callable[[str], None] | None = None, force_convert: bool = False,
) -> Reranker:
    """The reranker a setting points to, loaded as ``cfg`` says (``open_reranker``)."""
    folder = location.require()
    if (folder / FAKE_MARKER).is_file():
        from ragd.models.fake import FakeReranker

        return FakeReranker(folder, model_fingerprint(location))
    return open_reranker(
        folder, model_fingerprint(location), device=cfg.device, precision=cfg.reranker_runs_in, backend=cfg.backend,
        batch_size=cfg.batch_size, cache_dir=cache_dir(cfg), calibration=calibration, progress=progress,
        force_convert=force_convert,
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
    degraded.extend(embedder.notes)

    reranker: Reranker | None = None
    if rerank and reranker_allowed and cfg.reranker != "none":
        try:
            reranker = load_reranker(resolve_model(cfg.reranker), cfg)
            degraded.extend(reranker.notes)
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
    from ragd.models.encoder import EmbedderBase, RerankerBase
    from ragd.models.openvino.models import OpenVINOCrossEncoder, OpenVINOEmbedder

    out: list[dict[str, Any]] = []
    started = time.time()
    for role in roles:
        setting = cfg.embedder if role == "embedder" else cfg.reranker
        if setting == "none":
            continue
        load = load_embedder if role == "embedder" else load_reranker
        model = load(resolve_model(setting), cfg, calibration, force_convert=force or bool(calibration),
                     progress=progress)
        if not isinstance(model, (OpenVINOEmbedder, OpenVINOCrossEncoder)):
            backend = model.backend if isinstance(model, (EmbedderBase, RerankerBase)) else type(model).__name__
            raise UsageError(
                f"{role} {setting}: runs on {backend}, not OpenVINO; nothing to convert "
                "(set models.backend = \"openvino\" or \"auto\" on a CPU)"
            )
        runner = model.runner
        meta = runner.location.meta() or {}
        precision = model.precision
        note = None
        if calibration and precision not in ("int8", "int8-dynamic"):
            note = (f"--calibration applies to int8 and int8-dynamic only; the {role} runs in {precision}"
                    + (" (int8 weights, fp32 arithmetic)" if precision == "w8" else "")
                    + f" (set models.{'reranker_' if role == 'reranker' else ''}precision = \"int8\" to calibrate it)")
        out.append({"role": role, "model": setting, "precision": precision, "note": note,
                    "arithmetic": runner.arithmetic, "folder": str(runner.location.folder),
                    "converted": meta.get("created", 0) >= started,
                    "seconds": meta.get("seconds"),
                    "calibration_samples": meta.get("calibration_samples", meta.get("agreement_samples")),
                    "openvino": meta.get("openvino")})
    return out
