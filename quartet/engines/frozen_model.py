"""Frozen models for scoring: how the reference and the reward models hold their weights
(`FrozenHost`), and the reference role's engine (`FrozenCausalLM`).

It scores through the same alignment code as the actor (`quartet.engines.scoring`) on the
trainers' `InferenceEngine` (eval mode, no grads, optionally parked on CPU between calls so
an accelerator holds it only while it scores).

With several ranks (`WORLD_SIZE` > 1, the contract of `quartet.serving.ranks`) rank 0 splits
each batch's rows over the ranks; with `zero_stage=3` DeepSpeed also shards the weights over
them (ZeRO-3 inference: each forward gathers a layer's weights, then frees them), so a
model larger than one device fits.
"""

from __future__ import annotations

import logging
import os
import threading

import torch

from quartet.codec.batches import RowBatch
from quartet.codec.dtypes import float_dtype
from quartet.data.shared_prefix import shares_prefix
from quartet.engines.inference_engine import InferenceEngine
from quartet.engines.scoring import LogProbsResult, hidden_fn, response_logprobs
from quartet.serving.errors import FailedPrecondition
from quartet.serving.ranks import RankGroup
from quartet.storage_release import SpilledStorages

log = logging.getLogger("quartet.engines")

PARAM_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_frozen(auto_cls, model_path: str, dtype: torch.dtype, **kwargs):
    """A model for inference only, loaded straight into `dtype` with low CPU memory: the
    weights are materialised once, in the target dtype, never as a full fp32 copy first."""
    return auto_cls.from_pretrained(model_path, dtype=dtype, low_cpu_mem_usage=True, **kwargs)


def zero3_inference_config(dtype: str, micro_batch_size: int, offload: bool) -> dict:
    """DeepSpeed's config for weights partitioned over the default process group (ZeRO-3,
    no optimizer); `offload` keeps the partitions on CPU."""
    from quartet.config.deepspeed import DeepSpeedConfig
    from quartet.engines.ds_config import build_inference_ds_config

    config = build_inference_ds_config(
        DeepSpeedConfig(zero_stage=3, param_dtype=PARAM_DTYPES[dtype]), micro_batch_size)
    if offload:
        config["zero_optimization"]["offload_param"] = {"device": "cpu"}
    return config


class FrozenHost:
    """Where a frozen model (the reference, a reward model) runs on this process: its
    device, its ranks, and how its weights are held there.

    One rank holds the whole model in `dtype` on `device` (on CPU between calls with
    `offload` and an accelerator). With several ranks (`WORLD_SIZE` > 1, the contract of
    `quartet.serving.ranks`) rank 0 splits each batch's rows over them; `zero_stage=3` also
    partitions the weights over them (ZeRO-3 inference: each forward gathers a layer's
    weights, then frees them), so a model larger than one device fits — and it is loaded
    partitioned (`deepspeed.zero.Init`), so no rank ever holds the whole model.
    """

    def __init__(self, dtype: str = "float32", device: str | None = None,
                 offload: bool = False, micro_batch_size: int = 8,
                 zero_stage: int = 0) -> None:
        if zero_stage not in (0, 3):
            raise ValueError(f"zero_stage: 0 (whole weights) or 3 (sharded), got {zero_stage}")
        self.dtype_name = dtype
        self.dtype = float_dtype(dtype)
        self.offload = offload
        self.zero_stage = zero_stage
        self.micro_batch_size = micro_batch_size
        rank, world_size = 0, 1
        if zero_stage == 3 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from quartet.engines.distributed import init_distributed

            world = init_distributed()
            rank, world_size, self.device = world.rank, world.world_size, world.device
        else:
            self.device = torch.device(device) if device else default_device()
        self.ranks = RankGroup(rank, world_size)
        self._zero3 = (zero3_inference_config(dtype, micro_batch_size, offload)
                       if zero_stage == 3 else None)

    def load(self, auto_cls, model_path: str, **kwargs) -> torch.nn.Module:
        """`auto_cls.from_pretrained` in this host's dtype with low CPU memory; under ZeRO-3
        each parameter is partitioned as it is built (transformers reads an active
        `HfDeepSpeedConfig`), so a rank holds its shard, not a full copy."""
        if self._zero3 is None:
            return load_frozen(auto_cls, model_path, self.dtype, **kwargs)
        from transformers.integrations import HfDeepSpeedConfig

        active = HfDeepSpeedConfig(self._zero3)  # noqa: F841 - read by from_pretrained
        try:
            return load_frozen(auto_cls, model_path, self.dtype, **kwargs)
        finally:
            del active

    def engine(self, module: torch.nn.Module,
               attn_implementation: str = "sdpa") -> InferenceEngine:
        """The inference engine over `module` (the ZeRO-3 engine's module when sharded)."""
        if self._zero3 is not None:
            import deepspeed

            ds_engine, *_ = deepspeed.initialize(model=module, config=self._zero3)
            return InferenceEngine(ds_engine.module, self.device, self.dtype,
                                   attn_implementation, placed_by_deepspeed=True)
        # Offload (keep on CPU between calls) matters only with an accelerator.
        return InferenceEngine(module, self.device, self.dtype, attn_implementation,
                               offload=self.offload and self.device.type != "cpu")

    def describe(self) -> str:
        return (f"on {self.device} in {self.dtype_name} (offload={self.offload}, "
                f"zero_stage={self.zero_stage}, rank {self.ranks.rank} of {self.ranks.size})")


def releasable_weights(module: torch.nn.Module, host: FrozenHost,
                       spill_dir: str) -> SpilledStorages:
    """The weights of a frozen model, to be freed between its phases and read back exactly
    from a spill file in `spill_dir`: whole weights in CPU memory on one rank only (ZeRO-3
    partitions live in DeepSpeed, several ranks would each need the call, an accelerator
    has --ref.offload)."""
    if host.zero_stage == 3:
        raise ValueError("--enable-sleep: the weights are partitioned by ZeRO-3 "
                         "(--zero-stage 3); releasing handles whole weights only")
    if host.ranks.size > 1:
        raise ValueError(f"--enable-sleep: {host.ranks.size} ranks; releasing handles one "
                         "rank only")
    if host.device.type != "cpu" or host.offload:
        raise ValueError(f"--enable-sleep: weights on {host.device}; releasing spills CPU "
                         "memory (on an accelerator use --offload)")
    return SpilledStorages(module.parameters(), spill_dir, "reference weights")


class FrozenCausalLM:
    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        device: str | None = None,
        offload: bool = False,
        micro_batch_size: int = 8,
        gguf_file: str | None = None,
        attn_implementation: str = "sdpa",
        zero_stage: int = 0,
        spill_dir: str | None = None,
    ) -> None:
        """`spill_dir`: accept `release_memory` (the coordinator's --ref.enable_sleep); the
        weights wait in a file there while released."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        host = FrozenHost(dtype, device, offload, micro_batch_size, zero_stage)
        self.model_path = model_path
        self.micro_batch_size = micro_batch_size
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(model_path, **kwargs)  # its pad id only:
        module = host.load(AutoModelForCausalLM, model_path, **kwargs)  # not kept (~56 MiB)
        self.engine = host.engine(module, attn_implementation)
        self.pad_id = (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                       else tokenizer.eos_token_id)
        self.vocab_size = int(module.config.vocab_size)
        self.max_len = int(getattr(module.config, "max_position_embeddings", 1 << 30))
        self._lock = threading.Lock()
        self.ranks = host.ranks
        self._spill = (releasable_weights(module, host, spill_dir)
                       if spill_dir is not None else None)
        log.info("loaded frozen model %s %s", model_path, host.describe())

    def release_memory(self) -> int:
        """Frees the weights until the next `logprobs` reads them back (exactly: the same
        bytes, from the spill file); returns the bytes freed."""
        if self._spill is None:
            raise FailedPrecondition("reference: ReleaseMemory needs the service started "
                                     "with --enable-sleep")
        with self._lock:
            freed = self._spill.release()
        log.info("released the weights (%.0f MB) until the next scoring", freed / 1e6)
        return freed

    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult:
        # One forward at a time: the model is shared by the server's worker threads.
        with self._lock:
            if self._spill is not None and self._spill.released:
                self._spill.restore()
                log.info("restored the weights from the spill file for scoring")
            rows = self.ranks.scatter_rows(self, "shard_logprobs", batch, temperature,
                                           with_entropy)
        return LogProbsResult.from_rows(rows, with_entropy)

    def shard_logprobs(self, batch: RowBatch, temperature: float, with_entropy: bool
                       ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return response_logprobs(
            self.engine.logits, batch, self.pad_id, temperature, self.micro_batch_size,
            with_entropy,
            share_prefix=shares_prefix(self.engine.attn_implementation),
            hidden_of=hidden_fn(self.engine.output_weight(), self.engine.hidden)).rows()

    def serve_worker(self) -> int:
        """Ranks > 0: serve rank 0's fanned-out calls until it stops; the exit code."""
        return self.ranks.serve_worker(self)

    def stop_workers(self) -> None:
        self.ranks.stop()
