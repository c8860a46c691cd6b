"""KTO against a frozen reference, on unpaired desirable/undesirable feedback."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from quartet.algos.kto import KTOLossOutput, kto_kl_estimate, kto_loss, vanilla_kto_loss
from quartet.config.methods import KTOJobConfig
from quartet.data.batch import collate
from quartet.data.kto_dataset import KTOSample, build_kto_samples
from quartet.data.sources import RowSource
from quartet.data.tokenize import TokenizedSample
from quartet.engines.scoring import response_start
from quartet.trainers.base_trainer import BaseTrainer, LossOutput
from quartet.trainers.frozen import ReferencedPolicy
from quartet.trainers.logps import sequence_logps

__all__ = ["KTOTrainer"]


class KTOTrainer(ReferencedPolicy, BaseTrainer):
    name = "kto"
    job: KTOJobConfig

    def build_samples(self, sources: list[RowSource]) -> list[KTOSample]:
        return build_kto_samples(sources, self.tokenizer, self.job.data)

    def _logps(self, seqs: list[TokenizedSample]) -> tuple[Tensor, Tensor]:
        """Policy (with grad) and reference summed response log-probs of ``seqs``."""
        batch = collate(seqs, self.tokenizer.pad_token_id, packed=self.job.ds.packing_samples)
        start = response_start(batch)  # prompts never reach the LM head
        policy, _, _ = sequence_logps(batch, self.engine.forward(batch, start).logits,
                                      start=start)
        ref_logits = self.reference.logits(batch, start).to(policy.device)
        ref, _, _ = sequence_logps(batch, ref_logits, start=start)
        return policy, ref

    def response_logps(self, samples: list[KTOSample]) -> Tensor:
        """Policy log-probs of each sample's own response (no grad): for margins in reports."""
        with torch.no_grad():
            return self._logps([s.sequence for s in samples])[0]

    def _loss(self, samples: list[KTOSample]) -> KTOLossOutput:
        cfg = self.job.kto
        desirable = torch.tensor([s.desirable for s in samples])
        if cfg.vanilla_loss:
            policy, ref = self._logps([s.sequence for s in samples])
            return vanilla_kto_loss(policy, ref, desirable.to(policy.device), cfg.beta)
        n = len(samples)
        policy, ref = self._logps([s.sequence for s in samples] +
                                  [s.kl_sequence for s in samples])
        kl = kto_kl_estimate(policy[n:].detach(), ref[n:])
        if self.world.world_size > 1:
            dist.all_reduce(kl)
            kl = kl / self.world.world_size
        return kto_loss(policy[:n], ref[:n], desirable.to(policy.device), kl, cfg.beta,
                        cfg.desirable_loss_weight, cfg.undesirable_loss_weight)

    def compute_loss(self, samples: list[KTOSample]) -> LossOutput:
        out = self._loss(samples)
        metrics = {"loss": float(out.loss.detach()), "kl": float(out.kl)}
        if out.desirable_rewards.numel():
            metrics["desirable_reward"] = float(out.desirable_rewards.mean())
        if out.undesirable_rewards.numel():
            metrics["undesirable_reward"] = float(out.undesirable_rewards.mean())
        tokens = sum(len(s.sequence.input_ids) + len(s.kl_sequence.input_ids) for s in samples)
        return out.loss, metrics, tokens

    def eval_sums(self, samples: list[KTOSample]) -> dict[str, float]:
        out = self._loss(samples)
        n = len(samples)
        return {"loss": float(out.loss) * n, "kl": float(out.kl) * n, "count": float(n)}
