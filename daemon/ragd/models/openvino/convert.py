"""Conversion of a torch model to OpenVINO, once per model, role, precision and recipe.

The embedder's transformer (hidden states out) and the whole reranker (logits out) are traced
from the modules FlagEmbedding loaded, so both backends start from the same weights.
``int8`` is NNCF static quantisation calibrated on real text (``calibration``), with some
operations kept in float (``FLOAT_OPS``; the reranker's scored row, ``_cls_row_in_float``), the
reranker's key and value projections and first layer quantised per token as they run
(``DYNAMIC_QUANTIZATION_GROUP``), its attention in bf16 where the CPU has it
(``BF16_ATTENTION_FROM_LAYER``) and the word embeddings looked up outside the model
(``words.WordTable``); ``w8`` compresses the weights to int8 and computes in fp32; ``fp32``
and ``bf16`` share one float model. Why each part of the recipe is there, with its
measurements: docs/performance.md, "Accuracy gates".
torch, OpenVINO and NNCF are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragd.errors import ModelLoadError
from ragd.models.openvino import block_telemetry
from ragd.models.openvino.cache import DYNAMIC, IRLocation, abandoned, older_recipes, recipe, source_files
from ragd.models.openvino.onnx import export_dynamic_int8
from ragd.models.openvino.trace import Held, traceable
from ragd.models.openvino.words import WordTable

Progress = Callable[[str], None]
Samples = Sequence[dict[str, np.ndarray]]

FLOAT_OPS = {"embedder": r"layer\.0\.", "reranker": r"layer\.0[./]|classifier\."}
"""MatMuls kept out of static int8: the first transformer layer (it quantises worst; the
reranker's then gets int8 weights with per-token inputs, ``FIRST_LAYER``) and the reranker's
classification head (its output is the score)."""
ACTIVATION_RANGES = {"embedder": "default", "reranker": "minmax"}
"""How int8 reads activation ranges from calibration: NNCF's transformer preset, or the
extremes over all samples (the reranker agrees better with fp32 that way)."""
CLS_ROW_IN_FLOAT = True
"""The int8 reranker computes the row its score is read from in float (``_cls_row_in_float``)."""
LAST_LAYER_FIRST_ROW_ONLY = True
"""The int8 reranker's last layer computes its first row alone (``_cls_row_in_float``)."""
BRANCH_OWN = r"\.cls_"
"""The branch's own modules (not the keys and values it shares with the int8 rows)."""
BRANCH_FLOAT_OPS = BRANCH_OWN + r"|attention\.self\.(key|value)/|/aten::scaled_dot_product_attention/"
"""What that branch keeps in float arithmetic over int8 weights: its own modules and the keys
and values it attends to (every row's key and value projections, and the attention)."""
FIRST_LAYER = r"layer\.0[./]"
"""The int8 reranker's first layer: out of static int8 (``FLOAT_OPS``), its MatMuls get int8
weights after quantising, so they too run with per-token int8 inputs (the branch's excepted)."""
BF16_ATTENTION_FROM_LAYER = 1
"""From this layer on, the int8 rows' attention runs in bf16 where that is faster than f32
(``cpu.bf16_attention_pays``; ``runner.attention_in_bf16``, applied when compiling); the first
layer's stays f32."""
DYNAMIC_QUANTIZATION_GROUP = 128
"""The int8 reranker's key and value projections and first layer (int8 weights) quantise their
inputs per token and group of 128 channels as they run (OpenVINO's dynamic quantisation), where
static int8 per tensor cost agreement; the branch's own MatMuls stay in float arithmetic
(``_out_of_dynamic_quantisation``). Recorded in ``meta.json``, read by ``Runner``."""


@contextlib.contextmanager
def _cls_row_in_float(module: Any, float_ops: list[str]) -> Iterator[int]:
    """While converting, every transformer layer of a cross-encoder also computes its first
    row (the ``<s>`` token, the only one the score is read from) through a branch of its own:
    the query projection, the attention output, the feed-forward network and the attention
    of that row alone, with their own modules named ``cls_*`` (copies of the layer's, so the
    converted model holds their weights separately). Quantising then keeps those in float
    (``float_ops`` gets their name pattern; their weights are compressed to int8 afterwards,
    as for "w8") while all rows go through the int8 path, whose first row is replaced by the
    float one. The last layer computes only that row (and every row's keys and values): its
    other rows would never be read. Yields how many layers were rewritten (0 when the encoder is not BERT-shaped;
    the model is then converted as it is).

    Why: the first row's own int8 rounding reaches the score directly, the other rows' only
    through attention, averaged over the passage."""
    import copy

    import torch

    layers = getattr(getattr(getattr(module, "base_model", None), "encoder", None), "layer", None)
    parts = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
    def has(layer: Any, part: str) -> bool:
        try:
            layer.get_submodule(part)
        except AttributeError:
            return False
        return True

    if not isinstance(layers, torch.nn.ModuleList) or not all(has(layer, p) for layer in layers for p in parts):
        yield 0
        return

    def merge_heads(x: Any) -> Any:  # (batch, heads, rows, head size) -> (batch, rows, hidden)
        return x.transpose(1, 2).flatten(2)

    class Attend(torch.nn.Module):
        """The first row's attention as plain products (named ``cls_attention``, so they stay
        float; a fused attention op would be named after the layer and get int8 inputs)."""

        def forward(self, q: Any, k: Any, v: Any, mask: Any) -> Any:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
            if mask is not None:
                scores = scores + mask
            return merge_heads(torch.matmul(torch.softmax(scores, dim=-1), v))

    class ClsRowLayer(torch.nn.Module):
        def __init__(self, layer: Any, last: bool) -> None:
            super().__init__()
            self.layer = layer
            self.last = last  # only the first row leaves the last layer: its other rows are never read
            a = layer.attention
            self.heads = int(a.self.num_attention_heads)
            self.head_size = int(a.self.attention_head_size)
            # Copies, so the converted model gives the branch weights of its own that stay
            # unquantised by the int8 pass (they are compressed to int8 weights afterwards).
            self.cls_query = copy.deepcopy(a.self.query)
            self.cls_attention_output = copy.deepcopy(a.output.dense)
            self.cls_intermediate = copy.deepcopy(layer.intermediate.dense)
            self.cls_output = copy.deepcopy(layer.output.dense)
            self.cls_attention = Attend()

        def _split(self, x: Any) -> Any:
            return x.view(x.shape[0], -1, self.heads, self.head_size).transpose(1, 2)

        def forward(self, hidden: Any, attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
            layer, a = self.layer, self.layer.attention
            k, v = self._split(a.self.key(hidden)), self._split(a.self.value(hidden))
            # the first row, float (against every row's keys and values)
            first = hidden[:, :1]
            mask = attention_mask[:, :, :1, :] if attention_mask is not None else None
            context0 = self.cls_attention(self._split(self.cls_query(first)), k, v, mask)
            attended0 = a.output.LayerNorm(self.cls_attention_output(context0) + first)
            row0 = layer.output.LayerNorm(
                self.cls_output(layer.intermediate.intermediate_act_fn(self.cls_intermediate(attended0)))
                + attended0)
            if self.last:
                return (row0,)
            # every row, int8
            context = merge_heads(torch.nn.functional.scaled_dot_product_attention(
                self._split(a.self.query(hidden)), k, v, attn_mask=attention_mask))
            attended = a.output.LayerNorm(a.output.dense(context) + hidden)
            rows = layer.output.LayerNorm(
                layer.output.dense(layer.intermediate.intermediate_act_fn(layer.intermediate.dense(attended)))
                + attended)
            return (torch.cat([row0, rows[:, 1:]], dim=1),)

    originals = list(layers)
    try:
        for i, layer in enumerate(originals):
            layers[i] = ClsRowLayer(layer, last=LAST_LAYER_FIRST_ROW_ONLY and i == len(originals) - 1)
        float_ops.append(BRANCH_FLOAT_OPS)
        yield len(originals)
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer


def _float_ops(model: Any, patterns: Sequence[str]) -> list[str]:
    """Names of the MatMuls and attentions kept in float: those matching any of ``patterns``."""
    pattern = re.compile("|".join(patterns))
    return [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() in ("MatMul", "ScaledDotProductAttention") and pattern.search(op.get_friendly_name())]


def _stderr(message: str) -> None:
    print(f"ragd: {message}", file=sys.stderr, flush=True)


def convert_once(
    held: Held, location: IRLocation, calibration: Callable[[], Samples], progress: Progress | None,
) -> None:
    """Convert ``held``'s module into ``location``, saying so (minutes for a full-size model);
    ``calibration`` is called for int8 (its ranges) and int8-dynamic (its agreement check)
    only. Any failure is a ``ModelLoadError``."""
    say = progress or _stderr
    runtime = "ONNX Runtime" if location.precision == DYNAMIC else "OpenVINO"
    say(f"{location.role} {location.model_id.split('@')[0]}: converting to {runtime} {location.precision}, once "
        f"(a few minutes for a full-size model; cached in {location.folder})")
    try:
        samples = calibration() if location.precision in ("int8", DYNAMIC) else None
        convert(held, location.role, location, samples, say)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot convert the {location.role} to {runtime}: {exc}") from exc


def convert(
    held: Held,
    role: str,
    location: IRLocation,
    calibration: Samples | None,
    progress: Progress | None = None,
) -> IRLocation:
    """Trace ``held``'s module (a HF encoder for the embedder, a sequence classifier for the
    reranker; ``int8-dynamic`` releases it after its export), quantise it when
    ``location.precision == "int8"`` and save it atomically: written to a temporary folder that
    replaces the old one only when complete."""
    if location.precision == "int8" and not calibration:
        raise ModelLoadError("int8 conversion needs calibration text")
    say = progress or (lambda _m: None)
    started = time.monotonic()
    parent = location.folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    for left in abandoned(location):  # by conversions that were killed
        shutil.rmtree(left, ignore_errors=True)
    tmp = parent / f".{location.folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if location.precision == DYNAMIC:
            detail = export_dynamic_int8(held, role, tmp, say, calibration or ())
        else:
            detail = _save_openvino(held.module, role, location.precision, calibration, tmp, say)
        meta = {
            "model_id": location.model_id, "role": role, "precision": location.precision,
            "recipe": recipe(role, location.precision), "source": str(location.source),
            "sources": source_files(location.source), "created": time.time(),
            "seconds": round(time.monotonic() - started, 1), **detail,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = parent / f".{location.folder.name}.old-{os.getpid()}"
    if location.folder.exists():
        location.folder.rename(old)
    tmp.rename(location.folder)
    shutil.rmtree(old, ignore_errors=True)
    for older in older_recipes(location):
        shutil.rmtree(older, ignore_errors=True)
    say(f"saved the {role} in {location.folder} ({meta['seconds']} s)")
    return location


def _save_openvino(
    module: Any, role: str, precision: str, calibration: Samples | None, folder: Path, say: Progress,
) -> dict[str, Any]:
    """Build the OpenVINO model (``_build``) and save it as ``folder / "model.xml"``."""
    block_telemetry()
    import openvino as ov

    model, detail = _build(module, role, precision, calibration, folder, say)
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return {"openvino": ov.get_version(), **detail}


def _build(
    module: Any, role: str, precision: str, calibration: Samples | None, folder: Path, say: Progress,
) -> tuple[Any, dict[str, Any]]:
    """The OpenVINO model for ``precision`` (side files, the int8 ``WordTable``, go to ``folder``)."""
    import openvino as ov
    import torch

    # int8: the word embeddings are looked up outside the model (``WordTable``), so the
    # model takes ``inputs_embeds`` and calibrates on the same int8-rounded embeddings.
    outside = precision == "int8"
    wrapped = traceable(module, "last_hidden_state" if role == "embedder" else "logits", embeds=outside)
    ids = torch.tensor([[0, 10, 11, 12, 2], [0, 13, 2, 1, 1]], dtype=torch.long)
    example = {"attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)}
    dyn = ov.PartialShape([-1, -1])
    if outside:
        table, scales = WordTable.save(module.get_input_embeddings().weight.detach().float().cpu().numpy(), folder)
        example["inputs_embeds"] = torch.from_numpy(WordTable.lookup_in(table, scales, ids.numpy()))
        inputs = [("inputs_embeds", ov.PartialShape([-1, -1, table.shape[1]]), ov.Type.f32),
                  ("attention_mask", dyn, ov.Type.i64)]
        calibration = [{"inputs_embeds": WordTable.lookup_in(table, scales, c["input_ids"]),
                        "attention_mask": c["attention_mask"]} for c in calibration or ()]
        del table
    else:
        example["input_ids"] = ids
        inputs = [("input_ids", dyn, ov.Type.i64), ("attention_mask", dyn, ov.Type.i64)]
    say(f"converting the {role} to OpenVINO")
    float_patterns = [FLOAT_OPS[role]]
    rewrite = (_cls_row_in_float(module, float_patterns) if (precision, role) == ("int8", "reranker")
               and CLS_ROW_IN_FLOAT else contextlib.nullcontext(0))
    with rewrite as cls_layers, torch.inference_mode(), _quiet():
        model = ov.convert_model(wrapped, example_input=example, input=inputs)
    detail: dict[str, Any] = {}
    if precision == "w8":
        import nncf

        say(f"compressing the {role}'s weights to int8")
        with _quiet():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        detail["weights"] = "int8, asymmetric per channel; fp32 arithmetic"
    elif precision == "int8":
        import nncf

        assert calibration, "checked by convert()"
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        ignored = _float_ops(model, float_patterns)
        ranges = ACTIVATION_RANGES[role]
        advanced = None
        if ranges == "minmax":
            advanced = AdvancedQuantizationParameters(
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
        if cls_layers:
            # The first row's branch: int8 weights, float arithmetic (as "w8"), compressed
            # before quantising, since NNCF's SmoothQuant rescales the weights of every MatMul
            # (ignored ones included) but leaves compressed weights alone.
            branch = re.compile(BRANCH_FLOAT_OPS)
            others = [op.get_friendly_name() for op in model.get_ops()
                      if op.get_type_name() == "MatMul" and not branch.search(op.get_friendly_name())]
            with _quiet():
                model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                              ignored_scope=nncf.IgnoredScope(names=others, validate=False))
            detail["first_row_in_float_layers"] = cls_layers
        say(f"quantising the {role} to int8 on {len(calibration)} calibration samples")
        with _quiet():
            model = nncf.quantize(
                model, nncf.Dataset(list(calibration)), model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(calibration), ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                advanced_parameters=advanced,
            )
        if cls_layers:
            first, own = re.compile(FIRST_LAYER), re.compile(BRANCH_OWN)
            others = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
                      and not (first.search(op.get_friendly_name()) and not own.search(op.get_friendly_name()))]
            with _quiet():
                model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                              ignored_scope=nncf.IgnoredScope(names=others, validate=False))
            detail["bf16_attention_from_layer"] = BF16_ATTENTION_FROM_LAYER
            detail["dynamic_quantization_group"] = DYNAMIC_QUANTIZATION_GROUP
            detail["branch_out_of_dynamic_quantization"] = _out_of_dynamic_quantisation(model, BRANCH_OWN)
        detail.update(word_embeddings="int8 per row, looked up outside the model",
                      calibration_samples=len(calibration), float_matmuls=len(ignored), activation_ranges=ranges)
    return model, detail


def _out_of_dynamic_quantisation(model: Any, pattern: str) -> int:
    """Re-type the int8 weights of the MatMuls matching ``pattern`` from u8 with a u8 zero point
    to i8 with an i8 zero point (both less 128: the same weights after decompression). OpenVINO's
    CPU plugin quantises a MatMul's input per token only over u8 weights, or i8 weights without
    a zero point, so these keep float arithmetic while dynamic quantisation is on for the rest.
    Returns how many MatMuls were re-typed."""
    from openvino import opset13 as ops

    from ragd.models.openvino.runner import take_place

    wanted = re.compile(pattern)
    done = 0
    for op in model.get_ops():
        if op.get_type_name() != "MatMul" or not wanted.search(op.get_friendly_name()):
            continue
        found, seen, stack = [], set(), [op.input_value(1).get_node()]
        while stack:  # up the weights' decompression (Convert, Subtract, Multiply) to its constants
            node = stack.pop()
            if node.get_friendly_name() in seen:
                continue
            seen.add(node.get_friendly_name())
            if node.get_type_name() == "Constant" and node.get_element_type().get_type_name() == "u8":
                found.append(node)
            elif node.get_type_name() in ("Convert", "Subtract", "Multiply"):
                stack.extend(value.get_node() for value in node.input_values())
        if not found:  # no weights of its own (the branch's attention products)
            continue
        if len(found) != 2:
            raise ModelLoadError(f"{op.get_friendly_name()}: expected int8 weights with a zero point, "
                                 f"found {len(found)} u8 constants")
        for const in found:
            take_place(const, ops.constant((const.get_data().astype(np.int16) - 128).astype(np.int8)))
        done += 1
    model.validate_nodes_and_infer_types()
    return done


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converter's and NNCF's notices and warnings are silenced; NNCF's progress bars stay."""
    import warnings

    loggers = [logging.getLogger(n) for n in ("nncf", "openvino")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        # NNCF draws its progress bars on stdout: they go to stderr, keeping stdout for results.
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
