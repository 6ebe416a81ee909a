"""FlagEmbedding backends: the reference implementation for BGE-M3, dense models and the
bge-reranker cross-encoder. Heavy imports happen here and nowhere else."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragd.errors import ModelLoadError, UsageError
from ragd.models.base import Embeddings, FloatArray, SparseWeights
from ragd.models.tokens import Tokens, load_tokens

log = logging.getLogger(__name__)


def _quiet_imports() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # FlagEmbedding's own per-call bars
    for name in ("transformers", "FlagEmbedding", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # e.g. "sequence length is longer than..." while counting tokens


def pick_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU. torch is imported only where a
    GPU driver could be there: on the CPU the converted models run without it (~0.5 GB less
    memory in the daemon)."""
    if device != "auto":
        return device
    if not gpu_driver_possible():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_driver_possible() -> bool:
    """False only where no CUDA device can be: Linux without NVIDIA's driver (nor WSL's GPU)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg"))


# What ``precision = "auto"`` runs on a CPU, decided by measurement (benchmarks/README.md):
# torch dynamic int8 (per-channel int8 weights, activations quantised per batch) is about
# 1.5-2x faster but fails the dense accuracy gate (mean cosine 0.976 < 0.995 to fp32 on
# all-MiniLM-L6-v2, tests/test_fastpath.py), and bf16 autocast passes it but was slower than
# fp32 on the AVX512-BF16 (no AMX) CPU measured. So auto stays fp32, with the fast path's
# token-budget batching; int8 and bf16 are there to be chosen explicitly.
CPU_AUTO_PRECISION = "fp32"

# Padded tokens (batch x longest input) per forward pass on the fast path; inputs are
# grouped by length so the padding waste stays small.
TOKEN_BUDGET = 4096


CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags (the first ``flags`` line of ``cpuinfo``: x86 Linux); an empty
    set where there is none (other architectures), None where it cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                set())


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    return bool((cpu_flags() or set()) & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU has AMX tiles (``amx_bf16`` / ``amx_int8``), on which OpenVINO's int8
    embedder with bf16 float parts computed wrong vectors (``openvino.float_arithmetic``)."""
    return bool((cpu_flags(cpuinfo) or set()) & {"amx_bf16", "amx_int8"})


def int8_available() -> bool:
    import torch

    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "onednn"))


def resolve_backend(backend: str, device: str) -> tuple[str, list[str]]:
    """What runs the transformers: ``openvino`` (converted once, CPU only) or ``torch``
    (FlagEmbedding's modules: the reference, and the GPU path). ``auto`` is OpenVINO on the
    CPU when it is installed, torch on a GPU."""
    from ragd.models import openvino as ovb

    notes: list[str] = []
    gpu = device.startswith("cuda")
    if backend == "auto":
        return ("openvino" if not gpu and ovb.available() else "torch"), notes
    if backend == "openvino" and gpu:
        notes.append("backend openvino runs on the CPU only; using torch on the GPU")
        return "torch", notes
    if backend == "openvino" and not ovb.available():
        notes.append("backend openvino: the openvino package is not installed; using torch")
        return "torch", notes
    return backend, notes


# CPU flags of native int8 dot products: VNNI (AVX512-VNNI, AVX-VNNI) or AMX.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_int8_dot(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU multiplies int8 natively (``INT8_DOT_FLAGS``). False only for an x86 CPU
    whose flags say so (AVX2 without VNNI); True where they cannot be read (other systems,
    other architectures), as before this check."""
    flags = cpu_flags(cpuinfo)
    if not flags or "avx2" not in flags:
        return True
    return any(f in flags for f in INT8_DOT_FLAGS)


def cpu_shows_int8_dot(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU's flags show int8 dot products (``INT8_DOT_FLAGS``); False where they
    cannot be read or name none."""
    return bool((cpu_flags(cpuinfo) or set()) & set(INT8_DOT_FLAGS))


def openvino_auto_precision(role: str, cpuinfo: Path = CPUINFO) -> str:
    """What ``precision = "auto"`` runs with the OpenVINO backend, per role, decided by the
    accuracy gates in tests/test_openvino.py and the speed in benchmarks/README.md.

    Static int8 where the CPU multiplies int8 natively (VNNI or AMX); elsewhere int8 weights
    with fp32 arithmetic ("w8"), the same weight memory at about fp32's speed (on an AVX2-only
    CPU static int8 ran at 0.48-0.50 of fp32's speed and w8 at 0.91-0.95, benchmarks/runtimes.py).

    Embedder: int8 is 3.6x fp32 in a bare BGE-M3 forward pass on a VNNI CPU; where the flags
    cannot be read (other systems and architectures) it stays int8, as before this check, so
    such an index keeps its vectors. Reranker: recipe 6's static int8 passes the rank gate
    (0.986-0.990 on long passages, full-size random reranker) and ran at 2.5x w8 on a 2-core
    AMX CPU (1,041 against 418 tokens/s, benchmarks/inference.py); it is chosen only where the
    flags show VNNI or AMX, since the reranker has no stored vectors to keep and int8 without
    those instructions is no faster."""
    if role == "reranker":
        return "int8" if cpu_shows_int8_dot(cpuinfo) else "w8"
    return "int8" if cpu_has_int8_dot(cpuinfo) else "w8"


def resolve_precision(precision: str, device: str, backend: str = "torch", role: str = "embedder") -> tuple[
        str, list[str]]:
    """The precision a model runs in on ``device`` (fp32 / fp16 / bf16 / int8), and notes when
    the setting cannot be met. On a GPU FlagEmbedding's fp16/bf16 switches apply; on the CPU
    ragd's fast path runs fp32, bf16 or int8 (OpenVINO static int8, or torch dynamic int8)."""
    notes: list[str] = []
    gpu = device.startswith("cuda")
    if precision == "auto":
        if gpu:
            precision = "fp16"
        elif backend == "openvino":
            precision = openvino_auto_precision(role)
        else:
            precision = CPU_AUTO_PRECISION
    if precision == "int8" and gpu:
        notes.append("precision int8 runs on the CPU only; using fp16 on the GPU")
        precision = "fp16"
    if precision == "int8" and backend == "torch" and not int8_available():
        notes.append("precision int8 needs torch's x86/fbgemm quantised kernels; using fp32")
        precision = "fp32"
    if precision == "fp16" and not gpu:
        notes.append("precision fp16 needs a GPU; using fp32 on the CPU")
        precision = "fp32"
    if precision == "bf16" and not gpu and not cpu_has_bf16():
        notes.append("precision bf16: this CPU has no native bf16 (AVX512-BF16/AMX), expect it to be slow")
    return precision, notes


def model_id_for(model_id: str, precision: str, backend: str, cpuinfo: Path = CPUINFO) -> str:
    """Vectors from a reduced precision differ from fp32 ones: they get their own embeddings
    in the catalog instead of mixing with fp32 document vectors. On a CPU with AMX the int8
    embedder's vectors are ``+ov-int8-f32``: earlier versions computed its float parts in bf16
    there, which gave wrong vectors (``openvino.float_arithmetic``), and those are not mixed in
    but embedded again."""
    if precision not in ("int8", "w8", "bf16"):
        return model_id
    if (precision, backend) == ("int8", "openvino") and cpu_has_amx(cpuinfo):
        return f"{model_id}+ov-int8-f32"
    return f"{model_id}+{'ov-' if backend == 'openvino' else ''}{precision}"


def precision_flags(precision: str, device: str) -> tuple[dict[str, bool], list[str]]:
    """FlagEmbedding's fp16/bf16 switches for a precision setting, and notes when unmet.

    On the CPU the weights stay fp32 (bf16 and int8 are applied by ragd's own loop)."""
    mode, notes = resolve_precision(precision, device)
    gpu = device.startswith("cuda")
    return {"use_fp16": gpu and mode == "fp16", "use_bf16": gpu and mode == "bf16"}, notes


def quantize_int8(module: Any) -> None:
    """Replace ``module``'s Linear layers by dynamically quantised int8 ones, in place."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice for quantised tensors
        # Per-channel weight scales: mean cosine 0.976 to fp32 on MiniLM against 0.935 per tensor.
        torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def autocast(mode: str, device: str) -> Any:
    """bf16 autocast on the CPU for ``mode == "bf16"``, else a no-op context."""
    import contextlib

    import torch

    if mode == "bf16" and not device.startswith("cuda"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# OpenVINO: batches pad to a multiple of this many tokens, so shapes repeat and the compiled
# kernels for a shape are reused (a new shape costs ~10% more on its first run).
SHAPE_STEP = 16
# OpenVINO runs even one 128-token text near full speed, so a batch only takes texts whose
# padding wastes at most this fraction of its tokens, and batches stay small: one compiled
# model serves indexing and searches, so a query embedding waits for the batch in hand
# (4,096 tokens took ~5 s; 512 about 0.6 s, at 2-7% less throughput: batch 1 x 400 tokens
# measured 836 tokens/s against 896 at 4 x 400).
MAX_PADDING_WASTE = 0.08
OPENVINO_TOKEN_BUDGET = 512


def budget_batches(
    lengths: Sequence[int], max_items: int, budget: int = TOKEN_BUDGET, max_waste: float | None = None,
    step: int = 1,
) -> list[list[int]]:
    """Indices grouped longest first so that each batch's padded size (items x longest, rounded
    up to ``step``) stays within ``budget`` tokens and ``max_items`` items (a longer input goes
    alone), and, with ``max_waste``, padding is at most that fraction of the batch's tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        longest = -(-(lengths[current[0]] if current else lengths[i]) // step) * step
        padded = (len(current) + 1) * longest
        if current and (padded > budget or len(current) >= max_items
                        or (max_waste is not None and 1 - (real + lengths[i]) / padded > max_waste)):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


def backend_batches(lengths: Sequence[int], max_items: int, *, openvino: bool) -> list[list[int]]:
    """``budget_batches`` as each backend wants them: torch within ``TOKEN_BUDGET``; OpenVINO
    in small, little-padded batches of shapes rounded to ``SHAPE_STEP`` (see above)."""
    if openvino:
        return budget_batches(lengths, max_items, OPENVINO_TOKEN_BUDGET, max_waste=MAX_PADDING_WASTE, step=SHAPE_STEP)
    return budget_batches(lengths, max_items)


Progress = Callable[[str], None]
Batch = tuple[np.ndarray, np.ndarray]  # (input ids, attention mask), padded

def _stderr(message: str) -> None:
    print(f"ragd: {message}", file=sys.stderr, flush=True)


def openvino_location(role: str, folder: Path, model_id: str, precision: str, cache_dir: Path | None) -> Any:
    """Where the converted model for ``precision`` lives (``openvino.IRLocation``)."""
    from ragd.models import openvino as ovb

    kind = precision if precision in ("int8", "w8") else "float"  # fp32 and bf16 compile the same float model
    return ovb.ir_location(cache_dir or ovb.default_cache_dir(), folder, model_id, role, kind)


def convert_once(
    module: Any, location: Any, calibration: Callable[[], list[dict[str, np.ndarray]]], progress: Progress | None,
) -> None:
    """Convert ``module`` to OpenVINO into ``location``, saying so (minutes for a full-size model)."""
    from ragd.models import openvino as ovb

    say = progress or _stderr
    say(f"{location.role} {location.model_id.split('@')[0]}: converting to OpenVINO {location.precision}, once "
        f"(a few minutes for a full-size model; cached in {location.folder})")
    try:
        ovb.convert(module, location.role, location, calibration() if location.precision == "int8" else None, say)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot convert the {location.role} to OpenVINO: {exc}") from exc


# BGE-M3's output heads, saved next to its converted model so that the OpenVINO path
# applies them with numpy, without loading torch or FlagEmbedding.
M3_HEADS = "m3_heads.npz"


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


def declared_pooling(folder: Path) -> str:
    """The pooling a sentence-transformers folder declares (``1_Pooling/config.json``), else CLS."""
    cfg = folder / "1_Pooling" / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        if data.get("pooling_mode_mean_tokens"):
            return "mean"
        if data.get("pooling_mode_lasttoken"):
            return "last_token"
    return "cls"


def declared_max_length(folder: Path, tokenizer: Any) -> int:
    """Largest input length (special tokens included) the model was trained for."""
    limits: list[int] = []
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        value = json.loads(st.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(value, int):
            limits.append(value)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    positions = cfg.get("max_position_embeddings")
    if isinstance(positions, int):
        # RoBERTa-family models reserve padding_idx + 1 positions.
        offset = (cfg.get("pad_token_id", 0) + 1) if cfg.get("model_type") in {"xlm-roberta", "roberta"} else 0
        limits.append(positions - offset)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:
        limits.append(model_max)
    return min(limits) if limits else 512


def is_m3_folder(folder: Path) -> bool:
    return (folder / "colbert_linear.pt").is_file() and (folder / "sparse_linear.pt").is_file()


class _RunsOn:
    """How a model's batches are formed and run: by its OpenVINO ``Runner`` (the CPU path,
    with no torch or FlagEmbedding in memory once converted) or by FlagEmbedding's modules."""

    _runner: Any
    tokenizer: Tokens
    batch_size: int
    device: str
    precision: str

    @property
    def schedules_itself(self) -> bool:
        """On OpenVINO the process's ``Scheduler`` puts searches first (``ModelGate`` is not needed)."""
        return self._runner is not None

    @property
    def parallel(self) -> int:
        """Batches run side by side (the OpenVINO model's streams; 1 with torch)."""
        return int(self._runner.streams) if self._runner is not None else 1

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """On OpenVINO: keep indexing batches out of the process's ``Scheduler`` while inside."""
        return self._runner.scheduler.hold() if self._runner is not None else contextlib.nullcontext()

    def _openvino_runner(self, location: Any) -> Any:
        """The converted model at ``location``, compiled (``openvino.Runner``)."""
        from ragd.models import openvino as ovb

        return ovb.Runner(location, self.precision)

    def _padded_batches(self, ids: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[Batch]]:
        """Positions of ``ids`` grouped as the backend wants them, and each group padded (to
        a multiple of ``SHAPE_STEP`` on OpenVINO) as (input ids, attention mask)."""
        step = SHAPE_STEP if self._runner is not None else None
        batches = backend_batches([len(x) for x in ids], self.batch_size, openvino=step is not None)
        return batches, [self.tokenizer.pad([ids[i] for i in idx], step) for idx in batches]

    def _outputs(
        self, padded: Sequence[Batch], foreground: bool, forward: Callable[[Any], Any]
    ) -> Iterator[tuple[int, Any]]:
        """(position, output) of each padded batch: the OpenVINO model's (a numpy array),
        queued with the scheduler's priority (``foreground`` for searches), or
        ``forward({"input_ids", "attention_mask"})`` with torch (a tensor)."""
        if self._runner is not None:
            yield from self._runner.map(padded, foreground)
            return
        import torch

        for n, (ids, mask) in enumerate(padded):
            yield n, forward({"input_ids": torch.from_numpy(ids).to(self.device),
                              "attention_mask": torch.from_numpy(mask).to(self.device)})


class FlagEmbedder(_RunsOn):
    """BGE-M3 (dense + lexical weights, optional multi-vector) or a dense-only encoder.

    With the OpenVINO backend the model is converted once (FlagEmbedding's modules loaded in
    torch for that) and afterwards runs from its converted form alone, BGE-M3's heads and the
    pooling applied with numpy; with torch FlagEmbedding's own modules run (the reference)."""

    def __init__(
        self,
        folder: Path,
        model_id: str,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 16,
        multi_vector: bool = False,
        backend: str = "auto",
        cache_dir: Path | None = None,
        calibration: Sequence[Path] = (),
        progress: Progress | None = None,
        force_convert: bool = False,
    ) -> None:
        self.device = pick_device(device)
        self.backend, self.notes = resolve_backend(backend, self.device)
        self.precision, notes = resolve_precision(precision, self.device, self.backend, "embedder")
        self.notes += notes
        self.model_id = model_id_for(model_id, self.precision, self.backend)
        self.batch_size = batch_size
        self.m3 = is_m3_folder(folder)
        self.multi_vector = multi_vector and self.m3
        self.has_sparse = self.m3
        self.pooling = "cls" if self.m3 else declared_pooling(folder)
        self._runner: Any = None
        self._model: Any = None
        self._encoder: Any = None
        self._heads: dict[str, np.ndarray] | None = None
        location = None
        if self.backend == "openvino":
            location = openvino_location("embedder", folder, model_id, self.precision, cache_dir)
            converted = not force_convert and location.is_current()
            self._heads = load_m3_heads(location.folder) if converted and self.m3 else None
            if converted and (self._heads is not None or not self.m3):
                self.tokenizer = load_tokens(folder)
                self._limits(folder)
                self._runner = self._openvino_runner(location)
                self.dim = self._probe_dim()
                return
        self._load_flag(folder, precision)
        if location is not None:  # convert (when needed), keep M3's heads, then drop the torch model
            if force_convert or not location.is_current():
                convert_once(self._encoder, location, lambda: self._calibration(calibration), progress)
            if self.m3:
                flag: Any = self._model
                self._heads = m3_heads(flag.model)
                try:
                    save_m3_heads(self._heads, location.folder)
                except OSError as exc:  # e.g. a read-only cache: FlagEmbedding loads again next time
                    self.notes.append(f"cannot save BGE-M3's heads in {location.folder} ({exc}); "
                                      "the next start loads the model through FlagEmbedding again")
            self._model = self._encoder = None
            gc.collect()
            self._runner = self._openvino_runner(location)
        elif self.precision == "int8":
            quantize_int8(self._encoder)  # M3's small heads stay fp32
        self.dim = self._probe_dim()

    def _load_flag(self, folder: Path, precision: str) -> None:
        """FlagEmbedding's model in torch: the reference path, and the source of a conversion."""
        _quiet_imports()
        flags, _ = precision_flags(precision, self.device)
        try:
            if self.m3:
                from FlagEmbedding import BGEM3FlagModel

                self._model = BGEM3FlagModel(str(folder), devices=self.device, normalize_embeddings=True, **flags)
            else:
                from FlagEmbedding import FlagModel

                self._model = FlagModel(str(folder), devices=self.device, pooling_method=self.pooling,
                                        normalize_embeddings=True, **flags)
        except Exception as exc:
            raise ModelLoadError(f"cannot load embedder from {folder}: {exc}") from exc
        self.tokenizer = load_tokens(folder, getattr(self._model.tokenizer, "backend_tokenizer", None))
        self._limits(folder)
        model = self._model.model
        if self.device == "cpu":
            model.float()
        model.to(self.device)
        model.eval()
        self._encoder = model.model if self.m3 else model  # the transformer; M3's heads are on ``model``

    def _limits(self, folder: Path) -> None:
        if self.pooling not in ("cls", "mean"):
            raise ModelLoadError(f"cannot load embedder from {folder}: pooling {self.pooling!r} is not supported "
                                 "(cls and mean are)")
        self._unused = self.tokenizer.unused_ids
        self.input_limit = declared_max_length(folder, self.tokenizer)
        self.max_tokens = self.input_limit - self.tokenizer.num_special()

    def _probe_dim(self) -> int:
        return int(self._encode(["dimension probe"], self.input_limit).dense.shape[1])

    def _calibration(self, paths: Sequence[Path]) -> list[dict[str, np.ndarray]]:
        """Calibration inputs: texts cut to ``CALIBRATION_MAX_TOKENS`` tokens, one per sample."""
        from ragd.models import openvino as ovb

        texts = ovb.calibration_texts_from(paths) if paths else ovb.builtin_calibration_texts()
        if not texts:
            raise ModelLoadError("calibration: no paragraphs of at least 100 characters found")
        limit = min(self.input_limit, ovb.CALIBRATION_MAX_TOKENS)
        samples = []
        for ids in self.tokenizer.ids(ovb.pick_samples(texts, ovb.CALIBRATION_SAMPLES), max_length=limit):
            arr = np.asarray([ids], dtype=np.int64)
            samples.append({"input_ids": arr, "attention_mask": np.ones_like(arr)})
        return samples

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.tokenizer.ids(texts, special=False)]

    def _encode(self, texts: list[str], max_length: int, foreground: bool = True) -> Embeddings:
        """Tokenise once, batch by token budget, and apply FlagEmbedding's post-processing
        (pooling, L2 normalisation, lexical weights = max ReLU weight per token id without
        special tokens, ColBERT vectors without CLS): with numpy on the converted model's hidden
        states, with FlagEmbedding's own modules on torch's. Unlike FlagEmbedding's ``encode``,
        each batch is computed once (``encode`` runs its first batch twice to probe the batch
        size), texts are never truncated silently, and batches hold inputs of similar length
        (at most ``batch_size`` texts). On OpenVINO ``foreground`` batches (queries) go before
        background ones (the writer's documents).
        """
        all_ids = self.tokenizer.ids(texts, max_length=max_length)
        dense_out: list[FloatArray | None] = [None] * len(texts)
        sparse_out: list[SparseWeights] = [{} for _ in texts]
        colbert_out: list[FloatArray | None] = [None] * len(texts)
        batches, padded = self._padded_batches(all_ids)
        for n, hidden in self._outputs(padded, foreground, self._torch_hidden):
            idx = batches[n]
            if self._runner is not None:
                dense, weights, colbert = self._heads_numpy(hidden, *padded[n])
            else:
                dense, weights, colbert = self._heads_torch(hidden, *padded[n])
            for row, i in enumerate(idx):
                dense_out[i] = dense[row]
                if weights is not None:
                    lex: SparseWeights = {}
                    for tok, w in zip(all_ids[i], weights[row].tolist(), strict=False):
                        if w > 0 and tok not in self._unused and w > lex.get(tok, 0.0):
                            lex[tok] = float(w)
                    sparse_out[i] = lex
                if colbert is not None:
                    colbert_out[i] = colbert[row, : len(all_ids[i]) - 1]
        dense_matrix = np.stack([d for d in dense_out if d is not None]).astype(np.float32)
        return Embeddings(
            dense=dense_matrix,
            sparse=sparse_out if self.m3 else None,
            colbert=[c for c in colbert_out if c is not None] if self.multi_vector else None,
        )

    def _heads_numpy(
        self, hidden: np.ndarray, ids: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Dense vectors, token weights and ColBERT vectors from the converted model's hidden
        states: the same arithmetic as FlagEmbedding's M3 heads and pooling."""
        hidden = hidden.astype(np.float32, copy=False)
        if self.pooling == "mean":
            m = mask[:, :, None].astype(np.float32)
            dense = (hidden * m).sum(axis=1) / m.sum(axis=1)
        else:
            dense = hidden[:, 0]
        dense = l2_normalize(dense)
        if not self.m3:
            return dense, None, None
        heads = self._heads
        assert heads is not None
        weights = np.maximum(hidden @ heads["sparse_weight"].T + heads["sparse_bias"], 0.0)[..., 0]
        colbert = None
        if self.multi_vector:
            vecs = (hidden[:, 1:] @ heads["colbert_weight"].T + heads["colbert_bias"]) * mask[:, 1:, None]
            colbert = l2_normalize(vecs.astype(np.float32))
        return dense, weights, colbert

    def _heads_torch(
        self, hidden: Any, ids: np.ndarray, mask_np: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The same outputs through FlagEmbedding's own modules (the reference)."""
        import torch

        model = self._model.model
        mask = torch.from_numpy(mask_np).to(self.device)
        with torch.inference_mode(), autocast(self.precision, self.device):
            weights = colbert = None
            if self.m3:
                dense = model._dense_embedding(hidden, mask)
                sparse_vecs = model._sparse_embedding(hidden, torch.from_numpy(ids).to(self.device),
                                                      return_embedding=False)
                weights = sparse_vecs.squeeze(-1).float().cpu().numpy()
                if self.multi_vector:
                    colbert = torch.nn.functional.normalize(
                        model._colbert_embedding(hidden, mask), dim=-1).float().cpu().numpy()
            else:
                dense = self._model.pooling(hidden, mask)
            dense = torch.nn.functional.normalize(dense.float(), dim=-1).cpu().numpy()
        return dense, weights, colbert

    def _torch_hidden(self, enc: Any) -> Any:
        import torch

        with torch.inference_mode(), autocast(self.precision, self.device):
            return self._encoder(**enc, return_dict=True).last_hidden_state

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        if not texts:
            return Embeddings(dense=np.zeros((0, self.dim), dtype=np.float32))
        return self._encode(list(texts), self.input_limit, foreground=False)

    def embed_query(self, text: str) -> Embeddings:
        n = self.count_tokens([text])[0]
        if n > self.max_tokens:
            raise UsageError(f"query is too long: {n} tokens, the embedder takes at most {self.max_tokens}")
        return self._encode([text], self.input_limit)

    def embed_queries(self, texts: Sequence[str]) -> Embeddings:
        """Several query inputs at a search's priority (a long query's windows), each cut to
        the input limit."""
        return self._encode(list(texts), self.input_limit)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each of the embedder's tokens in ``text`` (no special tokens)."""
        return self.tokenizer.offsets(text)


class FlagCrossEncoder(_RunsOn):
    """bge-reranker style cross-encoder: FlagEmbedding's FlagReranker modules.

    On a GPU scores come from ``FlagReranker.compute_score`` (the reference). On the CPU ragd
    runs its own loop over the same inputs (query cut to 3/4 of ``max_length`` tokens,
    ``<s> query </s></s> passage </s>`` with only the passage cut to ``max_length``, sigmoid
    of the logit), tokenising once and batching by token budget: through the converted
    OpenVINO model (torch and FlagEmbedding then only load to convert it, once) or
    FlagEmbedding's modules in ``self.precision`` (fp32, bf16 autocast or int8 encoder weights).
    """

    def __init__(
        self,
        folder: Path,
        model_id: str,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 16,
        backend: str = "auto",
        cache_dir: Path | None = None,
        calibration: Sequence[Path] = (),
        progress: Progress | None = None,
        force_convert: bool = False,
    ) -> None:
        self.model_id = model_id
        self.device = pick_device(device)
        self.backend, self.notes = resolve_backend(backend, self.device)
        self.precision, notes = resolve_precision(precision, self.device, self.backend, "reranker")
        self.notes += notes
        self.batch_size = batch_size
        self.own_loop = not self.device.startswith("cuda")
        self._runner: Any = None
        self._model: Any = None
        location = None
        if self.backend == "openvino":
            location = openvino_location("reranker", folder, model_id, self.precision, cache_dir)
            if not force_convert and location.is_current():
                self.tokenizer = load_tokens(folder)
                self._limits(folder)
                self._runner = self._openvino_runner(location)
                return
        _quiet_imports()
        flags, _ = precision_flags(precision, self.device)
        try:
            from FlagEmbedding import FlagReranker

            self._model = FlagReranker(
                str(folder), devices=self.device, use_fp16=flags["use_fp16"], use_bf16=flags["use_bf16"]
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load reranker from {folder}: {exc}") from exc
        self.tokenizer = load_tokens(folder, getattr(self._model.tokenizer, "backend_tokenizer", None))
        self._limits(folder)
        if not self.own_loop:
            return
        self._model.model.float().to(self.device).eval()
        if location is not None:  # convert, then drop the torch model
            convert_once(self._model.model, location, lambda: self._calibration(calibration), progress)
            self._model = None
            gc.collect()
            self._runner = self._openvino_runner(location)
        elif self.precision == "int8":
            quantize_int8(self._model.model.base_model)  # the encoder; the classification head stays fp32

    def _limits(self, folder: Path) -> None:
        self.max_length = min(512, declared_max_length(folder, self.tokenizer))
        self.query_max_length = self.max_length * 3 // 4

    def _calibration(self, paths: Sequence[Path]) -> list[dict[str, np.ndarray]]:
        """Calibration pairs built the way ``score`` builds its inputs: a question-like first
        sentence of one text with its own text (relevant) or another text (not relevant)."""
        from ragd.models import openvino as ovb

        texts = ovb.calibration_texts_from(paths) if paths else ovb.builtin_calibration_texts()
        if len(texts) < 2:
            raise ModelLoadError("calibration: fewer than two paragraphs of at least 100 characters found")
        picked = ovb.pick_samples(texts, ovb.CALIBRATION_SAMPLES)
        samples = []
        for n, text in enumerate(picked):
            query = " ".join(re.split(r"(?<=[.!?。！？])\s*", text, maxsplit=1)[0].split()[:24])
            passage = text if n % 2 == 0 else picked[(n + len(picked) // 2) % len(picked)]
            ids = self._pair_inputs(query, [passage], max_length=min(self.max_length, ovb.CALIBRATION_MAX_TOKENS))[0]
            arr = np.asarray([ids], dtype=np.int64)
            samples.append({"input_ids": arr, "attention_mask": np.ones_like(arr)})
        return samples

    def _pair_inputs(self, query: str, passages: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """``<s> query </s></s> passage </s>`` token ids: query cut to 3/4 of ``max_length``,
        passage cut to what is left (FlagReranker's rules)."""
        return self.tokenizer.pairs(query, passages, max_length or self.max_length)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each of the reranker's tokens in ``text`` (no special tokens)."""
        return self.tokenizer.offsets(text)

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        if not self.own_loop:
            pairs = [(query, p) for p in passages]
            scores = self._model.compute_score(
                pairs, batch_size=min(self.batch_size, len(pairs)), max_length=self.max_length, normalize=True
            )
            if isinstance(scores, float):
                scores = [scores]
            return [float(s) for s in scores]
        inputs = self._pair_inputs(query, passages)
        out = [0.0] * len(inputs)
        batches, padded = self._padded_batches(inputs)
        # A search's pairs go before indexing batches.
        for n, logits in self._outputs(padded, True, self._torch_logits):
            values = np.asarray(logits, dtype=np.float64).reshape(-1)
            # The sigmoid, written so that no logit overflows exp().
            for i, v in zip(batches[n], (0.5 * (1.0 + np.tanh(0.5 * values))).tolist(), strict=True):
                out[i] = float(v)
        return out

    def _torch_logits(self, enc: Any) -> np.ndarray:
        import torch

        with torch.inference_mode(), autocast(self.precision, self.device):
            return self._model.model(**enc, return_dict=True).logits.float().cpu().numpy()
