"""``int8-dynamic``: the embedder exported to ONNX and quantised by ONNX Runtime's dynamic int8,
what ``precision = "auto"`` runs on a CPU without int8 dot products. It computes what torch
fp32 computes within the dense gate (on real MiniLM: ``tests/test_openvino.py``), keeps its
vectors apart, is cached like OpenVINO's conversions, runs without torch, and its batches can
be cancelled by searches like OpenVINO's."""

from __future__ import annotations

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

from ragd.errors import ModelLoadError
from ragd.models import cpu
from ragd.models.cpu import DYNAMIC, model_id_for, openvino_auto_precision, resolve_precision
from ragd.models.flag import FlagEmbedder
from ragd.models.openvino.cache import DYNAMIC_RECIPE, ir_location
from ragd.models.openvino.models import OpenVINOEmbedder
from ragd.models.openvino.onnx import AGREEMENT, CHECK_SAMPLES

TEXTS = ["ice cores record past climate", "rivers " * 90, "冰芯记录了过去的气候", "a"]
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx fma avx2\n"
CONVERTED = ["embedding_scales.npy", "embeddings.npy", "m3_heads.npz", "meta.json", "model.onnx"]
"""A converted model's folder: the word embeddings (int8, looked up outside), the heads, the model."""


def test_auto_runs_dynamic_int8_for_the_embedder_on_a_cpu_without_int8_dot_products(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(AVX2)
    assert openvino_auto_precision("embedder", info) == DYNAMIC
    assert openvino_auto_precision("reranker", info) == "w8"  # dynamic int8 loses the ranking
    info.write_text(AVX2.replace("avx2", "avx2 avx512_vnni"))
    assert openvino_auto_precision("embedder", info) == "int8"
    # an Intel CPU with AVX512-VNNI and no AMX: ONNX Runtime's dynamic int8 embeds fastest there too
    info.write_text("vendor_id\t: GenuineIntel\n" + AVX2.replace("avx2", "avx2 avx512_vnni"))
    assert openvino_auto_precision("embedder", info) == DYNAMIC
    assert openvino_auto_precision("reranker", info) == "int8"
    with monkeypatch.context() as m:  # without onnxruntime: OpenVINO's static int8, not w8
        m.setattr(cpu, "onnxruntime_installed", lambda: False)
        assert openvino_auto_precision("embedder", info) == "int8"
    info.write_text(AVX2)
    monkeypatch.setattr(cpu, "onnxruntime_installed", lambda: False)
    assert openvino_auto_precision("embedder", info) == "w8"
    # asked for where it cannot run: said, and the nearest precision instead
    precision, notes = resolve_precision(DYNAMIC, "cpu", "openvino", "embedder")
    assert precision == "w8" and "onnxruntime" in notes[0]
    monkeypatch.undo()
    assert resolve_precision(DYNAMIC, "cpu", "openvino", "embedder") == (DYNAMIC, [])
    precision, notes = resolve_precision(DYNAMIC, "cpu", "torch", "embedder")
    assert precision == "fp32" and "models.backend" in notes[0]
    precision, notes = resolve_precision(DYNAMIC, "cuda", "torch", "embedder")
    assert precision == "fp16" and "CPU only" in notes[0]
    # the reranker's ranking does not survive dynamic int8: it runs what auto runs, and says so
    precision, notes = resolve_precision(DYNAMIC, "cpu", "openvino", "reranker")
    assert precision == openvino_auto_precision("reranker") and "is for the embedder" in notes[0]
    # its vectors differ from every other precision's: stored under their own model id
    ids = {model_id_for("m@1", p, "openvino", info) for p in ("fp32", "w8", "int8", DYNAMIC)}
    assert model_id_for("m@1", DYNAMIC, "openvino") == "m@1+ort-int8" and len(ids) == 4


def test_dynamic_int8_embedder_computes_what_torch_computes(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    ref = FlagEmbedder(tiny_models["m3"], "tiny", precision="fp32", multi_vector=True)
    emb = OpenVINOEmbedder(tiny_models["m3"], "tiny@1", precision=DYNAMIC, cache_dir=tmp_path / "cache",
                           multi_vector=True)
    assert (emb.backend, emb.precision, emb.model_id) == ("openvino", DYNAMIC, "tiny@1+ort-int8")
    folder = emb.runner.location.folder
    assert sorted(p.name for p in folder.iterdir()) == CONVERTED  # no float export
    meta = emb.runner.location.meta()
    assert meta["runtime"] == "onnxruntime" and meta["recipe"] == DYNAMIC_RECIPE["embedder"]
    # the word embeddings are looked up outside the model, int8 per row, as for OpenVINO's int8
    assert [p.name for p in emb.runner._compiled.inputs] == ["inputs_embeds", "attention_mask"]
    assert meta["word_embeddings"].startswith("int8 per row")
    # measured against the float model on calibration text; the first recipe that agrees is kept
    assert meta["agreement"] >= AGREEMENT and meta["agreement_samples"] == CHECK_SAMPLES
    assert emb.text_batching().step == 1  # no compiled shapes to reuse: batches are not padded to a step
    a, b = ref.embed_documents(TEXTS), emb.embed_documents(TEXTS)
    cosine = np.sum(a.dense * b.dense, axis=1)
    assert cosine.min() >= 0.99, cosine
    np.testing.assert_allclose(np.linalg.norm(b.dense, axis=1), 1.0, atol=1e-5)
    assert a.sparse is not None and b.sparse is not None and a.colbert is not None and b.colbert is not None
    for x, y in zip(a.sparse, b.sparse, strict=True):
        top = sorted(x, key=x.__getitem__)[-3:]
        assert set(top) <= set(y)  # the heaviest lexical weights survive
    for x, y in zip(a.colbert, b.colbert, strict=True):
        assert x.shape == y.shape
        assert float(np.mean(np.sum(x * y, axis=1))) >= 0.99
    # a query and the same text as a document get the same vector
    np.testing.assert_allclose(emb.embed_query(TEXTS[0]).dense[0], b.dense[0], atol=1e-5)


_NO_TORCH_RUN = """
import json, sys
from pathlib import Path
from ragd.models.openvino.models import OpenVINOEmbedder
emb = OpenVINOEmbedder(Path(sys.argv[1]), "tiny", precision="int8-dynamic", cache_dir=Path(sys.argv[2]),
                       multi_vector=True, progress=lambda m: print("progress:", m, file=sys.stderr))
out = emb.embed_documents(json.loads(sys.argv[3]))
print(json.dumps({"dense": out.dense.tolist(), "loaded": sorted(
    m for m in ("torch", "FlagEmbedding", "transformers", "openvino") if m in sys.modules)}))
"""


def test_cached_and_run_without_torch(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Converted once; later starts load neither torch, FlagEmbedding, transformers nor
    OpenVINO, and compute the same vectors."""
    cache = tmp_path / "cache"
    emb = OpenVINOEmbedder(tiny_models["m3"], "tiny", precision=DYNAMIC, cache_dir=cache, multi_vector=True)
    expected = emb.embed_documents(TEXTS).dense
    env = {k: v for k, v in os.environ.items() if not k.startswith("CI")}
    done = subprocess.run([sys.executable, "-c", _NO_TORCH_RUN, str(tiny_models["m3"]), str(cache),
                           json.dumps(TEXTS)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert "converting" not in done.stderr and got["loaded"] == []
    np.testing.assert_allclose(got["dense"], expected, atol=1e-6)


def test_conversion_is_redone_when_the_weights_or_recipe_change_and_kept_when_it_fails(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    folder = tmp_path / "m3"
    shutil.copytree(tiny_models["m3"], folder)
    cache = tmp_path / "cache"
    said: list[str] = []
    OpenVINOEmbedder(folder, "tiny", precision=DYNAMIC, cache_dir=cache, progress=said.append)
    assert any("converting to ONNX Runtime int8-dynamic" in m for m in said)
    loc = ir_location(cache, folder, "tiny", "embedder", DYNAMIC)
    assert loc.folder.name == f"embedder-{DYNAMIC}-r{DYNAMIC_RECIPE['embedder']}" and loc.is_current()
    created = loc.meta()["created"]
    said.clear()
    OpenVINOEmbedder(folder, "tiny", precision=DYNAMIC, cache_dir=cache, progress=said.append)
    assert said == [] and loc.meta()["created"] == created
    # a conversion by an older recipe of the same precision goes; OpenVINO's int8 stays
    older = loc.folder.parent / f"embedder-{DYNAMIC}-r0"
    shutil.copytree(loc.folder, older)
    other = loc.folder.parent / "embedder-int8-r1"
    other.mkdir()
    os.utime(folder / "model.safetensors", ns=(time.time_ns(), time.time_ns() + 10**9))  # replaced weights
    assert not loc.is_current()
    OpenVINOEmbedder(folder, "tiny", precision=DYNAMIC, cache_dir=cache, progress=said.append)
    assert any("converting" in m for m in said) and loc.meta()["created"] > created
    assert not older.exists() and other.is_dir()
    before = (loc.folder / "model.onnx").read_bytes()

    import onnxruntime.quantization

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", crash)
    with pytest.raises(ModelLoadError, match="to ONNX Runtime: disk full"):
        OpenVINOEmbedder(folder, "tiny", precision=DYNAMIC, cache_dir=cache, force_convert=True)
    assert loc.is_current() and (loc.folder / "model.onnx").read_bytes() == before
    assert sorted(p.name for p in loc.folder.parent.iterdir()) == sorted([loc.folder.name, other.name])


@pytest.mark.parametrize(("vnni", "agreements", "kept"), [
    (False, [0.999], 0), (False, [0.95, 0.995], 1), (False, [0.95, 0.96, 0.97, 0.98], 3),
    (True, [0.999], 0), (True, [0.95, 0.995], 1), (True, [0.95, 0.96, 0.97], 2),
])
def test_the_fastest_recipe_that_keeps_the_agreement(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vnni: bool,
    agreements: list[float], kept: int,
) -> None:
    """Recipes are tried from s8 weights all int8 to every feed-forward output float (u8
    weights after the first on AVX2, s8 throughout with VNNI); the first that reaches
    ``AGREEMENT`` is kept, else the last (the most accurate), and meta.json says which."""
    from ragd.models.openvino import onnx

    monkeypatch.setattr(onnx, "cpu_shows_int8_dot", lambda: vnni)
    recipes = onnx.VNNI_RECIPES if vnni else onnx.RECIPES
    assert onnx.recipes_here() == recipes and {r.weights for r in onnx.VNNI_RECIPES} == {"s8"}
    measured = iter(agreements)
    monkeypatch.setattr(onnx, "_agreement", lambda hidden, reference: next(measured))
    said: list[str] = []
    emb = OpenVINOEmbedder(tiny_models["m3"], "tiny", precision=DYNAMIC, cache_dir=tmp_path / "cache",
                           progress=said.append)
    layers = json.loads((tiny_models["m3"] / "config.json").read_text())["num_hidden_layers"]
    tried = [tuple(m.split(", ")[1:3]) for m in said if "feed-forward outputs float" in m]
    assert tried == [(f"{r.weights} weights", f"{round(layers * r.float_share)} feed-forward outputs float")
                     for r in recipes[: kept + 1]]
    meta = emb.runner.location.meta()
    chosen = recipes[kept]
    assert meta["float_matmuls"] == round(layers * chosen.float_share) and meta["agreement"] == agreements[kept]
    assert meta["weights"].startswith(f"{chosen.weights} per channel")
    assert f"agreement with the float model: {agreements[0]:.4f} (needs {AGREEMENT})" in said
    assert next(measured, None) is None  # no recipe tried after the one kept
    assert sorted(p.name for p in emb.runner.location.folder.iterdir()) == CONVERTED


def test_attention_is_fused_and_a_failed_fusion_quantises_the_export_as_it_is(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each layer's attention becomes one ``QAttention`` (Q, K and V in one int8 product); when
    the optimizer fails the conversion says so and goes on unfused, to the same vectors."""
    import onnx as onnx_proto

    from ragd.models.openvino import onnx

    layers = json.loads((tiny_models["m3"] / "config.json").read_text())["num_hidden_layers"]
    fused = OpenVINOEmbedder(tiny_models["m3"], "tiny", precision=DYNAMIC, cache_dir=tmp_path / "a")
    ops = [n.op_type for n in onnx_proto.load(str(fused.runner.location.model_file)).graph.node]
    assert ops.count("QAttention") == layers and fused.runner.location.meta()["fused_attention"] == layers
    # residual + LayerNorm and bias + GELU stay apart (``onnx.UNFUSED``), in the file and in the session
    assert "SkipLayerNormalization" not in ops and "BiasGelu" not in ops
    assert ops.count("LayerNormalization") >= 2 * layers and ops.count("Gelu") == layers
    session_ops = [n.op_type for n in _session_graph(fused.runner.location.model_file, monkeypatch)]
    assert "SkipLayerNormalization" not in session_ops and "BiasGelu" not in session_ops
    assert "SkipLayerNormalization" in [n.op_type for n in _session_graph(
        fused.runner.location.model_file, monkeypatch, unfused=())]  # what the session would fuse otherwise
    monkeypatch.setattr(onnx, "_FUSE", "raise SystemExit('optimizer broke')")
    said: list[str] = []
    plain = OpenVINOEmbedder(tiny_models["m3"], "tiny", precision=DYNAMIC, cache_dir=tmp_path / "b",
                             progress=said.append)
    assert "attention not fused (optimizer broke); quantising the export as it is" in said
    ops = [n.op_type for n in onnx_proto.load(str(plain.runner.location.model_file)).graph.node]
    assert "QAttention" not in ops and plain.runner.location.meta()["fused_attention"] == 0
    a, b = fused.embed_documents(TEXTS).dense, plain.embed_documents(TEXTS).dense
    assert np.sum(a * b, axis=1).min() >= 0.99
    monkeypatch.undo()
    monkeypatch.setattr(onnx, "FUSE_SECONDS", 0.01)  # a fusion that hangs is given up on
    said.clear()
    OpenVINOEmbedder(tiny_models["m3"], "tiny", precision=DYNAMIC, cache_dir=tmp_path / "c", progress=said.append)
    assert "attention not fused (no result in 0.01 s); quantising the export as it is" in said


def test_the_fusion_holds_the_graph_without_its_weights(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export under 2 GB holds its weights inside the file; the fusion's process first moves
    them into one data file beside it (so it never holds them all), and the fused model computes
    what the export does."""
    import onnx as onnx_proto
    import onnxruntime
    import torch
    from transformers import AutoModel

    from ragd.models.openvino.onnx import FUSED_FILE, MODEL_FILE, export_hidden, fuse_here

    module = AutoModel.from_pretrained(str(tiny_models["m3"])).eval()
    embeds = torch.randn(2, 7, module.config.hidden_size)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    export_hidden(module, embeds, mask, tmp_path / MODEL_FILE)
    inline = onnx_proto.load(str(tmp_path / MODEL_FILE), load_external_data=False)
    assert any(t.HasField("raw_data") for t in inline.graph.initializer)
    feed = {"inputs_embeds": embeds.numpy(), "attention_mask": mask.numpy()}
    before = onnxruntime.InferenceSession(str(tmp_path / MODEL_FILE)).run(None, feed)[0]
    monkeypatch.chdir(tmp_path)
    fuse_here(MODEL_FILE, FUSED_FILE)
    moved = onnx_proto.load(str(tmp_path / MODEL_FILE), load_external_data=False)
    assert not any(t.HasField("raw_data") for t in moved.graph.initializer if t.dims and np.prod(t.dims) > 256)
    assert (tmp_path / f"{MODEL_FILE}.data").stat().st_size > (tmp_path / MODEL_FILE).stat().st_size
    fused = onnx_proto.load(str(tmp_path / FUSED_FILE), load_external_data=False)
    assert [n.op_type for n in fused.graph.node].count("Attention") == module.config.num_hidden_layers
    after = onnxruntime.InferenceSession(str(tmp_path / FUSED_FILE)).run(None, feed)[0]
    np.testing.assert_allclose(after[0], before[0], atol=1e-4)
    np.testing.assert_allclose(after[1, :5], before[1, :5], atol=1e-4)


def test_the_quantiser_runs_without_the_float_model(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch model is released once exported: nothing holds it while the quantiser runs
    (for BGE-M3 that is 2.3 GB less at the conversion's peak), and the conversion's agreement
    check still compares the quantised model with the float export."""
    import gc
    import weakref

    from ragd.models import flag
    from ragd.models.openvino import onnx

    loaded: list[weakref.ref[Any]] = []
    load = flag.load_flag_embedder

    def tracked(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        model, encoder = load(*args, **kwargs)
        loaded.append(weakref.ref(encoder))
        return model, encoder

    held_at_quantising: list[bool] = []
    quantise = onnx._quantise

    def quantising(*args: Any, **kwargs: Any) -> None:
        gc.collect()
        held_at_quantising.append(loaded[0]() is not None)
        quantise(*args, **kwargs)

    monkeypatch.setattr(flag, "load_flag_embedder", tracked)
    monkeypatch.setattr(onnx, "_quantise", quantising)
    said: list[str] = []
    emb = OpenVINOEmbedder(tiny_models["m3"], "tiny", precision=DYNAMIC, cache_dir=tmp_path / "cache",
                           progress=said.append)
    assert len(loaded) == 1 and held_at_quantising and not any(held_at_quantising)
    assert emb.runner.location.meta()["agreement"] >= AGREEMENT
    assert any(m.startswith("agreement with the float model") for m in said)
    assert sorted(p.name for p in emb.runner.location.folder.iterdir()) == CONVERTED


def _session_graph(path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> list[Any]:
    """The graph an ``OnnxSession`` on ``path`` runs, after ONNX Runtime's own fusions."""
    import onnx as onnx_proto
    import onnxruntime

    from ragd.models.openvino.onnx import OnnxSession

    saved = path.parent / "session-graph.onnx"

    class Saving(onnxruntime.SessionOptions):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.optimized_model_filepath = str(saved)

    with monkeypatch.context() as m:
        m.setattr(onnxruntime, "SessionOptions", Saving)
        OnnxSession(path, 1, **kwargs)
    graph = list(onnx_proto.load(str(saved), load_external_data=False).graph.node)
    saved.unlink()
    return graph


def test_a_broken_model_file_says_what_failed(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    emb = OpenVINOEmbedder(tiny_models["m3"], "tiny", precision=DYNAMIC, cache_dir=cache)
    model = emb.runner.location.model_file
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"cannot load the converted model .*model\.onnx"):
        OpenVINOEmbedder(tiny_models["m3"], "tiny", precision=DYNAMIC, cache_dir=cache)


def test_a_search_cancels_an_indexing_batch_and_it_runs_again(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """An ONNX Runtime run is stopped by ``cancel`` from another thread (the scheduler's
    preemption), and a batch run again after that gets exactly its outputs."""
    import threading

    emb = OpenVINOEmbedder(tiny_models["m3"], "tiny", precision=DYNAMIC, cache_dir=tmp_path / "cache")
    runner = emb.runner
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 200, size=(64, 512))
    mask = np.ones_like(ids)
    expected = runner(ids, mask, foreground=False)
    feed = runner._inputs(ids, mask)  # the word embeddings looked up as the runner does
    request = runner._compiled.create_infer_request()
    stopped: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(50):  # long enough for the cancel to land inside a run
                request.infer(feed)
        except RuntimeError as exc:
            stopped.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.3)
    request.cancel()
    worker.join(timeout=60)
    assert not worker.is_alive() and stopped, "the run was not cancelled"
    request.infer(feed)  # the session runs on after a cancelled run
    np.testing.assert_allclose(request.get_output_tensor(0).data, expected, atol=1e-6)


def test_cli_converts_and_config_accepts_it(make_config: Callable[..., Any], tmp_path: Path) -> None:
    cfg = make_config(models={"cache_dir": str(tmp_path / "cache"), "precision": DYNAMIC})
    assert cfg.models.precision == DYNAMIC
    conf = tmp_path / "config.toml"
    conf.write_text(
        f'data_dir = "{cfg.data_dir}"\n[models]\nembedder = "{cfg.models.embedder}"\n'
        f'reranker = "none"\nfallback = "none"\ncache_dir = "{tmp_path / "cache"}"\n', encoding="utf-8")
    from click.testing import CliRunner

    from ragd.cli import main

    result = CliRunner().invoke(main, ["models", "convert", "--config", str(conf), "--precision", DYNAMIC])
    assert result.exit_code == 0, result.output
    assert f"-> ONNX Runtime {DYNAMIC}" in result.stdout
    done = CliRunner().invoke(main, ["models", "convert", "--config", str(conf), "--precision", DYNAMIC, "--json"])
    row = json.loads(done.stdout)["converted"][0]
    assert (row["precision"], row["converted"]) == (DYNAMIC, False)
    assert Path(row["folder"], "model.onnx").is_file()
