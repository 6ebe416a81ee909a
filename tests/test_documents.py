"""Documents: real files of every format (tests/docfiles.py) give their text, headings and
pages; content decides the format over the suffix; chunks carry pages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import docfiles
import pytest

from ragd.chunk import chunk_document
from ragd.errors import ExtractError
from ragd.extract import Document, DocumentError, Limits, extract

pytestmark = pytest.mark.models("fake")

IN_PROCESS = Limits(isolate=False)


def words(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def titles(doc: Document) -> list[tuple[int, str]]:
    return [(h.level, h.title) for h in doc.headings or ()]


def line_of(doc: Document, needle: str) -> int:
    """1-based number of the first line holding ``needle``."""
    return next(i for i, line in enumerate(doc.text.split("\n"), 1) if needle in line)


def page_of(doc: Document, line: int) -> int:
    return sum(1 for start in doc.page_lines if start <= line)


@pytest.mark.parametrize("limits", [None, IN_PROCESS], ids=["isolated", "in-process"])
def test_pdf_text_per_page(limits: Limits | None) -> None:
    data = docfiles.pdf([["Otters hold hands while sleeping.", "A second line on page one."],
                         ["Page two talks about beavers."], [], ["The fourth page mentions herons."]])
    doc = extract(Path("paper.pdf"), data, limits)
    assert doc.kind == "pdf" and len(doc.page_lines) == 4
    assert page_of(doc, line_of(doc, "Otters hold hands")) == 1
    assert page_of(doc, line_of(doc, "beavers")) == 2
    assert page_of(doc, line_of(doc, "herons")) == 4  # page 3 has no text
    assert "A second line on page one." in doc.text


def test_pdf_bookmarks_become_headings() -> None:
    pages = [["Introduction", "Why otters matter."], ["Some more intro text."],
             ["Methods", "We counted otters."], ["Results", "There were nine."]]
    outline = [(0, "Introduction", 0), (0, "Methods", 2), (1, "Counting", 2), (0, "Results", 3)]
    doc = extract(Path("paper.pdf"), docfiles.pdf(pages, outline=outline))
    assert [(h.level, h.title, page_of(doc, h.line)) for h in doc.headings or ()] == [
        (1, "Introduction", 1), (1, "Methods", 3), (2, "Counting", 3), (1, "Results", 4)]
    assert doc.text.split("\n")[next(h.line for h in doc.headings or () if h.title == "Methods") - 1] == "Methods"
    chunks = chunk_document(doc.text, doc.kind, words, 4, 0, headings=doc.headings, page_lines=doc.page_lines)
    nine = next(c for c in chunks if "nine" in c.text)
    assert nine.heading == ("Results",) and nine.page == 4
    assert next(c for c in chunks if "counted" in c.text).heading == ("Methods", "Counting")


def test_pdf_chunks_carry_first_and_last_page() -> None:
    pages = [[f"Page {p} sentence {i} about the migration of eels." for i in range(30)] for p in range(1, 7)]
    doc = extract(Path("long.pdf"), docfiles.pdf(pages))
    chunks = chunk_document(doc.text, doc.kind, words, 120, 0, headings=doc.headings, page_lines=doc.page_lines)
    assert len(chunks) > 6
    for c in chunks:
        first = int(c.text.split()[1])
        last = int(c.text.rsplit("Page ", 1)[1].split()[0])
        assert (c.page, c.end_page) == (first, last)
    assert any(c.page != c.end_page for c in chunks)
    assert (chunks[0].page, chunks[-1].end_page) == (1, 6)


def test_unpaged_chunks_have_page_zero() -> None:
    chunks = chunk_document("# A\n\ntext\n", "markdown", words, 50, 0)
    assert [(c.page, c.end_page) for c in chunks] == [(0, 0)]


def test_docx_headings_from_styles_and_tables() -> None:
    data = docfiles.docx("Field notes", [("Rivers", 1, ["Otters build dens in riverbanks."]),
                                        ("Estuaries", 2, ["Herons wade in shallow water."])],
                         table=[["animal", "count"], ["otter", "4"]])
    doc = extract(Path("notes.docx"), data)
    assert titles(doc) == [(1, "Field notes"), (2, "Rivers"), (3, "Estuaries")]
    assert "Otters build dens in riverbanks." in doc.text
    assert "otter | 4" in doc.text
    chunks = chunk_document(doc.text, doc.kind, words, 8, 0, headings=doc.headings)
    herons = next(c for c in chunks if "Herons" in c.text)
    assert herons.heading == ("Field notes", "Rivers", "Estuaries")
    assert herons.page == 0


def test_pptx_slides_titles_notes_and_pages() -> None:
    data = docfiles.pptx([("Quarterly goals", ["Ship the indexer", "Hire two engineers"], "Mention the budget."),
                          ("Risks", ["Supplier delays"], "Speaker notes about delays.")])
    doc = extract(Path("deck.pptx"), data)
    assert titles(doc) == [(1, "Quarterly goals"), (1, "Risks")]
    assert len(doc.page_lines) == 2
    assert page_of(doc, line_of(doc, "Hire two engineers")) == 1
    assert page_of(doc, line_of(doc, "Speaker notes about delays.")) == 2
    assert "Mention the budget." in doc.text


def test_xlsx_sheets_rows_as_text() -> None:
    data = docfiles.xlsx([("Budget", [["item", "cost"], ["tea", 3], ["cake", 4.5]]), ("Flags", [["done", True]])])
    doc = extract(Path("book.xlsx"), data)
    assert titles(doc) == [(1, "Budget"), (1, "Flags")]
    lines = doc.text.split("\n")
    assert "tea | 3" in lines and "cake | 4.5" in lines and "done | TRUE" in lines


def test_xlsx_dates_and_empty_cells() -> None:
    import datetime as dt

    data = docfiles.xlsx([("Log", [["when", "what", "cost"], [dt.date(2026, 3, 1), "tea", 3],
                                   [dt.datetime(2026, 3, 2, 14, 30), None, 4.5], [dt.time(9, 15), "start", None]])])
    lines = extract(Path("log.xlsx"), data).text.split("\n")
    assert "2026-03-01 | tea | 3" in lines
    assert "2026-03-02 14:30 |  | 4.5" in lines
    assert "09:15 | start" in lines


def test_ods_sheets_rows_as_text() -> None:
    doc = extract(Path("sheet.ods"), docfiles.ods([("Inventory", [["apples", "12"], ["pears", "7"]]),
                                                   ("Notes", [["checked by Ann"]])]))
    assert titles(doc) == [(1, "Inventory"), (1, "Notes")]
    assert "apples | 12" in doc.text and "checked by Ann" in doc.text
    assert len(doc.text) < 200  # the million padding rows are not text


def test_odt_headings_and_paragraphs() -> None:
    doc = extract(Path("letter.odt"), docfiles.odt([("Greeting", 1, ["Dear neighbours,", "the fence is fixed."]),
                                                    ("Costs", 2, ["Forty euros each."])]))
    assert titles(doc) == [(1, "Greeting"), (2, "Costs")]
    assert "the fence is fixed." in doc.text and "Forty euros each." in doc.text


def test_rtf_text() -> None:
    doc = extract(Path("memo.rtf"), docfiles.rtf(["Meeting moved to Thursday.", "Bring the café receipts."]))
    assert "Meeting moved to Thursday." in doc.text and "Bring the café receipts." in doc.text
    assert "rtf1" not in doc.text and "fonttbl" not in doc.text


def test_rtf_unicode_escapes_beyond_the_bmp_become_one_character() -> None:
    doc = extract(Path("emoji.rtf"), docfiles.rtf(["Math 𝔸 and a curly ‘quote’."]))
    assert "Math 𝔸 and a curly ‘quote’." in doc.text
    doc.text.encode("utf-8")  # no lone surrogates left for SQLite to refuse


def test_documents_break_lines_only_at_newlines() -> None:
    """ReadFile's reader may split with str.splitlines: a document's text has no other breaks."""
    data = "<html><body><pre>one\u2028two\x0cthree\r\nCRLF\r\nkept as one break</pre></body></html>".encode()
    text = extract(Path("breaks.html"), data).text
    assert text.splitlines() == text.split("\n")[:-1]
    assert "one\ntwo\nthree" in text and "CRLF\nkept as one break" in text


def test_html_main_content_title_and_headings() -> None:
    data = docfiles.html("Saved article", "How otters sleep", ["They float on their backs.", "Holding paws."])
    doc = extract(Path("article.html"), data)
    assert titles(doc) == [(1, "Saved article"), (1, "How otters sleep"), (2, "Details")]
    assert "They float on their backs." in doc.text
    for boilerplate in ("tracking", "navigation link", "Site banner", "Copyright footer", "color: red"):
        assert boilerplate not in doc.text


def test_epub_chapters_in_order_with_titles() -> None:
    data = docfiles.epub("A Book", [("Chapter 1: The River", ["The river was cold."]),
                                    ("Chapter 2: The Sea", ["The sea was colder."])])
    doc = extract(Path("book.epub"), data)
    assert titles(doc) == [(1, "Chapter 1: The River"), (1, "Chapter 2: The Sea")]
    assert doc.text.index("The river was cold.") < doc.text.index("The sea was colder.")


def test_epub2_titles_from_the_ncx() -> None:
    data = docfiles.epub("Old Book", [("Prologue", ["It was dark."]), ("Epilogue", ["It was light."])], ncx=True)
    doc = extract(Path("old.epub"), data)
    assert titles(doc) == [(1, "Prologue"), (1, "Epilogue")]
    assert "It was light." in doc.text


def test_html_charset_from_meta() -> None:
    data = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'
            "<title>Caf\xe9</title></head><body><p>Cr\xe8me br\xfbl\xe9e \x80 5</p></body></html>").encode("latin-1")
    doc = extract(Path("menu.htm"), data)
    assert "Crème brûlée € 5" in doc.text and titles(doc) == [(1, "Café")]


def test_eml_html_only_body() -> None:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["Subject"] = "Newsletter"
    msg["From"] = "news@example.org"
    msg.set_content('<html><head><meta charset="iso-8859-1"></head><body><nav>Menu</nav>'
                    "<p>Grüße aus Zürich</p></body></html>", subtype="html")
    doc = extract(Path("news.eml"), msg.as_bytes())
    assert "Grüße aus Zürich" in doc.text and "Menu" not in doc.text


def test_eml_headers_body_and_attachment() -> None:
    attachment = docfiles.docx("Attached plan", [("Steps", 1, ["Replace the pump on Monday."])])
    data = docfiles.eml("Pump repair", "Ann <ann@example.org>", "Please read the plan.\nThanks.",
                        [("plan.docx", attachment), ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00")])
    doc = extract(Path("mail.eml"), data)
    assert titles(doc) == [(1, "Pump repair"), (2, "Attachment: plan.docx"), (3, "Attached plan"), (4, "Steps")]
    chunks = chunk_document(doc.text, doc.kind, words, 50, 0, headings=doc.headings)
    pump = next(c for c in chunks if "Replace the pump" in c.text)
    assert pump.heading == ("Pump repair", "Attachment: plan.docx", "Attached plan", "Steps")
    for needle in ("From: Ann <ann@example.org>", "Date: Tue, 03 Mar 2026", "Please read the plan.",
                   "Replace the pump on Monday."):
        assert needle in doc.text
    assert "PNG" not in doc.text


def test_mbox_messages() -> None:
    data = docfiles.mbox([docfiles.eml("First", "a@example.org", "Body one."),
                          docfiles.eml("Second", "b@example.org", "From the start, body two.")])
    doc = extract(Path("archive.mbox"), data)
    assert titles(doc) == [(1, "First"), (1, "Second")]
    assert "Body one." in doc.text and "From the start, body two." in doc.text


def test_notebook_cells_without_outputs() -> None:
    data = docfiles.ipynb([("markdown", "# Analysis\n\nWe count otters."), ("code", "otters = count()\n")])
    doc = extract(Path("nb.ipynb"), data)
    assert doc.kind == "markdown"
    assert "We count otters." in doc.text and "otters = count()" in doc.text
    assert "OUTPUT_MUST_NOT_BE_INDEXED" not in doc.text and '"cell_type"' not in doc.text
    chunks = chunk_document(doc.text, doc.kind, words, 50, 0)
    assert chunks[0].heading == ("Analysis",)


def test_malformed_notebook_fails_that_file_only() -> None:
    with pytest.raises(DocumentError, match="damaged Jupyter notebook"):
        extract(Path("bad.ipynb"), b"{not json")
    with pytest.raises(DocumentError, match=r"^cannot extract: TypeError"):
        extract(Path("odd.ipynb"), b'{"cells": [{"cell_type": "code", "source": [1, 2]}]}')


# -- content over suffix -------------------------------------------------------------------

def test_pdf_named_txt_is_read_as_pdf() -> None:
    doc = extract(Path("notes.txt"), docfiles.pdf([["Hidden in a text file."]]))
    assert doc.kind == "pdf" and "Hidden in a text file." in doc.text


def test_text_quoting_the_pdf_header_stays_text() -> None:
    doc = extract(Path("notes.md"), b"# PDF notes\n\nA PDF file begins with %PDF-1.7 and ends with %%EOF.\n")
    assert doc.kind == "markdown"


def test_pdf_with_junk_before_its_header_when_named_pdf() -> None:
    doc = extract(Path("mail-export.pdf"), b"\x89junk\x01" + docfiles.pdf([["Prefixed but fine."]]))
    assert "Prefixed but fine." in doc.text


def test_docx_named_bin_is_read_as_docx() -> None:
    doc = extract(Path("download.bin"), docfiles.docx("T", [("H", 1, ["Word inside."])]))
    assert doc.kind == "docx"


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("fake.pdf", b"just some words in a text file\n", "not a PDF, although named .pdf: the content is text"),
    ("fake.docx", b"plain words\n", "not a Word document, although named .docx: the content is text"),
    ("fake.epub", b"\x00\x01\x02binary", "not a EPUB book, although named .epub: the content is binary data"),
])
def test_wrong_suffix_is_reported(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError, match="^" + reason.replace(".", r"\.") + "$"):
        extract(Path(name), data)


# -- damaged, encrypted, empty ---------------------------------------------------------------

def test_truncated_pdf() -> None:
    data = docfiles.pdf([["Some text."] * 40] * 5)
    with pytest.raises(DocumentError, match="truncated PDF"):
        extract(Path("cut.pdf"), data[: len(data) // 2])


def test_encrypted_pdf() -> None:
    with pytest.raises(DocumentError, match=r"^encrypted PDF \(needs a password\)$"):
        extract(Path("locked.pdf"), docfiles.encrypted_pdf([["Secret text."]]))


def test_pdf_without_text_layer() -> None:
    with pytest.raises(DocumentError, match=r"no text layer"):
        extract(Path("scan.pdf"), docfiles.scanned_pdf())


def test_truncated_docx() -> None:
    data = docfiles.docx("T", [("H", 1, ["text " * 200])])
    with pytest.raises(DocumentError, match=r"^damaged or truncated Word document"):
        extract(Path("cut.docx"), data[: len(data) - 200])


def test_zip_of_an_unsupported_version_is_a_damaged_file() -> None:
    """zipfile raises NotImplementedError for it; the probe and the reader must not let it out."""
    data = bytearray(docfiles.odt([("H", 1, ["text"])]))
    directory = data.index(b"PK\x01\x02")
    data[directory + 6] = 99  # "version needed to extract": 9.9
    with pytest.raises(DocumentError, match="OpenDocument text"):
        extract(Path("odd.odt"), bytes(data))


def test_encrypted_office_document() -> None:
    data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500) + "EncryptedPackage".encode("utf-16-le") + bytes(500)
    with pytest.raises(DocumentError, match="encrypted Office document"):
        extract(Path("locked.docx"), data)


def _with_member(data: bytes, name: str, content: bytes) -> bytes:
    """The zip ``data`` with one member replaced or added."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename != name:
                dst.writestr(info, src.read(info.filename))
        dst.writestr(name, content)
    return out.getvalue()


def test_encrypted_odt() -> None:
    plain = docfiles.odt([("Secret", 1, ["hidden"])])
    manifest = (b'<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0">'
                b'<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml">'
                b'<manifest:encryption-data manifest:checksum-type="SHA1/1K" manifest:checksum="AAAA"/>'
                b"</manifest:file-entry></manifest:manifest>")
    data = _with_member(_with_member(plain, "META-INF/manifest.xml", manifest), "content.xml", bytes(range(256)))
    with pytest.raises(DocumentError, match=r"^encrypted OpenDocument text \(needs a password\)$"):
        extract(Path("locked.odt"), data)


def test_epub_with_drm_and_with_obfuscated_fonts() -> None:
    book = docfiles.epub("Book", [("One", ["Readable text."])])

    def encryption(uri: str) -> bytes:
        return (b'<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
                b'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData><enc:CipherData>'
                b'<enc:CipherReference URI="' + uri.encode() + b'"/></enc:CipherData></enc:EncryptedData></encryption>')

    with pytest.raises(DocumentError, match=r"^encrypted EPUB book \(DRM\)$"):
        extract(Path("drm.epub"), _with_member(book, "META-INF/encryption.xml", encryption("OEBPS/text/chap0.xhtml")))
    fonts = _with_member(book, "META-INF/encryption.xml", encryption("OEBPS/fonts/serif.otf"))
    assert "Readable text." in extract(Path("fonts.epub"), fonts).text


def test_legacy_office_file_is_skipped_not_failed() -> None:
    data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(1000)
    with pytest.raises(ExtractError, match="legacy Office format") as info:
        extract(Path("old.doc"), data)
    assert not isinstance(info.value, DocumentError)


def test_zip_bomb_over_total_size() -> None:
    data = docfiles.zip_bomb_docx(24 << 20)
    with pytest.raises(DocumentError, match=r"zip bomb\? Word document unpacks to \d+ bytes.*max_unzipped_bytes"):
        extract(Path("bomb.docx"), data, Limits(max_unzipped_bytes=16 << 20))


def test_zip_bomb_over_ratio() -> None:
    data = docfiles.zip_bomb_docx(24 << 20)
    assert len(data) < 200_000
    with pytest.raises(DocumentError, match=r"zip bomb\? Word document unpacks \d+x .*max_zip_ratio"):
        extract(Path("bomb.docx"), data)


def test_text_files_still_decoded_in_process() -> None:
    doc = extract(Path("a.md"), b"# Title\n\nbody\n")
    assert doc == Document("# Title\n\nbody\n", "markdown", "utf-8")
