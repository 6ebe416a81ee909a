"""The hashing fake models of ``ragd.models.fake``: the protocols whole, the same vectors in
every process, words that find their file, and loading through ``load_models``."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragd.config import ModelsConfig
from ragd.errors import ModelLoadError, UsageError
from ragd.models import load_models
from ragd.models.base import Embedder, Reranker
from ragd.models.fake import MARKER, FakeEmbedder, FakeReranker, tokenize, write_fake_model
from ragd.search import SearchOptions, search

pytestmark = pytest.mark.models("fake")

TEXTS = [
    "The alpha project studies glaciers in Iceland with ice cores.",
    "Sourdough bread needs a starter made of flour and water.",
    "冰川在冬天增长，夏天融化。",
    "",
]


def protocol_members(protocol: type) -> tuple[dict[str, str], set[str]]:
    """The attributes (name: declared type) and the methods a protocol and the protocols it
    extends declare."""
    attributes: dict[str, str] = {}
    methods: set[str] = set()
    for cls in protocol.__mro__:
        if cls is object or cls.__name__ in ("Protocol", "Generic"):
            continue
        attributes.update({k: str(v) for k, v in getattr(cls, "__annotations__", {}).items()})
        methods.update(n for n, v in vars(cls).items() if not n.startswith("_") and inspect.isfunction(v))
    return attributes, methods


@pytest.mark.parametrize(("protocol", "name"), [(Embedder, "m3"), (Reranker, "reranker")])
def test_every_protocol_member_is_there(protocol: type, name: str, loaded_fake: Any) -> None:
    model = loaded_fake.embedder if name == "m3" else loaded_fake.reranker
    attributes, methods = protocol_members(protocol)
    assert {"model_id", "schedules_itself", "notes"} <= set(attributes) and {"hold", "token_offsets"} <= methods
    missing = [m for m in sorted({*attributes, *methods}) if not hasattr(model, m)]
    assert not missing, missing
    assert not [m for m in methods if not callable(getattr(model, m))]
    for attr, declared in attributes.items():
        if declared in ("int", "bool", "str"):
            assert type(getattr(model, attr)).__name__ == declared, attr
    assert model.schedules_itself is False and model.notes == []
    with model.hold():
        pass


def test_load_models_routes_a_fake_folder(fake_models: dict[str, Path]) -> None:
    cfg = ModelsConfig(embedder=str(fake_models["m3"]), reranker=str(fake_models["reranker"]), fallback="none")
    loaded = load_models(cfg, warn=False)
    assert isinstance(loaded.embedder, FakeEmbedder) and isinstance(loaded.reranker, FakeReranker)
    assert loaded.degraded == []
    assert loaded.embedder.model_id.startswith(str(fake_models["m3"]) + "@")
    assert loaded.embedder.dim == 128 and loaded.embedder.max_tokens == 1022 and not loaded.embedder.multi_vector
    assert loaded.reranker.max_length == 512 and loaded.reranker.parallel == 1


def test_loading_and_embedding_need_no_torch(fake_models: dict[str, Path]) -> None:
    code = (
        "import sys\nfrom ragd.config import ModelsConfig\nfrom ragd.models import load_models\n"
        f"cfg = ModelsConfig(embedder={str(fake_models['m3'])!r}, reranker={str(fake_models['reranker'])!r}, "
        "fallback='none')\nm = load_models(cfg, warn=False)\nm.embedder.embed_documents(['a b'])\n"
        "m.reranker.score('a', ['a b'])\nprint(sorted(x for x in ('torch', 'transformers', 'openvino') "
        "if x in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _vectors_digest(folder: Path, texts: list[str]) -> str:
    import hashlib

    emb = FakeEmbedder(folder).embed_documents(texts)
    digest = hashlib.sha256(emb.dense.tobytes())
    for lex in emb.sparse or []:
        digest.update(json.dumps(sorted(lex.items())).encode())
    digest.update(json.dumps(FakeReranker(folder.parent / "fake-reranker").score(texts[0], texts)).encode())
    return digest.hexdigest()


def test_the_same_vectors_in_every_process(fake_models: dict[str, Path]) -> None:
    """No salted ``hash()``: processes with different hash seeds agree bit for bit."""
    here = _vectors_digest(fake_models["m3"], TEXTS)
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\nfrom pathlib import Path\nimport test_fake_models as t\n"
            "print(t._vectors_digest(Path(sys.argv[2]), t.TEXTS))\n")
    for seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(fake_models["m3"])],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == here


def test_vectors_do_not_depend_on_the_batch(fake_models: dict[str, Path]) -> None:
    model = FakeEmbedder(fake_models["m3"])
    together = model.embed_documents(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = model.embed_documents([text])
        assert np.array_equal(alone.dense[0], together.dense[i])
        assert together.sparse is not None and alone.sparse == [together.sparse[i]]
    assert np.array_equal(model.embed_query(TEXTS[0]).dense, together.dense[:1])
    norms = np.linalg.norm(together.dense, axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert together.dense.dtype == np.float32 and together.dense.shape == (len(TEXTS), model.dim)
    assert model.embed_documents([]).dense.shape == (0, model.dim)


def test_tokens_are_real_spans_and_chinese_is_one_per_character(fake_models: dict[str, Path]) -> None:
    model = FakeEmbedder(fake_models["m3"])
    text = "Grey herons, 冰川 and a_very_long_identifier_name_here!"
    spans = model.token_offsets(text)
    pieces = [text[a:b] for a, b in spans]
    assert pieces[:5] == ["Grey", "herons", ",", "冰", "川"]
    assert "".join(pieces) == text.replace(" ", "")
    assert all(len(p) <= 16 for p in pieces)  # long words are cut into pieces
    assert model.count_tokens([text, ""]) == [len(spans), 0]
    assert tokenize("冰川在冬天") == [(i, i + 1) for i in range(5)]


def test_words_in_common_make_vectors_near(fake_models: dict[str, Path]) -> None:
    model = FakeEmbedder(fake_models["m3"])
    docs = model.embed_documents(TEXTS[:3]).dense
    for i, query in enumerate(("glaciers in Iceland", "bread starter flour", "冰川融化")):
        sims = docs @ model.embed_query(query).dense[0]
        assert int(np.argmax(sims)) == i, (query, sims)


def test_lexical_weights_key_shared_words_alike(fake_models: dict[str, Path]) -> None:
    model = FakeEmbedder(fake_models["m3"])
    doc, query = model.embed_documents(["Glaciers retreat.", "glaciers"]).sparse or []
    assert doc and all(0 <= k < 2 ** 31 and w > 0 for k, w in doc.items())
    assert set(query) <= set(doc)  # the same word, whatever its case


def test_multi_vector_gives_one_vector_per_token(tmp_path: Path) -> None:
    model = FakeEmbedder(write_fake_model(tmp_path / "mv", multi_vector=True, dim=32))
    emb = model.embed_documents(["one two three", ""])
    assert model.multi_vector and emb.colbert is not None
    assert [c.shape for c in emb.colbert] == [(3, 32), (1, 32)]
    np.testing.assert_allclose(np.linalg.norm(emb.colbert[0], axis=1), 1.0, rtol=1e-5)
    assert FakeEmbedder(tmp_path / "mv", multi_vector=False).embed_documents(["x"]).colbert is None


def test_a_query_over_the_limit_is_refused_and_windows_are_cut(tmp_path: Path) -> None:
    model = FakeEmbedder(write_fake_model(tmp_path / "short", max_tokens=16))
    with pytest.raises(UsageError, match="too long"):
        model.embed_query("word " * 17)
    long_text = " ".join(f"w{i}" for i in range(40))
    assert np.array_equal(model.embed_queries([long_text]).dense,
                          model.embed_queries([" ".join(f"w{i}" for i in range(16))]).dense)


def test_the_reranker_scores_word_overlap_within_its_length(tmp_path: Path, fake_models: dict[str, Path]) -> None:
    reranker = FakeReranker(fake_models["reranker"])
    scores = reranker.score("where do grey herons nest", [
        "Grey herons nest in tall trees.", "Herons wade in water.", "Sourdough bread needs a starter."])
    assert scores[0] > scores[1] > scores[2] and all(0 < s < 1 for s in scores)
    assert reranker.score("x", []) == []
    assert reranker.score("herons", ["Herons."]) == reranker.score("herons", ["Herons."])
    short = FakeReranker(write_fake_model(tmp_path / "short", "reranker", max_length=8))
    padded = "filler " * 20 + "herons"
    assert short.score("herons", [padded])[0] < short.score("herons", ["herons " + "filler " * 20])[0]


def test_delays_slow_each_call(tmp_path: Path) -> None:
    embedder = FakeEmbedder(write_fake_model(tmp_path / "e", delay_ms=50))
    reranker = FakeReranker(write_fake_model(tmp_path / "r", "reranker", pair_delay_ms=20))
    started = time.monotonic()
    embedder.embed_documents(["a"])
    reranker.score("a", ["a", "b", "c"])
    assert time.monotonic() - started >= 0.11
    assert embedder.calls == 1 and reranker.calls == 1


def test_folders_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown settings"):
        write_fake_model(tmp_path / "x", dimension=8)
    with pytest.raises(ValueError, match="role"):
        write_fake_model(tmp_path / "x", "classifier")
    reranker = write_fake_model(tmp_path / "r", "reranker")
    with pytest.raises(ModelLoadError, match="role is 'reranker'"):
        FakeEmbedder(reranker)
    assert (reranker / MARKER).is_file() and (reranker / "config.json").is_file()
    a = FakeEmbedder(write_fake_model(tmp_path / "a", dim=64)).model_id
    b = FakeEmbedder(write_fake_model(tmp_path / "a", dim=32)).model_id
    assert a != b  # new settings, new fingerprint: a new index, never mixed vectors


def test_a_search_finds_files_by_their_words(index_tree: Callable[..., tuple[Any, Path]]) -> None:
    engine, root = index_tree({
        "glaciers.md": "# Glaciers\n\nThe alpha project studies glaciers in Iceland with ice cores.\n",
        "bread.txt": "Sourdough bread needs a starter made of flour and water.\n",
        "volcano.txt": "Volcanic eruptions release sulfur dioxide into the stratosphere.\n",
        "zh.md": "# 冰川\n\n冰川在冬天增长，夏天融化。\n",
    })
    assert isinstance(engine.models.embedder, FakeEmbedder)
    for query, name in (("ice cores in Iceland", "glaciers.md"), ("sourdough starter", "bread.txt"),
                        ("sulfur dioxide", "volcano.txt"), ("冰川融化", "zh.md")):
        for mode in ("hybrid", "dense", "sparse", "lexical"):
            if mode == "lexical" and name == "zh.md":
                continue  # full-text search has its own tokenizer
            hits = search(engine, query, SearchOptions(k=1, mode=mode, rerank=False)).hits
            assert hits and hits[0].path == str(root / name), (query, mode)
        reranked = search(engine, query, SearchOptions(k=2, rerank=True))
        assert reranked.hits[0].path == str(root / name) and reranked.hits[0].rerank_score is not None
