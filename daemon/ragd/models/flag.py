"""FlagEmbedding backends: the reference implementation for BGE-M3, dense models and the
bge-reranker cross-encoder. Heavy imports happen here and nowhere else."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragd.errors import ModelLoadError, UsageError
from ragd.models.base import Embeddings, FloatArray, SparseWeights

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
    """``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


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


# What ``precision = "auto"`` runs with the OpenVINO backend, per role, decided by the
# accuracy gates in tests/test_openvino.py and the speed in benchmarks/README.md: static int8
# for the embedder; for the reranker int8 weights with fp32 arithmetic ("w8"): 0.996 rank
# agreement with fp32 in a quarter of fp32's weight memory. Static int8 passes the gate since
# reranker recipe 6 (0.986-0.990 on long passages, full-size random reranker) but its speed and
# the daemon's memory with it (+250 MB for the float first row) are not yet measured on a VNNI CPU.
OPENVINO_AUTO_PRECISION = {"embedder": "int8", "reranker": "w8"}


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
            precision = OPENVINO_AUTO_PRECISION[role]
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


def model_id_for(model_id: str, precision: str, backend: str) -> str:
    """Vectors from a reduced precision differ from fp32 ones: they get their own embeddings
    in the catalog instead of mixing with fp32 document vectors."""
    if precision not in ("int8", "bf16"):
        return model_id
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

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model",
                   "vocab.txt", "added_tokens.json")


class SharedTokenizer:
    """A tokenizer with the lock that guards it: a fast tokenizer raises "Already borrowed"
    when two threads use it at once (the daemon's writer chunks while a search embeds its
    query)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.lock = threading.Lock()


_tokenizers: weakref.WeakValueDictionary[str, SharedTokenizer] = weakref.WeakValueDictionary()
_tokenizers_lock = threading.Lock()


def shared_tokenizer(folder: Path, loaded: Any) -> SharedTokenizer:
    """One tokenizer object for model folders whose tokenizer files are identical (BGE-M3 and
    bge-reranker-v2-m3 share XLM-R's: ~140 MB each in memory); ``loaded`` is this folder's own,
    kept when no other folder has the same files."""
    digest = hashlib.blake2b(type(loaded).__name__.encode(), digest_size=16)
    for name in TOKENIZER_FILES:
        try:
            data = (folder / name).read_bytes()
        except OSError:
            continue
        digest.update(name.encode() + b"\0" + data)
    key = digest.hexdigest()
    with _tokenizers_lock:
        shared = _tokenizers.get(key)
        if shared is None:
            shared = _tokenizers[key] = SharedTokenizer(loaded)
        return shared


def _stderr(message: str) -> None:
    import sys

    print(f"ragd: {message}", file=sys.stderr, flush=True)


def openvino_runner(
    module: Any,
    role: str,
    folder: Path,
    model_id: str,
    precision: str,
    cache_dir: Path | None,
    calibration: Callable[[], list[dict[str, np.ndarray]]],
    progress: Progress | None,
    release: Callable[[], None],
    *,
    force: bool = False,
) -> Any:
    """The cached OpenVINO model for ``module`` (converted first when missing or stale).
    ``release`` drops the caller's references to ``module`` once it is no longer needed,
    before the converted model is compiled, so its float weights are freed first."""
    from ragd.models import openvino as ovb

    kind = precision if precision in ("int8", "w8") else "float"  # fp32 and bf16 compile the same float model
    location = ovb.ir_location(cache_dir or ovb.default_cache_dir(), folder, model_id, role, kind)
    if force or not location.is_current():
        say = progress or _stderr
        say(f"{role} {model_id.split('@')[0]}: converting to OpenVINO {kind}, once "
            f"(a few minutes for a full-size model; cached in {location.folder})")
        try:
            ovb.convert(module, role, location, calibration() if kind == "int8" else None, say)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot convert the {role} to OpenVINO: {exc}") from exc
    del module
    release()
    gc.collect()
    return ovb.Runner(location, precision)


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
    """How a model's batches are formed and run, by torch or by its OpenVINO ``Runner``."""

    _runner: Any
    _tok_lock: threading.Lock
    tokenizer: Any
    batch_size: int
    device: str

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

    def _padded_batches(self, ids: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[Any]]:
        """Positions of ``ids`` grouped as the backend wants them, and each group padded (to
        a multiple of ``SHAPE_STEP`` on OpenVINO) with its attention mask, on the device."""
        step = SHAPE_STEP if self._runner is not None else None
        batches = backend_batches([len(x) for x in ids], self.batch_size, openvino=step is not None)
        with self._tok_lock:
            padded = [self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, padding=True, return_tensors="pt",
                                         pad_to_multiple_of=step).to(self.device) for idx in batches]
        return batches, padded

    def _outputs(
        self, padded: Sequence[Any], foreground: bool, forward: Callable[[Any], Any]
    ) -> Iterator[tuple[int, Any]]:
        """(position, output tensor) of each padded batch: the OpenVINO model's, queued with
        the scheduler's priority (``foreground`` for searches), or ``forward(batch)`` with torch."""
        import torch

        if self._runner is None:
            for n, enc in enumerate(padded):
                yield n, forward(enc)
            return
        for n, out in self._runner.map(
                [(enc["input_ids"].numpy(), enc["attention_mask"].numpy()) for enc in padded], foreground):
            yield n, torch.from_numpy(out)


class FlagEmbedder(_RunsOn):
    """BGE-M3 (dense + lexical weights, optional multi-vector) or a dense-only encoder."""

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
        _quiet_imports()
        self.device = pick_device(device)
        self.backend, self.notes = resolve_backend(backend, self.device)
        self.precision, notes = resolve_precision(precision, self.device, self.backend, "embedder")
        self.notes += notes
        self.model_id = model_id_for(model_id, self.precision, self.backend)
        flags, _ = precision_flags(precision, self.device)
        self.batch_size = batch_size
        self.m3 = is_m3_folder(folder)
        self.multi_vector = multi_vector and self.m3
        self.has_sparse = self.m3
        try:
            if self.m3:
                from FlagEmbedding import BGEM3FlagModel

                self._model: Any = BGEM3FlagModel(
                    str(folder), devices=self.device, normalize_embeddings=True, **flags
                )
            else:
                from FlagEmbedding import FlagModel

                self._model = FlagModel(
                    str(folder),
                    devices=self.device,
                    pooling_method=declared_pooling(folder),
                    normalize_embeddings=True,
                    **flags,
                )
        except Exception as exc:
            raise ModelLoadError(f"cannot load embedder from {folder}: {exc}") from exc
        self._shared = shared_tokenizer(folder, self._model.tokenizer)
        self.tokenizer = self._model.tokenizer = self._shared.tokenizer
        self._tok_lock = self._shared.lock
        model = self._model.model
        if self.device == "cpu":
            model.float()
        model.to(self.device)
        model.eval()
        self._encoder: Any = model.model if self.m3 else model  # the transformer; M3's heads are on ``model``
        self._unused = self._unused_token_ids()
        self.input_limit = declared_max_length(folder, self.tokenizer)
        special = len(self.tokenizer("", add_special_tokens=True)["input_ids"])
        self.max_tokens = self.input_limit - special
        self._runner: Any = None
        if self.backend == "openvino":
            def release() -> None:  # the converted model replaces the float weights
                self._encoder = None
                if self.m3:
                    self._model.model.model = None
                else:
                    self._model.model = None

            self._runner = openvino_runner(
                self._encoder, "embedder", folder, model_id, self.precision, cache_dir,
                lambda: self._calibration(calibration), progress, release, force=force_convert,
            )
        elif self.precision == "int8":
            quantize_int8(self._encoder)  # M3's small heads stay fp32
        self.dim = int(self._encode(["dimension probe"], self.input_limit).dense.shape[1])

    def _calibration(self, paths: Sequence[Path]) -> list[dict[str, np.ndarray]]:
        """Calibration inputs: texts cut to ``CALIBRATION_MAX_TOKENS`` tokens, one per sample."""
        from ragd.models import openvino as ovb

        texts = ovb.calibration_texts_from(paths) if paths else ovb.builtin_calibration_texts()
        if not texts:
            raise ModelLoadError("calibration: no paragraphs of at least 100 characters found")
        samples = []
        limit = min(self.input_limit, ovb.CALIBRATION_MAX_TOKENS)
        for text in ovb.pick_samples(texts, ovb.CALIBRATION_SAMPLES):
            with self._tok_lock:
                enc = self.tokenizer(text, truncation=True, max_length=limit, return_tensors="np")
            samples.append({"input_ids": enc["input_ids"].astype(np.int64),
                            "attention_mask": enc["attention_mask"].astype(np.int64)})
        return samples

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        with self._tok_lock:
            ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def _unused_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for name in ("cls_token", "eos_token", "pad_token", "unk_token"):
            token = self.tokenizer.special_tokens_map.get(name)
            if token is not None:
                ids.add(int(self.tokenizer.convert_tokens_to_ids(token)))
        return ids

    def _encode(self, texts: list[str], max_length: int, foreground: bool = True) -> Embeddings:
        """Encode with FlagEmbedding's modules, tokenising once and batching by token budget.

        Same modules and post-processing as FlagEmbedding's ``encode`` (pooling, L2
        normalisation, lexical weights = max ReLU weight per token id without special tokens,
        ColBERT vectors without CLS), but each batch is computed once (``encode`` runs its
        first batch twice to probe the batch size), texts are never truncated silently, and
        batches hold inputs of similar length within ``TOKEN_BUDGET`` padded tokens (at most
        ``batch_size`` texts). ``self.precision`` picks fp32, bf16 autocast or int8 weights.
        On OpenVINO ``foreground`` batches (queries) go before background ones (the writer's
        documents).
        """
        import torch

        with self._tok_lock:
            encoded = self.tokenizer(texts, truncation=True, max_length=max_length)
        all_ids: list[list[int]] = encoded["input_ids"]
        dense_out: list[FloatArray | None] = [None] * len(texts)
        sparse_out: list[SparseWeights] = [{} for _ in texts]
        colbert_out: list[FloatArray | None] = [None] * len(texts)
        model = self._model.model
        batches, padded = self._padded_batches(all_ids)
        for n, hidden in self._outputs(padded, foreground, self._torch_hidden):
            idx = batches[n]
            enc = padded[n]
            with torch.inference_mode(), autocast(self.precision, self.device):
                mask = enc["attention_mask"]
                if self.m3:
                    # FlagEmbedding's M3 heads on the hidden states, as its forward() applies them.
                    dense = model._dense_embedding(hidden, mask)
                    sparse_vecs = model._sparse_embedding(hidden, enc["input_ids"], return_embedding=False)
                    if self.multi_vector:
                        colbert_vecs = torch.nn.functional.normalize(model._colbert_embedding(hidden, mask), dim=-1)
                else:
                    dense = self._model.pooling(hidden, mask)
                dense = torch.nn.functional.normalize(dense.float(), dim=-1).cpu().numpy()
                for row, i in enumerate(idx):
                    dense_out[i] = dense[row]
                if self.m3:
                    weights = sparse_vecs.squeeze(-1).float().cpu().numpy()
                    for row, i in enumerate(idx):
                        lex: SparseWeights = {}
                        for tok, w in zip(all_ids[i], weights[row].tolist(), strict=False):
                            if w > 0 and tok not in self._unused and w > lex.get(tok, 0.0):
                                lex[tok] = float(w)
                        sparse_out[i] = lex
                if self.multi_vector:
                    vecs = colbert_vecs.float().cpu().numpy()
                    for row, i in enumerate(idx):
                        colbert_out[i] = vecs[row, : len(all_ids[i]) - 1]
        dense_matrix = np.stack([d for d in dense_out if d is not None]).astype(np.float32)
        return Embeddings(
            dense=dense_matrix,
            sparse=sparse_out if self.m3 else None,
            colbert=[c for c in colbert_out if c is not None] if self.multi_vector else None,
        )

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


class FlagCrossEncoder(_RunsOn):
    """bge-reranker style cross-encoder: FlagEmbedding's FlagReranker modules.

    On a GPU scores come from ``FlagReranker.compute_score`` (the reference). On the CPU ragd
    runs its own loop over the same modules and the same inputs (query cut to 3/4 of
    ``max_length`` tokens, ``<s> query </s></s> passage </s>`` with only the passage cut to
    ``max_length``, sigmoid of the logit), tokenising once, batching by token budget and
    running in ``self.precision`` (fp32, bf16 autocast or int8 encoder weights).
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
        _quiet_imports()
        self.model_id = model_id
        self.device = pick_device(device)
        self.backend, self.notes = resolve_backend(backend, self.device)
        self.precision, notes = resolve_precision(precision, self.device, self.backend, "reranker")
        self.notes += notes
        flags, _ = precision_flags(precision, self.device)
        self.batch_size = batch_size
        try:
            from FlagEmbedding import FlagReranker

            self._model: Any = FlagReranker(
                str(folder), devices=self.device, use_fp16=flags["use_fp16"], use_bf16=flags["use_bf16"]
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load reranker from {folder}: {exc}") from exc
        self._shared = shared_tokenizer(folder, self._model.tokenizer)
        self.tokenizer = self._model.tokenizer = self._shared.tokenizer
        self._tok_lock = self._shared.lock
        self.max_length = min(512, declared_max_length(folder, self.tokenizer))
        self.query_max_length = self.max_length * 3 // 4
        self.own_loop = not self.device.startswith("cuda")
        self._runner: Any = None
        if self.own_loop:
            self._model.model.float().to(self.device).eval()
            if self.backend == "openvino":
                def release() -> None:  # the converted model replaces the float weights
                    self._model.model = None

                self._runner = openvino_runner(
                    self._model.model, "reranker", folder, model_id, self.precision, cache_dir,
                    lambda: self._calibration(calibration), progress, release, force=force_convert,
                )
            elif self.precision == "int8":
                quantize_int8(self._model.model.base_model)  # the encoder; the classification head stays fp32

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
        tok = self.tokenizer
        limit = max_length or self.max_length
        with self._tok_lock:
            q_ids = tok(query, add_special_tokens=False, truncation=True,
                        max_length=limit * 3 // 4)["input_ids"]
            room = max(1, limit - len(q_ids) - tok.num_special_tokens_to_add(pair=True))
            p_ids = tok(list(passages), add_special_tokens=False)["input_ids"]
        return [tok.build_inputs_with_special_tokens(q_ids, ids[:room]) for ids in p_ids]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each of the reranker's tokens in ``text`` (no special tokens)."""
        with self._tok_lock:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"]]

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
        import torch

        inputs = self._pair_inputs(query, passages)
        out = [0.0] * len(inputs)
        batches, padded = self._padded_batches(inputs)
        # A search's pairs go before indexing batches.
        for n, logits in self._outputs(padded, True, self._torch_logits):
            for i, v in zip(batches[n], torch.sigmoid(logits.view(-1).float()).tolist(), strict=True):
                out[i] = float(v)
        return out

    def _torch_logits(self, enc: Any) -> Any:
        import torch

        with torch.inference_mode(), autocast(self.precision, self.device):
            return self._model.model(**enc, return_dict=True).logits
