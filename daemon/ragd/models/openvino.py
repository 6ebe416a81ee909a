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

log = logging.getLogger(__name__)

# Bump when conversion or quantisation changes: cached models from older recipes are redone.
RECIPE = {"embedder": 1, "reranker": 2}
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


def _traceable(model: Any, output: str) -> Any:
    """``model`` wrapped so tracing sees ``(input_ids, attention_mask) -> model(...).<output>``:
    ``last_hidden_state`` for the embedder's transformer, ``logits`` for the reranker."""
    import torch

    class Traceable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return getattr(self.m(input_ids=input_ids, attention_mask=attention_mask, return_dict=True), output)

    return Traceable().eval()


# Operations kept in float when quantising: the first transformer layer (its input, the
# embeddings, quantises worst: MiniLM mean cosine 0.9950 quantised, 0.9968 kept in float, calibrated
# on docstrings) and the reranker's classification head (one token per pair, negligible time; its output is the score).
FLOAT_OPS = {"embedder": r"layer\.0\.", "reranker": r"layer\.0\.|classifier\."}


def _float_ops(model: Any, role: str) -> list[str]:
    """Names of the MatMuls kept in float for ``role``."""
    pattern = re.compile(FLOAT_OPS[role])
    return [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() == "MatMul" and pattern.search(op.get_friendly_name())]


def convert(
    module: Any,
    role: str,
    location: IRLocation,
    calibration: Sequence[dict[str, np.ndarray]] | None,
    progress: Progress | None = None,
) -> IRLocation:
    """Trace ``module`` (a HF encoder for the embedder, a sequence classifier for the
    reranker), quantise it when ``location.precision == "int8"`` and save it atomically."""
    block_telemetry()
    import openvino as ov
    import torch

    say = progress or (lambda _m: None)
    started = time.monotonic()
    wrapped = _traceable(module, "last_hidden_state" if role == "embedder" else "logits")
    example = {
        "input_ids": torch.tensor([[0, 10, 11, 12, 2], [0, 13, 2, 1, 1]], dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long),
    }
    say(f"converting the {role} to OpenVINO")
    dyn = ov.PartialShape([-1, -1])
    with torch.inference_mode(), _quiet():
        model = ov.convert_model(
            wrapped, example_input=example,
            input=[("input_ids", dyn, ov.Type.i64), ("attention_mask", dyn, ov.Type.i64)],
        )
    detail: dict[str, Any] = {}
    if location.precision == "w8":
        import nncf

        say(f"compressing the {role}'s weights to int8")
        with _quiet():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        detail = {"weights": "int8, asymmetric per channel; fp32 arithmetic"}
    elif location.precision == "int8":
        if not calibration:
            raise ModelLoadError("int8 conversion needs calibration text")
        import nncf

        ignored = _float_ops(model, role)
        say(f"quantising the {role} to int8 on {len(calibration)} calibration samples")
        with _quiet():
            model = nncf.quantize(
                model, nncf.Dataset(list(calibration)), model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(calibration), ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
            )
        detail = {"calibration_samples": len(calibration), "float_matmuls": len(ignored)}
    parent = location.folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{location.folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
    meta = {
        "model_id": location.model_id, "role": role, "precision": location.precision, "recipe": RECIPE[role],
        "source": str(location.source), "sources": _source_files(location.source),
        "openvino": ov.get_version(), "created": time.time(), "seconds": round(time.monotonic() - started, 1), **detail,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = parent / f".{location.folder.name}.old-{os.getpid()}"
    if location.folder.exists():
        location.folder.rename(old)
    tmp.rename(location.folder)
    shutil.rmtree(old, ignore_errors=True)
    say(f"saved the {role} in {location.folder} ({meta['seconds']} s)")
    return location


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


class Runner:
    """A converted model compiled once for the CPU; calls from any thread.

    One compiled model serves the writer and the searches alike: a second one per thread count
    (as torch's per-thread setting gives) measured +1.6 GB for the full-size embedder, most of it
    the float32 word-embedding matrix copied again. Searches still go first: the daemon's
    ``ModelGate`` lets a search wait for at most the indexing batch in hand. The source
    ``ov.Model`` is released after compiling, so its memory-mapped file pages can go too."""

    def __init__(self, location: IRLocation, precision: str, threads: int | None = None) -> None:
        block_telemetry()
        import openvino as ov

        self.location = location
        self.precision = precision
        core = ov.Core()
        # Threads: OpenVINO's default is every physical core (not the calling thread's torch
        # setting, which the daemon's writer lowers).
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        try:
            model = core.read_model(str(location.xml))
            self._compiled = core.compile_model(model, "CPU", {
                **config,
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                # No on-the-fly int8 activations for int8 weights ("w8"): faster, but rank
                # agreement of the random full-size reranker with fp32 fell to 0.93.
                "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
            })
        except Exception as exc:
            raise ModelLoadError(f"cannot load the converted model {location.xml}: {exc}") from exc
        del model
        self._local = threading.local()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({"input_ids": input_ids.astype(np.int64, copy=False),
                       "attention_mask": attention_mask.astype(np.int64, copy=False)})
        return np.array(request.get_output_tensor(0).data, copy=True)
