"""One PPO optimizer step for the actor (clipped surrogate) and the critic (clipped value).

Shared by the actor and critic services and by the in-process mode. A step receives exactly
one mini-batch (`train.batch_size` rows) and splits it into micro-batches that match the
engine's gradient accumulation, so DeepSpeed steps the optimizer once per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from quartet.algos.losses import (
    entropy_from_logits,
    kl_loss,
    policy_loss,
    token_logprobs,
    truncated_is_weights,
    value_loss,
)
from quartet.algos.masked import masked_mean
from quartet.codec.batches import TokenBatch as RowBatch
from quartet.data.batch import TokenBatch, collate
from quartet.data.tokenize import TokenizedSample
from quartet.engines.scoring import LogProbsResult
from quartet.ppo.batch import (
    PolicyLossSettings,
    PolicyMiniBatch,
    ValueLossSettings,
    ValueMiniBatch,
    pad_response_values,
)
from quartet.serving.errors import InvalidArgument


def to_model_batch(rows: RowBatch, pad_id: int, packed: bool = False) -> TokenBatch:
    """Prompt+response rows → the trainers' padded/packed batch, targets on response tokens."""
    samples = [
        TokenizedSample(r.tolist(), [0] * p + [1] * (r.numel() - p))
        for r, p in zip(rows.rows, rows.prompt_lengths, strict=True)
    ]
    return collate(samples, pad_id, packed)


def response_positions(batch: TokenBatch) -> list[torch.Tensor]:
    """For each sample, the flat indices into `[R, T-1]` of the positions that predict its
    response tokens, in order (works for padded and packed layouts)."""
    _, target, owner = batch.shifted()
    flat_owner = owner.reshape(-1)
    flat_target = target.reshape(-1)
    out = []
    for i in range(batch.num_samples):
        out.append(torch.nonzero(flat_target & (flat_owner == i), as_tuple=False).squeeze(-1))
    return out


def gather_rows(per_position: torch.Tensor, positions: Sequence[torch.Tensor]
                ) -> list[torch.Tensor]:
    flat = per_position.reshape(-1)
    return [flat[p] for p in positions]


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows (may carry grad) → right-padded [B, T] and bool mask."""
    lengths = torch.tensor([r.numel() for r in rows])
    width = max(int(lengths.max()) if len(rows) else 0, 1)
    padded = pad_sequence([r.float() for r in rows], batch_first=True)
    if padded.shape[1] < width:
        padded = torch.nn.functional.pad(padded, (0, width - padded.shape[1]))
    mask = torch.arange(width)[None, :] < lengths[:, None]
    return padded, mask.to(padded.device)


def split_micro(n: int, micro_batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + micro_batch_size, n)) for s in range(0, n, micro_batch_size)]


def _mean(metrics: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for m in metrics for k in m}
    return {k: sum(m.get(k, 0.0) for m in metrics) / len(metrics) for k in sorted(keys)}


class PolicyUpdater:
    """The actor's compute: log-probs for scoring and PPO steps, over a TrainEngine."""

    def __init__(self, engine, pad_id: int, micro_batch_size: int, mini_batch_size: int,
                 packed: bool = False) -> None:
        self.engine = engine
        self.pad_id = pad_id
        self.micro_batch_size = micro_batch_size
        self.mini_batch_size = mini_batch_size
        self.packed = packed

    @torch.no_grad()
    def logprobs(self, rows: RowBatch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult:
        self.engine.eval()
        lps: list[torch.Tensor] = []
        ents: list[torch.Tensor] = []
        for s, e in split_micro(len(rows), self.micro_batch_size):
            batch = to_model_batch(rows.slice(s, e), self.pad_id, self.packed)
            logits = self.engine.forward(batch).logits[:, :-1]
            labels = batch.input_ids[:, 1:].to(logits.device)
            pos = response_positions(batch)
            lps += [t.float().cpu() for t in gather_rows(
                token_logprobs(logits, labels, temperature), pos)]
            if with_entropy:
                ents += [t.float().cpu() for t in gather_rows(
                    entropy_from_logits(logits, temperature), pos)]
        return LogProbsResult(lps, ents if with_entropy else None)

    def _check_rows(self, n: int) -> None:
        if n != self.mini_batch_size:
            raise InvalidArgument(
                f"batch: TrainStep needs exactly {self.mini_batch_size} rows (train.batch_size "
                f"of this service), got {n}")

    def train_step(self, mb: PolicyMiniBatch, loss_cfg: PolicyLossSettings) -> dict[str, float]:
        self._check_rows(len(mb.batch))
        self.engine.train()
        metrics: list[dict[str, float]] = []
        info = None
        for s, e in split_micro(len(mb.batch), self.micro_batch_size):
            micro = mb.slice(s, e)
            batch = to_model_batch(micro.batch, self.pad_id, self.packed)
            out = self.engine.forward(batch)
            logits = out.logits[:, :-1]
            labels = batch.input_ids[:, 1:].to(logits.device)
            pos = response_positions(batch)
            new, mask = pad_rows(gather_rows(
                token_logprobs(logits, labels, loss_cfg.temperature), pos))
            width = new.shape[1]
            dev = new.device
            old = pad_response_values(micro.old_logprobs, width)[0].to(dev)
            adv = pad_response_values(micro.advantages, width)[0].to(dev)
            is_weights = None
            if loss_cfg.is_correction_cap > 0 and micro.rollout_logprobs is not None:
                rollout = pad_response_values(micro.rollout_logprobs, width)[0].to(dev)
                is_weights = truncated_is_weights(old, rollout, mask,
                                                  cap=loss_cfg.is_correction_cap)
            pl = policy_loss(new, old, adv, mask, loss_cfg.clip_eps_low, loss_cfg.clip_eps_high,
                             loss_cfg.dual_clip, loss_cfg.reduction, is_weights=is_weights)
            # keeps the graph connected when every response in the micro-batch is empty
            loss = pl.loss + 0.0 * logits.sum()
            m = {"policy_loss": pl.loss.item(), "clip_fraction": float(pl.clip_fraction),
                 "approx_kl": float(pl.approx_kl), "ratio": float(pl.ratio_mean)}
            # entropy is always reported; it joins the graph only with an entropy bonus
            with torch.set_grad_enabled(loss_cfg.entropy_coef > 0):
                ent, _ = pad_rows(gather_rows(
                    entropy_from_logits(logits, loss_cfg.temperature), pos))
                entropy = masked_mean(ent, mask)
            if loss_cfg.entropy_coef > 0:
                loss = loss - loss_cfg.entropy_coef * entropy
            m["entropy"] = float(entropy)
            if loss_cfg.kl_coef > 0 and micro.ref_logprobs is not None:
                ref = pad_response_values(micro.ref_logprobs, width)[0].to(dev)
                kl = kl_loss(new, ref, mask, loss_cfg.kl_estimator)
                loss = loss + loss_cfg.kl_coef * kl
                m["kl_loss"] = float(kl)
            if out.aux_loss is not None:
                m["aux_loss"] = float(out.aux_loss)
            self.engine.backward(loss)
            info = self.engine.step() or info
            metrics.append(m)
        result = _mean(metrics)
        if info is not None:
            result.update(lr=info.lr, grad_norm=info.grad_norm, global_step=float(info.step))
        return result


class ValueUpdater:
    """The critic's compute: per-token values and clipped value-loss steps."""

    def __init__(self, engine, pad_id: int, micro_batch_size: int, mini_batch_size: int,
                 packed: bool = False) -> None:
        self.engine = engine
        self.pad_id = pad_id
        self.micro_batch_size = micro_batch_size
        self.mini_batch_size = mini_batch_size
        self.packed = packed

    def _values(self, rows: RowBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        batch = to_model_batch(rows, self.pad_id, self.packed)
        values = self.engine.forward(batch).values[:, :-1]
        return gather_rows(values, response_positions(batch)), values

    @torch.no_grad()
    def values(self, rows: RowBatch) -> list[torch.Tensor]:
        self.engine.eval()
        out: list[torch.Tensor] = []
        for s, e in split_micro(len(rows), self.micro_batch_size):
            out += [t.float().cpu() for t in self._values(rows.slice(s, e))[0]]
        return out

    def train_step(self, mb: ValueMiniBatch, loss_cfg: ValueLossSettings) -> dict[str, float]:
        if len(mb.batch) != self.mini_batch_size:
            raise InvalidArgument(
                f"batch: TrainStep needs exactly {self.mini_batch_size} rows (train.batch_size "
                f"of this service), got {len(mb.batch)}")
        self.engine.train()
        metrics: list[dict[str, float]] = []
        info = None
        for s, e in split_micro(len(mb.batch), self.micro_batch_size):
            micro = mb.slice(s, e)
            rows, raw = self._values(micro.batch)
            values, mask = pad_rows(rows)
            width, dev = values.shape[1], values.device
            old = pad_response_values(micro.old_values, width)[0].to(dev)
            returns = pad_response_values(micro.returns, width)[0].to(dev)
            vl = value_loss(values, old, returns, mask, loss_cfg.clip_eps)
            loss = vl.loss + 0.0 * raw.sum()
            self.engine.backward(loss)
            info = self.engine.step() or info
            metrics.append({"value_loss": vl.loss.item(),
                            "value_clip_fraction": float(vl.clip_fraction),
                            "values": float(masked_mean(values.detach(), mask))})
        result = _mean(metrics)
        if info is not None:
            result.update(lr=info.lr, grad_norm=info.grad_norm, global_step=float(info.step))
        return result
