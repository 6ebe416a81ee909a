"""Turn a file's bytes into a ``Document``: text plus its headings and page starts.

``extract(path, data)`` picks the extractor by content, then suffix (``registry``); plain
text is decoded in-process (``text``), every other format runs in a worker process with the
time and memory limits set by ``configure`` (``isolate``). The text it returns is the one
chunks are numbered by, so ``ReadFile`` lines match hits' line spans; the last few documents
are kept, so paging through one with ``ReadFile`` extracts it once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from ragd.config import ExtractConfig
from ragd.errors import ExtractError
from ragd.extract.base import Document, DocumentError, Extractor, Heading, Limits
from ragd.extract.kinds import detect_kind
from ragd.extract.registry import choose, document_suffixes, register, unregister

__all__ = [
    "Document", "DocumentError", "Extractor", "Heading", "Limits", "configure", "current_limits", "detect_kind",
    "document_suffixes", "extract", "forget_cached", "register", "unregister",
]

CACHED_DOCUMENTS = 4
"""Documents (not plain text) kept by path and content hash for the next call."""

_limits = Limits()
_cache: OrderedDict[tuple[str, str, str], Document] = OrderedDict()
_cache_lock = threading.Lock()


def _as_limits(config: ExtractConfig) -> Limits:
    return config if isinstance(config, Limits) else Limits(**dataclasses.asdict(config))


def configure(config: ExtractConfig) -> None:
    """Set the limits every later ``extract`` call without its own works within."""
    global _limits
    _limits = _as_limits(config)


def current_limits() -> Limits:
    return _limits


def forget_cached() -> None:
    """Drop the documents kept from earlier calls (benchmarks and tests measure real work)."""
    with _cache_lock:
        _cache.clear()


def extract(
    path: Path, data: bytes, limits: ExtractConfig | None = None, cancelled: Callable[[], bool] | None = None
) -> Document:
    """The document in ``data`` (the bytes of ``path``), within ``limits`` (a ``Limits`` or the
    config's ``[extract]`` section; default: what ``configure`` set). ``cancelled`` is polled
    while a worker runs: once true, the worker is killed and ``CancelledError`` raised.

    Raises ``DocumentError`` (recorded as failed) for a document that cannot be read: damaged,
    encrypted, a zip bomb, past a limit, not what its suffix says; ``ExtractError`` (skipped)
    for a file that is not text and no extractor reads.
    """
    bounds = _limits if limits is None else _as_limits(limits)
    extractor = choose(path, data)
    if not extractor.isolated:
        return _without_surrogates(_in_process(extractor, path, data, bounds))
    key = (str(path), extractor.name, hashlib.blake2b(data, digest_size=16).hexdigest())
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    if bounds.isolate:
        from ragd.extract.isolate import POOL

        doc = _without_surrogates(POOL.run(extractor, path, data, bounds, cancelled))
    else:
        doc = _without_surrogates(_in_process(extractor, path, data, bounds))
    with _cache_lock:
        _cache[key] = doc
        while len(_cache) > CACHED_DOCUMENTS:
            _cache.popitem(last=False)
    return doc


def _in_process(extractor: Extractor, path: Path, data: bytes, limits: Limits) -> Document:
    """``extractor.extract``, with a parser's bug on one file turned into that file's failure."""
    try:
        return extractor.extract(path, data, limits)
    except ExtractError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise DocumentError(f"cannot extract: {type(exc).__name__}") from exc
    except Exception as exc:
        raise DocumentError(f"cannot extract: {type(exc).__name__}: {exc}") from exc


def _without_surrogates(doc: Document) -> Document:
    """Pair up UTF-16 surrogates some parsers leave (RTF's \\u escapes, undecodable mail
    headers) and replace lone ones: SQLite and gRPC take only valid UTF-8."""
    try:
        doc.text.encode("utf-8")
    except UnicodeEncodeError:
        text = doc.text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return dataclasses.replace(doc, text=text)
    return doc
