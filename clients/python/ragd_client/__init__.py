"""Python client for the ragd daemon.

Imports only grpc, protobuf and the standard library (never torch, numpy or the daemon's
``ragd`` package), so ``import ragd_client`` is cheap. See docs/api.md.

    from ragd_client import Client

    with Client() as ragd:
        result = ragd.search("where is the writer lock taken", k=5)
        for hit in result.hits:
            print(f"{hit.path}:{hit.start_line}  {hit.score:.3f}  {hit.snippet}")
"""

from __future__ import annotations

from ragd_client.address import default_address, default_socket_path, normalize_address
from ragd_client.aio import AsyncClient
from ragd_client.client import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES, Client
from ragd_client.errors import (
    DaemonUnavailable,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RagdClientError,
    ResourceExhausted,
    Unauthenticated,
)
from ragd_client.types import (
    Chunk,
    FailedFile,
    FileLines,
    Hit,
    Models,
    QueryUse,
    Root,
    RootStatus,
    SearchResult,
    Stage,
    Status,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "AsyncClient",
    "Chunk",
    "Client",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "FailedFile",
    "FailedPrecondition",
    "FileLines",
    "Hit",
    "InvalidArgument",
    "Models",
    "NotFound",
    "PermissionDenied",
    "QueryUse",
    "RagdClientError",
    "ResourceExhausted",
    "Root",
    "RootStatus",
    "SearchResult",
    "Stage",
    "Status",
    "Unauthenticated",
    "default_address",
    "default_socket_path",
    "normalize_address",
]
