"""The bearer token TCP callers (gRPC, and MCP over HTTP off loopback) must present: kept in
a private file, created on first use. Light on purpose: ``ragd mcp`` reads it without the
daemon's imports."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ragd.config import Config
from ragd.errors import ConfigError

MIN_TOKEN_CHARS = 16


def token_path(config: Config) -> Path:
    """``server.token_file``, else ``<data_dir>/token``."""
    if config.server.token_file:
        return Path(os.path.expanduser(config.server.token_file))
    return config.data_dir / "token"


def own_paths(config: Config) -> list[Path]:
    """The files ragd keeps for itself, never to be indexed: the data folder and the token."""
    return [config.data_dir, token_path(config)]


def load_or_create_token(path: Path) -> str:
    """The bearer token from a private file (0600, ours), created with a fresh random token
    when missing; a token file others could read or replace is refused."""
    if path.exists():
        st = path.stat()
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path}: server.token_file: must not be readable by others (chmod 600), mode {mode:o}")
        if st.st_uid != os.getuid():
            raise ConfigError(f"{path}: server.token_file: must belong to the user running ragd (uid {os.getuid()}), "
                              f"not uid {st.st_uid}")
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{path}: server.token_file: token too short (at least {MIN_TOKEN_CHARS} characters)")
        return token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token
