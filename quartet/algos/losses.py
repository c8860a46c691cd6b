"""Every training objective of quartet: SFT, reward model, DPO/IPO, PPO policy and value, KL.

All token-level losses produce a per-token loss ``[B, T]`` and reduce it with the one
:func:`aggregate_loss`, so token- versus sequence-level averaging is a single switch that
means the same thing for every loss. Metrics returned next to a loss are detached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from quartet.algos.kl import KL_CLAMP, approx_kl
from quartet.algos.masked import as_bool_mask, masked_mean, masked_sum
from quartet.algos.off_policy import ISCorrection, is_correction_coefficients

__all__ = [
    "REDUCTIONS",
    "RM_LOSS_TYPES",
    "SFT_REDUCTIONS",
    "DPO_LOSS_TYPES",
    "DPOLossOutput",
    "LossNormaliser",
    "POLICY_LOSS_TYPES",
    "PolicyLossOutput",
    "ValueLossOutput",
    "aggregate_loss",
    "dpo_loss",
    "entropy_from_logits",
    "kl_loss",
    "pairwise_rm_loss",
    "policy_loss",
    "sft_loss",
    "token_logprobs",
    "value_loss",
]

# Bound of the PPO log-ratio before exp, as OpenRLHF 0.11's PolicyLoss.
LOG_RATIO_CLAMP = 20.0

REDUCTIONS = ("token_mean", "sequence_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")
RM_LOSS_TYPES = ("sigmoid", "logexp")


# --------------------------------------------------------------------------- reduction


@dataclass(frozen=True)
class LossNormaliser:
    """The denominators of a reduction over a whole mini-batch, of which one micro-batch on
    one data-parallel rank sees only a part.

    Reducing each part by its own mean weighs tokens (or rows) differently depending on how
    the mini-batch was cut, so N ranks would not compute the update of one rank. With a
    normaliser, :func:`aggregate_loss` returns the part's *share* of the mini-batch loss
    (its sum over the global count): shares add up, over micro-batches and ranks, to the
    loss of the whole mini-batch reduced at once. OpenRLHF divides by the global token count
    the same way (``batch_num_tokens`` times ``dp_size``).
    """

    num_tokens: int
    """Valid tokens in the mini-batch (the ``token_mean`` denominator)."""
    num_sequences: int
    """Rows with at least one valid token (the denominator of the sequence reductions)."""
    max_length: int
    """Longest row, in tokens: the default ``norm_length`` of ``seq_mean_token_sum_norm`` —
    the padded width the whole mini-batch would have."""

    @classmethod
    def of_lengths(cls, lengths: Sequence[int]) -> LossNormaliser:
        """From the valid-token count of every row of the mini-batch."""
        return cls(int(sum(lengths)), sum(1 for n in lengths if n > 0),
                   max((int(n) for n in lengths), default=0))

    def denominator(self, reduction: str) -> float:
        count = self.num_tokens if reduction == "token_mean" else self.num_sequences
        return float(max(count, 1))


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    reduction: str = "token_mean",
    norm_length: float | None = None,
    normaliser: LossNormaliser | None = None,
) -> Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar over the masked tokens.

    - ``token_mean``: sum over all valid tokens / number of valid tokens (every token weighs
      the same; DAPO's "token-level policy gradient loss", OpenRLHF's default).
    - ``sequence_mean``: mean over tokens within each row, then mean over rows (every sample
      weighs the same; the original GRPO objective).
    - ``seq_mean_token_sum``: sum over tokens within each row, then mean over rows.
    - ``seq_mean_token_sum_norm``: sum over tokens / ``norm_length`` (default ``T``), then mean
      over rows: Dr. GRPO's constant normaliser, free of response-length bias.

    Row means are over rows with at least one valid token; a batch with no valid token gives
    0 (with a zero gradient), never NaN.

    With a ``normaliser`` (see :class:`LossNormaliser`) the result is this part's share of a
    larger mini-batch: the same sums divided by the mini-batch's counts, and ``norm_length``
    defaulting to its longest row.
    """
    m = as_bool_mask(mask)
    if per_token_loss.shape != m.shape:
        raise ValueError(f"loss shape {tuple(per_token_loss.shape)} != mask shape {tuple(m.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {', '.join(REDUCTIONS)}")
    if reduction == "token_mean":
        if normaliser is not None:
            return masked_sum(per_token_loss, m) / normaliser.denominator(reduction)
        return masked_mean(per_token_loss, m)
    if reduction == "sequence_mean":
        per_row = masked_mean(per_token_loss, m, dim=-1)
    else:
        per_row = torch.where(m, per_token_loss, torch.zeros_like(per_token_loss)).sum(dim=-1)
        if reduction == "seq_mean_token_sum_norm":
            if norm_length is None:
                norm_length = normaliser.max_length if normaliser is not None else m.shape[-1]
            per_row = per_row / float(max(norm_length, 1))
    non_empty = m.any(dim=-1)
    if normaliser is not None:
        return masked_sum(per_row, non_empty) / normaliser.denominator(reduction)
    return masked_mean(per_row, non_empty)


# --------------------------------------------------------------------------- logits


def _rows_as_float(logits: Tensor, i: int, temperature: float) -> Tensor:
    row = logits[i]
    if row.dtype in (torch.float16, torch.bfloat16):
        row = row.float()  # log-softmax in low precision loses most of the mantissa
    if temperature != 1.0:
        row = row / temperature  # a new tensor: the caller's logits are never modified
    return row


def token_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each label under ``softmax(logits / temperature)``: ``[B, T]``.

    ``logits`` is ``[B, T, V]`` already aligned with ``labels`` ``[B, T]`` (position t predicts
    label t). Computed as ``z[label] - logsumexp(z)`` one row at a time, so the full
    ``[B, T, V]`` log-softmax is never materialised; fp16/bf16 logits are upcast per row and
    the result is float32. ``temperature`` must match the sampler's so that PPO ratios compare
    the same distribution vLLM sampled from. Labels must lie in ``[0, V)``; a negative label
    (an ignore index such as -100) gives 0, to be masked out by the caller.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    out = []
    for i in range(logits.shape[0]):
        z = _rows_as_float(logits, i, temperature)
        label = labels[i].long()
        picked = z.gather(-1, label.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        lp = picked - torch.logsumexp(z, dim=-1)
        out.append(torch.where(label >= 0, lp, torch.zeros_like(lp)))
    if not out:
        return logits.new_zeros(labels.shape, dtype=torch.float32)
    return torch.stack(out)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position: ``[B, T]``.

    ``H = logsumexp(z) - sum_v softmax(z)_v * z_v``, one row at a time (float32 for fp16/bf16).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = []
    for i in range(logits.shape[0]):
        z = _rows_as_float(logits, i, temperature)
        out.append(torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1))
    if not out:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.stack(out)


# --------------------------------------------------------------------------- SFT / RM / DPO


SFT_REDUCTIONS = ("token_mean", "sequence_mean")


def sft_loss(logprobs: Tensor, loss_mask: Tensor, reduction: str = "token_mean") -> Tensor:
    """Negative log-likelihood over ``loss_mask`` (0 with a zero grad if empty).

    ``token_mean`` weighs every target token the same (OpenRLHF's default); ``sequence_mean``
    averages within each row first, so every sample weighs the same (OpenRLHF's
    ``token_level_loss=False``). With packed rows pass one row per sample.
    """
    if reduction not in SFT_REDUCTIONS:
        raise ValueError(f"unknown SFT reduction {reduction!r}; allowed: "
                         f"{', '.join(SFT_REDUCTIONS)}")
    return aggregate_loss(-logprobs, loss_mask, reduction)


def pairwise_rm_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    margin: Tensor | None = None,
    loss_type: str = "sigmoid",
) -> Tensor:
    """Bradley-Terry reward-model loss (Ouyang et al. 2022, eq. 1), mean over pairs.

    ``sigmoid``: ``-log sigmoid(c - r - margin)``. ``logexp``: ``log(1 + exp(r - c + margin))``,
    the same function written as a softplus (kept for parity with OpenRLHF's ``LogExpLoss``;
    both use the margin here). ``margin`` (Llama 2's preference-strength margin) is per pair.
    """
    if loss_type not in RM_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; allowed: {', '.join(RM_LOSS_TYPES)}")
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    if loss_type == "sigmoid":
        return -F.logsigmoid(diff).mean()
    return F.softplus(-diff).mean()


DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "apo_zero",
                  "sigmoid_norm")


class DPOLossOutput(NamedTuple):
    """``loss`` scalar; implicit rewards ``beta * (policy - ref)`` per pair, detached.

    The rewards always use the *summed* log-ratios (the standard metric, as TRL), whatever
    length normalisation the loss itself applies.
    """

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    ipo: bool = False,
    loss_type: str = "sigmoid",
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    bco_delta: float | Tensor = 0.0,
) -> DPOLossOutput:
    """The DPO family on summed sequence log-probs ``[B]``; mean over pairs.

    With chosen/rejected log-ratios ``c = pi_c - ref_c``, ``r = pi_r - ref_r`` and
    ``h = c - r``:

    - ``sigmoid`` (DPO, Rafailov et al. 2023; cDPO, Mitchell 2023, with
      ``label_smoothing = eps``): ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``;
    - ``hinge`` (SLiC, Zhao et al. 2023): ``relu(1 - beta h)``;
    - ``ipo`` (Azar et al. 2023): ``(h' - 1 / (2 beta))^2`` where ``h'`` uses log-probs divided
      by the response lengths ``chosen_lengths`` / ``rejected_lengths`` (IPO's length
      normalisation; without lengths the log-probs are taken as already averaged).
      ``ipo=True`` is the same as ``loss_type="ipo"``;
    - ``robust`` (rDPO, Chowdhury et al. 2024): ``(-(1 - eps) log sigmoid(beta h)
      + eps log sigmoid(-beta h)) / (1 - 2 eps)``;
    - ``bco_pair`` (BCO, Jung et al. 2024): ``-log sigmoid(beta c - delta)
      - log sigmoid(-(beta r - delta))``, ``delta`` = running mean of the implicit rewards,
      kept by the caller and passed as ``bco_delta``;
    - ``sppo_hard`` (SPPO, Wu et al. 2024): ``(c - 1 / (2 beta))^2 + (r + 1 / (2 beta))^2``;
    - ``apo_zero`` (APO, D'Oosterlinck et al. 2024): ``(1 - sigmoid(beta c)) + sigmoid(beta r)``;
    - ``sigmoid_norm`` (TRL's length-normalised DPO):
      ``-log sigmoid(beta (c / |y_c| - r / |y_r|))``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if ipo:
        loss_type = "ipo"
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; allowed: "
                         f"{', '.join(DPO_LOSS_TYPES)}")
    c = policy_chosen_logps - ref_chosen_logps
    r = policy_rejected_logps - ref_rejected_logps
    h = c - r
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        c_len = chosen_lengths.to(c.dtype).clamp(min=1.0)
        r_len = rejected_lengths.to(c.dtype).clamp(min=1.0)
        h_norm = c / c_len - r / r_len
    else:  # the caller passed length-averaged log-probs already
        h_norm = h
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * h)
    elif loss_type == "ipo":
        losses = (h_norm - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "robust":
        losses = (-(1.0 - label_smoothing) * F.logsigmoid(beta * h)
                  + label_smoothing * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * label_smoothing)
    elif loss_type == "bco_pair":
        losses = -F.logsigmoid(beta * c - bco_delta) - F.logsigmoid(-(beta * r - bco_delta))
    elif loss_type == "sppo_hard":
        losses = (c - 1.0 / (2.0 * beta)) ** 2 + (r + 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "apo_zero":
        losses = (1.0 - torch.sigmoid(beta * c)) + torch.sigmoid(beta * r)
    else:  # sigmoid_norm
        losses = -F.logsigmoid(beta * h_norm)
    chosen_rewards = (beta * c).detach()
    rejected_rewards = (beta * r).detach()
    return DPOLossOutput(losses.mean(), chosen_rewards, rejected_rewards)


# --------------------------------------------------------------------------- PPO


POLICY_LOSS_TYPES = ("ppo", "gspo")


class PolicyLossOutput(NamedTuple):
    """PPO policy loss and detached diagnostics (fractions and means are over valid tokens).

    ``clip_fraction``: tokens where the clipped surrogate was the one taken.
    ``dual_clip_fraction``: tokens (negative advantage) where the dual-clip bound was taken.
    ``approx_kl``: k1 estimate of ``KL(old || new)``, mean ``old_logprobs - logprobs``.
    ``ratio_mean``: mean ``pi / pi_old``.
    ``vllm_kl`` / ``is_filter_ratio``: IS-correction metrics (None without correction), see
    :mod:`quartet.algos.off_policy`.
    """

    loss: Tensor
    clip_fraction: Tensor
    dual_clip_fraction: Tensor
    approx_kl: Tensor
    ratio_mean: Tensor
    vllm_kl: Tensor | None = None
    is_filter_ratio: Tensor | None = None


def _policy_ratio(log_ratio: Tensor, m: Tensor, policy_loss_type: str) -> Tensor:
    """Per-token ``rho`` [B, T]: PPO's token ratio, or GSPO's sequence ratio broadcast."""
    if policy_loss_type == "ppo":
        return log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    # GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): the length-normalised
    # sequence log-ratio, exponent bounded like PPO's, shared by every token of the row.
    seq = masked_mean(log_ratio, m, dim=-1, keepdim=True)
    return seq.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp().expand_as(log_ratio)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    action_mask: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip: float | None = None,
    reduction: str = "token_mean",
    is_weights: Tensor | None = None,
    norm_length: float | None = None,
    normaliser: LossNormaliser | None = None,
    policy_loss_type: str = "ppo",
    rollout_logprobs: Tensor | None = None,
    is_correction: ISCorrection | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017) with asymmetric and dual clipping, or GSPO.

    Per token, ``rho = exp(clamp(logprobs - old_logprobs, -20, 20))`` and
    ``L = -min(rho * A, clip(rho, 1 - clip_eps_low, 1 + clip_eps_high) * A)``.
    ``clip_eps_high > clip_eps_low`` is DAPO's clip-higher (Yu et al. 2025). ``dual_clip = c``
    (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL"), ``c > 1``: for
    ``A < 0`` the loss is additionally capped at ``-c * A``, so a huge ratio on a bad action
    cannot blow up the update.

    ``policy_loss_type="gspo"``: ``rho`` is the sequence ratio
    ``exp(clamp(mean_t (logprobs - base), -20, 20))`` for every token of a row, where ``base``
    is ``rollout_logprobs`` when an IS correction is enabled and ``old_logprobs`` otherwise;
    the reduction is always ``sequence_mean`` (as OpenRLHF 0.11), and the IS coefficients are
    not applied.

    ``is_correction`` (with ``rollout_logprobs``) multiplies the PPO per-token loss by the
    coefficients of :func:`quartet.algos.off_policy.is_correction_coefficients`; ``is_weights``
    multiply it too (any other per-token weights). The loss is reduced with
    :func:`aggregate_loss` (a share of the mini-batch loss when a ``normaliser`` is
    given).
    """
    if policy_loss_type not in POLICY_LOSS_TYPES:
        raise ValueError(f"unknown policy_loss_type {policy_loss_type!r}; allowed: "
                         f"{', '.join(POLICY_LOSS_TYPES)}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if clip_eps_low < 0 or clip_eps_high < 0:
        raise ValueError(f"clip eps must be >= 0, got ({clip_eps_low}, {clip_eps_high})")
    correcting = is_correction is not None and is_correction.enabled
    if correcting and rollout_logprobs is None:
        raise ValueError("is_correction needs rollout_logprobs (the sampler's log-probs)")
    m = as_bool_mask(action_mask)
    zeros = torch.zeros_like(logprobs)
    # Zero the log-ratio at padding before exp: garbage there must not overflow into NaN grads.
    log_ratio = torch.where(m, logprobs - old_logprobs, zeros)
    if policy_loss_type == "gspo":
        base = rollout_logprobs if correcting else old_logprobs
        ratio = _policy_ratio(torch.where(m, logprobs - base, zeros), m, "gspo")
        reduction = "sequence_mean"
    else:
        # OpenRLHF 0.11 clamps the exponent to [-20, 20] (exp(20) ~ 4.9e8): a token whose policy
        # moved absurdly far gives a bounded loss and a zero gradient instead of 1e16 or inf.
        ratio = _policy_ratio(log_ratio, m, "ppo")
    adv = torch.where(m, advantages, torch.zeros_like(advantages))
    surr_unclipped = ratio * adv
    surr_clipped = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high) * adv
    surr = torch.minimum(surr_unclipped, surr_clipped)
    if dual_clip is not None:
        dual_bound = dual_clip * adv
        dual_taken = (adv < 0) & (dual_bound > surr)
        surr = torch.where(adv < 0, torch.maximum(surr, dual_bound), surr)
    else:
        dual_taken = torch.zeros_like(m)
    per_token = -surr
    vllm_kl = is_filter_ratio = None
    if correcting and policy_loss_type == "ppo":
        corr = is_correction_coefficients(old_logprobs, rollout_logprobs, m, is_correction)
        per_token = per_token * corr.coef
        vllm_kl, is_filter_ratio = corr.vllm_kl, corr.is_filter_ratio
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate_loss(per_token, m, reduction, norm_length, normaliser)
    with torch.no_grad():
        clipped = surr_clipped < surr_unclipped
        return PolicyLossOutput(
            loss=loss,
            clip_fraction=masked_mean(clipped.float(), m),
            dual_clip_fraction=masked_mean(dual_taken.float(), m),
            approx_kl=masked_mean(-log_ratio.detach(), m),
            ratio_mean=masked_mean(ratio.detach(), m),
            vllm_kl=vllm_kl,
            is_filter_ratio=is_filter_ratio,
        )


class ValueLossOutput(NamedTuple):
    """Critic loss and the fraction of valid tokens where the clipped branch was larger."""

    loss: Tensor
    clip_fraction: Tensor


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    action_mask: Tensor,
    clip_eps: float | None = 0.2,
    reduction: str = "token_mean",
    normaliser: LossNormaliser | None = None,
) -> ValueLossOutput:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``, where
    ``V_clip = V_old + clip(V - V_old, -clip_eps, clip_eps)`` (PPO2 baselines; Engstrom et al.
    2020 "Implementation Matters"). ``clip_eps=None`` gives ``0.5 * (V - R)^2``."""
    m = as_bool_mask(action_mask)
    sq_unclipped = (values - returns) ** 2
    if clip_eps is None:
        per_token = sq_unclipped
        clipped = torch.zeros_like(m)
    else:
        values_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        sq_clipped = (values_clipped - returns) ** 2
        per_token = torch.maximum(sq_unclipped, sq_clipped)
        clipped = sq_clipped > sq_unclipped
    loss = 0.5 * aggregate_loss(per_token, m, reduction, normaliser=normaliser)
    return ValueLossOutput(loss, masked_mean(clipped.float(), m).detach())


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    action_mask: Tensor,
    estimator: str = "k3",
    reduction: str = "token_mean",
    normaliser: LossNormaliser | None = None,
    old_logprobs: Tensor | None = None,
    unbiased_gradient: bool = False,
) -> Tensor:
    """KL penalty as a loss term (GRPO style, Shao et al. 2024), instead of in the reward.

    The per-token estimate of ``KL(policy || reference)`` from :func:`approx_kl` (GRPO uses
    ``k3``), reduced with :func:`aggregate_loss`; the trainer adds ``kl_coef * kl_loss``.

    ``unbiased_gradient`` (OpenRLHF 0.11's ``--algo.kl.unbiased_gradient``): the value stays
    the chosen estimator's, but the gradient is the importance-weighted reverse-KL gradient
    ``rho * (log pi - log p_ref) * grad log pi`` with ``rho = pi / pi_old`` (tokens were
    sampled from ``pi_old``), whose expectation is ``grad KL(pi || p_ref)``. Differentiating
    k3 directly gives ``(1 - p_ref / pi) grad log pi`` instead: in expectation the gradient of
    the *forward* KL, and unbounded where ``pi`` is small. ``rho`` uses the PPO exponent bound
    ``[-20, 20]`` and ``log pi - log p_ref`` the KL clamp ``[-10, 10]``; both are constants.
    """
    kl = approx_kl(logprobs, ref_logprobs, estimator, mask=action_mask)
    if unbiased_gradient:
        if old_logprobs is None:
            raise ValueError("unbiased_gradient needs old_logprobs (the sampling policy's)")
        m = as_bool_mask(action_mask)
        zeros = torch.zeros_like(logprobs)
        with torch.no_grad():
            rho = torch.where(m, logprobs - old_logprobs, zeros)
            rho = rho.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
            k1 = torch.where(m, logprobs - ref_logprobs, zeros).clamp(-KL_CLAMP, KL_CLAMP)
        lp = torch.where(m, logprobs, zeros)
        # value: kl; gradient: rho * k1 * d(log pi)
        kl = kl.detach() + rho * k1 * (lp - lp.detach())
    return aggregate_loss(kl, action_mask, reduction, normaliser=normaliser)
