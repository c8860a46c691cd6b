"""The weight group: a `torch.distributed` process group between the actor's rank 0 and
every rollout worker, formed from a `TCPStore` so it needs no shared torch world.

The trainer's own world (torchrun/DeepSpeed) and the rollout engines' worlds (vLLM sets up
its own) stay untouched: this group is created directly as a `ProcessGroupGloo` (CPU) or
`ProcessGroupNCCL` (GPU) on a store hosted by rank 0, so processes that were never part of
one world can still broadcast to each other. Same code path on both backends; only the
device of the buffers differs.

A member that dies, hangs or is retired must not hold the others in a collective for the
group's timeout (600 s by default: it is also the limit of a slow bucket). gloo cannot
interrupt a posted collective (`abort()`/`shutdown()` do not wake a blocked peer, torch 2.13,
measured), so every collective here is *abandonable*: the caller polls it and gives up as
soon as the group is aborted. A group is aborted by writing `ABORT_KEY` into its store
(`WeightGroup.abort`, or `abort_weight_group` from any process that knows the address), by
any member whose collective failed, and implicitly when the store is gone (rank 0 died). An
abandoned group is never used again and never destroyed (`_leak`); its stuck work ends at
its own timeout. NCCL: `abort()` frees the communicator and its GPU kernels, and
`is_completed()` polls the GPU without blocking the CPU.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from quartet.weightsync.errors import WeightGroupAborted
from quartet.weightsync.shm import SharedSegment, accept_segment, offer_segment

log = logging.getLogger("quartet.weightsync")

BACKENDS = ("gloo", "nccl")
# Bounds a request can ask for: torch's store takes the member count as a C int and its
# timeout in milliseconds; beyond these a request is refused by name, not overflowed.
MAX_WORLD_SIZE = 1 << 16
MAX_TIMEOUT_S = 7 * 24 * 3600.0
ABORT_KEY = "abort"
"""Written (value: the reason) into a group's store to make every member leave it."""
ABORT_POLL_S = 0.5
"""How often a member blocked in a collective reads the store for `ABORT_KEY`: the most an
abort waits for one member (a store round trip each time, only while a collective runs)."""
COMPLETION_POLL_S = (1e-4, 5e-4)
"""First and longest sleep between two `is_completed()` checks of an NCCL collective: a
broadcast is seen finished at most this late. (Measured on loopback gloo before gloo waited
in slices: 2 processes, a sync's three broadcasts, median of 50: with a 10 ms cap 4.9-5.1
ms, with 0.5 ms 4.4 ms, a plain `work.wait()` 2.8-3.3 ms.)"""
GLOO_WAIT_SLICE = timedelta(milliseconds=20)
"""How long a gloo collective is waited for in one go before an abort on this member is
looked at: `work.wait(timeout)` returns the moment the collective completes (no polling
delay), and a timeout leaves the work running. A receiver waiting for a session (a replica
may begin before the actor's last mini-batch ends) wakes 50 times a second, not 2000."""
ABORT_CONNECT_S = 5.0
"""How long `abort_weight_group` tries to reach a store (it may be gone with rank 0)."""


def check_group_bounds(world_size: int, timeout_s: float) -> None:
    """ValueError naming `world_size` or `timeout_s` when outside what a group can use."""
    if not 2 <= world_size <= MAX_WORLD_SIZE:
        raise ValueError(f"world_size: must be in 2..{MAX_WORLD_SIZE} (a sender and its "
                         f"receivers), got {world_size}")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:  # also refuses NaN
        raise ValueError(f"timeout_s: must be in (0, {MAX_TIMEOUT_S:g}], got {timeout_s}")


@dataclass(frozen=True)
class WeightGroupConfig:
    """Where and how to form the group. Rank 0 is the sender (actor); it hosts the store."""

    master_address: str
    master_port: int
    world_size: int
    rank: int
    backend: str = "gloo"
    group_name: str = "weights"
    timeout_s: float = 600.0
    shared_memory: bool = False
    """gloo only: rank 0 offers, and a receiver takes, the same-host shared-memory data
    plane (`shm`); used only when every member takes it, else the sessions broadcast."""

    def __post_init__(self) -> None:
        if not self.master_address:
            raise ValueError("master_address: must not be empty")
        if not 0 < self.master_port < 65536:
            raise ValueError(f"master_port: must be in 1..65535, got {self.master_port}")
        check_group_bounds(self.world_size, self.timeout_s)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: must be in 0..{self.world_size - 1}, got {self.rank}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, "
                             f"got {self.backend!r}")

    def with_rank(self, rank: int) -> WeightGroupConfig:
        return dataclasses.replace(self, rank=rank)


class WeightGroup:
    """A formed group: `broadcast(tensor)` from rank 0, buffers on `device`.

    Every collective waits abandonably (see the module docstring): it raises
    `WeightGroupAborted` within about `ABORT_POLL_S` of an abort, and a failed collective
    aborts the group for every member."""

    def __init__(self, config: WeightGroupConfig, pg: dist.ProcessGroup, device: torch.device,
                 store: dist.Store, prefixed: dist.Store | None = None) -> None:
        self.config = config
        self.device = device
        self._pg: dist.ProcessGroup | None = pg
        self._store = store  # kept alive: rank 0 hosts it
        self._prefixed = prefixed if prefixed is not None else group_store(config, store)
        self._aborted: str | None = None
        self._abort_now = threading.Event()
        self.segment: SharedSegment | None = None
        """The same-host data plane every member agreed on when the group formed (`shm`),
        or None: sessions broadcast their buckets."""

    @property
    def rank(self) -> int:
        return self.config.rank

    @property
    def world_size(self) -> int:
        return self.config.world_size

    @property
    def aborted(self) -> str | None:
        """Why the group was aborted (it is unusable then), or None."""
        return self._aborted

    def broadcast(self, tensor: torch.Tensor, src: int = 0, check_store: bool = True) -> None:
        """In-place broadcast of `tensor` from `src` to every member (blocking, abandonable).
        Refused once the group is aborted (read from the store first: one round trip).

        `check_store=False` skips that read (only an abort known here refuses): for the
        broadcasts that follow the first one of a session within milliseconds. An abort
        posted meanwhile is still read while the broadcast blocks (every `ABORT_POLL_S`);
        one that completes first only moved bytes every member still expected."""
        pg = self._usable(check_store)
        opts = dist.BroadcastOptions()
        opts.rootRank = src
        opts.rootTensor = 0
        self._await(pg.broadcast([tensor], opts))

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM,
                   check_store: bool = True) -> None:
        """In-place all-reduce over every member (blocking, abandonable, refused once
        aborted, as `broadcast`). Unlike a broadcast, it returns on no member before every
        member entered it."""
        pg = self._usable(check_store)
        opts = dist.AllreduceOptions()
        opts.reduceOp = op
        self._await(pg.allreduce([tensor], opts))

    def _usable(self, check_store: bool) -> dist.ProcessGroup:
        """The process group, unless the group was aborted (see `broadcast`)."""
        if self._pg is None:
            raise WeightGroupAborted(self._describe(self._aborted or "closed"))
        reason = (self._abort_requested() if check_store or self._abort_now.is_set()
                  else self._aborted)
        if reason is not None:
            self._abandon(reason)
            raise WeightGroupAborted(self._describe(reason))
        return self._pg

    def barrier(self) -> None:
        self.broadcast(torch.zeros(1, dtype=torch.int64, device=self.device))

    def abort(self, reason: str) -> None:
        """Makes every member leave the group: this one at once (also a collective blocked
        on another thread), the others at their next store read. Idempotent."""
        self._mark(reason)
        self._abort_now.set()
        try:
            post_abort(self._prefixed, reason)
        except Exception:  # noqa: BLE001 - the store died with rank 0: members see it gone
            log.debug("weight group abort: store unreachable", exc_info=True)
        self._abandon(reason)

    def close(self) -> None:
        self._drop_segment()
        pg, self._pg = self._pg, None
        if pg is None:
            return
        shutdown = getattr(pg, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:  # noqa: BLE001 - best effort on teardown
                log.debug("weight group shutdown failed", exc_info=True)

    # ------------------------------------------------------------------ abandonable waits
    def _await(self, work) -> None:
        pause = COMPLETION_POLL_S[0]
        next_read = time.monotonic() + ABORT_POLL_S
        while not self._wait_a_while(work, pause):
            pause = min(pause * 2, COMPLETION_POLL_S[1])
            reason = self._abort_requested() if (self._abort_now.is_set()
                                                 or time.monotonic() >= next_read) else None
            if reason is not None:
                self._abandon(reason)
                raise WeightGroupAborted(self._describe(reason))
            if time.monotonic() >= next_read:
                next_read = time.monotonic() + ABORT_POLL_S
        try:
            work.wait()
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise plain RuntimeErrors
            reason = (f"a collective failed on rank {self.rank} "
                      f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})")
            self.abort(reason)  # the others must not wait for the group's timeout
            raise WeightGroupAborted(self._describe(reason)) from exc

    def _wait_a_while(self, work, pause: float) -> bool:
        """Whether `work` completed (or failed) after waiting up to `GLOO_WAIT_SLICE`
        (gloo: blocked in the work itself, woken the moment it completes) or `pause` (NCCL:
        `is_completed()` polls the device without blocking the CPU)."""
        if self.config.backend != "gloo":
            time.sleep(pause)
            return work.is_completed()
        try:
            work.wait(GLOO_WAIT_SLICE)
        except RuntimeError:  # "Operation timed out!", or the work failed: completed then
            return work.is_completed()
        return True

    def _abort_requested(self) -> str | None:
        """The abort reason: local, in the store, or the store gone (rank 0 died)."""
        if self._aborted is not None:
            return self._aborted
        reason = posted_abort(self._prefixed, self.config)
        if reason is not None:
            return reason
        return "aborted on this member" if self._abort_now.is_set() else None

    def _mark(self, reason: str) -> None:
        if self._aborted is None:
            self._aborted = reason
            log.warning("%s", self._describe(reason))

    def _drop_segment(self) -> None:
        segment, self.segment = self.segment, None
        if segment is not None:
            segment.close()  # views a loader still holds keep their mapping

    def _abandon(self, reason: str) -> None:
        self._mark(reason)
        self._drop_segment()
        pg, self._pg = self._pg, None
        if pg is None:
            return
        if self.config.backend == "nccl":  # frees the communicator and its GPU kernels
            try:
                pg.abort()
            except Exception:  # noqa: BLE001 - best effort: the group is dropped anyway
                log.debug("weight group abort() failed", exc_info=True)
        # (gloo's abort() interrupts nothing and may block behind the posted collective)
        _leak(pg)

    def _describe(self, reason: str) -> str:
        c = self.config
        return (f"weight group {c.group_name} (rank {c.rank} of {c.world_size}, store "
                f"{c.master_address}:{c.master_port}) aborted: {reason}")


def _leak(pg: dist.ProcessGroup) -> None:
    """Keeps an abandoned process group for the life of the process, never destroyed. Its
    destructor joins the worker still blocked in the posted collective (until the group's
    timeout: up to 10 min on a thread that must go on), and on a daemon thread one that
    returns while the interpreter exits aborts the process (measured: "terminate called
    without an active exception"). What it holds (sockets, the posted buffer until its
    collective times out) is the cost of one failed session."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(pg))


def group_store(config: WeightGroupConfig, store: dist.Store) -> dist.Store:
    """The group's keys inside `store` (one prefix per group name)."""
    return dist.PrefixStore(f"quartet/{config.group_name}/", store)


def posted_abort(store: dist.Store, config: WeightGroupConfig, when: str = "") -> str | None:
    """The reason written under `ABORT_KEY` in a group's `store`, one naming the store if it
    is gone (rank 0 died), or None. `when` says what the member was doing (for the
    message)."""
    try:
        if store.check([ABORT_KEY]):
            return store.get(ABORT_KEY).decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - DistNetworkError and the like
        return (f"its store at {config.master_address}:{config.master_port} is gone{when} "
                f"(rank 0, the actor, died or left: {type(exc).__name__})")
    return None


def post_abort(store: dist.Store, reason: str) -> None:
    """Writes the abort into a group's store; the first reason stays (it names the cause)."""
    store.compare_set(ABORT_KEY, "", reason)


def abort_weight_group(config: WeightGroupConfig, reason: str) -> bool:
    """Aborts the group at `config`'s store from any process (a rollout whose session was
    aborted, the coordinator). False when the store cannot be reached: it is gone, so the
    members leave anyway (a store that is gone aborts the group)."""
    try:
        client = dist.TCPStore(config.master_address, config.master_port, is_master=False,
                               timeout=timedelta(seconds=ABORT_CONNECT_S),
                               wait_for_workers=False)
        post_abort(group_store(config, client), reason)
    except Exception as exc:  # noqa: BLE001 - DistNetworkError, TimeoutError, ...
        log.info("weight group %s at %s:%d: not aborted through its store (%s: %s); it is "
                 "gone, so its members leave it anyway", config.group_name,
                 config.master_address, config.master_port, type(exc).__name__, exc)
        return False
    return True


ADVERTISE_HOST_ENV = "QUARTET_ADVERTISE_HOST"


def advertised_host() -> str:
    """The address other hosts reach this process at: `QUARTET_ADVERTISE_HOST` (launchers
    set it: the node's IP under Ray) or loopback."""
    return os.environ.get(ADVERTISE_HOST_ENV) or "127.0.0.1"


def check_local_address(address: str) -> None:
    """ValueError naming `master_address` unless `address` resolves to an address this host
    can bind (a name or IP of one of its interfaces)."""
    try:
        family, kind, proto, _name, sockaddr = socket.getaddrinfo(
            address, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(sockaddr)
    except (OSError, UnicodeError, ValueError) as exc:
        raise ValueError(f"master_address: {address[:80]!r} is not an address of this host "
                         f"({type(exc).__name__}: {exc})") from exc


def host_store(address: str, world_size: int, timeout_s: float) -> dist.TCPStore:
    """Rank 0's rendezvous store on a port the OS picks on this host (read `.port`).

    Opened before any member joins, so the address and port come from the sender's host
    and the coordinator may run anywhere. `address` must be one of this host's own: the
    store's own client connects to it, and to a name that does not resolve here it would
    retry for the whole `timeout_s`."""
    check_group_bounds(world_size, timeout_s)
    check_local_address(address)
    return dist.TCPStore(address, 0, world_size, is_master=True,
                         timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def init_weight_group(config: WeightGroupConfig, device: torch.device | None = None,
                      store: dist.Store | None = None) -> WeightGroup:
    """Joins (rank > 0) or hosts (rank 0) the group; blocks until all `world_size` joined.

    Every member must call this concurrently (e.g. the coordinator asks the actor and each
    rollout replica at the same time). Rank 0 may pass the `store` it opened with
    `host_store` (its port is then `config.master_port`). `device` defaults to the current
    CUDA device for NCCL and to CPU for gloo.
    """
    timeout = timedelta(seconds=config.timeout_s)
    store = store or dist.TCPStore(
        config.master_address,
        config.master_port,
        config.world_size,
        is_master=config.rank == 0,
        timeout=timeout,
        wait_for_workers=False,
    )
    prefixed = group_store(config, store)
    gloo = config.backend == "gloo"
    # rank 0 offers its segment before it counts itself in: every member finds the offer
    # once all are in
    offer = (offer_segment(prefixed, config.shared_memory)
             if gloo and config.rank == 0 else None)
    try:
        await_members(prefixed, config)
        if not gloo:
            if not torch.cuda.is_available():
                raise ValueError("backend: nccl needs a CUDA device; use gloo on CPU")
            device = device or torch.device("cuda", torch.cuda.current_device())
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            pg: dist.ProcessGroup = dist.ProcessGroupNCCL(
                prefixed, config.rank, config.world_size, opts
            )
        else:
            device = device or torch.device("cpu")
            pg = dist.ProcessGroupGloo(prefixed, config.rank, config.world_size, timeout)
        group = WeightGroup(config, pg, device, store, prefixed)
        # One collective proves every member is there (NCCL connects lazily otherwise);
        # on gloo it is the one that agrees on the shared-memory plane.
        if gloo:
            group.segment = agree_on_segment(group, prefixed,
                                             offer.segment if offer is not None else None)
        else:
            group.barrier()
    except BaseException:
        if offer is not None:
            offer.segment.close()
        raise
    finally:
        if offer is not None:
            offer.withdraw()  # every member that took it holds it open now
    log.info("weight group %s formed: rank %d of %d (%s, %s%s)", config.group_name,
             config.rank, config.world_size, config.backend, device,
             ", same-host shared memory" if group.segment is not None else "")
    return group


def agree_on_segment(group: WeightGroup, store: dist.Store,
                     offered: SharedSegment | None) -> SharedSegment | None:
    """Every member's say on the same-host plane, in one all-reduce (MIN): the segment
    when all took it, else None on every member (the sessions broadcast)."""
    segment = offered if group.rank == 0 else accept_segment(store,
                                                              group.config.shared_memory)
    takes = torch.tensor([int(segment is not None)], dtype=torch.int64)
    try:
        group.all_reduce(takes, dist.ReduceOp.MIN)
    except BaseException:
        if segment is not None and segment is not offered:
            segment.close()
        raise
    if takes.item() == 1:
        return segment
    if segment is not None:
        segment.close()
    return None


JOINED_KEY = "joined"
"""Counts the members that reached `init_weight_group` (an atomic add in the store)."""
JOIN_POLL_S = (1e-3, 0.05)
"""First and longest sleep between two reads of the join count while a group forms."""


def await_members(store: dist.Store, config: WeightGroupConfig) -> None:
    """Counts this member in and waits, abandonably, until all `world_size` are in.

    The backend's own rendezvous (inside the `ProcessGroupGloo`/`ProcessGroupNCCL`
    constructor) cannot be interrupted: a member that died or was never started would hold
    the others there for the group's timeout. Waiting here first, on a count in the store,
    lets the others leave as soon as the group is aborted (the coordinator does when a
    member's join fails) or its store is gone (rank 0 died). The window left is a member
    dying between this count and the constructor, a few milliseconds."""
    store.add(JOINED_KEY, 1)
    deadline = time.monotonic() + config.timeout_s
    pause = JOIN_POLL_S[0]
    joined = 0
    while True:
        try:
            joined = store.add(JOINED_KEY, 0)
        except Exception:  # noqa: BLE001 - DistNetworkError: posted_abort names it below
            pass
        else:
            if joined >= config.world_size:
                return
        aborted = posted_abort(store, config, " while the group formed")
        if aborted is not None:
            raise WeightGroupAborted(
                f"weight group {config.group_name} (rank {config.rank} of "
                f"{config.world_size}) did not form, {joined} of {config.world_size} members "
                f"joined: {aborted}")
        if time.monotonic() >= deadline:
            raise WeightGroupAborted(
                f"weight group {config.group_name} (rank {config.rank} of "
                f"{config.world_size}, store {config.master_address}:{config.master_port}) "
                f"did not form within timeout_s={config.timeout_s:g}: {joined} of "
                f"{config.world_size} members joined; the missing ones' logs say why")
        time.sleep(pause)
        pause = min(pause * 2, JOIN_POLL_S[1])
