import math

import pytest
import torch

from quartet.algos.kl import AdaptiveKLController, FixedKLController, approx_kl

LOG_HALF = math.log(0.5)
LOG_QUARTER = math.log(0.25)


def test_estimators_hand_computed():
    # policy q = 0.5, reference p = 0.25: log r = log(p / q) = log 0.5
    logp = torch.tensor([[LOG_HALF]])
    ref = torch.tensor([[LOG_QUARTER]])
    log_r = math.log(0.5)
    assert approx_kl(logp, ref, "k1").item() == pytest.approx(-log_r)  # 0.6931
    assert approx_kl(logp, ref, "k2").item() == pytest.approx(0.5 * log_r**2)  # 0.2402
    assert approx_kl(logp, ref, "k3").item() == pytest.approx(0.5 - 1 - log_r)  # 0.1931


def test_equal_distributions_give_zero():
    logp = torch.log(torch.tensor([[0.2, 0.7]]))
    for est in ("k1", "k2", "k3"):
        torch.testing.assert_close(approx_kl(logp, logp.clone(), est), torch.zeros(1, 2))


def test_mask_right_and_left_padding_and_garbage():
    logp = torch.tensor([[LOG_HALF, LOG_HALF, float("-inf")], [-1e30, LOG_HALF, LOG_HALF]])
    ref = torch.tensor([[LOG_QUARTER, LOG_HALF, 0.0], [0.0, LOG_QUARTER, LOG_HALF]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    k3 = 0.5 - 1 - math.log(0.5)
    for est, first in (("k1", math.log(2)), ("k3", k3)):
        out = approx_kl(logp, ref, est, mask=mask)
        torch.testing.assert_close(out, torch.tensor([[first, 0.0, 0.0], [0.0, first, 0.0]]))


def test_estimates_are_clamped_and_grads_finite():
    logp = torch.tensor([[0.0, -1000.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-1000.0, 0.0, -2.0]])
    out = approx_kl(logp, ref, "k3")
    # log r = -1000 (not clamped from below): e^-1000 - 1 + 1000 = 999 -> output clamped to 10
    # log r = +1000 -> capped at +10 before exp: e^10 - 11 = 22015.5 -> output clamped to 10
    # log r = 1: e - 1 - 1 = 0.7182818
    torch.testing.assert_close(out, torch.tensor([[10.0, 10.0, math.e - 2]]))
    out.sum().backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0, 0].item() == 0.0  # clamped estimate: no gradient
    assert logp.grad[0, 1].item() == 0.0
    k1 = approx_kl(logp.detach(), ref, "k1")
    torch.testing.assert_close(k1, torch.tensor([[10.0, -10.0, -1.0]]))
    assert approx_kl(logp.detach(), ref, "k2")[0, 2].item() == pytest.approx(0.5)


def test_k1_and_k3_are_unbiased_monte_carlo():
    torch.manual_seed(0)
    q = torch.tensor([0.5, 0.3, 0.2])
    p = torch.tensor([0.2, 0.5, 0.3])
    exact = float((q * (q / p).log()).sum())
    x = torch.multinomial(q, 200_000, replacement=True)
    logq, logp = q.log()[x], p.log()[x]
    assert approx_kl(logq, logp, "k1").mean().item() == pytest.approx(exact, abs=5e-3)
    assert approx_kl(logq, logp, "k3").mean().item() == pytest.approx(exact, abs=5e-3)


def test_unknown_estimator_names_allowed():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        approx_kl(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_adaptive_controller_hand_computed():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    # KL 9: error 0.5 clipped to 0.2; factor 1 + 0.2 * 1000 / 10000 = 1.02
    assert ctl.update(9.0, 1000) == pytest.approx(0.102)
    ctl = AdaptiveKLController(0.1, 6.0, 10_000)
    assert ctl.update(6.0, 1000) == pytest.approx(0.1)  # on target
    assert ctl.update(6.6, 1000) == pytest.approx(0.1 * 1.01)  # error 0.1
    ctl = AdaptiveKLController(0.1, 6.0, 10_000)
    assert ctl.update(0.0, 1000) == pytest.approx(0.098)  # error -1 clipped to -0.2
    ctl = AdaptiveKLController(0.1, 6.0, 10)
    assert ctl.update(0.0, 1000) == 0.0  # factor would be negative: floored at 0


def test_controller_state_and_validation():
    ctl = AdaptiveKLController(0.1, 6.0, 10_000)
    ctl.update(9.0, 1000)
    other = AdaptiveKLController(1.0, 1.0, 1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value and other.target == 6.0
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 1000) == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, 0.0, 10)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, 1.0, 0)
    with pytest.raises(ValueError):
        FixedKLController(-1.0)


@pytest.mark.parametrize("log_pi_minus_ref, expected", [
    (40.0, 10.0),             # log r = -40: e^-40 - 1 + 40 = 39 -> 10 (OpenRLHF 0.11)
    (100.0, 10.0),
    (5.0, math.exp(-5) + 4),  # log r = -5: 4.0067379, inside the clamp
    (-40.0, 10.0),            # log r = 40 capped at 10 before exp: e^10 - 11 -> 10
    (-100.0, 10.0),
    (-2.0, math.exp(2) - 3),  # log r = 2: 4.3890561
])
def test_k3_matches_openrlhf_011_at_extreme_log_ratios(log_pi_minus_ref, expected):
    logp = torch.tensor([[log_pi_minus_ref]], requires_grad=True)
    ref = torch.zeros(1, 1)
    out = approx_kl(logp, ref, "k3")
    assert out.item() == pytest.approx(expected, rel=1e-6)
    out.sum().backward()
    assert torch.isfinite(logp.grad).all()
