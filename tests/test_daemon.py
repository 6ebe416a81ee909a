"""End to end: a real daemon on a temporary socket with the fake models, driven through
ragd_client: live indexing of creates, edits, renames and deletes; reconcile after an
overflow; request validation; token auth on TCP; SIGTERM drain."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ragd_client
from conftest import write_tree
from ragd.config import parse_config
from ragd.engine import Engine
from ragd.errors import ConfigError
from ragd.server import Daemon

pytestmark = [pytest.mark.models("fake"), pytest.mark.stores("faiss", "milvus")]  # every test on both backends


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


NOTES = {
    "alpha.md": "# Alpha\n\nThe alpha project studies glaciers in Iceland with ice cores.\n",
    "beta.txt": "Sourdough bread needs a starter made of flour and water.\n",
}


@pytest.fixture
def daemon_factory(tmp_path: Path, model_folders: dict[str, Path], loaded_models: Any,
                   store_backend: str) -> Iterator[Callable[..., Any]]:
    """Start in-process daemons over tmp_path/notes on the test's models (``conftest.model_set``)
    and vector store (``store_backend``: Milvus Lite in tmp_path for 'milvus')."""
    started: list[Daemon] = []

    def start(engine_factory: Callable[[Any], Engine] | None = None, **sections: Any) -> tuple[Daemon, Any, Path]:
        notes = tmp_path / "notes"
        if not notes.exists():
            write_tree(notes, NOTES)
        data: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "roots": [{"path": str(notes)}],
            "models": {"embedder": str(model_folders["m3"]), "reranker": str(model_folders["reranker"]),
                       "fallback": "none"},
            "watch": {"debounce_ms": 100},
            "server": {"socket": str(tmp_path / "run" / "ragd.sock")},
        }
        if store_backend != "faiss":
            data["store"] = {"backend": store_backend, "uri": str(tmp_path / "milvus" / "ragd.db")}
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value}
        cfg = parse_config(data, source=tmp_path / "config.toml")
        daemon = Daemon(cfg)
        started.append(daemon)
        daemon.start(engine_factory=engine_factory or (lambda c: Engine(c, models=loaded_models)))
        client = ragd_client.Client(address=f"unix://{daemon.socket}", timeout=30)
        return daemon, client, notes

    yield start
    for d in started:
        d.stop(0)


def idle(client: Any) -> Any:
    st = client.status()
    return st if (st.serving and st.files_pending == 0 and not st.current_file) else None


def top_path(client: Any, query: str) -> str | None:
    try:
        hits = client.search(query, k=1, rerank=False).hits
    except ragd_client.FailedPrecondition:  # nothing indexed yet
        return None
    return hits[0].path if hits else None


def test_live_changes_are_searchable(daemon_factory: Callable[..., Any]) -> None:
    daemon, client, notes = daemon_factory()
    assert client.health() == "SERVING"
    st = wait_for(lambda: idle(client), what="initial index")
    assert st.files_indexed == 2 and st.chunks >= 2
    assert st.vector_index == {"faiss": "faiss exact float32", "milvus": "milvus FLAT"}[daemon.config.store.backend]

    # create
    new = notes / "gamma.txt"
    new.write_text("Volcanic eruptions release sulfur dioxide into the stratosphere.\n", encoding="utf-8")
    wait_for(lambda: top_path(client, "Volcanic eruptions release sulfur dioxide") == str(new), what="new file")

    # edit: new words found, old ones gone
    new.write_text("Tidal forces of the moon raise ocean tides twice a day.\n", encoding="utf-8")
    wait_for(lambda: top_path(client, "Tidal forces of the moon raise ocean tides") == str(new), what="edit")
    hits = client.search("Volcanic eruptions release sulfur dioxide", k=10, rerank=False).hits
    assert all("Volcanic" not in h.snippet for h in hits)

    # rename: found under the new name, nothing re-embedded
    embeddings = daemon.engine.catalog.db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    moved = notes / "sub" / "tides.txt"
    moved.parent.mkdir()
    new.rename(moved)
    wait_for(lambda: top_path(client, "Tidal forces of the moon raise ocean tides") == str(moved), what="rename")
    wait_for(lambda: idle(client), what="idle after rename")
    assert daemon.engine.catalog.db.execute("SELECT count(*) FROM embeddings").fetchone()[0] == embeddings

    # an editor's atomic save: write a temp file, rename it over the target
    tmp = notes / ".beta.txt.swp"
    tmp.write_text("Rye bread is dense and dark, baked with caraway.\n", encoding="utf-8")
    os.replace(tmp, notes / "beta.txt")
    wait_for(lambda: top_path(client, "Rye bread is dense and dark, baked with caraway") == str(notes / "beta.txt"),
             what="atomic save")

    # delete
    moved.unlink()
    wait_for(lambda: all(h.path != str(moved) for h in client.search("Tidal forces", k=10, rerank=False).hits),
             what="delete")

    # reranked search through the daemon
    result = client.search("glaciers ice cores", k=2, candidates=3)
    assert result.reranked >= 2 and result.hits[0].rerank_score is not None
    assert result.models["embedder"] if isinstance(result.models, dict) else result.models


def test_a_search_says_which_window_the_reranker_read(tmp_path: Path, daemon_factory: Callable[..., Any]) -> None:
    """A chunk longer than search.rerank_max_tokens is reranked on its window, and the
    response says so; chunks read whole say 0."""
    notes = tmp_path / "notes"
    write_tree(notes, {**NOTES, "herons.md": "Herons wade in shallow water. " * 4
                       + "Grey herons nest in tall trees beside lakes and rivers, in colonies. " * 3})
    _, client, _ = daemon_factory(search={"rerank_max_tokens": 16, "rerank_min_tokens": 16})
    wait_for(lambda: idle(client), what="initial index")
    result = client.search("where do grey herons nest", k=3, candidates=30)
    assert result.reranked >= 2 and result.rerank_window == 16
    assert result.to_dict()["rerank_window"] == 16
    result = client.search("where do grey herons nest", k=3, candidates=30, rerank=False)
    assert result.reranked == 0 and result.rerank_window == 0


def test_overflow_triggers_a_reconcile_scan(daemon_factory: Callable[..., Any]) -> None:
    daemon, client, notes = daemon_factory()
    wait_for(lambda: idle(client), what="initial index")
    # The watcher misses these changes (as when the kernel queue overflows)...
    daemon.watcher.unwatch(notes)
    (notes / "missed.txt").write_text("Penguins huddle together to survive the Antarctic winter.\n", encoding="utf-8")
    (notes / "alpha.md").unlink()
    time.sleep(0.5)
    assert top_path(client, "Penguins huddle together to survive the Antarctic winter") != str(notes / "missed.txt")
    # ...and an overflow report makes the reconcile scan catch up.
    from ragd.paths import PathFilter
    from ragd.watch import WatchTroubleEvent

    daemon.watcher.watch(notes, PathFilter())
    daemon.watcher.inject(notes, [WatchTroubleEvent(str(notes), reason="overflow")])
    wait_for(lambda: top_path(client, "Penguins huddle together to survive the Antarctic winter")
             == str(notes / "missed.txt"), what="reconcile after overflow")
    wait_for(lambda: idle(client), what="idle")
    assert client.status().files_indexed == 2


def test_bad_requests_get_invalid_argument(daemon_factory: Callable[..., Any], tmp_path: Path) -> None:
    _, client, notes = daemon_factory()
    wait_for(lambda: idle(client), what="initial index")
    with pytest.raises(ragd_client.InvalidArgument, match="query"):
        client.search("   ")
    with pytest.raises(ragd_client.InvalidArgument, match="k"):
        client.search("bread", k=5000)
    with pytest.raises(ragd_client.InvalidArgument, match=r"filters\.extensions"):
        client.search("bread", extensions=["a/b"])
    with pytest.raises(ragd_client.InvalidArgument, match="path"):
        client.add_root(str(tmp_path / "no-such-folder"))
    with pytest.raises(ragd_client.PermissionDenied):
        client.read_file("/etc/passwd")
    with pytest.raises(ragd_client.NotFound):
        client.get_chunk(10**9)
    lines = client.read_file(str(notes / "alpha.md"), from_line=1, count=1)
    assert lines.lines == ["# Alpha"] and lines.total_lines == 3


def test_roots_api(daemon_factory: Callable[..., Any], tmp_path: Path) -> None:
    daemon, client, notes = daemon_factory()
    extra = tmp_path / "extra"
    write_tree(extra, {"e.txt": "Comets have tails of gas and dust pointing away from the sun.\n"})
    root = client.add_root(str(extra))
    assert root.path == str(extra) and not root.configured
    assert {r.path for r in client.roots()} == {str(notes), str(extra)}
    wait_for(lambda: top_path(client, "Comets have tails of gas and dust") == str(extra / "e.txt"), what="new root")
    mirror = daemon.engine.sparse
    assert mirror is not None
    wait_for(lambda: mirror.count == 3, what="three chunks in the sparse mirror")
    assert client.remove_root(str(extra)) == 1
    assert mirror.count == 2  # the removed root's chunk left the sparse mirror with its embedding
    for mode in ("hybrid", "sparse", "lexical"):
        hits = client.search("Comets tails", k=10, rerank=False, mode=mode).hits
        assert all(h.path != str(extra / "e.txt") for h in hits), mode
    with pytest.raises(ragd_client.FailedPrecondition):
        client.remove_root(str(notes))
    assert client.reindex() == 1


def test_socket_permissions_and_tcp_token(daemon_factory: Callable[..., Any], tmp_path: Path) -> None:
    daemon, _client, _ = daemon_factory(server={"tcp": "127.0.0.1:0"})
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o700
    token_file = tmp_path / "data" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    address = f"127.0.0.1:{daemon.tcp_port}"
    with pytest.raises(ragd_client.Unauthenticated):
        ragd_client.Client(address=address, token="wrong-token-wrong-token", timeout=10).status()
    with pytest.raises(ragd_client.Unauthenticated):
        ragd_client.Client(address=address, token="", timeout=10).status()
    assert ragd_client.Client(address=address, token=token, timeout=10).status().version


def test_remote_tcp_needs_explicit_permission(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path / "d"), "server": {"tcp": "0.0.0.0:7000",
                                                                   "socket": str(tmp_path / "s.sock")}},
                       source=tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="allow_remote"):
        Daemon(cfg).start()


def test_sigterm_drains_and_exits_zero(tmp_path: Path, model_folders: dict[str, Path]) -> None:
    notes = tmp_path / "notes"
    write_tree(notes, NOTES)
    sock = tmp_path / "run" / "ragd.sock"
    config = tmp_path / "config.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[[roots]]\npath = "{notes}"\n'
        f'[models]\nembedder = "{model_folders["m3"]}"\nreranker = "{model_folders["reranker"]}"\nfallback = "none"\n'
        f'[server]\nsocket = "{sock}"\n', encoding="utf-8")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ragd"), "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = ragd_client.Client(address=f"unix://{sock}", timeout=5)
        wait_for(lambda: sock.exists() and _health(client) == "SERVING", timeout=120, what="daemon start")
        wait_for(lambda: idle(client), timeout=60, what="initial index")
        assert client.search("glaciers", k=1).hits
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == 0, proc.stderr.read() if proc.stderr else ""
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _health(client: Any) -> str | None:
    try:
        return str(client.health())
    except ragd_client.RagdClientError:
        return None


def test_calls_while_the_daemon_loads_and_indexing_works_after(
    daemon_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, loaded_models: Any, tmp_path: Path
) -> None:
    """`ragd serve` answers on its socket while it still loads (a first start converts the
    models for minutes). AddRoot (`ragd roots add`, the README's first step) answers at once
    and the root is indexed once the models are in; searches wait for the load, and a CLI call
    that runs out of time says the daemon is loading. Nothing the calls did on the way may
    break the catalog (such calls once registered the model a second time, on the writer's
    connection, and every indexing batch then failed its foreign key)."""
    import threading

    from click.testing import CliRunner

    import ragd.models
    from ragd import cli
    from ragd.errors import RagdError

    release = threading.Event()

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)
        return loaded_models

    monkeypatch.setattr(ragd.models, "load_models", slow_load)
    box: dict[str, Any] = {}
    starter = threading.Thread(target=lambda: box.setdefault("started", daemon_factory(engine_factory=Engine)))
    starter.start()
    sock = tmp_path / "run" / "ragd.sock"
    config = tmp_path / "cli.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[server]\nsocket = "{sock}"\n', encoding="utf-8")
    real_client = cli._client
    try:
        wait_for(sock.exists, what="the socket while the models load")
        client = ragd_client.Client(address=f"unix://{sock}", timeout=60)
        assert client.health() == "NOT_SERVING"
        extra, later = tmp_path / "extra", tmp_path / "later"
        write_tree(extra, {"heron.md": "# Herons\n\nGrey herons nest in colonies high in tall trees.\n"})
        write_tree(later, {"otter.md": "# Otters\n\nSea otters float on their backs to eat urchins.\n"})
        outcomes: list[tuple[str, Any]] = []

        def call(fn: Callable[[], Any]) -> None:
            try:
                outcomes.append(("ok", fn()))
            except ragd_client.RagdClientError as exc:
                outcomes.append((type(exc).__name__, exc.details))

        searches = [threading.Thread(target=call, args=(lambda: client.search("glaciers", k=1, rerank=False),))
                    for _ in range(3)]
        for t in searches:
            t.start()
        root = client.add_root(str(extra))  # answers while the models load
        assert root.path == str(extra) and not root.configured
        out = CliRunner().invoke(cli.main, ["roots", "add", str(later), "--config", str(config)])
        assert out.exit_code == 0 and "added" in out.output, out.output
        assert {r.path for r in client.roots()} >= {str(extra), str(later)}
        time.sleep(0.3)
        assert all(t.is_alive() for t in searches), outcomes  # waiting for the load
        monkeypatch.setattr(cli, "_client", lambda cfg, timeout=30.0: real_client(cfg, timeout=1.0 if timeout == 30.0
                                                                                   else timeout))
        with pytest.raises(RagdError, match="still loading its models"):
            cli._daemon_call(cli._load(str(config)), lambda c: c.search("glaciers", k=1, rerank=False))
        monkeypatch.setattr(cli, "_client", real_client)
        assert client.health() == "NOT_SERVING"
    finally:
        release.set()
        starter.join(60)
    for t in searches:
        t.join(60)
    # each search either found something or was told the first scan is still running
    assert len(outcomes) == 3 and all(kind in ("ok", "FailedPrecondition") for kind, _ in outcomes), outcomes
    st = wait_for(lambda: idle(client), what="the index after the load")
    assert (st.files_indexed, st.files_failed) == (4, 0)
    assert {r.path for r in st.roots if r.watching} >= {str(extra), str(later)}
    assert top_path(client, "Grey herons nest in colonies") == str(extra / "heron.md")
    assert top_path(client, "Sea otters float on their backs") == str(later / "otter.md")
    assert top_path(client, "Sourdough bread needs a starter") == str(tmp_path / "notes" / "beta.txt")
    # serving: a call that runs out of time (a 0.2 s one against a search held for 1 s; a fast
    # CPU answers within 1 ms) says only that
    import ragd.service

    real_search = ragd.service.search

    def slow_search(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return real_search(*args, **kwargs)

    monkeypatch.setattr(ragd.service, "search", slow_search)
    monkeypatch.setattr(cli, "_client", lambda cfg, timeout=30.0: real_client(cfg, timeout=0.2 if timeout == 30.0
                                                                               else timeout))
    with pytest.raises(RagdError, match="did not answer in time"):
        cli._daemon_call(cli._load(str(config)), lambda c: c.search("glaciers", k=1, rerank=False))


def test_cli_talks_to_the_daemon(daemon_factory: Callable[..., Any], tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from ragd.cli import main

    daemon, client, notes = daemon_factory()
    wait_for(lambda: idle(client), what="initial index")
    config = tmp_path / "cli.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[server]\nsocket = "{daemon.socket}"\n', encoding="utf-8")
    runner = CliRunner()

    out = runner.invoke(main, ["status", "--json", "--config", str(config)])
    assert out.exit_code == 0, out.output
    st = json.loads(out.stdout)
    assert {"serving", "files_indexed", "files_pending", "files_failed", "roots", "models", "degraded"} <= set(st)
    assert st["serving"] and st["files_indexed"] == 2
    out = runner.invoke(main, ["status", "--config", str(config)])
    assert out.exit_code == 0 and f"  vectors: {st['vector_index']}\n" in out.stdout and st["vector_index"]

    out = runner.invoke(main, ["search", "Sourdough bread needs a starter", "--daemon", "--json", "--no-rerank",
                               "--config", str(config)])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["hits"][0]["path"] == str(notes / "beta.txt") and "no daemon" not in out.stderr
    out = runner.invoke(main, ["search", "Sourdough bread needs a starter", "--daemon", "--json",
                               "--deadline", "0.001", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["reranked"] == 0  # the deadline passed before any reranking: retrieval order

    out = runner.invoke(main, ["roots", "ls", "--json", "--config", str(config)])
    assert json.loads(out.stdout)["roots"] == [{"path": str(notes), "configured": True}]
    out = runner.invoke(main, ["reindex", "--json", "--config", str(config)])
    assert out.exit_code == 0 and json.loads(out.stdout)["queued"] in (0, 1)


def test_cli_without_a_daemon(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ragd.cli import main

    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[server]\nsocket = "{tmp_path / "none.sock"}"\n',
                      encoding="utf-8")
    runner = CliRunner()
    for args in (["status"], ["roots", "ls"], ["reindex"], ["search", "x", "--daemon"]):
        out = runner.invoke(main, [*args, "--config", str(config)])
        assert out.exit_code == 1, (args, out.output)
        assert "no daemon answered" in out.stderr


def test_oversized_request_is_resource_exhausted(daemon_factory: Callable[..., Any]) -> None:
    _, client, _ = daemon_factory(server={"max_message_bytes": 2048})
    wait_for(lambda: idle(client), what="initial index")
    with pytest.raises(ragd_client.ResourceExhausted):
        client.search("bread", path_prefix="/" + "x" * 4000)


@pytest.mark.stores("milvus")
def test_a_store_server_that_does_not_answer_is_waited_for(
    daemon_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Milvus server is down when the daemon starts: it answers NOT_SERVING, says why in
    ``Status.writer_error``, retries, and serves (and indexes) once the server answers."""
    import threading

    import ragd.server
    import ragd.store.milvus as milvus
    from ragd.errors import StoreUnavailable

    real_connect = milvus.connect
    up = threading.Event()
    attempts: list[float] = []

    def connect(config: Any) -> Any:
        attempts.append(time.monotonic())
        if not up.is_set():
            raise StoreUnavailable("store.uri: cannot reach the Milvus server at http://db:19530 (refused)")
        return real_connect(config)

    monkeypatch.setattr(milvus, "connect", connect)
    monkeypatch.setattr(ragd.server, "STORE_RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(ragd.server, "STORE_RETRY_MAX_S", 0.2)
    box: dict[str, Any] = {}
    starter = threading.Thread(target=lambda: box.setdefault("started", daemon_factory()))
    starter.start()
    sock = tmp_path / "run" / "ragd.sock"
    wait_for(sock.exists, what="the socket")
    client = ragd_client.Client(address=f"unix://{sock}", timeout=10)
    try:
        st = wait_for(lambda: (s := client.status()).writer_error and s, what="the reason in Status")
        assert not st.serving and client.health() == "NOT_SERVING"
        assert st.writer_error.startswith("waiting for the vector store: store.uri: cannot reach the Milvus server")
        wait_for(lambda: len(attempts) >= 3, what="retries")
        up.set()
        starter.join(30)
        assert not starter.is_alive()
        assert client.health() == "SERVING"
        st = wait_for(lambda: idle(client), what="indexed after the wait")
        assert st.files_indexed == 2 and not st.writer_error
    finally:
        up.set()
        starter.join(30)
        client.close()
