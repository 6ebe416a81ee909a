"""benchmarks/peers.py's own logic on fake results: agreement measures, ratios, the JSON shape.

The benchmark itself (full-size models, the ``bench`` extra's peers) is not run here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peers


def row(engine: str, role: str, speed: float, agreement: float, batch: int | None = None) -> dict[str, Any]:
    return {"engine": engine, "role": role, "batch": batch, "tokens_per_s": speed, "tokens_per_cpu_s": speed / 2,
            "peak_rss_mb": 1000.0,
            "load_s": 1.0, "load_average": 1.5, "agreement_to_fp32": agreement}


def test_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    b = a + rng.normal(scale=0.5, size=40)
    b[:6] = 0.25  # ties
    assert peers.spearman(a, b) == pytest.approx(float(stats.spearmanr(a, b).statistic), abs=1e-12)
    assert peers.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert peers.spearman([1, 2, 3], [5, 5, 5]) == 0.0


def test_mean_cosine() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert peers.mean_cosine(a, a * 3) == pytest.approx(1.0)
    assert peers.mean_cosine(a, np.array([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(0.5)


def test_ratios_to_the_fastest_peer_and_to_the_fastest_at_the_gate() -> None:
    rows = [
        row("flagembedding", "embed", 100.0, 1.0),
        row("st-openvino-int8", "embed", 900.0, 0.999, 32),
        row("st-openvino-int8", "embed", 1000.0, 0.999, 1),
        row("ragd", "embed", 1200.0, 0.998),
        row("flagembedding", "rerank", 80.0, 1.0),
        row("st-openvino-int8", "rerank", 1000.0, 0.76, 1),  # fastest, but fails the gate
        row("st-onnx-int8", "rerank", 500.0, 0.985, 32),
        row("ragd", "rerank", 800.0, 0.99),
    ]
    out = peers.summarize(rows, {"texts": 8})
    assert out["embed_ratio_to_fastest_peer"] == 1.2
    assert out["embed_fastest_peer"] == "st-openvino-int8 (batch 1)"
    assert out["rerank_ratio_to_fastest_peer"] == 0.8
    assert out["embed_ratio_to_fastest_peer_cpu"] == 1.2 and out["rerank_fastest_peer_cpu"].startswith("st-openvino")
    assert out["rerank_fastest_peer_at_gate"] == "st-onnx-int8 (batch 32)"
    assert out["rerank_ratio_to_fastest_peer_at_gate"] == 1.6
    assert out["embed_mean_cosine_to_fp32"] == 0.998
    assert out["rerank_spearman_to_fp32"] == 0.99
    assert len(out["peers"]) == 6 and all(r["engine"] != "ragd" for r in out["peers"])
    assert out["texts"] == 8
    json.dumps(out)  # the --json object is plain JSON
    text = peers.table(out)
    assert "1.2x the fastest peer (st-openvino-int8 (batch 1))" in text
    assert "0.8x the fastest peer" in text


def test_failed_rows_and_missing_ragd() -> None:
    rows = [row("flagembedding", "rerank", 80.0, 1.0),
            {"engine": "st-onnx-int8", "role": "rerank", "batch": 1, "error": "export failed"}]
    out = peers.summarize(rows, {})
    assert out["rerank_ratio_to_fastest_peer"] is None and out["rerank_spearman_to_fp32"] is None
    assert out["rerank_fastest_peer"] == "flagembedding"
    assert "failed: export failed" in peers.table(out)


def test_configurations_put_the_reference_first_and_both_batch_sizes() -> None:
    runs = peers.configurations(["ragd", "st-onnx-int8", "flagembedding"], ["rerank"])
    assert [(r["engine"], r["batch"]) for r in runs] == [
        ("flagembedding", None), ("ragd", None), ("st-onnx-int8", peers.ST_DEFAULT_BATCH), ("st-onnx-int8", 1)]


def test_agreement_is_measured_against_the_reference_outputs() -> None:
    rows = [
        {"engine": "flagembedding", "role": "rerank", "batch": None, "output": [0.1, 0.2, 0.3, 0.4]},
        {"engine": "st-onnx-int8", "role": "rerank", "batch": 1, "output": [0.1, 0.3, 0.2, 0.4]},
        {"engine": "flagembedding", "role": "embed", "batch": None, "output": [[1.0, 0.0], [0.0, 1.0]]},
        {"engine": "ragd", "role": "embed", "batch": None, "output": [[1.0, 0.0], [1.0, 1.0]]},
        {"engine": "st-onnx-int8", "role": "embed", "batch": 1, "error": "failed"},
    ]
    peers.agreement(rows)
    assert [r.get("agreement_to_fp32") for r in rows] == [1.0, 0.8, 1.0, round((1 + 2 ** -0.5) / 2, 4), None]
    assert all("output" not in r for r in rows)


def test_candidates_in_a_2s_deadline() -> None:
    assert peers.candidates_in_2s(1000.0, 20) == 6.2
    assert peers.candidates_in_2s(1000.0, 20, 128) == 13.5
    assert peers.candidates_in_2s(None, 20) is None


def test_profile_aggregation() -> None:
    nodes = [
        ("__module.roberta.encoder.layer.0.attention.self.query/MatMul", "FullyConnected", "brgemm_avx512_FP32", 300.0),
        ("__module.roberta.encoder.layer.11.output.dense/MatMul", "FullyConnected", "brgemm_avx512_I8", 500.0),
        ("Multiply_123", "Eltwise", "jit_avx512_FP32", 200.0),
    ]
    out = peers.aggregate(nodes)
    assert out["total_ms"] == 1.0
    assert out["by_kind"][0] == {"kind": "FullyConnected I8", "ms": 0.5, "share": 0.5}
    assert out["by_layer"] == {"layer 00": 0.3, "layer 11": 0.5, "rest": 0.2}
    assert peers.op_precision("ref_any") == "other"


def test_turns_swap_who_goes_first() -> None:
    got = peers.turns(3)
    assert got == [(0, "ragd"), (0, "peer"), (1, "peer"), (1, "ragd"), (2, "ragd"), (2, "peer")]
    assert peers.turns(0) == []


def test_paired_ratios_compare_runs_taken_in_turn() -> None:
    """Each pair's ratio is the peer's time over ragd's; the median, not a mean, is reported."""
    got = peers.paired_ratios([10.0, 9.0, 12.0], [9.0, 9.0, 6.0])
    assert (got["pairs"], got["median"], got["min"], got["max"]) == (3, 0.9, 0.5, 1.0)
    assert got["ratios"] == [0.5, 0.9, 1.0]
    assert peers.paired_ratios([2.0, 4.0], [3.0, 2.0])["median"] == pytest.approx(1.0)
    assert peers.paired_ratios([], [])["median"] is None
    summary = peers.summarize([row("ragd", "rerank", 900.0, 0.99), row("st-openvino-int8", "rerank", 1000.0, 0.93, 1)],
                              {})
    summary["rerank_ratio_to_fastest_peer_alternating"] = {"peer": "st-openvino-int8 (batch 1)", **got}
    assert "run in turn with st-openvino-int8 (batch 1): 0.9x at the median (0.5-1.0x over 3 pairs" in peers.table(
        summary)


def test_cut_to_tokens_keeps_the_longest_start_that_fits() -> None:
    text = "one two three four five six"
    words = lambda t: len(t.split()) + 2  # noqa: E731  (two special tokens)
    assert peers.cut_to_tokens(words, text, 5) == "one two three"
    assert peers.cut_to_tokens(words, text, 8) == text
    assert peers.cut_to_tokens(words, text, 0) == text
    assert peers.cut_to_tokens(words, text, 3) == "one"
    assert peers.cut_to_tokens(words, text, 2) == "one"  # never empty, even when one word is too long


def test_the_onnx_export_is_loaded_from_the_file_it_was_written_to(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """sentence-transformers names its export after the preset's weight type unless told a
    suffix (``model_quint8_avx2.onnx`` with the AVX2 preset), so the script names it itself."""
    import types

    exports: list[str | None] = []

    def export(model: Any, preset: str, folder: str, file_suffix: str | None = None) -> None:
        exports.append(file_suffix)
        (Path(folder) / "onnx").mkdir(exist_ok=True)
        (Path(folder) / "onnx" / f"model_{file_suffix or 'quint8_' + preset}.onnx").write_bytes(b"onnx")

    fake = types.ModuleType("sentence_transformers")
    fake.export_dynamic_quantized_onnx_model = export  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)
    monkeypatch.setattr(peers, "onnx_preset", lambda: "avx2")
    monkeypatch.setattr(peers, "st_model", lambda *a, **k: object())
    source = tmp_path / "reranker-full"
    source.mkdir()
    (source / "config.json").write_text("{}", encoding="utf-8")

    peers.prepare_st("st-onnx-int8", "rerank", source, calibration=4, skip=24)
    assert (peers.peer_folder(source, "rerank") / peers.st_file("st-onnx-int8")).is_file()
    assert peers.prepare_st("st-onnx-int8", "rerank", source, calibration=4, skip=24) == 0.0  # cached
    assert len(exports) == 1
