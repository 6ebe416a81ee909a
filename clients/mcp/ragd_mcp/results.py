"""The tools' typed results: pydantic models, so every tool publishes an output schema."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SearchHit(BaseModel):
    """One passage found by ``search``."""

    citation: str = Field(description="Where the passage is, as path:start_line-end_line; quote it when citing.")
    path: str = Field(description="Absolute path of the file.")
    start_line: int = Field(description="First line of the passage (1-based).")
    end_line: int = Field(description="Last line of the passage (inclusive).")
    page: int = Field(description="Page of a paged document (PDF); 0 when the format has no pages.")
    end_page: int = Field(description="Last page the passage reaches; 0 when the format has no pages.")
    heading: list[str] = Field(description="Headings the passage sits under, outermost first.")
    score: float = Field(description="Ranking score: the reranker's when reranked (0..1), else retrieval's.")
    rerank_score: float | None = Field(description="The cross-encoder's score in [0, 1]; null when not reranked.")
    snippet: str = Field(description="The passage text, shortened.")
    chunk_id: int = Field(description="Pass to `get` (chunk_id) for the passage's full text.")
    origin: str = Field(default="", description="Set when another ragd daemon sharing the index holds the passage "
                        "(its name): `get` and file reads of it fail here; empty for this daemon's own.")


class SearchOutput(BaseModel):
    """The answer of ``search``: best passages first."""

    query: str
    hits: list[SearchHit]
    candidates: int = Field(description="Candidates retrieval found before filtering and reranking.")
    reranked: int = Field(description="How many candidates the cross-encoder scored (0: retrieval order only).")
    degraded: list[str] = Field(
        description="Why the answer is less than configured (e.g. the deadline left no time to rerank); empty if not."
    )
    elapsed_ms: float = Field(description="Time the daemon spent on the search.")


class Passage(BaseModel):
    """Text from an indexed file: a line range (``path``) or one chunk (``chunk_id``)."""

    citation: str = Field(description="path:start_line-end_line of the text returned.")
    path: str
    start_line: int = Field(description="First line returned (1-based).")
    end_line: int = Field(description="Last line returned; start_line - 1 when none was.")
    total_lines: int | None = Field(description="Lines in the file's extracted text; null for a chunk.")
    next_line: int | None = Field(description="Pass as from_line to read on; null at the end of the file or a chunk.")
    page: int = Field(description="Page of a paged document; 0 when not paged or unknown.")
    end_page: int = Field(description="Last page of the text; 0 when not paged or unknown.")
    heading: list[str] = Field(description="Headings of the chunk, outermost first; empty for a line range.")
    chunk_id: int | None = Field(description="The chunk's id; null for a line range.")
    text: str = Field(description="The lines, joined with newlines.")


class GetFailure(BaseModel):
    """One reference ``multi_get`` could not read."""

    ref: str
    error: str


class MultiGetOutput(BaseModel):
    """The answer of ``multi_get``: each readable reference's text, and why the others failed."""

    passages: list[Passage]
    failures: list[GetFailure]


class FailedFile(BaseModel):
    path: str
    status: str = Field(description="skipped (not indexable, e.g. binary) or failed (an error).")
    reason: str


class RootSummary(BaseModel):
    path: str
    files_indexed: int
    files_pending: int
    files_failed: int
    watching: bool = Field(description="Whether changes in this folder are picked up live.")
    failures: list[FailedFile] = Field(description="Up to 20 files that were not indexed, with the reason.")


class StatusOutput(BaseModel):
    """The daemon's state: what is indexed and searchable, and with which models."""

    serving: bool = Field(description="False while the daemon loads its models; searches then wait.")
    version: str
    files_indexed: int
    files_pending: int = Field(description="Files waiting to be indexed; not yet searchable.")
    files_failed: int
    chunks: int
    embedder: str
    reranker: str | None = Field(description="The cross-encoder; null when reranking is off.")
    degraded: list[str] = Field(description="Why ragd runs with less than configured; empty if not.")
    current_file: str | None = Field(description="The file being indexed now, if any.")
    eta_seconds: float | None = Field(description="Estimated seconds until pending files are indexed.")
    shared_chunks: int = Field(0, description="Chunks of other ragd daemons sharing this index, searched too; "
                                              "their hits name their origin.")
    roots: list[RootSummary] = Field(description="The indexed folders: only files inside them can be searched or read.")
