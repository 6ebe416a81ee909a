"""A real ``ragd serve`` process for the fault tests: a config over the test's models, start,
wait until it serves, signal, kill, read its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from test_daemon import wait_for

import ragd_client

RAGD = Path(sys.executable).parent / "ragd"


def write_config(folder: Path, models: dict[str, Path], roots: Sequence[Path], *, watch: bool = True,
                 reranker: bool = False, extra: str = "") -> Path:
    """A config in ``folder`` over ``models`` (``model_folders``): data in ``folder/data``, the
    socket in ``folder/run``."""
    lines = [f'data_dir = "{folder / "data"}"']
    for root in roots:
        lines += ["[[roots]]", f'path = "{root}"']
    rerank = f'"{models["reranker"]}"' if reranker else '"none"'
    lines += ["[models]", f'embedder = "{models["m3"]}"', f"reranker = {rerank}", 'fallback = "none"',
              "[watch]", f"enabled = {'true' if watch else 'false'}", "debounce_ms = 100",
              "[server]", f'socket = "{folder / "run" / "ragd.sock"}"', extra]
    config = folder / "config.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


class Serve:
    """One ``ragd serve --config CONFIG`` process at a time; its stderr goes to ``log``."""

    def __init__(self, config: Path, folder: Path) -> None:
        self.config = config
        self.sock = folder / "run" / "ragd.sock"
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log = folder / "serve.log"

    def start(self) -> None:
        self.runs += 1
        self.log = self.folder / f"serve-{self.runs}.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen([str(RAGD), "serve", "--config", str(self.config)],
                                         stdout=subprocess.DEVNULL, stderr=err)

    def client(self, timeout: float = 30.0) -> ragd_client.Client:
        return ragd_client.Client(address=f"unix://{self.sock}", timeout=timeout)

    def health(self, service: str = "") -> str | None:
        try:
            with self.client(5.0) as client:
                return str(client.health(service))
        except ragd_client.RagdClientError:
            return None

    def wait_serving(self, timeout: float = 120.0) -> None:
        def serving() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ragd serve exited {self.proc.returncode}: {self.stderr()[-2000:]}")
            return self.sock.exists() and self.health() == "SERVING"

        wait_for(serving, timeout=timeout, what="ragd serve to serve")

    def wait_idle(self, timeout: float = 120.0) -> Any:
        with self.client() as client:
            def idle() -> Any:
                st = client.status()
                return st if st.serving and st.files_pending == 0 and not st.current_file else None

            return wait_for(idle, timeout=timeout, what="the index to settle")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a power cut would stop it (nothing flushed, no handler runs)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
