"""Multi-vector (ColBERT) rescoring: query vectors and scores equal FlagEmbedding's, vectors
are stored as float16, the colbert signal reorders the fused candidates, and nothing changes
(or breaks) without vectors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_tree
from ragd.engine import Engine
from ragd.errors import UsageError
from ragd.indexer import index_paths
from ragd.search import SearchOptions, colbert_scores, resolve_signals, search

DOCS = {
    "glaciers.md": "# Glaciers\n\nIce cores from glaciers record the climate of past centuries.\n",
    "bread.txt": "Sourdough bread needs a starter made of flour and water.\n",
    "rivers/delta.txt": "River deltas form where rivers deposit sediment into the sea.\n",
    "rivers/nile.md": "# Nile\n\nThe Nile delta is one of the largest river deltas.\n",
    "keys.md": "每季度更换签名密钥。 Signing keys are rotated every quarter.\n",
}
QUERY = "river delta sediment"
DIM = 32  # the tiny M3 model's hidden size (= its ColBERT dimension)


@pytest.fixture(scope="module")
def multi_models(tiny_models: dict[str, Path]) -> Any:
    """The tiny M3 embedder loaded with ``multi_vector = true`` (no reranker), on torch."""
    from ragd.config import ModelsConfig
    from ragd.models import load_models

    cfg = ModelsConfig(embedder=str(tiny_models["m3"]), reranker="none", fallback="none", multi_vector=True,
                       backend="torch")  # compared with FlagEmbedding's own encode()
    return load_models(cfg, warn=False)


@pytest.fixture
def multi_engine(make_config: Callable[..., Any], multi_models: Any) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def build(**sections: Any) -> Engine:
        models = {"multi_vector": True, "reranker": "none", **sections.pop("models", {})}
        engine = Engine(make_config(models=models, **sections), models=multi_models)
        engines.append(engine)
        return engine

    yield build
    for e in engines:
        e.close()


def _blobs(engine: Engine) -> list[tuple[str, bytes | None]]:
    rows = engine.catalog.db.execute(
        "SELECT c.text, e.colbert FROM chunks c JOIN embeddings e ON e.chunk_hash = c.content_hash ORDER BY c.id"
    )
    return [(str(t), b) for t, b in rows]


def test_query_vectors_and_score_equal_flagembedding(tmp_path: Path, multi_engine: Any) -> None:
    engine = multi_engine()
    write_tree(tmp_path / "docs", DOCS)
    index_paths(engine, [tmp_path / "docs"])
    emb = engine.models.embedder
    ref = emb._model  # FlagEmbedding's BGEM3FlagModel over the same folder

    # Query side: ragd's query vectors are FlagEmbedding's encode_queries ColBERT vectors
    # (no CLS vector, L2-normalised, computed like passages: M3 has no query instruction).
    query = emb.embed_query(QUERY)
    assert query.colbert is not None and len(query.colbert) == 1
    q = query.colbert[0]
    ref_q = ref.encode_queries([QUERY], return_dense=False, return_sparse=False, return_colbert_vecs=True)
    theirs_q = ref_q["colbert_vecs"][0]
    assert q.shape == theirs_q.shape == (len(emb.tokenizer.ids([QUERY])[0]) - 1, DIM)
    np.testing.assert_allclose(q, theirs_q, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)

    ids = engine.catalog.chunk_ids_under(str(tmp_path / "docs"))
    rows = engine.catalog.chunks(ids)
    stored = engine.catalog.colbert_by_chunk(engine.model_key, ids, DIM)
    assert set(stored) == set(ids) and all(v.dtype == np.float32 for v in stored.values())
    ours = colbert_scores(q, stored)
    for cid in ids:
        p = stored[cid]
        # The same function on the same vectors: ragd's score is FlagEmbedding's colbert_score.
        assert ours[cid] == pytest.approx(float(ref.colbert_score(theirs_q, p)), abs=1e-5)
        # The passage vectors FlagEmbedding computes for the chunk's text, rounded to float16 as
        # ragd stores them, give the same score to 1e-4 ...
        theirs_p = ref.encode_corpus([rows[cid].text], return_dense=False, return_sparse=False,
                                     return_colbert_vecs=True)["colbert_vecs"][0]
        assert p.shape == theirs_p.shape
        rounded = theirs_p.astype(np.float16).astype(np.float32)
        assert ours[cid] == pytest.approx(float(ref.colbert_score(theirs_q, rounded)), abs=1e-4)
        # ... and the unrounded ones to 1e-3: float16 keeps 11 significant bits, so each stored
        # unit vector is off by at most 2^-11 (4.9e-4) in norm, and so is each query-token
        # inner product, hence its max over passage tokens and the mean over query tokens.
        np.testing.assert_allclose(p, theirs_p, atol=1e-3)
        assert ours[cid] == pytest.approx(float(ref.colbert_score(theirs_q, theirs_p)), abs=1e-3)


def test_vectors_are_float16_blobs_of_tokens_x_dim(tmp_path: Path, multi_engine: Any) -> None:
    engine = multi_engine()
    write_tree(tmp_path / "docs", DOCS)
    index_paths(engine, [tmp_path / "docs"])
    tok = engine.models.embedder.tokenizer
    blobs = _blobs(engine)
    assert len(blobs) == len(DOCS)
    for text, blob in blobs:
        tokens = len(tok.ids([text])[0]) - 1  # every input token but CLS, with the final </s>
        assert blob is not None and len(blob) == tokens * DIM * 2
        vecs = np.frombuffer(blob, dtype=np.float16).reshape(tokens, DIM)
        np.testing.assert_allclose(np.linalg.norm(vecs.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_colbert_signal_reorders_candidates_with_timings(tmp_path: Path, multi_engine: Any) -> None:
    engine = multi_engine()
    write_tree(tmp_path / "docs", DOCS)
    index_paths(engine, [tmp_path / "docs"])
    n = len(DOCS)

    plain = search(engine, QUERY, SearchOptions(k=n, rerank=False, weights={"colbert": 0.0}))
    assert "colbert_ms" not in plain.timings

    # colbert dominating: the hits come in the order of their ColBERT scores.
    weights = {"dense": 0.001, "sparse": 0.0, "lexical": 0.0, "colbert": 1000.0}
    result = search(engine, QUERY, SearchOptions(k=n, rerank=False, weights=weights))
    assert result.timings["colbert_ms"] >= 0 and {"embed_ms", "dense_ms", "fuse_ms"} <= set(result.timings)
    assert len(result.hits) == n and result.degraded == []
    q = engine.models.embedder.embed_query(QUERY).colbert[0]
    ids = [h.chunk_id for h in result.hits]
    expected = colbert_scores(q, engine.catalog.colbert_by_chunk(engine.model_key, ids, DIM))
    assert ids == sorted(ids, key=lambda c: -expected[c])
    # and the fused scores are the colbert part plus a dense part of at most 0.001
    assert [h.retrieval_score for h in result.hits] == sorted((h.retrieval_score for h in result.hits), reverse=True)

    # Only the top colbert_candidates are rescored: with 1, the best fused candidate alone gets
    # a (min-max normalised, single-candidate = 1) colbert part, and nothing moves.
    one = multi_engine(search={"colbert_candidates": 1})
    first = search(one, QUERY, SearchOptions(k=n, rerank=False, weights={"colbert": 5.0}))
    base = search(one, QUERY, SearchOptions(k=n, rerank=False, weights={"colbert": 0.0}))
    assert [h.chunk_id for h in first.hits] == [h.chunk_id for h in base.hits]
    assert "colbert_ms" in first.timings


def test_chunks_without_vectors_keep_their_fused_score(
    tmp_path: Path, engine_factory: Any, multi_engine: Any
) -> None:
    """Chunks embedded before multi_vector was turned on have no vectors: they are still
    found, with the fused score they had without colbert."""
    write_tree(tmp_path / "old", {k: v for k, v in DOCS.items() if k.startswith("rivers/")})
    write_tree(tmp_path / "new", {k: v for k, v in DOCS.items() if not k.startswith("rivers/")})
    before = engine_factory()
    index_paths(before, [tmp_path / "old"])
    before.close()

    engine = multi_engine()
    index_paths(engine, [tmp_path / "new"])
    old_ids = set(engine.catalog.chunk_ids_under(str(tmp_path / "old")))
    new_ids = set(engine.catalog.chunk_ids_under(str(tmp_path / "new")))
    assert engine.catalog.colbert_by_chunk(engine.model_key, sorted(old_ids | new_ids), DIM).keys() == new_ids

    opts = {"k": len(DOCS), "rerank": False}
    weights = {"dense": 1.0, "sparse": 0.0, "lexical": 1.0}
    off = search(engine, QUERY, SearchOptions(**opts, weights={**weights, "colbert": 0.0}))
    on = search(engine, QUERY, SearchOptions(**opts, weights={**weights, "colbert": 3.0}))
    assert "colbert_ms" in on.timings and on.degraded == off.degraded
    assert {h.chunk_id for h in on.hits} == {h.chunk_id for h in off.hits} >= old_ids
    before_scores = {h.chunk_id: h.retrieval_score for h in off.hits}
    for hit in on.hits:
        if hit.chunk_id in old_ids:
            assert hit.retrieval_score == before_scores[hit.chunk_id]
        else:
            assert hit.retrieval_score >= before_scores[hit.chunk_id]


def test_multi_vector_off_stores_nothing_and_search_works(tmp_path: Path, engine_factory: Any) -> None:
    engine = engine_factory()
    write_tree(tmp_path / "docs", DOCS)
    index_paths(engine, [tmp_path / "docs"])
    assert not getattr(engine.models.embedder, "multi_vector", False)
    blobs = _blobs(engine)
    assert len(blobs) == len(DOCS) and all(b is None for _, b in blobs)
    ids = engine.catalog.chunk_ids_under(str(tmp_path / "docs"))
    assert engine.catalog.colbert_by_chunk(engine.model_key, ids, DIM) == {}
    assert engine.catalog.colbert_by_chunk(engine.model_key, [], DIM) == {}
    # A colbert weight (config default or per request) is accepted and has nothing to do.
    result = search(engine, QUERY, SearchOptions(rerank=False, weights={"colbert": 2.0}))
    assert result.hits and "colbert_ms" not in result.timings
    assert engine.config.search.colbert_weight == 1.0 and engine.config.search.colbert_candidates == 100


def test_resolve_signals_with_colbert() -> None:
    w = {"dense": 1.0, "sparse": 0.3, "lexical": 1.2, "colbert": 1.0}
    assert resolve_signals("hybrid", w, True, "weighted", True) == w
    assert resolve_signals("hybrid", w, True, "weighted", False) == {"dense": 1.0, "sparse": 0.3, "lexical": 1.2}
    assert resolve_signals("dense", w, True, "rrf", True) == {"dense": 1.0}  # one retriever, no rescoring
    assert resolve_signals("hybrid", {**w, "colbert": 0.0}, True, "weighted", True) == {
        "dense": 1.0, "sparse": 0.3, "lexical": 1.2}
    with pytest.raises(UsageError, match="colbert only rescores"):
        resolve_signals("hybrid", {"dense": 0.0, "sparse": 0.0, "lexical": 0.0, "colbert": 1.0}, True, "weighted",
                        True)
    with pytest.raises(UsageError, match="weight 0"):
        resolve_signals("hybrid", {"dense": 0.0, "sparse": 0.0, "lexical": 0.0, "colbert": 1.0}, True, "weighted")
    with pytest.raises(UsageError, match=">= 0"):
        resolve_signals("hybrid", {**w, "colbert": -1.0}, True, "weighted", True)


def test_colbert_scores_is_maxsim_mean() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    p = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    assert colbert_scores(q, {7: p, 8: p[:0]}) == {7: pytest.approx((1.0 + 0.8) / 2)}
    assert colbert_scores(q[:0], {7: p}) == {}
