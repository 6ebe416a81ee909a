"""Shared fixtures: the models tests run on, configs pointing at temporary folders, and the
evaluation data location.

Two sets of models: the tiny randomly initialised ones with the real models' structure
(``tiny_models``, ``loaded_tiny``: the real loading path) and the hashing fakes of
``ragd.models.fake`` (``fake_models``, ``loaded_fake``: no torch, loaded at once). The
fixtures that build configs, engines and daemons (``model_folders``, ``loaded_models`` and
those on them) use the tiny models unless the test is marked ``models("fake")``: a module
whose tests do not test a model says ``pytestmark = pytest.mark.models("fake")``, and one of
its tests can take the tiny models back with ``@pytest.mark.models("tiny")``.
``RAGD_TEST_MODELS=tiny`` puts every such test on the tiny models, to check that the converted
tests still pass on the real path (and to time them against it)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Models converted for OpenVINO are cached under $XDG_CACHE_HOME/ragd: one fresh folder per test
# session (shared with the daemons tests start), never the user's own cache.
_SESSION_CACHE = tempfile.mkdtemp(prefix="ragd-test-cache-")
os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, True)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; fails under CI=true when missing, else skips."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        message = f"evaluation data missing: {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def scifact_sentences(n: int) -> list[str]:
    """The first ``n`` sentences (over 20 characters) of SciFact's abstracts."""
    import json

    out: list[str] = []
    with shared_data("beir", "scifact", "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            out.extend(s for s in json.loads(line)["text"].split(". ") if len(s) > 20)
            if len(out) >= n:
                break
    return out[:n]


def scifact_abstracts(n: int, min_words: int = 180) -> list[str]:
    """The first ``n`` SciFact abstracts of over ``min_words`` words, title first."""
    import json

    out: list[str] = []
    with shared_data("beir", "scifact", "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if len(doc["text"].split()) > min_words:
                out.append(f"{doc.get('title', '')}. {doc['text']}")
                if len(out) >= n:
                    break
    return out


MODEL_SETS = ("tiny", "fake")
STORES = ("faiss", "milvus")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "models(kind): the models the config, engine and daemon fixtures use: 'tiny' (default) or 'fake'"
    )
    config.addinivalue_line(
        "markers", "stores(*backends): run the test once per vector-store backend ('faiss', 'milvus') through "
        "the store_backend fixture that make_config reads"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``stores(...)`` that builds its config through ``make_config`` runs once
    per backend named; ``RAGD_TEST_STORE=milvus`` puts every other such test on Milvus Lite."""
    if "store_backend" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("stores")
    forced = os.environ.get("RAGD_TEST_STORE", "")
    if forced and forced not in STORES:
        raise pytest.UsageError(f"RAGD_TEST_STORE takes one of {STORES}, got {forced!r}")
    backends = tuple(mark.args) if mark is not None else ((forced,) if forced else ())
    if backends:
        metafunc.parametrize("store_backend", backends)


@pytest.fixture
def store_backend() -> str:
    """The vector-store backend of ``make_config``: 'faiss' unless the test is marked ``stores``."""
    return "faiss"


def model_set(request: pytest.FixtureRequest) -> str:
    """'tiny' or 'fake': the closest ``models`` mark, else 'tiny'; 'tiny' whatever the mark
    with ``RAGD_TEST_MODELS=tiny``."""
    forced = os.environ.get("RAGD_TEST_MODELS", "")
    if forced not in ("", "tiny"):
        raise pytest.UsageError(f"RAGD_TEST_MODELS can only be 'tiny', got {forced!r}")
    mark = request.node.get_closest_marker("models")
    kind = forced or (str(mark.args[0]) if mark is not None else "tiny")
    if kind not in MODEL_SETS:
        raise pytest.UsageError(f"the models mark takes one of {MODEL_SETS}, got {kind!r}")
    return kind


@pytest.fixture(scope="session")
def fake_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of the hashing fake models, with the keys of ``tiny_models``."""
    from ragd.models.fake import write_fake_model

    base = tmp_path_factory.mktemp("fake-models")
    return {"m3": write_fake_model(base / "fake-m3"), "reranker": write_fake_model(base / "fake-reranker", "reranker")}


@pytest.fixture(scope="session")
def loaded_fake(fake_models: dict[str, Path]) -> Any:
    """The fake models, loaded through ``load_models`` as a daemon loads them."""
    from ragd.config import ModelsConfig
    from ragd.models import load_models

    cfg = ModelsConfig(embedder=str(fake_models["m3"]), reranker=str(fake_models["reranker"]), fallback="none")
    return load_models(cfg, warn=False)


@pytest.fixture
def model_folders(request: pytest.FixtureRequest) -> dict[str, Path]:
    """The folders of the test's models (``tiny_models`` or ``fake_models``, see ``model_set``)."""
    folders: dict[str, Path] = request.getfixturevalue(f"{model_set(request)}_models")
    return folders


@pytest.fixture
def loaded_models(request: pytest.FixtureRequest) -> Any:
    """The test's models, loaded once per session (``loaded_tiny`` or ``loaded_fake``)."""
    return request.getfixturevalue(f"loaded_{model_set(request)}")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ragd.models.synthetic import build_m3_embedder, build_reranker

    base = tmp_path_factory.mktemp("models")
    return {"m3": build_m3_embedder(base / "tiny-m3"), "reranker": build_reranker(base / "tiny-reranker")}


@pytest.fixture(scope="session")
def loaded_tiny(tiny_models: dict[str, Path]) -> Any:
    """The tiny models loaded once per session (loading is the slow part)."""
    from ragd.config import ModelsConfig
    from ragd.models import load_models

    cfg = ModelsConfig(embedder=str(tiny_models["m3"]), reranker=str(tiny_models["reranker"]), fallback="none")
    return load_models(cfg, warn=False)


@pytest.fixture
def make_config(tmp_path: Path, model_folders: dict[str, Path], store_backend: str) -> Callable[..., Any]:
    """Build a validated Config rooted in tmp_path on the test's models and vector store
    (Milvus Lite in tmp_path for 'milvus'); keyword sections override defaults."""
    from ragd.config import parse_config

    def build(**sections: Any) -> Any:
        data: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "models": {"embedder": str(model_folders["m3"]), "reranker": str(model_folders["reranker"]),
                       "fallback": "none"},
        }
        if store_backend != "faiss":
            data["store"] = {"backend": store_backend, "uri": str(tmp_path / "milvus" / "ragd.db")}
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return parse_config(data, source=tmp_path / "config.toml")

    return build


@pytest.fixture
def engine_factory(make_config: Callable[..., Any], loaded_models: Any) -> Iterator[Callable[..., Any]]:
    """Engines over the test's models, loaded once per session; every engine is closed at teardown."""
    from ragd.engine import Engine

    engines: list[Engine] = []

    def build(**sections: Any) -> Engine:
        engine = Engine(make_config(**sections), models=loaded_models)
        engines.append(engine)
        return engine

    yield build
    for e in engines:
        e.close()


@pytest.fixture(params=["memory", "mapped"])
def mirror_home(request: pytest.FixtureRequest, tmp_path: Path) -> Path | None:
    """A search mirror's form: in memory (None), or mapped from folders beside this snapshot path."""
    return tmp_path / "mirror" / "m.npz" if request.param == "mapped" else None


@pytest.fixture
def index_tree(tmp_path: Path, engine_factory: Callable[..., Any]) -> Callable[..., tuple[Any, Path]]:
    """Write ``files`` under tmp_path/docs and index them with a fresh engine: (engine, root)."""
    from ragd.indexer import index_paths

    def build(files: dict[str, str | bytes], **sections: Any) -> tuple[Any, Path]:
        root = tmp_path / "docs"
        write_tree(root, files)
        engine = engine_factory(**sections)
        index_paths(engine, [root])
        return engine, root

    return build


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
