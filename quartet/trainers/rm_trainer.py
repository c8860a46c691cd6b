"""Reward model: pairwise loss on the score at each sequence's last (EOS) token."""

from __future__ import annotations

import torch
from torch import Tensor

from quartet.algos.losses import pairwise_rm_loss
from quartet.config.jobs import RMJobConfig
from quartet.data.preference_dataset import PreferenceSample, build_preference_samples
from quartet.data.shared_prefix import collate_pairs, shares_prefix
from quartet.data.sources import RowSource
from quartet.engines.train_engine import TrainEngine
from quartet.trainers.base_trainer import BaseTrainer, LossOutput

__all__ = ["RMTrainer"]


class RMTrainer(BaseTrainer):
    name = "rm"
    job: RMJobConfig

    def build_samples(self, sources: list[RowSource]) -> list[PreferenceSample]:
        return build_preference_samples(sources, self.tokenizer, self.job.data,
                                        with_margin=self.job.rm.margin_loss_enable)

    def build_engine(self) -> TrainEngine:
        j = self.job
        return TrainEngine.value_model(j.model, j.ds, j.optim, j.adam, j.muon,
                                       seed=j.train.seed, **self.engine_args())

    def scores(self, samples: list[PreferenceSample]) -> tuple[Tensor, Tensor, int]:
        """Chosen and rejected scores ``[B]`` from one forward over all 2B sequences (one row
        per pair when they share a prefix, see :mod:`quartet.data.shared_prefix`)."""
        layout = collate_pairs([s.chosen for s in samples], [s.rejected for s in samples],
                               self.tokenizer.pad_token_id, packed=self.job.ds.packing_samples,
                               share_prefix=shares_prefix(self.engine.attn_implementation))
        values = self.engine.forward(layout.model_batch).values
        ends = layout.last_token_index(values.shape[1])
        scores = values.reshape(-1)[ends.to(values.device)]
        if self.job.rm.compute_fp32_loss_enable:
            scores = scores.float()
        n = len(samples)
        return scores[:n], scores[n:], layout.rows.num_tokens

    def _loss(self, samples: list[PreferenceSample]) -> tuple[Tensor, Tensor, Tensor, int]:
        chosen, rejected, n_tokens = self.scores(samples)
        margin = None
        if self.job.rm.margin_loss_enable:
            margin = torch.tensor([s.margin for s in samples], dtype=chosen.dtype,
                                  device=chosen.device)
        loss = pairwise_rm_loss(chosen, rejected, margin=margin, loss_type=self.job.rm.loss_type)
        return loss, chosen.detach(), rejected.detach(), n_tokens

    def compute_loss(self, samples: list[PreferenceSample]) -> LossOutput:
        loss, chosen, rejected, n_tokens = self._loss(samples)
        metrics = {
            "loss": float(loss.detach()),
            "acc": float((chosen > rejected).float().mean()),
            "chosen_reward": float(chosen.float().mean()),
            "rejected_reward": float(rejected.float().mean()),
        }
        return loss, metrics, n_tokens

    def eval_sums(self, samples: list[PreferenceSample]) -> dict[str, float]:
        loss, chosen, rejected, _ = self._loss(samples)
        n = len(samples)
        return {"loss": float(loss) * n, "acc": float((chosen > rejected).float().sum()),
                "chosen_reward": float(chosen.float().sum()),
                "rejected_reward": float(rejected.float().sum()), "count": float(n)}
