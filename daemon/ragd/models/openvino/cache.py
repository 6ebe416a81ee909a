"""Where converted models live: ``<cache>/openvino/<model folder>-<hash of its path>/
<role>-<int8|w8|float|int8-dynamic>-r<recipe>/`` (``model.xml``, ``model.bin``, ``meta.json``
and side files; ``model.onnx`` for ONNX Runtime's ``int8-dynamic``), outside any data folder,
since they belong to the weights and every index shares them. ``meta.json`` records the
source files' sizes and modification times and the recipe version: a conversion whose weights
or recipe changed is stale and converted again."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragd.models.cpu import DYNAMIC

RECIPE = {"embedder": 2, "reranker": 8}
"""Bump when conversion or quantisation changes: cached models from older recipes are redone
(the history of each: docs/performance.md, "Accuracy gates")."""
DYNAMIC_RECIPE = {"embedder": 5, "reranker": 1}
"""The same for ONNX Runtime's ``int8-dynamic`` (``onnx``), versioned apart."""


def recipe(role: str, kind: str) -> int:
    """The current recipe of a conversion of ``role`` to ``kind`` (a cache folder's precision)."""
    return (DYNAMIC_RECIPE if kind == DYNAMIC else RECIPE)[role]
ROLES = ("embedder", "reranker")


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/ragd``, else ``~/.cache/ragd``."""
    env = os.environ if environ is None else environ
    raw = env.get("XDG_CACHE_HOME", "")
    base = Path(raw) if raw and Path(raw).is_absolute() else Path.home() / ".cache"
    return base / "ragd"


def source_files(folder: Path) -> dict[str, list[int]]:
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
    def model_file(self) -> Path:
        """The file the runtime loads: ``model.onnx`` for ``int8-dynamic``, else ``model.xml``
        (its weights in ``model.bin``)."""
        return self.folder / "model.onnx" if self.precision == DYNAMIC else self.xml

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
            and self.model_file.is_file()
            and (self.precision == DYNAMIC or (self.folder / "model.bin").is_file())
            and meta.get("recipe") == recipe(self.role, self.precision)
            and meta.get("sources") == source_files(self.source)
        )


def ir_location(cache_dir: Path, source: Path, model_id: str, role: str, precision: str) -> IRLocation:
    """Keyed by the source folder (``meta.json`` then checks that its weights are unchanged)."""
    resolved = source.resolve()
    # A Hugging Face snapshot folder is named by its revision: name it by the repository.
    label = resolved.parent.parent.name if resolved.parent.name == "snapshots" else resolved.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[-60:] or "model"
    digest = hashlib.blake2b(str(resolved).encode(), digest_size=6).hexdigest()
    folder = cache_dir / "openvino" / f"{name}-{digest}" / f"{role}-{precision}-r{recipe(role, precision)}"
    return IRLocation(folder=folder, role=role, precision=precision, source=source, model_id=model_id)


def location_for(role: str, folder: Path, model_id: str, precision: str, cache_dir: Path | None) -> IRLocation:
    """Where the converted model for ``precision`` lives (fp32 and bf16 compile the same
    float model)."""
    kind = precision if precision in ("int8", "w8", DYNAMIC) else "float"
    return ir_location(cache_dir or default_cache_dir(), folder, model_id, role, kind)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def abandoned(location: IRLocation) -> list[Path]:
    """Temporary folders that conversions of the same model, role and precision left behind
    when their process was killed (``.<folder>.tmp-<pid>`` or ``.old-<pid>`` whose process is
    gone): each can hold a whole model's weights."""
    stem = location.folder.name.rsplit("-r", 1)[0]
    found = []
    for path in location.folder.parent.glob(f".{stem}-r*"):
        kind, _, pid = path.name.rpartition("-")
        if path.is_dir() and kind.endswith((".tmp", ".old")) and pid.isdigit() and not _alive(int(pid)):
            found.append(path)
    return found


def older_recipes(location: IRLocation) -> list[Path]:
    """Conversions of the same model, role and precision by an older recipe (replaced)."""
    stem = location.folder.name.rsplit("-r", 1)[0]
    found = []
    for path in location.folder.parent.glob(f"{stem}-r*"):
        number = path.name[len(stem) + 2:]
        if path.is_dir() and number.isdigit() and int(number) < recipe(location.role, location.precision):
            found.append(path)
    return found
