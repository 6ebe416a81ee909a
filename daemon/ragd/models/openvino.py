"""OpenVINO inference for the encoders, converted once from the same weights and cached.

The embedder's transformer (hidden states out) and the whole reranker (logits out) are
traced from the PyTorch modules FlagEmbedding loads, so both backends start from the same
weights; BGE-M3's small heads (dense pooling, sparse weights, ColBERT projection) stay in
torch on the hidden states. ``int8`` is NNCF static quantisation calibrated on real text
(built-in: the Python standard library's documentation; or the user's own files with
``ragd models convert --calibration``); the first transformer layer stays in float, which
measured best for accuracy per cost. ``w8`` stores the weights in int8 and computes in fp32
(NNCF weight compression: a quarter of the memory, float accuracy). ``bf16`` and ``fp32`` are
the float model compiled with that inference precision.

Converted models live under ``<cache>/openvino/<model>/<role>-<precision>-r<RECIPE>/``
(``model.xml``, ``model.bin``, ``meta.json``), written to a temporary folder and renamed,
so a crash never leaves half a model; ``meta.json`` records the source weights' sizes and
modification times and a stale conversion is redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragd.errors import ModelLoadError
from ragd.models.base import Holds

log = logging.getLogger(__name__)

# Bump when conversion or quantisation changes: cached models from older recipes are redone.
RECIPE = {"embedder": 2, "reranker": 6}
# Calibration: single paragraphs cut to 256 tokens. Samples running paragraphs together up to
# 512 tokens were tried and agreed worse with float32 on long inputs (reranker rank agreement on
# 300-500-token passages 0.943 against 0.968), as wider ranges quantise the common values coarser.
CALIBRATION_SAMPLES = 300
CALIBRATION_MAX_TOKENS = 256
ROLES = ("embedder", "reranker")

Progress = Callable[[str], None]


def block_telemetry() -> None:
    """OpenVINO's converter and NNCF send usage statistics unless a consent file in the home
    folder says no. ragd keeps everything on the machine, so it makes their telemetry module
    unimportable before either is loaded; both then fall back to their built-in stubs."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/ragd``, else ``~/.cache/ragd``."""
    env = os.environ if environ is None else environ
    raw = env.get("XDG_CACHE_HOME", "")
    base = Path(raw) if raw and Path(raw).is_absolute() else Path.home() / ".cache"
    return base / "ragd"


def _source_files(folder: Path) -> dict[str, list[int]]:
    """Size and modification time of every weight and config file of a model folder."""
    out: dict[str, list[int]] = {}
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if path.is_file() and name.endswith((".safetensors", ".bin", ".pt", ".json")):
            st = path.stat()
            out[name] = [st.st_size, st.st_mtime_ns]
    return out


@dataclass(frozen=True)
class IRLocation:
    """Where one converted model lives and what it must have been made from."""

    folder: Path
    role: str
    precision: str
    source: Path
    model_id: str

    @property
    def xml(self) -> Path:
        return self.folder / "model.xml"

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def meta(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def is_current(self) -> bool:
        meta = self.meta()
        return (
            meta is not None
            and self.xml.is_file()
            and (self.folder / "model.bin").is_file()
            and meta.get("recipe") == RECIPE[self.role]
            and meta.get("sources") == _source_files(self.source)
        )


def ir_location(cache_dir: Path, source: Path, model_id: str, role: str, precision: str) -> IRLocation:
    """Keyed by the source folder (``meta.json`` then checks that its weights are unchanged)."""
    resolved = source.resolve()
    # A Hugging Face snapshot folder is named by its revision: name it by the repository.
    label = resolved.parent.parent.name if resolved.parent.name == "snapshots" else resolved.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[-60:] or "model"
    digest = hashlib.blake2b(str(resolved).encode(), digest_size=6).hexdigest()
    folder = cache_dir / "openvino" / f"{name}-{digest}" / f"{role}-{precision}-r{RECIPE[role]}"
    return IRLocation(folder=folder, role=role, precision=precision, source=source, model_id=model_id)


def _older_recipes(location: IRLocation) -> list[Path]:
    """Conversions of the same model, role and precision by an older recipe (replaced)."""
    stem = location.folder.name.rsplit("-r", 1)[0]
    found = []
    for path in location.folder.parent.glob(f"{stem}-r*"):
        recipe = path.name[len(stem) + 2:]
        if path.is_dir() and recipe.isdigit() and int(recipe) < RECIPE[location.role]:
            found.append(path)
    return found


# ---------------------------------------------------------------- calibration text

_STDLIB_MODULES = (
    "os", "json", "re", "collections", "itertools", "functools", "pathlib", "subprocess", "threading",
    "asyncio", "sqlite3", "email", "http.client", "urllib.request", "logging", "argparse", "datetime",
    "decimal", "fractions", "statistics", "random", "string", "textwrap", "unittest", "typing",
    "dataclasses", "enum", "csv", "zipfile", "tarfile", "shutil", "tempfile", "glob", "socket", "ssl",
    "hashlib", "heapq", "bisect", "struct", "codecs", "io", "pickle", "copy", "pprint", "inspect", "ast",
    "tokenize", "traceback", "warnings", "contextlib", "abc", "numbers", "math", "operator", "calendar",
    "time", "locale", "gettext", "base64", "html", "queue", "sched", "selectors", "signal", "uuid",
    "ipaddress", "difflib", "shlex", "configparser", "tomllib", "gzip", "bz2", "lzma", "zlib",
)


def builtin_calibration_texts() -> list[str]:
    """Real prose that every Python installation has: the standard library's docstrings and
    the language reference topics, in a fixed order."""
    import warnings

    texts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases (typing.io, ...) warn when touched
        texts.extend(_docstrings())
    with contextlib.suppress(ImportError):
        from pydoc_data.topics import topics

        for key in sorted(topics):
            for para in topics[key].split("\n\n"):
                para = " ".join(para.split())
                if len(para) > 200 and not para.startswith(("def ", "class ", ">>>")):
                    texts.append(para)
    return list(dict.fromkeys(texts))


def _docstrings() -> list[str]:
    import importlib

    texts: list[str] = []
    for name in _STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # a module missing from a trimmed Python: use the others
            continue
        for obj in [module, *(getattr(module, a, None) for a in sorted(dir(module)) if not a.startswith("_"))]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200:
                texts.append(" ".join(doc.split()))
    return texts


def calibration_texts_from(paths: Sequence[Path]) -> list[str]:
    """Paragraphs (at least 100 characters) from text files or folders of them."""
    from ragd.errors import ExtractError
    from ragd.extract import extract

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(x for x in p.rglob("*") if x.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise ModelLoadError(f"calibration: no such file or folder: {p}")
    texts: list[str] = []
    for f in files:
        try:
            text = extract(f, f.read_bytes()).text
        except (OSError, ExtractError):  # unreadable or binary: not calibration text
            continue
        texts.extend(" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(p.strip()) >= 100)
    return list(dict.fromkeys(texts))


def pick_samples(texts: Sequence[str], n: int) -> list[str]:
    """``n`` texts spread evenly over ``texts`` (deterministic)."""
    if len(texts) <= n:
        return list(texts)
    step = len(texts) / n
    return [texts[int(i * step)] for i in range(n)]


# ---------------------------------------------------------------- conversion


def _traceable(model: Any, output: str, embeds: bool = False) -> Any:
    """``model`` wrapped so tracing sees ``(input_ids, attention_mask) -> model(...).<output>``:
    ``last_hidden_state`` for the embedder's transformer, ``logits`` for the reranker; with
    ``embeds``, ``(inputs_embeds, attention_mask)`` (the word embeddings looked up outside)."""
    import torch

    class Traceable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return getattr(self.m(input_ids=input_ids, attention_mask=attention_mask, return_dict=True), output)

    class TraceableEmbeds(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, inputs_embeds: Any, attention_mask: Any) -> Any:
            return getattr(self.m(inputs_embeds=inputs_embeds, attention_mask=attention_mask, return_dict=True), output)

    return (TraceableEmbeds() if embeds else Traceable()).eval()


@contextlib.contextmanager
def _cls_row_in_float(module: Any, float_ops: list[str]) -> Iterator[int]:
    """While converting, every transformer layer of a cross-encoder also computes its first
    row (the ``<s>`` token, the only one the score is read from) through a branch of its own:
    the query projection, the attention output, the feed-forward network and the attention
    of that row alone, with their own modules named ``cls_*`` (copies of the layer's, so the
    converted model holds their weights separately). Quantising then keeps those in float
    (``float_ops`` gets their name pattern; their weights are compressed to int8 afterwards,
    as for "w8") while all rows go through the int8 path, whose first row is replaced by the
    float one. Yields how many layers were rewritten (0 when the encoder is not BERT-shaped;
    the model is then converted as it is).

    Why: with static int8 activations the first row's own rounding reaches the score
    directly, while the other rows' errors reach it only through attention, averaged over the
    passage. Keeping that one row in float costs a few matrix-vector products per layer."""
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
        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.layer = layer
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
            # every row, int8
            context = merge_heads(torch.nn.functional.scaled_dot_product_attention(
                self._split(a.self.query(hidden)), k, v, attn_mask=attention_mask))
            attended = a.output.LayerNorm(a.output.dense(context) + hidden)
            rows = layer.output.LayerNorm(
                layer.output.dense(layer.intermediate.intermediate_act_fn(layer.intermediate.dense(attended)))
                + attended)
            # the first row, float (against the same keys and values)
            first = hidden[:, :1]
            mask = attention_mask[:, :, :1, :] if attention_mask is not None else None
            context0 = self.cls_attention(self._split(self.cls_query(first)), k, v, mask)
            attended0 = a.output.LayerNorm(self.cls_attention_output(context0) + first)
            row0 = layer.output.LayerNorm(
                self.cls_output(layer.intermediate.intermediate_act_fn(self.cls_intermediate(attended0)))
                + attended0)
            return (torch.cat([row0, rows[:, 1:]], dim=1),)

    originals = list(layers)
    try:
        for i, layer in enumerate(originals):
            layers[i] = ClsRowLayer(layer)
        float_ops.append(BRANCH_FLOAT_OPS)
        yield len(originals)
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer


class WordTable:
    """The word-embedding matrix in int8 (symmetric, one scale per row), looked up outside
    OpenVINO for int8 models.

    In a statically quantised model OpenVINO's CPU plugin folds the int8 word-embedding
    matrix back to float32 when compiling (1 GB for BGE-M3's 250,002 x 1,024; weight-only
    compressed models keep it int8, but a model with quantised activations does not, however
    the table is stored). Kept here as two ``.npy`` files read through a memory map, only the
    rows of tokens in use are in memory; the lookup is the same per-row int8 rounding NNCF
    applies to the table when it stays inside."""

    FILES = ("embeddings.npy", "embedding_scales.npy")

    def __init__(self, folder: Path) -> None:
        self.table = np.load(folder / self.FILES[0], mmap_mode="r")
        self.scales = np.load(folder / self.FILES[1])

    @staticmethod
    def save(weight: np.ndarray, folder: Path) -> tuple[np.ndarray, np.ndarray]:
        w = np.asarray(weight, dtype=np.float32)
        scales = np.abs(w).max(axis=1) / 127.0
        scales[scales == 0] = 1.0
        table = np.clip(np.rint(w / scales[:, None]), -127, 127).astype(np.int8)
        np.save(folder / WordTable.FILES[0], table)
        np.save(folder / WordTable.FILES[1], scales.astype(np.float32))
        return table, scales.astype(np.float32)

    @staticmethod
    def lookup_in(table: np.ndarray, scales: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
        return table[input_ids].astype(np.float32) * scales[input_ids][..., None]

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        return self.lookup_in(self.table, self.scales, input_ids)


# Operations kept in float when quantising: the first transformer layer (its input, the
# embeddings, quantises worst: MiniLM mean cosine 0.9950 quantised, 0.9968 kept in float, calibrated
# on docstrings) and the reranker's classification head (one token per pair, negligible time; its output is the score).
FLOAT_OPS = {"embedder": r"layer\.0\.", "reranker": r"layer\.0[./]|classifier\."}
# How activation ranges are read from the calibration run, per role. "minmax": the extremes
# seen over all samples. "default": NNCF's transformer preset (the mean of each sample's
# extremes), which clips the values other samples reach. For the reranker min/max agreed
# better with fp32 (rank agreement, tiny random reranker 0.978 -> 0.993, full-size on long
# passages 0.968 -> 0.972); the embedder keeps the default, since its vectors are stored in
# users' indexes and min/max moved real MiniLM's mean cosine only from 0.9971 to 0.9974.
ACTIVATION_RANGES = {"embedder": "default", "reranker": "minmax"}
# The int8 reranker computes its first row in float beside the int8 rows (``_cls_row_in_float``).
# Rank agreement with fp32 on 60 long SciFact abstracts, full-size random reranker (Spearman):
# 0.959 / 0.927 without the branch, 0.976 / 0.972 with it (recipe 5), 0.990 / 0.986 / 0.987 /
# 0.988 on four claims with the keys and values it reads in float too (recipe 6). The branch
# costs ~3% of the time and +250 MB of int8 weights.
CLS_ROW_IN_FLOAT = True
# What the branch keeps in float arithmetic (over int8 weights, compressed before SmoothQuant):
# its own modules (``cls_*``) and the keys and values it attends to, i.e. every row's key and
# value projections and the int8 path's attention, which reads the same keys. On one claim
# (Spearman), from a model with all of them int8 but the branch's own: 0.972; the attention in
# float 0.977; the key and value projections too 0.980 (built: 0.986); the FFN's second MatMul
# or the last four layers instead of those did nothing; every activation in float 0.994.
BRANCH_FLOAT_OPS = r"\.cls_|attention\.self\.(key|value)/|/aten::scaled_dot_product_attention/"


def _float_ops(model: Any, patterns: Sequence[str]) -> list[str]:
    """Names of the MatMuls and attentions kept in float: those matching any of ``patterns``."""
    pattern = re.compile("|".join(patterns))
    return [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() in ("MatMul", "ScaledDotProductAttention") and pattern.search(op.get_friendly_name())]


def convert(
    module: Any,
    role: str,
    location: IRLocation,
    calibration: Sequence[dict[str, np.ndarray]] | None,
    progress: Progress | None = None,
) -> IRLocation:
    """Trace ``module`` (a HF encoder for the embedder, a sequence classifier for the
    reranker), quantise it when ``location.precision == "int8"`` and save it atomically:
    written to a temporary folder that replaces the old one only when complete."""
    block_telemetry()
    import openvino as ov

    if location.precision == "int8" and not calibration:
        raise ModelLoadError("int8 conversion needs calibration text")
    say = progress or (lambda _m: None)
    started = time.monotonic()
    parent = location.folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{location.folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model, detail = _build(module, role, location.precision, calibration, tmp, say)
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        del model
        meta = {
            "model_id": location.model_id, "role": role, "precision": location.precision, "recipe": RECIPE[role],
            "source": str(location.source), "sources": _source_files(location.source), "openvino": ov.get_version(),
            "created": time.time(), "seconds": round(time.monotonic() - started, 1), **detail,
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
    for older in _older_recipes(location):
        shutil.rmtree(older, ignore_errors=True)
    say(f"saved the {role} in {location.folder} ({meta['seconds']} s)")
    return location


def _build(
    module: Any, role: str, precision: str, calibration: Sequence[dict[str, np.ndarray]] | None, folder: Path,
    say: Progress,
) -> tuple[Any, dict[str, Any]]:
    """The OpenVINO model for ``precision`` (side files, the int8 ``WordTable``, go to ``folder``)."""
    import openvino as ov
    import torch

    # int8: the word embeddings are looked up outside the model (``WordTable``), so the
    # model takes ``inputs_embeds`` and calibrates on the same int8-rounded embeddings.
    outside = precision == "int8"
    wrapped = _traceable(module, "last_hidden_state" if role == "embedder" else "logits", embeds=outside)
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
            # The first row's branch: int8 weights, float arithmetic (as "w8"). Compressed
            # before quantising: NNCF's SmoothQuant rescales the weights of every MatMul,
            # ignored ones included, and int8 weights rounded after that rescaling lose the
            # input channels it shrinks; SmoothQuant leaves compressed weights alone.
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
        detail.update(word_embeddings="int8 per row, looked up outside the model",
                      calibration_samples=len(calibration), float_matmuls=len(ignored), activation_ranges=ranges)
    return model, detail


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


# ---------------------------------------------------------------- inference


def cpu_cores() -> int:
    """Physical cores this process may run on (its affinity set, e.g. a container's CPU
    limit; hyper-threads of one core count once, as OpenVINO schedules on physical cores)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


class _Batch:
    """A background batch on its slot. ``cancel`` stops its run from another thread (a no-op
    on a request not running yet: the batch then runs to the end)."""

    def __init__(self, request: Any, cancels: int) -> None:
        self.request = request
        self.cancels = cancels  # times the batch was cancelled before this run
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.request.cancel()


class Scheduler:
    """Inference slots shared by every converted model in the process (one per stream of a
    compiled model, ``STREAMS``), with searches first.

    Background work (the writer's embedding batches) takes a slot only while no foreground
    work (a search's query embedding or rerank pairs) waits, and while searches are coming
    (one ended less than ``RESERVE_S`` seconds ago) it leaves one slot free, for at most
    ``RESERVE_S`` per batch: with a single stream it pauses. So the searches right after a
    search find the slot free, and indexing still takes a batch every ``RESERVE_S`` under a
    constant stream of searches. A search with a deadline ``hold``s the slots for its
    reranking, so no indexing batch slips in between its rerank batches and makes it late:
    background work waits until the hold ends (at most the search's deadline).

    A search that finds the single slot taken by an indexing batch cancels that batch
    (``preemptions``), which runs again later, so the search waits for milliseconds instead
    of the whole batch (seconds on a slow CPU). Before the slot is handed over, the cancelled
    request is dropped and the model runs one token on a new one (``_reset``): after a
    cancelled run, OpenVINO 2026.4's CPU graph failed its shape checks on about one later
    run in thirty to fifty (``Eltwise shape infer ... mismatch``), and a reused request once
    returned an output of the wrong shape; after a completed run of a shape no real input
    has (1 x 1), none failed after 1,860 cancellations on the tiny model and 79 on the
    full-size BGE-M3 architecture (``benchmarks/cancel.py``; ``tests/test_openvino.py`` runs
    a short one). A batch is cancelled at most ``CANCELS_PER_BATCH`` times, then runs to the
    end, so a steady stream of searches slows indexing but never stops it. With several
    slots (streams) the reset could not pick the cancelled run's stream, so there a search
    waits for a free slot."""

    # Long enough to cover the gap between one search and the next of a burst (a client's
    # round trip), short enough that a note written while an agent polls search is indexed
    # without a noticeable delay.
    RESERVE_S = 0.5
    # An indexing batch cancelled this many times runs to the end (0: searches never cancel).
    CANCELS_PER_BATCH = 3

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._cond = threading.Condition()
        self._running = 0
        self._waiting = 0  # foreground jobs waiting for a slot
        self._holds = Holds(self._cond)  # searches holding every slot for foreground work (``hold``)
        self._last_foreground = -float("inf")
        self._batches: list[_Batch] = []  # background batches on a slot
        self.foreground_waits = 0  # foreground jobs that found no free slot
        self.preemptions = 0  # background runs cancelled for a search (and run again)

    def _background_wait(self, since: float) -> float | None:
        """Seconds background work waiting since ``since`` must wait before it may look again;
        None: it may start. The reserve holds a background job back for at most ``RESERVE_S``,
        so searches coming one after another slow indexing down but never stop it."""
        if self._waiting or self._holds.count:
            return 1.0
        reserve_left = min(self._last_foreground, since) + self.RESERVE_S - time.monotonic()
        room = self.slots - (1 if reserve_left > 0 else 0)
        if self._running < room:
            return None
        return max(0.01, reserve_left) if self._running < self.slots else 1.0

    def _preempt(self) -> None:
        """Cancel the background batch on the single slot, unless it was cancelled often enough."""
        if self.slots != 1:
            return
        for batch in self._batches:
            if not batch.cancelled and batch.cancels < self.CANCELS_PER_BATCH:
                batch.cancel()

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """While inside, background work does not start (work already running finishes);
        afterwards it holds back as after any search."""
        def ended() -> None:
            self._last_foreground = time.monotonic()

        return self._holds(ended)

    def run(self, request: Any, inputs: dict[str, np.ndarray], foreground: bool) -> Any:
        """Run ``inputs`` when a slot is free for them; returns the request that holds the
        outputs (``request``, or a new one of the same model after a cancelled run)."""
        if foreground:
            with self._cond:
                self._waiting += 1
                if self._running >= self.slots:
                    self.foreground_waits += 1
                    self._preempt()
                try:
                    while self._running >= self.slots:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._running += 1
            try:
                request.infer(inputs)
            finally:
                self._release(foreground=True)
            return request
        since = time.monotonic()
        cancels = 0
        while True:
            with self._cond:
                while (pause := self._background_wait(since)) is not None:
                    self._cond.wait(timeout=pause)
                self._running += 1
                batch = _Batch(request, cancels)
                self._batches.append(batch)
            try:
                # A synchronous run as before; a search cancels it from its own thread.
                try:
                    request.infer(inputs)
                    return request
                except RuntimeError:
                    if not batch.cancelled:
                        raise
                cancels += 1
                with self._cond:
                    self.preemptions += 1
                request = _reset(request, inputs)  # while still on the slot
            finally:
                with self._cond:
                    self._batches.remove(batch)
                self._release(foreground=False)

    def _release(self, foreground: bool) -> None:
        with self._cond:
            self._running -= 1
            if foreground:
                self._last_foreground = time.monotonic()
            self._cond.notify_all()


def _reset(cancelled: Any, inputs: dict[str, np.ndarray]) -> Any:
    """A new request of ``cancelled``'s model, after one completed run of a 1 x 1 input (cut
    from ``inputs``), which leaves the model's CPU graph consistent after a cancelled run."""
    one = {name: np.ascontiguousarray(value[:1, :1]) for name, value in inputs.items()}
    compiled = cancelled.get_compiled_model()
    request = compiled.create_infer_request()
    try:
        request.infer(one)
    except RuntimeError:  # none seen; once more on another request
        request = compiled.create_infer_request()
        request.infer(one)
    return request


WARM_UP_TOKENS = 16
MADV_DONTNEED = 4


def release_file_pages(path: Path) -> int:
    """Drop this process's resident pages of ``path``'s read-only mappings, and the file's
    clean pages from the page cache; returns the bytes of mappings released. Only for files
    whose mapped pages are no longer read (they would be read from the file again)."""
    import ctypes

    target = os.path.realpath(path)
    released = 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps", encoding="utf-8") as fh:
            maps = fh.read().splitlines()
    except (OSError, AttributeError):  # not Linux: nothing to release
        return 0
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target and "w" not in fields[1]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
                released += end - start
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return released


_scheduler: Scheduler | None = None
_scheduler_lock = threading.Lock()


def scheduler() -> Scheduler:
    """The process's scheduler (a slot per stream)."""
    global _scheduler
    with _scheduler_lock:
        if _scheduler is None:
            _scheduler = Scheduler(STREAMS)
        return _scheduler


Inputs = dict[str, np.ndarray]


# Streams per compiled model. One stream using every core measured best here: a short query
# embeds in ~40 ms and a 352-token rerank passage in ~1.2 s (the deadline path needs both
# short), against ~68 ms and ~2.3 s on one of two single-threaded streams, and throughput is
# the same (1,026 tokens/s at 2 x 256 either way).
STREAMS = 1


def float_arithmetic(precision: str, role: str, core: Any, amx: bool = False) -> str:
    """What the operations left in float compute in: bf16 for ``bf16``, and for the int8
    embedder on a CPU with AVX512-BF16 but no AMX (OpenVINO then lists BF16 among its
    capabilities), whose float parts (the first layer, attention, normalisation) then take ~20%
    less time (full-size BGE-M3, 1 x 256 tokens: 267 ms against 334) for the same vectors (real
    MiniLM: mean cosine to fp32 0.99711 against 0.99712); else f32. With AMX (``amx``) the same
    model in bf16 computed other vectors: real MiniLM's mean cosine to fp32 fell to 0.957 (min
    0.54) against 0.997 with f32 float parts, while the float model alone in bf16 kept 0.99999,
    so there the int8 embedder's float parts stay f32 (17% slower than bf16 in a paired loop on
    the full-size random model, about as fast end to end). The
    reranker stays f32 in every precision: its agreement gate fails with bf16 arithmetic
    (Spearman 0.27-0.34 on the small random reranker, w8 and int8 alike)."""
    if precision == "bf16":
        return "bf16"
    if ((precision, role) == ("int8", "embedder") and not amx
            and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")):
        return "bf16"
    return "f32"


class Runner:
    """A converted model compiled once for the CPU (``STREAMS`` streams sharing every core);
    calls from any thread, batches through the process's ``Scheduler``.

    One compiled model serves the writer and the searches alike (a second compiled model
    measured +1.6 GB for the full-size embedder; a second stream of the same one +70 MB).
    The source ``ov.Model`` is released after compiling, so its memory-mapped file pages can
    go too."""

    def __init__(self, location: IRLocation, precision: str, streams: int = STREAMS) -> None:
        block_telemetry()
        import openvino as ov

        self.location = location
        self.precision = precision
        self.scheduler = scheduler()
        core = ov.Core()
        from ragd.models.flag import cpu_has_amx

        self.arithmetic = float_arithmetic(precision, location.role, core, cpu_has_amx())
        try:
            model = core.read_model(str(location.xml))
            self._compiled = core.compile_model(model, "CPU", {
                "NUM_STREAMS": streams,
                "INFERENCE_NUM_THREADS": cpu_cores(),  # shared out among the streams
                "INFERENCE_PRECISION_HINT": self.arithmetic,
                # No on-the-fly int8 activations for int8 weights ("w8"): faster, but rank
                # agreement of the random full-size reranker with fp32 fell to 0.93.
                "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
            })
        except Exception as exc:
            raise ModelLoadError(f"cannot load the converted model {location.xml}: {exc}") from exc
        del model
        names = {n for port in self._compiled.inputs for n in port.get_names()}
        self._words = WordTable(location.folder) if "inputs_embeds" in names else None
        self.streams = int(self._compiled.get_property("NUM_STREAMS"))
        self.scheduler.slots = min(self.scheduler.slots, self.streams)
        self._free: list[Any] = []
        self._lock = threading.Lock()
        # A first run on every stream makes OpenVINO lay the weights out for its kernels (in
        # its own memory, shared by the streams); after that the mapped model file is not
        # read again, so its pages are handed back (~330 MB for the full-size int8 embedder,
        # ~260 MB for the w8 reranker; read again from the file if ever needed).
        ids = np.zeros((1, WARM_UP_TOKENS), dtype=np.int64)
        for _ in self.map([(ids, np.ones_like(ids))] * self.streams, foreground=False):
            pass
        self.released_bytes = release_file_pages(location.folder / "model.bin")

    def _inputs(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Inputs:
        mask = attention_mask.astype(np.int64, copy=False)
        if self._words is not None:
            return {"inputs_embeds": self._words(input_ids), "attention_mask": mask}
        return {"input_ids": input_ids.astype(np.int64, copy=False), "attention_mask": mask}

    def _request(self) -> Any:
        with self._lock:
            return self._free.pop() if self._free else self._compiled.create_infer_request()

    def _run_one(self, inputs: Inputs, foreground: bool) -> np.ndarray:
        request = self.scheduler.run(self._request(), inputs, foreground)
        out = np.array(request.get_output_tensor(0).data, copy=True)
        with self._lock:
            self._free.append(request)
        return out

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, foreground: bool = True) -> np.ndarray:
        return self._run_one(self._inputs(input_ids, attention_mask), foreground)

    def map(
        self, batches: Sequence[tuple[np.ndarray, np.ndarray]], foreground: bool
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Run every (input_ids, attention_mask) batch, one per stream at a time plus one
        waiting; yields (position, output) as batches finish, so the caller post-processes
        one batch while the next one runs."""
        if len(batches) == 1:
            yield 0, self(*batches[0], foreground)
            return
        import queue

        done: queue.Queue[tuple[int, np.ndarray | BaseException]] = queue.Queue()
        todo = iter(range(len(batches)))
        todo_lock = threading.Lock()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                with todo_lock:
                    n = next(todo, None)
                if n is None:
                    return
                try:
                    done.put((n, self._run_one(self._inputs(*batches[n]), foreground)))
                except BaseException as exc:  # handed to the caller's thread
                    done.put((n, exc))
                    return

        workers = [threading.Thread(target=work, name="ragd-openvino", daemon=True)
                   for _ in range(min(self.streams + 1, len(batches)))]
        for w in workers:
            w.start()
        try:
            for _ in range(len(batches)):
                n, out = done.get()
                if isinstance(out, BaseException):
                    raise out
                yield n, out
        finally:
            stop.set()
            for w in workers:
                w.join()


