"""Randomly initialised models with the structure of the real ones.

Tests and benchmarks cannot download BAAI/bge-m3 or BAAI/bge-reranker-v2-m3, so they build
stand-ins here and load them through the same code path as the real models: an
XLM-RoBERTa encoder saved with ``save_pretrained`` plus ``colbert_linear.pt`` and
``sparse_linear.pt`` for the M3 embedder, and a one-label sequence-classification head for
the reranker. ``size="tiny"`` is for fast tests; ``size="full"`` has BGE-M3's exact
architecture (24 layers, hidden 1024, 16 heads, FFN 4096, vocabulary 250002), whose
inference cost does not depend on the weights' values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FULL_VOCAB = 250002

_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "full": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}


def _word_pieces() -> list[str]:
    """Subword pieces in SentencePiece style, taken from the packaged MiniLM vocabulary."""
    from ragd.models.resolve import minilm_folder

    pieces: list[str] = ["\u2581"]
    seen: set[str] = {"\u2581"}
    vocab = (minilm_folder() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    for word in vocab:
        if word.startswith("[") and word.endswith("]"):
            continue
        candidates = [word[2:]] if word.startswith("##") else ["\u2581" + word, word]
        for piece in candidates:
            if piece and piece not in seen:
                seen.add(piece)
                pieces.append(piece)
    # Every CJK ideograph is a piece of its own, so Chinese text never maps to <unk>.
    for code in range(0x4E00, 0x9FA6):
        ch = chr(code)
        if ch not in seen:
            seen.add(ch)
            pieces.append(ch)
    return pieces


def build_tokenizer(folder: Path, vocab_size: int | None = None) -> int:
    """Save an XLM-R style (Unigram, ``<s> A </s></s> B </s>``) fast tokenizer; return its vocabulary size."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import XLMRobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = _word_pieces()
    if vocab_size is not None:
        room = vocab_size - len(specials) - 1  # the last id is <mask>
        pieces = pieces[:room] + [f"\u2581zz{i}" for i in range(max(0, room - len(pieces)))]
    vocab: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    vocab += [(p, -1.0 - len(p) ** -1) for p in pieces]
    vocab.append(("<mask>", 0.0))
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    from tokenizers import decoders

    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=8192,
    )
    fast.save_pretrained(str(folder))
    return len(vocab)


def _config(size: str, vocab_size: int, **extra: Any) -> Any:
    from transformers import XLMRobertaConfig

    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    return XLMRobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=8194 if size == "full" else 1026,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        **{**_SIZES[size], **extra},
    )


def build_m3_embedder(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random BGE-M3-shaped embedder (encoder + ColBERT and sparse heads) to ``folder``."""
    import torch
    from transformers import XLMRobertaModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(folder, FULL_VOCAB if size == "full" else None)
    torch.manual_seed(seed)
    config = _config(size, vocab)
    model = XLMRobertaModel(config, add_pooling_layer=False)
    model.save_pretrained(str(folder))
    hidden = config.hidden_size
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), folder / "colbert_linear.pt")
    torch.save(torch.nn.Linear(hidden, 1).state_dict(), folder / "sparse_linear.pt")
    return folder


def build_reranker(folder: Path, size: str = "tiny", seed: int = 1, layers: int | None = None) -> Path:
    """Write a random bge-reranker-v2-m3-shaped cross-encoder (one-label head) to ``folder``
    (``layers``: another number of transformer layers than ``size`` has)."""
    import torch
    from transformers import XLMRobertaForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(folder, FULL_VOCAB if size == "full" else None)
    torch.manual_seed(seed)
    config = _config(size, vocab, num_labels=1, **({"num_hidden_layers": layers} if layers else {}))
    XLMRobertaForSequenceClassification(config).save_pretrained(str(folder))
    return folder
