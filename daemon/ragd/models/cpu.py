"""What the machine offers the models, and the policy built on it: the device, the backend,
the precision per backend and role, what OpenVINO's float operations compute in, and the
model id each precision's vectors are stored under.

Every choice here was decided by measurement: docs/performance.md, "Accuracy gates" and
"Numbers". torch and OpenVINO are imported only where a question needs them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""CPU flags of native int8 dot products: VNNI (AVX512-VNNI, AVX-VNNI) or AMX."""
DYNAMIC = "int8-dynamic"
"""ONNX Runtime's dynamic int8 (``openvino.onnx``), run with the converted models."""
CPU_AUTO_PRECISION = "fp32"
"""``precision = "auto"`` with torch on a CPU: torch's dynamic int8 fails the dense gate and
bf16 autocast was slower (docs/performance.md, "Accuracy gates")."""


def pick_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU. torch is imported only where a
    GPU driver could be there: on the CPU the converted models run without it."""
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


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags (the first ``flags`` line of ``cpuinfo``: x86 Linux); an empty
    set where there is none (other architectures), None where it cannot be read."""
    value = _cpuinfo_field(cpuinfo, "flags")
    return None if value is None else set(value.split())


def _cpuinfo_field(cpuinfo: Path, name: str) -> str | None:
    """The value of the first ``name`` line of ``cpuinfo``; "" where there is none, None where
    the file cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name)), "")


def cpu_vendor(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's vendor (``GenuineIntel``, ``AuthenticAMD``; the first ``vendor_id`` line of
    ``cpuinfo``), or "" where there is none or it cannot be read."""
    return _cpuinfo_field(cpuinfo, "vendor_id") or ""


def dynamic_int8_embeds_fastest(cpuinfo: Path = CPUINFO) -> bool:
    """Whether ONNX Runtime's dynamic int8 embeds faster than OpenVINO's static int8 on this CPU
    with int8 dot products: an Intel one with AVX512-VNNI and no AMX. On such a Xeon it ran at
    1.11x the fastest peer against static int8's 0.80x; on AMD's AVX512-VNNI, ONNX Runtime's
    int8 ran at 0.64-0.75x OpenVINO's (docs/performance.md, "An Intel Xeon with AVX-512 VNNI")."""
    return (cpu_vendor(cpuinfo) == "GenuineIntel" and "avx512_vnni" in (cpu_flags(cpuinfo) or set())
            and not cpu_has_amx(cpuinfo))


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    return bool((cpu_flags() or set()) & {"avx512_bf16", "amx_bf16"})


def bf16_attention_pays(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the int8 reranker's attention runs faster in bf16 than in f32 on this CPU: with
    AMX, or with AVX512-BF16 on a CPU that is not Intel's (an AMD EPYC ran it ~1.9x faster in
    bf16). On Intel's AVX512-BF16 without AMX it measured slower
    (docs/performance.md, "The reranker's attention in f32 on Intel's AVX512-BF16")."""
    flags = cpu_flags(cpuinfo) or set()
    return cpu_has_amx(cpuinfo) or ("avx512_bf16" in flags and cpu_vendor(cpuinfo) != "GenuineIntel")


def cpu_has_amx(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU has AMX tiles (``amx_bf16`` / ``amx_int8``), where the int8 embedder's
    float parts must stay f32 (``float_arithmetic``)."""
    return bool((cpu_flags(cpuinfo) or set()) & {"amx_bf16", "amx_int8"})


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


def int8_available() -> bool:
    """Whether torch has the quantised kernels its dynamic int8 needs."""
    import torch

    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "onednn"))


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(backend: str, device: str) -> tuple[str, list[str]]:
    """What runs the transformers: ``openvino`` (converted once, CPU only) or ``torch``
    (FlagEmbedding's modules: the reference, and the GPU path). ``auto`` is OpenVINO on the
    CPU when it is installed, torch on a GPU. Notes say why a setting is not met."""
    notes: list[str] = []
    gpu = device.startswith("cuda")
    if backend == "auto":
        return ("openvino" if not gpu and openvino_installed() else "torch"), notes
    if backend == "openvino" and gpu:
        notes.append("backend openvino runs on the CPU only; using torch on the GPU")
        return "torch", notes
    if backend == "openvino" and not openvino_installed():
        notes.append("backend openvino: the openvino package is not installed; using torch")
        return "torch", notes
    return backend, notes


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def openvino_auto_precision(role: str, cpuinfo: Path = CPUINFO) -> str:
    """What ``precision = "auto"`` runs with the OpenVINO backend, per role: static int8
    where the CPU multiplies int8 natively (VNNI or AMX), but for the embedder on an Intel CPU
    with AVX512-VNNI and no AMX (``dynamic_int8_embeds_fastest``). Elsewhere the embedder runs ONNX
    Runtime's dynamic int8 (``int8-dynamic``; int8 weights with fp32 arithmetic, ``w8``,
    without onnxruntime), whose integer kernels are the fastest there, and the reranker
    ``w8`` (dynamic int8 loses its ranking; fp32 is faster but holds four times the memory,
    ``models.reranker_precision``). The embedder also stays int8 where the flags
    cannot be read, so such an index keeps its vectors; the reranker, whose scores are not
    stored, needs the flags to show VNNI or AMX. The gates and speeds: docs/performance.md,
    "Accuracy gates" and "A CPU without VNNI"."""
    if role == "reranker":
        return "int8" if cpu_shows_int8_dot(cpuinfo) else "w8"
    if cpu_has_int8_dot(cpuinfo):
        return DYNAMIC if dynamic_int8_embeds_fastest(cpuinfo) and onnxruntime_installed() else "int8"
    return DYNAMIC if onnxruntime_installed() else "w8"


def resolve_precision(precision: str, device: str, backend: str = "torch", role: str = "embedder") -> tuple[
        str, list[str]]:
    """The precision a model runs in on ``device`` (fp32 / fp16 / bf16 / int8 / w8 /
    int8-dynamic), and notes
    when the setting cannot be met. On a GPU FlagEmbedding's fp16/bf16 switches apply; on the
    CPU ragd's loop runs fp32, bf16 or int8 (OpenVINO static int8, or torch dynamic int8)."""
    notes: list[str] = []
    gpu = device.startswith("cuda")
    if precision == "auto":
        if gpu:
            precision = "fp16"
        elif backend == "openvino":
            precision = openvino_auto_precision(role)
        else:
            precision = CPU_AUTO_PRECISION
    if precision in ("int8", DYNAMIC) and gpu:
        notes.append(f"precision {precision} runs on the CPU only; using fp16 on the GPU")
        precision = "fp16"
    if precision == DYNAMIC and role == "reranker":
        precision = openvino_auto_precision(role) if backend == "openvino" else "fp32"
        notes.append(f"precision {DYNAMIC} is for the embedder: the reranker's ranking does not survive it "
                     f"(Spearman 0.85 to fp32); the reranker runs {precision}")
    if precision == DYNAMIC and backend != "openvino":
        notes.append(f"precision {DYNAMIC} needs models.backend = \"auto\" or \"openvino\"; using fp32")
        precision = "fp32"
    if precision == DYNAMIC and not onnxruntime_installed():
        notes.append(f"precision {DYNAMIC} needs the onnxruntime and onnx packages; using int8 weights with "
                     "fp32 arithmetic (w8)")
        precision = "w8"
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
    """The id an embedder's vectors are stored under: vectors of a reduced precision get their
    own, so they never mix with fp32 ones. On a CPU with AMX the int8 embedder's are
    ``+ov-int8-f32``, apart from the wrong ones earlier versions computed there with bf16
    float parts (``float_arithmetic``); ONNX Runtime's dynamic int8 ones ``+ort-int8``."""
    if precision == DYNAMIC:
        return f"{model_id}+ort-int8"
    if precision not in ("int8", "w8", "bf16"):
        return model_id
    if (precision, backend) == ("int8", "openvino") and cpu_has_amx(cpuinfo):
        return f"{model_id}+ov-int8-f32"
    return f"{model_id}+{'ov-' if backend == 'openvino' else ''}{precision}"


def float_arithmetic(precision: str, role: str, core: Any, amx: bool = False) -> str:
    """What an OpenVINO model's operations left in float compute in (its inference precision
    hint): bf16 for ``bf16``, and for the int8 embedder on a CPU with native bf16 but no AMX
    (``core``, an ``openvino.Core``, lists BF16 among the CPU's capabilities), where it is
    ~20% faster for the same vectors; else f32. With AMX the int8 embedder's bf16 float parts
    gave other vectors, and the reranker fails its gate with bf16 arithmetic
    (docs/performance.md, "Accuracy gates")."""
    if precision == "bf16":
        return "bf16"
    if ((precision, role) == ("int8", "embedder") and not amx
            and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")):
        return "bf16"
    return "f32"
