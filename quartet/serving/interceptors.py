"""Server interceptors: the single place where exceptions become gRPC statuses.

Servicers stay thin (decode → domain call → encode) with no try/except of their own.
`ServiceError` and `CodecError` carry client-facing messages; anything else is logged here
with its traceback and answered INTERNAL with a generic message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from quartet.codec.errors import CodecError
from quartet.serving.errors import ServiceError
from quartet.telemetry.grpc_tracing import TracingServerInterceptor

log = logging.getLogger("quartet.serving")


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if isinstance(exc, CodecError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return None


def _abort(context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
    status = _status_of(exc)
    if status is None:
        log.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error ({type(exc).__name__})")
    else:
        log.info("%s -> %s: %s", method, status[0].name, status[1])
        context.abort(status[0], status[1])


def _wrap_unary(fn: Callable, method: str) -> Callable:
    def handler(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request_or_iterator, context)
        except grpc.RpcError:
            raise
        except Exception as exc:  # noqa: BLE001 - this is the mapping point
            _abort(context, method, exc)

    return handler


def _wrap_stream(fn: Callable, method: str) -> Callable:
    def handler(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(request_or_iterator, context)
        except grpc.RpcError:
            raise
        except Exception as exc:  # noqa: BLE001 - this is the mapping point
            _abort(context, method, exc)

    return handler


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Maps domain exceptions raised inside any handler to status codes."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, method))
        if handler.stream_stream:
            return handler._replace(stream_stream=_wrap_stream(handler.stream_stream, method))
        return handler


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """Every role server's interceptors, outermost first: the tracing span sees the status
    that error mapping chose."""
    return [TracingServerInterceptor(), ErrorMappingInterceptor()]
