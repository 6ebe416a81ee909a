"""ONNX Runtime's fused CPU kernels against the operators they replace, alone, at BGE-M3's widths:
``SkipLayerNormalization`` (residual + bias + LayerNorm) against Add, Add and
``LayerNormalization``, and ``BiasGelu`` against Add and ``Gelu``. ragd's ``int8-dynamic``
models leave both fusions out (``onnx.UNFUSED``); this says whether that still holds on a CPU.

    .venv/bin/python benchmarks/ort_fusions.py [--tokens 300] [--threads 1,2] [--rounds 5] [--json]

Each graph runs in its own session (the fusion under test disabled, so the separate operators
stay separate), the two taken in turn; the figure is the median time of one run, and the
ratio the median of the rounds' paired ratios (fused time over separate time: above 1, the
fused kernel is slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
from common import machine

HIDDEN, INTERMEDIATE = 1024, 4096
UNFUSED = ["SkipLayerNormFusion", "BiasGeluFusion"]


def graph(kind: str) -> tuple[bytes, list[str], int]:
    """A one-operation model (or its separate operators), its inputs and their width."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    width = HIDDEN if kind.endswith("layernorm") else INTERMEDIATE

    def vector(name: str) -> Any:
        return helper.make_tensor(name, TensorProto.FLOAT, [width], rng.random(width, dtype=np.float32))

    def tensor(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, None, width])

    inputs = ["x", "skip"] if kind.endswith("layernorm") else ["x"]
    nodes = {
        "fused-layernorm": [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"],
                                             domain="com.microsoft", epsilon=1e-5)],
        "separate-layernorm": [helper.make_node("Add", ["x", "bias"], ["b"]),
                               helper.make_node("Add", ["b", "skip"], ["s"]),
                               helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1,
                                                epsilon=1e-5)],
        "fused-gelu": [helper.make_node("BiasGelu", ["x", "bias"], ["y"], domain="com.microsoft")],
        "separate-gelu": [helper.make_node("Add", ["x", "bias"], ["b"]),
                          helper.make_node("Gelu", ["b"], ["y"], domain="com.microsoft")],
    }[kind]
    weights = [vector("bias")] + ([vector("gamma"), vector("beta")] if kind.endswith("layernorm") else [])
    model = helper.make_model(
        helper.make_graph(nodes, kind, [tensor(i) for i in inputs], [tensor("y")], weights),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString(), inputs, width


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100, help="runs timed per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import onnxruntime

    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for op in ("layernorm", "gelu"):
            sessions, feeds = {}, {}
            for way in ("fused", "separate"):
                model, inputs, width = graph(f"{way}-{op}")
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                sessions[way] = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                                             disabled_optimizers=UNFUSED)
                rng = np.random.default_rng(1)
                feeds[way] = {i: rng.random((1, args.tokens, width), dtype=np.float32) for i in inputs}
                sessions[way].run(None, feeds[way])
            seconds: dict[str, list[float]] = {"fused": [], "separate": []}
            for r in range(args.rounds):
                for way in ("fused", "separate") if r % 2 == 0 else ("separate", "fused"):
                    t = time.perf_counter()
                    for _ in range(args.runs):
                        sessions[way].run(None, feeds[way])
                    seconds[way].append((time.perf_counter() - t) / args.runs)
            ratios = [f / s for f, s in zip(seconds["fused"], seconds["separate"], strict=True)]
            rows.append({"op": op, "threads": threads, "tokens": args.tokens,
                         "fused_us": round(statistics.median(seconds["fused"]) * 1e6, 1),
                         "separate_us": round(statistics.median(seconds["separate"]) * 1e6, 1),
                         "fused_over_separate": round(statistics.median(ratios), 3)})
    result = {"machine": machine(), "onnxruntime": onnxruntime.__version__, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"ONNX Runtime {onnxruntime.__version__}; {machine()}")
    print(f"{'operation':12s} {'threads':>7s} {'fused us':>9s} {'separate us':>12s} {'fused/separate':>15s}")
    for row in rows:
        print(f"{row['op']:12s} {row['threads']:7d} {row['fused_us']:9.1f} {row['separate_us']:12.1f} "
              f"{row['fused_over_separate']:15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
