"""Full-text search: the tokeniser, the FTS5 table kept in step with chunks, search modes,
fusion (weighted and RRF), and `ragd eval` on a tiny BEIR folder."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import write_tree
from ragd.cli import main
from ragd.errors import UsageError
from ragd.evaluate import load_beir, run_eval
from ragd.indexer import index_paths
from ragd.lexical import query_expression, terms
from ragd.search import SearchOptions, confidence, fuse, normalise, resolve_signals, search
from ragd.store.catalog import Catalog

DOCS = {
    "config.py": "def parse_config(path):\n    '''Read the TOML file and validate every key.'''\n",
    "keys.md": "# 密钥轮换\n\n每季度更换签名密钥，并吊销旧的证书。\n",
    "bread.txt": "Sourdough bread needs a starter made of flour and water.\n",
    "cafe.txt": "The café on the corner serves espresso.\n",
    "rivers.txt": "Rivers deposit sediment where they meet the sea, forming deltas.\n",
}


def test_terms_english_stemming_and_stopwords() -> None:
    assert terms("The running rivers of the deltas") == ["run", "river", "delta"]
    assert terms("parse_config(path)") == ["pars", "config", "path"]
    assert terms("ＡＢＣ１２３ Café") == ["abc123", "cafe"]  # NFKC and accent folding


def test_terms_cjk_bigrams() -> None:
    assert terms("签名密钥") == ["签名", "名密", "密钥"]
    assert terms("钥 key") == ["钥", "key"]  # a lone character stays a unigram
    assert terms("カタカナ") == ["カタ", "タカ", "カナ"]
    assert terms("한국어") == ["한국", "국어"]
    assert terms("RAG检索") == ["rag", "检索"]


def test_query_expression() -> None:
    assert query_expression("the of and") is None
    assert query_expression('签名 "keys" keys') == '"签名" OR "key"'


@pytest.fixture
def indexed(index_tree: Any) -> Any:
    return index_tree(DOCS)


def _top(engine: Any, query: str, **kw: Any) -> str:
    return Path(search(engine, query, SearchOptions(k=1, rerank=False, **kw)).hits[0].path).name


def test_lexical_mode_finds_identifiers_and_chinese_keywords(indexed: Any) -> None:
    engine, _ = indexed
    assert _top(engine, "parse_config", mode="lexical") == "config.py"
    assert _top(engine, "签名密钥", mode="lexical") == "keys.md"
    assert _top(engine, "cafe", mode="lexical") == "cafe.txt"
    assert _top(engine, "river delta", mode="lexical") == "rivers.txt"
    result = search(engine, "签名密钥", SearchOptions(k=3, rerank=False, mode="lexical"))
    assert "embed_ms" not in result.timings and "lexical_ms" in result.timings
    assert result.hits[0].retrieval_score > 0  # the BM25 score itself
    # Nothing but stopwords: no lexical candidates, an empty answer rather than an error.
    assert search(engine, "the of", SearchOptions(rerank=False, mode="lexical")).hits == []


def test_hybrid_uses_every_signal_and_the_path_filter(indexed: Any) -> None:
    engine, root = indexed
    result = search(engine, "签名密钥", SearchOptions(k=2, rerank=False))
    assert {"dense_ms", "sparse_ms", "lexical_ms"} <= set(result.timings)
    assert Path(result.hits[0].path).name == "keys.md"
    only = search(engine, "签名密钥", SearchOptions(k=5, rerank=False, mode="lexical",
                                                 path_prefix=str(root / "bread.txt")))
    assert only.hits == []
    rrf = search(engine, "签名密钥", SearchOptions(k=2, rerank=False, fusion="rrf"))
    assert Path(rrf.hits[0].path).name == "keys.md"


def test_lexical_rows_follow_chunks(indexed: Any, tmp_path: Path) -> None:
    engine, root = indexed
    db = engine.catalog.db

    def lexical_rows() -> int:
        return int(db.execute("SELECT count(*) FROM lexical").fetchone()[0])

    assert lexical_rows() == engine.catalog.count_chunks() > 0
    (root / "keys.md").unlink()
    (root / "bread.txt").write_text("Rye bread is dense.\n", encoding="utf-8")
    index_paths(engine, [root])
    assert lexical_rows() == engine.catalog.count_chunks()
    assert search(engine, "签名密钥", SearchOptions(rerank=False, mode="lexical")).hits == []
    assert _top(engine, "rye", mode="lexical") == "bread.txt"
    engine.catalog.remove_root(str(root))
    assert lexical_rows() == 0


def test_existing_catalog_gets_its_lexical_rows(indexed: Any) -> None:
    """A catalog written before the full-text table (or by another tokeniser version) is
    filled from its chunks on open, without embedding anything."""
    engine, _ = indexed
    path = engine.catalog.path
    count = engine.catalog.count_chunks()
    engine.catalog.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER chunks_lexical_delete")
    conn.execute("DROP TABLE lexical")
    conn.execute("DELETE FROM meta WHERE key = 'lexical_version'")
    conn.commit()
    conn.close()
    catalog = Catalog(path)
    try:
        assert catalog.db.execute("SELECT count(*) FROM lexical").fetchone()[0] == count
        assert catalog.lexical_search("parse_config", 5)
    finally:
        catalog.close()
        engine.catalog = Catalog(path)


def test_fusion_rrf_and_weights() -> None:
    signals = {"dense": {1: 0.9, 2: 0.5}, "lexical": {2: 10.0, 3: 5.0}}
    rrf = fuse(signals, {"dense": 1.0, "lexical": 2.0}, "rrf", 10)
    assert rrf == pytest.approx({1: 1 / 11, 2: 1 / 12 + 2 / 11, 3: 2 / 12})
    assert fuse(signals, {"dense": 1.0, "lexical": 0.5}) == {1: 1.0, 2: 0.5, 3: 0.0}
    assert fuse(signals, {"dense": 0.0, "lexical": 1.0}) == {2: 10.0, 3: 5.0}  # one signal: raw scores


def test_a_signal_that_cannot_separate_its_candidates_weighs_little() -> None:
    """Confidence = 1 - mean normalised score of ranks 2..11: a flat signal (every runner-up
    close to the best) cannot overturn a sharp one, whatever its order."""
    sharp = {1: 10.0, 2: 2.0, **{i: 1.0 for i in range(3, 13)}}
    flat = {2: 0.50, 1: 0.40, **{i: 0.49 for i in range(3, 13)}}
    assert confidence(normalise(flat)) < 0.2 < 0.9 < confidence(normalise(sharp))
    fused = fuse({"dense": flat, "lexical": sharp}, {"dense": 1.0, "lexical": 1.0})
    assert max(fused, key=lambda c: fused[c]) == 1
    assert confidence({}) == 1.0 and confidence({7: 1.0}) == 1.0 and confidence({1: 1.0, 2: 1.0}) == 0.0


def test_resolve_signals() -> None:
    w = {"dense": 1.0, "sparse": 0.3, "lexical": 0.5}
    assert resolve_signals("hybrid", w, True, "weighted") == w
    assert resolve_signals("hybrid", w, False, "rrf") == {"dense": 1.0, "lexical": 0.5}
    assert resolve_signals("lexical", w, False, "weighted") == {"lexical": 1.0}
    with pytest.raises(UsageError, match="sparse"):
        resolve_signals("sparse", w, False, "weighted")
    with pytest.raises(UsageError, match="mode"):
        resolve_signals("fuzzy", w, True, "weighted")
    with pytest.raises(UsageError, match="fusion"):
        resolve_signals("hybrid", w, True, "max")
    with pytest.raises(UsageError, match=">= 0"):
        resolve_signals("hybrid", {**w, "dense": -1.0}, True, "weighted")
    with pytest.raises(UsageError, match="weight 0"):
        resolve_signals("hybrid", {"dense": 0.0, "sparse": 0.0, "lexical": 0.0}, True, "weighted")


def _beir(folder: Path) -> Path:
    docs = [("d1", "Glaciers", "Ice cores record the climate of past centuries."),
            ("d2", "Bread", "Sourdough needs a starter of flour and water."),
            ("d3", "密钥", "每季度更换签名密钥。")]
    queries = [("q1", "ice cores climate"), ("q2", "sourdough starter"), ("q3", "签名密钥")]
    write_tree(folder, {
        "corpus.jsonl": "".join(json.dumps({"_id": i, "title": t, "text": x}, ensure_ascii=False) + "\n"
                                for i, t, x in docs),
        "queries.jsonl": "".join(json.dumps({"_id": i, "text": x}, ensure_ascii=False) + "\n" for i, x in queries),
        "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n",
        "answers.jsonl": json.dumps({"query-id": "q2", "corpus-id": "d2", "answer": "a starter of flour"}) + "\n",
    })
    return folder


def test_run_eval_lexical_on_a_tiny_collection(tmp_path: Path, make_config: Any) -> None:
    folder = _beir(tmp_path / "tiny")
    assert load_beir(folder).answers == {"q2": [("d2", "a starter of flour")]}
    report = run_eval(folder, make_config(), tmp_path / "cache", mode="lexical")
    assert report.metrics["ndcg@10"] == 1.0 and report.queries == 3
    assert report.chunk_metrics is not None and report.chunk_metrics["mrr@10"] == 1.0
    again = run_eval(folder, make_config(), tmp_path / "cache", mode="hybrid", fusion="rrf")
    assert again.tokens_embedded == 0  # the cached index is reused
    assert again.to_json()["mode"] == "hybrid"


def test_cli_eval_json_and_errors(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    folder = _beir(tmp_path / "tiny")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[models]\nembedder = "{tiny_models["m3"]}"\n'
                   'reranker = "none"\nfallback = "none"\n', encoding="utf-8")
    runner = CliRunner()
    out = runner.invoke(main, ["eval", str(folder), "--mode", "lexical", "--json", "--config", str(cfg)])
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"ndcg@10", "recall@100", "mrr@10", "queries", "index_seconds"} <= set(data)
    assert data["ndcg@10"] == 1.0 and data["queries"] == 3
    assert (tmp_path / "data" / "eval" / "tiny" / "corpus").is_dir()  # default cache: data_dir/eval
    out = runner.invoke(main, ["eval", str(folder), "--weight", "lexical=2", "--weight", "dense=0.5",
                               "--config", str(cfg), "--cache", str(tmp_path / "c2")])
    assert out.exit_code == 0, out.stderr
    assert "nDCG@10 " in out.stdout and "weighted: dense 0.5" in out.stdout and "lexical 2" in out.stdout
    bad = runner.invoke(main, ["eval", str(tmp_path), "--config", str(cfg)])
    assert bad.exit_code == 2 and "not a BEIR folder" in bad.stderr
    bad = runner.invoke(main, ["eval", str(folder), "--weight", "lexical", "--config", str(cfg)])
    assert bad.exit_code == 2 and "SIGNAL=NUMBER" in bad.stderr


def test_cli_eval_with_a_rerank_deadline(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """``ragd eval --rerank --deadline S`` gives every search that deadline and reports how
    many candidates were reranked; an ample one reranks them all, a tiny one none (retrieval
    order, the same scores as no reranking). --deadline without --rerank is a usage error."""
    folder = _beir(tmp_path / "tiny")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[models]\nembedder = "{tiny_models["m3"]}"\n'
                   f'reranker = "{tiny_models["reranker"]}"\nfallback = "none"\n[search]\ncandidates = 3\n',
                   encoding="utf-8")
    runner = CliRunner()

    def run(*args: str) -> dict[str, Any]:
        out = runner.invoke(main, ["eval", str(folder), "--json", "--config", str(cfg), *args])
        assert out.exit_code == 0, out.stderr
        return dict(json.loads(out.stdout))

    plain = run()
    ample = run("--rerank", "--deadline", "60", "--rerank-min-tokens", "32")
    assert ample["deadline_s"] == 60 and ample["reranked"]["mean"] == 3 and ample["reranked"]["min"] == 3
    assert ample["reranked"]["windowed_queries"] == 0  # short documents: read whole
    tiny = run("--rerank", "--deadline", "0.000001")
    assert tiny["reranked"]["mean"] == 0 and tiny["ndcg@10"] == plain["ndcg@10"]
    out = runner.invoke(main, ["eval", str(folder), "--rerank", "--deadline", "1", "--config", str(cfg)])
    assert out.exit_code == 0 and "reranked per query: mean 3" in out.stdout and "(deadline 1 s)" in out.stdout
    bad = runner.invoke(main, ["eval", str(folder), "--deadline", "1", "--config", str(cfg)])
    assert bad.exit_code == 2 and "add --rerank" in bad.stderr
    bad = runner.invoke(main, ["eval", str(folder), "--rerank", "--deadline", "0", "--config", str(cfg)])
    assert bad.exit_code == 2 and "--deadline" in bad.stderr


def _corpus_file(catalog: Catalog, root: int, name: str, texts: list[str]) -> Any:
    from ragd.store.catalog import FileUpdate, NewChunk

    chunks = tuple(NewChunk(t, 1, 1, (), len(t.split()), f"{name}-{i}-{hash(t)}") for i, t in enumerate(texts))
    return FileUpdate(root, f"/c/{name}", 1, 1, name, "indexed", chunks=chunks)


def test_bm25_mirror_scores_as_fts5_does(tmp_path: Path, mirror_home: Path | None) -> None:
    """Full-text search reads a BM25 mirror (in memory or mapped); it must rank and score as
    FTS5's bm25() does on the same rows, through additions (a delta), replaced and deleted
    chunks, and a merge; with English (stemmed, stopwords), Chinese bigrams, repeated terms
    and a chunk with no terms at all."""
    import random

    from ragd.store.postings import LexicalIndex

    rng = random.Random(5)
    words = [f"w{i}" for i in range(400)] + ["the", "of", "rivers", "running", "签名密钥", "钥", "café"]
    weights = [1.0 / (i + 1) for i in range(len(words))]

    def text() -> str:
        return " ".join(rng.choices(words, weights, k=rng.randint(1, 60)))

    catalog = Catalog(tmp_path / "catalog.db")
    root = catalog.add_root("/c")
    files = {f"f{i}": [text() for _ in range(rng.randint(1, 4))] for i in range(150)}
    files["empty"] = ["!!! ... ???"]  # a chunk with no term: a row of length 0, counted in N
    catalog.apply(0, [], [_corpus_file(catalog, root, n, t) for n, t in files.items()])
    mirror = LexicalIndex.build(catalog.lexical_rows(), mirror_home)
    queries = [text() for _ in range(25)] + ["rivers running", "签名密钥 w3", "w1 w1 w1", "café the", "the of"]

    def check(limit: int) -> None:
        for q in queries:
            want = catalog.lexical_search(q, limit)
            got = mirror.search(terms(q), limit)
            assert len(got) == len(want), q
            assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-9), q
            cut = want[-1][1] if want else 0.0
            assert {c for c, s in got if s > cut + 1e-9} == {c for c, s in want if s > cut + 1e-9}, q

    check(10)
    check(1000)
    # later batches: new files (the delta), a file rewritten, a file deleted
    more = {f"g{i}": [text()] for i in range(40)}
    result = catalog.apply(0, [], [_corpus_file(catalog, root, n, t) for n, t in more.items()]
                           + [_corpus_file(catalog, root, "f1", [text(), text()])],
                           deleted_paths=["/c/f2", "/c/f3"])
    mirror.remove(result.removed_ids)
    mirror.add_terms(result.terms.items())
    assert len(mirror._view.delta[0]) > 0
    check(10)
    check(1000)
    assert mirror.count == catalog.count_chunks()
    mirror.compact()
    assert len(mirror._view.delta[0]) == 0
    check(50)
    assert mirror.search(["unknownterm"], 5) == [] and mirror.search([], 5) == []
    assert LexicalIndex().search(["w1"], 5) == []
    catalog.close()
