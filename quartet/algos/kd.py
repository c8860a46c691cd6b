"""Knowledge distillation: the student matches a frozen teacher's next-token distribution.

Forward KL ``KL(teacher || student) = sum_v p_t(v) (log p_t(v) - log p_s(v))`` per target token,
token-mean over the mask (Hinton et al. 2015; the MiniLLM/GKD papers call it "forward KL", the
mode-covering direction). Computed one row at a time so a full ``[B, T, V]`` float32 softmax
copy of both models is never held at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from quartet.algos.masked import as_bool_mask, masked_mean

__all__ = ["forward_kl", "kd_loss", "token_forward_kl"]


def token_forward_kl(student_logits: Tensor, teacher_logits: Tensor,
                     temperature: float = 1.0) -> Tensor:
    """``KL(softmax(t / T) || softmax(s / T))`` per position: ``[B, T]`` (float32, >= 0).

    The teacher side carries no gradient. Logits must share the vocabulary (same ``V``).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher logits "
                         f"{tuple(teacher_logits.shape)} (student and teacher must share a "
                         "tokenizer)")
    rows = []
    for i in range(student_logits.shape[0]):
        s = torch.log_softmax(student_logits[i].float() / temperature, dim=-1)
        t = torch.log_softmax(teacher_logits[i].detach().float() / temperature, dim=-1)
        rows.append((t.exp() * (t - s)).sum(dim=-1))
    if not rows:
        return student_logits.new_zeros(student_logits.shape[:-1], dtype=torch.float32)
    return torch.stack(rows)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor,
               temperature: float = 1.0) -> Tensor:
    """Token-mean forward KL over ``mask`` (0 with a zero gradient when the mask is empty)."""
    per_token = token_forward_kl(student_logits, teacher_logits, temperature)
    return masked_mean(per_token, as_bool_mask(mask))


def kd_loss(sft_nll: Tensor, distill_kl: Tensor, kd_coef: float) -> Tensor:
    """``(1 - kd_coef) * NLL + kd_coef * KL``: ``kd_coef`` 0 is plain SFT, 1 pure distillation."""
    if not 0.0 <= kd_coef <= 1.0:
        raise ValueError(f"kd_coef must be in [0, 1], got {kd_coef}")
    return (1.0 - kd_coef) * sft_nll + kd_coef * distill_kl
