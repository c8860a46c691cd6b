"""One PPO optimizer step for the actor (clipped surrogate) and the critic (clipped value).

Shared by the actor and critic services and by the in-process mode. A step receives this
rank's share of one mini-batch (`train.batch_size / world_size` rows) and splits it into
micro-batches that match the engine's gradient accumulation, so DeepSpeed steps the
optimizer once per call.

Every loss is normalised over the whole mini-batch (`LossNormaliser`, computed by whoever
holds all of it), not per micro-batch or per rank: each micro-batch backpropagates its
share of the mini-batch loss, scaled by `accumulation x world_size` to undo DeepSpeed's
averaging over both. So one rank and N ranks take the same step on the same mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quartet.algos.losses import (
    LossNormaliser,
    aggregate_loss,
    entropy_from_logits,
    kl_loss,
    policy_loss,
    token_logprobs,
    value_loss,
)
from quartet.algos.masked import masked_mean
from quartet.codec.batches import RowBatch
from quartet.data.shared_prefix import SharedLayout, shares_prefix
from quartet.engines.scoring import (
    LogProbsResult,
    gather_rows,
    hidden_fn,
    layout_stats_from_hidden,
    pad_rows,
    response_logprobs,
    response_positions,
    response_start,
    split_micro,
    to_model_batch,
    to_model_layout,
)
from quartet.ppo.batch import (
    PolicyLossSettings,
    PolicyMiniBatch,
    ValueLossSettings,
    ValueMiniBatch,
    pad_response_values,
)
from quartet.serving.errors import InvalidArgument

KEPT_LOGSOFTMAX_BYTES = 128 << 20
"""The actor's training forward keeps up to this many bytes of its chunks' log-softmax for
backward instead of recomputing their logits there (`hidden_token_stats(keep_bytes=)`): a
micro-batch of 8 rows x 64 response tokens over a 49k vocabulary keeps all of its ~100 MB,
and backward skips one `[positions, H] x [H, V]` product (benchmarks.md, "Seventh pass
(speed)"). Longer responses recompute what does not fit."""

SHARE_METRICS = ("policy_loss", "kl_loss", "entropy", "value_loss", "ptx_loss")
"""Metrics that are shares of a mini-batch quantity (see module doc): summed, not averaged,
over micro-batches and ranks."""


def merge_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Metrics of several micro-batches (or ranks) as one: shares summed, the rest averaged."""
    keys = {k for m in parts for k in m}
    out = {}
    for k in sorted(keys):
        total = sum(m.get(k, 0.0) for m in parts)
        out[k] = total if k in SHARE_METRICS else total / len(parts)
    return out


class _Updater:
    """What the actor's and critic's steps share: the engine, batching, and the contract that
    one TrainStep (exactly `mini_batch_size` rows on this rank) is one optimizer step."""

    def __init__(self, engine, pad_id: int, micro_batch_size: int, mini_batch_size: int,
                 packed: bool = False) -> None:
        self.engine = engine
        self.pad_id = pad_id
        self.micro_batch_size = micro_batch_size
        self.mini_batch_size = mini_batch_size
        self.packed = packed
        # the samples of one prompt in a micro-batch run as one row (quartet.data.shared_prefix)
        self.share_prefix = not packed and shares_prefix(engine.attn_implementation)
        # DeepSpeed divides each micro-batch loss by the accumulation steps and averages
        # gradients over the ranks; a share of the mini-batch loss is multiplied back.
        self.share_scale = float(engine.ds_config["gradient_accumulation_steps"]
                                 * engine.world.world_size)

    def _layout(self, rows: RowBatch) -> SharedLayout:
        return to_model_layout(rows, self.pad_id, self.packed, self.share_prefix)

    def _micro_batches(self, mb):
        """Checks the row count, switches to train mode, yields micro-batches and the model
        layout of each."""
        n = len(mb.batch)
        if n != self.mini_batch_size:
            raise InvalidArgument(
                f"batch: TrainStep needs exactly {self.mini_batch_size} rows (train.batch_size "
                f"of this service), got {n}")
        self.engine.train()
        for s, e in split_micro(n, self.micro_batch_size):
            micro = mb.slice(s, e)
            yield micro, self._layout(micro.batch)

    def _step(self, loss_share: torch.Tensor):
        self.engine.backward(loss_share * self.share_scale)
        return self.engine.step()

    @staticmethod
    def _summary(metrics: list[dict[str, float]], info) -> dict[str, float]:
        """Micro-batch metrics merged, plus what the optimizer step reported."""
        out = merge_metrics(metrics)
        if info is not None:
            out.update(lr=info.lr, grad_norm=info.grad_norm, global_step=float(info.step))
        return out


@dataclass
class _ResponseStats:
    """What the policy loss needs from one micro-batch's forward."""

    logprobs: list[torch.Tensor]
    entropy: list[torch.Tensor]
    anchor: torch.Tensor
    """A tensor of the forward's graph (`0 * anchor.sum()` keeps the graph connected when
    every response is empty)."""
    aux_loss: torch.Tensor | None


class PolicyUpdater(_Updater):
    """The actor's compute: log-probs for scoring and PPO steps, over a TrainEngine."""

    def logprobs(self, rows: RowBatch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult:
        self.engine.eval()
        hidden_of = hidden_fn(self.engine.output_weight(), self.engine.forward_hidden)
        return response_logprobs(lambda b, start: self.engine.forward(b, start).logits, rows,
                                 self.pad_id,
                                 temperature, self.micro_batch_size, with_entropy, self.packed,
                                 self.share_prefix, hidden_of)

    def train_step(self, mb: PolicyMiniBatch, loss_cfg: PolicyLossSettings,
                   norm: LossNormaliser | None = None) -> dict[str, float]:
        """One optimizer step; `norm` counts the whole mini-batch (default: `mb` is all of
        it)."""
        norm = norm or LossNormaliser.of_lengths([a.numel() for a in mb.advantages])
        ptx_norm = (LossNormaliser.of_lengths(mb.ptx.response_lengths())
                    if mb.ptx is not None else None)
        metrics: list[dict[str, float]] = []
        info = None
        for micro, layout in self._micro_batches(mb):
            stats = self._response_stats(layout, loss_cfg.temperature, loss_cfg.entropy_coef > 0)
            new, mask = pad_rows(stats.logprobs)
            width = new.shape[1]
            dev = new.device
            if loss_cfg.old_logprobs_from_forward:
                # one-pass PPO: this forward runs on the weights that the old log-probs
                # would have been computed with, so they are this forward's, detached
                old = new.detach()
            else:
                old = pad_response_values(micro.old_logprobs, width)[0].to(dev)
            adv = pad_response_values(micro.advantages, width)[0].to(dev)
            rollout = None
            if loss_cfg.is_correction.enabled:
                if micro.rollout_logprobs is None:
                    raise InvalidArgument("rollout_logprobs: required with is_correction_level "
                                          f"{loss_cfg.is_correction.level}")
                rollout = pad_response_values(micro.rollout_logprobs, width)[0].to(dev)
            pl = policy_loss(new, old, adv, mask, loss_cfg.clip_eps_low, loss_cfg.clip_eps_high,
                             loss_cfg.dual_clip, loss_cfg.reduction, normaliser=norm,
                             policy_loss_type=loss_cfg.policy_loss_type,
                             rollout_logprobs=rollout, is_correction=loss_cfg.is_correction)
            # keeps the graph connected when every response in the micro-batch is empty
            loss = pl.loss + 0.0 * stats.anchor.sum()
            m = {"policy_loss": pl.loss.item(), "clip_fraction": float(pl.clip_fraction),
                 "approx_kl": float(pl.approx_kl), "ratio": float(pl.ratio_mean)}
            if pl.vllm_kl is not None:
                m["vllm_kl"] = float(pl.vllm_kl)
                m["is_filter_ratio"] = float(pl.is_filter_ratio)
            # entropy is always reported; it joins the graph only with an entropy bonus
            with torch.set_grad_enabled(loss_cfg.entropy_coef > 0):
                ent, _ = pad_rows(stats.entropy)
                entropy = aggregate_loss(ent, mask, "token_mean", normaliser=norm)
            if loss_cfg.entropy_coef > 0:
                loss = loss - loss_cfg.entropy_coef * entropy
            m["entropy"] = float(entropy.detach())
            if loss_cfg.kl_coef > 0 and micro.ref_logprobs is not None:
                ref = pad_response_values(micro.ref_logprobs, width)[0].to(dev)
                kl = kl_loss(new, ref, mask, loss_cfg.kl_estimator, normaliser=norm,
                             old_logprobs=old, unbiased_gradient=loss_cfg.kl_unbiased_gradient)
                loss = loss + loss_cfg.kl_coef * kl
                m["kl_loss"] = float(kl.detach())
            if loss_cfg.ptx_coef > 0 and micro.ptx is not None:
                ptx = self._ptx_loss(micro.ptx, ptx_norm)
                loss = loss + loss_cfg.ptx_coef * ptx
                m["ptx_loss"] = float(ptx.detach())
            if stats.aux_loss is not None:
                m["aux_loss"] = float(stats.aux_loss)
            info = self._step(loss) or info
            metrics.append(m)
        return self._summary(metrics, info)

    def _response_stats(self, layout: SharedLayout, temperature: float,
                        entropy_grad: bool) -> _ResponseStats:
        """One forward of a micro-batch: each row's response log-probs (in the graph) and
        entropies (in the graph only with `entropy_grad`). Where the engine's logits are a
        plain output layer (`TrainEngine.output_weight`), from the decoder's hidden states in
        chunks (`stats_from_hidden`: no `[R, T, V]` logits or their gradients); otherwise
        from the logits."""
        batch = layout.rows
        start = response_start(batch)
        pos = response_positions(batch, start)
        hidden_of = hidden_fn(self.engine.output_weight(), self.engine.forward_hidden)
        if hidden_of is not None:
            lps, ents, hidden = layout_stats_from_hidden(
                layout, start, pos, hidden_of, temperature,
                into_grad=self.engine.plain_grad_accumulation,
                keep_bytes=KEPT_LOGSOFTMAX_BYTES)
            if not entropy_grad:
                ents = [e.detach() for e in ents]
            return _ResponseStats(lps, ents, hidden, None)
        first = layout.window_start(start)
        out = self.engine.forward(layout.model_batch, first)
        logits = layout.gather(out.logits, start, first)[:, :-1]
        labels = batch.input_ids[:, start + 1:].to(logits.device)
        lps = gather_rows(token_logprobs(logits, labels, temperature), pos)
        with torch.set_grad_enabled(entropy_grad):
            ents = gather_rows(entropy_from_logits(logits, temperature), pos)
        return _ResponseStats(lps, ents, logits, out.aux_loss)

    def _ptx_loss(self, rows: RowBatch, norm: LossNormaliser) -> torch.Tensor:
        """PPO-ptx (InstructGPT): this micro-batch's share of the token-mean next-token NLL
        over the mini-batch's pre-training rows (`norm` counts this rank's rows; each rank's
        share is divided by the world size, so ranks average)."""
        batch = to_model_batch(rows, self.pad_id, self.packed)
        logits = self.engine.forward(batch).logits[:, :-1]
        labels, mask, _ = batch.shifted()
        lp = token_logprobs(logits, labels.to(logits.device))
        share = aggregate_loss(-lp, mask.to(logits.device), "token_mean", normaliser=norm)
        return share / self.engine.world.world_size + 0.0 * logits.sum()


class ValueUpdater(_Updater):
    """The critic's compute: per-token values and clipped value-loss steps."""

    def _values(self, layout: SharedLayout) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each row's response values, and the model's raw output (to keep in the graph)."""
        raw = self.engine.forward(layout.model_batch).values
        values = layout.gather(raw, 0, 0)[:, :-1]
        return gather_rows(values, response_positions(layout.rows)), raw

    @torch.no_grad()
    def values(self, rows: RowBatch) -> list[torch.Tensor]:
        self.engine.eval()
        out: list[torch.Tensor] = []
        for s, e in split_micro(len(rows), self.micro_batch_size):
            out += [t.float().cpu() for t in self._values(self._layout(rows.slice(s, e)))[0]]
        return out

    def train_step(self, mb: ValueMiniBatch, loss_cfg: ValueLossSettings,
                   norm: LossNormaliser | None = None) -> dict[str, float]:
        """One optimizer step; `norm` counts the whole mini-batch (default: `mb` is all of
        it)."""
        norm = norm or LossNormaliser.of_lengths([r.numel() for r in mb.returns])
        metrics: list[dict[str, float]] = []
        info = None
        for micro, layout in self._micro_batches(mb):
            rows, raw = self._values(layout)
            values, mask = pad_rows(rows)
            width, dev = values.shape[1], values.device
            old = pad_response_values(micro.old_values, width)[0].to(dev)
            returns = pad_response_values(micro.returns, width)[0].to(dev)
            vl = value_loss(values, old, returns, mask, loss_cfg.clip_eps, normaliser=norm)
            info = self._step(vl.loss + 0.0 * raw.sum()) or info
            metrics.append({"value_loss": vl.loss.item(),
                            "value_clip_fraction": float(vl.clip_fraction),
                            "values": float(masked_mean(values.detach(), mask))})
        return self._summary(metrics, info)
