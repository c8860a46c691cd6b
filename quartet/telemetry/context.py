"""Trace context across threads.

OpenTelemetry keeps the current span in a `contextvars` context, which a plain
`ThreadPoolExecutor` does not carry into its workers: an RPC made from a pool thread would
start a trace of its own instead of joining the phase that submitted it.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks run in a copy of the submitter's contextvars."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)
