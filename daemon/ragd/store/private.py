"""Private storage: the data folder holds the full text of every indexed document, so it is
kept 0700 and what ragd writes in it 0600, whatever the umask. A folder or file made by an
earlier version (0755 / 0644 under a common umask) is tightened when it is opened. Snapshots
are written through ``atomic_write``, whose temp files a later open can tell apart.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"\.(\d+)\.[A-Za-z0-9_]+\.tmp$")
"""A temp file of ``atomic_write``: ``<name>.<pid of the writer>.<random>.tmp``."""


def _shared_folder(path: Path, st: os.stat_result) -> bool:
    """A folder others rightly use too (a home, /tmp): never narrowed by ragd."""
    if st.st_mode & stat.S_ISVTX:  # sticky: /tmp, /var/tmp
        return True
    home = os.path.expanduser("~")
    return os.path.realpath(path) in {os.path.realpath(home), "/"}


def tighten(path: Path) -> None:
    """Take group and other permissions off ``path`` (a file or a folder of ragd's) when it is
    ours; a folder shared with others (a home, /tmp) is left alone."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077 or st.st_uid != os.getuid():
        return
    if stat.S_ISDIR(st.st_mode) and _shared_folder(path, st):
        log.warning("%s is shared with others (mode %o): ragd keeps its files private but leaves the "
                    "folder as it is; point data_dir at a folder of its own", path, mode)
        return
    try:
        os.chmod(path, mode & 0o700)
    except OSError as exc:  # a read-only file system: nothing ragd can change there
        log.warning("cannot make %s private: %s", path, exc.strerror or exc)


def private_dir(path: Path) -> None:
    """Create ``path`` as 0700 (its missing parents as usual), or tighten it when it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    tighten(path)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it over ``path``. The temp file
    (0600, in a 0700 folder) carries the writer's pid, so a later open can tell one left by a
    killed writer (``stale_temp``) from one being written."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_dir(path: Path) -> None:
    """Make a rename in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_folder(parent: Path, stem: str) -> Path:
    """A new folder in ``parent`` named as ``atomic_write`` names its temp files (``stem``, the
    writer's pid, ``.tmp``), so a later open removes it if its writer was killed."""
    return Path(tempfile.mkdtemp(prefix=f"{stem}.{os.getpid()}.", suffix=".tmp", dir=parent))


def private_db(path: Path) -> None:
    """Make SQLite database ``path`` 0600 before SQLite opens it: created empty (a valid empty
    database) when missing, since SQLite gives its -wal and -shm files the database's mode."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"),
              path.with_name(path.name + "-journal")):
        tighten(p)


def private_folder_files(folder: Path) -> None:
    """Tighten ``folder`` and the files in it (and in its folders: a mapped mirror's bases), and
    remove temp files and folders that a writer killed mid-save left behind (those whose
    process is gone)."""
    if not folder.is_dir():
        return
    tighten(folder)
    for entry in folder.iterdir():
        if entry.name.endswith(".tmp") and stale_temp(entry.name):
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                log.info("removed %s, left by a save that was interrupted", entry)
            except OSError:
                pass
            continue
        if entry.is_dir() and not entry.is_symlink():
            private_folder_files(entry)
        elif entry.is_file() and not entry.is_symlink():
            tighten(entry)


def stale_temp(name: str) -> bool:
    """Whether temp file ``name`` belongs to no running process: its writer's pid is gone (or it
    has no pid in its name, as an earlier version wrote them)."""
    m = _TEMP_NAME.search(name)
    if m is None:
        return True
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
