"""PDF through PDFium (pypdfium2: Apache-2.0/BSD): the text layer page by page, in the order
PDFium reads it, with the bookmarks as headings; a PDF without a text layer (a scan) is
reported, not indexed empty."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ragd.extract.base import Document, DocumentError, Format, Heading, Limits, Probe, TextBuilder

# Control characters PDFium leaves in text (soft hyphens as \x02, form feeds, NULs).
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
_EOF_WINDOW = 2048
_MAX_OUTLINE_DEPTH = 6


class PdfExtractor(Format):
    name = "pdf"
    label = "PDF"
    suffixes = frozenset({".pdf"})
    magic = True

    def sniff(self, probe: Probe) -> bool:
        """The header first (after blanks); anywhere in the first KiB only for a file named .pdf,
        as readers accept junk before it, so a text file that quotes "%PDF-" stays text."""
        head = probe.head
        return head.lstrip(b" \t\r\n\x00\xef\xbb\xbf").startswith(b"%PDF-") or (
            probe.suffix == ".pdf" and b"%PDF-" in head)

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        import pypdfium2 as pdfium

        if b"%%EOF" not in data[-_EOF_WINDOW:]:
            raise DocumentError("truncated PDF (no %%EOF end marker)")
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                raise DocumentError("encrypted PDF (needs a password)") from exc
            raise DocumentError(f"damaged PDF ({exc})") from exc
        builder = TextBuilder()
        found = False
        try:
            for index in range(len(pdf)):
                builder.page()
                page = pdf[index]
                try:
                    textpage = page.get_textpage()
                    try:
                        text = textpage.get_text_bounded()
                    finally:
                        textpage.close()
                finally:
                    page.close()
                text = _CONTROLS.sub("", text.replace("\x02", "-"))
                if text.strip():
                    found = True
                    builder.paragraph(text)
            outline = _outline(pdf)
        except pdfium.PdfiumError as exc:
            raise DocumentError(f"damaged PDF ({exc})") from exc
        finally:
            pdf.close()
        if not found:
            raise DocumentError("no text layer (a scanned or image-only PDF)")
        _place_headings(builder, outline)
        return builder.document(self.name, paged=True)


def _outline(pdf: Any) -> list[tuple[int, str, int]]:
    """The bookmarks as (level from 1, title, page index), in outline order."""
    out: list[tuple[int, str, int]] = []
    for mark in pdf.get_toc(max_depth=_MAX_OUTLINE_DEPTH):
        dest = mark.get_dest()
        index = dest.get_index() if dest is not None else None
        title = " ".join((mark.get_title() or "").split())
        if title and index is not None:
            out.append((int(mark.level) + 1, title, int(index)))
    return out


def _place_headings(builder: TextBuilder, outline: list[tuple[int, str, int]]) -> None:
    """Bookmarks become headings: on the line of their page that starts with their title, else
    at the page's first line (a bookmark into a page without text is left out)."""
    pages, lines = builder.page_lines, builder.lines
    placed: list[Heading] = []
    for level, title, index in outline:
        if not 0 <= index < len(pages):
            continue
        first = pages[index]
        last = pages[index + 1] - 1 if index + 1 < len(pages) else len(lines)
        if first > last:
            continue
        wanted = _key(title)
        line = next((n for n in range(first, last + 1) if wanted and _key(lines[n - 1]).startswith(wanted)), first)
        placed.append(Heading(line, level, title))
    builder.headings = sorted(placed, key=lambda h: h.line)


def _key(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch.isalnum())
