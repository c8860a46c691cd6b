"""Retried mutating calls are applied once: responses remembered by request id.

A client that retries a call (the connection dropped, the deadline passed while the server
was still working) sends the same `x-quartet-request-id` metadata on every attempt. This
interceptor runs a unary-response method (TrainStep, Save, BeginWeightUpdate, ...) once per
(method, request id): a duplicate that arrives while the first is running waits for it, one
that arrives later gets the remembered response. Failures are not remembered, so a retry
after an error runs again. Calls without the metadata pass straight through.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc

from quartet.serving.handlers import kind_of, replace_behavior

log = logging.getLogger("quartet.serving")

REQUEST_ID_KEY = "x-quartet-request-id"
DEFAULT_CAPACITY = 1024


class _Entry:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: Any = None
        self.error: BaseException | None = None


class ResponseCache:
    """The last `capacity` responses by key; `run(key, fn)` calls fn at most once per key
    while it succeeds."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.duplicates = 0

    def run(self, key: tuple[str, str], fn: Callable[[], Any]) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if owner:
                entry = self._entries[key] = _Entry()
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            else:
                self.duplicates += 1
                self._entries.move_to_end(key)
        if not owner:
            log.info("%s: request id %s seen before; answering with its result", *key)
            entry.done.wait()
            if entry.error is not None:
                raise entry.error
            return entry.response
        try:
            entry.response = fn()
            return entry.response
        except BaseException as exc:
            entry.error = exc
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            raise
        finally:
            entry.done.set()


def request_id_of(metadata) -> str | None:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


class DedupInterceptor(grpc.ServerInterceptor):
    """Applies `ResponseCache` to every unary-response method called with a request id."""

    def __init__(self, cache: ResponseCache | None = None) -> None:
        self.cache = cache or ResponseCache()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or kind_of(handler).endswith("_stream"):
            return handler
        request_id = request_id_of(handler_call_details.invocation_metadata)
        if not request_id:
            return handler
        key = (handler_call_details.method, request_id)

        def wrap(fn: Callable, _kind: str) -> Callable:
            return lambda request, context: self.cache.run(key, lambda: fn(request, context))

        return replace_behavior(handler, wrap)
