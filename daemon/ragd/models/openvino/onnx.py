"""``int8-dynamic``: the embedder exported to ONNX (its word embeddings looked up outside, as
``words.WordTable``), its attention fused and its MatMuls quantised by ONNX Runtime's dynamic
int8 (weights per channel, each MatMul's input quantised to u8 as it runs), run by ONNX
Runtime's CPU provider. On CPUs without int8 dot products (AVX2
without VNNI) its integer kernels are faster than OpenVINO's there at the same accuracy
(docs/performance.md, "A CPU without VNNI"). It shares the converted models' cache, scheduler
and ``Runner`` with OpenVINO: ``OnnxSession`` and ``OnnxRequest`` give an ONNX Runtime session
the calls ``Runner`` and the ``Scheduler`` make on a compiled OpenVINO model. torch, onnx and
onnxruntime are imported inside the functions that use them."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from ragd.errors import ModelLoadError
from ragd.models.cpu import cpu_cores, cpu_shows_int8_dot
from ragd.models.openvino.cache import DYNAMIC
from ragd.models.openvino.calibration import Sample
from ragd.models.openvino.trace import Held, traceable
from ragd.models.openvino.words import WordTable

MODEL_FILE = "model.onnx"
OPSET = 17
FFN_OUTPUT = r"layer\.(\d+)/output/dense/MatMul"
"""The feed-forward output projection: its input, after GELU, is the one that per-tensor u8
quantisation rounds worst, so it is what stays float when the model's agreement asks for it."""


class Recipe(NamedTuple):
    """How the export is quantised: the weights' type (``s8`` runs ONNX Runtime's faster u8 x s8
    kernels, whose AVX2 products can saturate; ``u8`` cannot) and the share of layers, the
    first ones, whose ``FFN_OUTPUT`` stays float."""

    weights: str
    float_share: float


RECIPES = (Recipe("s8", 0.0), Recipe("u8", 0.0), Recipe("u8", 0.5), Recipe("u8", 1.0))
"""Tried in turn, fastest first; the first that reaches ``AGREEMENT`` is kept, else the last
(the most accurate)."""
VNNI_RECIPES = (Recipe("s8", 0.0), Recipe("s8", 0.5), Recipe("s8", 1.0))
"""``RECIPES`` where the CPU has int8 dot products (VNNI, AMX): there u8 x s8 products add into
32 bits without saturating, and u8 x u8 ones have no fast kernel (they ran at fp32's speed)."""


def recipes_here() -> tuple[Recipe, ...]:
    """The recipes this CPU tries, in turn."""
    return VNNI_RECIPES if cpu_shows_int8_dot() else RECIPES
AGREEMENT = 0.995
"""Mean cosine of every token's hidden state to the float model's, on calibration text, that a
recipe must reach (docs/performance.md, "The embedder in ONNX Runtime's dynamic int8")."""
CHECK_SAMPLES = 32
"""Calibration samples the agreement is measured on."""
EXTERNAL_DATA_BYTES = 6 << 30
"""An export whose float weights pass this is quantised into external data (an ONNX file holds
at most 2 GB; int8 weights are a quarter of the float ones)."""


def export_dynamic_int8(
    held: Held, role: str, folder: Path, say: Any, samples: Sequence[Sample] = (),
) -> dict[str, Any]:
    """Export the embedder's transformer (``held``'s module; hidden states out) to ONNX and
    release it, fuse its attention, quantise it to dynamic int8 into ``folder / MODEL_FILE``
    and drop the float export. With ``samples`` (calibration inputs) the first of
    ``recipes_here()`` that keeps ``AGREEMENT`` to the float model is chosen; without, the most
    accurate. Returns what ``meta.json`` records about it. Embedder only: the reranker's
    ranking does not survive dynamic int8 (``cpu.resolve_precision``)."""
    if role != "embedder":
        raise ModelLoadError(f"precision {DYNAMIC} is for the embedder only, not the {role}")
    import onnxruntime
    import torch

    module = held.module
    # The word embeddings are looked up outside the model (``WordTable``, int8 per row, as for
    # OpenVINO's int8): the export and the quantiser then hold half of BGE-M3's float weights.
    words = module.get_input_embeddings().weight.detach().float().cpu().numpy()
    table, scales = WordTable.save(words, folder)
    checked = list(samples)[:CHECK_SAMPLES]
    # the float model reads the float rows; the quantised one the int8 rows it runs with
    float_inputs = [_inputs(words[s["input_ids"]], s) for s in checked]
    int8_inputs = [_inputs(WordTable.lookup_in(table, scales, s["input_ids"]), s) for s in checked]
    ids = np.array([[0, 10, 11, 12, 2], [0, 13, 2, 1, 1]], dtype=np.int64)
    example = torch.from_numpy(WordTable.lookup_in(table, scales, ids))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)
    # The export reads ``inputs_embeds``: the table leaves the module before it, with its memory.
    module.set_input_embeddings(torch.nn.Embedding(1, words.shape[1]))
    del words, table, scales
    exported = folder / "float"
    exported.mkdir()
    say(f"exporting the {role} to ONNX")
    try:
        export_hidden(module, example, mask, exported / MODEL_FILE)
        # The float model is in the export now: its memory goes back before the later steps.
        del module
        held.release()
        external = sum(f.stat().st_size for f in exported.iterdir()) > EXTERNAL_DATA_BYTES
        _return_free_memory()  # what the export and the model freed, before the fusion's process
        source, fused = _fuse(exported / MODEL_FILE, say)
        reference = _hidden(exported / MODEL_FILE, float_inputs) if checked else []
        _return_free_memory()  # the float session's
        recipes = recipes_here() if checked else recipes_here()[-1:]
        matmuls = _matmuls(source)
        for n, chosen in enumerate(recipes):
            exclude = _float_nodes(matmuls, chosen.float_share)
            say(f"quantising the {role} to dynamic int8 (ONNX Runtime), "
                f"{chosen.weights} weights, {len(exclude)} feed-forward outputs float")
            _quantise(source, folder / MODEL_FILE, exclude, chosen.weights, external)
            agreement = _agreement(_hidden(folder / MODEL_FILE, int8_inputs), reference) if checked else None
            if agreement is not None:
                say(f"agreement with the float model: {agreement:.4f} (needs {AGREEMENT})")
            if agreement is None or agreement >= AGREEMENT or n == len(recipes) - 1:
                break
    finally:
        shutil.rmtree(exported, ignore_errors=True)
    return {"runtime": "onnxruntime", "onnxruntime": onnxruntime.__version__,
            "weights": f"{chosen.weights} per channel; inputs quantised to u8 per tensor as they run",
            "fused_attention": fused, "float_matmuls": len(exclude),
            "agreement": None if agreement is None else round(agreement, 5), "agreement_samples": len(checked),
            "word_embeddings": "int8 per row, looked up outside the model"}


def export_hidden(module: Any, embeds: Any, mask: Any, path: Path) -> None:
    """``module``'s hidden states, from ``inputs_embeds`` and ``attention_mask`` (the example
    inputs ``embeds`` and ``mask``), exported to ONNX at ``path``; batch and tokens dynamic."""
    import torch

    axes = {"inputs_embeds": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    with torch.inference_mode(), _quiet():
        torch.onnx.export(traceable(module, "last_hidden_state", embeds=True), (embeds, mask), str(path),
                          dynamo=False, opset_version=OPSET, input_names=["inputs_embeds", "attention_mask"],
                          output_names=["output"], dynamic_axes={**axes, "output": {0: "batch"}})


UNFUSED = ("SkipLayerNormFusion", "BiasGeluFusion")
"""ONNX Runtime's fusions left out, by its transformer optimizer (``fuse_here``) and by the
session: its CPU kernels for residual + LayerNorm and bias + GELU ran slower than the separate
operators (a pass ~13% faster without them; docs/performance.md, "Without the fused LayerNorm")."""
FUSED_FILE = "fused.onnx"
FUSE_SECONDS = 900
"""How long the fusion may take (BGE-M3: 8 s) before the export is quantised unfused."""
_FUSE = "import sys; from ragd.models.openvino.onnx import fuse_here; fuse_here(*sys.argv[1:])"


def _fuse(source: Path, say: Any) -> tuple[Path, int]:
    """``source`` with ONNX Runtime's transformer fusions (one ``Attention`` a layer, whose Q, K
    and V the quantiser makes one ``QAttention``; bias + GELU; residual + LayerNorm) beside it,
    and the number of attentions fused. Run in a child process started in the export's folder,
    so the optimizer reads each weight from its file as it needs it instead of holding the
    float model (docs/performance.md). When it fails the export is quantised as it is."""
    say("fusing the attention (ONNX Runtime's transformer optimizer)")
    package = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-c", _FUSE, source.name, FUSED_FILE], cwd=source.parent, env=env,
                              capture_output=True, text=True, check=False, timeout=FUSE_SECONDS)
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess([], 1, "", f"no result in {FUSE_SECONDS} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].isdigit():
        reason = (done.stderr.strip().splitlines() or ["no result"])[-1]
        say(f"attention not fused ({reason}); quantising the export as it is")
        return source, 0
    return source.parent / FUSED_FILE, int(lines[-1])


def _return_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc), so that
    the conversion's later steps do not stack on memory this process no longer uses."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def fuse_here(source: str, target: str) -> None:
    """The child process of ``_fuse``, in the export's folder: the graph is read without its
    weights (an export that holds them inside is first rewritten with them in a data file beside
    it; each is read from its file, relative to this folder, when a fusion needs it),
    fused, written to ``target`` with the new weights in one data file beside it, and the number
    of fused attentions printed."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")  # UNFUSED
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = options.enable_bias_gelu = False
    model = onnx.load(source, load_external_data=False)
    if any(t.HasField("raw_data") for t in model.graph.initializer):
        # An export under 2 GB holds its weights inside the file: moved out into one data file
        # first, so that the optimizer holds the graph alone (BGE-M3's fusion: ~5 GB otherwise).
        onnx.save_model(model, source, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{source}.data", size_threshold=1024)
        del model
        model = onnx.load(source, load_external_data=False)
    with _quiet(), contextlib.redirect_stdout(sys.stderr):
        model = optimize_model(model, model_type="bert", opt_level=0,
                               num_heads=0, hidden_size=0, optimization_options=options)
        model.save_model_to_file(target, use_external_data_format=True, all_tensors_to_one_file=True)
    print(sum(n.op_type == "Attention" for n in model.model.graph.node))


def _quantise(source: Path, target: Path, exclude: list[str], weights: str, external: bool) -> None:
    """``source`` quantised to dynamic int8 with ``weights`` (``s8`` or ``u8``) into ``target``
    (replacing an earlier try)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for old in target.parent.glob(target.name + "*"):
        old.unlink()
    with _quiet():
        # DefaultTensorType: the fused operators' outputs have no types the quantiser can infer
        quantize_dynamic(source, target, weight_type=QuantType.QInt8 if weights == "s8" else QuantType.QUInt8,
                         per_channel=True, use_external_data_format=external, nodes_to_exclude=exclude,
                         extra_options={"DefaultTensorType": 1})


def _inputs(embeds: np.ndarray, sample: Sample) -> dict[str, np.ndarray]:
    """The exported model's inputs for ``sample``, its word embeddings ``embeds``."""
    return {"inputs_embeds": np.asarray(embeds, dtype=np.float32), "attention_mask": sample["attention_mask"]}


def _hidden(path: Path, inputs: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The model's hidden states for each of ``inputs``, on every core."""
    session = OnnxSession(path, cpu_cores()).session
    return [session.run(None, x)[0][0] for x in inputs]


def _agreement(hidden: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Mean cosine of every token's hidden state to the reference's (the dense vector, the
    lexical weights and the multi-vectors are all read from them)."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    return float(np.mean([(unit(h) * unit(r)).sum(-1).mean() for h, r in zip(hidden, reference, strict=True)]))


def _matmuls(path: Path) -> list[str]:
    """The names of the exported model's MatMuls (its graph read without the weights)."""
    import onnx

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul"]


def _float_nodes(names: list[str], share: float) -> list[str]:
    """The MatMuls (of ``names``) kept out of int8: the feed-forward output projections
    (``FFN_OUTPUT``) of the first ``share`` of the layers."""
    layers = [int(found.group(1)) for n in names if (found := re.search(r"layer\.(\d+)/", n))]
    count = round((max(layers) + 1) * share) if layers else 0
    return [n for n in names if (found := re.search(FFN_OUTPUT, n)) and int(found.group(1)) < count]


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
    makes on a compiled OpenVINO model; ``unfused``: the graph fusions it leaves out."""

    def __init__(self, path: Path, threads: int, unfused: Sequence[str] = UNFUSED) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # The arena keeps the largest batch's activations (~80 MB for BGE-M3) but saves allocations
        # that cost ~10% of a pass on some CPUs (docs/performance.md)
        options.enable_cpu_mem_arena = True
        self.session = onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"],
                                                    disabled_optimizers=list(unfused))
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
