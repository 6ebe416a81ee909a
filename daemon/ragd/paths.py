"""Which files under a root are indexed: gitignore-style include/exclude patterns plus
built-in excludes for version control, dependency, cache and build folders and hidden files."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pathspec

DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".*",  # hidden files and folders: .git, .venv, .cache, editor swap files
    "node_modules/",
    "__pycache__/",
    "venv/",
    "build/",
    "dist/",
    "target/",
    "*.egg-info/",
    "*~",
    "*.tmp",
    "*.swp",
)


DIR_CACHE = 65536
"""Folders whose verdict a filter remembers (then it starts over): a file's folders are
checked once per folder, not once per file."""


class PathFilter:
    """Accepts a path relative to its root (POSIX separators) or rejects it. The patterns are
    compiled once, here."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = (), private: Sequence[str] = ()) -> None:
        self._include = pathspec.GitIgnoreSpec.from_lines(include) if include else None
        self._exclude = pathspec.GitIgnoreSpec.from_lines([*DEFAULT_EXCLUDES, *exclude])
        self._dirs: dict[str, bool] = {}  # folder (relative, no trailing slash) -> excluded itself
        # ragd's own files under the root (``inside``): never indexed, whatever the patterns say
        self._private = tuple(p for p in (x.strip("/") for x in private) if p)

    def _is_private(self, rel: str) -> bool:
        return any(rel == p or rel.startswith(p + "/") for p in self._private)

    def accepts_dir(self, rel: str) -> bool:
        rel = rel.rstrip("/")
        return not self._is_private(rel) and not self._dir_excluded(rel)

    def _dir_excluded(self, rel: str) -> bool:
        verdict = self._dirs.get(rel)
        if verdict is None:
            if len(self._dirs) >= DIR_CACHE:
                self._dirs.clear()
            verdict = self._dirs[rel] = bool(self._exclude.match_file(rel + "/"))
        return verdict

    def accepts(self, rel: str) -> bool:
        if self._is_private(rel) or self._exclude.match_file(rel):
            return False
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if self._dir_excluded("/".join(parts[:i])):
                return False
        return self._include is None or bool(self._include.match_file(rel))


def inside(root: Path, paths: Iterable[Path]) -> list[str]:
    """Those of ``paths`` that lie under ``root``, relative to it (POSIX separators, symlinks
    resolved): ragd's own files (the data folder with the full text of every document, the
    token), which a root that holds them must not index."""
    base = os.path.realpath(root)
    out = []
    for path in paths:
        real = os.path.realpath(path)
        if real != base and real.startswith(base.rstrip("/") + "/"):
            out.append(Path(os.path.relpath(real, base)).as_posix())
    return out
