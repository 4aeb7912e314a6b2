"""Typed errors of the Runtime Server and their mapping to gRPC status codes.

Everything that fails a request raises a `ServerError` subclass; `grpc_code` is
the single place that decides which status code a client sees.
"""

from __future__ import annotations

import grpc


def show(value: object, limit: int = 64) -> str:
    """A value quoted for an error message, shortened when long."""
    text = repr(value)
    if len(text) > limit:
        size = len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else None
        extra = f" ({size} long)" if size is not None else ""
        return text[: limit - 1] + "…" + extra
    return text


class ServerError(Exception):
    """Base of all errors that end a request with a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServerError):
    """Bad input: names the field, the value and the limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, value: object, problem: str) -> None:
        super().__init__(f"{field} {show(value)}: {problem}")
        self.field = field


class AlreadyExists(ServerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class NotFound(ServerError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRange(ServerError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Aborted(ServerError):
    code = grpc.StatusCode.ABORTED


class Unavailable(ServerError):
    code = grpc.StatusCode.UNAVAILABLE


def grpc_code(err: BaseException) -> grpc.StatusCode:
    """The status code a client gets for `err` (INTERNAL for anything unexpected)."""
    if isinstance(err, ServerError):
        return err.code
    return grpc.StatusCode.INTERNAL
