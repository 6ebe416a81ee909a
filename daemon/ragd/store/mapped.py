"""The compacted base of a mirror (``postings.Postings``) as a folder of plain ``.npy`` files,
memory-mapped read-only, so the kernel's page cache holds the postings instead of the
process's own memory (docs/architecture.md, Storage).

A base folder is written once, never changed: each array is written into a temp folder,
fsynced, and listed in ``manifest.json`` with its size and CRC-32, then the folder is
renamed into place (``<stem>.<id>.base`` beside the mirror's snapshot file). Opening checks
the manifest, each file's size and CRC (one sequential read of every file, at several GB/s,
which also brings the postings into the page cache the first searches read), so a damaged
or foreign base is refused and the mirror is built again from the catalog.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ragd.store.private import fsync_dir, private_dir, temp_folder

log = logging.getLogger(__name__)

BASE_VERSION = 1
ARRAYS = ("keys", "values", "sizes", "tokens", "ptr", "slot", "weight")
IN_MEMORY = frozenset({"tokens", "ptr"})
"""Arrays read into memory at open: a vocabulary's worth, read for every query token."""
_CRC_BLOCK = 1 << 24


def base_name(stem: str, base_id: str) -> str:
    return f"{stem}.{base_id}.base"


def _base_pattern(stem: str) -> re.Pattern[str]:
    return re.compile(re.escape(stem) + r"\.([0-9a-f]{32})\.base$")


def _crc(path: Path) -> int:
    crc = 0
    with path.open("rb") as fh:
        while block := fh.read(_CRC_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


class BaseWriter:
    """A base folder being written: ``array`` gives an array to fill (mapped on its file),
    ``finish`` seals the folder and returns its name."""

    def __init__(self, home: Path) -> None:
        private_dir(home.parent)
        self.home = home
        self.id = uuid.uuid4().hex
        self.tmp = temp_folder(home.parent, home.stem)
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, dtype: np.dtype | type, length: int) -> np.ndarray:
        """An array of ``length`` to fill, mapped on its file (in memory when empty)."""
        if length == 0:
            arr = np.zeros(0, dtype=dtype)
        else:
            arr = np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=(length,))
        self._arrays[name] = arr
        return arr

    def put(self, name: str, arr: np.ndarray) -> None:
        self.array(name, arr.dtype, len(arr))[:] = arr

    def finish(self, kind: str) -> str:
        files: dict[str, dict[str, int]] = {}
        for name in ARRAYS:
            arr = self._arrays.pop(name)
            path = self.tmp / f"{name}.npy"
            if isinstance(arr, np.memmap):
                arr.flush()
                del arr
            else:
                np.save(path, arr)
            os.chmod(path, 0o600)
            with path.open("rb+") as fh:
                os.fsync(fh.fileno())
            files[name] = {"size": path.stat().st_size, "crc32": _crc(path)}
        manifest = {"version": BASE_VERSION, "kind": kind, "id": self.id, "files": files}
        with os.fdopen(os.open(self.tmp / "manifest.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                       encoding="utf-8") as fh:
            json.dump(manifest, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(self.tmp, 0o700)
        name = base_name(self.home.stem, self.id)
        os.replace(self.tmp, self.home.parent / name)
        fsync_dir(self.home.parent)
        return name

    def abandon(self) -> None:
        self._arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def open_base(folder: Path, kind: str, *, check: bool = True) -> dict[str, np.ndarray]:
    """The arrays of base ``folder`` (mapped read-only; ``IN_MEMORY`` ones read), after checking
    its manifest, sizes and (``check``: not for a base this process just wrote) checksums.
    Raises ValueError (or OSError) for anything amiss."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("version") != BASE_VERSION or manifest.get("kind") != kind:
        raise ValueError(f"{folder}: another version or kind of mirror")
    if not folder.name.endswith(f".{manifest.get('id')}.base"):
        raise ValueError(f"{folder}: its manifest names another base")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(ARRAYS):
        raise ValueError(f"{folder}: the manifest lists other files")
    out: dict[str, np.ndarray] = {}
    for name in ARRAYS:
        path = folder / f"{name}.npy"
        want = files[name]
        if path.stat().st_size != want["size"] or (check and _crc(path) != want["crc32"]):
            raise ValueError(f"{path}: its size or checksum differs from the manifest")
        out[name] = np.load(path, allow_pickle=False) if name in IN_MEMORY else np.load(path, mmap_mode="r")
    return out


def bases(home: Path) -> Iterator[Path]:
    """The base folders beside snapshot ``home``."""
    pattern = _base_pattern(home.stem)
    try:
        entries = list(home.parent.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if pattern.match(entry.name) and entry.is_dir():
            yield entry


def drop_bases(home: Path, keep: Callable[[str], bool], *, newer_kept: Path | None = None) -> None:
    """Remove the base folders beside ``home`` that ``keep`` does not name (and, with
    ``newer_kept``, that are not newer than that folder). A search still reading one keeps its
    mapping: the files' pages live until the last map goes."""
    try:
        since = newer_kept.stat().st_mtime_ns if newer_kept is not None else None
    except OSError:
        return
    for folder in bases(home):
        if keep(folder.name):
            continue
        try:
            if since is not None and folder.stat().st_mtime_ns > since:
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
