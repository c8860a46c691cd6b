"""DPO and its family (TRL's loss types) against a frozen reference, optional NLL on the chosen
response and MoE aux loss."""

from __future__ import annotations

import torch
from torch import Tensor

from quartet.algos.losses import dpo_loss
from quartet.algos.masked import masked_mean
from quartet.algos.rewards import RunningMeanStd
from quartet.config.jobs import DPOJobConfig
from quartet.data.batch import TokenBatch
from quartet.data.preference_dataset import PreferenceSample, build_preference_samples
from quartet.data.shared_prefix import collate_pairs, shares_prefix
from quartet.data.sources import RowSource
from quartet.engines.scoring import response_start
from quartet.engines.train_engine import TrainEngine
from quartet.trainers.base_trainer import BaseTrainer, LossOutput
from quartet.trainers.frozen import ReferencedPolicy
from quartet.trainers.logps import sequence_logp_stats

__all__ = ["DPOTrainer"]


class DPOTrainer(ReferencedPolicy, BaseTrainer):
    name = "dpo"
    job: DPOJobConfig

    def build_samples(self, sources: list[RowSource]) -> list[PreferenceSample]:
        return build_preference_samples(sources, self.tokenizer, self.job.data)

    def build_engine(self) -> TrainEngine:
        self.bco_running = RunningMeanStd()  # BCO's running reward mean (bco_pair only)
        return super().build_engine()

    def _sequence_logps(self, batch: TokenBatch, logits: Tensor,
                        start: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample summed response log-probs, their token counts, and each sample's mean
        token log-prob."""
        return sequence_logp_stats(batch, logits, start)

    def _loss(self, samples: list[PreferenceSample]) -> tuple[Tensor, dict[str, Tensor], int]:
        n = len(samples)
        # MoE aux loss depends on which tokens run: keep it on the plain rows
        layout = collate_pairs([s.chosen for s in samples], [s.rejected for s in samples],
                               self.tokenizer.pad_token_id, packed=self.job.ds.packing_samples,
                               share_prefix=(self.job.model.aux_loss_coef == 0
                                             and shares_prefix(self.engine.attn_implementation)))
        batch = layout.rows
        # logits only from the first response position on: prompts never reach the LM head
        start = response_start(batch)
        aux: list[Tensor | None] = []

        def policy_forward(b: TokenBatch, logits_from: int) -> Tensor:
            out = self.engine.forward(b, logits_from)
            aux.append(out.aux_loss)
            return out.logits

        policy, counts, means = self._sequence_logps(batch, layout.logits(policy_forward, start),
                                                     start)
        ref_logits = layout.logits(self.reference.logits, start).to(policy.device)
        ref, _, _ = self._sequence_logps(batch, ref_logits, start)
        aux_loss = aux[0]
        cfg = self.job.dpo
        loss_type = cfg.effective_loss_type
        bco_delta = 0.0
        if loss_type == "bco_pair":
            # BCO's reward shift: running mean of the batch-mean implicit reward (as TRL).
            with torch.no_grad():
                implicit = cfg.beta * torch.cat([policy[:n] - ref[:n], policy[n:] - ref[n:]])
                self.bco_running.update(implicit.mean().reshape(1))
            bco_delta = self.bco_running.mean
        dpo = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta=cfg.beta,
                       label_smoothing=cfg.label_smoothing, loss_type=loss_type,
                       chosen_lengths=counts[:n], rejected_lengths=counts[n:],
                       bco_delta=bco_delta)
        loss = dpo.loss
        parts = {"chosen_reward": dpo.chosen_rewards, "rejected_reward": dpo.rejected_rewards}
        if cfg.nll_loss_coef > 0:
            # OpenRLHF: the chosen responses' mean token NLL, averaged over pairs.
            nll = masked_mean(-means[:n], counts[:n] > 0)
            loss = loss + cfg.nll_loss_coef * nll
            parts["nll_loss"] = nll.detach()
        if self.job.model.aux_loss_coef > 0 and aux_loss is not None:
            loss = loss + self.job.model.aux_loss_coef * aux_loss
            parts["aux_loss"] = aux_loss.detach()
        parts["dpo_loss"] = dpo.loss.detach()
        return loss, parts, batch.num_tokens

    @staticmethod
    def _accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
        """Per pair: 1 if chosen's implicit reward is higher, 0.5 on a tie, else 0."""
        return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()

    def compute_loss(self, samples: list[PreferenceSample]) -> LossOutput:
        loss, parts, n_tokens = self._loss(samples)
        c, r = parts["chosen_reward"], parts["rejected_reward"]
        metrics = {
            "loss": float(loss.detach()),
            "acc": float(self._accuracy(c, r).mean()),
            "chosen_reward": float(c.mean()),
            "rejected_reward": float(r.mean()),
            "reward_margin": float((c - r).mean()),
        }
        for name in ("nll_loss", "aux_loss"):
            if name in parts:
                metrics[name] = float(parts[name])
        return loss, metrics, n_tokens

    def eval_sums(self, samples: list[PreferenceSample]) -> dict[str, float]:
        loss, parts, _ = self._loss(samples)
        c, r = parts["chosen_reward"], parts["rejected_reward"]
        n = len(samples)
        return {"loss": float(loss) * n, "acc": float(self._accuracy(c, r).sum()),
                "chosen_reward": float(c.sum()), "rejected_reward": float(r.sum()),
                "reward_margin": float((c - r).sum()), "count": float(n)}
