"""The actor role's domain object: policy engine, PPO steps, checkpoints, weight sending."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from quartet.codec.batches import RowBatch
from quartet.engines.scoring import LogProbsResult
from quartet.launch.threads import phase_threads
from quartet.ppo.role_config import TrainingRoleConfig
from quartet.ppo.training_role import TrainingRole
from quartet.ppo.updates import PolicyUpdater
from quartet.serving.errors import FailedPrecondition, InvalidArgument
from quartet.weightsync import (
    TensorSpec,
    TransferStats,
    WeightGroupConfig,
    WeightSender,
    WeightSyncError,
    advertised_host,
    check_group_bounds,
    host_store,
    init_weight_group,
)

log = logging.getLogger("quartet.actor")


class Actor(TrainingRole):
    kind = "causal_lm"

    def __init__(self, cfg: TrainingRoleConfig) -> None:
        super().__init__(cfg)
        self.updater = PolicyUpdater(self.engine, self.pad_id, cfg.train.micro_batch_size,
                                     self.rows_per_rank, packed=cfg.ds.packing_samples)
        self.sender: WeightSender | None = None
        self._store = None  # the weight group's store, opened on this host
        self.weight_version = 0

    def start_run(self) -> None:
        # Versions are per run (the rollout counts afresh too); -1: nothing sent in this run,
        # so the run may begin by sending the current weights as its version 0.
        self.weight_version = -1

    # ---------------------------------------------------------------- compute (all ranks)
    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult:
        with self.lock:
            rows = self.ranks.scatter_rows(self, "shard_logprobs", batch, temperature,
                                           with_entropy)
        return LogProbsResult.from_rows(rows, with_entropy)

    def shard_logprobs(self, batch: RowBatch, temperature: float, with_entropy: bool
                       ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        with phase_threads("score"):
            return self.updater.logprobs(batch, temperature, with_entropy).rows()

    # ---------------------------------------------------------------- weights
    def named_weights(self, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
        """Full parameters by HF name (gathered one at a time under ZeRO-3), cast if asked.
        With ZeRO-3 over several ranks, iterate inside `exported_weights`."""
        for name, t in self.engine.named_parameters_for_export():
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            yield name, t

    @contextmanager
    def exported_weights(self, dtype: torch.dtype | None
                         ) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
        """The weights for one export from rank 0 (hold `lock`). Under ZeRO-3 over several
        ranks the others gather each parameter alongside; whatever the caller leaves unread
        (a cancelled stream) is drained, so no rank is left waiting in a gather."""
        weights = self.named_weights(dtype)
        helpers = (self.ranks.fanout("rank_gather_weights", [()] * self.ranks.size)
                   if self.engine.gathers_for_export else nullcontext())
        with helpers:
            try:
                yield weights
            finally:
                for _ in weights:
                    pass

    def rank_gather_weights(self) -> None:
        for _ in self.engine.named_parameters_for_export():
            pass

    def manifest(self, dtype: torch.dtype | None) -> list[TensorSpec]:
        """What an export sends, from the parameters' shapes: nothing is gathered."""
        return [TensorSpec(name, dtype if dtype is not None and dt.is_floating_point else dt,
                           tuple(shape))
                for name, shape, dt in self.engine.parameter_shapes()]

    def open_weight_group(self, address: str, world_size: int,
                          timeout_s: float) -> tuple[str, int]:
        """Hosts the weight group's store here; returns (address, port) for the members.

        A new group replaces the current one: that one is aborted first, so a member still
        blocked in it (a replica waiting for a session the sync never sent, or this actor's
        own broadcast to a replica that died) leaves it now, not at its timeout."""
        if self.sender is not None:
            self.sender.group.abort("the coordinator re-forms the weight group (a replica "
                                    "or the actor restarted, joined or was retired)")
            self.sender = None
        try:
            check_group_bounds(world_size, timeout_s)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        address = address or advertised_host()
        try:
            self._store = host_store(address, world_size, timeout_s)
        except (RuntimeError, ValueError, OSError) as exc:  # not local; DistNetworkError
            raise FailedPrecondition(
                f"master_address: cannot host the weight group's store at {address!r} on "
                f"this actor's host ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            ) from exc
        return address, self._store.port

    def init_weight_group(self, config: WeightGroupConfig) -> None:
        if config.rank != 0:
            raise FailedPrecondition(f"rank: the actor is rank 0 of the weight group, "
                                     f"got {config.rank}")
        store = self._store if (self._store is not None
                                and self._store.port == config.master_port) else None
        self._store = None
        group = init_weight_group(config, self.world.device, store)
        self.sender = WeightSender(group)

    def broadcast(self, version: int, bucket_bytes: int,
                  dtype: torch.dtype | None) -> TransferStats:
        """Sends every parameter once over the weight group (each gathered once)."""
        if self.sender is None:
            raise FailedPrecondition("no weight group: call InitWeightGroup first")
        if version <= self.weight_version:
            raise FailedPrecondition(f"version: {version} is not newer than the last "
                                     f"broadcast version {self.weight_version}")
        with self.lock:
            specs = self.manifest(dtype)
            if bucket_bytes > 0:
                self.sender.bucket_bytes = bucket_bytes
            try:
                with self.exported_weights(dtype) as weights:
                    stats = self.sender.send(version, weights, specs)
            except WeightSyncError as exc:
                # the group is aborted for every member; only a re-formed one sends again
                self.sender = None
                raise FailedPrecondition(
                    f"weight group: broadcast of version {version} failed: {exc}. The group "
                    "is aborted for every member: form a new one (OpenWeightGroup, "
                    "InitWeightGroup); the rollout replicas' logs say which one left it"
                ) from exc
        self.weight_version = version
        return stats
