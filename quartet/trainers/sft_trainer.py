"""SFT: token-mean (or sequence-mean) NLL over response tokens (all tokens in pretrain mode)."""

from __future__ import annotations

from typing import Any

from quartet.algos.losses import sft_loss, token_logprobs
from quartet.algos.masked import masked_mean
from quartet.config.jobs import SFTJobConfig
from quartet.data.batch import collate
from quartet.data.sft_dataset import build_sft_samples
from quartet.data.sources import RowSource
from quartet.data.tokenize import TokenizedSample
from quartet.engines.train_engine import TrainEngine
from quartet.trainers.base_trainer import BaseTrainer, LossOutput

__all__ = ["SFTTrainer"]


class SFTTrainer(BaseTrainer):
    name = "sft"
    job: SFTJobConfig

    def build_samples(self, sources: list[RowSource]) -> list[TokenizedSample]:
        return build_sft_samples(sources, self.tokenizer, self.job.data,
                                 pretrain_mode=self.job.sft.pretrain_mode_enable)

    def build_engine(self) -> TrainEngine:
        j = self.job
        return TrainEngine.causal_lm(j.model, j.ds, j.optim, j.adam, j.muon, **self.engine_args())

    def _nll(self, samples: list[TokenizedSample]) -> tuple[Any, Any, int]:
        batch = collate(samples, self.tokenizer.pad_token_id, packed=self.job.ds.packing_samples)
        out = self.engine.forward(batch)
        labels, mask, _ = batch.shifted()
        device = out.logits.device
        logprobs = token_logprobs(out.logits[:, :-1], labels.to(device))
        mask = mask.to(device)
        if self.job.sft.loss_agg_mode == "seq-mean-token-mean":
            # per sample, packing-safe: a packed row holds several samples
            means, counts = batch.to(device).per_sample_mean(logprobs, mask,
                                                               batch.shifted()[2].to(device))
            return masked_mean(-means, counts > 0), out, batch.num_tokens
        return sft_loss(logprobs, mask), out, batch.num_tokens

    def compute_loss(self, samples: list[TokenizedSample]) -> LossOutput:
        loss, out, n_tokens = self._nll(samples)
        metrics = {"loss": float(loss.detach())}
        if self.job.model.aux_loss_coef > 0 and out.aux_loss is not None:
            metrics["aux_loss"] = float(out.aux_loss.detach())
            loss = loss + self.job.model.aux_loss_coef * out.aux_loss
        return loss, metrics, n_tokens

    def eval_sums(self, samples: list[TokenizedSample]) -> dict[str, float]:
        loss, _, _ = self._nll(samples)
        return {"loss": float(loss) * len(samples), "count": float(len(samples))}
