"""The test backend: a hashing embedder and a word-overlap reranker, with no model behind them.

Tests of the indexer, search, watcher and daemon logic use these where the model is not what
they test: they load in microseconds, need neither torch nor a tokenizer file, and give the
same vectors in every process (``hashlib.blake2b``, never Python's salted ``hash``). Texts that
share words get near vectors, so a search finds a file by its words. Not for real use: the
vectors carry no meaning beyond the words' spelling.

A folder written by ``write_fake_model`` holds ``MARKER`` (the settings), a ``config.json``
and a placeholder ``model.safetensors``, so ``resolve_model`` accepts it and ``load_models``
loads these classes from it like any other model folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragd.errors import ModelLoadError, UsageError
from ragd.models.base import Embeddings, FloatArray, SparseWeights

if TYPE_CHECKING:
    from ragd.models.base import Embedder, Reranker

MARKER = "ragd-fake.json"
"""The file that makes a model folder load as a fake model (the factory in ``ragd.models`` checks for it)."""
VERSION = 1
"""Written into config.json, so a change of the vectors' recipe changes the fingerprint."""

EMBEDDER_DEFAULTS: dict[str, Any] = {"dim": 128, "max_tokens": 1022, "multi_vector": False, "delay_ms": 0.0}
"""``max_tokens`` as the tiny random M3 model of ``synthetic`` (1,024 positions less two)."""
RERANKER_DEFAULTS: dict[str, Any] = {"max_length": 512, "delay_ms": 0.0, "pair_delay_ms": 0.0}

_WORD_PIECE = 16  # longer runs of letters are cut into pieces, as a subword tokenizer would
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]{{1,{_WORD_PIECE}}}|[^\w\s]")
_PROBES = 4  # dimensions each hashed feature touches
_EMPTY = "\x00"  # the feature of a text without tokens


def tokenize(text: str) -> list[tuple[int, int]]:
    """Character spans of ``text``'s tokens: each CJK character, each run of other word
    characters (cut every 16), each other non-space character."""
    return [m.span() for m in _TOKEN.finditer(text)]


def _digest(feature: str) -> bytes:
    return hashlib.blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def token_id(token: str) -> int:
    """A token's id for the lexical weights: 31 bits of its hash (an int32 key)."""
    return int.from_bytes(_digest("id:" + token)[:4], "little") & 0x7FFFFFFF


def _weight(token: str) -> float:
    """How much a token counts: words by length (a crude stand-in for rarity), punctuation little."""
    if not token[0].isalnum() and token[0] != "_":
        return 0.05
    return 0.4 + 0.6 * min(len(token), 8) / 8


class _Hasher:
    """Feature hashing into ``dim`` dimensions with signs, cached per feature."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._cache: dict[str, FloatArray] = {}

    def feature(self, feature: str) -> FloatArray:
        vec = self._cache.get(feature)
        if vec is None:
            digest = _digest(feature)
            vec = np.zeros(self.dim, dtype=np.float32)
            for i in range(_PROBES):
                word = int.from_bytes(digest[4 * i: 4 * i + 4], "little")
                vec[(word >> 1) % self.dim] += 1.0 if word & 1 else -1.0
            if len(self._cache) < 200_000:
                self._cache[feature] = vec
        return vec

    def token(self, token: str) -> FloatArray:
        """A token's vector: its own feature plus, more weakly, its character trigrams (so
        "glacier" and "glaciers" are near)."""
        vec = self.feature("w:" + token).copy()
        padded = f"<{token}>"
        grams = [padded[i: i + 3] for i in range(len(padded) - 2)] if len(token) > 2 else []
        for gram in grams:
            vec += self.feature("g:" + gram) * (0.5 / len(grams))
        return vec


def _normalise(x: FloatArray) -> FloatArray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _settings(folder: Path, role: str, defaults: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"fake model {folder}: cannot read {MARKER}: {exc}") from exc
    if data.get("role", role) != role:
        raise ModelLoadError(f"fake model {folder}: its role is {data['role']!r}, not {role!r}")
    return {**defaults, **{k: v for k, v in data.items() if k in defaults}}


def _fingerprint(folder: Path) -> str:
    from ragd.models.resolve import ModelLocation, model_fingerprint

    return model_fingerprint(ModelLocation(str(folder), str(folder), folder, "local folder"))


class _Fake:
    """What both fake models share: they never schedule themselves and never run degraded."""

    schedules_itself = False

    def __init__(self, folder: Path, fingerprint: str | None, role: str, defaults: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.settings = _settings(self.folder, role, defaults)
        self.model_id = fingerprint or _fingerprint(self.folder)
        self.notes: list[str] = []
        self.calls = 0  # how many times the model was asked for something, for tests

    def hold(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return tokenize(text)

    def _tokens(self, text: str) -> list[str]:
        return [text[a:b].casefold() for a, b in tokenize(text)]

    def _pause(self, items: int = 0) -> None:
        self.calls += 1
        seconds = (float(self.settings["delay_ms"]) + items * float(self.settings.get("pair_delay_ms", 0.0))) / 1000
        if seconds > 0:
            time.sleep(seconds)


class FakeEmbedder(_Fake):
    """Dense vectors: the L2-normalised sum of the tokens' hashed vectors (weighted by length,
    1 + log of the count); lexical weights per hashed token id; with ``multi_vector`` one
    normalised vector per token. Settings (``MARKER``): dim, max_tokens, multi_vector,
    delay_ms (a pause per call); ``multi_vector`` given here overrides the folder's."""

    has_sparse = True

    def __init__(self, folder: Path, fingerprint: str | None = None, *, multi_vector: bool | None = None) -> None:
        super().__init__(folder, fingerprint, "embedder", EMBEDDER_DEFAULTS)
        self.dim = int(self.settings["dim"])
        self.max_tokens = int(self.settings["max_tokens"])
        self.multi_vector = bool(self.settings["multi_vector"] if multi_vector is None else multi_vector)
        self._hasher = _Hasher(self.dim)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(tokenize(t)) for t in texts]

    def _one(self, text: str) -> tuple[FloatArray, SparseWeights, FloatArray | None]:
        tokens = self._tokens(text) or [_EMPTY]
        counts: dict[str, int] = {}
        for tok in tokens:
            counts[tok] = counts.get(tok, 0) + 1
        dense = np.zeros(self.dim, dtype=np.float32)
        lexical: SparseWeights = {}
        for tok, n in counts.items():
            weight = _weight(tok)
            dense += self._hasher.token(tok) * (weight * (1.0 + math.log(n)))
            if tok != _EMPTY and weight > 0.1:
                lexical[token_id(tok)] = round(0.3 * weight, 6)
        colbert = None
        if self.multi_vector:
            colbert = _normalise(np.stack([self._hasher.token(tok) for tok in tokens]))
        return _normalise(dense), lexical, colbert

    def _embed(self, texts: Sequence[str]) -> Embeddings:
        self._pause()
        if not texts:
            return Embeddings(dense=np.zeros((0, self.dim), dtype=np.float32))
        rows = [self._one(t) for t in texts]
        return Embeddings(
            dense=np.stack([r[0] for r in rows]).astype(np.float32),
            sparse=[r[1] for r in rows],
            colbert=[r[2] for r in rows if r[2] is not None] if self.multi_vector else None,
        )

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        return self._embed(texts)

    def embed_query(self, text: str) -> Embeddings:
        n = len(tokenize(text))
        if n > self.max_tokens:
            raise UsageError(f"query is too long: {n} tokens, the embedder takes at most {self.max_tokens}")
        return self._embed([text])

    def embed_queries(self, texts: Sequence[str]) -> Embeddings:
        return self._embed([self._cut(t) for t in texts])

    def _cut(self, text: str) -> str:
        spans = tokenize(text)
        return text if len(spans) <= self.max_tokens else text[: spans[self.max_tokens - 1][1]]


class FakeReranker(_Fake):
    """Scores a pair by the query's words found in the passage, BM25-style (a word's count
    saturates, long passages weigh less), squashed into (0, 1) like a sigmoid of a logit. The
    pair is cut to ``max_length`` tokens as a cross-encoder's input would be. Settings
    (``MARKER``): max_length, delay_ms (a pause per call), pair_delay_ms (a pause per pair)."""

    parallel = 1
    _K1 = 1.2
    _B = 0.5
    _AVERAGE = 64.0  # passage length, in tokens, at which the length norm is neutral

    def __init__(self, folder: Path, fingerprint: str | None = None) -> None:
        super().__init__(folder, fingerprint, "reranker", RERANKER_DEFAULTS)
        self.max_length = int(self.settings["max_length"])

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        self._pause(len(passages))
        if not passages:
            return []
        terms = {t for t in self._tokens(query) if _weight(t) > 0.1}
        room = max(1, self.max_length - len(tokenize(query)) - 4) if self.max_length else None
        out: list[float] = []
        for passage in passages:
            tokens = self._tokens(passage)[:room]
            counts: dict[str, int] = {}
            for tok in tokens:
                counts[tok] = counts.get(tok, 0) + 1
            norm = 1 - self._B + self._B * len(tokens) / self._AVERAGE
            s = sum(_weight(t) * counts[t] * (self._K1 + 1) / (counts[t] + self._K1 * norm)
                    for t in terms if t in counts)
            coverage = s / (sum(_weight(t) for t in terms) or 1.0)
            out.append(float(1.0 / (1.0 + math.exp(-6.0 * (coverage - 0.5)))))
        return out


def write_fake_model(folder: Path, role: str = "embedder", **settings: Any) -> Path:
    """Write a fake model folder that ``load_models`` loads: the settings in ``MARKER``, a
    config.json (so the fingerprint follows the settings) and a placeholder weight file.
    ``role`` is "embedder" or "reranker"; ``settings`` override ``EMBEDDER_DEFAULTS`` /
    ``RERANKER_DEFAULTS``. Returns ``folder``."""
    defaults = {"embedder": EMBEDDER_DEFAULTS, "reranker": RERANKER_DEFAULTS}.get(role)
    if defaults is None:
        raise ValueError(f"role must be 'embedder' or 'reranker', got {role!r}")
    unknown = set(settings) - set(defaults)
    if unknown:
        raise ValueError(f"unknown settings for a fake {role}: {sorted(unknown)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = {**defaults, **settings}
    (folder / MARKER).write_text(json.dumps({"role": role, **chosen}, indent=2) + "\n", encoding="utf-8")
    config = {"model_type": "ragd-fake", "ragd_fake_version": VERSION, "role": role, **chosen}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    header = json.dumps({"__metadata__": {"format": "ragd-fake"}}).encode()
    header += b" " * (-len(header) % 8)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return folder


if TYPE_CHECKING:
    def _conforms(embedder: FakeEmbedder, reranker: FakeReranker) -> tuple[Embedder, Reranker]:
        """mypy checks here that the fakes implement the protocols whole."""
        return embedder, reranker
