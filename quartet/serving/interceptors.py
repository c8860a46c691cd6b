"""Server interceptors: the single place where exceptions become gRPC statuses.

Servicers stay thin (decode → domain call → encode) with no try/except of their own.
`ServiceError` and `CodecError` carry client-facing messages; anything else is logged here
with its traceback and answered INTERNAL with the role, the cause and the path of the role's
log, so the user sees what failed without opening the log first.

Requests whose bytes do not decode as the method's message are answered INVALID_ARGUMENT
here too (gRPC itself would log a traceback per request and answer INTERNAL).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from quartet.codec.errors import CodecError
from quartet.security import ServerSecurity
from quartet.serving.auth import TokenAuthInterceptor
from quartet.serving.dedup import DedupInterceptor
from quartet.serving.errors import InvalidArgument, ServiceError
from quartet.serving.handlers import replace_behavior
from quartet.telemetry.grpc_tracing import TracingServerInterceptor

log = logging.getLogger("quartet.serving")

LOG_FILE_ENV = "QUARTET_LOG_FILE"
"""Set by launchers to the file a role's output goes to; named in INTERNAL messages."""
MAX_CAUSE_CHARS = 500


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if isinstance(exc, CodecError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return None


class _Undecodable:
    """What a request deserializer returns for bytes that are not the method's message."""

    def __init__(self, message_type: str, exc: Exception, size: int) -> None:
        self.error = InvalidArgument(f"request: {size} bytes do not decode as {message_type} "
                                     f"({type(exc).__name__}: {exc})")


def _tolerant(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "__name__", "the request")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            return _Undecodable(message_type, exc, len(data))

    return deserialize


def _checked(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error
    return request


def _checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        yield _checked(request)


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Maps domain exceptions raised inside any handler to status codes."""

    def __init__(self, role: str = "service", log_file: str | None = None) -> None:
        self.role = role
        self.log_file = log_file if log_file is not None else os.environ.get(LOG_FILE_ENV, "")

    def _abort(self, context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
        status = _status_of(exc)
        if status is not None:
            log.info("%s -> %s: %s", method, status[0].name, status[1])
            context.abort(status[0], status[1])
        log.exception("%s failed", method)
        cause = " ".join(str(exc).split())[:MAX_CAUSE_CHARS] or "(no message)"
        where = f"; details in {self.log_file}" if self.log_file else "; details in its log"
        context.abort(grpc.StatusCode.INTERNAL,
                      f"{self.role} {method}: internal error: {type(exc).__name__}: {cause}"
                      f"{where}")

    def _wrap(self, fn: Callable, kind: str, method: str) -> Callable:
        streaming_in = kind.startswith("stream_")

        def inputs(request_or_iterator: Any) -> Any:
            if streaming_in:
                return _checked_stream(request_or_iterator)
            return _checked(request_or_iterator)

        if kind.endswith("_stream"):
            def stream_handler(request_or_iterator: Any,
                               context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from fn(inputs(request_or_iterator), context)
                except grpc.RpcError:
                    raise
                except Exception as exc:  # noqa: BLE001 - this is the mapping point
                    self._abort(context, method, exc)

            return stream_handler

        def unary_handler(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(inputs(request_or_iterator), context)
            except grpc.RpcError:
                raise
            except Exception as exc:  # noqa: BLE001 - this is the mapping point
                self._abort(context, method, exc)

        return unary_handler

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        return replace_behavior(handler, lambda fn, kind: self._wrap(fn, kind, method))


def server_interceptors(role: str, security: ServerSecurity) -> list[grpc.ServerInterceptor]:
    """Every role's interceptor chain, outermost first (the one place it is composed): the
    tracing span sees every status, refusals included; the token check refuses before
    anything else runs; error mapping turns what the inner layers raise into statuses; dedup
    sits next to the handler so a remembered response is exactly the handler's."""
    chain: list[grpc.ServerInterceptor] = [TracingServerInterceptor()]
    if security.token:
        chain.append(TokenAuthInterceptor(security.token))
    chain.append(ErrorMappingInterceptor(role))
    chain.append(DedupInterceptor())
    return chain
