"""Formats read in a few lines: RTF (striprtf), Jupyter notebooks (JSON, rendered as Markdown:
Markdown cells as they are, code cells fenced, outputs dropped) and legacy or encrypted Office
files (OLE2 containers), which are reported rather than read."""

from __future__ import annotations

import json
from pathlib import Path

from ragd.errors import ExtractError
from ragd.extract.base import Document, DocumentError, Format, Limits, Probe, TextBuilder

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class RtfExtractor(Format):
    name = "rtf"
    label = "RTF document"
    suffixes = frozenset({".rtf"})
    magic = True

    def sniff(self, probe: Probe) -> bool:
        return probe.head.lstrip().startswith(b"{\\rtf")

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        from striprtf.striprtf import rtf_to_text

        try:
            text = rtf_to_text(data.decode("latin-1"), encoding="cp1252", errors="replace")
        except (ValueError, IndexError, LookupError) as exc:
            raise DocumentError(f"damaged RTF ({exc})") from exc
        builder = TextBuilder()
        builder.add(text)
        return builder.document(self.name)


class NotebookExtractor(Format):
    name = "ipynb"
    label = "Jupyter notebook"
    suffixes = frozenset({".ipynb"})
    isolated = False  # json alone, quick and safe in-process

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        try:
            nb = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DocumentError(f"damaged Jupyter notebook (not JSON: {exc})") from exc
        if not isinstance(nb, dict) or not isinstance(nb.get("cells", []), list):
            raise DocumentError("damaged Jupyter notebook (no list of cells)")
        language = str(((nb.get("metadata") or {}).get("kernelspec") or {}).get("language") or "python")
        parts: list[str] = []
        for cell in nb.get("cells", []):
            if not isinstance(cell, dict):
                continue
            source = cell.get("source", "")
            text = "".join(source) if isinstance(source, list) else str(source)
            text = text.replace("\r\n", "\n").strip("\n")
            if not text.strip():
                continue
            if cell.get("cell_type") == "markdown":
                parts.append(text)
            elif cell.get("cell_type") == "code":
                fence = "````" if "```" in text else "```"
                parts.append(f"{fence}{language}\n{text}\n{fence}")
        return Document("\n\n".join(parts) + "\n" if parts else "", "markdown", "utf-8")


class OleExtractor(Format):
    """Office files in the old binary container: Word 97-2003 etc. are not read; an encrypted
    Word/Excel/PowerPoint file is also such a container (with an EncryptedPackage stream)."""

    name = "ole"
    label = "legacy Office file"
    isolated = False

    def sniff(self, probe: Probe) -> bool:
        return probe.data.startswith(OLE_MAGIC)

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        if "EncryptedPackage".encode("utf-16-le") in data:
            raise DocumentError("encrypted Office document (needs a password)")
        raise ExtractError(f"legacy Office format (OLE2, {path.suffix.lower() or 'no suffix'}) is not supported")

