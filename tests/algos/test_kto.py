"""KTO loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from quartet.algos.kto import kto_kl_estimate, kto_loss, vanilla_kto_loss


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_kl_estimate_is_clamped_mean_and_detached():
    pol = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.5, -2.5])
    kl = kto_kl_estimate(pol, ref)
    assert float(kl) == pytest.approx(0.5) and not kl.requires_grad
    assert float(kto_kl_estimate(ref, pol)) == 0.0  # negative mean clamps to 0
    assert float(kto_kl_estimate(torch.zeros(0), torch.zeros(0))) == 0.0


def test_kto_loss_hand_computed_with_weights():
    pol = torch.tensor([-1.0, -3.0, -2.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0, -2.0])
    desirable = torch.tensor([True, False, True])
    kl, beta = torch.tensor(0.2), 0.5
    out = kto_loss(pol, ref, desirable, kl, beta, desirable_weight=2.0, undesirable_weight=0.5)
    expected = (2.0 * (1 - _sig(0.5 * (1.0 - 0.2))) + 0.5 * (1 - _sig(0.5 * (0.2 + 1.0)))
                + 2.0 * (1 - _sig(0.5 * (0.0 - 0.2)))) / 3
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)
    assert out.desirable_rewards.tolist() == pytest.approx([0.5, 0.0])
    assert out.undesirable_rewards.tolist() == pytest.approx([-0.5])
    out.loss.backward()
    # Raising a desirable log-prob lowers the loss; raising an undesirable one raises it.
    assert pol.grad[0] < 0 and pol.grad[2] < 0 and pol.grad[1] > 0


def test_vanilla_kto_uses_the_other_sides_kl():
    pol = torch.tensor([-1.0, -3.0])
    ref = torch.tensor([-2.0, -2.5])
    out = vanilla_kto_loss(pol, ref, torch.tensor([True, False]), beta=1.0)
    kl_d, kl_u = 1.0, 0.0  # undesirable mean log-ratio -0.5 clamps to 0
    expected = ((1 - _sig(1.0 - kl_u)) + (1 - _sig(kl_d - (-0.5)))) / 2
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="vanilla KTO needs"):
        vanilla_kto_loss(pol, ref, torch.tensor([True, True]), beta=1.0)


def test_kto_rejects_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        kto_loss(torch.zeros(1), torch.zeros(1), torch.ones(1, dtype=torch.bool),
                 torch.tensor(0.0), beta=0.0)
