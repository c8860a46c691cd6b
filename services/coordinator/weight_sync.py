"""How the coordinator moves actor weights into every rollout replica after an update.

`GroupWeightSync` is the default: the control plane runs over gRPC (manifest → begin on each
replica → actor broadcast → finish on each replica) and the bytes travel over a
`torch.distributed` group whose rank 0 is the actor (NCCL on GPU, gloo on CPU).
`StreamedWeightSync` is the fallback when no group can be formed: the coordinator relays the
actor's chunk stream into each replica's PushWeights call.

Both survive role restarts the same way (`WeightSync`): a restarted (or newly arrived)
rollout replica is brought to the current weights alone with `bring_up` over the streamed
path, before it serves, and the group is re-formed before the next broadcast; a replica that
cannot come back is dropped with `retire`; after the actor restarts, `reform` re-forms the
group. Policy versions go back on a rewind to a checkpoint while a replica only accepts newer
ones, so the versions on the wire are `WireVersions`, counting up for the whole run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from quartet.clients.actor import GrpcActorClient
from quartet.clients.base import RoleCallError
from quartet.clients.rollout import (
    GrpcRolloutClient,
    JoinWatch,
    OpenUpdate,
    ReplicaInfo,
    abort_sessions,
    await_joins,
    begin_update,
    complete_update,
    push_to_replica,
)
from quartet.codec.dtypes import float_dtype
from quartet.telemetry import ContextThreadPoolExecutor
from quartet.v1 import common_pb2, rollout_pb2
from quartet.weightsync import TensorSpec, WeightGroupConfig, abort_weight_group

log = logging.getLogger("quartet.coordinator")


class WireVersions:
    """The loop's policy versions (checkpointed, rewound on a restart) and the versions the
    replicas see (only ever increasing): `wire = version + offset`."""

    def __init__(self) -> None:
        self.offset = 0
        self.last_wire = 0

    def next_wire(self, version: int) -> int:
        """The wire version of a new update to `version`; bumps the offset after a rewind."""
        wire = version + self.offset
        if wire <= self.last_wire:
            self.offset = self.last_wire + 1 - version
            wire = self.last_wire + 1
        self.last_wire = wire
        return wire

    def to_wire(self, version: int) -> int:
        return version + self.offset

    def from_wire(self, wire: int) -> int:
        return wire - self.offset


class WeightSync:
    """What both data planes share: the manifest, versions, and per-replica recovery."""

    def __init__(self, actor: GrpcActorClient, rollouts: Sequence[GrpcRolloutClient],
                 dtype: str = "float32", chunk_bytes: int = 4 << 20, run_id: str = "") -> None:
        self.actor = actor
        self.header = common_pb2.RequestHeader(run_id=run_id)
        self.rollouts = list(rollouts)
        float_dtype(dtype, "vllm.dtype")
        self.dtype = dtype
        self.chunk_bytes = chunk_bytes
        self.versions = WireVersions()
        self._specs: list[TensorSpec] | None = None

    def setup(self) -> None:
        return None

    def reform(self) -> None:
        """The actor or a replica restarted: the data plane must be rebuilt before the next
        update (nothing to do for the streamed path)."""

    def stamp(self, version: int, iteration: int | None) -> None:
        """Weight RPCs from now on name the iteration whose update they carry, so a trace
        hangs them under that iteration (and a catch-up of a restarted replica under the
        last one)."""
        if iteration is not None:
            self.header = common_pb2.RequestHeader(run_id=self.header.run_id,
                                                   iteration=iteration,
                                                   policy_version=version)

    def manifest(self) -> list[TensorSpec]:
        """Names, dtypes and shapes of the actor's weights: fixed for a run, so asked once
        (under ZeRO-3 answering it gathers every parameter)."""
        if self._specs is None:
            self._specs = self.actor.weight_manifest(self.dtype)
        return self._specs

    def push_streamed(self, rollout: GrpcRolloutClient, wire_version: int) -> float:
        """The actor's weights relayed into one replica's PushWeights; returns load seconds."""
        specs = self.manifest()

        def requests():
            yield rollout_pb2.PushWeightsRequest(header=self.header, version=wire_version,
                                                 tensors=[s.to_proto() for s in specs])
            for chunk in self.actor.stream_weights(self.chunk_bytes, self.dtype):
                yield rollout_pb2.PushWeightsRequest(chunk=chunk)

        return push_to_replica(rollout, requests()).load_seconds

    def set_rollouts(self, rollouts: Sequence[GrpcRolloutClient]) -> None:
        """The replicas the next update goes to (cluster mode: they come and go)."""
        self.rollouts = list(rollouts)
        self.reform()

    def catch_up(self, rollout: GrpcRolloutClient, version: int) -> float:
        """Brings one replica (new, or restarted) to policy `version` alone, before it serves;
        the others keep serving. Returns the seconds it took (0 when it already serves it)."""
        start = time.perf_counter()
        wire = self.versions.to_wire(version)
        if self.serves(rollout.info(), wire):
            return 0.0
        self.push_streamed(rollout, wire)
        return time.perf_counter() - start

    def serves(self, info: ReplicaInfo, wire: int) -> bool:
        """Whether a replica already holds wire version `wire` of this run or a newer one.
        Versions count per run: one that last served another run holds none of this run's
        versions (a replica that never took an update holds the initial weights, version 0
        of any run)."""
        fresh = not info.run_id and info.weight_version == 0
        if info.run_id != self.header.run_id and not fresh:
            return False
        return info.weight_version >= wire

    def bring_up(self, address: str) -> None:
        """The replica that restarted at `address` gets the current weights (`catch_up`);
        the group is re-formed before the next update."""
        replica = next((r for r in self.rollouts if r.address == address), None)
        if replica is None:
            raise KeyError(f"no rollout replica at {address} in the weight sync")
        seconds = self.catch_up(replica, self.versions.from_wire(self.versions.last_wire))
        log.info("rollout at %s brought to weight version %d alone in %.1fs", address,
                 self.versions.last_wire, seconds)
        self.reform()

    def retire(self, address: str) -> None:
        """Stops sending weights to the replica at `address` (it is gone for good)."""
        self.rollouts = [r for r in self.rollouts if r.address != address]
        self.reform()


def weight_group_ranks(workers_per_replica: Sequence[int]) -> tuple[int, list[int]]:
    """(world size, first rank of each replica): the actor is rank 0 and every worker of
    every replica (each tensor-parallel worker) holds its own rank after it."""
    firsts, nxt = [], 1
    for n in workers_per_replica:
        if n < 1:
            raise ValueError(f"workers_per_replica: must be >= 1, got {n}")
        firsts.append(nxt)
        nxt += n
    return nxt, firsts


class GroupWeightSync(WeightSync):
    """`workers_per_replica`: weight-group ranks each replica takes (its tensor-parallel
    size). `master_address`: empty lets the actor advertise its own host.
    `shared_memory`: gloo on one host uses the shared-memory data plane (`weightsync.shm`)."""

    def __init__(self, actor: GrpcActorClient, rollouts: Sequence[GrpcRolloutClient],
                 backend: str = "gloo", dtype: str = "float32", bucket_bytes: int = 256 << 20,
                 master_address: str = "", timeout_s: float = 600.0,
                 workers_per_replica: int = 1, run_id: str = "",
                 shared_memory: bool = False) -> None:
        super().__init__(actor, rollouts, dtype, run_id=run_id)
        self.workers_per_replica = workers_per_replica
        self.backend = backend
        self.bucket_bytes = bucket_bytes
        self.master_address = master_address
        self.timeout_s = timeout_s
        self.shared_memory = shared_memory
        self._formed = False
        self._formed_once = False
        self._group: WeightGroupConfig | None = None
        self._opened: tuple[int, OpenUpdate] | None = None
        """(policy version, update) begun by `open` before the weights were final."""

    def setup(self) -> None:
        """Every member joins the group concurrently, through a store the actor opened on
        its own host (so the coordinator may run elsewhere). On a re-formation (after an
        actor or replica restart) any session an interrupted broadcast left open on a live
        replica is aborted first: InitWeightGroup refuses while one is open."""
        if self._formed_once:
            abort_sessions(self.rollouts, "weight group re-formed", self.header)
        world, firsts = weight_group_ranks([self.workers_per_replica] * len(self.rollouts))
        address, port = self.actor.open_weight_group(world, self.master_address,
                                                     self.timeout_s)
        cfg = WeightGroupConfig(address, port, world, 0, self.backend, "quartet-weights",
                                self.timeout_s, self.shared_memory)
        futures = [r.init_weight_group_future(cfg.with_rank(first))
                   for first, r in zip(firsts, self.rollouts, strict=True)]
        self._group = cfg
        # a replica whose join fails (it died, its engine refused) aborts the forming group:
        # the actor and the other replicas leave it now, not at the group's timeout
        joins = JoinWatch(self.rollouts, futures, lambda why: abort_weight_group(cfg, why))
        try:
            self.actor.init_weight_group(cfg.master_address, cfg.master_port, cfg.world_size,
                                         cfg.backend, cfg.group_name, cfg.timeout_s,
                                         cfg.shared_memory)
        except RoleCallError:
            joins.raise_first()  # the replica that failed is the cause: the recovery repairs it
            raise
        await_joins(self.rollouts, futures)
        self._formed = self._formed_once = True
        log.info("weight group formed at %s:%d: actor + %d rollout replica(s), %d workers, "
                 "over %s", address, port, len(self.rollouts), world - 1, self.backend)

    def reform(self) -> None:
        self._formed = False

    def abort_group(self, reason: str) -> None:
        """Every member leaves the current group now (through the store the actor hosts),
        not at the group's timeout; the next update re-forms it."""
        self._formed = False
        if self._group is not None:
            log.warning("aborting weight group at %s:%d: %s", self._group.master_address,
                        self._group.master_port, reason)
            abort_weight_group(self._group, reason)

    def begin(self, version: int) -> OpenUpdate:
        """Forms the group if needed and begins the update to policy `version` on every
        replica."""
        if not self._formed:
            self.setup()
        return begin_update(self.rollouts, self.versions.next_wire(version), self.manifest(),
                            self.bucket_bytes, self.timeout_s, header=self.header,
                            abort=self.abort_group)

    def open(self, version: int, iteration: int) -> None:
        """Begins the update to policy `version` now, while the actor's last mini-batch
        trains (a synchronous run: nothing generates then), so that the sync after it only
        broadcasts: the Begin and Finish round trips leave the critical path. Never raises:
        on failure nothing stays open and the sync begins (and reports) as usual. Only on a
        formed group (forming one is the sync's work). `cancel` closes it if the training
        fails."""
        self.cancel("superseded by a newer update")
        if not self._formed:
            return
        self.stamp(version, iteration)
        try:
            self._opened = (version, self.begin(version))
        except Exception as exc:  # noqa: BLE001 - the sync retries it and reports
            self._formed = False
            log.warning("could not begin the update to policy version %d early (%s); the "
                        "sync begins it", version, exc)

    def cancel(self, reason: str) -> None:
        """Closes an update `open` began (its weights will not come); the group is then
        re-formed before the next update. Never raises: a replica that cannot be reached
        is repaired by the next sync."""
        opened, self._opened = self._opened, None
        if opened is None:
            return
        self._formed = False
        try:
            opened[1].cancel(reason, self.header)
        except Exception as exc:  # noqa: BLE001 - the next setup aborts what is left
            log.warning("closing the early-begun update to policy version %d: %s",
                        opened[0], exc)

    def __call__(self, version: int, iteration: int | None = None) -> dict[str, float]:
        self.stamp(version, iteration)
        start = time.perf_counter()
        opened, self._opened = self._opened, None
        if opened is not None and opened[0] != version:
            self._opened = opened
            self.cancel(f"the sync is to policy version {version}, not {opened[0]}")
            opened = None
        if opened is None and not self._formed:
            self.setup()
        try:
            update = opened[1] if opened is not None else self.begin(version)
            wire = update.version
            sent, results = complete_update(
                update, lambda: self.actor.broadcast_weights(wire, self.bucket_bytes,
                                                             self.dtype, header=self.header),
                self.abort_group)
        except RoleCallError as exc:
            self._formed = False  # whatever failed, the group is not trusted again
            # the same error for the recovery (it looks at the code and the address), with
            # the phase and where to look when it cannot repair it
            raise RoleCallError(
                exc.role, exc.address, exc.method, exc.code,
                f"{exc.details} [in the weight sync to policy version {version}; see the "
                f"{exc.role}'s log under the run's logs/ directory, and the rollout "
                "replicas' logs for who left the weight group]") from exc
        except BaseException:
            self._formed = False
            raise
        seconds = time.perf_counter() - start
        # a replica counts from its begin; one begun early waited for the training meanwhile
        waited = max(start - update.begun_at, 0.0) if opened is not None else 0.0
        return {"seconds": seconds, "broadcast_seconds": sent.seconds,
                "load_seconds": max(max(r.load_seconds for r in results) - waited, 0.0),
                "mbytes": sent.total_bytes / 1e6,
                "mbytes_per_s": sent.total_bytes / 1e6 / max(seconds, 1e-9),
                "buckets": float(sent.num_buckets)}


class StreamedWeightSync(WeightSync):
    """Fallback data plane: actor.StreamWeights relayed into rollout.PushWeights."""

    def __call__(self, version: int, iteration: int | None = None) -> dict[str, float]:
        self.stamp(version, iteration)
        start = time.perf_counter()
        wire = self.versions.next_wire(version)
        specs = self.manifest()
        with ContextThreadPoolExecutor(len(self.rollouts)) as pool:
            loads = list(pool.map(lambda r: self.push_streamed(r, wire), self.rollouts))
        seconds = time.perf_counter() - start
        mbytes = len(self.rollouts) * sum(s.nbytes for s in specs) / 1e6
        return {"seconds": seconds, "load_seconds": max(loads), "mbytes": mbytes,
                "mbytes_per_s": mbytes / max(seconds, 1e-9)}
