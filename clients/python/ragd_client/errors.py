"""The client's exceptions, and the one place that maps gRPC status codes to them."""

from __future__ import annotations

from typing import Any

import grpc


class RagdClientError(Exception):
    """Base class. ``code`` is the ``grpc.StatusCode`` (None for errors raised before a call),
    ``details`` the server's message."""

    def __init__(self, message: str, code: Any = None, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details or message

    @property
    def code_name(self) -> str:
        """The status code's name ("INVALID_ARGUMENT"), or "" when there is none."""
        return str(getattr(self.code, "name", "")) if self.code is not None else ""


class DaemonUnavailable(RagdClientError):
    """The daemon cannot be reached (UNAVAILABLE): not running, wrong address, or shutting down."""


class InvalidArgument(RagdClientError):
    """The request was rejected (INVALID_ARGUMENT); the message names the field."""


class Unauthenticated(RagdClientError):
    """A missing or wrong bearer token (UNAUTHENTICATED)."""


class PermissionDenied(RagdClientError):
    """The request is not allowed (PERMISSION_DENIED), e.g. a path outside every root."""


class NotFound(RagdClientError):
    """The chunk, file or root does not exist (NOT_FOUND)."""


class ResourceExhausted(RagdClientError):
    """A server limit was hit (RESOURCE_EXHAUSTED): too many concurrent calls, a message too large."""


class DeadlineExceeded(RagdClientError):
    """The call did not finish within its deadline (DEADLINE_EXCEEDED)."""


class FailedPrecondition(RagdClientError):
    """The daemon cannot do this in its current state (FAILED_PRECONDITION), e.g. an empty index."""


_BY_CODE: dict[Any, type[RagdClientError]] = {
    grpc.StatusCode.UNAVAILABLE: DaemonUnavailable,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def from_rpc_error(exc: grpc.RpcError, address: str) -> RagdClientError:
    """The ``RagdClientError`` for a ``grpc.RpcError`` raised by a call to ``address``."""
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = str((details_fn() if callable(details_fn) else None) or "") or str(exc)
    cls = _BY_CODE.get(code, RagdClientError)
    if cls is DaemonUnavailable:
        message = (
            f"cannot reach the ragd daemon at {address} ({details}); "
            "is it running? Start it with `ragd serve`, or point $RAGD_ADDRESS at it"
        )
    elif cls is Unauthenticated:
        message = f"{details} (set $RAGD_TOKEN or pass token= to the client)"
    elif cls is RagdClientError:
        name = getattr(code, "name", "UNKNOWN")
        message = f"ragd call failed ({name}): {details}"
    else:
        message = details
    return cls(message, code=code, details=details)
