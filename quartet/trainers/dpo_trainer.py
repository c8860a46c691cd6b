"""DPO against a frozen reference (IPO, cDPO, optional NLL on the chosen response)."""

from __future__ import annotations

from torch import Tensor

from quartet.algos.losses import dpo_loss, sft_loss
from quartet.config.jobs import DPOJobConfig
from quartet.data.batch import TokenBatch, collate
from quartet.data.preference_dataset import PreferenceSample, build_preference_samples
from quartet.data.sources import RowSource
from quartet.engines.scoring import response_start
from quartet.trainers.base_trainer import BaseTrainer, LossOutput
from quartet.trainers.frozen import ReferencedPolicy
from quartet.trainers.logps import sequence_logps

__all__ = ["DPOTrainer"]


class DPOTrainer(ReferencedPolicy, BaseTrainer):
    name = "dpo"
    job: DPOJobConfig

    def build_samples(self, sources: list[RowSource]) -> list[PreferenceSample]:
        return build_preference_samples(sources, self.tokenizer, self.job.data)

    def _sequence_logps(self, batch: TokenBatch, logits: Tensor,
                        start: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample summed response log-probs, token log-probs and the target mask."""
        return sequence_logps(batch, logits, self.job.dpo.ipo_enable, start)

    def _loss(self, samples: list[PreferenceSample]) -> tuple[Tensor, dict[str, Tensor], int]:
        n = len(samples)
        seqs = [s.chosen for s in samples] + [s.rejected for s in samples]
        batch = collate(seqs, self.tokenizer.pad_token_id, packed=self.job.ds.packing_samples)
        # logits only from the first response position on: prompts never reach the LM head
        start = response_start(batch)
        policy_logits = self.engine.forward(batch, start).logits
        policy, token_lp, mask = self._sequence_logps(batch, policy_logits, start)
        ref_logits = self.reference.logits(batch, start).to(policy.device)
        ref, _, _ = self._sequence_logps(batch, ref_logits, start)
        cfg = self.job.dpo
        out = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta=cfg.beta,
                       label_smoothing=cfg.label_smoothing, ipo=cfg.ipo_enable)
        loss = out.loss
        parts = {"chosen_reward": out.chosen_rewards, "rejected_reward": out.rejected_rewards}
        if cfg.nll_loss_coef > 0:
            sample_ids = batch.shifted()[2][:, start:].to(mask.device)
            nll = sft_loss(token_lp, mask & (sample_ids < n))
            loss = loss + cfg.nll_loss_coef * nll
            parts["nll_loss"] = nll.detach()
        parts["dpo_loss"] = out.loss.detach()
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
        if "nll_loss" in parts:
            metrics["nll_loss"] = float(parts["nll_loss"])
        return loss, metrics, n_tokens

    def eval_sums(self, samples: list[PreferenceSample]) -> dict[str, float]:
        loss, parts, _ = self._loss(samples)
        c, r = parts["chosen_reward"], parts["rejected_reward"]
        n = len(samples)
        return {"loss": float(loss) * n, "acc": float(self._accuracy(c, r).sum()),
                "chosen_reward": float(c.sum()), "rejected_reward": float(r.sum()),
                "reward_margin": float((c - r).sum()), "count": float(n)}
