"""Shared-prefix pair rows compute what two plain rows per pair compute (tiny Llama)."""

from __future__ import annotations

import pytest
import torch

from quartet.data import TokenizedSample
from quartet.data.shared_prefix import (
    collate_groups,
    collate_pairs,
    common_prefix_len,
    groups_of,
)
from quartet.models.attention import forward_inputs
from quartet.trainers.logps import sequence_logp_stats


def _sample(ids: list[int], prompt: int) -> TokenizedSample:
    return TokenizedSample(ids, [0] * prompt + [1] * (len(ids) - prompt))


# (chosen, rejected, prompt length): shared answer text, prompt-only sharing, a chosen that is
# a strict prefix of the rejected, and pairs of different lengths (padding in both layouts).
PAIRS = [
    ([1, 40, 41, 42, 50, 51, 52, 53, 60, 2], [1, 40, 41, 42, 50, 51, 52, 53, 61, 62, 2], 4),
    ([1, 30, 31, 70, 71, 2], [1, 30, 31, 80, 81, 82, 83, 84, 85, 2], 3),
    ([1, 20, 21, 22, 90], [1, 20, 21, 22, 90, 91, 2], 3),
    ([1, 11, 12, 13, 14, 15, 16, 17, 18, 19, 3], [1, 11, 12, 13, 14, 15, 16, 17, 18, 19, 4], 2),
]


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_path),
                                                dtype=torch.float32).eval()


def _layouts():
    chosen = [_sample(c, p) for c, _, p in PAIRS]
    rejected = [_sample(r, p) for _, r, p in PAIRS]
    plain = collate_pairs(chosen, rejected, 0, share_prefix=False)
    shared = collate_pairs(chosen, rejected, 0, share_prefix=True)
    return plain, shared


def _forward(model):
    def run(batch, logits_from):
        return model(**forward_inputs(batch, "sdpa", torch.float32, logits_from)).logits
    return run


def test_prefix_is_computed_once():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    plain, shared = _layouts()
    assert shared.shared and not plain.shared
    assert shared.model_batch.input_ids.shape[0] == len(PAIRS)
    assert plain.model_batch.input_ids.shape[0] == 2 * len(PAIRS)
    assert shared.model_batch.num_tokens < 0.75 * plain.rows.num_tokens


@pytest.mark.parametrize("start", [0, 2])
def test_shared_rows_give_the_plain_log_probs_and_gradients(model, start):
    plain, shared = _layouts()
    sums = {}
    grads = {}
    for name, layout in (("plain", plain), ("shared", shared)):
        model.zero_grad()
        logits = layout.logits(_forward(model), start)
        total, counts, means = sequence_logp_stats(layout.rows, logits, start)
        (total * torch.arange(1, total.numel() + 1)).sum().backward()
        sums[name] = (total.detach(), counts, means.detach())
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for a, b in zip(sums["plain"], sums["shared"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert sums["plain"][0].abs().min() > 0.1  # real log-probs, not zeros
    for n, g in grads["plain"].items():
        torch.testing.assert_close(grads["shared"][n], g, atol=1e-4, rtol=1e-3)


def test_last_token_index_reads_each_sequence_end(model):
    plain, shared = _layouts()
    with torch.no_grad():
        per_token = {name: _forward(model)(lay.model_batch, 0)[..., 0].reshape(-1)
                     for name, lay in (("plain", plain), ("shared", shared))}
    width = {name: lay.model_batch.input_ids.shape[1]
             for name, lay in (("plain", plain), ("shared", shared))}
    ends = {name: per_token[name][lay.last_token_index(width[name])]
            for name, lay in (("plain", plain), ("shared", shared))}
    torch.testing.assert_close(ends["shared"], ends["plain"], atol=1e-4, rtol=1e-4)


def test_groups_of_any_size_share_their_common_prefix(model):
    assert common_prefix_len([1, 2, 3], [1, 2, 4], [1, 5]) == 1
    assert groups_of(["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4], [3]]
    seqs = [_sample(c, p) for c, _, p in PAIRS] + [_sample(r, p) for _, r, p in PAIRS]
    groups = [[0, 4, 1], [2, 6], [3], [5], [7]]
    layout = collate_groups(seqs, groups, 0, share_prefix=True)
    assert layout.model_batch.input_ids.shape[0] == len(groups)
    assert layout.model_row.tolist() == [0, 0, 1, 2, 0, 3, 1, 4]
    plain = collate_groups(seqs, groups, 0, share_prefix=False)
    with torch.no_grad():
        got = sequence_logp_stats(layout.rows, layout.logits(_forward(model), 1), 1)
        want = sequence_logp_stats(plain.rows, plain.logits(_forward(model), 1), 1)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="each of the 8 sequences once"):
        collate_groups(seqs, [[0, 1], [1, 2, 3, 4, 5, 6, 7]], 0, share_prefix=True)
