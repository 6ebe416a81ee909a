"""A model's tokenizer through the ``tokenizers`` library alone (no transformers, no torch):
the same Rust tokenizer transformers' fast tokenizers wrap, loaded from the folder's
``tokenizer.json``, with the few operations ragd's models need. transformers' tokenizer
reconfigures truncation and padding on its Rust tokenizer at every call (two threads
calling it at once raised "Already borrowed"); this one is configured once at load and
then only read, so threads share it without a lock."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragd.errors import ModelLoadError

# Files that define a tokenizer: folders whose files are identical share one Tokens object
# (BGE-M3 and bge-reranker-v2-m3 ship XLM-R's, ~140 MB in memory each).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model",
                   "vocab.txt", "added_tokens.json")
# Tokens that never carry a lexical weight in BGE-M3's sparse output (FlagEmbedding's rule).
UNUSED_ROLES = ("cls_token", "eos_token", "pad_token", "unk_token")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokens:
    """Token ids, pairs, offsets and padding for one model folder."""

    def __init__(self, backend: Any, folder: Path) -> None:
        backend.no_truncation()
        backend.no_padding()
        self._tok = backend
        config = _read_json(folder / "tokenizer_config.json")
        specials = {k: _content(v) for k, v in config.items() if k.endswith("_token")}
        specials.update({k: _content(v) for k, v in _read_json(folder / "special_tokens_map.json").items()})
        self.special_ids: dict[str, int] = {}
        for role, token in specials.items():
            token_id = backend.token_to_id(token) if token else None
            if token_id is not None:
                self.special_ids[role] = int(token_id)
        self.pad_id = self.special_ids.get("pad_token", 0)
        limit = config.get("model_max_length")
        self.model_max_length = int(limit) if isinstance(limit, (int, float)) and limit < 1_000_000 else None
        self.padding_left = config.get("padding_side") == "left"

    def __len__(self) -> int:
        """The vocabulary's size, added tokens included."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def unused_ids(self) -> set[int]:
        return {self.special_ids[r] for r in UNUSED_ROLES if r in self.special_ids}

    def num_special(self, pair: bool = False) -> int:
        return int(self._tok.num_special_tokens_to_add(pair))

    def ids(self, texts: Sequence[str], special: bool = True, max_length: int | None = None) -> list[list[int]]:
        """Token ids of each text, with the model's special tokens when ``special``; with
        ``max_length`` the text is cut so that the whole input (special tokens included)
        holds at most that many tokens."""
        if not texts:
            return []
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        if max_length is not None:
            room = max(0, max_length - (self.num_special() if special else 0))
            for enc in encodings:
                if len(enc.ids) > room:
                    enc.truncate(room)
        if not special:
            return [enc.ids for enc in encodings]
        return [self._tok.post_process(enc, None, True).ids for enc in encodings]

    def pairs(self, query: str, passages: Sequence[str], max_length: int) -> list[list[int]]:
        """``query`` with each passage as one input (the model's pair template), the query cut
        to 3/4 of ``max_length`` tokens and each passage to what is left (FlagReranker's rules)."""
        q = self._tok.encode(query, add_special_tokens=False)
        if len(q.ids) > max_length * 3 // 4:
            q.truncate(max_length * 3 // 4)
        room = max(1, max_length - len(q.ids) - self.num_special(pair=True))
        out = []
        for p in self._tok.encode_batch(list(passages), add_special_tokens=False):
            if len(p.ids) > room:
                p.truncate(room)
            out.append(self._tok.post_process(q, p, True).ids)
        return out

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text`` (no special tokens)."""
        return [(int(a), int(b)) for a, b in self._tok.encode(text, add_special_tokens=False).offsets]

    def pad(self, ids: Sequence[Sequence[int]], multiple: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``ids`` as one (rows, longest) int64 batch padded with the pad token, and its
        attention mask; the length rounded up to ``multiple`` when given."""
        longest = max((len(x) for x in ids), default=0)
        if multiple:
            longest = -(-longest // multiple) * multiple
        batch = np.full((len(ids), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), longest), dtype=np.int64)
        for row, x in enumerate(ids):
            if self.padding_left:
                batch[row, longest - len(x):] = x
                mask[row, longest - len(x):] = 1
            else:
                batch[row, : len(x)] = x
                mask[row, : len(x)] = 1
        return batch, mask


_loaded: weakref.WeakValueDictionary[str, Tokens] = weakref.WeakValueDictionary()
_loaded_lock = threading.Lock()


def _key(folder: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in TOKENIZER_FILES:
        try:
            data = (folder / name).read_bytes()
        except OSError:
            continue
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


def load_tokens(folder: Path, backend: Any = None) -> Tokens:
    """The tokenizer of the model in ``folder``: from its ``tokenizer.json``, else from
    ``backend`` (a ``tokenizers.Tokenizer``, e.g. transformers' converted fast tokenizer's).
    Folders with identical tokenizer files get the same object."""
    key = _key(folder)
    with _loaded_lock:
        shared = _loaded.get(key)
        if shared is not None:
            return shared
        # One thread per call: the writer's batches and the searches already share the cores.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            try:
                backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as exc:
                raise ModelLoadError(f"cannot read the tokenizer {folder / 'tokenizer.json'}: {exc}") from exc
        elif backend is None:
            backend = _converted_backend(folder)
        else:
            backend = backend.__class__.from_str(backend.to_str())  # a copy: the caller's stays as it was
        shared = _loaded[key] = Tokens(backend, folder)
        return shared


def _converted_backend(folder: Path) -> Any:
    """A folder without ``tokenizer.json`` (only a slow tokenizer's files): transformers
    converts it to a fast one."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), use_fast=True).backend_tokenizer
    except Exception as exc:
        raise ModelLoadError(f"cannot load a fast tokenizer from {folder}: {exc}") from exc
