"""Signals to a real ``ragd serve``: SIGHUP rescans every root and keeps serving; a second
SIGTERM forces a clean exit (128 + 15, the socket removed) instead of dying of the signal; a
stop requested while the models load is acted on at once (issue 25 #12)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import Serve, wait_for, write_config

from conftest import write_tree

pytestmark = pytest.mark.models("fake")

NOTES = {
    "alpha.md": "# Alpha\n\nThe alpha project studies glaciers in Iceland with ice cores.\n",
    "beta.txt": "Sourdough bread needs a starter made of flour and water.\n",
}


@pytest.fixture
def served(tmp_path: Path, model_folders: dict[str, Path]) -> Iterator[tuple[Serve, Path]]:
    notes = tmp_path / "notes"
    write_tree(notes, NOTES)
    serve = Serve(write_config(tmp_path, model_folders, [notes], watch=False), tmp_path)
    yield serve, notes
    serve.close()


def lexical_top(serve: Serve, query: str) -> str | None:
    with serve.client() as client:
        hits = client.search(query, k=1, rerank=False, mode="lexical").hits
    return hits[0].path if hits else None


def test_sighup_rescans_every_root_and_keeps_serving(served: tuple[Serve, Path]) -> None:
    """SIGHUP ended the daemon without cleanup. Now it is a reconcile of every root: a file
    added while nothing watches is found, and the daemon goes on serving."""
    serve, notes = served
    serve.start()
    serve.wait_serving()
    serve.wait_idle()
    (notes / "heron.md").write_text("# Herons\n\nGrey herons nest in colonies in tall trees.\n", encoding="utf-8")
    time.sleep(0.5)
    assert lexical_top(serve, "herons nest colonies") is None  # watching is off: nothing saw it
    serve.signal(signal.SIGHUP)
    wait_for(lambda: lexical_top(serve, "herons nest colonies") == str(notes / "heron.md"), what="the rescan")
    assert serve.proc is not None and serve.proc.poll() is None
    assert "SIGHUP: rescanning every root" in serve.stderr()
    assert serve.stop() == 0
    assert not serve.sock.exists()


def test_a_second_sigterm_forces_a_clean_exit(served: tuple[Serve, Path]) -> None:
    """A second SIGTERM once exited -15 (killed by the signal, the handler restored too early)
    or 130 whatever the signal. Now the daemon ends 0 (the first stop finished first) or
    128 + 15 (forced), and removes its socket either way."""
    serve, notes = served
    write_tree(notes, {f"many/n{i:03d}.md": f"# Note {i}\n\nNote {i} is about river {i} and its delta.\n"
                       for i in range(60)})
    serve.start()
    serve.wait_serving()
    serve.signal(signal.SIGTERM)
    assert serve.proc is not None
    while serve.proc.poll() is None:  # keep signalling until it is gone: some land late in the exit
        serve.signal(signal.SIGTERM)
        time.sleep(0.005)
    assert serve.proc.returncode in (0, 128 + signal.SIGTERM), (serve.proc.returncode, serve.stderr()[-2000:])
    assert not serve.sock.exists()


@pytest.mark.models("tiny")  # needs a load that takes a while: converting a real model
def test_a_stop_while_the_models_load_is_acted_on(served: tuple[Serve, Path], tmp_path: Path) -> None:
    """A stop request while the models load (a first start converts them, minutes for the
    full-size models) was ignored until they were loaded; then the daemon started serving and
    only then stopped. Now it stops without serving, exit 0, socket removed."""
    serve, _notes = served
    cache = tmp_path / "model-cache"  # empty: this start converts the tiny model (seconds)
    text = serve.config.read_text(encoding="utf-8").replace(
        'fallback = "none"', f'fallback = "none"\ncache_dir = "{cache}"')
    serve.config.write_text(text, encoding="utf-8")
    serve.start()
    wait_for(lambda: serve.sock.exists() and serve.health() == "NOT_SERVING", timeout=60, what="the load")
    wait_for(lambda: "convert" in serve.stderr().lower(), timeout=60, what="the conversion to start")
    serve.signal(signal.SIGTERM)
    code = serve.wait(60)
    log = serve.stderr()
    assert code == 0, log[-2000:]
    assert "serving on" not in log, log[-2000:]
    assert "stopped while loading" in log
    assert not serve.sock.exists()
