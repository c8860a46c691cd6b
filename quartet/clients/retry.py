"""Deadlines and retries for role calls, in one place for every client.

Every call gets a deadline. A call that fails with a transient status (UNAVAILABLE: the
connection dropped or the service is restarting; ABORTED) is tried again after an
exponential backoff with jitter. Each logical call carries one `x-quartet-request-id`
metadata value on all its attempts; servers remember unary responses by it
(`quartet.serving.dedup`), so a retried TrainStep or Save is applied once even when the
first attempt did reach the service.

DEADLINE_EXCEEDED is not retried: the deadline is the caller's budget for the call.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from quartet.serving.dedup import REQUEST_ID_KEY

log = logging.getLogger("quartet.clients")
T = TypeVar("T")

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried."""

    attempts: int = 4
    """Tries in all (1: no retry)."""
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts: must be >= 1, got {self.attempts}")

    def backoff_s(self, retry: int) -> float:
        """Sleep before retry number `retry` (1-based): full jitter up to the capped step."""
        step = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return random.uniform(step / 2, step)


NO_RETRY = RetryPolicy(attempts=1)


def new_request_id() -> str:
    return uuid.uuid4().hex


def call_with_retry(
    fn: Callable[..., T],
    request: Any,
    *,
    timeout_s: float,
    policy: RetryPolicy,
    what: str,
    request_id: str | None = None,
    collect: bool = False,
) -> T:
    """`fn(request, timeout=..., metadata=...)` with retries on transient statuses.

    A request iterator (client streaming) is materialised first (when retries are allowed)
    so every attempt sends the same messages. `collect=True` reads a response stream to a
    list inside the attempt, so a stream that breaks half way is retried whole. Raises the
    last `grpc.RpcError`.
    """
    streaming_in = isinstance(request, Iterable) and not hasattr(request, "SerializeToString")
    if streaming_in and policy.attempts > 1:
        request = list(request)
    metadata = ((REQUEST_ID_KEY, request_id or new_request_id()),)
    attempt = 0
    while True:
        attempt += 1
        try:
            arg = iter(request) if streaming_in else request
            result = fn(arg, timeout=timeout_s, metadata=metadata)
            return list(result) if collect else result  # type: ignore[return-value]
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code not in TRANSIENT or attempt >= policy.attempts:
                raise
            pause = policy.backoff_s(attempt)
            log.warning("%s failed with %s (%s); retry %d/%d in %.1fs", what, code.name,
                        exc.details(), attempt, policy.attempts - 1, pause)
            time.sleep(pause)
