"""The DeepSpeed config dict, built from typed groups in one place."""

from __future__ import annotations

import logging
from typing import Any

from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.optim import AdamConfig, MuonConfig, OptimConfig

__all__ = ["build_ds_config", "build_inference_ds_config"]

log = logging.getLogger(__name__)

_STEPS_PER_PRINT = 10**9  # we log ourselves


def _precision(ds: DeepSpeedConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bf16": {"enabled": ds.param_dtype == "bf16"},
        "fp16": {"enabled": ds.param_dtype == "fp16", "initial_scale_power": 16},
    }
    if ds.grad_accum_dtype:
        out["data_types"] = {"grad_accum_dtype": ds.grad_accum_dtype}
    return out


def _optimizer(optim: OptimConfig, adam: AdamConfig, muon: MuonConfig,
               ds: DeepSpeedConfig) -> dict[str, Any]:
    # torch's AdamW needs no JIT-compiled op; DeepSpeedCPUAdam is used only with offload.
    torch_adam = not ds.adam_offload
    if optim.optim == "muon":
        if muon.ns_steps != 5 or not muon.nesterov:
            log.warning("--muon.ns_steps/--muon.nesterov are fixed inside DeepSpeed's Muon "
                        "(5 steps, Nesterov); the values given have no effect")
        return {"type": "Muon", "params": {
            "muon_lr": muon.lr, "adam_lr": adam.lr, "lr": adam.lr, "momentum": muon.momentum,
            "betas": list(adam.betas), "eps": adam.eps, "weight_decay": adam.weight_decay,
            "torch_adam": True,
        }}
    params: dict[str, Any] = {
        "lr": adam.lr, "betas": list(adam.betas), "eps": adam.eps,
        "weight_decay": adam.weight_decay, "torch_adam": torch_adam,
    }
    if torch_adam:
        # One pass over each tensor instead of foreach's several (and none of its
        # model-sized temporaries): the step is memory-bound, on CPU as on GPU.
        params["fused"] = True
    return {"type": "AdamW", "params": params}


def build_ds_config(ds: DeepSpeedConfig, optim: OptimConfig, adam: AdamConfig,
                    muon: MuonConfig, global_batch: int, micro_batch: int,
                    world_size: int) -> dict[str, Any]:
    """DeepSpeed training config. ``global_batch`` must be a multiple of micro x world."""
    accum = global_batch // (micro_batch * world_size)
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": True,
    }
    if ds.adam_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.zero_stage == 3:
        zero["zero_hpz_partition_size"] = ds.zpg
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if optim.optim == "muon":
        # Muon orthogonalises whole matrices; reduce-scatter would hand each rank a slice.
        zero["reduce_scatter"] = False
    cfg: dict[str, Any] = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "zero_optimization": zero,
        "optimizer": _optimizer(optim, adam, muon, ds),
        "steps_per_print": _STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        **_precision(ds),
    }
    if optim.max_norm > 0:
        cfg["gradient_clipping"] = optim.max_norm
    return cfg


def build_inference_ds_config(ds: DeepSpeedConfig, micro_batch: int) -> dict[str, Any]:
    """Config for a frozen model sharded with ZeRO-3 (no optimizer)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "zero_optimization": {"stage": 3 if ds.zero_stage == 3 else 0},
        "steps_per_print": _STEPS_PER_PRINT,
        **_precision(ds),
    }
