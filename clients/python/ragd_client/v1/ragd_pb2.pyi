from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Filters(_message.Message):
    __slots__ = ("path_prefixes", "globs", "extensions", "modified_after_unix_ms", "modified_before_unix_ms", "root")
    PATH_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    GLOBS_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AFTER_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_BEFORE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    path_prefixes: _containers.RepeatedScalarFieldContainer[str]
    globs: _containers.RepeatedScalarFieldContainer[str]
    extensions: _containers.RepeatedScalarFieldContainer[str]
    modified_after_unix_ms: int
    modified_before_unix_ms: int
    root: str
    def __init__(self, path_prefixes: _Optional[_Iterable[str]] = ..., globs: _Optional[_Iterable[str]] = ..., extensions: _Optional[_Iterable[str]] = ..., modified_after_unix_ms: _Optional[int] = ..., modified_before_unix_ms: _Optional[int] = ..., root: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("query", "k", "candidates", "rerank", "filters", "deadline_ms", "mode", "weights", "fusion", "like_chunk_id", "like_path", "like_line", "like_same_file")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    LIKE_CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    LIKE_PATH_FIELD_NUMBER: _ClassVar[int]
    LIKE_LINE_FIELD_NUMBER: _ClassVar[int]
    LIKE_SAME_FILE_FIELD_NUMBER: _ClassVar[int]
    query: str
    k: int
    candidates: int
    rerank: bool
    filters: Filters
    deadline_ms: int
    mode: str
    weights: _containers.ScalarMap[str, float]
    fusion: str
    like_chunk_id: int
    like_path: str
    like_line: int
    like_same_file: bool
    def __init__(self, query: _Optional[str] = ..., k: _Optional[int] = ..., candidates: _Optional[int] = ..., rerank: _Optional[bool] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., deadline_ms: _Optional[int] = ..., mode: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., fusion: _Optional[str] = ..., like_chunk_id: _Optional[int] = ..., like_path: _Optional[str] = ..., like_line: _Optional[int] = ..., like_same_file: _Optional[bool] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("chunk_id", "path", "start_line", "end_line", "page", "heading", "snippet", "score", "retrieval_score", "rerank_score", "end_page", "origin")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    START_LINE_FIELD_NUMBER: _ClassVar[int]
    END_LINE_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    HEADING_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    RERANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    END_PAGE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    path: str
    start_line: int
    end_line: int
    page: int
    heading: _containers.RepeatedScalarFieldContainer[str]
    snippet: str
    score: float
    retrieval_score: float
    rerank_score: float
    end_page: int
    origin: str
    def __init__(self, chunk_id: _Optional[int] = ..., path: _Optional[str] = ..., start_line: _Optional[int] = ..., end_line: _Optional[int] = ..., page: _Optional[int] = ..., heading: _Optional[_Iterable[str]] = ..., snippet: _Optional[str] = ..., score: _Optional[float] = ..., retrieval_score: _Optional[float] = ..., rerank_score: _Optional[float] = ..., end_page: _Optional[int] = ..., origin: _Optional[str] = ...) -> None: ...

class Models(_message.Message):
    __slots__ = ("embedder", "reranker")
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    RERANKER_FIELD_NUMBER: _ClassVar[int]
    embedder: str
    reranker: str
    def __init__(self, embedder: _Optional[str] = ..., reranker: _Optional[str] = ...) -> None: ...

class QueryUse(_message.Message):
    __slots__ = ("tokens", "windows", "tokens_embedded", "terms", "terms_used", "rerank_tokens", "like_chunk_id")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    TERMS_USED_FIELD_NUMBER: _ClassVar[int]
    RERANK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LIKE_CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    windows: int
    tokens_embedded: int
    terms: int
    terms_used: int
    rerank_tokens: int
    like_chunk_id: int
    def __init__(self, tokens: _Optional[int] = ..., windows: _Optional[int] = ..., tokens_embedded: _Optional[int] = ..., terms: _Optional[int] = ..., terms_used: _Optional[int] = ..., rerank_tokens: _Optional[int] = ..., like_chunk_id: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("stage", "hits", "timings_ms", "candidates", "reranked", "models", "degraded", "rerank_window", "query_use")
    class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STAGE_UNSPECIFIED: _ClassVar[SearchResponse.Stage]
        RETRIEVAL: _ClassVar[SearchResponse.Stage]
        RERANKED: _ClassVar[SearchResponse.Stage]
    STAGE_UNSPECIFIED: SearchResponse.Stage
    RETRIEVAL: SearchResponse.Stage
    RERANKED: SearchResponse.Stage
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STAGE_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RERANKED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    RERANK_WINDOW_FIELD_NUMBER: _ClassVar[int]
    QUERY_USE_FIELD_NUMBER: _ClassVar[int]
    stage: SearchResponse.Stage
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    timings_ms: _containers.ScalarMap[str, float]
    candidates: int
    reranked: int
    models: Models
    degraded: _containers.RepeatedScalarFieldContainer[str]
    rerank_window: int
    query_use: QueryUse
    def __init__(self, stage: _Optional[_Union[SearchResponse.Stage, str]] = ..., hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., candidates: _Optional[int] = ..., reranked: _Optional[int] = ..., models: _Optional[_Union[Models, _Mapping]] = ..., degraded: _Optional[_Iterable[str]] = ..., rerank_window: _Optional[int] = ..., query_use: _Optional[_Union[QueryUse, _Mapping]] = ...) -> None: ...

class GetChunkRequest(_message.Message):
    __slots__ = ("chunk_id",)
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    def __init__(self, chunk_id: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("chunk_id", "path", "start_line", "end_line", "heading", "text", "page", "end_page")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    START_LINE_FIELD_NUMBER: _ClassVar[int]
    END_LINE_FIELD_NUMBER: _ClassVar[int]
    HEADING_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    END_PAGE_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    path: str
    start_line: int
    end_line: int
    heading: _containers.RepeatedScalarFieldContainer[str]
    text: str
    page: int
    end_page: int
    def __init__(self, chunk_id: _Optional[int] = ..., path: _Optional[str] = ..., start_line: _Optional[int] = ..., end_line: _Optional[int] = ..., heading: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ..., page: _Optional[int] = ..., end_page: _Optional[int] = ...) -> None: ...

class ReadFileRequest(_message.Message):
    __slots__ = ("path", "from_line", "count")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FROM_LINE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    path: str
    from_line: int
    count: int
    def __init__(self, path: _Optional[str] = ..., from_line: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ReadFileResponse(_message.Message):
    __slots__ = ("path", "from_line", "lines", "total_lines")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FROM_LINE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LINES_FIELD_NUMBER: _ClassVar[int]
    path: str
    from_line: int
    lines: _containers.RepeatedScalarFieldContainer[str]
    total_lines: int
    def __init__(self, path: _Optional[str] = ..., from_line: _Optional[int] = ..., lines: _Optional[_Iterable[str]] = ..., total_lines: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchStatusRequest(_message.Message):
    __slots__ = ("interval_ms",)
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    interval_ms: int
    def __init__(self, interval_ms: _Optional[int] = ...) -> None: ...

class FailedFile(_message.Message):
    __slots__ = ("path", "status", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    status: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RootStatus(_message.Message):
    __slots__ = ("path", "files_indexed", "files_pending", "files_failed", "failures", "current_file", "watching", "suspended", "suspended_reason", "watch_problem")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILES_INDEXED_FIELD_NUMBER: _ClassVar[int]
    FILES_PENDING_FIELD_NUMBER: _ClassVar[int]
    FILES_FAILED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FILE_FIELD_NUMBER: _ClassVar[int]
    WATCHING_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_REASON_FIELD_NUMBER: _ClassVar[int]
    WATCH_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    path: str
    files_indexed: int
    files_pending: int
    files_failed: int
    failures: _containers.RepeatedCompositeFieldContainer[FailedFile]
    current_file: str
    watching: bool
    suspended: bool
    suspended_reason: str
    watch_problem: str
    def __init__(self, path: _Optional[str] = ..., files_indexed: _Optional[int] = ..., files_pending: _Optional[int] = ..., files_failed: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[FailedFile, _Mapping]]] = ..., current_file: _Optional[str] = ..., watching: _Optional[bool] = ..., suspended: _Optional[bool] = ..., suspended_reason: _Optional[str] = ..., watch_problem: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("serving", "files_indexed", "files_pending", "files_failed", "chunks", "roots", "models", "degraded", "current_file", "chunks_per_second", "tokens_per_second", "eta_seconds", "version", "writer_error", "shared_chunks", "vector_index")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    FILES_INDEXED_FIELD_NUMBER: _ClassVar[int]
    FILES_PENDING_FIELD_NUMBER: _ClassVar[int]
    FILES_FAILED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ROOTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FILE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WRITER_ERROR_FIELD_NUMBER: _ClassVar[int]
    SHARED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_INDEX_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    files_indexed: int
    files_pending: int
    files_failed: int
    chunks: int
    roots: _containers.RepeatedCompositeFieldContainer[RootStatus]
    models: Models
    degraded: _containers.RepeatedScalarFieldContainer[str]
    current_file: str
    chunks_per_second: float
    tokens_per_second: float
    eta_seconds: float
    version: str
    writer_error: str
    shared_chunks: int
    vector_index: str
    def __init__(self, serving: _Optional[bool] = ..., files_indexed: _Optional[int] = ..., files_pending: _Optional[int] = ..., files_failed: _Optional[int] = ..., chunks: _Optional[int] = ..., roots: _Optional[_Iterable[_Union[RootStatus, _Mapping]]] = ..., models: _Optional[_Union[Models, _Mapping]] = ..., degraded: _Optional[_Iterable[str]] = ..., current_file: _Optional[str] = ..., chunks_per_second: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., version: _Optional[str] = ..., writer_error: _Optional[str] = ..., shared_chunks: _Optional[int] = ..., vector_index: _Optional[str] = ...) -> None: ...

class Root(_message.Message):
    __slots__ = ("path", "configured")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    path: str
    configured: bool
    def __init__(self, path: _Optional[str] = ..., configured: _Optional[bool] = ...) -> None: ...

class AddRootRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class RemoveRootRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class RemoveRootResponse(_message.Message):
    __slots__ = ("files_removed",)
    FILES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    files_removed: int
    def __init__(self, files_removed: _Optional[int] = ...) -> None: ...

class ListRootsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRootsResponse(_message.Message):
    __slots__ = ("roots",)
    ROOTS_FIELD_NUMBER: _ClassVar[int]
    roots: _containers.RepeatedCompositeFieldContainer[Root]
    def __init__(self, roots: _Optional[_Iterable[_Union[Root, _Mapping]]] = ...) -> None: ...

class ReindexRequest(_message.Message):
    __slots__ = ("root",)
    ROOT_FIELD_NUMBER: _ClassVar[int]
    root: str
    def __init__(self, root: _Optional[str] = ...) -> None: ...

class ReindexResponse(_message.Message):
    __slots__ = ("queued",)
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    queued: int
    def __init__(self, queued: _Optional[int] = ...) -> None: ...
