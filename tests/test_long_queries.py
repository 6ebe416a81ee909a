"""Long and pasted queries (windows, bounded full-text terms, the reranker's part), "more like
this" by chunk or file, and malformed text: through the library, the CLI and gRPC."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from test_daemon import daemon_factory, idle, wait_for  # noqa: F401  (daemon_factory is a fixture)

import ragd_client
from ragd.cli import main
from ragd.errors import NotFoundError, UsageError
from ragd.lexical import terms as query_terms
from ragd.models.base import Embeddings
from ragd.query import MAX_QUERY_TERMS, combine, select_terms, windows
from ragd.requests import MAX_QUERY_CHARS
from ragd.search import SearchOptions, search
from ragd.store.postings import LexicalIndex

pytestmark = pytest.mark.models("fake")

DOCS = {
    "glaciers.md": "# Glaciers\n\nIce cores from glaciers record the climate of past centuries.\n",
    "bread.txt": "Sourdough bread needs a starter made of flour and water.\n",
    "rivers/delta.txt": "River deltas form where rivers deposit sediment into the sea.\n",
    "rivers/nile.md": "# Nile\n\nThe Nile delta is one of the largest river deltas.\n\n## Floods\n\n"
                      "The Nile floods every summer and leaves black silt on the fields.\n",
}


@pytest.fixture
def indexed(index_tree: Any) -> Any:
    return index_tree(DOCS)


def test_windows_cover_the_text_within_the_token_budget() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    offsets = []
    pos = 0
    for word in text.split(" "):
        offsets.append((pos, pos + len(word)))
        pos += len(word) + 1
    pieces = windows(text, offsets, size=30, budget=1000)
    assert "".join(pieces) == text  # nothing between two windows is lost
    assert [len(p.split()) for p in pieces] == [30, 30, 30, 10]
    cut = windows(text, offsets, size=30, budget=70)  # two whole windows fit the budget
    assert len(cut) == 2 and "".join(cut) == text[: offsets[60][0]]


def test_window_embeddings_combine_as_one_query() -> None:
    parts = Embeddings(
        dense=np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32),
        sparse=[{1: 0.2, 2: 0.5}, {2: 0.3, 3: 0.9}],
        colbert=[np.ones((2, 2), dtype=np.float32), np.zeros((3, 2), dtype=np.float32)],
    )
    one = combine(parts, [3, 1])
    assert one.dense.shape == (1, 2) and np.isclose(np.linalg.norm(one.dense), 1.0)
    assert one.dense[0, 0] == pytest.approx(3 / np.sqrt(10))  # weighted by each window's tokens
    assert one.sparse == [{1: 0.2, 2: 0.5, 3: 0.9}]  # the largest weight of each token, as within one text
    assert one.colbert is not None and one.colbert[0].shape == (5, 2)


def test_terms_are_bounded_by_rarity() -> None:
    few = ["a", "b", "a"]
    assert select_terms(few, lambda t: {}) == ["a", "b"]  # under the bound: every term, unchanged
    many = [f"t{i}" for i in range(MAX_QUERY_TERMS + 50)]
    df = {t: i + 1 for i, t in enumerate(reversed(many))}  # the last terms are the rarest
    del df["t0"]  # a term no chunk has scores nothing
    chosen = select_terms(many, lambda ts: df)
    assert len(chosen) == MAX_QUERY_TERMS
    assert chosen == many[-MAX_QUERY_TERMS:]  # the rarest, in the query's order
    assert "t0" not in chosen


def test_document_frequency_agrees_between_fts5_and_the_mirror(indexed: Any) -> None:
    engine, _ = indexed
    words = query_terms("Nile delta rivers sediment glaciers unknownword")
    from_fts5 = engine.catalog.lexical_document_frequency(words)
    mirror = LexicalIndex.build(engine.catalog.lexical_rows())
    assert mirror.document_frequency(words) == from_fts5
    assert from_fts5[query_terms("delta")[0]] == 2 and "unknownword" not in from_fts5


def _long_query(sentence: str, tokens: int, engine: Any) -> str:
    """``sentence`` repeated until the query has more than ``tokens`` of the embedder's tokens."""
    text = sentence
    while engine.models.embedder.count_tokens([text])[0] <= tokens:
        text += " " + sentence
    return text


def test_a_long_query_is_searched_in_every_mode(indexed: Any) -> None:
    engine, root = indexed
    embedder = engine.models.embedder
    limit = embedder.max_tokens
    query = _long_query("The Nile floods every summer and leaves black silt on the fields.", 3 * limit, engine)
    for mode in ("hybrid", "dense", "sparse", "lexical"):
        result = search(engine, query, SearchOptions(mode=mode, k=2))
        assert result.hits, mode
        use = result.query_use
        if mode == "lexical":
            assert use.windows == 0 and use.terms_used > 0
        else:
            assert use.tokens > 3 * limit and use.windows >= 4 and use.tokens_embedded == use.tokens
    chinese = _long_query("尼罗河每年夏天泛滥，在田地上留下黑色的淤泥，农民依靠这些淤泥耕种。", 1000, engine)
    for mode in ("hybrid", "dense", "sparse", "lexical"):
        pasted = search(engine, chinese, SearchOptions(mode=mode, k=2))
        assert pasted.query_use.tokens > 1000 or mode == "lexical", mode
        assert pasted.query_use.terms > 10 or mode != "lexical", mode
    lexical = search(engine, query, SearchOptions(k=1, mode="lexical", rerank=False))
    assert lexical.hits[0].path == str(root / "rivers" / "nile.md")  # every rare term counts
    hybrid = search(engine, query, SearchOptions(k=1))
    assert 0 < hybrid.query_use.rerank_tokens < hybrid.query_use.tokens  # the reranker read the query's start
    assert hybrid.to_json()["query_use"]["windows"] == hybrid.query_use.windows


def test_a_short_query_is_embedded_once_as_before(indexed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = indexed
    embedder = engine.models.embedder

    def refuse(*args: Any) -> Any:
        raise AssertionError("a short query must not be windowed")

    monkeypatch.setattr(embedder, "embed_queries", refuse)
    result = search(engine, "Nile delta", SearchOptions(k=2))
    direct = embedder.embed_query("Nile delta").dense[0]
    dense_only = search(engine, "Nile delta", SearchOptions(k=4, mode="dense", rerank=False))
    best = max(dense_only.hits, key=lambda h: h.retrieval_score)
    stored = engine.catalog.stored_query(engine.model_key, best.chunk_id, embedder.dim)[0]
    assert best.retrieval_score == pytest.approx(float(np.dot(direct, stored)), abs=1e-4)
    assert result.query_use.windows == 1 and result.query_use.terms == result.query_use.terms_used


def test_the_query_limit_is_stated(indexed: Any) -> None:
    engine, _ = indexed
    with pytest.raises(UsageError, match=f"at most {MAX_QUERY_CHARS}"):
        search(engine, "x " * MAX_QUERY_CHARS, SearchOptions(k=1))
    with pytest.raises(UsageError, match="UTF-8"):
        search(engine, "bread \udcff", SearchOptions(k=1))


def test_more_like_a_chunk_uses_its_stored_vectors(indexed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, root = indexed
    nile = str(root / "rivers" / "nile.md")
    chunk_id = engine.catalog.chunk_at(nile, 9)
    assert chunk_id is not None
    embedder = engine.models.embedder

    def refuse(*args: Any) -> Any:
        raise AssertionError("nothing is embedded for a search by chunk")

    monkeypatch.setattr(embedder, "embed_query", refuse)
    monkeypatch.setattr(embedder, "embed_queries", refuse)
    result = search(engine, "", SearchOptions(like_chunk_id=chunk_id, k=10, rerank=False))
    assert result.query_use.like_chunk_id == chunk_id
    assert result.hits and all(h.path != nile for h in result.hits)  # the chunk and its file are left out
    same = search(engine, "", SearchOptions(like_chunk_id=chunk_id, like_same_file=True, k=10, rerank=False))
    assert chunk_id not in {h.chunk_id for h in same.hits}
    assert any(h.path == nile for h in same.hits)  # the file's other chunk may come back
    with pytest.raises(NotFoundError):
        search(engine, "", SearchOptions(like_chunk_id=10**9))


def test_cli_reads_queries_from_stdin_and_like(indexed: Any, tmp_path: Path) -> None:
    engine, root = indexed
    config = tmp_path / "ragd.toml"
    cfg = engine.config
    config.write_text(
        f'data_dir = "{cfg.data_dir}"\n[models]\nembedder = "{cfg.models.embedder}"\n'
        f'reranker = "{cfg.models.reranker}"\nfallback = "none"\n[server]\nsocket = "{tmp_path / "none.sock"}"\n',
        encoding="utf-8",
    )
    engine.close()
    runner = CliRunner()
    out = runner.invoke(main, ["search", "-", "--json", "--no-rerank", "-k", "1", "--config", str(config)],
                        input=b"Sourdough bread starter\n")
    assert out.exit_code == 0, out.output
    assert str(root / "bread.txt") in out.stdout
    bad = runner.invoke(main, ["search", "-", "--config", str(config)], input=b"bread \xff\xfe")
    assert bad.exit_code == 2 and "standard input: not valid UTF-8" in bad.stderr
    assert "Traceback" not in bad.output
    like = runner.invoke(main, ["search", "--like", f"{root / 'rivers' / 'nile.md'}:9", "--json", "--no-rerank",
                                "--config", str(config)])
    assert like.exit_code == 0, like.output
    assert str(root / "rivers" / "nile.md") not in like.stdout
    whole = runner.invoke(main, ["search", "--like", str(root / "bread.txt"), "--no-rerank", "--config", str(config)])
    assert whole.exit_code == 0, whole.output
    missing = runner.invoke(main, ["search", "--like", str(root / "nope.md"), "--config", str(config)])
    assert missing.exit_code == 1 and "not an indexed file" in missing.stderr


def test_invalid_utf8_on_the_command_line_is_a_one_line_error(tmp_path: Path) -> None:
    ragd = str(Path(sys.executable).parent / "ragd")
    config = tmp_path / "ragd.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "RAGD_CONFIG": str(config),
           "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    os.mkdir(tmp_path.as_posix().encode() + b"/\xff")
    for args in ([b"search", b"bread \xff"], [b"roots", b"add", tmp_path.as_posix().encode() + b"/\xff"],
                 [b"roots", b"rm", b"/tmp/\xfe"], [b"reindex", b"/tmp/\xfe"]):
        proc = subprocess.run([ragd.encode(), *args], capture_output=True, env=env, timeout=60)
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 2, (args, err)
        assert "UTF-8" in err and "Traceback" not in err, err


def test_like_and_long_queries_through_the_daemon(daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    daemon, client, notes = daemon_factory()
    wait_for(lambda: idle(client), what="initial index")
    alpha = str(notes / "alpha.md")
    result = client.search("", like_path=alpha, like_line=3, rerank=False)
    assert result.query_use.like_chunk_id > 0 and all(h.path != alpha for h in result.hits)
    whole = client.search("", like_path=alpha)
    assert whole.query_use.like_chunk_id == 0 and all(h.path != alpha for h in whole.hits)
    long_query = "Sourdough bread needs a starter made of flour and water. " * 400
    found = client.search(long_query, k=1, mode="lexical", rerank=False)
    assert found.hits[0].path == str(notes / "beta.txt")
    assert client.search(long_query, k=1).query_use.windows > 1
    with pytest.raises(ragd_client.InvalidArgument, match="not both"):
        client.search("bread", like_path=alpha)
    with pytest.raises(ragd_client.PermissionDenied):
        client.search("", like_path="/etc/passwd")
    with pytest.raises(ragd_client.InvalidArgument, match="too long"):
        client.search("x" * (MAX_QUERY_CHARS + 10))
    # bytes that are not UTF-8 in a string field: INVALID_ARGUMENT, not INTERNAL
    channel = grpc.insecure_channel(f"unix://{daemon.socket}")
    raw = channel.unary_unary("/ragd.v1.Search/Search", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\x03\xff\xfe\x41", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.status().serving  # and the daemon answers on
    channel.close()
