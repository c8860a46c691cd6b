"""Pipelined training steps apply in the order the coordinator sent them, or not at all.

The coordinator sends mini-batch k+1's `TrainStep` before k's reply is back, so the server
has it decoded and waiting the moment step k ends (over gRPC that turnaround — reply out,
coordinator wakes, next request in, decoded — was 5-8 ms per step on the 2-core host,
docs/benchmarks.md "Eighth pass (rpc)"). The two calls travel on separate HTTP/2 streams and
run on separate handler threads, so nothing in gRPC orders them: the request says which step
it follows (`RequestHeader.after_request_id`), and `StepOrder` holds it until that step has
applied. The rule after a failure: a step whose predecessor failed is not applied; it fails
too, and its error names the role, both steps and the first failure, so no later step of a
phase ever applies on top of a missing one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from quartet.serving.errors import FailedPrecondition
from quartet.v1 import common_pb2

T = TypeVar("T")
UNSEEN_WAIT_S = 60.0
"""How long a step waits for the step it follows to arrive at all: both leave the
coordinator within milliseconds, so a minute without it means it was never sent."""
CAPACITY = 256


class _Step:
    def __init__(self) -> None:
        self.done = False
        self.error: str | None = None


class StepOrder:
    """The outcome of a role's recent training steps by request id; `run` applies a step
    after the one it follows."""

    def __init__(self, role: str, unseen_wait_s: float = UNSEEN_WAIT_S,
                 capacity: int = CAPACITY) -> None:
        self.role = role
        self.unseen_wait_s = unseen_wait_s
        self.capacity = capacity
        self._steps: OrderedDict[str, _Step] = OrderedDict()
        self._changed = threading.Condition()

    def run(self, header: common_pb2.RequestHeader, step: Callable[[], T]) -> T:
        """`step()` once the step named by `header.after_request_id` has applied (at once
        when the header names none); its outcome is kept for the step that follows it.
        Raises FailedPrecondition, without calling `step`, when the step it follows failed
        or did not arrive within `unseen_wait_s`."""
        mine = self._arrived(header.request_id) if header.request_id else None
        try:
            if header.after_request_id:
                self._wait_for(header.after_request_id, header.request_id)
            result = step()
        except BaseException as exc:
            self._finish(mine, f"{type(exc).__name__}: {exc}")
            raise
        self._finish(mine, None)
        return result

    def queued(self) -> list[str]:
        """Request ids of the steps that arrived and have not ended (running or waiting)."""
        with self._changed:
            return [rid for rid, step in self._steps.items() if not step.done]

    def _arrived(self, request_id: str) -> _Step:
        with self._changed:
            entry = self._steps[request_id] = _Step()  # a retry starts over
            self._steps.move_to_end(request_id)
            while len(self._steps) > self.capacity:
                self._steps.popitem(last=False)
            self._changed.notify_all()
        return entry

    def _finish(self, entry: _Step | None, error: str | None) -> None:
        if entry is None:
            return
        with self._changed:
            entry.done, entry.error = True, error
            self._changed.notify_all()

    def _wait_for(self, before: str, request_id: str) -> None:
        what = f"{self.role}: TrainStep {request_id or '(no request id)'}"
        deadline = time.monotonic() + self.unseen_wait_s
        with self._changed:
            while (entry := self._steps.get(before)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FailedPrecondition(
                        f"{what} not applied: it follows step {before}, which did not reach "
                        f"this {self.role} within {self.unseen_wait_s:g} s")
                self._changed.wait(left)
            while not entry.done:  # however long that step trains
                self._changed.wait()
        if entry.error is not None:
            raise FailedPrecondition(f"{what} not applied: the step it follows, {before}, "
                                     f"failed: {entry.error}")
