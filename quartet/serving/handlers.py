"""Small helpers for server interceptors that rewrap a method's handler.

A `grpc.RpcMethodHandler` has one behaviour slot filled (unary_unary, unary_stream,
stream_unary or stream_stream); interceptors replace that slot, or the whole handler with
one of the same kind that refuses the call.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    for kind in KINDS:
        if getattr(handler, kind) is not None:
            return kind
    raise ValueError("handler has no behaviour")


def replace_behavior(handler: grpc.RpcMethodHandler,
                     wrap: Callable[[Callable, str], Callable]) -> grpc.RpcMethodHandler:
    """The handler with its behaviour replaced by `wrap(behaviour, kind)`."""
    kind = kind_of(handler)
    return handler._replace(**{kind: wrap(getattr(handler, kind), kind)})


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that answers every call with `code` (no request is read)."""

    def refuse(_request, context: grpc.ServicerContext):
        context.abort(code, details)

    def refuse_stream(_request, context: grpc.ServicerContext):
        context.abort(code, details)
        yield  # pragma: no cover - abort raises

    return replace_behavior(
        handler, lambda _fn, kind: refuse_stream if kind.endswith("_stream") else refuse)
