"""Domain errors that a service raises; one interceptor turns them into gRPC statuses.

Domain code raises e.g. `InvalidArgument("sampling.n: must be >= 1, got 0")` and never
touches grpc; the message names the field, and no stack trace reaches a client.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of errors reported to clients with a status code and this message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(ServiceError):
    """The request is well-formed but the service's state refuses it (e.g. a stale version)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    """Not ready yet (engine loading) or shutting down; the client may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class PermissionDenied(ServiceError):
    """The caller is authenticated but the request reaches outside what the service allows
    (a path outside its root, code from a directory it does not run code from)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(ServiceError):
    """A server-side failure whose message is safe and useful to show (e.g. a user's reward
    function returned the wrong number of rewards); unexpected exceptions stay generic."""

    code = grpc.StatusCode.INTERNAL
