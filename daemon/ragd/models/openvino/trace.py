"""The torch modules as both exporters trace them (OpenVINO's converter in ``convert``, the ONNX
exporter in ``onnx``). torch is imported inside the function."""

from __future__ import annotations

from typing import Any


def traceable(model: Any, output: str, embeds: bool = False) -> Any:
    """``model`` wrapped so tracing sees ``(input_ids, attention_mask) -> model(...).<output>``:
    ``last_hidden_state`` for the embedder's transformer, ``logits`` for the reranker; with
    ``embeds``, ``(inputs_embeds, attention_mask)`` (the word embeddings looked up outside)."""
    import torch

    class Traceable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return getattr(self.m(input_ids=input_ids, attention_mask=attention_mask, return_dict=True), output)

    class TraceableEmbeds(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, inputs_embeds: Any, attention_mask: Any) -> Any:
            return getattr(self.m(inputs_embeds=inputs_embeds, attention_mask=attention_mask, return_dict=True), output)

    return (TraceableEmbeds() if embeds else Traceable()).eval()
