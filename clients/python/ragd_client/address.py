"""Where the daemon listens: the default Unix socket and the address forms the client accepts.

Kept free of any import beyond the standard library so that the daemon and the CLI can use
the same rules without loading gRPC.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_GRPC_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME", "")
    return Path(home) if home else Path.home()


def _expand_user(raw: str, environ: Mapping[str, str]) -> str:
    if raw == "~" or raw.startswith("~/"):
        return str(_home(environ)) + raw[1:]
    return os.path.expanduser(raw)


def _xdg_dir(environ: Mapping[str, str], var: str) -> Path | None:
    """``$var`` when set and absolute (relative values are ignored, as the XDG spec asks)."""
    raw = environ.get(var, "")
    if raw:
        path = Path(_expand_user(raw, environ))
        if path.is_absolute():
            return path
    return None


def default_socket_path(environ: Mapping[str, str] | None = None, data_dir: Path | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/ragd/ragd.sock``; when ``XDG_RUNTIME_DIR`` is unset (or not absolute):
    ``<data_dir>/run/ragd.sock``, ``data_dir`` defaulting to ``$XDG_DATA_HOME/ragd``, else
    ``~/.local/share/ragd``."""
    env = os.environ if environ is None else environ
    runtime = _xdg_dir(env, "XDG_RUNTIME_DIR")
    if runtime is not None:
        return runtime / "ragd" / "ragd.sock"
    if data_dir is None:
        data_home = _xdg_dir(env, "XDG_DATA_HOME") or _home(env) / ".local" / "share"
        data_dir = data_home / "ragd"
    return Path(data_dir) / "run" / "ragd.sock"


def normalize_address(address: str, environ: Mapping[str, str] | None = None) -> str:
    """A gRPC target for ``address``.

    Accepted: ``unix:///abs/path``, ``unix:/abs/path`` and ``unix:rel/path`` (kept as they are),
    a socket path (``/run/ragd.sock``, ``./ragd.sock``, ``~/ragd.sock``, ``x.sock``; made
    absolute), ``tcp://host:port`` and ``host:port`` (TCP). Other gRPC schemes (``dns:``,
    ``ipv4:``, ...) are passed through.
    """
    raw = address.strip()
    if not raw:
        raise ValueError("address is empty: give unix:///path/to/ragd.sock, /path/to/ragd.sock or host:port")
    if raw.startswith(_GRPC_SCHEMES):
        return raw
    if raw.startswith("tcp://"):
        return raw[len("tcp://") :].rstrip("/")
    env = os.environ if environ is None else environ
    if raw.startswith(("/", "./", "../", "~")) or raw.endswith(".sock"):
        return "unix://" + os.path.abspath(_expand_user(raw, env))
    return raw


def default_address(environ: Mapping[str, str] | None = None, data_dir: Path | None = None) -> str:
    """``$RAGD_ADDRESS`` when set (normalised), else ``unix://`` + :func:`default_socket_path`."""
    env = os.environ if environ is None else environ
    override = env.get("RAGD_ADDRESS", "").strip()
    if override:
        return normalize_address(override, env)
    return "unix://" + str(default_socket_path(env, data_dir))
