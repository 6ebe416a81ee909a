"""Requests as every transport hands them to ragd: the limits, and the checks they share.

Light on purpose (no numpy, no models): the CLI checks a request here before it talks to the
daemon, the daemon's service layer checks it again, and ``ragd.search`` and the config's rules
for the search defaults take their limits from here. Every ``UsageError`` names the field that
is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ragd.errors import UsageError
from ragd.filters import Filters

MAX_K = 1000
MAX_CANDIDATES = 1000
MAX_QUERY_CHARS = 65_536  # a pasted page or two; longer queries are refused with this limit named
MAX_PATH_CHARS = 4096
MAX_WEIGHT = 1000.0
MAX_DEADLINE_MS = 3_600_000
SHOWN_CHARS = 200  # how much of a caller's path or text an error message repeats
MODES = ("hybrid", "dense", "sparse", "lexical")
FUSIONS = ("weighted", "rrf")
SIGNALS = ("dense", "sparse", "lexical", "colbert")
RETRIEVERS = ("dense", "sparse", "lexical")  # the signals that find candidates; colbert rescores them


@dataclass(frozen=True)
class SearchRequest:
    """One search as a transport received it; 0, "" and None take the daemon's defaults."""

    query: str
    k: int = 0
    candidates: int = 0
    rerank: bool | None = None
    filters: Filters = field(default_factory=Filters)
    deadline_ms: int = 0
    mode: str = ""
    fusion: str = ""
    weights: Mapping[str, float] = field(default_factory=dict)
    like_chunk_id: int = 0  # "more like this": an indexed chunk instead of the query
    like_path: str = ""  # or a file inside a root: the chunk at like_line, or (like_line 0) its whole text
    like_line: int = 0
    like_same_file: bool = False  # keep the other chunks of the like file among the hits

    @property
    def like(self) -> bool:
        return bool(self.like_chunk_id or self.like_path)


def shown(value: str) -> str:
    """A caller's string as an error message may repeat it: bounded, with control characters escaped."""
    cut = value[:SHOWN_CHARS]
    return repr(cut) + ("..." if len(value) > SHOWN_CHARS else "")


def check_text(name: str, value: str) -> None:
    """Text that cannot be encoded as UTF-8 (lone surrogates from undecodable input) is refused."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{name}: not valid UTF-8 text (at character {exc.start}); pass the text in UTF-8"
        ) from None


def check_query(query: str) -> str:
    """The stripped query, or UsageError."""
    check_text("query", query)
    q = query.strip()
    if not q:
        raise UsageError("query is empty: give the words to search for")
    if len(q) > MAX_QUERY_CHARS:
        raise UsageError(f"query is too long: {len(q)} characters, at most {MAX_QUERY_CHARS}")
    return q


def check_counts(k: int, candidates: int) -> None:
    """``k`` and ``candidates`` after defaults are applied (so 0 is out of range here)."""
    if not 1 <= k <= MAX_K:
        raise UsageError(f"k must be from 1 to {MAX_K}, got {k}")
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise UsageError(f"candidates must be from 1 to {MAX_CANDIDATES}, got {candidates}")


def check_search(req: SearchRequest) -> str:
    """Everything about a search request that needs no index; returns the stripped query
    ("" for a "more like this" search, whose text comes from the index)."""
    if req.like:
        if req.query.strip():
            raise UsageError("query: give a query or a like_chunk_id / like_path, not both")
        if req.like_chunk_id and req.like_path:
            raise UsageError("like_path: give like_chunk_id or like_path, not both")
        if req.like_chunk_id < 0:
            raise UsageError(f"like_chunk_id: must be a positive chunk id, got {req.like_chunk_id}")
        if req.like_path:
            check_path("like_path", req.like_path)
        if req.like_line < 0:
            raise UsageError(f"like_line: must not be negative, got {req.like_line}")
        q = ""
    else:
        q = check_query(req.query)
    check_counts(req.k or 1, req.candidates or 1)
    if req.mode and req.mode not in MODES:
        raise UsageError(f"mode: expected one of {', '.join(MODES)}, got {shown(req.mode)}")
    if req.fusion and req.fusion not in FUSIONS:
        raise UsageError(f"fusion: expected one of {', '.join(FUSIONS)}, got {shown(req.fusion)}")
    for name, weight in req.weights.items():
        if name not in SIGNALS or not 0 <= weight <= MAX_WEIGHT:
            raise UsageError(f"weights: expected one of {', '.join(SIGNALS)} with a weight from 0 to "
                             f"{MAX_WEIGHT:g}, got {shown(name)}={weight}")
    if not 0 <= req.deadline_ms <= MAX_DEADLINE_MS:
        raise UsageError(f"deadline_ms: must be from 0 to {MAX_DEADLINE_MS}, got {req.deadline_ms}")
    f = req.filters
    for name in ("path_prefixes", "globs", "extensions"):
        for item in getattr(f, name):
            check_text(f"filters.{name}", item)
    if f.root:
        check_text("filters.root", f.root)
    for name, value in (("filters.modified_after", f.modified_after), ("filters.modified_before", f.modified_before)):
        if value is not None and value < 0:
            raise UsageError(f"{name}: must not be negative")
    return q


def check_path(name: str, path: str, *, relative_ok: bool = False) -> str:
    """A path a caller names (a file to read, a root to add): no NUL byte, bounded, UTF-8, and
    absolute unless ``relative_ok``. Returns it normalised (``..`` resolved lexically)."""
    if not path:
        raise UsageError(f"{name}: must not be empty")
    check_text(name, path)
    if "\x00" in path:
        raise UsageError(f"{name}: must not contain a NUL byte")
    if len(path) > MAX_PATH_CHARS:
        raise UsageError(f"{name}: at most {MAX_PATH_CHARS} characters, got {len(path)}")
    if not relative_ok and not os.path.isabs(path):
        raise UsageError(f"{name}: must be an absolute path, got {shown(path)}")
    return os.path.normpath(path)


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (both already real, absolute paths)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")
