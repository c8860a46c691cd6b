"""Process reward model: a causal LM that predicts a reward token after each step
placeholder; saved with ``prm_config.json`` so that serving knows its tokens."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from quartet.algos.prm import PRMLossOutput, prm_loss
from quartet.config.methods import PRMJobConfig
from quartet.data.batch import collate
from quartet.data.prm_dataset import PRMSample, build_prm_samples, single_token_id
from quartet.data.sources import RowSource
from quartet.engines.train_engine import TrainEngine
from quartet.rewards.prm import PRM_CONFIG_FILE
from quartet.trainers.base_trainer import BaseTrainer, LossOutput

__all__ = ["PRMTrainer"]


class PRMTrainer(BaseTrainer):
    name = "prm"
    job: PRMJobConfig

    def build_samples(self, sources: list[RowSource]) -> list[PRMSample]:
        p = self.job.prm
        return build_prm_samples(sources, self.tokenizer, self.job.data, p.placeholder_token,
                                 p.reward_tokens)

    def build_engine(self) -> TrainEngine:
        j = self.job
        self.reward_token_ids = [single_token_id(self.tokenizer, t, "--model.reward_tokens")
                                 for t in j.prm.reward_tokens]
        return TrainEngine.causal_lm(j.model, j.ds, j.optim, j.adam, j.muon, **self.engine_args())

    def _loss(self, samples: list[PRMSample]) -> tuple[PRMLossOutput, int]:
        batch = collate([s.sequence for s in samples], self.tokenizer.pad_token_id,
                        packed=self.job.ds.packing_samples)
        logits = self.engine.forward(batch).logits
        labels = [v for s in samples for v in s.labels]
        dtype = torch.float32 if isinstance(labels[0], float) else torch.long
        steps = batch.target_mask.bool().to(logits.device)
        out = prm_loss(logits, steps, torch.tensor(labels, dtype=dtype), self.reward_token_ids)
        return out, batch.num_tokens

    def compute_loss(self, samples: list[PRMSample]) -> LossOutput:
        out, tokens = self._loss(samples)
        return out.loss, {"loss": float(out.loss.detach()), "acc": float(out.accuracy)}, tokens

    def eval_sums(self, samples: list[PRMSample]) -> dict[str, float]:
        """Per-step sums: ``eval/acc`` is the accuracy over held-out *steps*."""
        out, _ = self._loss(samples)
        n = float(out.num_steps)
        return {"loss": float(out.loss) * n, "acc": float(out.accuracy) * n, "count": n}

    def fit(self) -> list[dict]:
        history = super().fit()
        if self.world.is_main and self.job.train.stop_after_steps < 0:
            p = self.job.prm
            Path(self.job.ckpt.output_dir, PRM_CONFIG_FILE).write_text(json.dumps(
                {"placeholder_token": p.placeholder_token,
                 "reward_tokens": list(p.reward_tokens)}, ensure_ascii=False, indent=2))
        return history
