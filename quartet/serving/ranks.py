"""A role served by N ranks behind one gRPC endpoint: rank 0 fans each call out to the rest.

The contract (`docs/architecture.md`, "Multi-rank roles"): N processes run `quartet serve
<role>` with the same flags and `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
`MASTER_PORT` set. Rank 0 binds the gRPC port; ranks > 0 bind none and run `serve_worker`.
For every call, rank 0

1. announces a command in the rendezvous store (`quartet/rank-cmd/<seq>` = method name),
2. scatters each rank its arguments (its rows) over a gloo group of the role's ranks,
3. runs the same method on its own share, then gathers every rank's result in rank order.

Why the store and not a blocking collective for "wait for the next call": an idle service
would sit in a collective for hours and hit the group's timeout, and a worker blocked in a
collective cannot tell a quiet rank 0 from a dead one. The store lives in rank 0's process
(env:// rendezvous), so a worker that polls it also learns within `POLL_S` that rank 0 is
gone — and exits instead of hanging as an orphan.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from quartet.codec.batches import RowBatch
from quartet.sharding import contiguous

log = logging.getLogger("quartet.ranks")

CMD_PREFIX = "quartet/rank-cmd/"
ALIVE_KEY = "quartet/rank-alive"
STOPPED_KEY = "quartet/rank-stopped"
STOP = "__stop__"
POLL_S = 2.0
"""How often an idle worker checks for a command (and, with it, that rank 0 is alive)."""
COLLECTIVE_TIMEOUT_S = 1800.0
"""Longest one fanned-out call may take on any rank (a TrainStep of a large model)."""


class RankCallError(RuntimeError):
    """A rank > 0 failed a fanned-out call; names the rank and the method."""


@dataclass
class Fanout:
    """One fanned-out call as rank 0 sees it."""

    args: tuple
    """Rank 0's own arguments."""
    results: list[Any]
    """Every rank's result in rank order (rank 0's is whatever rank 0 puts there)."""


class RankGroup:
    """This process's handle on its role's ranks. A world of 1 runs calls directly."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.size = world_size
        self._seq = 0
        self._stop_requested = threading.Event()
        self.group = None
        self.store = None
        if world_size > 1:
            self.group = dist.new_group(backend="gloo",
                                        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
            self.store = _store_client()
            dist.barrier(group=self.group)

    # ---------------------------------------------------------------- rank 0
    @contextmanager
    def fanout(self, method: str, per_rank: Sequence[tuple]) -> Iterator[Fanout]:
        """Starts `<target>.<method>(*per_rank[k])` on every rank k > 0 and yields a
        `Fanout` whose `args` are rank 0's own; rank 0 does its share inside the block (it
        may differ from `method`, e.g. send the weights the others only help gather). On
        exit the workers' results fill `Fanout.results[1:]`, and the first worker error is
        raised. Rank 0 only, one call at a time (the role's lock)."""
        if self.rank != 0:
            raise RuntimeError("fanout: only rank 0 starts calls")
        if len(per_rank) != self.size:
            raise ValueError(f"per_rank: {len(per_rank)} argument tuples for {self.size} ranks")
        out = Fanout(per_rank[0], [None] * self.size)
        if self.size == 1:
            yield out
            return
        self._seq += 1
        self.store.set(f"{CMD_PREFIX}{self._seq}", method)
        received: list[Any] = [None]
        dist.scatter_object_list(received, [(method, args) for args in per_rank], src=0,
                                 group=self.group)
        gathered: list[Any] = [None] * self.size
        try:
            yield out
        finally:
            dist.gather_object((None, None), gathered, dst=0, group=self.group)
        for k, (result, error) in enumerate(gathered[1:], start=1):
            if error is not None:
                raise RankCallError(f"rank {k} of {self.size}: {method} failed: {error}")
            out.results[k] = result

    def call(self, target: Any, method: str, per_rank: Sequence[tuple]) -> list[Any]:
        """`target.<method>` on every rank with its own arguments; results in rank order."""
        with self.fanout(method, per_rank) as f:
            f.results[0] = getattr(target, method)(*f.args)
        return f.results

    def scatter_rows(self, target: Any, method: str, rows: RowBatch, *args: Any) -> list[Any]:
        """`target.<method>(share, *args)` on every rank over an equal share of `rows`; each
        rank answers a list with one item per row, and the items come back in row order.

        Shares are made equal by repeating the last row (its results dropped), because every
        rank must run the same forward passes: under ZeRO-3 each forward gathers parameters
        collectively."""
        n = len(rows)
        per = -(-n // self.size)
        extra = per * self.size - n
        padded = RowBatch(rows.rows + rows.rows[-1:] * extra,
                          rows.prompt_lengths + rows.prompt_lengths[-1:] * extra,
                          rows.row_offset)
        parts = self.call(target, method, [(padded.slice(r.start, r.stop), *args)
                                           for r in contiguous(per * self.size, self.size)])
        return [item for part in parts for item in part][:n]

    def call_all(self, target: Any, method: str, *args: Any) -> list[Any]:
        """`target.<method>(*args)` on every rank (collective work such as a checkpoint)."""
        return self.call(target, method, [args] * self.size)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Tells the workers to exit (rank 0, once, at shutdown) and waits up to `timeout_s`
        for them to read it: the store dies with this process, and a worker that finds it
        gone first would report rank 0 as lost."""
        if self.size == 1 or self.rank != 0 or self.store is None:
            return
        self._seq += 1
        self.store.set(f"{CMD_PREFIX}{self._seq}", STOP)
        deadline = time.monotonic() + timeout_s
        while self.store.add(STOPPED_KEY, 0) < self.size - 1 and time.monotonic() < deadline:
            time.sleep(0.05)

    # ---------------------------------------------------------------- ranks > 0
    def _next_command(self) -> str | None:
        """The next command's method name; None when rank 0 is gone."""
        key = f"{CMD_PREFIX}{self._seq + 1}"
        while True:
            if self._stop_requested.is_set():
                return STOP
            try:
                self.store.wait([key], timedelta(seconds=POLL_S))
                self._seq += 1
                return self.store.get(key).decode()
            except Exception:  # noqa: BLE001 - a timeout, or the store (rank 0) is gone
                try:
                    self.store.add(ALIVE_KEY, 0)
                except Exception:  # noqa: BLE001
                    # gone: expected when this rank was told to stop (SIGTERM) as well
                    return STOP if self._stop_requested.is_set() else None

    def serve_worker(self, target: Any) -> int:
        """Runs fanned-out calls on `target` until rank 0 says stop (0) or dies (1)."""
        if self.rank == 0 or self.store is None:
            raise RuntimeError("serve_worker: runs on ranks > 0 of a world > 1")
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (a launcher stopping everything) ends the loop between calls.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop_requested.set())
        # A call in progress may sit in a collective that never notices a dead peer (NCCL
        # waits for its timeout): a watchdog ends this process when rank 0's store is gone.
        threading.Thread(target=_exit_when_rank0_is_gone,
                         args=(self.rank, self._stop_requested), daemon=True,
                         name="rank0-watchdog").start()
        log.info("rank %d/%d waiting for calls from rank 0", self.rank, self.size)
        while True:
            method = self._next_command()
            if method is None:
                _say_rank0_is_gone(self.rank)
                return 1
            if method == STOP:
                self._stop_requested.set()
                log.info("rank %d: stopped; exiting", self.rank)
                with suppress(Exception):
                    self.store.add(STOPPED_KEY, 1)
                return 0
            received: list[Any] = [None]
            try:
                dist.scatter_object_list(received, None, src=0, group=self.group)
            except Exception as exc:  # noqa: BLE001 - rank 0 died mid-call
                log.error("rank %d: lost rank 0 during %s: %s", self.rank, method, exc)
                return 1
            name, args = received[0]
            outcome = _run(getattr(target, name), args)
            try:
                dist.gather_object(outcome, None, dst=0, group=self.group)
            except Exception as exc:  # noqa: BLE001
                log.error("rank %d: lost rank 0 after %s: %s", self.rank, name, exc)
                return 1


def _store_client() -> dist.TCPStore:
    """A client of the role's rendezvous store, which rank 0's process serves."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                         is_master=False, timeout=timedelta(seconds=60),
                         wait_for_workers=False)


def _say_rank0_is_gone(rank: int) -> None:
    log.error("rank %d: rank 0 is gone (its rendezvous store at %s:%s does not answer); "
              "exiting", rank, os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))


def _exit_when_rank0_is_gone(rank: int, stopping: threading.Event) -> None:
    store = _store_client()
    while not stopping.wait(POLL_S):
        try:
            store.add(ALIVE_KEY, 0)
        except Exception:  # noqa: BLE001 - the store died with rank 0
            if stopping.is_set():  # a clean stop: rank 0 may exit first
                return
            _say_rank0_is_gone(rank)
            logging.shutdown()
            os._exit(1)


def _run(fn: Callable[..., Any], args: tuple) -> tuple[Any, str | None]:
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - reported to rank 0, which raises it
        log.error("%s failed on this rank: %s", getattr(fn, "__name__", fn), exc, exc_info=True)
        return None, f"{type(exc).__name__}: {exc}"
