"""Builders of real document files for the extraction tests and benchmarks/extract.py.

PDF through reportlab (and pypdf to encrypt one), DOCX/PPTX/XLSX through python-docx,
python-pptx and openpyxl; ODT, ODS and EPUB are small zips of XML written here, as their
specifications lay them out (mimetype first and stored); e-mail through the standard library.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Sequence
from email.message import EmailMessage
from xml.sax.saxutils import escape


def pdf(pages: Sequence[Sequence[str]], title: str = "", outline: Sequence[tuple[int, str, int]] = ()) -> bytes:
    """A PDF with a text layer: one page per entry, one line of text per string; ``outline``
    adds bookmarks as (level from 0, title, page index)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    c = canvas.Canvas(out, pagesize=A4)
    if title:
        c.setTitle(title)
    for index, lines in enumerate(pages):
        for j, (_, _, target) in enumerate(outline):
            if target == index:
                c.bookmarkPage(f"o{j}")  # one destination per entry: reportlab keys entries by it
        y = 800.0
        for line in lines:
            c.drawString(40, y, line)
            y -= 14
            if y < 40:
                break
        c.showPage()
    for j, (level, name, _) in enumerate(outline):
        c.addOutlineEntry(name, f"o{j}", level=level)
    c.save()
    return out.getvalue()


def scanned_pdf(pages: int = 2) -> bytes:
    """A PDF whose pages carry only drawings, as a scan without OCR carries only images."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    c = canvas.Canvas(out, pagesize=A4)
    for _ in range(pages):
        c.rect(50, 50, 400, 600, fill=1)
        c.showPage()
    c.save()
    return out.getvalue()


def encrypted_pdf(pages: Sequence[Sequence[str]], password: str = "secret") -> bytes:
    """The PDF of ``pages``, encrypted with a user password (RC4, no extra crypto library)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(pdf(pages))).pages:
        writer.add_page(page)
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx(title: str, sections: Sequence[tuple[str, int, Sequence[str]]],
         table: Sequence[Sequence[str]] = ()) -> bytes:
    """A Word document: a Title paragraph, then (heading, level, paragraphs) sections, then a table."""
    import docx as python_docx

    doc = python_docx.Document()
    doc.add_heading(title, 0)
    for heading, level, paragraphs in sections:
        doc.add_heading(heading, level)
        for p in paragraphs:
            doc.add_paragraph(p)
    if table:
        t = doc.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                t.cell(r, c).text = value
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def pptx(slides: Sequence[tuple[str, Sequence[str], str]]) -> bytes:
    """A presentation: per slide (title, bullet lines, speaker notes)."""
    from pptx import Presentation

    prs = Presentation()
    layout = prs.slide_layouts[1]  # title and content
    for title, bullets, notes in slides:
        slide = prs.slides.add_slide(layout)
        slide.shapes.title.text = title
        body = slide.placeholders[1].text_frame
        body.text = bullets[0] if bullets else ""
        for line in bullets[1:]:
            body.add_paragraph().text = line
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    prs.save(out)
    return out.getvalue()


def xlsx(sheets: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> bytes:
    """A workbook: per sheet (name, rows)."""
    from openpyxl import Workbook

    wb = Workbook()
    assert wb.active is not None
    wb.remove(wb.active)
    for name, rows in sheets:
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(list(row))
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _zip(mimetype: str, members: dict[str, str | bytes]) -> bytes:
    """A zip with ``mimetype`` first and stored, as ODF and EPUB require, then deflated members."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(zipfile.ZipInfo("mimetype"), mimetype, compress_type=zipfile.ZIP_STORED)
        for name, data in members.items():
            zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


_ODF_NS = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
           'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
           'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"')


def _odf_manifest(mime: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<manifest:manifest '
            'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
            f'<manifest:file-entry manifest:full-path="/" manifest:media-type="{mime}"/>'
            '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
            '</manifest:manifest>')


def odt(sections: Sequence[tuple[str, int, Sequence[str]]]) -> bytes:
    """An OpenDocument text: (heading, outline level, paragraphs) sections."""
    body = "".join(
        f'<text:h text:outline-level="{level}">{escape(h)}</text:h>'
        + "".join(f"<text:p>{escape(p).replace('  ', ' <text:s/>')}</text:p>" for p in paras)
        for h, level, paras in sections
    )
    mime = "application/vnd.oasis.opendocument.text"
    content = (f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-content {_ODF_NS} office:version="1.2">'
               f"<office:body><office:text>{body}</office:text></office:body></office:document-content>")
    return _zip(mime, {"content.xml": content, "META-INF/manifest.xml": _odf_manifest(mime)})


def ods(sheets: Sequence[tuple[str, Sequence[Sequence[str]]]]) -> bytes:
    """An OpenDocument spreadsheet: per sheet (name, rows of strings)."""
    tables = "".join(
        f'<table:table table:name="{escape(name)}">'
        + "".join("<table:table-row>" + "".join(
            f'<table:table-cell office:value-type="string"><text:p>{escape(v)}</text:p></table:table-cell>'
            for v in row) + "</table:table-row>" for row in rows)
        + '<table:table-row table:number-rows-repeated="1048000"><table:table-cell '
          'table:number-columns-repeated="1024"/></table:table-row></table:table>'
        for name, rows in sheets
    )
    mime = "application/vnd.oasis.opendocument.spreadsheet"
    content = (f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-content {_ODF_NS} office:version="1.2">'
               f"<office:body><office:spreadsheet>{tables}</office:spreadsheet></office:body>"
               "</office:document-content>")
    return _zip(mime, {"content.xml": content, "META-INF/manifest.xml": _odf_manifest(mime)})


def epub(title: str, chapters: Sequence[tuple[str, Sequence[str]]], ncx: bool = False) -> bytes:
    """An EPUB 3 book (with ``ncx``: an EPUB 2 one): per chapter (title, paragraphs); the titles
    are in the table of contents only (the nav document, or toc.ncx)."""
    container = ('<?xml version="1.0"?>\n<container version="1.0" '
                 'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
                 '<rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
                 "</rootfiles></container>")
    items = "".join(f'<item id="c{i}" href="text/chap{i}.xhtml" media-type="application/xhtml+xml"/>'
                    for i in range(len(chapters)))
    spine = "".join(f'<itemref idref="c{i}"/>' for i in range(len(chapters)))
    toc = ('<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>' if ncx else
           '<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>')
    opf = ('<?xml version="1.0" encoding="UTF-8"?>\n<package xmlns="http://www.idpf.org/2007/opf" '
           f'version="{"2.0" if ncx else "3.0"}" unique-identifier="id">'
           '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
           f'<dc:identifier id="id">urn:x-test:1</dc:identifier><dc:title>{escape(title)}</dc:title>'
           f'<dc:language>en</dc:language></metadata><manifest>{toc}'
           f'{items}</manifest><spine{" toc=" + chr(34) + "ncx" + chr(34) if ncx else ""}>{spine}</spine></package>')
    links = "".join(f'<li><a href="text/chap{i}.xhtml">{escape(t)}</a></li>' for i, (t, _) in enumerate(chapters))
    nav = ('<?xml version="1.0" encoding="UTF-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml" '
           'xmlns:epub="http://www.idpf.org/2007/ops"><head><title>Contents</title></head><body>'
           f'<nav epub:type="toc"><ol>{links}</ol></nav></body></html>')
    points = "".join(f'<navPoint id="p{i}" playOrder="{i + 1}"><navLabel><text>{escape(t)}</text></navLabel>'
                     f'<content src="text/chap{i}.xhtml"/></navPoint>' for i, (t, _) in enumerate(chapters))
    toc_ncx = ('<?xml version="1.0" encoding="UTF-8"?>\n<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" '
               f'version="2005-1"><head/><docTitle><text>{escape(title)}</text></docTitle>'
               f"<navMap>{points}</navMap></ncx>")
    members: dict[str, str | bytes] = {"META-INF/container.xml": container, "OEBPS/content.opf": opf}
    members.update({"OEBPS/toc.ncx": toc_ncx} if ncx else {"OEBPS/nav.xhtml": nav})
    for i, (_, paras) in enumerate(chapters):
        ps = "".join(f"<p>{escape(p)}</p>" for p in paras)
        members[f"OEBPS/text/chap{i}.xhtml"] = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml">'
            f"<head><title>{escape(title)}</title></head><body>{ps}</body></html>")
    return _zip("application/epub+zip", members)


def _pairs(data: bytes) -> list[bytes]:
    return [data[i : i + 2] for i in range(0, len(data), 2)]


def rtf(paragraphs: Sequence[str]) -> bytes:
    """An RTF document, one paragraph each; é as a code-page escape, other non-ASCII as \\uN?."""

    def escape_rtf(text: str) -> str:
        text = text.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}").replace("é", "\\'e9")
        units = [int.from_bytes(b, "little") for b in _pairs(text.encode("utf-16-le"))]
        return "".join(chr(u) if u < 128 else f"\\u{u if u < 32768 else u - 65536}?" for u in units)

    body = "".join(r"{\pard " + escape_rtf(p) + r"\par}" + "\n" for p in paragraphs)
    return (r"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Times;}}" + "\n" + body + "}").encode("ascii")


def html(title: str, heading: str, paragraphs: Sequence[str]) -> bytes:
    ps = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            "<style>body { color: red }</style><script>var tracking = 'do not index this';</script></head><body>"
            "<nav><a href='/'>Home</a> <a href='/about'>About navigation link</a></nav>"
            f"<header><p>Site banner text</p></header><main><h1>{escape(heading)}</h1>{ps}"
            "<h2>Details</h2><p>More detail here.</p></main>"
            "<footer>Copyright footer text</footer></body></html>").encode()


def eml(subject: str, sender: str, body: str, attachments: Sequence[tuple[str, bytes]] = ()) -> bytes:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = "team@example.org"
    msg["Date"] = "Tue, 03 Mar 2026 10:15:00 +0000"
    msg.set_content(body)
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def mbox(messages: Sequence[bytes]) -> bytes:
    """An mboxrd mailbox: a "From " line before each message, body lines from "From " quoted."""
    quoted = [re.sub(rb"^(>*From )", rb">\1", m.replace(b"\r\n", b"\n"), flags=re.MULTILINE) for m in messages]
    return b"".join(b"From sender@example.org Tue Mar  3 10:15:00 2026\n" + m + b"\n" for m in quoted)


def ipynb(cells: Sequence[tuple[str, str]]) -> bytes:
    """A notebook of (cell type, source) cells; code cells get an output that must be dropped."""
    out = []
    for kind, source in cells:
        cell: dict[str, object] = {"cell_type": kind, "metadata": {}, "source": source.splitlines(keepends=True)}
        if kind == "code":
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["OUTPUT_MUST_NOT_BE_INDEXED\n"]}]
            cell["execution_count"] = 1
        out.append(cell)
    nb = {"cells": out, "metadata": {"kernelspec": {"name": "python3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb).encode()


def zip_bomb_docx(unpacked: int) -> bytes:
    """A valid-looking Word document with one member of ``unpacked`` zero bytes (compresses ~1000x)."""
    real = docx("Bomb", [("Intro", 1, ["harmless text"])])
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(real)) as src, zipfile.ZipFile(out, "w") as zf:
        for info in src.infolist():
            zf.writestr(info, src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
        info = zipfile.ZipInfo("word/media/zeros.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(unpacked >> 20):
                member.write(block)
    return out.getvalue()
