"""PDF through PDFium (pypdfium2: Apache-2.0/BSD): the text layer page by page, in the order
PDFium reads it; a PDF without one (a scan) is reported, not indexed empty."""

from __future__ import annotations

import re
from pathlib import Path

from ragd.extract.base import Document, DocumentError, Format, Limits, Probe, TextBuilder

# Control characters PDFium leaves in text (soft hyphens as \x02, form feeds, NULs).
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
_EOF_WINDOW = 2048


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
        except pdfium.PdfiumError as exc:
            raise DocumentError(f"damaged PDF ({exc})") from exc
        finally:
            pdf.close()
        if not found:
            raise DocumentError("no text layer (a scanned or image-only PDF)")
        return builder.document(self.name, paged=True)
