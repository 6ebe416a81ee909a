"""Plain text of any kind (prose, Markdown, reStructuredText, code): reject binaries, detect
the encoding, classify the kind.

Known binary suffixes and NUL bytes are rejected first. Then UTF-16/32 when a BOM says so,
UTF-8 (with or without BOM), UTF-8 with a few bad bytes replaced, and only then
charset-normalizer's best guess (imported lazily, as most files are UTF-8). Newlines are
normalised to ``"\\n"`` and a leading BOM is removed, so line numbers match what an editor
shows.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ragd.errors import ExtractError
from ragd.extract.base import Document, Format, Limits
from ragd.extract.kinds import BINARY_SUFFIXES, detect_kind

if TYPE_CHECKING:
    from charset_normalizer.models import CharsetMatch

#: How much of the file is scanned for NUL bytes.
SNIFF_BYTES = 8192
#: Above this share of control characters the text is taken for binary data.
MAX_CONTROL_SHARE = 0.01
#: Tie-break among equally plausible legacy encodings: the first listed wins.
PREFERRED_ENCODINGS = ("gb18030", "cp1252", "big5", "cp932", "shift_jis", "euc_jp", "cp949", "euc_kr", "cp1251")
#: Never guessed without a BOM (NUL-free bytes are almost never BOM-less UTF-16/32).
_WIDE = ["utf_16", "utf_16_be", "utf_16_le", "utf_32", "utf_32_be", "utf_32_le"]
#: BOMs of the wide encodings, UTF-32 first (its little-endian BOM starts with UTF-16's).
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
#: C0/C1 control characters except tab, newlines, form feed and escape (ANSI colours in logs).
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")


class TextExtractor(Format):
    """Today's text path: any file no other extractor claims, unless it is binary."""

    name = "text"
    label = "text file"
    isolated = False

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        suffix = path.suffix.lower()
        if suffix in BINARY_SUFFIXES:
            raise ExtractError(f"binary file type ({suffix})")
        kind = detect_kind(path)
        text, encoding = decode_text(data)
        return Document(text if text.strip() else "", kind, encoding)


def decode_text(data: bytes) -> tuple[str, str]:
    """(text with ``"\\n"`` newlines and no BOM, encoding); ``ExtractError`` when not text."""
    text, encoding = _decode(data)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text, encoding


def _decode(data: bytes) -> tuple[str, str]:
    """Return (text, encoding name) or raise ``ExtractError``."""
    if not data:
        return "", "utf-8"
    for bom, name in _WIDE_BOMS:
        if data.startswith(bom):
            wide = _decode_wide(data, name)
            if wide is not None:
                return wide, name
    if b"\x00" in data[:SNIFF_BYTES]:
        raise ExtractError("binary content (NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    else:
        _check_controls(text, "binary content (control characters)")
        return text, "utf-8"
    lenient = _mostly_utf8(data)
    if lenient is not None:
        _check_controls(lenient, "binary content (control characters)")
        return lenient, "utf-8"
    guess = _guess(data)
    if guess is None:
        raise ExtractError("undecodable text (no encoding fits)")
    text, encoding = guess
    _check_controls(text, f"undecodable text (control characters as {encoding})")
    return text, encoding


def _decode_wide(data: bytes, name: str) -> str | None:
    """Decode UTF-16/32 announced by a BOM; ``None`` when the bytes do not fit (try the next BOM)."""
    try:
        text = data.decode(name)
    except UnicodeDecodeError:
        return None
    _check_controls(text, "binary content (control characters)")
    return text


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 with a few bad bytes (replaced), as when files were pasted together; else ``None``.

    Taken only when well-formed multi-byte characters clearly outnumber the bad bytes, so
    text in a legacy single- or double-byte encoding still goes to charset-normalizer.
    """
    text = data.decode("utf-8-sig", errors="replace")
    bad = text.count("\ufffd")
    if bad > max(1, len(text) // 1000):
        return None
    wide = len(text) - len(text.encode("ascii", "ignore")) - bad
    return text if wide >= 4 * bad else None


def _guess(data: bytes) -> tuple[str, str] | None:
    """charset-normalizer's best (text, encoding), ties broken by ``PREFERRED_ENCODINGS``."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data, cp_exclusion=_WIDE))
    if not matches:
        return None
    best = matches[0]
    tied = [m for m in matches if m.chaos <= best.chaos + 0.01 and m.coherence >= best.coherence - 0.02]

    def rank(match: CharsetMatch) -> tuple[int, str]:
        # Encodings in could_be_from_charset give the very same text, so report the preferred name.
        names = [match.encoding, *match.could_be_from_charset]
        known = [n for n in names if n in PREFERRED_ENCODINGS]
        if not known:
            return len(PREFERRED_ENCODINGS), match.encoding
        name = min(known, key=PREFERRED_ENCODINGS.index)
        return PREFERRED_ENCODINGS.index(name), name

    chosen = min(tied, key=rank)
    return str(chosen), rank(chosen)[1]


def _check_controls(text: str, reason: str) -> None:
    """Reject text where control characters (other than whitespace and escape) are common."""
    sample = text[: SNIFF_BYTES * 4]
    controls = len(_CONTROLS.findall(sample))
    if controls > max(2, MAX_CONTROL_SHARE * len(sample)):
        raise ExtractError(reason)
