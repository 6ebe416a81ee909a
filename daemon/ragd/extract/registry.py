"""Which extractor reads a file: by its bytes first (a PDF named .txt is read as a PDF), then
by its suffix (a .pdf whose bytes are not a PDF is reported as such), else the text path.
Adding a format is adding a module with an ``Extractor`` and registering it here."""

from __future__ import annotations

from pathlib import Path

from ragd.extract.base import DocumentError, Extractor, Probe
from ragd.extract.html import EpubExtractor, HtmlExtractor
from ragd.extract.mail import EmlExtractor, MboxExtractor
from ragd.extract.odf import OdsExtractor, OdtExtractor
from ragd.extract.office import DocxExtractor, PptxExtractor, XlsxExtractor
from ragd.extract.pdf import PdfExtractor
from ragd.extract.simple import OLE_MAGIC, NotebookExtractor, OleExtractor, RtfExtractor
from ragd.extract.text import TextExtractor

TEXT: Extractor = TextExtractor()
_EXTRACTORS: list[Extractor] = [
    PdfExtractor(), DocxExtractor(), PptxExtractor(), XlsxExtractor(), OdtExtractor(), OdsExtractor(),
    EpubExtractor(), RtfExtractor(), OleExtractor(), HtmlExtractor(),
    EmlExtractor(lambda path, data: choose(path, data)), MboxExtractor(lambda path, data: choose(path, data)),
    NotebookExtractor(),
]


def register(extractor: Extractor) -> None:
    """Add (or replace, by name) an extractor; the latest registered is asked first."""
    unregister(extractor.name)
    _EXTRACTORS.insert(0, extractor)


def unregister(name: str) -> None:
    _EXTRACTORS[:] = [e for e in _EXTRACTORS if e.name != name]


def extractors() -> list[Extractor]:
    return [*_EXTRACTORS, TEXT]


def get(name: str) -> Extractor:
    """The extractor called ``name`` (as a worker process looks it up)."""
    for e in extractors():
        if e.name == name:
            return e
    raise KeyError(name)


def document_suffixes() -> frozenset[str]:
    """Every suffix an extractor other than plain text claims."""
    return frozenset(s for e in _EXTRACTORS for s in e.suffixes)


def choose(path: Path, data: bytes) -> Extractor:
    """The extractor for this file; ``DocumentError`` when its suffix names a format its bytes are not."""
    probe = Probe(path, data)
    for e in _EXTRACTORS:
        if e.sniff(probe):
            return e
    for e in _EXTRACTORS:
        if probe.suffix in e.suffixes:
            if not e.magic:
                return e
            if data.startswith(b"PK\x03\x04") and not probe.zip_names:
                raise DocumentError(f"damaged or truncated {e.label} (unreadable zip archive)")
            raise DocumentError(f"not a {e.label}, although named {probe.suffix}: the content is {_describe(probe)}")
    return TEXT


def _describe(probe: Probe) -> str:
    """What the bytes look like, for the "not a ..." message."""
    data = probe.data
    if not data:
        return "empty"
    if probe.zip_names:
        return "a zip archive of another kind"
    if data.startswith(OLE_MAGIC):
        return "a legacy Office (OLE2) file"
    if b"\x00" in data[:8192]:
        return "binary data"
    return "text"
