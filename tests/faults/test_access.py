"""Access: the data folder (the full text of every indexed document) is not readable by
others whatever the umask, an older, looser data folder is tightened when opened, the token
file must be private or ragd refuses to start, and the socket's folder is only ever narrowed
when it is ragd's own."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_daemon
from test_daemon import idle, wait_for

from ragd.config import parse_config
from ragd.errors import ConfigError, RagdError
from ragd.server import Daemon, _prepare_socket

pytestmark = pytest.mark.models("fake")

daemon_factory = test_daemon.daemon_factory  # the fixture, shared


@pytest.fixture
def common_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def readable_by_others(data_dir: Path) -> list[str]:
    """Everything under ``data_dir`` that a user other than the owner could open."""
    out = []
    for folder, dirs, files in os.walk(data_dir):
        for name in (*dirs, *files):
            p = Path(folder) / name
            if not p.is_symlink() and mode(p) & 0o077:
                out.append(f"{p.relative_to(data_dir)} {mode(p):o}")
    if mode(data_dir) & 0o077:
        out.append(f". {mode(data_dir):o}")
    return out


@pytest.mark.parametrize("mirrors", ["memory", "mapped"])
def test_the_data_folder_is_private_under_a_common_umask(
    daemon_factory: Callable[..., Any], common_umask: None, tmp_path: Path, mirrors: str,
) -> None:
    """Issue 25 #3: under umask 022 the data folder was 0755 and catalog.db (+ -wal, -shm)
    0644, so any local user could read the full text of every indexed document. Mapped
    mirrors' base folders (0700) and their files (0600) likewise."""
    daemon, client, _notes = daemon_factory(server={"tcp": "127.0.0.1:0"}, store={"mirrors": mirrors})
    wait_for(lambda: idle(client), what="initial index")
    daemon.engine.save_snapshots(force=True)
    data = daemon.config.data_dir
    assert mode(data) == 0o700
    for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm", "writer.lock", "token"):
        assert mode(data / name) == 0o600, name
    assert mode(data / "vectors") == 0o700
    snapshots = list((data / "vectors").iterdir())
    assert snapshots and all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in snapshots)
    assert any(p.is_dir() for p in snapshots) == (mirrors == "mapped")
    assert readable_by_others(data) == []


def test_an_older_loose_data_folder_is_tightened_when_opened(
    daemon_factory: Callable[..., Any], common_umask: None, tmp_path: Path,
) -> None:
    """A data folder made by an earlier version (0755, files 0644) is made private at open."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    conn = sqlite3.connect(data / "catalog.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    (data / "vectors").mkdir(mode=0o755)
    (data / "vectors" / "lexical.npz").write_bytes(b"old")
    os.chmod(data, 0o755)
    os.chmod(data / "catalog.db", 0o644)
    conn.close()
    assert readable_by_others(data)
    _daemon, client, _notes = daemon_factory()
    wait_for(lambda: idle(client), what="initial index")
    assert readable_by_others(data) == []


def test_a_data_folder_shared_with_others_is_left_alone(tmp_path: Path, common_umask: None) -> None:
    """ragd never narrows a folder others use too (a sticky /tmp-like folder); its own files
    there are still private."""
    from ragd.store.catalog import Catalog

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    catalog = Catalog(shared / "catalog.db")
    catalog.close()
    assert mode(shared) == 0o1777
    assert mode(shared / "catalog.db") == 0o600


def _tcp_config(tmp_path: Path, token: Path) -> Any:
    return parse_config({"data_dir": str(tmp_path / "d"),
                         "server": {"tcp": "127.0.0.1:0", "token_file": str(token),
                                    "socket": str(tmp_path / "run" / "s.sock")}},
                        source=tmp_path / "c.toml")


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_others_can_read_stops_the_start(tmp_path: Path, loose: int) -> None:
    token = tmp_path / "token"
    token.write_text("a-long-enough-token-for-the-test\n", encoding="utf-8")
    os.chmod(token, loose)
    daemon = Daemon(_tcp_config(tmp_path, token))
    with pytest.raises(ConfigError, match="must not be readable by others"):
        daemon.start()
    daemon.stop(0)
    assert not (tmp_path / "run" / "s.sock").exists()


def test_a_token_file_of_another_user_stops_the_start(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("only root can give a file to another user")
    token = tmp_path / "token"
    token.write_text("a-long-enough-token-for-the-test\n", encoding="utf-8")
    os.chmod(token, 0o600)
    os.chown(token, 65534, 65534)
    daemon = Daemon(_tcp_config(tmp_path, token))
    with pytest.raises(ConfigError, match="must belong to the user running ragd"):
        daemon.start()
    daemon.stop(0)


def test_the_socket_folder_is_narrowed_only_when_it_is_ragds(tmp_path: Path, common_umask: None) -> None:
    """Issue 25 #12: ``_prepare_socket`` made whatever folder held a configured socket 0700
    ($HOME or /tmp would have been closed to everyone else). A folder it creates is 0700; an
    existing one holding other files keeps its mode (the socket's own 0600 guards it); a
    folder others may write to without the sticky bit is refused."""
    home_like = tmp_path / "home"
    home_like.mkdir(mode=0o755)
    os.chmod(home_like, 0o755)
    (home_like / "notes.txt").write_text("mine", encoding="utf-8")
    _prepare_socket(home_like / "ragd.sock")
    assert mode(home_like) == 0o755

    tmp_like = tmp_path / "tmp"
    tmp_like.mkdir()
    os.chmod(tmp_like, 0o1777)
    (tmp_like / "someone-else").write_text("x", encoding="utf-8")
    _prepare_socket(tmp_like / "ragd.sock")
    assert mode(tmp_like) == 0o1777

    fresh = tmp_path / "fresh" / "run"
    _prepare_socket(fresh / "ragd.sock")
    assert mode(fresh) == 0o700

    own_loose = tmp_path / "own"
    own_loose.mkdir()
    os.chmod(own_loose, 0o755)
    _prepare_socket(own_loose / "ragd.sock")  # empty: ragd's own (an earlier start, another umask)
    assert mode(own_loose) == 0o700

    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    os.chmod(open_to_all, 0o777)
    with pytest.raises(RagdError, match="can be written by others"):
        _prepare_socket(open_to_all / "ragd.sock")
