"""Request streams of one message leave as unary requests: same method, same bytes.

Every scoring and training RPC takes a request stream (`TrainStep`, `LogProbs`, `Values`,
`Score`), so that a batch over the chunk size can be sent in row slices. Most batches fit in
one slice, though, and grpc python's synchronous client starts a thread per call to consume
a request iterator, then hands every message from that thread to its completion queue. On
the wire a unary request is exactly a stream that carries one message and closes (HTTP/2
frames are the same; the server's streaming handler reads one message and the end), so
`RequestStreamMethod` sends a stream that turns out to hold one message through the unary
form of the same method and skips that thread. Measured on the 2-core host (loopback, one
process, 30 kB request, median of 300): a client-streaming call 0.70 ms vs 0.35 ms sent as
unary; a bidirectional one 1.79 vs 0.79 ms (docs/benchmarks.md, "Eighth pass (rpc)").

The server is unchanged and cannot tell the two apart; streams of several messages still
stream.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

S = TypeVar("S")
_NOTHING = object()


class RequestStreamMethod:
    """A client-streaming or bidirectional method, called like the generated stub's one
    (`method(requests, timeout=..., metadata=...)`); one message goes out as unary."""

    def __init__(self, channel: grpc.Channel, method: MethodDescriptor) -> None:
        if not method.client_streaming:
            raise ValueError(f"{method.full_name}: takes one request, not a stream")
        path = f"/{method.containing_service.full_name}/{method.name}"
        serialize = GetMessageClass(method.input_type).SerializeToString
        deserialize = GetMessageClass(method.output_type).FromString
        if method.server_streaming:
            self._stream = channel.stream_stream(path, serialize, deserialize,
                                                 _registered_method=True)
            self._single = channel.unary_stream(path, serialize, deserialize,
                                                _registered_method=True)
        else:
            self._stream = channel.stream_unary(path, serialize, deserialize,
                                                _registered_method=True)
            self._single = channel.unary_unary(path, serialize, deserialize,
                                               _registered_method=True)

    def __call__(self, requests: Iterable[Any], **kwargs: Any) -> Any:
        """Reads up to two requests ahead: one alone goes as a unary request, more as the
        stream they are (the rest still read lazily, as grpc's consumer thread reads)."""
        it = iter(requests)
        first = next(it, _NOTHING)
        second = next(it, _NOTHING) if first is not _NOTHING else _NOTHING
        if first is not _NOTHING and second is _NOTHING:
            return self._single(first, **kwargs)
        head = [m for m in (first, second) if m is not _NOTHING]
        return self._stream(itertools.chain(head, it), **kwargs)


def unary_when_single(stub: S, channel: grpc.Channel, service: ServiceDescriptor) -> S:
    """`stub` (a generated `<Role>Stub` on `channel`) with each request-streaming method
    replaced by a `RequestStreamMethod` of the same name; the other methods stay."""
    for method in service.methods:
        if method.client_streaming:
            setattr(stub, method.name, RequestStreamMethod(channel, method))
    return stub
