"""Where converted models live: ``<cache>/openvino/<model folder>-<hash of its path>/
<role>-<int8|w8|float>-r<recipe>/`` (``model.xml``, ``model.bin``, ``meta.json`` and side
files), outside any data folder, since they belong to the weights and every index shares
them. ``meta.json`` records the source files' sizes and modification times and the recipe
version: a conversion whose weights or recipe changed is stale and converted again."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECIPE = {"embedder": 2, "reranker": 8}
"""Bump when conversion or quantisation changes: cached models from older recipes are redone
(the history of each: docs/performance.md, "Accuracy gates")."""
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
            and meta.get("sources") == source_files(self.source)
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


def location_for(role: str, folder: Path, model_id: str, precision: str, cache_dir: Path | None) -> IRLocation:
    """Where the converted model for ``precision`` lives (fp32 and bf16 compile the same
    float model)."""
    kind = precision if precision in ("int8", "w8") else "float"
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
        recipe = path.name[len(stem) + 2:]
        if path.is_dir() and recipe.isdigit() and int(recipe) < RECIPE[location.role]:
            found.append(path)
    return found
