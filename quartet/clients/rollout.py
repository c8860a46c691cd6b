"""`GrpcRolloutClient`: what the coordinator (and the actor's weight push) use to talk to a
rollout replica, plus helpers for several replicas.

A replica's own calls raise `grpc.RpcError` with the server's status code and field-naming
message; the several-replica helpers (`await_joins`, `update_replicas`, `push_to_replica`)
raise `RoleCallError`, which also names the replica. Every call has a deadline; unary calls
are retried on transient statuses with one request id (`quartet.clients.retry`), which the
replica deduplicates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import torch

from quartet.clients.base import RoleCallError
from quartet.clients.channel import DEFAULT_MAX_MESSAGE_BYTES, open_channel
from quartet.clients.retry import NO_RETRY, RetryPolicy, call_with_retry
from quartet.codec import DEFAULT_CHUNK_BYTES, ragged_to_proto
from quartet.security import ClientSecurity
from quartet.sharding import round_robin
from quartet.telemetry.context import ContextThreadPoolExecutor
from quartet.types import PromptOutput, SampleOutput, SamplingConfig, UpdateResult
from quartet.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc
from quartet.weightsync.group import WeightGroupConfig
from quartet.weightsync.session import WeightSender
from quartet.weightsync.specs import NamedTensors, TensorSpec, named_items, specs_of
from quartet.weightsync.stream import push_requests

T = TypeVar("T")
CONTROL_TIMEOUT_S = 60.0
"""Deadline of control-plane calls (begin, abort, info)."""
DEFAULT_TIMEOUT_S = 3600.0
"""Deadline of calls that wait for work (generation, finishing or pushing an update)."""


@dataclass(frozen=True)
class ReplicaInfo:
    address: str
    backend: str
    model: str
    weight_version: int
    inflight_requests: int
    vocab_size: int
    run_id: str = ""
    """The run whose weights it serves; `weight_version` counts within that run."""


def sampling_to_proto(s: SamplingConfig) -> rollout_pb2.SamplingParams:
    return rollout_pb2.SamplingParams(
        n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
        max_new_tokens=s.max_new_tokens, min_new_tokens=s.min_new_tokens, stop=list(s.stop),
        has_seed=s.seed is not None, seed=s.seed or 0, logprobs=s.logprobs,
    )


def outputs_from_proto(msg: rollout_pb2.GenerateResponse) -> list[PromptOutput]:
    """The prompt outputs one Generate message carries (several with `batch_outputs`)."""
    return [output_from_proto(msg)] + [output_from_proto(m) for m in msg.more]


def output_from_proto(msg: rollout_pb2.GenerateResponse) -> PromptOutput:
    return PromptOutput(
        prompt_index=msg.prompt_index,
        prompt_tokens=list(msg.prompt_tokens),
        samples=[
            SampleOutput(list(s.response_tokens), s.finish_reason,
                         list(s.logprobs) if len(s.logprobs) else None, s.text or None)
            for s in msg.samples
        ],
        weight_version=msg.weight_version,
    )


def generate_request(prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                     return_text: bool = False,
                     header: common_pb2.RequestHeader | None = None
                     ) -> rollout_pb2.GenerateRequest:
    """A Generate call's request; asks for the outputs done at once in one message."""
    return rollout_pb2.GenerateRequest(
        header=header,
        prompt_tokens=ragged_to_proto([list(p) for p in prompts], dtype=torch.int64),
        sampling=sampling_to_proto(sampling),
        return_text=return_text,
        batch_outputs=True,
    )


class GenerateCall:
    """A running Generate: iterate for outputs (completion order); `cancel()` aborts it."""

    def __init__(self, call) -> None:
        self._call = call

    def __iter__(self) -> Iterator[PromptOutput]:
        for msg in self._call:
            yield from outputs_from_proto(msg)

    def cancel(self) -> None:
        self._call.cancel()


class GrpcRolloutClient:
    """One rollout replica at `address` ("host:port")."""

    def __init__(
        self,
        address: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel: grpc.Channel | None = None,
        retry: RetryPolicy | None = None,
        security: ClientSecurity | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._channel = channel or open_channel(address, max_message_bytes, security)
        self._stub = rollout_pb2_grpc.RolloutStub(self._channel)

    def _unary(self, method: str, fn, request, timeout_s: float,
               retry: RetryPolicy | None = None):
        return call_with_retry(fn, request, timeout_s=timeout_s, policy=retry or self.retry,
                               what=f"rollout at {self.address}: {method}")

    # Generation ---------------------------------------------------------------------------
    def generate_stream(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        *,
        return_text: bool = False,
        header: common_pb2.RequestHeader | None = None,
        timeout_s: float | None = None,
    ) -> GenerateCall:
        request = generate_request(prompts, sampling, return_text, header)
        return GenerateCall(self._stub.Generate(request, timeout=timeout_s or self.timeout_s))

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        *,
        return_text: bool = False,
        header: common_pb2.RequestHeader | None = None,
        timeout_s: float | None = None,
    ) -> list[PromptOutput]:
        """All outputs, ordered by prompt index (retried whole on a transient failure)."""
        request = generate_request(prompts, sampling, return_text, header)
        msgs = call_with_retry(self._stub.Generate, request,
                               timeout_s=timeout_s or self.timeout_s, policy=self.retry,
                               what=f"rollout at {self.address}: Generate", collect=True)
        return sorted((o for m in msgs for o in outputs_from_proto(m)),
                      key=lambda o: o.prompt_index)

    def info(self, timeout_s: float | None = 10.0) -> ReplicaInfo:
        msg = self._unary("GetInfo", self._stub.GetInfo, common_pb2.GetInfoRequest(),
                          timeout_s or CONTROL_TIMEOUT_S)
        return ReplicaInfo(self.address, msg.backend, msg.model, msg.policy_version,
                           msg.inflight_requests, msg.vocab_size, msg.run_id)

    def release_memory(self, header: common_pb2.RequestHeader | None = None) -> int:
        """Frees the replica's weights and KV cache until the next weight update (it refuses
        Generate meanwhile); returns the bytes freed."""
        return self._unary("ReleaseMemory", self._stub.ReleaseMemory,
                           common_pb2.ReleaseMemoryRequest(header=header),
                           CONTROL_TIMEOUT_S).released_bytes

    # Weights ------------------------------------------------------------------------------
    def init_weight_group_future(
        self, config: WeightGroupConfig, header: common_pb2.RequestHeader | None = None
    ) -> grpc.Future:
        """Starts joining the group; every member must join concurrently."""
        request = common_pb2.InitWeightGroupRequest(
            header=header, master_address=config.master_address,
            master_port=config.master_port, world_size=config.world_size, rank=config.rank,
            backend=config.backend, group_name=config.group_name, timeout_s=config.timeout_s,
            shared_memory=config.shared_memory,
        )
        return self._stub.InitWeightGroup.future(request, timeout=config.timeout_s + 60)

    def init_weight_group(self, config: WeightGroupConfig,
                          header: common_pb2.RequestHeader | None = None) -> int:
        return self.init_weight_group_future(config, header).result().rank

    def begin_weight_update(
        self, version: int, specs: Sequence[TensorSpec], bucket_bytes: int = 0,
        header: common_pb2.RequestHeader | None = None,
    ) -> int:
        """Opens the session; returns the number of buckets the sender will broadcast."""
        resp = self._unary("BeginWeightUpdate", self._stub.BeginWeightUpdate,
                           rollout_pb2.BeginWeightUpdateRequest(
                               header=header, version=version,
                               tensors=[s.to_proto() for s in specs],
                               bucket_bytes=bucket_bytes), CONTROL_TIMEOUT_S)
        return resp.num_buckets

    def finish_weight_update_future(
        self, version: int, timeout_s: float = 0.0,
        header: common_pb2.RequestHeader | None = None,
    ) -> grpc.Future:
        deadline = (timeout_s + CONTROL_TIMEOUT_S) if timeout_s > 0 else self.timeout_s
        return self._stub.FinishWeightUpdate.future(rollout_pb2.FinishWeightUpdateRequest(
            header=header, version=version, timeout_s=timeout_s), timeout=deadline)

    def finish_weight_update(
        self, version: int, timeout_s: float = 0.0,
        header: common_pb2.RequestHeader | None = None,
    ) -> UpdateResult:
        resp = self.finish_weight_update_future(version, timeout_s, header).result()
        return UpdateResult(resp.version, resp.load_seconds)

    def abort_weight_update(self, version: int = 0, reason: str = "",
                            header: common_pb2.RequestHeader | None = None
                            ) -> rollout_pb2.AbortWeightUpdateResponse:
        """Closes the open session (0: whichever is open) without loading it; the replica
        keeps serving its previous complete version."""
        return self._unary("AbortWeightUpdate", self._stub.AbortWeightUpdate,
                           rollout_pb2.AbortWeightUpdateRequest(
                               header=header, version=version, reason=reason),
                           CONTROL_TIMEOUT_S)

    def push_weights(
        self, version: int, named_tensors: NamedTensors,
        specs: Sequence[TensorSpec] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        header: common_pb2.RequestHeader | None = None,
    ) -> UpdateResult:
        """The fallback data plane: streams the weights over this channel and loads them."""
        resp = self._unary("PushWeights", self._stub.PushWeights,
                           push_requests(version, named_tensors, specs, chunk_bytes, header),
                           self.timeout_s)
        return UpdateResult(resp.version, resp.load_seconds)

    def push_weights_requests(
        self, requests: Iterable[rollout_pb2.PushWeightsRequest]
    ) -> UpdateResult:
        """PushWeights with a ready request stream (e.g. relayed from the actor's chunks):
        first message version + tensors, then one chunk per message."""
        # A relayed stream cannot be replayed: one attempt.
        resp = self._unary("PushWeights", self._stub.PushWeights, iter(requests),
                           self.timeout_s, retry=NO_RETRY)
        return UpdateResult(resp.version, resp.load_seconds)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcRolloutClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Several replicas ---------------------------------------------------------------------------
def least_loaded(clients: Sequence[GrpcRolloutClient]) -> GrpcRolloutClient:
    """The replica with the fewest samples in flight (ties: first listed)."""
    loads = [c.info().inflight_requests for c in clients]
    return clients[loads.index(min(loads))]


def generate_sharded(
    clients: Sequence[GrpcRolloutClient], prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig, **kwargs,
) -> list[PromptOutput]:
    """Splits the prompts round-robin over the replicas, generates in parallel and returns
    outputs in the original prompt order (prompt_index refers to `prompts`)."""
    shards = round_robin(len(prompts), len(clients))
    work = [(c, idx) for c, idx in zip(clients, shards, strict=True) if idx]
    with ThreadPoolExecutor(len(work)) as pool:
        futures = [pool.submit(c.generate, [prompts[i] for i in idx], sampling, **kwargs)
                   for c, idx in work]
        results: list[PromptOutput] = []
        for (_, idx), fut in zip(work, futures, strict=True):
            for out in fut.result():
                out.prompt_index = idx[out.prompt_index]
                results.append(out)
    return sorted(results, key=lambda o: o.prompt_index)


def _replica_error(client: GrpcRolloutClient, method: str, exc: grpc.RpcError) -> RoleCallError:
    return RoleCallError("rollout", client.address, method, exc.code(), exc.details() or "")


def await_joins(clients: Sequence[GrpcRolloutClient], futures: Sequence[grpc.Future]
                ) -> list[int]:
    """Waits for the joins started by `init_weight_group_future`; errors name the replica."""
    ranks = []
    for c, f in zip(clients, futures, strict=True):
        try:
            ranks.append(f.result().rank)
        except grpc.RpcError as exc:
            raise _replica_error(c, "InitWeightGroup", exc) from None
    return ranks


class JoinWatch:
    """Watches the replicas' joins of a forming weight group: the first one that fails
    calls `on_failure(reason)` at once (on its own thread: the coordinator aborts the group
    there, so the actor and the other replicas stop waiting for the one that will never
    come), and `raise_first()` raises that replica's error, the cause of the others'."""

    def __init__(self, clients: Sequence[GrpcRolloutClient], futures: Sequence[grpc.Future],
                 on_failure: Callable[[str], None]) -> None:
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self.first: RoleCallError | None = None
        for c, f in zip(clients, futures, strict=True):
            f.add_done_callback(lambda fut, c=c: self._done(c, fut))

    def _done(self, client: GrpcRolloutClient, future: grpc.Future) -> None:
        if future.cancelled() or future.exception() is None:
            return
        exc = future.exception()
        error = (_replica_error(client, "InitWeightGroup", exc)
                 if isinstance(exc, grpc.RpcError) else
                 RoleCallError("rollout", client.address, "InitWeightGroup",
                               grpc.StatusCode.UNKNOWN, str(exc)))
        with self._lock:
            if self.first is not None:
                return
            self.first = error
        reason = f"rollout replica {client.address} failed to join: {error.details[:300]}"
        threading.Thread(target=self._on_failure, args=(reason,), daemon=True,
                         name="weight-group-join-failed").start()

    def raise_first(self) -> None:
        with self._lock:
            first = self.first
        if first is not None:
            raise first


def abort_sessions(clients: Sequence[GrpcRolloutClient], reason: str,
                   header: common_pb2.RequestHeader | None = None, version: int = 0) -> None:
    """Closes the update session each replica has open (`version` 0: whatever it is; before
    a group re-forms); errors name the replica, so a replica that died meanwhile is
    repaired, not fatal."""
    for c in clients:
        try:
            c.abort_weight_update(version, reason, header=header)
        except grpc.RpcError as exc:
            raise _replica_error(c, "AbortWeightUpdate", exc) from None


@dataclass
class OpenUpdate:
    """An update begun on every replica (`begin_update`): their sessions are open and their
    Finish calls in flight, waiting for the broadcast (`complete_update`) or `cancel`."""

    clients: Sequence[GrpcRolloutClient]
    version: int
    finishes: Sequence[grpc.Future]
    begun_at: float = field(default_factory=time.perf_counter)
    """When every replica had begun (`time.perf_counter()`): a replica's `load_seconds`
    count from its own begin."""

    def cancel(self, reason: str, header: common_pb2.RequestHeader | None = None) -> None:
        """Closes the sessions without a broadcast (the update will not come: e.g. the
        training before it failed). A replica waiting in the group for the session's header
        aborts that group (`AbortWeightUpdate`), so it must be re-formed; errors name the
        replica."""
        for f in self.finishes:
            f.cancel()
        abort_sessions(self.clients, reason, header, self.version)


def begin_update(
    clients: Sequence[GrpcRolloutClient], version: int, specs: Sequence[TensorSpec],
    bucket_bytes: int, finish_timeout_s: float = 0.0,
    header: common_pb2.RequestHeader | None = None,
    abort: Callable[[str], None] | None = None,
) -> OpenUpdate:
    """The first half of `update_replicas`: begin on every replica, then ask each to finish
    (it answers once its receiver loaded the last bucket). Whoever holds rank 0 may send any
    time after; a caller that can begin early (before the weights are final) hides these
    round trips."""
    for i, c in enumerate(clients):
        try:
            c.begin_weight_update(version, specs, bucket_bytes, header=header)
        except grpc.RpcError as exc:
            error = _replica_error(c, "BeginWeightUpdate", exc)
            if abort is not None and i > 0:
                abort(f"the update to version {version} was not begun on every replica: "
                      f"{error}")
            raise error from None
    # Finish is asked before the broadcast: each replica answers once its receiver loaded
    # the last bucket, with no round trip after the broadcast on the sync's critical path.
    return OpenUpdate(clients, version, [c.finish_weight_update_future(version,
                                                                       finish_timeout_s,
                                                                       header)
                                         for c in clients])


def complete_update(update: OpenUpdate, broadcast: Callable[[], T],
                    abort: Callable[[str], None] | None = None
                    ) -> tuple[T, list[UpdateResult]]:
    """The second half of `update_replicas`: `broadcast()`, then every replica's finish."""
    clients, version = update.clients, update.version
    try:
        sent = _broadcast_watching(clients, update.finishes, broadcast, abort, version)
    except BaseException:
        for f in update.finishes:
            f.cancel()
        raise
    results = []
    for c, f in zip(clients, update.finishes, strict=True):
        try:
            resp = f.result()
        except grpc.RpcError as exc:
            raise _replica_error(c, "FinishWeightUpdate", exc) from None
        if resp.version != version:
            raise RuntimeError(f"rollout at {c.address} reports version {resp.version} "
                               f"after an update to {version}")
        results.append(UpdateResult(resp.version, resp.load_seconds))
    return sent, results


def update_replicas(
    clients: Sequence[GrpcRolloutClient], version: int, specs: Sequence[TensorSpec],
    bucket_bytes: int, broadcast: Callable[[], T], finish_timeout_s: float = 0.0,
    header: common_pb2.RequestHeader | None = None,
    abort: Callable[[str], None] | None = None,
) -> tuple[T, list[UpdateResult]]:
    """The one sequence of a versioned update over the weight group: begin on every replica
    -> `broadcast()` (whoever holds rank 0 sends the buckets) -> finish on every replica.
    Returns the broadcast's result and each replica's; errors name the replica and RPC. A
    failed broadcast cancels the finish calls; the replicas' sessions stay open until the
    group is re-formed (which aborts them) or their finish times out.
    `header.run_id` tells the replicas which run the version belongs to.

    `abort(reason)` aborts the group for every member (`abort_weight_group`): called when a
    replica's finish fails while the broadcast still runs (it died or left the group, and
    the sender may be blocked on it) and when a begin fails after others began (they wait
    for a session that will not come)."""
    update = begin_update(clients, version, specs, bucket_bytes, finish_timeout_s, header,
                          abort)
    return complete_update(update, broadcast, abort)


WATCH_S = 0.2
"""How often a running broadcast looks at the replicas' finish calls."""


def _broadcast_watching(clients: Sequence[GrpcRolloutClient], futures: Sequence[grpc.Future],
                        broadcast: Callable[[], T], abort: Callable[[str], None] | None,
                        version: int) -> T:
    """`broadcast()`, aborting the group as soon as a replica's finish fails meanwhile."""
    if abort is None:
        return broadcast()
    # the broadcast's RPC keeps the caller's trace context (it hangs under the sync's span)
    with ContextThreadPoolExecutor(1, thread_name_prefix="weight-broadcast") as pool:
        sending = pool.submit(broadcast)
        aborted = False
        while True:
            try:
                return sending.result(timeout=WATCH_S)
            except TimeoutError:
                pass
            if aborted:
                continue
            for c, f in zip(clients, futures, strict=True):
                if f.done() and not f.cancelled() and f.exception() is not None:
                    error = _replica_error(c, "FinishWeightUpdate", f.exception())
                    abort(f"a replica failed during the broadcast of version {version}: "
                          f"{error}")
                    aborted = True
                    break


def broadcast_update(
    clients: Sequence[GrpcRolloutClient], sender: WeightSender, version: int,
    named_tensors: NamedTensors, finish_timeout_s: float = 0.0,
) -> list[UpdateResult]:
    """One versioned update from the process holding `sender` (tests, benchmarks)."""
    items = list(named_items(named_tensors))
    specs = specs_of(items)
    _, results = update_replicas(clients, version, specs, sender.bucket_bytes,
                                 lambda: sender.send(version, items, specs), finish_timeout_s)
    return results


def push_to_replica(client: GrpcRolloutClient,
                    requests: Iterable[rollout_pb2.PushWeightsRequest]) -> UpdateResult:
    """PushWeights with errors that name the replica."""
    try:
        return client.push_weights_requests(requests)
    except grpc.RpcError as exc:
        raise _replica_error(client, "PushWeights", exc) from None
