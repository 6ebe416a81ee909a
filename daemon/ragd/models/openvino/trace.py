"""The torch modules as both exporters trace them (OpenVINO's converter in ``convert``, the ONNX
exporter in ``onnx``), and how a conversion holds them. torch is imported inside the function."""

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


class Held:
    """The torch module a conversion reads, held here alone so that the conversion can drop it
    once its steps no longer need it (``release``): the int8-dynamic conversion then quantises
    without the float model in memory. The caller keeps no other reference to it."""

    def __init__(self, module: Any) -> None:
        self._module = module

    @property
    def module(self) -> Any:
        if self._module is None:
            raise RuntimeError("the module was released")
        return self._module

    def release(self) -> None:
        self._module = None
