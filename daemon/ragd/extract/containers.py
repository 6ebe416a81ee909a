"""Safe access to the containers documents come in: zip archives bounded against zip bombs,
and XML parsed without entities or network access."""

from __future__ import annotations

import zipfile
from io import BytesIO
from typing import Any

from lxml import etree

from ragd.extract.base import DocumentError, Limits

BOMB_FLOOR_BYTES = 10_000_000
"""Below this total the compression ratio is not checked (small XML parts compress very well)."""

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)


def open_zip(data: bytes, limits: Limits, label: str) -> zipfile.ZipFile:
    """The archive, after checking it is readable, not encrypted and not a zip bomb."""
    try:
        zf = zipfile.ZipFile(BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise DocumentError(f"damaged or truncated {label} (unreadable zip archive: {exc})") from exc
    infos = zf.infolist()
    if any(i.flag_bits & 0x1 for i in infos):
        raise DocumentError(f"encrypted {label} (password-protected zip members)")
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if total > limits.max_unzipped_bytes:
        raise DocumentError(
            f"zip bomb? {label} unpacks to {total} bytes "
            f"(over extract.max_unzipped_bytes = {limits.max_unzipped_bytes})"
        )
    if total > BOMB_FLOOR_BYTES and total > limits.max_zip_ratio * max(packed, 1):
        raise DocumentError(
            f"zip bomb? {label} unpacks {total / max(packed, 1):.0f}x its packed size "
            f"(over extract.max_zip_ratio = {limits.max_zip_ratio:g})"
        )
    return zf


def read_member(zf: zipfile.ZipFile, name: str, label: str) -> bytes:
    """One member's bytes (never more than its declared size, which ``open_zip`` bounded)."""
    try:
        return zf.read(name)
    except KeyError as exc:
        raise DocumentError(f"damaged {label}: missing {name}") from exc
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise DocumentError(f"damaged or truncated {label}: {name}: {exc}") from exc


def parse_xml(data: bytes, label: str, name: str) -> Any:
    """The root element of an XML part; entities are not expanded and nothing is fetched."""
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise DocumentError(f"damaged {label}: {name}: {exc}") from exc


def xml_member(zf: zipfile.ZipFile, name: str, label: str) -> Any:
    return parse_xml(read_member(zf, name, label), label, name)


def local(tag: Any) -> str:
    """An element's tag without its namespace ("" for comments and processing instructions)."""
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


def resolve(base: str, target: str) -> str:
    """A relationship target relative to the part ``base`` (a zip member path), normalised."""
    if target.startswith("/"):
        parts: list[str] = []
        target = target[1:]
    else:
        parts = base.split("/")[:-1]
    for piece in target.split("/"):
        if piece == "..":
            if parts:
                parts.pop()
        elif piece and piece != ".":
            parts.append(piece)
    return "/".join(parts)


def relationships(zf: zipfile.ZipFile, part: str, label: str) -> dict[str, tuple[str, str]]:
    """An OOXML part's relationships: id -> (type's last word, resolved target member)."""
    folder, _, name = part.rpartition("/")
    rels_name = f"{folder}/_rels/{name}.rels" if folder else f"_rels/{name}.rels"
    if rels_name not in zf.namelist():
        return {}
    out: dict[str, tuple[str, str]] = {}
    for rel in xml_member(zf, rels_name, label):
        if local(rel.tag) != "Relationship" or rel.get("TargetMode") == "External":
            continue
        kind = (rel.get("Type") or "").rpartition("/")[2]
        out[rel.get("Id") or ""] = (kind, resolve(part, rel.get("Target") or ""))
    return out
