"""Building and removing folder trees nested deeper than Python's recursion limit.

Paths are kept short by working relative to open folder descriptors (building) and by
moving each folder up to the top before emptying it (removing): ``os.makedirs`` and
``shutil.rmtree`` of Python 3.11 either recurse per level or need the whole path at once.
"""

from __future__ import annotations

import os
from pathlib import Path


def make_deep(base: Path, depth: int, name: str = "d", files: dict[str, str] | None = None) -> Path:
    """``base/name/name/...`` ``depth`` levels deep with ``files`` in the deepest folder; returns
    the first level (the path of the deepest folder may be longer than PATH_MAX)."""
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        for file_name, text in (files or {}).items():
            out = os.open(file_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
            try:
                os.write(out, text.encode("utf-8"))
            finally:
                os.close(out)
    finally:
        os.close(fd)
    return base / name


def deep_path(top: Path, depth: int, name: str = "d") -> Path:
    """The path of the folder ``depth`` levels down from ``top``'s parent (``top`` is level 1)."""
    return top.joinpath(*([name] * (depth - 1)))


def remove_deep(top: Path) -> None:
    """Remove ``top`` and everything below it, at any depth, without recursion."""
    if not top.exists():
        return
    parking = top.parent / f".rm-{os.getpid()}-{top.name}"
    os.rename(top, parking)
    todo = [parking]
    count = 0
    while todo:
        folder = todo.pop()
        with os.scandir(folder) as entries:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for entry, is_dir in names:
            path = folder / entry
            if is_dir:
                count += 1
                moved = top.parent / f".rm-{os.getpid()}-{count}"
                os.rename(path, moved)  # up to the top: its own path stays short
                todo.append(moved)
            else:
                os.unlink(path)
        os.rmdir(folder)
