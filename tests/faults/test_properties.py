"""Property-based tests (hypothesis): the config loader accepts every value its rules allow
and refuses everything else with one line naming the file and the key, never another
exception; the chunker loses no text, gives true line spans, keeps the budget and the
configured overlap, whatever the document."""

from __future__ import annotations

import dataclasses
import itertools
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_chunk import check, glyphs, quarters, words

from ragd.chunk import chunk_document
from ragd.config import RULES, Config, parse_config
from ragd.errors import ConfigError

SOURCE = Path("/etc/ragd-test/config.toml")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the config loader -------------------------------------------------------------------------

def _scalar_keys() -> dict[str, tuple[str, type]]:
    """dotted key -> (section, type) for every plain int / float / bool / str key of a section."""
    out: dict[str, tuple[str, type]] = {}
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        if not dataclasses.is_dataclass(cls):
            continue
        for f, kind in typing.get_type_hints(cls).items():
            if kind in (int, float, bool, str):
                out[f"{section.name}.{f}"] = (section.name, kind)
    return out


KEYS = _scalar_keys()
PLAIN = [k for k in KEYS if not RULES.get(k) or not (RULES[k].half_of or RULES[k].folder)]
ANY_TOML = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _nest(key: str, value: Any) -> dict[str, Any]:
    section, name = key.split(".", 1)
    return {section: {name: value}}


def _wrong_type(kind: type) -> st.SearchStrategy[Any]:
    others = {int: st.text(max_size=10) | st.lists(st.integers(), max_size=2),
              float: st.text(max_size=10) | st.booleans(),
              bool: st.integers() | st.text(max_size=10),
              str: st.integers() | st.booleans() | st.lists(st.text(max_size=3), max_size=2)}
    return others[kind]


def _one_line_about(exc: ConfigError, key: str) -> None:
    message = str(exc)
    assert "\n" not in message
    assert message.startswith(f"{SOURCE}: "), message
    assert key in message, (key, message)


@SETTINGS
@given(key=st.sampled_from(PLAIN), data=st.data())
def test_a_value_of_the_wrong_type_names_the_file_and_the_key(key: str, data: st.DataObject) -> None:
    value = data.draw(_wrong_type(KEYS[key][1]))
    with pytest.raises(ConfigError) as info:
        parse_config(_nest(key, value), SOURCE, environ={})
    _one_line_about(info.value, key)


def _allowed(key: str) -> st.SearchStrategy[Any]:
    kind = KEYS[key][1]
    rule = RULES.get(key)
    if rule is not None and rule.choices:
        return st.sampled_from(rule.choices)
    if kind is bool:
        return st.booleans()
    if kind is str:
        return st.text(alphabet=st.characters(categories=("L", "N")), min_size=1, max_size=20)
    low = rule.low if rule is not None and rule.low is not None else -(10 ** 6)
    high = rule.high if rule is not None and rule.high is not None else 10 ** 6
    if kind is int:
        return st.integers(int(low), int(high))
    return st.floats(low, high, allow_nan=False)


ALLOWED = [k for k in PLAIN if KEYS[k][1] is not str or (RULES.get(k) and RULES[k].choices)
           or k in ("models.embedder", "models.reranker")]


@SETTINGS
@given(key=st.sampled_from(ALLOWED), data=st.data())
def test_every_value_the_rules_allow_is_taken_as_given(key: str, data: st.DataObject) -> None:
    value = data.draw(_allowed(key))
    try:
        cfg = parse_config(_nest(key, value), SOURCE, environ={})
    except ConfigError as exc:  # a value allowed alone may clash with a sibling's default
        _one_line_about(exc, key.split(".")[0])
        return
    section, name = key.split(".", 1)
    assert getattr(getattr(cfg, section), name) == value


@SETTINGS
@given(section=st.sampled_from(sorted({s for s, _ in KEYS.values()})),
       name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20), value=ANY_TOML)
def test_an_unknown_key_is_refused_by_name(section: str, name: str, value: Any) -> None:
    hints = typing.get_type_hints(Config)
    if name in {f.name for f in dataclasses.fields(hints[section])}:
        return
    with pytest.raises(ConfigError) as info:
        parse_config({section: {name: value}}, SOURCE, environ={})
    _one_line_about(info.value, name)


@SETTINGS
@given(data=st.dictionaries(st.sampled_from([*sorted({s for s, _ in KEYS.values()}), "roots", "data_dir", "x"]),
                            ANY_TOML, max_size=4))
def test_any_document_gives_a_config_or_one_config_error(data: dict[str, Any]) -> None:
    """Whatever TOML holds, the loader answers with a Config or a one-line ConfigError that
    names the file: never a traceback."""
    try:
        parse_config(data, SOURCE, environ={})
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{SOURCE}: ")


# -- the chunker ------------------------------------------------------------------------------

VOCAB = ("alpha", "beta", "gamma", "e.g.", "U.S.A", "3.14", "naïve", "Zürich", "end.", "why?", "so,")


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, str]:
    """(kind, text): paragraphs, headings, fences, long unbroken runs, CJK runs, odd spacing.
    Every word and character run is unique, so a chunk has one place in the text."""
    kind = draw(st.sampled_from(["markdown", "rst", "text", "code"]))
    serial = itertools.count()
    parts = []
    for part in draw(st.lists(st.sampled_from(["para", "para", "lines", "heading", "fence", "long", "cjk"]),
                              min_size=1, max_size=10)):
        n = draw(st.integers(1, 40))
        if part == "heading" and kind == "markdown":
            parts.append("#" * draw(st.integers(1, 4)) + f" Heading{next(serial)}")
        elif part == "heading" and kind == "rst":
            title = f"T{next(serial)}"
            parts.append(title + "\n" + draw(st.sampled_from("=-~")) * len(title))
        elif part == "fence":
            parts.append("```\n" + "\n".join(f"code{next(serial)}()" for _ in range(n)) + "\n```")
        elif part == "long":
            parts.append("".join(f"x{next(serial)}" for _ in range(n * 10)))
        elif part == "cjk":
            parts.append("".join(chr(0x4E00 + next(serial) % 20000) for _ in range(n * 3)) + "。")
        else:
            sep = "\n" if part == "lines" else draw(st.sampled_from([" ", "  ", "\t"]))
            parts.append(sep.join(f"{draw(st.sampled_from(VOCAB))}{next(serial)}" for _ in range(n)))
    gap = draw(st.sampled_from(["\n\n", "\n\n\n", "\n \n"]))
    return kind, draw(st.sampled_from(["", "\n", "  \n"])) + gap.join(parts) + draw(st.sampled_from(["", "\n"]))


@SETTINGS
@given(doc=documents(), counter=st.sampled_from([words, glyphs, quarters]),
       max_tokens=st.integers(4, 300), overlap=st.integers(0, 200))
def test_the_chunker_loses_nothing_and_keeps_spans_budget_and_overlap(
    doc: tuple[str, str], counter: Any, max_tokens: int, overlap: int,
) -> None:
    kind, text = doc  # (budgets under 4 cut a fence's backticks into pieces the check cannot place)
    chunks = chunk_document(text, kind, counter, max_tokens, overlap)
    check(text, chunks, counter, max_tokens, min(overlap, max_tokens // 2))
    if text.strip():
        assert chunks


@SETTINGS
@given(n=st.integers(20, 200), max_tokens=st.integers(20, 80), overlap=st.integers(1, 40))
def test_the_configured_overlap_is_used(n: int, max_tokens: int, overlap: int) -> None:
    """Consecutive chunks of one section share text: some, and at most ``overlap`` tokens of it
    (half the budget at most)."""
    text = " ".join(f"w{i}" for i in range(n))
    chunks = chunk_document(text, "text", words, max_tokens, overlap)
    budget = min(overlap, max_tokens // 2)
    check(text, chunks, words, max_tokens, budget)
    for a, b in itertools.pairwise(chunks):
        shared = next((n for n in range(len(b.text), 0, -1) if a.text.endswith(b.text[:n])), 0)
        assert shared and words([b.text[:shared]])[0] <= budget, (a.text, b.text)


# -- request validation (ragd.requests, shared by gRPC, the CLI and MCP) -------------------------

FIELDS = {"query", "k", "candidates", "mode", "fusion", "weights", "deadline_ms", "like_chunk_id", "like_path",
          "like_line", "filters.path_prefixes", "filters.globs", "filters.extensions", "filters.root",
          "filters.modified_after", "filters.modified_before"}
ANY_TEXT = st.text(max_size=60) | st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(
    ["\x00", "\ud800", ".", "/", "~", "*", "[", "\n"]), max_size=30) | st.just("x" * 70_000)


@st.composite
def search_requests(draw: st.DrawFn) -> Any:
    from ragd.filters import Filters
    from ragd.requests import SearchRequest

    big = st.integers(-(2 ** 63), 2 ** 63 - 1)
    filters = Filters(
        path_prefixes=tuple(draw(st.lists(ANY_TEXT, max_size=3))), globs=tuple(draw(st.lists(ANY_TEXT, max_size=3))),
        extensions=tuple(draw(st.lists(ANY_TEXT, max_size=3))),
        modified_after=draw(st.none() | st.floats(allow_nan=False)),
        modified_before=draw(st.none() | st.floats(allow_nan=False)), root=draw(st.none() | ANY_TEXT))
    return SearchRequest(
        query=draw(ANY_TEXT), k=draw(st.integers(0, 1001) | big), candidates=draw(st.integers(0, 1001) | big),
        rerank=draw(st.none() | st.booleans()), filters=filters, deadline_ms=draw(st.integers(0, 5000) | big),
        mode=draw(st.sampled_from(["", "dense", "hybrid"]) | ANY_TEXT),
        fusion=draw(st.sampled_from(["", "rrf"]) | ANY_TEXT),
        weights=draw(st.dictionaries(st.sampled_from(["dense", "lexical"]) | ANY_TEXT,
                                     st.floats(allow_nan=False) | st.integers(-5, 2000), max_size=3)),
        like_chunk_id=draw(st.integers(0, 5) | big), like_path=draw(st.just("") | ANY_TEXT),
        like_line=draw(st.integers(0, 5) | big))


@SETTINGS
@given(req=search_requests())
def test_a_search_request_is_taken_or_refused_naming_its_field(req: Any) -> None:
    """Whatever a transport hands over, validation answers with the query to run or one
    UsageError that starts with the field at fault and repeats a bounded part of the input;
    never another exception."""
    from ragd.errors import UsageError
    from ragd.filters import normalise_filters
    from ragd.requests import check_search

    try:
        query = check_search(req)
        normalise_filters(req.filters)
    except UsageError as exc:
        message = str(exc)
        field_name = message.split(":")[0].split(" ")[0]
        assert field_name in FIELDS, message[:200]
        assert len(message) < 1000
        return
    assert query == ("" if req.like else req.query.strip())
    assert 1 <= (req.k or 1) <= 1000 and 1 <= (req.candidates or 1) <= 1000


@SETTINGS
@given(path=ANY_TEXT)
def test_a_path_is_checked_and_normalised(path: str) -> None:
    """A path a caller names comes back absolute, normalised (no ``..`` left), without NUL,
    or is refused naming the field."""
    from ragd.errors import UsageError
    from ragd.requests import check_path

    try:
        out = check_path("path", path)
    except UsageError as exc:
        assert str(exc).startswith("path: ")
        return
    assert out.startswith("/") and "\x00" not in out and "/../" not in out + "/" and not out.endswith("/..")
