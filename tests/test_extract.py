"""Extraction: encodings (UTF-8/16/32, GB18030/GBK, cp1252), binaries, kinds, empty files."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from ragd.errors import ExtractError
from ragd.extract import Document, detect_kind, extract

CHINESE = (
    "检索增强生成是一种把外部知识库与大语言模型结合起来的方法。\n"
    "它先从文档中找到相关的段落，再把这些段落交给模型生成回答。\n"
    "本地索引保存在用户自己的电脑上，不需要联网。\n"
)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("notes.md", "markdown"), ("README.MD", "markdown"), ("page.mdx", "markdown"), ("x.markdown", "markdown"),
        ("index.rst", "rst"),
        ("main.py", "code"), ("app.tsx", "code"), ("lib.rs", "code"), ("a.go", "code"), ("x.h", "code"),
        ("pyproject.toml", "code"), ("ci.yaml", "code"), ("data.json", "code"), ("q.sql", "code"),
        ("page.html", "code"), ("style.css", "code"), ("run.sh", "code"), ("Makefile", "code"),
        ("Dockerfile", "code"), (".bashrc", "code"),
        ("notes.txt", "text"), ("LICENSE", "text"), ("diary", "text"), ("log.log", "text"),
    ],
)
def test_detect_kind(name: str, kind: str) -> None:
    assert detect_kind(Path("/some/dir") / name) == kind


def test_utf8_plain_and_newlines() -> None:
    doc = extract(Path("a.md"), "# Café\r\n\r\nline\rlast\n".encode())
    assert doc == Document("# Café\n\nline\nlast\n", "markdown", "utf-8")


def test_utf8_bom_removed() -> None:
    doc = extract(Path("a.txt"), codecs.BOM_UTF8 + "héllo\r\n".encode())
    assert doc.text == "héllo\n" and doc.encoding == "utf-8"


@pytest.mark.parametrize(("codec", "name"), [("utf-16", "utf-16"), ("utf-16-le", "utf-16"), ("utf-16-be", "utf-16"),
                                             ("utf-32", "utf-32")])
def test_utf16_and_utf32_by_bom(codec: str, name: str) -> None:
    text = "Grüße, 世界\r\nzweite Zeile\n"
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(codec, b"")
    doc = extract(Path("w.txt"), bom + text.encode(codec))  # NUL bytes, but a BOM
    assert doc.text == "Grüße, 世界\nzweite Zeile\n" and doc.encoding == name


def test_chinese_utf8() -> None:
    doc = extract(Path("zh.md"), CHINESE.encode("utf-8"))
    assert doc.text == CHINESE and doc.encoding == "utf-8"


@pytest.mark.parametrize("codec", ["gb18030", "gbk", "gb2312"])
def test_chinese_gb18030_family(codec: str) -> None:
    doc = extract(Path("zh.txt"), CHINESE.encode(codec))
    assert doc.text == CHINESE
    assert doc.encoding == "gb18030"


def test_short_chinese_gb18030() -> None:
    text = "配置说明：请修改下面的参数，然后重新启动服务。"
    assert extract(Path("zh.txt"), text.encode("gb18030")).text == text


def test_cp1252() -> None:
    text = "Les élèves ont réussi l'examen. C'était très difficile, mais naïve café costs 3€.\n"
    doc = extract(Path("fr.txt"), text.encode("cp1252"))
    assert doc.text == text and doc.encoding == "cp1252"


@pytest.mark.parametrize("name", ["photo.png", "Song.MP3", "backup.tar.gz", "old.doc", "lib.so",
                                  "app.exe", "font.woff2", "cache.sqlite", "mod.pyc"])
def test_binary_by_suffix(name: str) -> None:
    with pytest.raises(ExtractError, match=r"^binary file type \(\.[a-z0-9]+\)$") as info:
        extract(Path(name), b"plain text, but the suffix decides")
    assert Path(name).suffix.lower() in str(info.value)


def test_binary_by_nul_bytes() -> None:
    with pytest.raises(ExtractError, match="binary content"):
        extract(Path("blob.txt"), b"ab\x00\x01cd" * 50)


def test_binary_by_control_characters() -> None:
    with pytest.raises(ExtractError, match="binary content"):
        extract(Path("blob.txt"), bytes(range(1, 32)) * 20)


def test_undecodable() -> None:
    with pytest.raises(ExtractError, match="undecodable text"):
        extract(Path("junk.txt"), bytes(range(128, 256)) * 4)


@pytest.mark.parametrize(
    "data", [b"", b"   \n\t\r\n  ", codecs.BOM_UTF8, codecs.BOM_UTF16_LE + " \n".encode("utf-16-le")]
)
def test_empty_and_whitespace_only(data: bytes) -> None:
    doc = extract(Path("empty.md"), data)
    assert doc.text == "" and doc.kind == "markdown"


def test_ansi_escapes_are_text() -> None:
    data = b"\x1b[31merror\x1b[0m: something failed\n" * 20
    assert extract(Path("build.log"), data).text.startswith("\x1b[31merror")


def test_mostly_utf8_keeps_utf8() -> None:
    good = "Grüße aus Zürich — 检索增强生成。\n" * 30
    doc = extract(Path("joined.txt"), good.encode() + b"caf\xe9\n" + good.encode())
    assert doc.encoding == "utf-8" and doc.text == good + "caf\ufffd\n" + good
