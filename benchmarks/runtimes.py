"""Runtime comparison: ragd's OpenVINO models against ONNX Runtime on the same model and the
same token ids, side by side, rounds alternating.

    .venv/bin/pip install onnxruntime onnx   # not part of ragd's install
    .venv/bin/python benchmarks/runtimes.py [--model minilm|m3] [--texts 24] [--rounds 3] [--json]

It answers one question: would another CPU runtime, or another precision, run these
transformers faster on this machine than what ragd's ``precision = "auto"`` runs for the
embedder here (OpenVINO static int8 with VNNI or AMX, else w8)? Runtimes: OpenVINO fp32, int8
weights with fp32 arithmetic (``w8``) and static int8, converted by ragd itself
(``OpenVINOEmbedder``, cached in ``.cache/bench-models/openvino``, as ``inference.py`` does), and
ONNX Runtime fp32 and dynamic int8 (int8 weights per channel, activations quantised per run)
from a ``torch.onnx`` export of the same encoder (cached in ``.cache/bench-models/onnx``).
Every runtime runs the encoder alone, one text at a time (batch 1, the text's own length), on
both cores. Texts: SciFact abstracts cut to ``--max-tokens``. ``--model m3`` is the
random-weight BGE-M3 architecture that ``benchmarks/inference.py`` builds; ``minilm`` the real
all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import machine
from inference import CACHE, build_models, texts_and_query


def model_folder(name: str) -> Path:
    if name == "minilm":
        from ragd.models.resolve import minilm_folder

        return minilm_folder()
    return build_models()[0]


def export_onnx(folder: Path, out: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """``model.onnx`` (fp32) and ``model.int8.onnx`` (dynamic int8) of ``folder``'s encoder."""
    import torch
    from transformers import AutoModel

    out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out / "model.onnx", out / "model.int8.onnx"
    if not fp32.is_file():
        log(f"exporting {folder.name} to ONNX")

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = AutoModel.from_pretrained(str(folder), add_pooling_layer=False).eval()

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        ids = torch.randint(1000, 2000, (1, 16))
        axes = {0: "batch", 1: "tokens"}
        torch.onnx.export(Encoder(), (ids, torch.ones_like(ids)), str(fp32), opset_version=17, dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes})
    if not int8.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        log("quantising the ONNX model (dynamic int8)")
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=True)
    return {"fp32": fp32, "int8": int8}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="m3", choices=["m3", "minilm"])
    parser.add_argument("--texts", type=int, default=24, help="SciFact abstracts, each run alone")
    parser.add_argument("--max-tokens", type=int, default=256, help="texts are cut to this many tokens")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; runtimes alternate within each")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    log = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        import onnxruntime as ort
    except ImportError:
        print("runtimes.py needs ONNX Runtime: .venv/bin/pip install onnxruntime onnx", file=sys.stderr)
        return 2
    import numpy as np

    from ragd.models.cpu import cpu_cores, openvino_auto_precision
    from ragd.models.openvino.models import OpenVINOEmbedder

    folder = model_folder(args.model)
    texts, _ = texts_and_query(args.texts)
    runs: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {}
    tokenizer = None
    for precision in ("fp32", "w8", "int8"):
        log(f"loading OpenVINO {precision} (converted once)")
        embedder = OpenVINOEmbedder(folder, f"bench-{args.model}", precision=precision, cache_dir=CACHE)
        tokenizer = embedder.tokenizer
        runs[f"openvino-{precision}"] = embedder.runner
    assert tokenizer is not None
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_cores()
    for precision, path in export_onnx(folder, CACHE / "onnx" / args.model, log).items():
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def ort_run(ids: np.ndarray, mask: np.ndarray, session: Any = session) -> Any:
            return session.run(None, {"input_ids": ids, "attention_mask": mask})

        runs[f"onnxruntime-{precision}"] = ort_run
    inputs = []
    for ids in tokenizer.ids(texts, max_length=args.max_tokens):
        arr = np.asarray([ids], dtype=np.int64)
        inputs.append((arr, np.ones_like(arr)))
    tokens = sum(a.shape[1] for a, _ in inputs)
    for fn in runs.values():  # warm up every shape once
        for ids, mask in inputs:
            fn(ids, mask)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            for ids, mask in inputs:
                fn(ids, mask)
            rates[name].append(tokens / (time.perf_counter() - t))
            log(f"round {r + 1}: {name} {rates[name][-1]:.0f} tokens/s")
    median = {name: statistics.median(v) for name, v in rates.items()}
    auto = f"openvino-{openvino_auto_precision('embedder')}"  # what precision = "auto" runs here
    default = median[auto]
    result = {
        "machine": machine(), "model": args.model, "texts": len(inputs), "tokens": tokens,
        "onnxruntime": ort.__version__, "ragd_auto": auto,
        "tokens_per_s": {k: round(v, 1) for k, v in median.items()},
        "rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio_to_ragd_auto": {k: round(v / default, 2) for k, v in median.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        m = result["machine"]
        print(f"{m['cpu']}, {m['cores']} cores, {' '.join(m['isa'])}; {args.model}, {len(inputs)} texts, "
              f"{tokens} tokens, batch 1")
        for name, rate in median.items():
            print(f"{name:18} {rate:8.0f} tokens/s  {rate / default:5.2f}x ragd's auto ({auto})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
