"""The vector-store backends behind one seam: FAISS (with the in-memory sparse mirror) and
Milvus (Milvus Lite in tmp_path) answer the same searches with the same scores, the Milvus
collection converges with the catalog when it is opened after a crash, and a wrong
``[store]`` setting is a one-line error naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_tree
from ragd.engine import Engine
from ragd.errors import ConfigError, StoreError, StoreUnavailable
from ragd.indexer import index_paths
from ragd.search import SearchOptions, search
from ragd.store.base import ChunkFilter

pytestmark = pytest.mark.models("fake")

NOTES = {
    "glaciers.md": "# Glaciers\n\nIce cores from glaciers record the climate of past centuries.\n",
    "bread.txt": "Sourdough bread needs a starter made of flour and water.\n",
    "rivers/delta.txt": "River deltas form where rivers deposit sediment into the sea.\n",
    "rivers/nile.md": "# Nile\n\nThe Nile delta is one of the largest river deltas.\n",
    "kestrel.txt": "Kestrels hover over motorway verges while hunting voles and mice.\n",
}
QUERIES = ("river deltas and sediment", "sourdough starter", "glaciers climate", "kestrels hunting voles")


def milvus_config(make_config: Any, tmp_path: Path, **store: str) -> Any:
    return make_config(store={"backend": "milvus", "uri": str(tmp_path / "milvus" / "ragd.db"), **store})


def answers(engine: Engine) -> list[list[tuple[str, int, float]]]:
    return [[(h.path, h.start_line, h.score) for h in search(engine, q, SearchOptions(mode=mode, rerank=False)).hits]
            for q in QUERIES for mode in ("dense", "sparse", "hybrid")]


def test_both_backends_answer_the_same(tmp_path: Path, make_config: Any, loaded_models: Any) -> None:
    """The same tree indexed under each backend: every mode gives the same hits with the same
    scores (float32 inner products either way)."""
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    with Engine(make_config(), models=loaded_models) as faiss_engine, \
            Engine(milvus_config(make_config, tmp_path, collection="same"), models=loaded_models) as milvus_engine:
        index_paths(faiss_engine, [root])
        index_paths(milvus_engine, [root])
        assert milvus_engine.store.name == "milvus" and faiss_engine.store.name == "faiss"
        got, want = answers(milvus_engine), answers(faiss_engine)
        assert [[(p, line) for p, line, _ in hits] for hits in got] == [[(p, line) for p, line, _ in hits]
                                                                         for hits in want]
        assert [s for hits in got for _, _, s in hits] == pytest.approx([s for hits in want for _, _, s in hits],
                                                                        abs=1e-5)


def test_a_filter_reaches_milvus_as_an_expression(tmp_path: Path, make_config: Any, loaded_models: Any) -> None:
    """An allow-list of chunk ids becomes ``id in [...]``: only those chunks come back, and an
    empty list gives nothing."""
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    with Engine(milvus_config(make_config, tmp_path), models=loaded_models) as engine:
        index_paths(engine, [root])
        query = engine.models.embedder.embed_query("river deltas").dense[0]
        every = [cid for cid, _ in engine.vectors.search(query, 10)]
        assert len(every) == engine.catalog.count_chunks()
        some = np.array(every[1:3], dtype=np.int64)
        assert sorted(cid for cid, _ in engine.vectors.search(query, 10, ChunkFilter(some))) == sorted(some.tolist())
        assert engine.vectors.search(query, 10, ChunkFilter(np.zeros(0, dtype=np.int64))) == []


def test_the_collection_converges_with_the_catalog_at_open(
    tmp_path: Path, make_config: Any, loaded_models: Any,
) -> None:
    """What a kill between a SQLite commit and the collection's write leaves behind: a row the
    catalog no longer has, a chunk without its row, a row holding another chunk's vector under
    a reused id. The next engine deletes, adds and rewrites until the rows are the catalog's,
    so no vector of a deleted chunk is served and every chunk is found again."""
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    config = milvus_config(make_config, tmp_path)
    with Engine(config, models=loaded_models) as engine:
        index_paths(engine, [root])
        want = engine.catalog.embedded_chunks(engine.model_key)
        store: Any = engine.store
        ids = sorted(want)
        gone, stale = ids[0], ids[1]
        store._delete([gone])  # a chunk whose row was never written
        other = next(store._rows([(ids[2], want[ids[2]])], {}))
        store.client.upsert(store.collection, [  # a deleted chunk's row, and a reused id with another's vector
            {**other, "pk": f"{store.origin}:10000000", "chunk": 10_000_000, "hash": "f" * 64},
            {**other, "pk": f"{store.origin}:{stale}", "chunk": stale, "hash": "e" * 64},
        ])
        assert store.held().keys() != want.keys() or store.held() != want
    with Engine(config, models=loaded_models) as fresh:
        held = fresh.store.held()  # type: ignore[attr-defined]
        assert held == fresh.catalog.embedded_chunks(fresh.model_key) == want
        assert fresh.vectors.count == len(want)
        for mode in ("dense", "sparse"):
            hits = search(fresh, "Kestrels hover over motorway verges", SearchOptions(mode=mode, rerank=False)).hits
            assert hits[0].path == str(root / "kestrel.txt"), mode
            assert all(h.chunk_id in want for h in hits)


def test_a_run_whose_count_disagrees_reconciles(tmp_path: Path, make_config: Any, loaded_models: Any) -> None:
    """After an indexing run the collection's count is checked against the catalog, and the
    ids are compared when it disagrees."""
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    with Engine(milvus_config(make_config, tmp_path), models=loaded_models) as engine:
        index_paths(engine, [root])
        store: Any = engine.store
        store._delete([min(store.held())])
        store._count -= 1
        assert engine.check_mirrors() == ["vectors"]
        assert store.held() == engine.catalog.embedded_chunks(engine.model_key)
        assert engine.check_mirrors() == []


def test_a_collection_of_another_embedder_is_made_again(tmp_path: Path, make_config: Any,
                                                        loaded_models: Any) -> None:
    """The collection records the embedder it holds; one holding another's vectors is dropped
    and filled from this data folder's catalog."""
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    config = milvus_config(make_config, tmp_path)
    with Engine(config, models=loaded_models) as engine:
        index_paths(engine, [root])
        store: Any = engine.store
        label = store._label()
    from pymilvus import MilvusClient

    client = MilvusClient(uri=config.store.uri)
    try:
        client.drop_collection(config.store.collection)
        schema = MilvusClient.create_schema(auto_id=False, description='{"model": "another"}')
        schema.add_field("id", __import__("pymilvus").DataType.INT64, is_primary=True)
        schema.add_field("dense", __import__("pymilvus").DataType.FLOAT_VECTOR, dim=4)
        client.create_collection(config.store.collection, schema=schema)
    finally:
        client.close()
    with Engine(config, models=loaded_models) as fresh:
        assert fresh.store._label() == label  # type: ignore[attr-defined]
        assert fresh.store.held() == fresh.catalog.embedded_chunks(fresh.model_key)  # type: ignore[attr-defined]
        assert search(fresh, "sourdough starter", SearchOptions(mode="dense", rerank=False)).hits[0].path == str(
            root / "bread.txt")


@pytest.mark.parametrize(("store", "words"), [
    ({"backend": "milvus"}, 'store.uri: backend "milvus" needs a uri'),
    ({"backend": "milvus", "uri": "ftp://host/x"}, "store.uri: expected a server address"),
    ({"backend": "milvus", "uri": "vectors/milvus.sqlite"}, "store.uri: expected a Milvus Lite file path"),
    ({"backend": "qdrant"}, "store.backend: expected one of"),
    ({"collection": "my-index"}, "store.collection: expected a Milvus collection name"),
    ({"vectors": "bf16"}, "store.vectors: expected one of"),
    ({"exact_limit": 10}, "store.exact_limit: expected"),
    ({"nprobe": -1}, "store.nprobe: expected"),
])
def test_a_wrong_store_setting_is_a_one_line_config_error(make_config: Any, store: dict[str, Any],
                                                          words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(store=store)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_relative_lite_path_is_anchored_at_the_config_file(make_config: Any, tmp_path: Path) -> None:
    config = make_config(store={"backend": "milvus", "uri": "index/milvus.db"})
    assert config.store.uri == str(tmp_path / "index" / "milvus.db")


def test_an_unreachable_server_is_a_one_line_store_error(make_config: Any, loaded_models: Any) -> None:
    """Nothing listens there: opening the store says which setting to check, on one line, as
    ``StoreUnavailable`` (the daemon waits for it; a wrong Lite path is a plain StoreError)."""
    config = make_config(store={"backend": "milvus", "uri": "http://127.0.0.1:9"})
    with Engine(config, models=loaded_models) as engine, pytest.raises(StoreUnavailable) as caught:
        _ = engine.vectors
    message = str(caught.value)
    assert message.startswith("store.uri: cannot reach the Milvus server at http://127.0.0.1:9") and "\n" not in message


def test_a_lite_file_that_cannot_be_made_is_a_one_line_store_error(
    make_config: Any, loaded_models: Any, tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    config = make_config(store={"backend": "milvus", "uri": str(blocker / "milvus.db")})
    with Engine(config, models=loaded_models) as engine, pytest.raises(StoreError) as caught:
        _ = engine.vectors
    assert str(caught.value).startswith("store.uri: cannot make the folder of the Milvus Lite file")


@pytest.mark.parametrize("index_type", ["HNSW", "IVF_FLAT"])
def test_an_approximate_milvus_index_is_made_switched_and_searched(
    tmp_path: Path, make_config: Any, loaded_models: Any, index_type: str,
) -> None:
    """``store.milvus_index`` gives the dense vectors that index (searched with its own
    parameters, same hits as FLAT on a small tree); changing it rebuilds the index at the
    next open, without refilling the rows."""
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    with Engine(milvus_config(make_config, tmp_path), models=loaded_models) as flat:
        index_paths(flat, [root])
        want = answers(flat)
    config = milvus_config(make_config, tmp_path, milvus_index=index_type)
    with Engine(config, models=loaded_models) as engine:
        store = engine.store
        assert store.client.describe_index(store.collection, "dense")["index_type"] == index_type
        assert store.index_type == index_type and store.count == engine.catalog.count_chunks()
        got = answers(engine)
        assert [[(p, line) for p, line, _ in hits] for hits in got] == [[(p, line) for p, line, _ in hits]
                                                                         for hits in want]
    with Engine(milvus_config(make_config, tmp_path), models=loaded_models) as back:
        assert back.store.client.describe_index(back.store.collection, "dense")["index_type"] == "FLAT"
        assert answers(back) == want


def test_a_shared_collection_keeps_its_index(tmp_path: Path, make_config: Any, loaded_models: Any) -> None:
    """Daemons set differently must not rebuild a shared collection's index at each other's
    every start: one whose rows are not all its own keeps the index there and searches it."""
    write_tree(tmp_path / "a", NOTES)
    write_tree(tmp_path / "b", {"other.txt": "Kestrels and falcons hunt over open fields.\n"})
    with Engine(milvus_config(make_config, tmp_path, origin="a"), models=loaded_models) as a:
        index_paths(a, [tmp_path / "a"])
    with Engine(make_config(data_dir=str(tmp_path / "b-data"),
                            store={"backend": "milvus", "uri": str(tmp_path / "milvus" / "ragd.db"), "origin": "b",
                                   "milvus_index": "HNSW"}), models=loaded_models) as b:
        index_paths(b, [tmp_path / "b"])
        assert b.store.index_type == "FLAT"
        assert b.store.client.describe_index(b.store.collection, "dense")["index_type"] == "FLAT"
        found = search(b, "kestrels hunting voles", SearchOptions(mode="dense", rerank=False)).hits
        assert ("a", str(tmp_path / "a" / "kestrel.txt")) in {(h.origin, h.path) for h in found}
        assert ("", str(tmp_path / "b" / "other.txt")) in {(h.origin, h.path) for h in found}
