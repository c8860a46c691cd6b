"""The `Generator` interface: what the rollout needs from a generation engine.

Two implementations: `VllmGenerator` (vLLM, GPU or CPU) and `HFGenerator` (Hugging Face
`generate`). Both sample with the same `SamplingConfig`, return the same `PromptOutput`s
and take new weights in place, so the rollout service and its tests do not care which one
runs. Versioning of weights lives one layer up, in `RolloutEngine`.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from quartet.engines.generation.sampling import validate_prompts
from quartet.types import LoadStats, PromptOutput, SamplingConfig
from quartet.weightsync import TensorSpec, WeightGroupConfig

_END = object()


class GenerationStream:
    """Results of one `generate` call, one `PromptOutput` per prompt in completion order.

    Iterate to receive them (blocking); `cancel()` (from any thread, e.g. when the gRPC
    client went away) aborts the engine requests still running and ends the iteration.
    """

    def __init__(self, num_prompts: int, on_cancel: Callable[[], None] | None = None) -> None:
        self.num_prompts = num_prompts
        self._queue: queue.Queue = queue.Queue()
        self._on_cancel = on_cancel
        self._lock = threading.Lock()
        self._finished = False
        self._cancelled = False
        self._on_close: list[Callable[[], None]] = []
        self._transform: Callable[[PromptOutput], PromptOutput] | None = None
        self._held: object | None = None
        """An end or error `batches` took off the queue early: the next item to consume."""

    # Producer side (the engine) -------------------------------------------------------
    def put(self, output: PromptOutput) -> None:
        self._queue.put(output)

    def fail(self, exc: BaseException) -> None:
        self._queue.put(exc)
        self._queue.put(_END)

    def close(self) -> None:
        self._queue.put(_END)

    # Consumer side ------------------------------------------------------------------------
    def __iter__(self) -> GenerationStream:
        return self

    def _take(self, block: bool = True) -> object:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return self._queue.get(block)

    def __next__(self) -> PromptOutput:
        if self._finished:
            raise StopIteration
        item = self._take()
        if item is _END:
            self._finish()
            raise StopIteration
        if isinstance(item, BaseException):
            self._finish()
            raise item
        return self._output(item)

    def _output(self, item: PromptOutput) -> PromptOutput:
        return self._transform(item) if self._transform is not None else item

    def batches(self) -> Iterator[list[PromptOutput]]:
        """The outputs in completion order, grouped: each list is the next output (waited
        for) and every other one already finished by then (not waited for). The rollout
        service sends a group as one message; an end or error stays for the next round."""
        for first in self:
            batch = [first]
            while True:
                try:
                    item = self._take(block=False)
                except queue.Empty:
                    break
                if item is _END or isinstance(item, BaseException):
                    self._held = item
                    break
                batch.append(self._output(item))
            yield batch

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Aborts what is left; idempotent and safe from any thread."""
        with self._lock:
            if self._cancelled or self._finished:
                return
            self._cancelled = True
        try:
            if self._on_cancel is not None:
                self._on_cancel()
        finally:
            self._queue.put(_END)
            self._finish()

    def set_transform(self, fn: Callable[[PromptOutput], PromptOutput]) -> None:
        """Applies `fn` to each output as it is handed to the consumer."""
        self._transform = fn

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Runs `fn` once when the stream ended (consumed to the end, failed or cancelled)."""
        self._on_close.append(fn)

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            callbacks, self._on_close = self._on_close, []
        for fn in callbacks:
            fn()

    def collect(self) -> list[PromptOutput]:
        """All outputs, ordered by prompt index."""
        return sorted(self, key=lambda o: o.prompt_index)


class Generator(ABC):
    """A generation engine hosting one model whose weights can be replaced in place."""

    backend: str = ""
    model_name: str = ""
    max_model_len: int = 0
    strict_context: bool = False
    """True: a prompt + max_new_tokens beyond `max_model_len` is an error, not a shorter
    response (the context was sized from the run's prompts: `--strict-context`)."""
    vocab_size: int = 0
    tokenizer = None
    can_release_memory: bool = False
    """True where `release_memory` frees the weights and KV cache (the vLLM backend)."""

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig
    ) -> GenerationStream:
        """Starts sampling `sampling.n` responses for each prompt (token ids); returns at once.

        Raises `InvalidArgument` naming the field for an empty batch, an empty or
        out-of-vocabulary prompt, or one that leaves no room within `max_model_len` (with
        `strict_context`: no room for all of `sampling.max_new_tokens`).
        """
        validate_prompts(prompts, self.vocab_size, self.max_model_len,
                         max_new_tokens=sampling.max_new_tokens if self.strict_context else None)
        return self._start([list(map(int, p)) for p in prompts], sampling)

    @abstractmethod
    def _start(self, prompts: list[list[int]], sampling: SamplingConfig) -> GenerationStream:
        """Backend part of `generate` (prompts already validated)."""

    @abstractmethod
    def weight_specs(self) -> dict[str, TensorSpec] | None:
        """Checkpoint-format name -> spec of every tensor an update may carry (None: unknown,
        the backend then cannot check names and shapes before loading)."""

    @abstractmethod
    def init_weight_group(self, config: WeightGroupConfig) -> None:
        """Joins the actor's weight group as `config.rank` (blocks until it is formed)."""

    @abstractmethod
    def receive_weights(self, version: int, specs: Sequence[TensorSpec],
                        should_load: Callable[[], bool] = lambda: True) -> LoadStats:
        """Receives one session from the weight group in full, then loads it in place
        (blocking). A failed transfer loads nothing (raises `WeightSyncError`); a backend
        that can, asks `should_load()` between receiving and loading (False: the session
        was aborted meanwhile, drop the weights)."""

    @abstractmethod
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> LoadStats:
        """Loads the given tensors in place (the gRPC fallback's path)."""

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def release_memory(self) -> int:
        """Frees the weights and KV cache until the next weight load (which must carry every
        weight); returns the bytes freed. Backends that cannot, raise NotImplementedError."""
        raise NotImplementedError(f"the {self.backend} backend cannot release its memory "
                                  "between phases (the vLLM backend can)")

    def sleep(self) -> None:  # noqa: B027 - optional hook
        """Frees accelerator memory while idle (vLLM sleep mode); a no-op by default."""

    def wake_up(self) -> None:  # noqa: B027 - optional hook
        """Undoes `sleep`; a no-op by default."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Frees the engine."""
