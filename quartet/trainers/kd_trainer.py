"""Knowledge distillation: SFT loss mixed with forward KL to a frozen teacher."""

from __future__ import annotations

from quartet.algos.kd import forward_kl, kd_loss
from quartet.algos.losses import sft_loss, token_logprobs
from quartet.config.methods import KDJobConfig
from quartet.data.batch import collate
from quartet.data.tokenize import TokenizedSample
from quartet.engines.train_engine import TrainEngine
from quartet.trainers.base_trainer import LossOutput
from quartet.trainers.frozen import frozen_causal_lm
from quartet.trainers.sft_trainer import SFTTrainer

__all__ = ["KDTrainer"]


class KDTrainer(SFTTrainer):
    """SFT samples; the teacher's distribution at every response token is a second target."""

    name = "kd"
    job: KDJobConfig

    def build_engine(self) -> TrainEngine:
        engine = super().build_engine()
        j = self.job
        self.teacher = frozen_causal_lm(j.teacher.model_name_or_path, j.model, j.ds, engine,
                                        self.world, j.teacher.offload)
        return engine

    def _parts(self, samples: list[TokenizedSample]):
        batch = collate(samples, self.tokenizer.pad_token_id, packed=self.job.ds.packing_samples)
        logits = self.engine.forward(batch).logits
        labels, mask, _ = batch.shifted()
        device = logits.device
        mask = mask.to(device)
        nll = sft_loss(token_logprobs(logits[:, :-1], labels.to(device)), mask)
        teacher = self.teacher.logits(batch).to(device)
        kl = forward_kl(logits[:, :-1], teacher[:, :-1], mask, self.job.kd.kd_temperature)
        return kd_loss(nll, kl, self.job.kd.kd_coef), nll.detach(), kl.detach(), batch.num_tokens

    def compute_loss(self, samples: list[TokenizedSample]) -> LossOutput:
        loss, nll, kl, n_tokens = self._parts(samples)
        return loss, {"loss": float(loss.detach()), "nll": float(nll), "kl": float(kl)}, n_tokens

    def eval_sums(self, samples: list[TokenizedSample]) -> dict[str, float]:
        loss, nll, kl, _ = self._parts(samples)
        n = float(len(samples))
        return {"loss": float(loss) * n, "nll": float(nll) * n, "kl": float(kl) * n, "count": n}
