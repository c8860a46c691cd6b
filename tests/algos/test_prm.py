"""PRM step loss against hand-computed cross-entropies."""

from __future__ import annotations

import math

import pytest
import torch

from quartet.algos.prm import prm_loss, step_probabilities


def _logits():
    logits = torch.zeros(1, 3, 6)
    logits[0, 0, 4], logits[0, 0, 5] = 2.0, 0.0  # step 1 leans to token 4 ("+")
    logits[0, 2, 4], logits[0, 2, 5] = 0.0, 1.0  # step 2 leans to token 5 ("-")
    return logits


def test_hard_labels_cross_entropy_over_reward_tokens_only():
    mask = torch.tensor([[1, 0, 1]])
    out = prm_loss(_logits(), mask, torch.tensor([0, 0]), [4, 5])
    ce1 = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce2 = -math.log(1 / (1 + math.e))
    assert float(out.loss) == pytest.approx((ce1 + ce2) / 2, rel=1e-6)
    assert float(out.accuracy) == 0.5 and out.num_steps == 2
    probs = step_probabilities(_logits(), mask, [4, 5])
    assert probs.tolist() == pytest.approx([math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)])


def test_soft_labels_binary_cross_entropy():
    mask = torch.tensor([[1, 0, 1]])
    out = prm_loss(_logits(), mask, torch.tensor([1.0, 0.0]), [4, 5])
    p1, p2 = 1 / (1 + math.exp(-2)), 1 / (1 + math.e)
    expected = (-math.log(p1) - math.log(1 - p2)) / 2
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)
    assert float(out.accuracy) == 1.0


def test_label_count_must_match_and_empty_is_zero():
    with pytest.raises(ValueError, match="2 placeholder positions but 1 labels"):
        prm_loss(_logits(), torch.tensor([[1, 0, 1]]), torch.tensor([0]), [4, 5])
    out = prm_loss(_logits(), torch.zeros(1, 3), torch.zeros(0, dtype=torch.long), [4, 5])
    assert float(out.loss) == 0.0 and out.num_steps == 0


def test_split_steps_appends_a_placeholder_per_line_unless_present():
    from quartet.rewards.prm import split_steps

    assert split_steps("a\n\nb", "ки") == "a ки\nb ки"
    assert split_steps("a ки b ки", "ки") == "a ки b ки"
    assert split_steps("", "ки") == " ки"
