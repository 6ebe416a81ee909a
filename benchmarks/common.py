"""Helpers the benchmark scripts share: percentiles and a description of the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def percentile(values: list[float], p: float) -> float:
    """The value at fraction ``p`` of the sorted values (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# CPU features that decide which kernels run: int8 products are fast only with VNNI
# (AVX512-VNNI, AVX-VNNI or AMX); without it OpenVINO's int8 runs about as fast as fp32.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> dict[str, Any]:
    """CPU model name, core count and the instruction sets above, for results tables."""
    model = platform.processor()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                flags = [f for f in ISA_FLAGS if f in present]
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "isa": flags}
