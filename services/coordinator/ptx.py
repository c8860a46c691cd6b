"""PPO-ptx (InstructGPT, Ouyang et al. 2022, eq. 2): a next-token loss on pre-training text,
weighted by `--actor.ptx_coef`, is added to every actor step so RL does not erode what the
model knew.

The coordinator owns the data (`--data.pretrain_dataset`) like it owns the prompts: it attaches
one pre-training row to each policy row of a TrainStep (`PolicyMiniBatch.ptx`), and the actor
adds `ptx_coef * NLL(ptx rows)` to the micro-batch loss (`quartet.ppo.updates`). The PPO loop
does not change: `PtxActor` wraps the actor client.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from quartet.codec.batches import RowBatch
from quartet.data.tokenize import TokenizedSample
from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
from quartet.v1 import common_pb2

__all__ = ["PretrainRows", "PtxActor", "load_pretrain_samples"]


def load_pretrain_samples(path: str, split: str, text_key: str, max_len: int,
                          max_samples: int, tokenizer: Any) -> list[TokenizedSample]:
    """Tokenized pre-training rows: the text under `text_key`, every token after the first a
    target, cut at `max_len` tokens."""
    from quartet.config.data import DataConfig
    from quartet.data.sft_dataset import build_sft_samples
    from quartet.data.sources import DataError, load_rows

    data = DataConfig(dataset=path, dataset_split=split, input_key=text_key, output_key=None,
                      max_len=max_len, max_samples=max_samples)
    samples = build_sft_samples(load_rows(path, split, max_samples), tokenizer, data,
                                pretrain_mode=True)
    if not samples:
        raise DataError(f"--data.pretrain_dataset: no usable rows in {path}")
    return samples


class PretrainRows:
    """Pre-training rows in a seeded shuffled order, cycled epoch after epoch."""

    def __init__(self, samples: Sequence[TokenizedSample], seed: int) -> None:
        self.samples = list(samples)
        self.rng = random.Random(seed)
        self._order: list[int] = []

    def take(self, count: int) -> RowBatch:
        rows, prompt_lengths = [], []
        for _ in range(count):
            if not self._order:
                self._order = list(range(len(self.samples)))
                self.rng.shuffle(self._order)
            s = self.samples[self._order.pop()]
            rows.append(torch.tensor(s.input_ids, dtype=torch.long))
            # targets start at the first masked-in token (1 in pretrain mode)
            prompt_lengths.append(s.target_mask.index(1))
        return RowBatch(rows, prompt_lengths)


class PtxActor:
    """The actor client, with pre-training rows attached to every TrainStep's mini-batch."""

    ordered_train_steps = False
    """Each step takes the next pre-training rows when it is called: two steps in flight
    at once could take them in either order, so the loop sends one step at a time."""

    def __init__(self, actor: Any, rows: PretrainRows) -> None:
        self.actor = actor
        self.rows = rows

    def train_step(self, mb: PolicyMiniBatch, loss: PolicyLossSettings,
                   header: common_pb2.RequestHeader | None = None) -> dict[str, float]:
        return self.actor.train_step(replace(mb, ptx=self.rows.take(len(mb.batch))), loss,
                                     header)

    def __getattr__(self, name: str) -> Any:
        # every other RPC (log-probs, save, weight sync) is the actor's own
        return getattr(self.actor, name)
