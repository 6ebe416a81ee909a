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


def machine() -> dict[str, Any]:
    """CPU model name and core count, for results tables."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count()}
