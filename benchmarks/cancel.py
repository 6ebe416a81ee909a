"""Cancelling OpenVINO requests mid-run: do later runs of the same compiled model still give
the outputs they give alone? The stress test behind ``Scheduler``'s cancel-and-reset.

    .venv/bin/python benchmarks/cancel.py [--json] [--model tiny|full] [--runs 300]
        [--after reset|fresh|reuse] [--max-batch 16] [--max-tokens 512]

Each round starts a background run of a random input shape, cancels it after a random
fraction of that shape's time alone (so most are cancelled mid-run, some finish first), then
runs a random "search" shape and the background input again, comparing both outputs (shape
and values) with those of the same inputs run alone at the start. After a cancellation:

- ``reset`` (ragd's ``Scheduler``): drop the request, run a 1 x 1 input on a new one;
- ``fresh``: drop the request only;
- ``reuse``: keep using the cancelled request.

``--model tiny`` is the tiny random BGE-M3 the tests build (fast, so many rounds);
``full`` is the full-size random BGE-M3 architecture that ``inference.py`` builds (slow on
a CPU: use small ``--max-batch`` / ``--max-tokens``). Both are int8, as ``auto`` runs them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-models"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--runs", type=int, default=300, help="rounds (background run, cancel, search, run again)")
    parser.add_argument("--after", default="reset", choices=["reset", "fresh", "reuse"],
                        help="what follows a cancellation (see above)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from ragd.models.openvino.models import OpenVINOEmbedder
    from ragd.models.openvino.scheduler import _reset

    if args.model == "tiny":
        from ragd.models.synthetic import build_m3_embedder

        folder = CACHE / "m3-tiny"
        if not (folder / "model.safetensors").is_file():
            build_m3_embedder(folder)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from inference import build_models

        folder, _ = build_models()
    embedder = OpenVINOEmbedder(folder, args.model, precision="int8", cache_dir=CACHE)
    runner = embedder.runner
    assert runner is not None
    compiled = runner._compiled

    pick = random.Random(args.seed)
    rng = np.random.default_rng(args.seed)
    batches = sorted({1, 2, 4, 8, args.max_batch} & set(range(1, args.max_batch + 1)))
    lengths = sorted({16, 64, 200, 333, args.max_tokens} & set(range(1, args.max_tokens + 1)))
    shapes = [(b, n) for b in batches for n in lengths]
    inputs: dict[tuple[int, int], Any] = {}
    alone: dict[tuple[int, int], np.ndarray] = {}
    seconds: dict[tuple[int, int], float] = {}
    request = compiled.create_infer_request()
    for shape in shapes:
        ids = rng.integers(5, 200, size=shape).astype(np.int64)
        inputs[shape] = runner._inputs(ids, np.ones_like(ids))
        started = time.perf_counter()
        request.infer(inputs[shape])
        seconds[shape] = time.perf_counter() - started
        alone[shape] = np.array(request.get_output_tensor(0).data, copy=True)

    counts = {"cancelled": 0, "finished_first": 0, "errors": 0, "wrong_outputs": 0}
    examples: list[str] = []

    def check(req: Any, shape: tuple[int, int]) -> None:
        out = req.get_output_tensor(0).data
        if out.shape != alone[shape].shape or not np.allclose(out, alone[shape], atol=1e-4):
            counts["wrong_outputs"] += 1
            examples.append(f"wrong output for {shape}: shape {out.shape}")

    background = compiled.create_infer_request()
    search = compiled.create_infer_request()
    started_all = time.perf_counter()
    for _ in range(args.runs):
        shape = pick.choice(shapes)
        background.start_async(inputs[shape])
        time.sleep(pick.uniform(0, 1.2 * seconds[shape]))
        background.cancel()
        try:
            background.wait()
            counts["finished_first"] += 1
            check(background, shape)
        except RuntimeError as exc:
            if "cancel" not in str(exc).lower():
                raise
            counts["cancelled"] += 1
            if args.after == "reset":
                background = _reset(background, inputs[shape])
            elif args.after == "fresh":
                background = compiled.create_infer_request()
        other = pick.choice(shapes)
        try:
            search.infer(inputs[other])
            check(search, other)
            background.infer(inputs[shape])
            check(background, shape)
        except RuntimeError as exc:
            counts["errors"] += 1
            examples.append(" ".join(str(exc).split())[-240:])
            background, search = compiled.create_infer_request(), compiled.create_infer_request()
    result = {"model": args.model, "after": args.after, "runs": args.runs, **counts,
              "seconds": round(time.perf_counter() - started_all, 1), "examples": examples[:5],
              "alone_s": {f"{b}x{n}": round(s, 3) for (b, n), s in seconds.items()}}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
