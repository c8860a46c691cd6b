"""Forward KL for distillation against a direct computation."""

from __future__ import annotations

import pytest
import torch

from quartet.algos.kd import forward_kl, kd_loss, token_forward_kl


def test_token_forward_kl_matches_definition_and_is_zero_on_equal_logits():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    p = torch.softmax(t / 2.0, -1)
    expected = (p * (torch.log(p) - torch.log_softmax(s / 2.0, -1))).sum(-1)
    assert torch.allclose(token_forward_kl(s, t, temperature=2.0), expected, atol=1e-6)
    assert torch.allclose(token_forward_kl(t, t), torch.zeros(2, 3), atol=1e-6)


def test_forward_kl_masks_and_only_the_student_gets_gradients():
    torch.manual_seed(1)
    s = torch.randn(1, 4, 6, requires_grad=True)
    t = torch.randn(1, 4, 6, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 0]])
    per = token_forward_kl(s, t)
    assert float(forward_kl(s, t, mask)) == pytest.approx(float(per[0, 1:3].mean()), rel=1e-6)
    forward_kl(s, t, mask).backward()
    assert t.grad is None and s.grad[0, 0].abs().sum() == 0 and s.grad[0, 1].abs().sum() > 0
    assert float(forward_kl(s, t, torch.zeros(1, 4))) == 0.0


def test_kd_loss_mixes_by_coefficient():
    assert float(kd_loss(torch.tensor(2.0), torch.tensor(4.0), 0.25)) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="kd_coef"):
        kd_loss(torch.tensor(1.0), torch.tensor(1.0), 1.5)
    with pytest.raises(ValueError, match="share a tokenizer"):
        token_forward_kl(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
