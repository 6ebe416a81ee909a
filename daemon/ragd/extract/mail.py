"""E-mail (.eml, .mbox) through the standard library: per message its subject (a heading),
sender, recipients and date, the text body (HTML rendered when there is no plain text), and
attachments of the formats ragd reads, each under its own heading."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from email.message import EmailMessage, MIMEPart
from pathlib import Path

from ragd.errors import ExtractError
from ragd.extract.base import Document, DocumentError, Extractor, Format, Limits, TextBuilder
from ragd.extract.text import decode_text

_MBOX_SPLIT = re.compile(rb"^From [^\n]*\n", re.MULTILINE)
_MAX_ATTACHMENT_DEPTH = 3

Choose = Callable[[Path, bytes], Extractor]
"""Picks the extractor for an attachment (the registry's ``choose``, passed in so that this
module does not import the registry that imports it)."""


def add_message(msg: EmailMessage, builder: TextBuilder, limits: Limits, choose: Choose, level: int = 1,
                depth: int = 0) -> None:
    """One message: headers, body and attachments, into ``builder``."""
    subject = " ".join(str(msg.get("subject", "") or "").split()) or "(no subject)"
    builder.heading(subject, level)
    for header in ("from", "to", "cc", "date"):
        value = msg.get(header)
        if value:
            builder.add(f"{header.capitalize()}: {' '.join(str(value).split())}")
    builder.blank()
    try:
        body = msg.get_body(preferencelist=("plain", "html"))
    except (KeyError, LookupError):
        body = None
    if body is not None:
        _add_part(body, builder)
    for part in msg.iter_attachments():
        _add_attachment(part, builder, limits, choose, level + 1, depth)


def _add_part(part: MIMEPart, builder: TextBuilder) -> None:
    try:
        content = part.get_content()
    except (LookupError, ValueError, UnicodeError, AssertionError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return
    if part.get_content_subtype() == "html":
        from ragd.extract.html import parse_html, render_html

        render_html(parse_html(content), builder, title_level=2)
    else:
        builder.paragraph(content)
    builder.blank()


def _add_attachment(part: MIMEPart, builder: TextBuilder, limits: Limits, choose: Choose, level: int,
                    depth: int) -> None:
    """A readable attachment's text under "Attachment: NAME"; others are named only."""
    name = part.get_filename() or "attachment"
    if part.get_content_type() == "message/rfc822" and depth < _MAX_ATTACHMENT_DEPTH:
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], EmailMessage):
            add_message(inner[0], builder, limits, choose, level, depth + 1)
        return
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes) or depth >= _MAX_ATTACHMENT_DEPTH:
        return
    path = Path(name)
    try:
        extractor = choose(path, data)
        doc = extractor.extract(path, data, limits)
    except DocumentError as exc:
        builder.paragraph(f"Attachment: {name} (not read: {exc})")
        return
    except ExtractError:  # a binary type (an image): nothing to index
        return
    if not doc.text.strip():
        return
    builder.heading(f"Attachment: {name}", level)
    builder.include(doc, level)


def _parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)  # the default policy's factory
    return msg


class _Mail(Format):
    """An e-mail format; ``choose`` reads its attachments."""

    def __init__(self, choose: Choose) -> None:
        self._choose = choose


class EmlExtractor(_Mail):
    name = "eml"
    label = "e-mail message"
    suffixes = frozenset({".eml"})

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        builder = TextBuilder()
        add_message(_parse(data), builder, limits, self._choose)
        return builder.document(self.name)


class MboxExtractor(_Mail):
    name = "mbox"
    label = "mailbox"
    suffixes = frozenset({".mbox"})

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        builder = TextBuilder()
        data = data.replace(b"\r\n", b"\n")
        for raw in _MBOX_SPLIT.split(data):
            if not raw.strip():
                continue
            raw = re.sub(rb"^>(>*From )", rb"\1", raw, flags=re.MULTILINE)  # mboxrd unquoting
            add_message(_parse(raw), builder, limits, self._choose)
            builder.blank()
        if not builder.lines:
            text, _ = decode_text(data)
            builder.add(text)
        return builder.document(self.name)
