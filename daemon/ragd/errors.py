"""The ragd exception hierarchy.

Every error a user can cause or meet is a ``RagdError`` with a message that says what
went wrong and what to do; the CLI maps the classes to exit statuses and the server
(later) to gRPC status codes, each in one place.
"""

from __future__ import annotations


class RagdError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code = 1


class ConfigError(RagdError):
    """The configuration file or an option is invalid (exit status 2)."""

    exit_code = 2


class UsageError(RagdError):
    """A request is malformed: empty query, k out of range, bad filter (exit status 2)."""

    exit_code = 2


class ModelNotFoundError(RagdError):
    """A configured model cannot be found locally."""


class ModelLoadError(RagdError):
    """A model was found but could not be loaded."""


class IndexEmptyError(RagdError):
    """A search ran against an index with no chunks."""


class ExtractError(RagdError):
    """A file could not be turned into text (binary, undecodable, too large)."""


class StoreError(RagdError):
    """The catalog or the vector index is unusable."""
