"""Shared server machinery of every role: errors, interceptors, the RoleServer."""

from quartet.serving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from quartet.serving.server import DEFAULT_MAX_MESSAGE_BYTES, RoleServer

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RoleServer",
    "ServiceError",
    "Unavailable",
]
