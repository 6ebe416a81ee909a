"""Office Open XML (Word, PowerPoint, Excel) read straight from the zip's XML parts with lxml:
headings from paragraph styles, slides in presentation order with their titles and speaker
notes (a slide is a page), sheets in workbook order with one line per row."""

from __future__ import annotations

import re
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lxml import etree

from ragd.extract.base import Document, DocumentError, Format, Limits, Probe, TextBuilder
from ragd.extract.containers import local, open_zip, relationships, xml_member

_HEADING_STYLE = re.compile(r"(?:heading|überschrift|titre|titolo|título|kop)\s*(\d)", re.IGNORECASE)


def _text(el: Any) -> str:
    """The visible text under a Word/DrawingML element: runs, tabs and breaks."""
    parts: list[str] = []
    for node in el.iter():
        name = local(node.tag)
        if name == "t":
            parts.append(node.text or "")
        elif name == "tab":
            parts.append("\t")
        elif name in ("br", "cr"):
            parts.append("\n")
        elif name == "noBreakHyphen":
            parts.append("-")
    return "".join(parts)


class DocxExtractor(Format):
    name = "docx"
    label = "Word document"
    suffixes = frozenset({".docx", ".docm", ".dotx"})
    magic = True

    def sniff(self, probe: Probe) -> bool:
        return "word/document.xml" in probe.zip_names

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        zf = open_zip(data, limits, self.label)
        levels = self._style_levels(zf)
        body = xml_member(zf, "word/document.xml", self.label)
        builder = TextBuilder()
        for el in body.iter():
            if local(el.tag) == "body":
                self._walk(el, builder, levels)
                break
        return builder.document(self.name)

    def _style_levels(self, zf: zipfile.ZipFile) -> dict[str, int]:
        """Style id -> heading level (0 for the document title), from styles.xml's names."""
        if "word/styles.xml" not in zf.namelist():
            return {}
        levels: dict[str, int] = {}
        for style in xml_member(zf, "word/styles.xml", self.label):
            if local(style.tag) != "style":
                continue
            sid = next((v for k, v in style.attrib.items() if local(k) == "styleId"), "")
            name = next((v for c in style if local(c.tag) == "name" for k, v in c.attrib.items() if local(k) == "val"),
                        sid)
            m = _HEADING_STYLE.search(name) or _HEADING_STYLE.search(sid)
            if m:
                levels[sid] = int(m.group(1))
            elif name.lower() == "title" or sid.lower() == "title":
                levels[sid] = 0
        return levels

    def _walk(self, el: Any, builder: TextBuilder, levels: dict[str, int]) -> None:
        for child in el:
            name = local(child.tag)
            if name == "p":
                self._paragraph(child, builder, levels)
            elif name == "tbl":
                for row in child.iter():
                    if local(row.tag) == "tr":
                        builder.row([_text(c) for c in row if local(c.tag) == "tc"])
                builder.blank()
            elif name not in ("sectPr", "bookmarkStart", "bookmarkEnd"):
                self._walk(child, builder, levels)  # content controls, inserted runs, ...

    def _paragraph(self, p: Any, builder: TextBuilder, levels: dict[str, int]) -> None:
        text = _text(p)
        if not text.strip():
            return
        level: int | None = None
        for node in p.iter():
            tag = local(node.tag)
            if tag == "pStyle":
                sid = next((v for k, v in node.attrib.items() if local(k) == "val"), "")
                level = levels.get(sid, level)
            elif tag == "outlineLvl" and level is None:
                value = next((v for k, v in node.attrib.items() if local(k) == "val"), "")
                if value.isdigit() and int(value) < 9:
                    level = int(value) + 1
            elif tag == "r":
                break
        if level is not None:
            builder.heading(text, level + 1)  # the title is level 1, "Heading 1" level 2, ...
        else:
            builder.paragraph(text)


class PptxExtractor(Format):
    name = "pptx"
    label = "PowerPoint presentation"
    suffixes = frozenset({".pptx", ".pptm", ".ppsx", ".potx"})
    magic = True

    def sniff(self, probe: Probe) -> bool:
        return "ppt/presentation.xml" in probe.zip_names

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        zf = open_zip(data, limits, self.label)
        part = "ppt/presentation.xml"
        rels = relationships(zf, part, self.label)
        order: list[str] = []
        for el in xml_member(zf, part, self.label).iter():
            if local(el.tag) == "sldId":
                rid = next((v for k, v in el.attrib.items() if local(k) == "id" and "relationships" in k), "")
                if rid in rels:
                    order.append(rels[rid][1])
        builder = TextBuilder()
        for number, slide in enumerate(order, 1):
            builder.page()
            root = xml_member(zf, slide, self.label)
            title, body = self._shapes(root)
            builder.heading(title or f"Slide {number}", 1)
            for para in body:
                builder.add(para)
            builder.blank()
            notes = [t for kind, target in relationships(zf, slide, self.label).values()
                     if kind == "notesSlide" and target in zf.namelist()
                     for t in self._notes(xml_member(zf, target, self.label))]
            if notes:
                builder.add("Notes:")
                for para in notes:
                    builder.add(para)
                builder.blank()
        return builder.document(self.name, paged=True)

    @staticmethod
    def _placeholder(shape: Any) -> str:
        for el in shape.iter():
            if local(el.tag) == "ph":
                return el.get("type") or "body"
        return ""

    def _shapes(self, root: Any) -> tuple[str, list[str]]:
        """The slide's title and its other paragraphs, in shape order (tables row by row)."""
        title = ""
        body: list[str] = []
        for shape in root.iter():
            name = local(shape.tag)
            if name == "sp":
                paras = [" ".join(_text(p).split()) for p in shape.iter() if local(p.tag) == "p"]
                paras = [p for p in paras if p]
                if self._placeholder(shape) in ("title", "ctrTitle") and not title:
                    title = " ".join(paras)
                else:
                    body.extend(paras)
            elif name == "tr":
                cells = [" ".join(_text(c).split()) for c in shape if local(c.tag) == "tc"]
                if any(cells):
                    body.append(" | ".join(cells))
        return title, body

    def _notes(self, root: Any) -> list[str]:
        out: list[str] = []
        for shape in root.iter():
            if local(shape.tag) == "sp" and self._placeholder(shape) == "body":
                out.extend(t for p in shape.iter() if local(p.tag) == "p" and (t := " ".join(_text(p).split())))
        return out


class XlsxExtractor(Format):
    name = "xlsx"
    label = "Excel workbook"
    suffixes = frozenset({".xlsx", ".xlsm", ".xltx"})
    magic = True

    def sniff(self, probe: Probe) -> bool:
        return "xl/workbook.xml" in probe.zip_names

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        zf = open_zip(data, limits, self.label)
        part = "xl/workbook.xml"
        rels = relationships(zf, part, self.label)
        shared = self._shared_strings(zf, rels)
        workbook = xml_member(zf, part, self.label)
        dates = _Dates(self._date_styles(zf, rels), any(
            local(el.tag) == "workbookPr" and el.get("date1904") in ("1", "true") for el in workbook.iter()))
        builder = TextBuilder()
        for el in workbook.iter():
            if local(el.tag) != "sheet":
                continue
            rid = next((v for k, v in el.attrib.items() if local(k) == "id" and "relationships" in k), "")
            if rid not in rels or rels[rid][1] not in zf.namelist():
                continue
            builder.heading(el.get("name") or "Sheet", 1)
            self._sheet(zf, rels[rid][1], shared, dates, builder)
            builder.blank()
        return builder.document(self.name)

    def _shared_strings(self, zf: zipfile.ZipFile, rels: dict[str, tuple[str, str]]) -> list[str]:
        target = next((t for kind, t in rels.values() if kind == "sharedStrings"), "xl/sharedStrings.xml")
        if target not in zf.namelist():
            return []
        root = xml_member(zf, target, self.label)
        return ["".join(t.text or "" for t in si.iter() if local(t.tag) == "t" and local(t.getparent().tag) != "rPh")
                for si in root if local(si.tag) == "si"]

    def _date_styles(self, zf: zipfile.ZipFile, rels: dict[str, tuple[str, str]]) -> frozenset[int]:
        """Indexes of the cell formats (``s`` attributes) that show a number as a date or time."""
        target = next((t for kind, t in rels.values() if kind == "styles"), "xl/styles.xml")
        if target not in zf.namelist():
            return frozenset()
        root = xml_member(zf, target, self.label)
        custom = {el.get("numFmtId"): el.get("formatCode") or "" for el in root.iter() if local(el.tag) == "numFmt"}
        out: set[int] = set()
        for xfs in root.iter():
            if local(xfs.tag) != "cellXfs":
                continue
            for index, xf in enumerate(x for x in xfs if local(x.tag) == "xf"):
                fmt = xf.get("numFmtId") or "0"
                if (fmt.isdigit() and int(fmt) in _DATE_FORMATS) or _DATE_CODE.search(
                        re.sub(r'"[^"]*"|\[[^\]]*\]|\\.', "", custom.get(fmt, ""))):
                    out.add(index)
        return frozenset(out)

    def _sheet(self, zf: zipfile.ZipFile, member: str, shared: list[str], dates: _Dates,
               builder: TextBuilder) -> None:
        """One line per non-empty row, cells separated by " | " in their columns (streamed:
        sheets can be big)."""
        with zf.open(member) as stream:
            try:
                for _, row in etree.iterparse(stream, events=("end",), resolve_entities=False, no_network=True,
                                              load_dtd=False, huge_tree=False):
                    if local(row.tag) != "row":
                        continue
                    cells: list[str] = []
                    for c in row:
                        if local(c.tag) != "c":
                            continue
                        column = _column(c.get("r") or "")
                        if column is not None and len(cells) < column < len(cells) + _MAX_GAP:
                            cells.extend([""] * (column - len(cells)))  # keep values under their headers
                        cells.append(self._cell(c, shared, dates))
                    builder.row(cells)
                    row.clear()
            except etree.XMLSyntaxError as exc:
                raise DocumentError(f"damaged {self.label}: {member}: {exc}") from exc

    @staticmethod
    def _cell(c: Any, shared: list[str], dates: _Dates) -> str:
        kind = c.get("t") or "n"
        if kind == "inlineStr":
            return "".join(t.text or "" for t in c.iter() if local(t.tag) == "t")
        value = next((v.text or "" for v in c if local(v.tag) == "v"), "")
        if kind == "s":
            return shared[int(value)] if value.isdigit() and int(value) < len(shared) else ""
        if kind == "b":
            return "TRUE" if value == "1" else "FALSE" if value == "0" else value
        style = c.get("s")
        if kind == "n" and style and style.isdigit() and int(style) in dates.styles:
            return dates.show(value)
        return value


_DATE_FORMATS = frozenset({*range(14, 23), 45, 46, 47})
"""Excel's built-in number formats that are dates or times."""
_DATE_CODE = re.compile(r"[dymhs]", re.IGNORECASE)
_MAX_GAP = 50
"""Empty columns inserted at most before a cell, so a far-right cell cannot blow a row up."""


def _column(ref: str) -> int | None:
    """0-based column of a cell reference like "C7"."""
    letters = "".join(ch for ch in ref if ch.isalpha()).upper()
    if not letters:
        return None
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - 64
    return n - 1


class _Dates:
    """Shows a date-formatted serial number as ISO 8601 (1900 or 1904 date system)."""

    def __init__(self, styles: frozenset[int], base_1904: bool) -> None:
        self.styles = styles
        self.epoch = datetime(1904, 1, 1) if base_1904 else datetime(1899, 12, 30)

    def show(self, value: str) -> str:
        try:
            serial = float(value)
            moment = self.epoch + timedelta(seconds=round(serial * 86400))  # serials carry float noise
        except (ValueError, OverflowError):
            return value
        if 0 <= serial < 1:
            return moment.strftime("%H:%M:%S" if moment.second else "%H:%M")
        if moment.hour == moment.minute == moment.second == 0:
            return moment.date().isoformat()
        return moment.isoformat(sep=" ", timespec="seconds" if moment.second else "minutes")

