"""The MCP server: tools ``search``, ``get``, ``multi_get`` and ``status`` over a running ragd daemon.

Every tool is a thin call through ``ragd_client``; the daemon validates requests and confines
paths to its roots. Failures become tool errors (``is_error`` results) that say what to do.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from ragd.errors import outcome_for_code
from ragd.requests import MAX_QUERY_CHARS
from ragd_client import Client, DaemonUnavailable, InvalidArgument, RagdClientError
from ragd_client.types import Chunk, FileLines, Hit, SearchResult
from ragd_mcp.results import (
    FailedFile,
    GetFailure,
    MultiGetOutput,
    Passage,
    RootSummary,
    SearchHit,
    SearchOutput,
    StatusOutput,
)

T = TypeVar("T")

DEFAULT_LIMIT = 10
DEFAULT_GET_LINES = 200
MAX_GET_LINES = 2000
MAX_MULTI_GET = 20
_CITATION = re.compile(r"^(?P<path>.+):(?P<start>\d+)(?:-(?P<end>\d+))?$")

INSTRUCTIONS = """\
ragd searches the user's own local files (notes, documents, code) that they chose to index.
Use `search` with a natural-language question or exact keywords (a whole pasted paragraph is
fine); it returns the best passages with a citation (path:start-end). Read more around a hit
with `get` (a path and lines, or its chunk_id), several at once with `multi_get`; find passages
like a hit with `similar`. `status` lists the indexed folders and whether
indexing is still running. Cite passages by their citation string."""

SEARCH_DESCRIPTION = """\
Search the user's indexed local files and return the most relevant passages, best first.

Write the query as a question or a description of what you need; exact names, identifiers and
words in any language also work (full-text matching is combined with semantic retrieval). The
passages are reranked by a cross-encoder within the deadline; `reranked` says how many were.
Narrow with path_prefix (an absolute folder), extensions (e.g. ["md", "py"]), globs (relative to
the root, e.g. ["docs/**"]) or root. Each hit has a citation (path:start-end), its heading path
and a snippet; call `get` with the citation or the chunk_id for the full text."""

GET_DESCRIPTION = """\
Read text from an indexed file: either lines of a file (path, from_line, count) or one search
hit's whole chunk (chunk_id). path may also be a citation from `search` (path:start-end), which
reads exactly those lines. Only files inside ragd's indexed folders can be read (see `status`).
For long files, read on from next_line."""

MULTI_GET_DESCRIPTION = """\
Read several passages at once: each ref is a citation from `search` (path:start-end), a file
path (its first max_lines lines) or a chunk id ("chunk:812"). References that cannot be read
are listed in failures with the reason; the others are returned in order."""

SIMILAR_DESCRIPTION = """\
Find passages like a given one ("more like this"): pass a search hit's chunk_id, or a citation
or path:line of an indexed file. The passage's stored vectors and terms are the query, so this
is fast and nothing is embedded again. The passage itself, and unless same_file the rest of its
file, are left out of the results. Results look like `search`'s."""

STATUS_DESCRIPTION = """\
Show what ragd has indexed: files indexed, pending and failed per folder, the models, and any
reason it runs degraded. Use it to learn which folders can be searched, or why a search finds
nothing (files still pending, the daemon still loading)."""



@dataclass(frozen=True)
class Settings:
    """How the MCP server reaches the daemon and bounds its calls."""

    address: str
    """The daemon's gRPC address (``unix:///...`` or ``host:port``)."""
    token: str | None = None
    """Bearer token for a TCP daemon; None = ``$RAGD_TOKEN``."""
    deadline_ms: int = 5000
    """The deadline of a search that names none."""
    max_results: int = 50
    """The largest ``limit`` a search may ask for."""
    timeout: float = 15.0
    """Seconds for calls other than search (a search gets its deadline plus a margin)."""


def _read_only(title: str) -> ToolAnnotations:
    """Every ragd tool only reads, the same call gives the same answer, and nothing leaves the machine."""
    return ToolAnnotations(
        title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )


def _version() -> str:
    try:
        return metadata.version("ragd")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return ""


class Daemon:
    """One shared ``ragd_client.Client``, replaced after the daemon could not be reached so that
    the next call connects at once (a gRPC channel otherwise backs off for up to two minutes)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client: Client | None = None

    def _get(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = Client(self.settings.address, token=self.settings.token, timeout=self.settings.timeout)
            return self._client

    def _drop(self, client: Client) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def call(self, fn: Callable[[Client], T]) -> T:
        """``fn(client)``, with every client error turned into a ``ToolError`` that says what to do."""
        client = self._get()
        try:
            return fn(client)
        except DaemonUnavailable as exc:
            self._drop(client)
            raise ToolError(_labelled("UNAVAILABLE", self._unavailable(exc.details))) from None
        except RagdClientError as exc:
            raise ToolError(_explain(exc)) from None

    def _unavailable(self, details: str) -> str:
        address = self.settings.address
        lowered = details.lower()
        if any(s in lowered for s in ("failed to connect", "connection refused", "no such file", "connect failed")):
            return f"no ragd daemon answered on {address}: start it with `ragd serve`"
        return f"the ragd daemon on {address} is unavailable ({details}); if it stopped, start it with `ragd serve`"


_HINTS = {
    "PERMISSION_DENIED": "only files inside ragd's indexed folders can be read; `status` lists them",
    "NOT_FOUND": "only indexed files can be read (`status` shows what is pending), and chunk ids change when a "
                 "file is re-indexed: search again",
    "DEADLINE_EXCEEDED": "the daemon may still be loading its models: `status` says when it serves",
    "UNAUTHENTICATED": "give ragd mcp the daemon's token in $RAGD_TOKEN",
    "RESOURCE_EXHAUSTED": "try again shortly",
}


def _labelled(code_name: str, message: str) -> str:
    """``message`` after the words ragd's error table gives MCP tool errors of this gRPC code."""
    return f"{outcome_for_code(code_name).mcp_label}: {message}"


def invalid(message: str) -> ToolError:
    """The tool error for a request refused before it reaches the daemon."""
    return ToolError(_labelled("INVALID_ARGUMENT", message))


def _explain(exc: RagdClientError) -> str:
    """A one-line tool error for a client error other than an unreachable daemon."""
    code = exc.code_name or ("INVALID_ARGUMENT" if isinstance(exc, InvalidArgument) else "")
    hint = _HINTS.get(code)
    return _labelled(code, exc.details + (f" ({hint})" if hint else ""))


def _path(raw: str, name: str = "path") -> str:
    """An absolute path as the daemon takes it; refuses what no indexed file can be named."""
    if "\x00" in raw:
        raise invalid(f"{name}: contains a NUL byte")
    path = os.path.expanduser(raw.strip())
    if not path:
        raise invalid(f"{name}: is empty: give an absolute path, as in a search hit's path")
    if not os.path.isabs(path):
        raise invalid(f"{name}: must be an absolute path (as in a search hit's path), got {raw!r}")
    if ".." in path.split(os.sep):
        raise invalid(f"{name}: must not contain '..' components, got {raw!r}")
    return path


def _citation(path: str, start: int, end: int) -> str:
    return f"{path}:{start}-{end}"


def _hit(hit: Hit) -> SearchHit:
    return SearchHit(
        citation=_citation(hit.path, hit.start_line, hit.end_line),
        path=hit.path,
        start_line=hit.start_line,
        end_line=hit.end_line,
        page=hit.page or 0,
        end_page=hit.end_page or 0,
        heading=list(hit.heading),
        score=hit.score,
        rerank_score=hit.rerank_score,
        snippet=hit.snippet,
        chunk_id=hit.chunk_id,
        origin=hit.origin,
    )


def _output(query: str, result: SearchResult) -> SearchOutput:
    return SearchOutput(
        query=query,
        hits=[_hit(h) for h in result.hits],
        candidates=result.candidates,
        reranked=result.reranked,
        degraded=list(result.degraded),
        elapsed_ms=round(result.timings.get("total_ms", 0.0), 1),
    )


def _lines(result: FileLines) -> Passage:
    end = result.end_line
    return Passage(
        citation=_citation(result.path, result.from_line, end),
        path=result.path,
        start_line=result.from_line,
        end_line=end,
        total_lines=result.total_lines,
        next_line=end + 1 if end < result.total_lines else None,
        page=0,
        end_page=0,
        heading=[],
        chunk_id=None,
        text="\n".join(result.lines),
    )


def _chunk(chunk: Chunk) -> Passage:
    return Passage(
        citation=_citation(chunk.path, chunk.start_line, chunk.end_line),
        path=chunk.path,
        start_line=chunk.start_line,
        end_line=chunk.end_line,
        total_lines=None,
        next_line=None,
        page=chunk.page or 0,
        end_page=chunk.end_page or 0,
        heading=list(chunk.heading),
        chunk_id=chunk.chunk_id,
        text=chunk.text,
    )


def _split_citation(ref: str) -> tuple[str, int | None, int | None]:
    """``path:12-30`` -> (path, 12, 19 lines); ``path:12`` -> (path, 12, None); a bare path -> (path, None, None)."""
    match = _CITATION.match(ref)
    if not match:
        return ref, None, None
    start = int(match["start"])
    end = int(match["end"]) if match["end"] else None
    if start < 1 or (end is not None and end < start):
        raise invalid(f"path: a citation's lines must be start-end with 1 <= start <= end, got {ref!r}")
    return match["path"], start, None if end is None else end - start + 1


class Tools:
    """The tool functions, bound to one daemon connection and its settings."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.settings = daemon.settings

    def search(
        self,
        query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")],
        limit: Annotated[int, Field(ge=1, description="How many passages to return.")] = DEFAULT_LIMIT,
        path_prefix: Annotated[
            str | None, Field(description="Only files under this absolute path (a folder or a file).")
        ] = None,
        extensions: Annotated[
            list[str] | None, Field(description='Only these file types, e.g. ["md", "pdf"].', max_length=50)
        ] = None,
        globs: Annotated[
            list[str] | None,
            Field(description='Only paths matching these gitignore-style patterns, relative to the root.',
                  max_length=50),
        ] = None,
        root: Annotated[str | None, Field(description="Only files of this indexed folder (see `status`).")] = None,
        rerank: Annotated[
            bool | None,
            Field(description="Rerank with the cross-encoder (better order, slower); default: ragd's config."),
        ] = None,
        deadline_ms: Annotated[
            int | None,
            Field(ge=100, le=600_000, description="Time budget in milliseconds; default: mcp.deadline_ms."),
        ] = None,
    ) -> SearchOutput:
        if not query.strip():
            raise invalid("query: is empty: give the words or question to search for")
        if "\x00" in query:
            raise invalid("query: contains a NUL byte")
        if limit > self.settings.max_results:
            raise invalid(f"limit: at most {self.settings.max_results} (mcp.max_results), got {limit}")
        prefix = _path(path_prefix, "path_prefix") if path_prefix else None
        root_path = _path(root, "root") if root else None
        deadline = (deadline_ms or self.settings.deadline_ms) / 1000
        result = self.daemon.call(
            lambda c: c.search(
                query, k=limit, rerank=rerank, path_prefix=prefix, globs=globs or (), extensions=extensions or (),
                root=root_path, deadline=deadline,
            )
        )
        return _output(query, result)

    def similar(
        self,
        chunk_id: Annotated[int | None, Field(ge=1, description="A search hit's chunk_id.")] = None,
        citation: Annotated[
            str | None, Field(description="Or an indexed file's path:line (a citation path:start-end uses start).")
        ] = None,
        limit: Annotated[int, Field(ge=1, description="How many passages to return.")] = DEFAULT_LIMIT,
        same_file: Annotated[bool, Field(description="Also return other passages of the same file.")] = False,
        deadline_ms: Annotated[
            int | None,
            Field(ge=100, le=600_000, description="Time budget in milliseconds; default: mcp.deadline_ms."),
        ] = None,
    ) -> SearchOutput:
        if (chunk_id is None) == (citation is None):
            raise invalid("give either chunk_id or citation")
        if limit > self.settings.max_results:
            raise invalid(f"limit: at most {self.settings.max_results} (mcp.max_results), got {limit}")
        path, line = "", 0
        if citation is not None:
            raw, first, _ = _split_citation(citation)
            path, line = _path(raw, "citation"), first or 1
        deadline = (deadline_ms or self.settings.deadline_ms) / 1000
        result = self.daemon.call(
            lambda c: c.search("", k=limit, deadline=deadline, like_chunk_id=chunk_id or 0, like_path=path,
                               like_line=line, like_same_file=same_file)
        )
        return _output(citation or f"chunk:{chunk_id}", result)

    def get(
        self,
        path: Annotated[
            str | None, Field(description="Absolute path of an indexed file, or a citation path:start-end.")
        ] = None,
        from_line: Annotated[int | None, Field(ge=1, description="First line to read (1-based); default 1.")] = None,
        count: Annotated[
            int | None, Field(ge=1, le=MAX_GET_LINES, description=f"Lines to read; default {DEFAULT_GET_LINES}.")
        ] = None,
        chunk_id: Annotated[int | None, Field(ge=0, description="A search hit's chunk_id, instead of path.")] = None,
    ) -> Passage:
        if (path is None) == (chunk_id is None):
            raise invalid("give either path (with from_line and count) or chunk_id")
        if chunk_id is not None:
            return _chunk(self.daemon.call(lambda c: c.get_chunk(chunk_id)))
        assert path is not None
        return self._read(path, from_line, count)

    def _read(self, ref: str, from_line: int | None, count: int | None) -> Passage:
        cited = from_line is None and count is None
        raw, cited_from, cited_count = _split_citation(ref) if cited else (ref, None, None)
        target = _path(raw)
        first = from_line or cited_from or 1
        lines = min(count or cited_count or DEFAULT_GET_LINES, MAX_GET_LINES)
        return _lines(self.daemon.call(lambda c: c.read_file(target, from_line=first, count=lines)))

    def multi_get(
        self,
        refs: Annotated[
            list[str],
            Field(min_length=1, max_length=MAX_MULTI_GET,
                  description='Citations (path:start-end), absolute paths, or chunk ids as "chunk:812".'),
        ],
        max_lines: Annotated[
            int, Field(ge=1, le=MAX_GET_LINES, description="Most lines per reference (a bare path reads this many).")
        ] = DEFAULT_GET_LINES,
    ) -> MultiGetOutput:
        passages: list[Passage] = []
        failures: list[GetFailure] = []
        for ref in refs:
            try:
                passages.append(self._one(ref, max_lines))
            except ToolError as exc:
                failures.append(GetFailure(ref=ref, error=str(exc)))
        return MultiGetOutput(passages=passages, failures=failures)

    def _one(self, ref: str, max_lines: int) -> Passage:
        if ref.startswith("chunk:"):
            number = ref.removeprefix("chunk:")
            if not number.isdigit():
                raise invalid(f'a chunk reference is "chunk:<id>", got {ref!r}')
            return _chunk(self.daemon.call(lambda c: c.get_chunk(int(number))))
        raw, first, cited = _split_citation(ref)
        return self._read(raw, first or 1, min(cited or max_lines, max_lines))

    def status(self) -> StatusOutput:
        st = self.daemon.call(lambda c: c.status())
        return StatusOutput(
            serving=st.serving,
            version=st.version,
            files_indexed=st.files_indexed,
            files_pending=st.files_pending,
            files_failed=st.files_failed,
            chunks=st.chunks,
            embedder=st.models.embedder,
            reranker=st.models.reranker,
            degraded=list(st.degraded),
            current_file=st.current_file,
            eta_seconds=st.eta,
            shared_chunks=st.shared_chunks,
            roots=[
                RootSummary(
                    path=r.path, files_indexed=r.files_indexed, files_pending=r.files_pending,
                    files_failed=r.files_failed, watching=r.watching,
                    failures=[FailedFile(path=f.path, status=f.status, reason=f.reason) for f in r.failures],
                )
                for r in st.roots
            ],
        )


def build_server(settings: Settings) -> MCPServer[Any]:
    """An ``MCPServer`` named ``ragd`` with its read-only tools, over the daemon at ``settings.address``."""
    tools = Tools(Daemon(settings))
    server: MCPServer[Any] = MCPServer(
        "ragd", title="ragd: local retrieval", instructions=INSTRUCTIONS, version=_version(), log_level="WARNING",
    )
    for fn, title, description in (
        (tools.search, "Search local files", SEARCH_DESCRIPTION),
        (tools.get, "Read a file or chunk", GET_DESCRIPTION),
        (tools.multi_get, "Read several passages", MULTI_GET_DESCRIPTION),
        (tools.similar, "Find similar passages", SIMILAR_DESCRIPTION),
        (tools.status, "Index status", STATUS_DESCRIPTION),
    ):
        server.add_tool(fn, name=fn.__name__, title=title, description=description, annotations=_read_only(title))
    return server
