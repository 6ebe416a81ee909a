"""End-to-end indexing over a temporary folder with the fake models: incremental,
idempotent, content-keyed, and safe when a batch fails."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from conftest import write_tree
from ragd.engine import Engine
from ragd.errors import UsageError
from ragd.indexer import index_paths
from ragd.models.base import Embeddings, LoadedModels
from ragd.store.vectors import VectorIndex

pytestmark = pytest.mark.models("fake")
BOTH_STORES = pytest.mark.stores("faiss", "milvus")  # the vector-store backends this test runs on



class Recording:
    """Wraps an embedder and records every text it embeds."""

    def __init__(self, inner: Any, fail_after: int | None = None) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.max_tokens = inner.max_tokens
        self.has_sparse = inner.has_sparse
        self.embedded: list[str] = []
        self.fail_after = fail_after

    def __getattr__(self, name: str) -> Any:  # the rest of the Embedder protocol, as the inner one has it
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return list(self.inner.count_tokens(texts))

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        if self.fail_after is not None and len(self.embedded) >= self.fail_after:
            raise RuntimeError("simulated crash while embedding")
        self.embedded.extend(texts)
        return self.inner.embed_documents(texts)  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> Embeddings:
        return self.inner.embed_query(text)  # type: ignore[no-any-return]


NOTES = {
    "alpha.md": "# Alpha\n\nThe alpha project studies glaciers in Iceland.\n\n## Methods\n\nWe drilled ice cores.\n",
    "beta.txt": "Beta notes: sourdough bread needs a starter, flour, water and salt.\n",
    "sub/gamma.py": "def gamma():\n    '''Compute the gamma function approximation.'''\n    return 42\n",
    "sub/delta.rst": "Delta\n=====\n\nDelta describes river deltas and sediment.\n",
}


@pytest.fixture
def recording_engine(make_config: Callable[..., Any], loaded_models: Any) -> Callable[..., tuple[Engine, Recording]]:
    made: list[Engine] = []

    def build(fail_after: int | None = None, **sections: Any) -> tuple[Engine, Recording]:
        rec = Recording(loaded_models.embedder, fail_after)
        engine = Engine(make_config(**sections), models=LoadedModels(rec, loaded_models.reranker, []))
        made.append(engine)
        return engine, rec

    yield build  # type: ignore[misc]
    for e in made:
        e.close()


@BOTH_STORES
def test_index_then_nothing_to_do(tmp_path: Path, recording_engine: Any) -> None:
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    engine, rec = recording_engine()
    first = index_paths(engine, [root])
    assert first.files_indexed == 4
    assert first.chunks_embedded == len(rec.embedded) > 0
    assert engine.vectors.count == engine.catalog.count_chunks()

    rec.embedded.clear()
    second = index_paths(engine, [root])
    assert second.chunks_embedded == 0 and rec.embedded == []
    assert second.files_indexed == 0 and second.files_unchanged == 4


@BOTH_STORES
def test_edit_reembeds_only_changed_chunks(tmp_path: Path, recording_engine: Any) -> None:
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    engine, rec = recording_engine(chunking={"max_tokens": 16, "overlap_tokens": 0})
    index_paths(engine, [root])
    before = engine.catalog.count_chunks()
    rec.embedded.clear()
    text = NOTES["alpha.md"].replace("We drilled ice cores.", "We drilled deep ice cores at two sites.")
    (root / "alpha.md").write_text(text, encoding="utf-8")
    report = index_paths(engine, [root])
    assert report.files_indexed == 1
    assert rec.embedded, "the changed chunk must be embedded"
    assert all("drilled" in t for t in rec.embedded), rec.embedded
    assert report.chunks_reused >= 1  # the unchanged "# Alpha" section is reused
    assert engine.catalog.count_chunks() == before
    assert engine.vectors.count == engine.catalog.count_chunks()


@BOTH_STORES
def test_rename_embeds_nothing_and_delete_removes(tmp_path: Path, recording_engine: Any) -> None:
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    engine, rec = recording_engine()
    index_paths(engine, [root])
    rec.embedded.clear()
    (root / "beta.txt").rename(root / "sub" / "beta-renamed.txt")
    report = index_paths(engine, [root])
    assert rec.embedded == [] and report.chunks_embedded == 0
    assert report.files_removed == 1 and report.files_indexed == 1
    paths = set(engine.catalog.files_under(str(root)))
    assert str(root / "sub" / "beta-renamed.txt") in paths and str(root / "beta.txt") not in paths

    (root / "sub" / "gamma.py").unlink()
    n_before = engine.catalog.count_chunks()
    report = index_paths(engine, [root])
    assert report.files_removed == 1
    assert engine.catalog.count_chunks() < n_before
    assert engine.vectors.count == engine.catalog.count_chunks()
    # Garbage collection dropped the embedding nobody refers to any more.
    rows = engine.catalog.db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    distinct = engine.catalog.db.execute("SELECT count(DISTINCT content_hash) FROM chunks").fetchone()[0]
    assert rows == distinct


def test_binary_and_unreadable_files_are_recorded(tmp_path: Path, recording_engine: Any) -> None:
    root = tmp_path / "notes"
    write_tree(root, {**NOTES, "photo.png": b"\x89PNG\r\n\x1a\n\x00\x00", "blob.txt": b"ab\x00\x01cd" * 50})
    engine, _ = recording_engine()
    report = index_paths(engine, [root])
    assert report.files_indexed == 4 and report.files_skipped == 2
    reasons = {Path(p).name: r for p, _, r in report.failures}
    assert "binary" in reasons["photo.png"] and "binary" in reasons["blob.txt"]


@BOTH_STORES
def test_excludes_hidden_and_vcs_folders(tmp_path: Path, recording_engine: Any) -> None:
    root = tmp_path / "notes"
    write_tree(root, {**NOTES, ".git/config": "x", "node_modules/m/index.js": "x", ".hidden.md": "x"})
    engine, _ = recording_engine()
    report = index_paths(engine, [root])
    assert report.files_seen == 4


def test_ragds_own_files_under_a_root_are_never_indexed(tmp_path: Path, recording_engine: Any) -> None:
    """A root that holds the data folder (the full text of every document) or the token file
    indexes neither, whatever its patterns say; the rest of the root is indexed."""
    write_tree(tmp_path / "notes", NOTES)
    token = tmp_path / "keys" / "ragd-token"
    engine, _ = recording_engine(server={"token_file": str(token)})
    write_tree(tmp_path / "data", {"notes.txt": "a text file in the data folder\n"})
    write_tree(tmp_path / "keys", {"ragd-token": "secret-token-secret-token\n", "other.txt": "kept\n"})
    index_paths(engine, [tmp_path])
    indexed = {Path(p).relative_to(tmp_path).as_posix() for p, in engine.catalog.db.execute("SELECT path FROM files")}
    assert indexed == {f"notes/{name}" for name in NOTES} | {"keys/other.txt"}


def test_private_paths_are_refused_by_the_filter() -> None:
    from ragd.paths import PathFilter, inside

    root = Path("/srv/notes")
    private = inside(root, [Path("/srv/notes/.././notes/ragd data"), Path("/srv/notes/token"), Path("/srv/other")])
    assert private == ["ragd data", "token"]
    f = PathFilter(include=["*"], private=private)
    assert not f.accepts_dir("ragd data") and not f.accepts("ragd data/catalog.db") and not f.accepts("token")
    assert f.accepts("ragd data.txt") and f.accepts("tokens/a.md") and f.accepts_dir("ragd")


def test_crash_mid_run_loses_nothing_committed(tmp_path: Path, recording_engine: Any) -> None:
    root = tmp_path / "notes"
    write_tree(root, {f"n{i:03d}.txt": f"note {i}: topic number {i} about thing {i * 7}\n" for i in range(30)})
    engine, rec = recording_engine(fail_after=10, indexing={"batch_chunks": 10}, models={"batch_size": 1})
    with pytest.raises(RuntimeError, match="simulated crash"):
        index_paths(engine, [root])
    committed = engine.catalog.count_chunks()
    assert committed == 10  # the first batch landed, the failed one left no trace
    generation = engine.catalog.generation()
    snapshot = engine.snapshot_paths()["vectors"]
    engine.close()

    # The FAISS snapshot on disk is older than the catalog: loading it must refuse it.
    assert VectorIndex.load(snapshot, generation, rec.model_id, rec.dim) is None
    engine2, rec2 = recording_engine()
    report = index_paths(engine2, [root])
    assert report.files_indexed == 20 and len(rec2.embedded) == 20
    assert engine2.catalog.count_chunks() == 30 == engine2.vectors.count


def test_missing_snapshot_is_rebuilt(tmp_path: Path, recording_engine: Any) -> None:
    root = tmp_path / "notes"
    write_tree(root, NOTES)
    engine, _ = recording_engine()
    index_paths(engine, [root])
    n = engine.vectors.count
    engine.close()
    shutil.rmtree(engine.data_dir / "vectors")
    engine2, rec2 = recording_engine()
    assert engine2.vectors.count == n and rec2.embedded == []


def test_missing_path_is_a_usage_error(tmp_path: Path, recording_engine: Any) -> None:
    engine, _ = recording_engine()
    with pytest.raises(UsageError, match="does not exist"):
        index_paths(engine, [tmp_path / "nope"])
    assert engine.catalog.count_chunks() == 0


def test_symlink_out_of_root_is_not_followed(tmp_path: Path, recording_engine: Any) -> None:
    root = tmp_path / "notes"
    outside = tmp_path / "outside"
    write_tree(root, NOTES)
    write_tree(outside, {"secret.txt": "private"})
    (root / "link.txt").symlink_to(outside / "secret.txt")
    (root / "loop").symlink_to(root)
    engine, _ = recording_engine()
    report = index_paths(engine, [root])
    assert report.files_seen == 4
