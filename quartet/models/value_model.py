"""A decoder with a scalar head on every token: the reward model and the PPO critic.

Why our own module rather than ``AutoModelForSequenceClassification``: the critic needs a value
per token, not one pooled score, and the head's attribute name is configurable
(``--ds.value_head_prefix``). With the default name ``score`` the saved state dict
(``<base prefix>.* + score.weight``) is exactly what ``AutoModelForSequenceClassification``
(num_labels=1) loads, and its pooled logit equals :meth:`ValueModel.scores` on the last token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from quartet.data.batch import TokenBatch
from quartet.models.attention import forward_inputs

__all__ = ["ValueModel"]


class ValueModel(nn.Module):
    """``base`` (an HF decoder without LM head) + ``Linear(hidden, 1, bias=False)``."""

    def __init__(self, base: nn.Module, base_prefix: str, head_prefix: str,
                 hidden_size: int) -> None:
        super().__init__()
        self.base_prefix = base_prefix
        self.head_prefix = head_prefix
        setattr(self, base_prefix, base)
        setattr(self, head_prefix, nn.Linear(hidden_size, 1, bias=False))

    @property
    def base(self) -> nn.Module:
        return getattr(self, self.base_prefix)

    @property
    def head(self) -> nn.Linear:
        return getattr(self, self.head_prefix)

    @property
    def config(self):
        return self.base.config

    def forward(self, batch: TokenBatch, attn_implementation: str = "sdpa",
                dtype: torch.dtype = torch.float32) -> Tensor:
        """Per-token values ``[R, T]``."""
        kwargs = forward_inputs(batch, attn_implementation, dtype)
        hidden = self.base(**kwargs).last_hidden_state
        return self.head(hidden).squeeze(-1)

    def scores(self, batch: TokenBatch, **kwargs) -> Tensor:
        """One score per sample, read at its last token: ``[num_samples]``."""
        values = self.forward(batch, **kwargs)
        return values.reshape(-1)[batch.last_index]
