"""OpenDocument text and spreadsheets (ODT, ODS) from content.xml: headings by outline level,
paragraphs, lists and tables; sheets in order with one line per row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragd.extract.base import Document, DocumentError, Format, Limits, Probe, TextBuilder
from ragd.extract.containers import local, open_zip, read_member, xml_member

_MIME_TEXT = b"application/vnd.oasis.opendocument.text"
_MIME_SHEET = b"application/vnd.oasis.opendocument.spreadsheet"
_MAX_REPEAT = 100
"""Repeated rows/cells beyond this are empty filler (ODS pads sheets to 1M rows)."""


def _odf_mime(probe: Probe) -> bytes:
    """The ``mimetype`` member ODF stores first and uncompressed, read from the local header."""
    if probe.data[30:38] != b"mimetype":
        return b""
    return probe.data[38:120].split(b"PK", 1)[0]


def _text(el: Any) -> str:
    """Visible text of an ODF element: spans, spaces (text:s), tabs and line breaks; notes skipped."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        name = local(node.tag)
        if name in ("note", "annotation", "bookmark-ref"):
            return
        if name == "s":
            parts.append(" " * int(_attr(node, "c") or 1))
        elif name == "tab":
            parts.append("\t")
        elif name == "line-break":
            parts.append("\n")
        elif node.text:
            parts.append(node.text)
        for child in node:
            walk(child)
            if child.tail:
                parts.append(child.tail)

    walk(el)
    return "".join(parts)


def _content(data: bytes, limits: Limits, label: str) -> Any:
    """content.xml's root, after checking the package is not password-protected (ODF encrypts
    members itself, listing them with encryption-data in the manifest)."""
    zf = open_zip(data, limits, label)
    manifest = "META-INF/manifest.xml"
    if manifest in zf.namelist() and b"encryption-data" in read_member(zf, manifest, label):
        raise DocumentError(f"encrypted {label} (needs a password)")
    return xml_member(zf, "content.xml", label)


def _attr(el: Any, name: str) -> str | None:
    return next((v for k, v in el.attrib.items() if local(k) == name), None)


class OdtExtractor(Format):
    name = "odt"
    label = "OpenDocument text"
    suffixes = frozenset({".odt", ".ott"})
    magic = True

    def sniff(self, probe: Probe) -> bool:
        return _odf_mime(probe).startswith(_MIME_TEXT)

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        root = _content(data, limits, self.label)
        builder = TextBuilder()
        for el in root.iter():
            if local(el.tag) == "text" and local(el.getparent().tag) == "body":
                self._walk(el, builder)
        return builder.document(self.name)

    def _walk(self, el: Any, builder: TextBuilder) -> None:
        for child in el:
            name = local(child.tag)
            if name == "h":
                builder.heading(_text(child), int(_attr(child, "outline-level") or 1))
            elif name == "p":
                builder.paragraph(_text(child))
            elif name == "table":
                for row in child.iter():
                    if local(row.tag) == "table-row":
                        builder.row([_text(c) for c in row if local(c.tag) == "table-cell"])
                builder.blank()
            elif name not in ("tracked-changes", "sequence-decls", "variable-decls"):
                self._walk(child, builder)  # lists, sections, frames


class OdsExtractor(Format):
    name = "ods"
    label = "OpenDocument spreadsheet"
    suffixes = frozenset({".ods", ".ots"})
    magic = True

    def sniff(self, probe: Probe) -> bool:
        return _odf_mime(probe).startswith(_MIME_SHEET)

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        root = _content(data, limits, self.label)
        builder = TextBuilder()
        for table in root.iter():
            if local(table.tag) != "table":
                continue
            builder.heading(_attr(table, "name") or "Sheet", 1)
            for row in table.iter():
                if local(row.tag) != "table-row":
                    continue
                cells: list[str] = []
                for cell in row:
                    if local(cell.tag) not in ("table-cell", "covered-table-cell"):
                        continue
                    text = " ".join(_text(cell).split())
                    repeat = min(int(_attr(cell, "number-columns-repeated") or 1), _MAX_REPEAT) if text else 1
                    cells.extend([text] * repeat)
                if any(cells):
                    for _ in range(min(int(_attr(row, "number-rows-repeated") or 1), _MAX_REPEAT)):
                        builder.row(cells)
            builder.blank()
        return builder.document(self.name)
