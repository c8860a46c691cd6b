"""A frozen causal LM for scoring: the reference role's engine.

It scores through the same alignment code as the actor (`quartet.engines.scoring`) on the
trainers' `InferenceEngine` (eval mode, no grads, optionally parked on CPU between calls so
an accelerator holds it only while it scores).

With several ranks (`WORLD_SIZE` > 1, the contract of `quartet.serving.ranks`) rank 0 splits
each batch's rows over the ranks; with `zero_stage=3` DeepSpeed also shards the weights over
them (ZeRO-3 inference: each forward gathers a layer's weights, then frees them), so a
reference larger than one device fits.
"""

from __future__ import annotations

import logging
import os
import threading

import torch

from quartet.codec.batches import RowBatch
from quartet.codec.dtypes import float_dtype
from quartet.engines.inference_engine import InferenceEngine
from quartet.engines.scoring import LogProbsResult, response_logprobs
from quartet.serving.ranks import RankGroup

log = logging.getLogger("quartet.engines")

PARAM_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_frozen(auto_cls, model_path: str, dtype: torch.dtype, **kwargs):
    """A model for inference only, loaded straight into `dtype` with low CPU memory: the
    weights are materialised once, in the target dtype, never as a full fp32 copy first."""
    return auto_cls.from_pretrained(model_path, dtype=dtype, low_cpu_mem_usage=True, **kwargs)


def shard_zero3(module: torch.nn.Module, dtype: str, micro_batch_size: int,
                offload: bool) -> torch.nn.Module:
    """The module with its weights partitioned over the default process group (ZeRO-3, no
    optimizer); `offload` keeps the partitions on CPU."""
    import deepspeed

    from quartet.config.deepspeed import DeepSpeedConfig
    from quartet.engines.ds_config import build_inference_ds_config

    config = build_inference_ds_config(
        DeepSpeedConfig(zero_stage=3, param_dtype=PARAM_DTYPES[dtype]), micro_batch_size)
    if offload:
        config["zero_optimization"]["offload_param"] = {"device": "cpu"}
    engine, *_ = deepspeed.initialize(model=module, config=config)
    return engine.module


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
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if zero_stage not in (0, 3):
            raise ValueError(f"zero_stage: 0 (whole weights) or 3 (sharded), got {zero_stage}")
        torch_dtype = float_dtype(dtype)
        self.model_path = model_path
        self.micro_batch_size = micro_batch_size
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, **kwargs)
        module = load_frozen(AutoModelForCausalLM, model_path, torch_dtype, **kwargs)
        rank, world_size = 0, 1
        if zero_stage == 3 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from quartet.engines.distributed import init_distributed

            world = init_distributed()
            rank, world_size, dev = world.rank, world.world_size, world.device
        else:
            dev = torch.device(device) if device else default_device()
        if zero_stage == 3:
            module = shard_zero3(module, dtype, micro_batch_size, offload)
            self.engine = InferenceEngine(module, dev, torch_dtype, attn_implementation,
                                          placed_by_deepspeed=True)
        else:
            self.engine = InferenceEngine(module, dev, torch_dtype, attn_implementation,
                                          offload=offload and dev.type != "cpu")
        self.pad_id = (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                       else self.tokenizer.eos_token_id)
        self.vocab_size = int(module.config.vocab_size)
        self.max_len = int(getattr(module.config, "max_position_embeddings", 1 << 30))
        self._lock = threading.Lock()
        self.ranks = RankGroup(rank, world_size)
        log.info("loaded frozen model %s on %s in %s (offload=%s, zero_stage=%d, rank %d of "
                 "%d)", model_path, dev, dtype, offload, zero_stage, rank, world_size)

    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult:
        # One forward at a time: the model is shared by the server's worker threads.
        with self._lock:
            rows = self.ranks.scatter_rows(self, "shard_logprobs", batch, temperature,
                                           with_entropy)
        return LogProbsResult.from_rows(rows, with_entropy)

    def shard_logprobs(self, batch: RowBatch, temperature: float, with_entropy: bool
                       ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return response_logprobs(self.engine.logits, batch, self.pad_id, temperature,
                                 self.micro_batch_size, with_entropy).rows()

    def serve_worker(self) -> int:
        """Ranks > 0: serve rank 0's fanned-out calls until it stops; the exit code."""
        return self.ranks.serve_worker(self)

    def stop_workers(self) -> None:
        self.ranks.stop()
