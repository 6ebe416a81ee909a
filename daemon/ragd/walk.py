"""Walking a folder tree with a stack of its own, for trees of any depth.

Python 3.11's ``os.walk`` recurses once per folder level, so one folder nested deeper than the
interpreter's recursion limit (about 1,000 levels) raises ``RecursionError`` and ends the whole
walk. ``walk`` yields the same triples, top-down, in listing order, and never recurses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import AnyStr


def walk(
    top: AnyStr, onerror: Callable[[OSError], None] | None = None, *, follow_symlinks: bool = False
) -> Iterator[tuple[AnyStr, list[AnyStr], list[AnyStr]]]:
    """``os.walk(top, topdown=True)`` without recursion: ``(folder, dirnames, filenames)``.

    As with ``os.walk``, a symlink to a folder is listed in ``dirnames`` but entered only with
    ``follow_symlinks``; removing names from ``dirnames`` prunes them; a folder that cannot be
    listed (gone, no access, a path longer than PATH_MAX) goes to ``onerror`` and is skipped.
    """
    stack: list[AnyStr] = [top]
    while stack:
        folder = stack.pop()
        dirs: list[AnyStr] = []
        files: list[AnyStr] = []
        links: set[AnyStr] = set()  # symlinked folders: listed, not entered
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    if not is_dir:
                        files.append(entry.name)
                        continue
                    dirs.append(entry.name)
                    if not follow_symlinks:
                        try:
                            if entry.is_symlink():
                                links.add(entry.name)
                        except OSError:
                            links.add(entry.name)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        yield folder, dirs, files
        # Pushed in reverse so that the first name is entered first, as os.walk does.
        for name in reversed(dirs):
            if name not in links:
                stack.append(os.path.join(folder, name))
