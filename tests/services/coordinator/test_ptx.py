"""PPO-ptx on the coordinator side: pre-training rows cycle, and ride along each TrainStep."""

import json

import torch

from quartet.codec import RowBatch
from quartet.data.tokenize import TokenizedSample
from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
from services.coordinator.ptx import PretrainRows, PtxActor, load_pretrain_samples


def test_rows_cycle_through_every_sample_with_targets_after_the_first_token():
    samples = [TokenizedSample([1, 5 + i, 6, 7], [0, 1, 1, 1]) for i in range(3)]
    rows = PretrainRows(samples, seed=0)
    first = rows.take(3)
    assert sorted(r[1].item() for r in first.rows) == [5, 6, 7]  # one epoch, no repeats
    assert first.prompt_lengths == [1, 1, 1]
    assert len(rows.take(5)) == 5  # cycles into the next epoch


def test_ptx_actor_attaches_one_row_per_policy_row_and_delegates_the_rest():
    seen = {}

    class FakeActor:
        ordered_train_steps = True  # as the gRPC client

        def train_step(self, mb, loss, header=None):
            seen["mb"] = mb
            return {"ok": 1.0}

        def logprobs(self):
            return "actor's own"

    actor = PtxActor(FakeActor(), PretrainRows([TokenizedSample([1, 2, 3], [0, 1, 1])], 0))
    batch = RowBatch([torch.tensor([1, 2, 3])] * 2, [1, 1])
    mb = PolicyMiniBatch(batch, [torch.zeros(2)] * 2, [torch.zeros(2)] * 2)
    assert actor.train_step(mb, PolicyLossSettings(ptx_coef=0.1)) == {"ok": 1.0}
    assert len(seen["mb"].ptx) == 2 and seen["mb"].batch is batch
    assert actor.logprobs() == "actor's own"
    # each step takes the next pre-training rows when called: never two steps in flight
    assert actor.ordered_train_steps is False


def test_load_pretrain_samples_targets_the_whole_text(tmp_path, tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    path = tmp_path / "pt.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["one two three", "four"]))
    samples = load_pretrain_samples(str(path), "train", "text", 64, 100, tok)
    assert len(samples) == 2
    assert all(s.target_mask[0] == 0 and all(s.target_mask[1:]) for s in samples)
