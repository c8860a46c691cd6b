"""Optimizer parameter groups (which weights decay)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["decay_groups", "trainable_parameters"]


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # ZeRO-3 parameters are flattened to 1-D; their real shape lives in ds_shape.
    ndim = len(getattr(param, "ds_shape", param.shape))
    return ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed weights and exempt biases/norms (exempt = weight_decay 0)."""
    decay, exempt = [], []
    for name, param in trainable_parameters(model):
        (exempt if _no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": exempt, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
