"""`RolloutEngine`: a `Generator` plus the rollout's weight versions.

What it adds to the generator, in one place for every backend and transport:

- Every output carries the weight version that produced it. A weight update never changes
  weights under a running request: opening a session stops admitting new requests, waits
  until those in flight finished, loads, bumps the version, then admits again.
- Update sessions are checked before any byte moves: the version must be newer than the
  served one, and every tensor must exist in the model with the same shape.
- A session's tensors are received in full before any is loaded, so a transfer that fails
  (bad digest, sender crash, timeout then `abort_weight_update`) leaves the previous complete
  version serving and the replica ready for the next session. Only a load that fails
  half-way leaves mixed weights; the engine then refuses to generate (FAILED_PRECONDITION)
  until a complete update succeeds, instead of serving them silently.
- Versions are per run: a session whose `run_id` differs from the last run's may start again
  from any version, so a service serves run after run.

The gRPC servicer (`services/rollout/servicer.py`) is a thin translation of this class.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from quartet.engines.generation.base import GenerationStream, Generator
from quartet.serving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from quartet.types import LoadStats, PromptOutput, SamplingConfig, UpdateResult
from quartet.weightsync import (
    DEFAULT_BUCKET_BYTES,
    TensorSpec,
    WeightGroupConfig,
    WeightSyncError,
    abort_weight_group,
    plan_buckets,
)

log = logging.getLogger("quartet.rollout")

RELEASED = ("rollout: the weights and KV cache were released after the generate phase "
            "(ReleaseMemory: the coordinator's --vllm.enable_sleep) and come back with the "
            "next weight update; send one (BeginWeightUpdate/FinishWeightUpdate or "
            "PushWeights) before Generate")


def release_refusal(backend: str) -> str:
    """Why a rollout on `backend` cannot start with --enable-sleep, and what to do."""
    return (f"--enable-sleep (quartet ppo: --vllm.enable_sleep): the {backend} generation "
            "backend cannot release its weights and KV cache between phases; only vLLM can. "
            "Start the rollout with --backend vllm (quartet ppo: --vllm.backend vllm; with "
            "auto, the log above says why vLLM could not run this model), or without "
            "--enable-sleep")


@dataclass(frozen=True)
class RolloutInfo:
    backend: str
    model: str
    weight_version: int
    inflight_requests: int
    """Samples (prompt x n) admitted and not finished yet."""
    vocab_size: int
    max_model_len: int
    updating: bool
    run_id: str = ""
    """The run whose weights it serves (versions count per run)."""


class _Session:
    def __init__(self, version: int, specs: list[TensorSpec]) -> None:
        self.version = version
        self.specs = specs
        self.done = threading.Event()
        self.aborted = False
        self.loading = False
        self.error: BaseException | None = None
        self.stats: LoadStats | None = None
        self.started = time.perf_counter()


class RolloutEngine:
    """Versioned generation: `generate`, and weight updates as begin/finish sessions."""

    def __init__(
        self,
        generator: Generator,
        initial_version: int = 0,
        admission_timeout_s: float = 600.0,
        sleep_when_idle: bool = False,
        enable_release: bool = False,
    ) -> None:
        """`sleep_when_idle`: put the generator to sleep once no generation runs and wake it
        for the next one or a weight update (colocated with trainers on the same GPUs).
        `enable_release`: `release_memory` may free the weights and KV cache until the next
        weight update (the coordinator's --vllm.enable_sleep); refused at once for a
        generator that cannot (the HF backend), not at the first release an iteration later."""
        if enable_release and not generator.can_release_memory:
            raise ValueError(release_refusal(generator.backend))
        self.generator = generator
        self._sleep_when_idle = sleep_when_idle
        self._asleep = False
        self._enable_release = enable_release
        self._released = False
        self._version = initial_version
        self._admission_timeout_s = admission_timeout_s
        self._cond = threading.Condition()
        self._active_calls = 0
        self._inflight = 0
        self._session: _Session | None = None
        self._group: WeightGroupConfig | None = None
        self._dirty: str | None = None
        self._run_id = ""

    @property
    def weight_version(self) -> int:
        return self._version

    def info(self) -> RolloutInfo:
        g = self.generator
        with self._cond:
            return RolloutInfo(g.backend, g.model_name, self._version, self._inflight,
                               g.vocab_size, g.max_model_len, self._session is not None,
                               self._run_id)

    # Generation ---------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        *,
        return_text: bool = False,
        expected_version: int | None = None,
    ) -> GenerationStream:
        """Starts generation; waits first while a weight update is being loaded.

        `expected_version`: the caller's idea of the current policy version; a replica that
        serves an older one refuses (FAILED_PRECONDITION) instead of sampling stale weights.
        """
        deadline = time.monotonic() + self._admission_timeout_s
        with self._cond:
            while self._session is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(f"weights: an update to version {self._session.version} "
                                      "is in progress; retry later")
                self._cond.wait(left)
            if self._dirty:
                raise FailedPrecondition(self._dirty)
            if self._released:
                raise FailedPrecondition(RELEASED)
            if expected_version is not None and expected_version > self._version:
                raise FailedPrecondition(
                    f"header.policy_version: this replica serves weight version "
                    f"{self._version}, the request expects {expected_version} (an update did "
                    "not reach it)")
            self._wake()
            version = self._version
            stream = self.generator.generate(prompts, sampling)
            per_prompt = sampling.n
            self._active_calls += 1
            self._inflight += len(prompts) * per_prompt
        remaining = [len(prompts)]
        generator = self.generator

        def stamp(out: PromptOutput) -> PromptOutput:
            out.weight_version = version
            if return_text:
                for s in out.samples:
                    s.text = generator.decode(s.token_ids)
            with self._cond:
                remaining[0] -= 1
                self._inflight -= per_prompt
            return out

        def release() -> None:
            with self._cond:
                self._active_calls -= 1
                self._inflight -= remaining[0] * per_prompt
                remaining[0] = 0
                self._cond.notify_all()
                idle = self._sleep_when_idle and not self._active_calls
            if idle:  # not on this (possibly the engine's own) thread
                threading.Thread(target=self._sleep_if_idle, daemon=True,
                                 name="rollout-sleep").start()

        stream.set_transform(stamp)
        stream.add_done_callback(release)
        return stream

    # Sleep while idle -----------------------------------------------------------------------
    @property
    def asleep(self) -> bool:
        return self._asleep

    def _sleep_if_idle(self) -> None:
        with self._cond:
            if self._active_calls or self._session is not None or self._asleep:
                return
            self.generator.sleep()
            self._asleep = True
        log.info("generator asleep until the next generation or weight update")

    def _wake(self) -> None:
        """Wakes the generator (call with `_cond` held)."""
        if self._asleep:
            self.generator.wake_up()
            self._asleep = False

    # Memory between phases ------------------------------------------------------------------
    @property
    def released(self) -> bool:
        return self._released

    def release_memory(self) -> int:
        """Frees the generator's weights and KV cache until the next weight update, which
        must carry every weight (the coordinator calls it after the generate phase of a
        synchronous run); returns the bytes freed. Generate refuses meanwhile."""
        with self._cond:
            if not self._enable_release:
                raise FailedPrecondition("rollout: ReleaseMemory needs the service started "
                                         "with --enable-sleep")
            if self._session is not None:
                raise FailedPrecondition(f"weights: an update to version "
                                         f"{self._session.version} is open; release after it")
            if self._active_calls:
                raise FailedPrecondition(f"rollout: {self._active_calls} Generate calls are "
                                         "running; release after the generate phase")
            if self._released:
                return 0
            try:
                freed = self.generator.release_memory()
            except NotImplementedError as exc:
                raise FailedPrecondition(f"rollout: {exc}") from exc
            self._released = True
        log.info("released the generator's weights and KV cache (%.0f MB) until the next "
                 "weight update", freed / 1e6)
        return freed

    # Weight group -------------------------------------------------------------------------
    def init_weight_group(self, config: WeightGroupConfig) -> WeightGroupConfig:
        """Joins the actor's weight group (blocks until every member joined)."""
        if config.rank == 0:
            raise InvalidArgument("rank: rank 0 is the actor (sender); a rollout replica "
                                  "takes a rank in 1..world_size-1")
        with self._cond:
            if self._session is not None:
                raise FailedPrecondition("weight group: an update session is open")
        try:
            self.generator.init_weight_group(config)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        except Exception as exc:
            raise Unavailable(f"weight group: could not join {config.master_address}:"
                              f"{config.master_port} as rank {config.rank}: {exc}") from exc
        self._group = config
        log.info("joined weight group %s as rank %d/%d (%s)", config.group_name, config.rank,
                 config.world_size, config.backend)
        return config

    # Update sessions ----------------------------------------------------------------------
    def begin_weight_update(
        self, version: int, specs: Sequence[TensorSpec], bucket_bytes: int = 0,
        run_id: str = "",
    ) -> int:
        """Opens a session and starts receiving from the group in the background.

        Returns the number of buckets the sender will broadcast.
        """
        if bucket_bytes < 0:
            raise InvalidArgument(f"bucket_bytes: must be >= 0 (0: default), got {bucket_bytes}")
        bucket_bytes = bucket_bytes or DEFAULT_BUCKET_BYTES
        specs = self._check_specs(specs)
        if self._group is None:
            raise FailedPrecondition("weight group: not joined; call InitWeightGroup first, "
                                     "or send the weights with PushWeights")
        session = self._open(version, specs, run_id)
        threading.Thread(target=self._receive, args=(session,), daemon=True,
                         name=f"weights-v{version}").start()
        return len(plan_buckets(specs, bucket_bytes))

    def finish_weight_update(self, version: int, timeout_s: float = 0.0) -> UpdateResult:
        """Waits for the session's tensors (at most `timeout_s`, 0: no limit), then serves
        `version`."""
        with self._cond:
            session = self._session
        if session is None or session.version != version:
            open_note = f" (the open session is for {session.version})" if session else ""
            raise FailedPrecondition(
                f"version: no open update session for version {version}{open_note}")
        deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
        while not session.done.wait(0.2):
            if session.aborted:
                break  # _close reports it
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"timeout_s: version {version} not loaded after {timeout_s}s; the session "
                    "stays open: call FinishWeightUpdate again, or AbortWeightUpdate to go "
                    "on serving the previous version")
        return self._close(session)

    def push_weights(
        self, version: int, specs: Sequence[TensorSpec],
        tensors: Iterable[tuple[str, torch.Tensor]], run_id: str = "",
    ) -> UpdateResult:
        """The fallback: a whole update whose tensors arrive through `tensors` (in manifest
        order), loaded as they come."""
        specs = self._check_specs(specs)
        session = self._open(version, specs, run_id)
        self._receive(session, tensors)
        return self._close(session)

    def _check_specs(self, specs: Sequence[TensorSpec]) -> list[TensorSpec]:
        specs = list(specs)
        if not specs:
            raise InvalidArgument("tensors: must list at least one tensor")
        known = self.generator.weight_specs()
        seen: set[str] = set()
        for i, s in enumerate(specs):
            if s.name in seen:
                raise InvalidArgument(f"tensors[{i}].name: {s.name!r} is listed twice")
            seen.add(s.name)
            if known is None:
                continue
            ref = known.get(s.name)
            if ref is None:
                raise InvalidArgument(f"tensors[{i}].name: unknown tensor {s.name!r} (not a "
                                      f"weight of {self.generator.model_name})")
            if s.shape != ref.shape:
                raise InvalidArgument(f"tensors[{i}].shape: {list(s.shape)} does not match "
                                      f"the model's {list(ref.shape)} for {s.name!r}")
            if s.dtype.is_floating_point != ref.dtype.is_floating_point:
                raise InvalidArgument(f"tensors[{i}].dtype: {s.dtype} cannot be loaded into "
                                      f"{s.name!r} ({ref.dtype})")
        return specs

    def abort_weight_update(self, version: int = 0, reason: str = "") -> tuple[bool, int]:
        """Closes the open session for `version` (0: any) without loading it.

        Returns (aborted, served version). The replica goes on serving its previous complete
        version. A session whose transfer is still on the group aborts that group for every
        member (through its store: the receive, wherever the generator runs it, and the
        sender leave it within a second), so the replica then needs InitWeightGroup again
        before the next group session; PushWeights works at once.
        """
        blocked: WeightGroupConfig | None = None
        with self._cond:
            session = self._session
            if session is None or (version and session.version != version):
                return False, self._version
            while session.loading:  # a load in progress finishes first (never half-undone)
                self._cond.wait()
            if self._session is not session:
                return False, self._version
            session.aborted = True
            if not session.done.is_set() and self._group is not None:
                blocked, self._group = self._group, None
            self._session = None
            self._cond.notify_all()
        if blocked is not None:
            abort_weight_group(blocked, f"rollout rank {blocked.rank} aborted its update to "
                               f"version {session.version} ({reason or 'no reason given'})")
        log.warning("weight update to version %d aborted (%s); serving version %d",
                    session.version, reason or "no reason given", self._version)
        return True, self._version

    def _should_load(self, session: _Session) -> bool:
        with self._cond:
            if session.aborted:
                return False
            session.loading = True
            return True

    def _open(self, version: int, specs: list[TensorSpec], run_id: str = "") -> _Session:
        with self._cond:
            if self._session is not None:
                raise FailedPrecondition(
                    f"version: an update to version {self._session.version} is already open; "
                    "finish it first, or AbortWeightUpdate")
            if run_id and run_id != self._run_id:
                log.info("run %r starts (previous run %r); its versions count afresh",
                         run_id, self._run_id)
                self._run_id = run_id
            elif version <= self._version:
                raise FailedPrecondition(
                    f"version: {version} is stale; this replica already serves version "
                    f"{self._version} (updates must increase the version)")
            session = _Session(version, specs)
            self._session = session  # from now on no new request is admitted
        log.info("weight update to version %d opened (%d tensors)", version, len(specs))
        return session

    def _receive(
        self, session: _Session, tensors: Iterable[tuple[str, torch.Tensor]] | None = None
    ) -> None:
        try:
            with self._cond:
                while self._active_calls:
                    self._cond.wait()
                self._wake()
            if tensors is None:
                session.stats = self.generator.receive_weights(
                    session.version, session.specs,
                    should_load=lambda: self._should_load(session))
            else:
                checked = _Checked(tensors, session.specs)
                staged = list(checked)  # in full before loading, as the group path
                checked.finish()
                if not self._should_load(session):
                    raise WeightSyncError(f"version {session.version}: the session was "
                                          "aborted; the pushed weights were dropped")
                session.stats = self.generator.load_weights(staged)
        except BaseException as exc:  # noqa: BLE001 - reported by finish
            session.error = exc
            # Transfers are staged, so only a failure inside the load itself mixes weights.
            partial = session.loading or (tensors is None
                                          and not isinstance(exc, WeightSyncError))
            if partial:
                self._dirty = (f"weights: the update to version {session.version} failed "
                               f"while loading ({exc}); this replica holds mixed weights "
                               "until a complete update succeeds")
        finally:
            with self._cond:
                session.loading = False
                self._cond.notify_all()
            session.done.set()

    def _close(self, session: _Session) -> UpdateResult:
        with self._cond:
            if session.aborted:
                raise FailedPrecondition(f"version: the update to version {session.version} "
                                         f"was aborted; serving version {self._version}")
            self._session = None
            err = session.error
            if err is None:
                self._version = session.version
                self._dirty = None
                self._released = False
            self._cond.notify_all()
        seconds = time.perf_counter() - session.started
        if err is not None:
            log.warning("weight update to version %d failed: %s", session.version, err)
            if isinstance(err, InvalidArgument | FailedPrecondition):
                raise err
            if isinstance(err, WeightSyncError | ValueError):
                raise FailedPrecondition(f"weights: update to version {session.version} "
                                         f"refused: {err}") from err
            raise Unavailable(f"weights: update to version {session.version} failed: "
                              f"{err}") from err
        st = session.stats or LoadStats(0, 0, seconds)
        log.info("serving weight version %d (%d tensors, %.1f MB, loaded in %.2fs)",
                 session.version, st.num_tensors, st.num_bytes / 1e6, seconds)
        return UpdateResult(session.version, seconds, st.num_tensors, st.num_bytes)


class _Checked:
    """Passes pushed tensors through, checking each against the manifest in order."""

    def __init__(self, tensors: Iterable[tuple[str, torch.Tensor]],
                 specs: list[TensorSpec]) -> None:
        self._tensors = tensors
        self._specs = specs
        self.count = 0

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, t in self._tensors:
            if self.count >= len(self._specs):
                raise InvalidArgument(f"chunk.name: {name!r} is beyond the "
                                      f"{len(self._specs)} tensors announced")
            want = self._specs[self.count]
            got = TensorSpec.of(name, t)
            if got != want:
                raise InvalidArgument(f"chunk.name: got {got.describe()} where tensors"
                                      f"[{self.count}] announced {want.describe()}")
            self.count += 1
            yield name, t

    def finish(self) -> None:
        if self.count != len(self._specs):
            raise InvalidArgument(f"tensors: {len(self._specs)} announced, "
                                  f"{self.count} received")
