"""``int8-dynamic``: the embedder exported to ONNX and quantised by ONNX Runtime's dynamic int8
(u8 weights per channel, each MatMul's input quantised to u8 as it runs), run by ONNX
Runtime's CPU provider. On CPUs without int8 dot products (AVX2 without VNNI) its integer
kernels are faster than OpenVINO's there at the same accuracy (docs/performance.md, "A CPU
without VNNI"). It shares the converted models' cache, scheduler and ``Runner`` with OpenVINO:
``OnnxSession`` and ``OnnxRequest`` give an ONNX Runtime session the calls ``Runner`` and the
``Scheduler`` make on a compiled OpenVINO model. torch, onnx and onnxruntime are imported
inside the functions that use them."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ragd.errors import ModelLoadError
from ragd.models.openvino.cache import DYNAMIC
from ragd.models.openvino.trace import traceable

MODEL_FILE = "model.onnx"
OPSET = 17
FFN_OUTPUT = r"layer\.(\d+)/output/dense/MatMul"
"""The feed-forward output projection (its input, after GELU, is the one per-tensor u8
quantisation rounds worst); kept float in the embedder's first half of layers, where it costs
the most agreement (docs/performance.md, "A CPU without VNNI")."""
EXTERNAL_DATA_BYTES = 6 << 30
"""An export whose float weights pass this is quantised into external data (an ONNX file holds
at most 2 GB; int8 weights are a quarter of the float ones)."""


def export_dynamic_int8(module: Any, role: str, folder: Path, say: Any) -> dict[str, Any]:
    """Export the embedder's transformer ``module`` (hidden states out) to ONNX, quantise it to
    dynamic int8 into ``folder / MODEL_FILE`` and drop the float export. Returns what
    ``meta.json`` records about it. Embedder only: the reranker's ranking does not survive
    dynamic int8 (``cpu.resolve_precision``)."""
    if role != "embedder":
        raise ModelLoadError(f"precision {DYNAMIC} is for the embedder only, not the {role}")
    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    wrapped = traceable(module, "last_hidden_state")
    ids = torch.tensor([[0, 10, 11, 12, 2], [0, 13, 2, 1, 1]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)
    exported = folder / "float"
    exported.mkdir()
    say(f"exporting the {role} to ONNX")
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    try:
        with torch.inference_mode(), _quiet():
            torch.onnx.export(wrapped, (ids, mask), str(exported / MODEL_FILE), dynamo=False, opset_version=OPSET,
                              input_names=["input_ids", "attention_mask"], output_names=["output"],
                              dynamic_axes={**axes, "output": {0: "batch"}})
        float_bytes = sum(f.stat().st_size for f in exported.iterdir())
        exclude = _float_nodes(exported / MODEL_FILE)
        say(f"quantising the {role} to dynamic int8 (ONNX Runtime)")
        with _quiet():
            quantize_dynamic(exported / MODEL_FILE, folder / MODEL_FILE, weight_type=QuantType.QUInt8,
                             per_channel=True, use_external_data_format=float_bytes > EXTERNAL_DATA_BYTES,
                             nodes_to_exclude=exclude)
    finally:
        shutil.rmtree(exported, ignore_errors=True)
    return {"runtime": "onnxruntime", "onnxruntime": onnxruntime.__version__,
            "weights": "u8 per channel; inputs quantised to u8 per tensor as they run", "float_matmuls": len(exclude)}


def _float_nodes(path: Path) -> list[str]:
    """The MatMuls of the exported model kept out of int8: the feed-forward output projections
    of the first half of the layers (``FFN_OUTPUT``)."""
    import onnx

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type == "MatMul"]
    layers = [int(found.group(1)) for n in names if (found := re.search(r"layer\.(\d+)/", n))]
    half = (max(layers) + 1) // 2 if layers else 0
    return [n for n in names if (found := re.search(FFN_OUTPUT, n)) and int(found.group(1)) < half]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's and the quantiser's warnings and notices are silenced."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs its advice on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


class OnnxRequest:
    """One run at a time on a shared session, with the calls the ``Scheduler`` makes on an
    OpenVINO infer request: ``infer``, ``cancel`` (stops the run in progress; the run raises
    ``RuntimeError``), ``get_compiled_model`` and ``get_output_tensor``."""

    def __init__(self, session: OnnxSession) -> None:
        self._session = session
        self._options: Any = None
        self._lock = threading.Lock()
        self._outputs: list[np.ndarray] = []

    def infer(self, inputs: dict[str, np.ndarray]) -> None:
        import onnxruntime

        options = onnxruntime.RunOptions()
        with self._lock:
            self._options = options
        try:
            self._outputs = self._session.session.run(None, inputs, options)
        except Exception as exc:  # ONNX Runtime's own exception types; the scheduler expects RuntimeError
            raise RuntimeError(str(exc)) from exc
        finally:
            with self._lock:
                self._options = None

    def cancel(self) -> None:
        with self._lock:
            if self._options is not None:
                self._options.terminate = True

    def get_compiled_model(self) -> OnnxSession:
        return self._session

    def get_output_tensor(self, index: int) -> Any:
        return SimpleNamespace(data=self._outputs[index])


class OnnxSession:
    """An ONNX Runtime session on every core this process may use, with the calls ``Runner``
    makes on a compiled OpenVINO model."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = False  # the arena keeps the largest batch's activations (~80 MB for BGE-M3)
        self.session = onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [_Port(i.name) for i in self.session.get_inputs()]

    def create_infer_request(self) -> OnnxRequest:
        return OnnxRequest(self)

    def get_property(self, name: str) -> int:
        if name == "NUM_STREAMS":
            return 1
        raise KeyError(name)


class _Port:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_names(self) -> set[str]:
        return {self.name}
