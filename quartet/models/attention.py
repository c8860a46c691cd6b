"""Attention kernel choice and the forward inputs that keep packed samples apart."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

from quartet.data.batch import TokenBatch, packed_causal_mask

__all__ = ["forward_inputs", "resolve_attn_implementation"]

log = logging.getLogger(__name__)

_FLASH = ("flash_attention_2", "flash_attention_3")


def resolve_attn_implementation(requested: str, packing: bool = False) -> str:
    """``requested``, or ``sdpa`` with a warning that names the fallback when flash-attn
    cannot run here (not installed, or no CUDA GPU).

    With packed samples the fallback is costly, so the warning says so: flash-attn keeps
    samples apart with varlen kernels, sdpa needs a dense block-diagonal [N, N] mask per
    packed row (memory grows with the square of the packed length)."""
    if requested in _FLASH:
        package = "flash_attn" if requested == "flash_attention_2" else "flash_attn_interface"
        missing = importlib.util.find_spec(package) is None
        if missing or not torch.cuda.is_available():
            why = (f"the {package} package is not installed (pip install 'quartet[gpu]')"
                   if missing else "there is no CUDA GPU here")
            cost = (" With --ds.packing_samples every packed row then builds a dense "
                    "[N, N] attention mask (memory grows with N^2); consider smaller "
                    "--data.max_len or no packing." if packing else "")
            log.warning("--ds.attn_implementation %s: %s; falling back to sdpa.%s",
                        requested, why, cost)
            return "sdpa"
    return requested


def forward_inputs(
    batch: TokenBatch, attn_implementation: str, dtype: torch.dtype, logits_from: int = 0
) -> dict[str, Any]:
    """Keyword arguments for a Hugging Face decoder forward on ``batch``.

    Packed rows: flash-attn derives varlen boundaries from ``position_ids`` restarting at 0
    (mask must be None); sdpa/eager get an explicit block-diagonal causal mask. Padded rows
    use the usual 2-D padding mask. ``logits_from > 0`` asks the model for the logits of
    positions ``logits_from..T-1`` only (HF ``logits_to_keep``).
    """
    if batch.tree_mask is not None:
        if attn_implementation in _FLASH:
            raise ValueError(f"{attn_implementation} takes no [T, T] mask: rows with a shared "
                             "prefix (quartet.data.shared_prefix) need sdpa or eager")
        mask = torch.zeros(batch.tree_mask.shape, dtype=dtype, device=batch.input_ids.device)
        mask.masked_fill_(~batch.tree_mask, torch.finfo(dtype).min)
        mask = mask[:, None]
    elif batch.packed:
        if attn_implementation in _FLASH:
            mask = None
        else:
            mask = packed_causal_mask(batch.seq_lens, dtype, batch.input_ids.device)
    else:
        mask = batch.attention_mask
    inputs = {"input_ids": batch.input_ids, "attention_mask": mask,
              "position_ids": batch.position_ids, "use_cache": False}
    if logits_from > 0:
        inputs["logits_to_keep"] = batch.input_ids.shape[1] - logits_from
    return inputs
