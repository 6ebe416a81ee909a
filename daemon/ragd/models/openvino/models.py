"""The OpenVINO embedder and reranker: the converted model when the cache holds a current
one, else FlagEmbedding's modules loaded in torch once to convert it (``convert``) and
dropped. Once converted the models run without torch, transformers or FlagEmbedding in the
process: the tokenizer comes from ``tokenizers`` alone and BGE-M3's heads and pooling are
applied with numpy (``m3``)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragd.models.batching import ONNX, OPENVINO, OPENVINO_INT8_RERANK, Batch, Batching
from ragd.models.cpu import DYNAMIC
from ragd.models.encoder import EmbedderBase, RerankerBase
from ragd.models.m3 import heads_numpy, load_m3_heads, m3_heads, save_m3_heads
from ragd.models.openvino.cache import IRLocation, location_for
from ragd.models.openvino.calibration import embedder_samples, reranker_samples
from ragd.models.openvino.convert import Progress, convert_once
from ragd.models.openvino.runner import Runner
from ragd.models.openvino.trace import Held
from ragd.models.tokens import load_tokens

DEVICE = "cpu"


class OpenVINOEmbedder(EmbedderBase):
    """BGE-M3 or a dense encoder: the converted transformer's hidden states, pooled (and M3's
    heads applied) with numpy. Searches' inputs go before indexing batches (``Scheduler``)."""

    backend = "openvino"
    batching = OPENVINO
    schedules_itself = True

    def __init__(
        self,
        folder: Path,
        model_id: str,
        precision: str = "auto",
        batch_size: int = 16,
        multi_vector: bool = False,
        cache_dir: Path | None = None,
        calibration: Sequence[Path] = (),
        progress: Progress | None = None,
        force_convert: bool = False,
    ) -> None:
        super().__init__(folder, model_id, precision, DEVICE, batch_size, multi_vector)
        location = location_for("embedder", folder, model_id, self.precision, cache_dir)
        converted = not force_convert and location.is_current()
        self._m3_heads = load_m3_heads(location.folder) if converted and self.m3 else None
        if converted and (self._m3_heads is not None or not self.m3):
            self._use_tokens(load_tokens(folder), folder)
        else:
            self._convert(folder, location, calibration, progress, force_convert)
        self.runner = Runner(location, self.precision)
        self.parallel = self.runner.streams
        self.dim = self._probe_dim()

    def _convert(self, folder: Path, location: IRLocation, calibration: Sequence[Path], progress: Progress | None,
                 force: bool) -> None:
        """Load the model through FlagEmbedding, convert it (when needed) and keep M3's heads
        (saved next to the converted model, or used from memory where the cache cannot take
        them); the torch modules are then dropped."""
        from ragd.models.flag import flag_tokens, load_flag_embedder

        flag, encoder = load_flag_embedder(folder, DEVICE, "fp32", m3=self.m3, pooling=self.pooling)
        self._use_tokens(flag_tokens(folder, flag), folder)
        if self.m3:
            self._m3_heads = {k: v.copy() for k, v in m3_heads(flag.model).items()}
        held = Held(encoder)  # the conversion's alone, so it can drop the model when done with it
        del flag, encoder
        if force or not location.is_current():
            convert_once(held, location, lambda: embedder_samples(self.tokenizer, self.input_limit, calibration),
                         progress)
        if self._m3_heads is not None:
            try:
                save_m3_heads(self._m3_heads, location.folder)
            except OSError as exc:  # e.g. a read-only cache: FlagEmbedding loads again next time
                self.notes.append(f"cannot save BGE-M3's heads in {location.folder} ({exc}); "
                                  "the next start loads the model through FlagEmbedding again")
        del held
        gc.collect()

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """Keep indexing batches out of the process's ``Scheduler`` while inside."""
        return self.runner.scheduler.hold()

    def text_batching(self) -> Batching:
        """Without padding to a shape step where ONNX Runtime runs the model."""
        return ONNX if self.precision == DYNAMIC else OPENVINO

    def _run(self, padded: Sequence[Batch], foreground: bool) -> Iterator[tuple[int, Any]]:
        return self.runner.map(padded, foreground)

    def _heads(self, hidden: Any, ids: np.ndarray, mask: np.ndarray) -> tuple[
            np.ndarray, np.ndarray | None, np.ndarray | None]:
        return heads_numpy(hidden, mask, self.pooling, self._m3_heads if self.m3 else None, self.multi_vector)


class OpenVINOCrossEncoder(RerankerBase):
    """A bge-reranker cross-encoder converted whole (logits out). Searches' pairs go before
    indexing batches (``Scheduler``)."""

    backend = "openvino"
    batching = OPENVINO
    schedules_itself = True

    def __init__(
        self,
        folder: Path,
        model_id: str,
        precision: str = "auto",
        batch_size: int = 16,
        cache_dir: Path | None = None,
        calibration: Sequence[Path] = (),
        progress: Progress | None = None,
        force_convert: bool = False,
    ) -> None:
        super().__init__(model_id, precision, DEVICE, batch_size)
        location = location_for("reranker", folder, model_id, self.precision, cache_dir)
        if not force_convert and location.is_current():
            self._use_tokens(load_tokens(folder), folder)
        else:
            self._convert(folder, location, calibration, progress)
        self.runner = Runner(location, self.precision)
        self.parallel = self.runner.streams

    def _convert(self, folder: Path, location: IRLocation, calibration: Sequence[Path],
                 progress: Progress | None) -> None:
        """Load the model through FlagEmbedding, convert it and drop the torch modules."""
        from ragd.models.flag import flag_tokens, load_flag_reranker

        flag = load_flag_reranker(folder, DEVICE, "fp32")
        self._use_tokens(flag_tokens(folder, flag), folder)
        held = Held(flag.model)
        del flag
        convert_once(held, location, lambda: reranker_samples(self.tokenizer, self.max_length, calibration),
                     progress)
        del held
        gc.collect()

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """Keep indexing batches out of the process's ``Scheduler`` while inside."""
        return self.runner.scheduler.hold()

    def pair_batching(self) -> Batching:
        """Larger batches where the scored row has its own float branch (the int8 recipe)."""
        return OPENVINO_INT8_RERANK if self.runner.branch_layers else OPENVINO

    def _run(self, padded: Sequence[Batch], foreground: bool) -> Iterator[tuple[int, Any]]:
        return self.runner.map(padded, foreground)
