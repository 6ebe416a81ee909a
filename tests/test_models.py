"""Model backends load the tiny stand-ins through the real code path and match
FlagEmbedding's own encode() output; resolution and fallback say what happened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragd.config import ModelsConfig
from ragd.errors import ModelNotFoundError
from ragd.models import load_models
from ragd.models.encoder import declared_pooling
from ragd.models.flag import FlagEmbedder
from ragd.models.resolve import minilm_folder, resolve_model

TEXTS = ["hello world 你好世界", "the quick brown fox jumps over the dog", "a", "ice cores record past climate"]


def test_m3_outputs_match_flagembedding_encode(tiny_models: dict[str, Path]) -> None:
    emb = FlagEmbedder(tiny_models["m3"], "tiny", precision="fp32", batch_size=2, multi_vector=True)
    assert emb.has_sparse and emb.dim == 32
    mine = emb.embed_documents(TEXTS)
    ref = emb._model.encode(
        TEXTS, batch_size=8, max_length=512, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )
    np.testing.assert_allclose(mine.dense, ref["dense_vecs"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mine.dense, axis=1), 1.0, atol=1e-5)
    assert mine.sparse is not None and mine.colbert is not None
    for ours, theirs in zip(mine.sparse, ref["lexical_weights"], strict=True):
        assert set(ours) == {int(k) for k in theirs}
        for k, v in theirs.items():
            assert ours[int(k)] == pytest.approx(float(v), abs=1e-5)
    for ours_c, theirs_c in zip(mine.colbert, ref["colbert_vecs"], strict=True):
        np.testing.assert_allclose(ours_c, theirs_c, atol=1e-5)
    # The lexical matching score over our weights equals FlagEmbedding's.
    q, d = mine.sparse[1], mine.sparse[3]
    ours_score = sum(w * d[t] for t, w in q.items() if t in d)
    theirs_score = emb._model.compute_lexical_matching_score(ref["lexical_weights"][1], ref["lexical_weights"][3])
    assert ours_score == pytest.approx(float(theirs_score), abs=1e-5)


def test_minilm_is_dense_with_mean_pooling() -> None:
    folder = minilm_folder()
    assert declared_pooling(folder) == "mean"
    emb = FlagEmbedder(folder, "minilm", precision="fp32", batch_size=3)
    assert not emb.has_sparse and emb.dim == 384 and emb.max_tokens == 254
    mine = emb.embed_documents(TEXTS)
    ref = emb._model.encode(TEXTS, batch_size=8, max_length=256)
    np.testing.assert_allclose(mine.dense, ref, atol=1e-5)
    a, b, c = emb.embed_documents(["a cat sat on the mat", "a kitten sits on a rug", "interest rates rose"]).dense
    assert float(a @ b) > float(a @ c) + 0.3  # real semantics, not random weights


def test_query_longer_than_model_is_refused(tiny_models: dict[str, Path]) -> None:
    from ragd.errors import UsageError

    emb = FlagEmbedder(folder := minilm_folder(), "minilm")
    assert folder.is_dir()
    with pytest.raises(UsageError, match="query is too long"):
        emb.embed_query("word " * 400)


def test_reranker_scores_pairs(loaded_tiny: Any) -> None:
    scores = loaded_tiny.reranker.score("glaciers", ["ice cores", "bread", "rivers"])
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) == 3


def test_resolution_reports_where_or_why(tmp_path: Path) -> None:
    assert resolve_model("minilm").found
    missing = resolve_model(str(tmp_path / "nothing"))
    assert not missing.found and "does not exist" in (missing.error or "")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in (resolve_model(str(tmp_path / "empty")).error or "")
    hub = resolve_model("BAAI/bge-m3-not-cached-here")
    assert not hub.found and "ragd models pull" in (hub.error or "")
    with pytest.raises(ModelNotFoundError, match="ragd models pull"):
        hub.require()


def test_fallback_to_minilm_turns_reranking_off(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    cfg = ModelsConfig(embedder=str(tmp_path / "gone"), reranker=str(tiny_models["reranker"]), fallback="minilm")
    loaded = load_models(cfg, warn=False)
    assert loaded.embedder.model_id.startswith("sentence-transformers/all-MiniLM-L6-v2@")
    assert loaded.reranker is None
    assert any("fallback minilm" in d for d in loaded.degraded)


def test_no_fallback_raises(tmp_path: Path) -> None:
    cfg = ModelsConfig(embedder=str(tmp_path / "gone"), fallback="none")
    with pytest.raises(ModelNotFoundError, match="gone"):
        load_models(cfg, warn=False)


def test_missing_reranker_degrades_only_reranking(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    cfg = ModelsConfig(embedder=str(tiny_models["m3"]), reranker=str(tmp_path / "gone"), fallback="none")
    loaded = load_models(cfg, warn=False)
    assert loaded.reranker is None and loaded.embedder.has_sparse
    assert any("reranker unavailable" in d for d in loaded.degraded)


def test_embedder_is_safe_across_threads(loaded_tiny: Any) -> None:
    """The daemon chunks (count_tokens) on the writer thread while searches embed queries:
    a fast tokenizer used from two threads at once raises "Already borrowed" unless guarded."""
    import threading

    emb = loaded_tiny.embedder
    errors: list[BaseException] = []
    text = "glaciers and ice cores " * 200

    def hammer(fn: Any) -> None:
        try:
            for _ in range(40):
                fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(lambda: emb.count_tokens([text] * 8),)) for _ in range(3)]
    threads.append(threading.Thread(target=hammer, args=(lambda: emb.embed_query("ice cores"),)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_reduced_precision_gets_its_own_model_id(tiny_models: dict[str, Path]) -> None:
    """bf16/int8 vectors differ from fp32 ones; they must not share cached embeddings."""
    assert FlagEmbedder(tiny_models["m3"], "tiny", precision="bf16").model_id == "tiny+bf16"
    assert FlagEmbedder(tiny_models["m3"], "tiny", precision="fp32").model_id == "tiny"


def test_models_load_once_when_two_threads_ask(make_config: Any, monkeypatch: pytest.MonkeyPatch,
                                               loaded_tiny: Any) -> None:
    """A Status call while the daemon loads (a first start converts models for minutes) must
    wait for that load, not start a second one beside it."""
    import threading
    import time

    import ragd.models
    from ragd.engine import Engine

    calls: list[int] = []

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        time.sleep(0.3)
        return loaded_tiny

    monkeypatch.setattr(ragd.models, "load_models", slow_load)
    engine = Engine(make_config())
    try:
        got: list[Any] = []
        threads = [threading.Thread(target=lambda: got.append(engine.models)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 1 and len(got) == 3 and all(g is loaded_tiny for g in got)
    finally:
        engine.close()


def test_readers_made_while_the_engine_loads_wait_for_that_load(make_config: Any, monkeypatch: pytest.MonkeyPatch,
                                                               loaded_tiny: Any) -> None:
    """Searches and AddRoot calls arriving while the daemon still loads each ask the engine
    for a reader; they must wait for the one load and share its vectors and model key, not
    register the model or build the vectors again on the engine's own connection (two
    threads there once rolled back each other's insert of the model row, and every
    indexing batch then failed its foreign key)."""
    import threading
    import time

    import ragd.models
    from ragd.engine import Engine

    release = threading.Event()

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        return loaded_tiny

    monkeypatch.setattr(ragd.models, "load_models", slow_load)
    engine = Engine(make_config())
    readers: list[Engine] = []
    errors: list[BaseException] = []

    def ask(fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:  # reported below with the others
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(lambda: readers.append(engine.reader()),)) for _ in range(6)]
    threads.append(threading.Thread(target=ask, args=(lambda: engine.vectors,)))  # the daemon's own load
    try:
        for t in threads:
            t.start()
        time.sleep(0.2)
        release.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert len(readers) == 6
        key = engine.model_key
        rows = engine.catalog.db.execute("SELECT id, name FROM models").fetchall()
        assert rows == [(key, loaded_tiny.embedder.model_id)]
        assert all(r.model_key == key and r.vectors is engine.vectors for r in readers)
        assert all(r.catalog is not engine.catalog for r in readers)
    finally:
        release.set()
        for r in readers:
            r.close()
        engine.close()


def test_model_and_root_registration_is_one_row_across_connections(tmp_path: Path) -> None:
    """Two processes (the daemon and a CLI search beside it) may register the same model or
    root at the same moment: each gets the one row, neither fails."""
    import threading

    from ragd.store.catalog import Catalog

    def register(cat: Catalog, start: threading.Barrier, got: list[tuple[int, int]],
                 errors: list[BaseException]) -> None:
        try:
            start.wait()
            got.append((cat.model_key("bge-m3", 1024), cat.add_root("/notes")))
        except BaseException as exc:  # reported below
            errors.append(exc)

    for attempt in range(5):
        path = tmp_path / f"catalog-{attempt}.db"
        Catalog(path).close()
        catalogs = [Catalog(path) for _ in range(4)]
        start = threading.Barrier(len(catalogs))
        got: list[tuple[int, int]] = []
        errors: list[BaseException] = []
        threads = [threading.Thread(target=register, args=(c, start, got, errors)) for c in catalogs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        try:
            assert not errors, errors
            assert len(set(got)) == 1 and len(got) == len(catalogs)
            assert catalogs[0].db.execute("SELECT count(*) FROM models").fetchone()[0] == 1
            assert catalogs[0].db.execute("SELECT count(*) FROM roots").fetchone()[0] == 1
        finally:
            for c in catalogs:
                c.close()


def test_models_with_the_same_tokenizer_files_share_one_tokenizer(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """BGE-M3 and bge-reranker-v2-m3 ship the same XLM-R tokenizer (~140 MB in memory each):
    loaded once; a folder whose tokenizer files differ gets its own."""
    import json
    import shutil

    from ragd.models.flag import FlagCrossEncoder

    emb = FlagEmbedder(tiny_models["m3"], "tiny", precision="fp32")
    rr = FlagCrossEncoder(tiny_models["reranker"], "tiny", precision="fp32")
    files = [(tiny_models[m] / "tokenizer.json").read_bytes() for m in ("m3", "reranker")]
    assert files[0] == files[1]
    assert emb.tokenizer is rr.tokenizer
    assert rr.score("ice", ["ice cores", "rivers"])  # still works
    other = tmp_path / "m3"
    shutil.copytree(tiny_models["m3"], other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["model_max_length"] = 128
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    emb2 = FlagEmbedder(other, "tiny", precision="fp32")
    assert emb2.tokenizer is not emb.tokenizer
