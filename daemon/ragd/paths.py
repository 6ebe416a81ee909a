"""Which files under a root are indexed: gitignore-style include/exclude patterns plus
built-in excludes for version control, dependency, cache and build folders and hidden files."""

from __future__ import annotations

from collections.abc import Sequence

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


class PathFilter:
    """Accepts a path relative to its root (POSIX separators) or rejects it."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self._include = pathspec.GitIgnoreSpec.from_lines(include) if include else None
        self._exclude = pathspec.GitIgnoreSpec.from_lines([*DEFAULT_EXCLUDES, *exclude])

    def accepts_dir(self, rel: str) -> bool:
        return not self._exclude.match_file(rel.rstrip("/") + "/")

    def accepts(self, rel: str) -> bool:
        if self._exclude.match_file(rel):
            return False
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if self._exclude.match_file("/".join(parts[:i]) + "/"):
                return False
        return self._include is None or bool(self._include.match_file(rel))
