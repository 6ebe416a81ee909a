"""Resource bounds on a large tree of small notes: the daemon's memory (RSS) and the time from
start to SERVING after a restart, with ``ragd serve`` run as its own process as a user runs it.

    .venv/bin/python benchmarks/bigtree.py [--files 100000] [--per-folder 100] [--models tiny|minilm]
                                           [--json] [--keep DIR]

Steps: write ``--files`` notes (one or two lines each) in folders of ``--per-folder``; start
``ragd serve`` on them and wait until all are indexed (first start); stop it with SIGTERM;
start it again and time it to SERVING (health), then to idle (the reconcile scan at start has
checked every file); the RSS (``VmRSS``) of the daemon once idle and its peak (``VmHWM``) are
read from /proc/PID/status at each stage. The embeddings are counted before and after the
restart: a restart embeds nothing. ``tiny`` (the default) runs randomly initialised models of
the BGE-M3 / reranker structure with small layers, so that the figures are the daemon's own
(catalog, caches, watches, the scan) rather than the models'; ``minilm`` the packaged real
all-MiniLM-L6-v2, no reranker (slower: it embeds every note). tests/faults/test_resources.py
runs this at a reduced size in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("harbour ledger crane copper timber coffee grain cotton steel salt tea river bridge pier "
         "invoice shipment voyage compass lantern anchor mast rope cargo tide").split()


def write_notes(tree: Path, files: int, per_folder: int) -> None:
    for i in range(files):
        folder = tree / f"f{i // per_folder:05d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        a, b, c = WORDS[i % len(WORDS)], WORDS[(i // 7) % len(WORDS)], WORDS[(i // 49) % len(WORDS)]
        (folder / f"note-{i:06d}.md").write_text(
            f"# Note {i}\n\nThe {a} of the {b} went to the {c} on day {i % 365}; entry {i * 7919 % 100003}.\n",
            encoding="utf-8")


def write_config(tmp: Path, tree: Path, models: str, folders: tuple[Path, Path] | None = None) -> Path:
    """The config; ``folders``: tiny models built already (their converted form is cached)."""
    if models == "tiny":
        from ragd.models.synthetic import build_m3_embedder, build_reranker

        m3, rr = folders or (build_m3_embedder(tmp / "models" / "tiny-m3"),
                             build_reranker(tmp / "models" / "tiny-reranker"))
        model_lines = f'embedder = "{m3}"\nreranker = "{rr}"\nfallback = "none"\n'
    else:
        model_lines = 'embedder = "minilm"\nreranker = "none"\nfallback = "none"\n'
    cfg = tmp / "config.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "data"}"\n\n[[roots]]\npath = "{tree}"\n\n[models]\n{model_lines}\n'
        f'[server]\nsocket = "{tmp / "run" / "ragd.sock"}"\n', encoding="utf-8")
    return cfg


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def embeddings(data: Path) -> int:
    with sqlite3.connect(f"file:{data / 'catalog.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM embeddings").fetchone()[0])


class Serve:
    """``ragd serve`` in a process of its own, and a client to it."""

    def __init__(self, cfg: Path, socket: Path, log: Path) -> None:
        import ragd_client

        self.started = time.monotonic()
        self.log = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ragd.cli", "serve", "--config", str(cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.client = ragd_client.Client(address=f"unix://{socket}", timeout=30)

    def wait(self, check: Any, timeout: float, what: str) -> float:
        """Seconds from the start of the process until ``check()`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ragd serve exited with {self.proc.returncode} waiting for {what}")
            try:
                if check(self.client):
                    return round(time.monotonic() - self.started, 2)
            except Exception:  # not listening yet
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{what}: not within {timeout} s")

    def stop(self) -> float:
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self.client.close()
        self.log.close()
        return round(time.monotonic() - t, 2)


def idle(files: int) -> Any:
    def check(client: Any) -> bool:
        st = client.status()
        return bool(st.serving and st.files_pending == 0 and not st.current_file and st.files_indexed >= files)
    return check


def run(files: int, per_folder: int = 100, models: str = "tiny", keep: Path | None = None,
        timeout: float = 3600.0, folders: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """The measurements as a dict (see the module docstring)."""
    tmp = keep or Path(tempfile.mkdtemp(prefix="ragd-bigtree-"))
    tree = tmp / "notes"
    t = time.monotonic()
    write_notes(tree, files, per_folder)
    out: dict[str, Any] = {"files": files, "folders": -(-files // per_folder), "models": models,
                           "write_s": round(time.monotonic() - t, 1)}
    cfg = write_config(tmp, tree, models, folders)
    socket, log = tmp / "run" / "ragd.sock", tmp / "serve.log"

    first = Serve(cfg, socket, log)
    out["first_serving_s"] = first.wait(lambda c: c.health() == "SERVING", 600, "SERVING")
    out["first_indexed_s"] = first.wait(idle(files), timeout, "every note indexed")
    out["first_idle_mib"] = memory(first.proc.pid)
    out["first_stop_s"] = first.stop()
    before = embeddings(tmp / "data")

    again = Serve(cfg, socket, log)
    out["restart_serving_s"] = again.wait(lambda c: c.health() == "SERVING", 600, "SERVING")
    out["restart_serving_mib"] = memory(again.proc.pid)
    # the start's reconcile scan has run once the queue is empty; the status shows none pending
    time.sleep(0.5)
    out["restart_idle_s"] = again.wait(idle(files), timeout, "the reconcile scan")
    out["restart_idle_mib"] = memory(again.proc.pid)
    out["restart_stop_s"] = again.stop()
    out["embedded_by_restart"] = embeddings(tmp / "data") - before
    out["embeddings"] = before
    out["load"] = round(os.getloadavg()[0], 1)
    if keep is None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="notes in the tree")
    parser.add_argument("--per-folder", type=int, default=100, help="notes per folder")
    parser.add_argument("--models", default="tiny", choices=["tiny", "minilm"])
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.files, args.per_folder, args.models, args.keep)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
