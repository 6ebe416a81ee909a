"""Turn a file's bytes into a ``Document``: text plus its headings and page starts.

``extract(path, data)`` picks the extractor by content, then suffix (``registry``); plain
text is decoded in-process (``text``), every other format runs in a worker process with the
time and memory limits set by ``configure`` (``isolate``). The text it returns is the one
chunks are numbered by, so ``ReadFile`` lines match hits' line spans.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ragd.extract.base import Document, DocumentError, Extractor, Heading, Limits
from ragd.extract.kinds import detect_kind
from ragd.extract.registry import choose, document_suffixes, register, unregister

__all__ = [
    "Document", "DocumentError", "Extractor", "Heading", "Limits", "configure", "detect_kind",
    "document_suffixes", "extract", "limits", "register", "unregister",
]

_limits = Limits()


def configure(new: Limits) -> None:
    """Set the limits every later ``extract`` call works within (the ``[extract]`` config)."""
    global _limits
    _limits = new


def limits() -> Limits:
    return _limits


def extract(path: Path, data: bytes, limits: Limits | None = None) -> Document:
    """The document in ``data`` (the bytes of ``path``).

    Raises ``DocumentError`` (recorded as failed) for a document that cannot be read: damaged,
    encrypted, a zip bomb, past a limit, not what its suffix says; ``ExtractError`` (skipped)
    for a file that is not text and no extractor reads.
    """
    limits = limits or _limits
    extractor = choose(path, data)
    if extractor.isolated and limits.isolate:
        from ragd.extract.isolate import POOL

        doc = POOL.run(extractor, path, data, limits)
    else:
        doc = extractor.extract(path, data, limits)
    return _without_surrogates(doc)


def _without_surrogates(doc: Document) -> Document:
    """Pair up UTF-16 surrogates some parsers leave (RTF's \\u escapes, undecodable mail
    headers) and replace lone ones: SQLite and gRPC take only valid UTF-8."""
    try:
        doc.text.encode("utf-8")
    except UnicodeEncodeError:
        text = doc.text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return dataclasses.replace(doc, text=text)
    return doc
