"""HTML (lxml's parser) and EPUB (its spine of XHTML chapters): the main content as text, the
title and h1-h6 as headings; navigation, headers, footers, scripts, styles and forms dropped."""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import lxml.html
from lxml import etree

from ragd.extract.base import Document, DocumentError, Format, Limits, Probe, TextBuilder
from ragd.extract.containers import local, open_zip, read_member, resolve, xml_member
from ragd.extract.text import decode_text

_DROP = frozenset({
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "svg", "math",
    "iframe", "object", "embed", "canvas", "button", "select", "input", "textarea", "label", "dialog", "menu",
})
_DROP_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"})
_BOILERPLATE = re.compile(r"(?:^|[\s_-])(?:nav|navbar|menu|sidebar|breadcrumbs?|cookie|footer|share|social|skip)"
                          r"(?:$|[\s_-])", re.IGNORECASE)
_BLOCKS = frozenset({
    "p", "div", "section", "article", "main", "blockquote", "ul", "ol", "li", "dl", "dt", "dd", "table", "thead",
    "tbody", "tfoot", "figure", "figcaption", "address", "details", "summary", "hr", "body", "caption",
})
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def parse_html(data: bytes | str) -> Any:
    """An lxml HTML tree of ``data``; bytes are decoded by BOM, <meta charset>, then ragd's text
    detection (a ``str``, as an e-mail part gives, is taken as it is)."""
    text = data if isinstance(data, str) else _decode_html(data)
    text = re.sub(r"^\s*<\?xml[^>]*>", "", text)  # lxml refuses str input with an encoding declaration
    try:
        return lxml.html.document_fromstring(text or "<html></html>")
    except (etree.ParserError, ValueError) as exc:
        raise DocumentError(f"damaged HTML ({exc})") from exc


def _decode_html(data: bytes) -> str:
    m = None if data.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else (
        _CHARSET.search(data[:4096]))
    if m:
        try:
            return data.decode(m.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            pass
    return decode_text(data)[0]


class _Render:
    """Walks an HTML tree into a TextBuilder, one line per block, inline text joined."""

    def __init__(self, builder: TextBuilder, level_shift: int = 0) -> None:
        self.builder = builder
        self.shift = level_shift
        self.line: list[str] = []
        self.headings = 0

    def flush(self) -> None:
        text = " ".join("".join(self.line).split())
        self.line = []
        if text:
            self.builder.add(text)

    def walk(self, el: Any) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        name = local(tag).lower()
        if not name or _dropped(el, name):
            if el.tail:
                self.line.append(el.tail)
            return
        if name in _HEADINGS:
            self.flush()
            self.builder.heading(el.text_content(), _HEADINGS[name] + self.shift)
            self.headings += 1
        elif name == "pre":
            self.flush()
            self.builder.paragraph(el.text_content())
        elif name == "br":
            self.flush()
        elif name == "tr":
            self.flush()
            self.builder.row([c.text_content() for c in el if local(str(c.tag)).lower() in ("td", "th")])
        else:
            block = name in _BLOCKS
            if block:
                self.flush()
            if el.text:
                self.line.append(el.text)
            for child in el:
                self.walk(child)
            if block:
                self.flush()
                if name in ("p", "blockquote", "ul", "ol", "table", "dl", "figure", "section", "article"):
                    self.builder.blank()
        if el.tail:
            self.line.append(el.tail)


def _dropped(el: Any, name: str) -> bool:
    if name in _DROP:
        return True
    if (el.get("role") or "").lower() in _DROP_ROLES or el.get("hidden") is not None:
        return True
    if el.get("aria-hidden") == "true":
        return True
    hint = f"{el.get('class') or ''} {el.get('id') or ''}"
    return name in ("div", "ul", "section", "span") and bool(_BOILERPLATE.search(hint))


def main_content(root: Any) -> Any:
    """<main>, else the <article> with the most text, else <body> (or the root)."""
    for el in root.iter("main"):
        return el
    articles = list(root.iter("article"))
    if articles:
        return max(articles, key=lambda a: len(a.text_content()))
    body = root.find("body")
    return body if body is not None else root


def render_html(root: Any, builder: TextBuilder, title_level: int = 1, level_shift: int = 0) -> int:
    """Add the page's title (as a heading unless an <h1> repeats it) and main content; returns
    how many headings the content had."""
    title_el = root.find(".//title")
    title = " ".join((title_el.text_content() if title_el is not None else "").split())
    h1s = {" ".join(h.text_content().split()) for h in root.iter("h1")}
    if title and title not in h1s:
        builder.heading(title, title_level)
    render = _Render(builder, level_shift)
    render.walk(main_content(root))
    render.flush()
    return render.headings + (1 if title else 0)


class HtmlExtractor(Format):
    name = "html"
    label = "HTML page"
    suffixes = frozenset({".html", ".htm", ".xhtml", ".shtml"})

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        builder = TextBuilder()
        render_html(parse_html(data), builder)
        return builder.document(self.name)


class EpubExtractor(Format):
    name = "epub"
    label = "EPUB book"
    suffixes = frozenset({".epub"})
    magic = True

    def sniff(self, probe: Probe) -> bool:
        return probe.data[30:38] == b"mimetype" and probe.data[38:58] == b"application/epub+zip"

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        zf = open_zip(data, limits, self.label)
        if "META-INF/encryption.xml" in zf.namelist():
            for el in xml_member(zf, "META-INF/encryption.xml", self.label).iter():
                if local(el.tag) == "CipherReference" and re.search(r"\.x?html?$", el.get("URI") or "", re.I):
                    raise DocumentError(f"encrypted {self.label} (DRM)")  # fonts may be obfuscated; text may not
        container = xml_member(zf, "META-INF/container.xml", self.label)
        opf_path = next((el.get("full-path") for el in container.iter() if local(el.tag) == "rootfile"), None)
        if not opf_path:
            raise DocumentError(f"damaged {self.label}: no package document in META-INF/container.xml")
        opf = xml_member(zf, opf_path, self.label)
        manifest: dict[str, tuple[str, str, str]] = {}  # id -> (member, media type, properties)
        spine: list[str] = []
        toc_id = ""
        for el in opf.iter():
            name = local(el.tag)
            if name == "item":
                member = resolve(opf_path, unquote(el.get("href") or ""))
                manifest[el.get("id") or ""] = (member, el.get("media-type") or "", el.get("properties") or "")
            elif name == "spine":
                toc_id = el.get("toc") or ""
            elif name == "itemref" and el.get("linear") != "no":
                spine.append(el.get("idref") or "")
        titles = self._toc_titles(zf, manifest, toc_id)
        builder = TextBuilder()
        names = set(zf.namelist())
        for idref in spine:
            member, media, _ = manifest.get(idref, ("", "", ""))
            if member not in names or "html" not in media:
                continue
            root = parse_html(read_member(zf, member, self.label))
            title = titles.get(member, "")
            if title:
                builder.heading(title, 1)
            # The chapter's own title element is the book's name in many EPUBs: skip it; the
            # chapter's headings sit below the table-of-contents title when there is one.
            for t in root.iter("title"):
                t.getparent().remove(t)
            render_html(root, builder, level_shift=1 if title else 0)
            builder.blank()
        return builder.document(self.name)

    def _toc_titles(self, zf: Any, manifest: dict[str, tuple[str, str, str]], toc_id: str) -> dict[str, str]:
        """Chapter member -> its title in the table of contents (EPUB 3 nav, else EPUB 2 NCX)."""
        out: dict[str, str] = {}
        names = set(zf.namelist())
        nav = next((m for m, _, props in manifest.values() if "nav" in props.split()), None)
        if nav and nav in names:
            root = parse_html(read_member(zf, nav, self.label))
            for a in root.iter("a"):
                href = unquote((a.get("href") or "").split("#")[0])
                title = " ".join(a.text_content().split())
                if href and title:
                    out.setdefault(resolve(nav, href), title)
            return out
        ncx = manifest.get(toc_id, ("", "", ""))[0] or next(
            (m for m, media, _ in manifest.values() if media == "application/x-dtbncx+xml"), "")
        if ncx in names:
            for point in xml_member(zf, ncx, self.label).iter():
                if local(point.tag) != "navPoint":
                    continue
                label = next((" ".join("".join(t.itertext()).split()) for t in point.iter()
                              if local(t.tag) == "navLabel"), "")
                src = next((c.get("src") or "" for c in point if local(c.tag) == "content"), "")
                if src and label:
                    out.setdefault(resolve(ncx, unquote(src.split("#")[0])), label)
        return out

