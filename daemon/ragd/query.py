"""A query as each signal reads it: embedder windows for a query longer than the embedder's
input, the full-text terms BM25 scores (the rarest, when there are many), the part the
reranker reads, and a query taken from an indexed chunk ("more like this").

A query that fits the embedder and has few terms is used exactly as before: one embedding,
every term. Long queries are searched instead of refused, and ``QueryUse`` says how.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ragd.models.base import Embedder, Embeddings, SparseWeights

MAX_QUERY_TERMS = 128  # distinct full-text terms BM25 scores at most: the rarest
MAX_EMBED_TOKENS = 8192  # query tokens the embedder reads at most, over all its windows


@dataclass
class QueryUse:
    """How a search used its query (every count 0 where the signal did not run)."""

    tokens: int = 0  # the query's tokens for the embedder
    windows: int = 0  # embedder windows the dense and learned-sparse signals read
    tokens_embedded: int = 0  # tokens inside those windows (fewer than ``tokens`` when the rest was cut)
    terms: int = 0  # distinct full-text terms of the query
    terms_used: int = 0  # the terms BM25 scored
    rerank_tokens: int = 0  # query tokens the reranker read beside each passage
    like_chunk_id: int = 0  # the indexed chunk whose stored vectors and terms made the query (0: text)

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def windows(text: str, offsets: Sequence[tuple[int, int]], size: int, budget: int = MAX_EMBED_TOKENS) -> list[str]:
    """``text`` cut into consecutive pieces of at most ``size`` tokens (by the tokenizer's
    character ``offsets``), at most ``budget`` tokens in all; each piece runs from the start
    of its first token to the start of the next piece, so no character between them is lost."""
    pieces: list[str] = []
    total = min(len(offsets), max(size, budget - budget % size))
    for first in range(0, total, size):
        last = min(first + size, total)
        start = 0 if first == 0 else offsets[first][0]
        end = offsets[last][0] if last < len(offsets) else len(text)
        pieces.append(text[start:end])
    return pieces


def combine(parts: Embeddings, lengths: Sequence[int]) -> Embeddings:
    """One query embedding from its windows': the dense vectors averaged by token count and
    normalised again, the lexical weights as BGE-M3 takes them within one text (the largest
    weight of each token), the multi-vector rows one after another."""
    weights = np.asarray(lengths, dtype=np.float32)[:, None]
    dense = (parts.dense * weights).sum(axis=0, keepdims=True)
    dense /= max(float(np.linalg.norm(dense)), 1e-12)
    sparse: list[SparseWeights] | None = None
    if parts.sparse is not None:
        merged: SparseWeights = {}
        for lex in parts.sparse:
            for tok, w in lex.items():
                if w > merged.get(tok, 0.0):
                    merged[tok] = w
        sparse = [merged]
    colbert = [np.concatenate(parts.colbert, axis=0)] if parts.colbert else None
    return Embeddings(dense=dense.astype(np.float32), sparse=sparse, colbert=colbert)


def embed(embedder: Embedder, text: str, use: QueryUse) -> Embeddings:
    """The query's embedding: one input when it fits the embedder, else its windows combined."""
    n = embedder.count_tokens([text])[0]
    use.tokens = n
    if n <= embedder.max_tokens:
        use.windows, use.tokens_embedded = 1, n
        return embedder.embed_query(text)
    pieces = windows(text, embedder.token_offsets(text), embedder.max_tokens, MAX_EMBED_TOKENS)
    lengths = embedder.count_tokens(pieces)
    use.windows, use.tokens_embedded = len(pieces), min(n, sum(lengths))
    return combine(embedder.embed_queries(pieces), lengths)


def select_terms(terms: Iterable[str], document_frequency: Callable[[list[str]], dict[str, int]],
                 limit: int = MAX_QUERY_TERMS) -> list[str]:
    """The distinct terms BM25 scores: all of them up to ``limit``, else the ``limit`` rarest
    in the index (the highest IDF; terms the index lacks score nothing and go first), in the
    query's order."""
    unique = list(dict.fromkeys(terms))
    if len(unique) <= limit:
        return unique
    df = document_frequency(unique)
    known = [t for t in unique if df.get(t, 0) > 0]
    rarest = set(sorted(known, key=lambda t: df[t])[:limit])
    return [t for t in unique if t in rarest]


def rerank_part(query: str, offsets: Sequence[tuple[int, int]], room: int) -> str:
    """The start of ``query`` the reranker reads: at most ``room`` tokens (by ``offsets``)."""
    if len(offsets) <= room:
        return query
    return query[: offsets[room - 1][1]]
