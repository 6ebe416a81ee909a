"""Resource bounds on a tree of small notes, with ``ragd serve`` as its own process
(benchmarks/bigtree.py): a restart reaches SERVING quickly, stays within its memory, and
embeds nothing. CI runs ``RAGD_FAULT_TREE_FILES`` notes (default 2,000); the full size is
``.venv/bin/python benchmarks/bigtree.py --files 100000`` (figures in the README)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bigtree

FILES = int(os.environ.get("RAGD_FAULT_TREE_FILES", "2000"))
pytestmark = pytest.mark.models("fake")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_restart_over_a_large_tree_is_quick_small_and_embeds_nothing(
        tmp_path: Path, model_folders: dict[str, Path], loaded_models: Any) -> None:
    # loaded_models: on the tiny models, converted (and cached) once, so the daemon's start is timed, not that
    out = bigtree.run(FILES, per_folder=100, keep=tmp_path, timeout=300,
                      folders=(model_folders["m3"], model_folders["reranker"]))
    assert out["embeddings"] == FILES and out["embedded_by_restart"] == 0
    assert out["restart_serving_s"] < 30  # ~4 s here; the bound leaves room for a loaded CI machine
    assert out["restart_idle_mib"]["VmRSS"] < 1024
