"""Search filters: which files a search may return (path prefixes, globs, extensions,
modification time, root). Applied as a set of allowed chunk ids before ranking."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import pathspec

from ragd.errors import UsageError

MAX_FILTER_ITEMS = 64


@dataclass(frozen=True)
class Filters:
    path_prefixes: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    modified_after: float | None = None   # seconds since the epoch
    modified_before: float | None = None
    root: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.path_prefixes or self.globs or self.extensions or self.root
                    or self.modified_after is not None or self.modified_before is not None)


def normalise_filters(f: Filters) -> Filters:
    """Validate and normalise: absolute prefixes, lower-case dotted extensions; UsageError
    names the field that is wrong."""
    for name in ("path_prefixes", "globs", "extensions"):
        items = getattr(f, name)
        if len(items) > MAX_FILTER_ITEMS:
            raise UsageError(f"filters.{name}: at most {MAX_FILTER_ITEMS} items, got {len(items)}")
        for item in items:
            if not item or "\x00" in item or len(item) > 4096:
                raise UsageError(f"filters.{name}: empty or invalid item {item[:80]!r}")
    prefixes = []
    for p in f.path_prefixes:
        expanded = os.path.expanduser(p)
        if not os.path.isabs(expanded):
            raise UsageError(f"filters.path_prefixes: {p!r} is not an absolute path")
        prefixes.append(os.path.normpath(expanded) + ("/" if p.endswith("/") else ""))
    exts = []
    for e in f.extensions:
        e = e.lower()
        e = e if e.startswith(".") else "." + e
        if "/" in e or len(e) < 2:
            raise UsageError(f"filters.extensions: {e!r} is not a file extension")
        exts.append(e)
    try:
        glob_spec(tuple(f.globs))
    except Exception as exc:
        raise UsageError(f"filters.globs: invalid pattern: {exc}") from exc
    if f.modified_after is not None and f.modified_before is not None and f.modified_after >= f.modified_before:
        raise UsageError("filters.modified_after: must be earlier than filters.modified_before")
    root = None
    if f.root:
        expanded = os.path.expanduser(f.root)
        if not os.path.isabs(expanded):
            raise UsageError(f"filters.root: {f.root!r} is not an absolute path")
        root = os.path.normpath(expanded)
    return Filters(tuple(prefixes), tuple(f.globs), tuple(exts), f.modified_after, f.modified_before, root)


@functools.lru_cache(maxsize=64)
def glob_spec(globs: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    """The compiled form of a glob list: compiled once and reused for every file a search
    checks (and by later searches with the same globs), not once per file."""
    return pathspec.GitIgnoreSpec.from_lines(globs)


def matches(f: Filters, path: str, root: str, mtime_ns: int) -> bool:
    """Whether one file passes every active filter (all filters must hold; within a list, any)."""
    if f.path_prefixes and not any(path == p.rstrip("/") or path.startswith(p) for p in f.path_prefixes):
        return False
    if f.root and root != f.root:
        return False
    if f.extensions and os.path.splitext(path)[1].lower() not in f.extensions:
        return False
    mtime = mtime_ns / 1e9
    if f.modified_after is not None and mtime < f.modified_after:
        return False
    if f.modified_before is not None and mtime >= f.modified_before:
        return False
    if f.globs:
        rel = os.path.relpath(path, root) if root else path
        if not glob_spec(tuple(f.globs)).match_file(rel):
            return False
    return True
