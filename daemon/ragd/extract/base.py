"""What every extractor shares: the ``Document`` it returns, the ``Extractor`` protocol, the
limits it works within, and ``TextBuilder``, which lays out text while recording headings and
page starts by line number (the numbering chunks and ``ReadFile`` use)."""

from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Protocol

from ragd.config import ExtractConfig
from ragd.errors import ExtractError


class DocumentError(ExtractError):
    """A document of a known format that cannot be read (damaged, encrypted, over a limit,
    not what its name says): recorded as ``failed``, whereas plain ``ExtractError`` (a binary
    file type) is ``skipped``."""


@dataclass(frozen=True)
class Heading:
    """A heading of the extracted text: its 1-based line, level (1 = top) and title."""

    line: int
    level: int
    title: str


@dataclass(frozen=True)
class Document:
    """Extracted text (``"\\n"`` newlines), its kind and encoding ("" for documents),
    its headings and, for paged formats, the 1-based line where each page starts."""

    text: str
    kind: str
    encoding: str
    headings: tuple[Heading, ...] | None = None  # None: the chunker finds them (markdown, rst)
    page_lines: tuple[int, ...] = ()  # page k+1 starts at line page_lines[k]; () = not paged


@dataclass(frozen=True)
class Limits(ExtractConfig):
    """Bounds on one extraction: the ``[extract]`` config section, and whether to use a worker."""

    isolate: bool = True


@dataclass
class Probe:
    """A file's name and bytes as format detection sees them (zip member names computed once)."""

    path: Path
    data: bytes
    suffix: str = field(init=False)

    def __post_init__(self) -> None:
        self.suffix = self.path.suffix.lower()

    @property
    def head(self) -> bytes:
        return self.data[:1024]

    @functools.cached_property
    def zip_names(self) -> frozenset[str]:
        """Member names when the bytes are a readable zip archive, else empty."""
        if not self.data.startswith(b"PK\x03\x04"):
            return frozenset()
        try:
            with zipfile.ZipFile(BytesIO(self.data)) as zf:
                return frozenset(zf.namelist())
        except Exception:  # zipfile raises many kinds on damaged input; a probe only says "not a zip"
            return frozenset()


class Extractor(Protocol):
    """One format: which files it takes (by content, else by suffix) and how to read them."""

    name: str  # short format name, also the ``kind`` of its documents ("pdf", "docx", ...)
    label: str  # how messages name the format ("PDF", "Word document", ...)
    suffixes: frozenset[str]  # lower-case suffixes with the dot
    magic: bool  # files with these suffixes must be recognised by content (else "not a PDF")
    isolated: bool  # runs in a worker process with the time and memory limits

    def sniff(self, probe: Probe) -> bool:
        """Whether the bytes are of this format, whatever the file is called."""
        ...

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        """The document's text and structure; ``DocumentError`` when it cannot be read."""
        ...


class Format:
    """An ``Extractor``'s defaults: recognised by its suffixes only, run in a worker process."""

    name = ""
    label = ""
    suffixes: frozenset[str] = frozenset()
    magic = False
    isolated = True

    def sniff(self, probe: Probe) -> bool:
        return False

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        raise NotImplementedError


_BREAKS = str.maketrans({"\r": "\n", "\v": "\n", "\f": "\n", "\x1c": "\n", "\x1d": "\n", "\x1e": "\n",
                        "\x85": "\n", "\u2028": "\n", "\u2029": "\n"})


class TextBuilder:
    """Accumulates lines of text with the headings and page starts found on the way."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.headings: list[Heading] = []
        self.page_lines: list[int] = []

    def add(self, text: str) -> None:
        """Append text (one or more lines); blank runs collapse and surrounding blanks go. Only
        "\\n" ends a line: the other breaks ``str.splitlines`` knows become one too, so any
        reader numbers the lines as the chunks do."""
        for raw in text.replace("\r\n", "\n").translate(_BREAKS).split("\n"):
            line = " ".join(raw.split()) if "\t" in raw or "\xa0" in raw else raw.rstrip()
            if line.strip():
                self.lines.append(line)
            elif self.lines and self.lines[-1]:
                self.lines.append("")

    def paragraph(self, text: str) -> None:
        """A block of text followed by a blank line, so the chunker sees it as one block."""
        if text.strip():
            self.add(text)
            self.blank()

    def row(self, cells: list[str]) -> None:
        """A table row as one line, cells separated by " | " (nothing for an empty row)."""
        cells = [" ".join(c.split()) for c in cells]
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            self.add(" | ".join(cells))

    def heading(self, title: str, level: int) -> None:
        """A heading line (its own block) that starts a section of ``level``."""
        title = " ".join(title.split())
        if not title:
            return
        self.blank()
        self.headings.append(Heading(len(self.lines) + 1, max(1, level), title))
        self.lines.append(title)
        self.blank()

    def include(self, doc: Document, level_shift: int) -> None:
        """Another document's text as it is, its headings ``level_shift`` levels deeper."""
        self.blank()
        offset = len(self.lines)
        self.lines.extend(doc.text.rstrip("\n").split("\n"))
        for h in doc.headings or ():
            self.headings.append(Heading(h.line + offset, h.level + level_shift, h.title))
        self.blank()

    def page(self) -> None:
        """The next line starts a new page (pages without text share their start with the next)."""
        self.blank()
        self.page_lines.append(len(self.lines) + 1)

    def blank(self) -> None:
        if self.lines and self.lines[-1]:
            self.lines.append("")

    def document(self, kind: str, paged: bool = False) -> Document:
        lines = self.lines
        while lines and not lines[-1]:
            lines.pop()
        text = "\n".join(lines) + "\n" if lines else ""
        return Document(text, kind, "", tuple(self.headings), tuple(self.page_lines) if paged else ())
