"""The command line: exit statuses, --json shapes, clear one-line errors that change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_tree
from ragd.cli import main

pytestmark = pytest.mark.models("fake")


@pytest.fixture
def setup(tmp_path: Path, model_folders: dict[str, Path]) -> tuple[Path, Path]:
    notes = tmp_path / "notes"
    write_tree(notes, {
        "a.md": "# Apples\n\nApples grow on trees in orchards.\n",
        "b.txt": "Bicycles have two wheels and a chain.\n",
        "c.bin": b"\x00\x01\x02binary",
    })
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n\n[[roots]]\npath = "{notes}"\n\n'
        f'[models]\nembedder = "{model_folders["m3"]}"\nreranker = "{model_folders["reranker"]}"\nfallback = "none"\n',
        encoding="utf-8",
    )
    return cfg, notes


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_index_and_search_json(setup: tuple[Path, Path]) -> None:
    cfg, notes = setup
    code, out, _ = run("index", "--config", str(cfg), "--json")
    assert code == 0
    report = json.loads(out)
    assert {"files_indexed", "files_failed", "chunks_embedded", "chunks_reused", "seconds"} <= set(report)
    assert report["files_indexed"] == 2 and report["files_skipped"] == 1 and report["chunks_embedded"] > 0
    assert report["failures"][0]["path"].endswith("c.bin")

    code, out, _ = run("index", "--config", str(cfg), "--json")
    assert code == 0 and json.loads(out)["chunks_embedded"] == 0

    code, out, _ = run("search", "Bicycles have two wheels", "--config", str(cfg), "--json", "-k", "2")
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"hits", "timings", "models", "degraded"}
    assert len(data["hits"]) == 2
    assert set(data["hits"][0]) >= {"path", "start_line", "end_line", "heading", "snippet", "score",
                                    "retrieval_score", "rerank_score"}

    code, out, _ = run("search", "apples", "--config", str(cfg), "--no-rerank", "--path", str(notes / "a.md"))
    assert code == 0 and "a.md:1-3" in out


def test_empty_query_and_bad_k(setup: tuple[Path, Path]) -> None:
    cfg, _ = setup
    code, _, err = run("search", "  ", "--config", str(cfg))
    assert code == 2 and "query is empty" in err
    code, _, err = run("search", "x", "-k", "0", "--config", str(cfg))
    assert code == 2 and "k must be" in err


def test_search_with_a_deadline(setup: tuple[Path, Path]) -> None:
    """--deadline bounds the reranking (here ample: every candidate is reranked, whole); a
    deadline that is not a positive number of seconds is a usage error."""
    cfg, _ = setup
    assert run("index", "--config", str(cfg))[0] == 0
    code, out, _ = run("search", "Bicycles have two wheels", "--config", str(cfg), "--json", "--deadline", "60")
    assert code == 0
    data = json.loads(out)
    assert data["reranked"] == min(data["candidates"], 30) > 0 and data["rerank_window"] == 0
    assert data["hits"][0]["rerank_score"] is not None
    for bad in ("0", "-1", "soon"):
        code, _, err = run("search", "x", "--config", str(cfg), "--deadline", bad)
        assert code == 2 and "--deadline" in err


def test_search_on_empty_index(setup: tuple[Path, Path]) -> None:
    cfg, _ = setup
    code, _, err = run("search", "apples", "--config", str(cfg))
    assert code == 1 and "index is empty" in err


def test_bad_config_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[chunking]\nmax_tokens = "big"\n', encoding="utf-8")
    code, _, err = run("index", str(tmp_path), "--config", str(cfg))
    assert code == 2
    assert err.count("\n") == 1 and str(cfg) in err and "chunking.max_tokens" in err
    assert not (tmp_path / "data").exists()


def test_missing_root_in_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[[roots]]\npath = "{tmp_path / "gone"}"\n', encoding="utf-8")
    code, _, err = run("search", "x", "--config", str(cfg))
    assert code == 2 and "roots" in err and not (tmp_path / "data").exists()


def test_missing_index_path(setup: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, _ = setup
    code, _, err = run("index", str(tmp_path / "nope"), "--config", str(cfg))
    assert code == 2 and "does not exist" in err


def test_models_ls_json(setup: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, _ = setup
    code, out, _ = run("models", "ls", "--json", "--config", str(cfg))
    assert code == 0
    rows = {r["role"]: r for r in json.loads(out)["models"]}
    assert rows["embedder"]["found"] and rows["embedder"]["size_bytes"] > 0
    assert rows["reranker"]["source"] == "local folder"


def test_fallback_to_minilm_is_reported(tmp_path: Path) -> None:
    notes = tmp_path / "n"
    write_tree(notes, {"a.txt": "The cat sat on the mat.\n", "b.txt": "Stock markets fell sharply today.\n"})
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[models]\nembedder = "{tmp_path / "no-such-model"}"\n', encoding="utf-8"
    )
    code, out, err = run("index", str(notes), "--config", str(cfg), "--json")
    assert code == 0 and "degraded" in err
    assert json.loads(out)["degraded"]
    code, out, _ = run("search", "a kitten on a rug", "--config", str(cfg), "--json")
    data = json.loads(out)
    assert code == 0 and data["hits"][0]["path"].endswith("a.txt")
    assert any("minilm" in d for d in data["degraded"]) and data["models"]["reranker"] is None
    assert data["hits"][0]["rerank_score"] is None

    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[models]\nembedder = "{tmp_path / "no-such-model"}"\nfallback = "none"\n',
        encoding="utf-8",
    )
    code, _, err = run("search", "cat", "--config", str(cfg))
    assert code == 1 and "no-such-model" in err


def test_models_pull_offline_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[models]\nembedder = "BAAI/bge-m3"\n', encoding="utf-8")
    code, _, err = run("models", "pull", "--config", str(cfg))
    assert code == 1 and "could not download BAAI/bge-m3" in err and "offline" in err
