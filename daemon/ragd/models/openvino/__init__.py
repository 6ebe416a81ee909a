"""The OpenVINO backend: each model converted once from the same weights FlagEmbedding loads,
cached, and run on the CPU without torch, transformers or FlagEmbedding in the process.

- ``cache``: where converted models live and when one is stale (``IRLocation``, ``RECIPE``)
- ``calibration``: the text static int8 is calibrated on, and the samples built from it
- ``convert``: torch -> OpenVINO conversion, int8 quantisation and the model rewrites it needs
- ``words``: the int8 word-embedding table looked up outside int8 models
- ``scheduler``: the process-wide inference slots, searches first
- ``runner``: a compiled model (``Runner``), its batches through the scheduler
- ``onnx``: ``int8-dynamic``, the one precision ONNX Runtime runs (export, quantisation, session)
- ``trace``: the torch modules wrapped as both exporters trace them
- ``models``: ``OpenVINOEmbedder`` and ``OpenVINOCrossEncoder``
"""

from __future__ import annotations

import sys


def block_telemetry() -> None:
    """OpenVINO's converter and NNCF send usage statistics unless a consent file in the home
    folder says no. ragd keeps everything on the machine, so it makes their telemetry module
    unimportable before either is loaded; both then fall back to their built-in stubs."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
