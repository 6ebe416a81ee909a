"""The ragd exception hierarchy, and how each error reaches every transport.

Every error a user can cause or meet is a ``RagdError`` with a message that says what
went wrong and what to do. ``ERROR_TABLE`` is the one place that maps each class to its
gRPC status code, its CLI exit status and its MCP tool-error label.
"""

from __future__ import annotations

from dataclasses import dataclass


class RagdError(Exception):
    """Base class: a failure with a message meant for the user."""

    @property
    def exit_code(self) -> int:
        """The CLI's exit status for this error (from ``ERROR_TABLE``)."""
        return outcome_for(self).exit_status


class ConfigError(RagdError):
    """The configuration file or an option is invalid (exit status 2)."""


class UsageError(RagdError):
    """A request is malformed: empty query, k out of range, bad filter (exit status 2)."""


class NotFoundError(RagdError):
    """What a request names does not exist: a chunk id, a file that is not indexed, a root."""


class PermissionDeniedError(RagdError):
    """A request reaches outside what it may: a path outside the roots, a root not allowed."""


class FailedPreconditionError(RagdError):
    """The request is valid but the state does not allow it now (a file that was skipped)."""


class ResourceExhaustedError(RagdError):
    """A limit of the daemon is reached (too many open streams)."""


class CancelledError(RagdError):
    """The caller went away or its deadline passed before the answer was ready."""


class ModelNotFoundError(RagdError):
    """A configured model cannot be found locally."""


class ModelLoadError(RagdError):
    """A model was found but could not be loaded."""


class IndexEmptyError(FailedPreconditionError):
    """A search ran against an index with no chunks."""


class ExtractError(RagdError):
    """A file could not be turned into text (binary, undecodable, too large)."""


class StoreError(RagdError):
    """The catalog or the vector index is unusable."""


class StoreUnavailable(StoreError):
    """The vector store's server does not answer now: worth waiting for, unlike a mistake in
    the settings."""


@dataclass(frozen=True)
class Outcome:
    """How one kind of error reaches each transport."""

    grpc_code: str  # the name of a grpc.StatusCode
    exit_status: int  # the CLI's exit status
    mcp_label: str  # the words an MCP tool error starts with


INTERNAL = Outcome("INTERNAL", 1, "internal error")

# The first class an error is an instance of decides; RagdError last catches the rest.
ERROR_TABLE: tuple[tuple[type[Exception], Outcome], ...] = (
    (UsageError, Outcome("INVALID_ARGUMENT", 2, "invalid request")),
    (ConfigError, Outcome("INVALID_ARGUMENT", 2, "invalid request")),
    (NotFoundError, Outcome("NOT_FOUND", 1, "not found")),
    (PermissionDeniedError, Outcome("PERMISSION_DENIED", 1, "not allowed")),
    (FailedPreconditionError, Outcome("FAILED_PRECONDITION", 1, "not possible now")),
    (ResourceExhaustedError, Outcome("RESOURCE_EXHAUSTED", 1, "busy")),
    (CancelledError, Outcome("CANCELLED", 1, "cancelled")),
    (ModelNotFoundError, Outcome("UNAVAILABLE", 1, "unavailable")),
    (ModelLoadError, Outcome("UNAVAILABLE", 1, "unavailable")),
    (RagdError, INTERNAL),
)

# What a client (the CLI through the daemon, the MCP server) sees as a gRPC code, beyond the table.
_CLIENT_ONLY = {
    "UNAVAILABLE": Outcome("UNAVAILABLE", 1, "daemon unavailable"),
    "UNAUTHENTICATED": Outcome("UNAUTHENTICATED", 1, "not authenticated"),
    "DEADLINE_EXCEEDED": Outcome("DEADLINE_EXCEEDED", 1, "timed out"),
}


def outcome_for(exc: BaseException) -> Outcome:
    """The outcome of an exception raised in ragd; anything unexpected is INTERNAL."""
    for cls, outcome in ERROR_TABLE:
        if isinstance(exc, cls):
            return outcome
    return INTERNAL


def outcome_for_code(code_name: str) -> Outcome:
    """The outcome of a gRPC status code that a client received (by the code's name)."""
    if code_name in _CLIENT_ONLY:
        return _CLIENT_ONLY[code_name]
    for _, outcome in ERROR_TABLE:
        if outcome.grpc_code == code_name:
            return outcome
    return INTERNAL
