"""`HFGenerator`: Hugging Face `generate` as the fallback generation engine.

Used where vLLM is not importable, or on request (`--backend hf`). One worker thread runs
calls in arrival order (no batching across calls): each call's prompts are left-padded into
batches of at most `max_batch_rows` rows (prompts x n). Slower than vLLM, same contract.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from quartet.engines.generation.base import GenerationStream, Generator
from quartet.types import LoadStats, PromptOutput, SampleOutput, SamplingConfig
from quartet.weightsync import (
    TensorSpec,
    WeightGroup,
    WeightGroupConfig,
    WeightReceiver,
    WeightSyncError,
    init_weight_group,
    receive_staged,
)

log = logging.getLogger("quartet.generation")

_DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


class _Cancelled(Exception):
    pass


class HFGenerator(Generator):
    backend = "hf"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        seed: int = 0,
        device: str | None = None,
        max_batch_rows: int = 256,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in _DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model_name = model
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self._model = AutoModelForCausalLM.from_pretrained(model, dtype=_DTYPES[dtype])
        self._model.to(self.device).eval()
        cfg = self._model.config
        self.vocab_size = int(cfg.vocab_size)
        self.max_model_len = int(max_model_len or getattr(cfg, "max_position_embeddings", 2048))
        self._max_batch_rows = max_batch_rows
        self._seed = seed
        torch.manual_seed(seed)
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._pad = self.tokenizer.pad_token_id
        if self._pad is None:
            self._pad = min(self._eos) if self._eos else 0
        self._specs = {n: TensorSpec.of(n, t) for n, t in self._model.state_dict().items()}
        self._group: WeightGroup | None = None
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="hf-generate", daemon=True)
        self._thread.start()

    # Worker thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def _run(self, fn: Callable[[], Any]) -> Any:
        fut: Future = Future()

        def job() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

        self._jobs.put(job)
        return fut.result()

    # Generation ---------------------------------------------------------------------------
    def _start(self, prompts: list[list[int]], sampling: SamplingConfig) -> GenerationStream:
        cancelled = threading.Event()
        stream = GenerationStream(len(prompts), on_cancel=cancelled.set)

        def job() -> None:
            try:
                per_batch = max(1, self._max_batch_rows // sampling.n)
                for start in range(0, len(prompts), per_batch):
                    if cancelled.is_set():
                        return
                    batch = list(range(start, min(start + per_batch, len(prompts))))
                    for out in self._generate_batch(prompts, batch, sampling, cancelled):
                        stream.put(out)
                stream.close()
            except _Cancelled:
                return
            except Exception as exc:  # noqa: BLE001 - reported on the stream
                log.exception("HF generate failed")
                stream.fail(exc)

        self._jobs.put(job)
        return stream

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], batch: list[int], s: SamplingConfig,
        cancelled: threading.Event,
    ) -> list[PromptOutput]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopOnCancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                if cancelled.is_set():
                    raise _Cancelled()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        rows = [prompts[i] for i in batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, width - len(r):] = torch.tensor(r)
            mask[j, width - len(r):] = 1
        max_new = min(s.max_new_tokens, self.max_model_len - min(len(r) for r in rows))
        # Greedy samples are all the same: compute one and copy it.
        runs = 1 if s.greedy else s.n
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new,
            min_new_tokens=min(s.min_new_tokens, max_new),
            num_return_sequences=runs,
            pad_token_id=self._pad,
            eos_token_id=sorted(self._eos) or None,
            stopping_criteria=StoppingCriteriaList([_StopOnCancel()]),
            return_dict_in_generate=True,
            output_scores=s.logprobs,
        )
        if s.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p,
                          top_k=s.top_k if s.top_k > 0 else 0)
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        out = self._model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
        )
        new = out.sequences[:, width:].cpu()
        logps = None
        if s.logprobs:
            steps = torch.stack([sc.float().log_softmax(-1) for sc in out.scores], dim=1)
            logps = steps.cpu().gather(-1, new[:, : steps.shape[1]].unsqueeze(-1)).squeeze(-1)
        results = []
        for j, p in enumerate(batch):
            room = self.max_model_len - len(prompts[p])
            samples = []
            for k in range(s.n):
                row = j * runs + (0 if s.greedy else k)
                tokens, reason = self._trim(new[row].tolist(), min(max_new, room), s)
                lp = logps[row, : len(tokens)].tolist() if logps is not None else None
                samples.append(SampleOutput(tokens, reason, lp))
            results.append(PromptOutput(p, prompts[p], samples))
        return results

    def _trim(self, tokens: list[int], limit: int, s: SamplingConfig) -> tuple[list[int], str]:
        """Where HF's stopping rules ended this row: EOS (kept), a stop string (the token
        completing it kept), or `limit` tokens."""
        for i, t in enumerate(tokens[:limit]):
            if t in self._eos and i >= s.min_new_tokens:
                return tokens[: i + 1], "stop"
            if s.stop and any(x in self.tokenizer.decode(tokens[: i + 1]) for x in s.stop):
                return tokens[: i + 1], "stop"
        return tokens[:limit], "length"

    # Weights ------------------------------------------------------------------------------
    def weight_specs(self) -> dict[str, TensorSpec] | None:
        return self._specs

    def init_weight_group(self, config: WeightGroupConfig) -> None:
        device = self.device if config.backend == "nccl" else None
        self._group = self._run(lambda: init_weight_group(config, device=device))

    def receive_weights(self, version: int, specs: Sequence[TensorSpec],
                        should_load: Callable[[], bool] = lambda: True) -> LoadStats:
        group = self._group
        if group is None:
            raise RuntimeError("weight group: not initialized")
        # Received on the caller's thread, so a stuck sender never blocks generation.
        staged = receive_staged(WeightReceiver(group), version, specs)
        try:
            if not should_load():
                raise WeightSyncError(f"version {version}: the session was aborted; the "
                                      "received weights were dropped")
            return self._run(lambda: self._copy_in(staged))
        finally:
            staged.clear()

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> LoadStats:
        return self._run(lambda: self._copy_in(named_tensors))

    @torch.no_grad()
    def _copy_in(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> LoadStats:
        start = time.perf_counter()
        state = self._model.state_dict()
        count = nbytes = 0
        for name, t in named_tensors:
            state[name].copy_(t)
            count += 1
            nbytes += t.numel() * t.element_size()
        return LoadStats(count, nbytes, time.perf_counter() - start)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            self._thread.join(timeout=30)
