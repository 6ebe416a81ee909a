"""Several daemons share one Milvus collection (issue 28): each writes its own rows under its
``store.origin``, and any of them finds the others' chunks with complete hits (path, lines,
heading, snippet, the origin). Milvus Lite serves one file to one process only, so the
daemons here are engines (and one real gRPC daemon) in this test process on one Lite file;
pymilvus gives every client of that file the one embedded server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon import wait_for

import ragd_client
from conftest import write_tree
from ragd.config import parse_config
from ragd.engine import Engine
from ragd.errors import ConfigError, StoreError
from ragd.filters import Filters
from ragd.indexer import index_paths
from ragd.search import Hit, SearchOptions, search
from ragd.server import Daemon
from ragd.store.milvus import VARCHAR_BYTES, _cut, foreign_id

pytestmark = pytest.mark.models("fake")

ALICE = {
    "glaciers.md": "# Glaciers\n\n## Ice cores\n\nIce cores from glaciers record the climate of past centuries.\n",
    "bread.txt": "Sourdough bread needs a starter made of flour and water.\n",
}
BOB = {
    "kestrel.md": "# Birds\n\n## Kestrels\n\nKestrels hover over motorway verges while hunting voles and mice.\n",
    "rivers/delta.txt": "River deltas form where rivers deposit sediment into the sea.\n",
}
MODES = ("dense", "sparse", "hybrid")


@pytest.fixture
def shared(tmp_path: Path, model_folders: dict[str, Path]) -> Callable[..., Any]:
    """The config of one daemon of the team: its own data folder, the shared Lite file and collection."""

    def config(name: str, embedder: Path | None = None, **store: str) -> Any:
        return parse_config({
            "data_dir": str(tmp_path / name / "data"),
            "models": {"embedder": str(embedder or model_folders["m3"]), "reranker": str(model_folders["reranker"]),
                       "fallback": "none"},
            "store": {"backend": "milvus", "uri": str(tmp_path / "team" / "milvus.db"), "collection": "team",
                      "origin": name, **store},
        }, source=tmp_path / "config.toml")

    return config


@pytest.fixture
def team(tmp_path: Path, shared: Callable[..., Any], loaded_models: Any) -> Iterator[tuple[Engine, Engine, Path, Path]]:
    """Alice's and Bob's engines, each having indexed its own root."""
    alice_root, bob_root = tmp_path / "alice" / "notes", tmp_path / "bob" / "notes"
    write_tree(alice_root, ALICE)
    write_tree(bob_root, BOB)
    alice = Engine(shared("alice"), models=loaded_models)
    bob = Engine(shared("bob"), models=loaded_models)
    try:
        index_paths(alice, [alice_root])
        index_paths(bob, [bob_root])
        yield alice, bob, alice_root, bob_root
    finally:
        alice.close()
        bob.close()


def hits(engine: Engine, query: str, mode: str = "hybrid", **options: Any) -> list[Hit]:
    return search(engine, query, SearchOptions(mode=mode, rerank=False, **options)).hits


def shown(hit: Hit) -> tuple[Any, ...]:
    return hit.path, hit.start_line, hit.end_line, hit.heading, hit.snippet, hit.page, hit.end_page, hit.text


def test_each_daemon_finds_the_others_chunks_with_complete_hits(team: tuple[Engine, Engine, Path, Path]) -> None:
    """A search on Alice's daemon finds Bob's chunk as Bob's own search shows it (path, lines,
    heading, snippet, text), marked with Bob's origin under a negative id, in every mode."""
    alice, bob, alice_root, bob_root = team
    for mode in MODES:
        theirs = hits(alice, "kestrels hunting voles", mode)[0]
        own = hits(bob, "kestrels hunting voles", mode)[0]
        assert theirs.path == str(bob_root / "kestrel.md") and theirs.origin == "bob", mode
        assert own.origin == "" and own.chunk_id > 0
        assert theirs.chunk_id == -foreign_id("bob", own.chunk_id)
        assert shown(theirs) == shown(own), mode
        assert theirs.heading == ["Birds", "Kestrels"] and "Kestrels hover" in theirs.snippet
        assert theirs.retrieval_score == pytest.approx(own.retrieval_score, abs=1e-5) or mode == "hybrid"
        mine = hits(alice, "sourdough starter flour", mode)[0]  # its own rows keep their chunk ids
        assert (mine.path, mine.origin) == (str(alice_root / "bread.txt"), "") and mine.chunk_id > 0
    assert alice.vectors.count == alice.catalog.count_embedded_chunks(alice.model_key)  # count: own rows
    assert alice.shared_chunks() == bob.vectors.count and bob.shared_chunks() == alice.vectors.count
    result = search(alice, "kestrels", SearchOptions(rerank=True))  # the reranker reads the stored text
    assert result.hits[0].origin == "bob" and result.hits[0].rerank_score is not None
    assert result.to_json()["hits"][0]["origin"] == "bob"


def test_a_deleted_file_leaves_the_other_daemons_searches(team: tuple[Engine, Engine, Path, Path]) -> None:
    alice, bob, _, bob_root = team
    gone = str(bob_root / "kestrel.md")
    assert gone in {h.path for h in hits(alice, "kestrels hunting voles")}
    (bob_root / "kestrel.md").unlink()
    index_paths(bob, [bob_root])
    for mode in MODES:
        assert gone not in {h.path for h in hits(alice, "kestrels hunting voles", mode)}, mode
    assert alice.shared_chunks() == bob.vectors.count == bob.catalog.count_chunks()


def test_reconcile_and_rebuild_touch_only_their_own_rows(
    team: tuple[Engine, Engine, Path, Path], shared: Callable[..., Any], loaded_models: Any,
) -> None:
    """Alice's engine opened again after a crash (a row of hers missing, one of a deleted
    chunk left) puts her rows right, and a rebuild of hers leaves Bob's rows as they were."""
    alice, bob, _, _ = team
    store: Any = alice.store
    bobs: Any = bob.store
    before = bobs.held()
    mine = store.held()
    store._delete([min(mine)])
    row = next(store._rows([(max(mine), mine[max(mine)])], {}))
    store.client.upsert(store.collection, [{**row, "pk": "alice:999999", "chunk": 999_999}])
    alice.close()
    with Engine(shared("alice"), models=loaded_models) as again:
        assert again.store.held() == mine  # type: ignore[attr-defined]
        assert bobs.held() == before
        again.rebuild_vectors()
        assert again.store.held() == mine and bobs.held() == before  # type: ignore[attr-defined]
        assert hits(again, "kestrels hunting voles")[0].origin == "bob"


def test_a_model_mismatch_is_refused_without_dropping_the_shared_collection(
    team: tuple[Engine, Engine, Path, Path], shared: Callable[..., Any], tmp_path: Path,
) -> None:
    from ragd.models import load_models
    from ragd.models.fake import write_fake_model

    alice, bob, _, _ = team
    other = write_fake_model(tmp_path / "other-embedder", dim=64)
    config = shared("carol", embedder=other)
    with Engine(config, models=load_models(config.models, warn=False)) as carol, \
            pytest.raises(StoreError) as caught:
        _ = carol.vectors
    message = str(caught.value)
    assert message.startswith("store.collection: Milvus collection 'team' is shared with other ragd daemons")
    assert "dimension 128" in message and "dimension 64" in message and "\n" not in message
    assert hits(alice, "kestrels hunting voles")[0].origin == "bob"  # still there, for both
    assert bob.store.held() == bob.catalog.embedded_chunks(bob.model_key)  # type: ignore[attr-defined]


def test_filters_reach_the_other_origins_rows_or_say_they_could_not(team: tuple[Engine, Engine, Path, Path]) -> None:
    """A path prefix and extensions become expressions over Bob's stored fields; globs cannot,
    so Bob's rows are left out and the result says why."""
    alice, _, alice_root, bob_root = team
    rivers = hits(alice, "river deltas sediment", path_prefix=str(bob_root / "rivers"))
    assert rivers and {(h.path, h.origin) for h in rivers} == {(str(bob_root / "rivers" / "delta.txt"), "bob")}
    md = hits(alice, "kestrels glaciers", filters=Filters(extensions=(".md",)))
    assert {h.path for h in md} == {str(bob_root / "kestrel.md"), str(alice_root / "glaciers.md")}
    assert hits(alice, "kestrels", filters=Filters(modified_after=4e9)) == []  # none is from 2096
    globbed = search(alice, "kestrels glaciers", SearchOptions(rerank=False, filters=Filters(globs=("*.md",))))
    assert {h.path for h in globbed.hits} == {str(alice_root / "glaciers.md")}
    assert any("other daemons' chunks in the shared collection were left out" in d and "globs" in d
               for d in globbed.degraded)
    scoped = hits(alice, "kestrels glaciers", path_prefix=str(alice_root))
    assert scoped and {h.origin for h in scoped} == {""}


def test_a_daemon_without_chunks_of_its_own_searches_the_team(
    team: tuple[Engine, Engine, Path, Path], shared: Callable[..., Any], loaded_models: Any,
) -> None:
    with Engine(shared("dave"), models=loaded_models) as dave:
        found = hits(dave, "kestrels hunting voles", "dense")
        assert found[0].origin == "bob" and dave.vectors.count == 0


def test_an_origin_is_made_once_per_data_folder_and_checked(
    tmp_path: Path, shared: Callable[..., Any], loaded_models: Any,
) -> None:
    """Without store.origin each data folder names itself once (two folders on one host
    differ); a renamed origin takes this folder's rows with it; a bad name is a one-line error."""
    root = tmp_path / "notes"
    write_tree(root, ALICE)
    with Engine(shared("one", origin=""), models=loaded_models) as one, \
            Engine(shared("two", origin=""), models=loaded_models) as two:
        index_paths(one, [root])
        first, second = one.store.origin, two.store.origin  # type: ignore[attr-defined]
        assert first != second and (tmp_path / "one" / "data" / "origin").read_text().strip() == first
        assert two.shared_chunks() == one.vectors.count > 0
    with Engine(shared("one", origin=""), models=loaded_models) as again:
        assert again.store.origin == first  # type: ignore[attr-defined]
    with Engine(shared("one", origin="renamed"), models=loaded_models) as renamed, \
            Engine(shared("two", origin=""), models=loaded_models) as two:
        assert renamed.store.held() == renamed.catalog.embedded_chunks(renamed.model_key)  # type: ignore[attr-defined]
        assert {h.origin for h in hits(two, "sourdough starter")} == {"renamed"}
    with pytest.raises(ConfigError) as caught:
        shared("x", origin="bad:name")
    assert "store.origin: expected a name of letters" in str(caught.value) and "\n" not in str(caught.value)
    (tmp_path / "one" / "data" / "origin").write_text("bad:name\n")
    with Engine(shared("one", origin=""), models=loaded_models) as damaged, pytest.raises(StoreError) as failed:
        _ = damaged.vectors
    assert str(failed.value).startswith("store.origin: ") and "not an origin name" in str(failed.value)


def test_a_long_text_is_cut_on_a_character_boundary() -> None:
    text = "é" * VARCHAR_BYTES
    cut, was_cut = _cut(text)
    assert was_cut and len(cut.encode()) <= VARCHAR_BYTES and cut == "é" * (VARCHAR_BYTES // 2)
    assert _cut("short") == ("short", False)


def test_a_daemon_serves_the_others_hits_and_points_at_their_origin(
    team: tuple[Engine, Engine, Path, Path], shared: Callable[..., Any], loaded_models: Any, tmp_path: Path,
) -> None:
    """Through gRPC: Alice's daemon returns Bob's chunk with its origin; GetChunk and ReadFile
    of it say which origin serves it instead of failing."""
    alice, bob, alice_root, bob_root = team
    alice.close()
    config = parse_config({
        **{k: v for k, v in _as_table(shared("alice")).items()},
        "roots": [{"path": str(alice_root)}],
        "server": {"socket": str(tmp_path / "run" / "ragd.sock")},
    }, source=tmp_path / "config.toml")
    daemon = Daemon(config)
    daemon.start(engine_factory=lambda c: Engine(c, models=loaded_models))
    try:
        client = ragd_client.Client(address=f"unix://{daemon.socket}", timeout=30)
        wait_for(lambda: client.status().serving, what="serving")
        assert client.status().shared_chunks == bob.vectors.count > 0
        hit = client.search("kestrels hunting voles", rerank=False).hits[0]
        assert (hit.path, hit.origin, hit.heading) == (str(bob_root / "kestrel.md"), "bob", ["Birds", "Kestrels"])
        assert hit.chunk_id < 0 and hit.start_line > 0
        with pytest.raises(ragd_client.NotFound, match="belongs to origin bob"):
            client.get_chunk(hit.chunk_id)
        with pytest.raises(ragd_client.NotFound, match="indexed by origin bob"):
            client.read_file(hit.path)
        with pytest.raises(ragd_client.NotFound, match="no chunk -5"):
            client.get_chunk(-5)
        client.close()
    finally:
        daemon.stop(0)


def _as_table(config: Any) -> dict[str, Any]:
    return {"data_dir": str(config.data_dir),
            "models": {"embedder": config.models.embedder, "reranker": config.models.reranker, "fallback": "none"},
            "store": {"backend": "milvus", "uri": config.store.uri, "collection": config.store.collection,
                      "origin": config.store.origin}}


def test_the_command_line_shows_where_a_hit_lives(
    team: tuple[Engine, Engine, Path, Path], tmp_path: Path, model_folders: dict[str, Path],
) -> None:
    """``ragd search`` in a process of its own (no daemon), from a data folder with no chunks
    of its own: the team's hits, each of another daemon's marked with its origin."""
    from click.testing import CliRunner

    from ragd.cli import main

    _, _, _, bob_root = team
    cfg = tmp_path / "carl.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "carl" / "data"}"\n\n'
        f'[models]\nembedder = "{model_folders["m3"]}"\nreranker = "{model_folders["reranker"]}"\nfallback = "none"\n\n'
        f'[store]\nbackend = "milvus"\nuri = "{tmp_path / "team" / "milvus.db"}"\ncollection = "team"\n'
        'origin = "carl"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["search", "kestrels hunting voles", "--config", str(cfg), "--no-rerank"])
    assert result.exit_code == 0, result.output
    assert f"1. {bob_root / 'kestrel.md'}:" in result.stdout and "(on bob)" in result.stdout.splitlines()[0]


def test_a_collection_of_only_its_own_rows_follows_a_new_embedder(
    tmp_path: Path, shared: Callable[..., Any], loaded_models: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Nobody else's rows in it: a new embedder drops the collection and fills it again, as
    with one daemon; the label survives a reopen (Milvus Lite keeps properties, not
    descriptions), so an unchanged daemon does not refill it."""
    from ragd.models import load_models
    from ragd.models.fake import write_fake_model

    root = tmp_path / "notes"
    write_tree(root, ALICE)
    with Engine(shared("solo"), models=loaded_models) as solo:
        index_paths(solo, [root])
        rows = solo.store.held()  # type: ignore[attr-defined]
    caplog.clear()
    with Engine(shared("solo"), models=loaded_models) as again:
        store: Any = again.store
        assert store.held() == rows and "made again" not in caplog.text
    config = shared("solo", embedder=write_fake_model(tmp_path / "other-embedder", dim=64))
    with Engine(config, models=load_models(config.models, warn=False)) as changed:
        index_paths(changed, [root])
        assert "made again" in caplog.text and changed.store._label()["dim"] == 64  # type: ignore[attr-defined]
        assert hits(changed, "sourdough starter", "dense")[0].path == str(root / "bread.txt")


# -- ragd store origins / forget: a machine that left the team -----------------------------
def _store_cli(tmp_path: Path, model_folders: dict[str, Path], name: str, store: str | None = None) -> Path:
    """A config file for the data folder ``name`` of the team, without store.origin: its origin
    is the one recorded in the data folder (``data_dir/origin``)."""
    cfg = tmp_path / f"{name}.toml"
    store = store if store is not None else (
        f'backend = "milvus"\nuri = "{tmp_path / "team" / "milvus.db"}"\ncollection = "team"\n')
    cfg.write_text(
        f'data_dir = "{tmp_path / name / "data"}"\n\n'
        f'[models]\nembedder = "{model_folders["m3"]}"\nreranker = "{model_folders["reranker"]}"\nfallback = "none"\n\n'
        f'[store]\n{store}', encoding="utf-8")
    return cfg


def _ragd(*args: str, input: str | None = None) -> Any:
    from click.testing import CliRunner

    from ragd.cli import main

    result = CliRunner().invoke(main, list(args), input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _origins(cfg: Path) -> dict[str, tuple[int, bool]]:
    import json

    result = _ragd("store", "origins", "--config", str(cfg), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["collection"] == "team"
    return {o["origin"]: (o["rows"], o["own"]) for o in data["origins"]}


def test_store_origins_lists_each_origin_with_its_rows(
    team: tuple[Engine, Engine, Path, Path], tmp_path: Path, model_folders: dict[str, Path],
) -> None:
    """Counted by origin in the collection itself; this data folder's origin (from its
    data_dir/origin file) is marked; a folder that never opened the store has none."""
    alice, bob, _, bob_root = team
    (bob_root / "owls.txt").write_text("Barn owls hunt at dusk over rough grassland.\n", encoding="utf-8")
    index_paths(bob, [bob_root])  # the two origins' counts differ
    mine, theirs = len(alice.store.held()), len(bob.store.held())  # type: ignore[attr-defined]
    assert mine == alice.vectors.count > 0 and theirs == bob.vectors.count > 0 and mine != theirs
    cfg = _store_cli(tmp_path, model_folders, "alice")
    assert _origins(cfg) == {"alice": (mine, True), "bob": (theirs, False)}
    result = _ragd("store", "origins", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"Milvus collection 'team': 2 origins, {mine + theirs} rows"
    assert lines[1].split() == ["alice", str(mine), "rows", "(this", "data", "folder)"]
    assert lines[2].split() == ["bob", str(theirs), "rows"] and len(lines) == 3
    import json

    fresh = _ragd("store", "origins", "--config", str(_store_cli(tmp_path, model_folders, "nobody")), "--json")
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout)["origin"] is None
    assert {o["origin"]: o["own"] for o in json.loads(fresh.stdout)["origins"]} == {"alice": False, "bob": False}
    assert not (tmp_path / "nobody" / "data" / "origin").exists()  # listing records no origin


def test_store_forget_deletes_exactly_the_other_origins_rows(
    team: tuple[Engine, Engine, Path, Path], tmp_path: Path, model_folders: dict[str, Path],
) -> None:
    import json

    alice, _, alice_root, _ = team
    store: Any = alice.store
    mine = store.held()
    assert "bob" in {h.origin for h in hits(alice, "kestrels hunting voles")}
    cfg = _store_cli(tmp_path, model_folders, "alice")
    before = _origins(cfg)
    result = _ragd("store", "forget", "bob", "--yes", "--config", str(cfg), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"collection": "team", "origin": "bob", "rows_deleted": before["bob"][0]}
    assert _origins(cfg) == {"alice": before["alice"]}
    assert store.held() == mine and alice.shared_chunks() == 0
    for mode in MODES:
        found = hits(alice, "kestrels hunting voles", mode)  # sparse: no word of Alice's files, no hit
        assert bool(found) == (mode != "sparse") and {h.origin for h in found} <= {""}, mode
        assert {h.path for h in found} <= {str(alice_root / p) for p in ALICE}, mode
    again = _ragd("store", "forget", "bob", "--yes", "--config", str(cfg))  # nothing left to forget
    assert again.exit_code == 1 and "origin bob has no rows" in again.stderr


def test_store_forget_refuses_and_changes_nothing(
    team: tuple[Engine, Engine, Path, Path], tmp_path: Path, model_folders: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """This data folder's own origin, an origin without rows, and no --yes on a standard input
    that is not a terminal are one-line errors; a declined confirmation deletes nothing; a
    confirmed one deletes."""
    alice, _, _, _ = team
    cfg = _store_cli(tmp_path, model_folders, "alice")
    before = _origins(cfg)
    own = _ragd("store", "forget", "alice", "--yes", "--config", str(cfg))
    assert own.exit_code == 2 and own.stdout == ""
    assert own.stderr.startswith("ragd: error: alice is this data folder's origin") and "managed by its daemon" in \
        own.stderr and own.stderr.count("\n") == 1
    unknown = _ragd("store", "forget", "carol", "--yes", "--config", str(cfg))
    assert unknown.exit_code == 1 and unknown.stderr.count("\n") == 1
    assert unknown.stderr == (f"ragd: error: origin carol has no rows in Milvus collection 'team'; its origins: "
                              f"alice ({before['alice'][0]} rows), bob ({before['bob'][0]} rows)\n")
    unasked = _ragd("store", "forget", "bob", "--config", str(cfg), input="y\n")  # CliRunner's stdin: no terminal
    assert unasked.exit_code == 2 and "pass --yes to confirm" in unasked.stderr
    monkeypatch.setattr("ragd.cli._interactive", lambda: True)
    declined = _ragd("store", "forget", "bob", "--config", str(cfg), input="n\n")
    assert declined.exit_code == 1 and f"delete the {before['bob'][0]} rows of origin bob" in declined.stderr
    assert "not confirmed: nothing was deleted" in declined.stderr
    assert _origins(cfg) == before and alice.shared_chunks() == before["bob"][0]
    confirmed = _ragd("store", "forget", "bob", "--config", str(cfg), input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert confirmed.stdout == f"deleted {before['bob'][0]} rows of origin bob from Milvus collection 'team'\n"
    assert _origins(cfg) == {"alice": before["alice"]}


def test_origin_counts_page_past_one_query(tmp_path: Path) -> None:
    """More rows of one origin than a query returns (16,384): counted exactly, and forgetting
    another origin leaves them all."""
    from pymilvus import DataType, MilvusClient

    from ragd.store.milvus import forget_origin, origin_counts

    client = MilvusClient(uri=str(tmp_path / "big.db"))
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=128)
    schema.add_field("origin", DataType.VARCHAR, max_length=64)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index(field_name="dense", index_type="FLAT", metric_type="IP")
    index.add_index(field_name="origin", index_type="INVERTED")
    client.create_collection("big", schema=schema)
    client.create_index("big", index, sync=False)
    client.load_collection("big")
    many = [{"pk": f"wide:{i}", "origin": "wide", "dense": [1.0, 0.0]} for i in range(20_000)]
    for i in range(0, len(many), 5000):
        client.insert("big", many[i : i + 5000])
    client.insert("big", [{"pk": f'odd"one:{i}', "origin": 'odd"one', "dense": [0.0, 1.0]} for i in range(3)])
    try:
        assert origin_counts(client, "big") == {"odd\"one": 3, "wide": 20_000}
        assert forget_origin(client, "big", 'odd"one') == 3
        assert origin_counts(client, "big") == {"wide": 20_000}
        assert forget_origin(client, "big", "gone") == 0
    finally:
        client.close()


def test_store_commands_need_a_milvus_store_that_no_daemon_holds(
    tmp_path: Path, model_folders: dict[str, Path], caplog: pytest.LogCaptureFixture,
) -> None:
    """FAISS has no origins; a Milvus Lite file another process (a daemon) has open is a
    one-line error saying to stop it, not Milvus Lite's traceback."""
    import fcntl

    faiss = _store_cli(tmp_path, model_folders, "solo", store='backend = "faiss"\n')
    for args in (["origins"], ["forget", "bob", "--yes"]):
        result = _ragd("store", *args, "--config", str(faiss))
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr == ('ragd: error: origins exist only with store.backend = "milvus" (a collection several '
                                 'daemons share); this config has store.backend = "faiss"\n')
    lite = tmp_path / "held" / "milvus.db"
    lite.mkdir(parents=True)
    held = _store_cli(tmp_path, model_folders, "held", store=f'backend = "milvus"\nuri = "{lite}"\n')
    with open(lite / "LOCK", "w") as lock:  # what the daemon's Milvus Lite holds while it runs
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for args in (["origins"], ["forget", "bob", "--yes"]):
            result = _ragd("store", *args, "--config", str(held))
            assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
            assert result.stderr.startswith(f"ragd: error: store.uri: the Milvus Lite file {lite} is open in another "
                                            "process, most likely a running ragd daemon")
            assert "stop that daemon first, or use a Milvus server" in result.stderr
    assert "Traceback" not in caplog.text and "Failed to start MilvusLite" not in caplog.text
