"""IS correction of rollout/trainer mismatch (OpenRLHF 0.11's is_correction_*), by hand."""

import math

import pytest
import torch

from quartet.algos.losses import policy_loss
from quartet.algos.off_policy import ISCorrection, is_correction_coefficients

# pi_old = 0.5 on every token; the sampler gave 0.5, 0.25, 0.05: w = pi_old / pi_rollout = 1, 2, 10
OLD = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
ROLLOUT = torch.log(torch.tensor([[0.5, 0.25, 0.05, 0.9]]))
MASK = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)  # the last token is padding
VLLM_KL = -0.9985774245179969  # mean(log 1, log 0.5, log 0.1)


def coef(**kw):
    return is_correction_coefficients(OLD, ROLLOUT, MASK, ISCorrection(**kw))


def test_token_mask_ratio_drops_out_of_band_tokens_keeps_weights():
    out = coef(level="token", mode="mask", gating="ratio", threshold=(0.5, 5.0))
    torch.testing.assert_close(out.coef, torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
    assert out.is_filter_ratio.item() == pytest.approx(1 / 3)
    assert out.vllm_kl.item() == pytest.approx(VLLM_KL, rel=1e-6)


def test_token_clip_ratio_is_tis():
    out = coef(level="token", mode="clip", gating="ratio", threshold=(0.5, 5.0))
    torch.testing.assert_close(out.coef, torch.tensor([[1.0, 2.0, 5.0, 0.0]]))
    assert out.is_filter_ratio.item() == pytest.approx(1 / 3)


def test_seq_level_ratio_gates_on_the_geometric_mean():
    # geometric mean of 1, 2, 10 = 2.7144: inside [0.5, 5] keeps the row with its token weights
    out = coef(level="seq", threshold=(0.5, 5.0))
    torch.testing.assert_close(out.coef, torch.tensor([[1.0, 2.0, 10.0, 0.0]]))
    assert out.is_filter_ratio.item() == 0.0
    out = coef(level="seq", threshold=(0.5, 2.5))  # 2.7144 > 2.5: the whole row goes
    torch.testing.assert_close(out.coef, torch.zeros(1, 4))
    assert out.is_filter_ratio.item() == 1.0


def test_binary_kl_and_tv_gates_are_upper_bounds():
    # binary KL(p || q), p = rollout, q = old: 0, 0.13081, 0.49463; tv |p - q|: 0, 0.25, 0.45
    out = coef(level="token", gating="binary_kl", threshold=0.2)
    torch.testing.assert_close(out.coef, torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
    out = coef(level="token", gating="tv", threshold=(0.3,))
    torch.testing.assert_close(out.coef, torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
    # sequence level: mean binary KL = (0 + 0.13081 + 0.49463) / 3 = 0.20848
    assert coef(level="seq", gating="binary_kl", threshold=0.21).coef[0, 2].item() == 10.0
    assert coef(level="seq", gating="binary_kl", threshold=0.20).coef.abs().sum().item() == 0.0


def test_invalid_combinations_name_the_option():
    with pytest.raises(ValueError, match="is_correction_mode clip needs"):
        ISCorrection(level="seq", mode="clip")
    with pytest.raises(ValueError, match="upper bound only"):
        ISCorrection(level="token", gating="tv", threshold=(0.1, 0.3))
    with pytest.raises(ValueError, match="is_correction_level"):
        ISCorrection(level="sequence")


def test_policy_loss_applies_the_coefficients_and_reports_metrics():
    logp = OLD.clone().requires_grad_(True)  # ratio 1: per-token loss -A
    adv = torch.ones(1, 4)
    out = policy_loss(logp, OLD, adv, MASK, rollout_logprobs=ROLLOUT,
                      is_correction=ISCorrection(level="token"))
    assert out.loss.item() == pytest.approx(-(1 + 2 + 0) / 3)
    assert out.is_filter_ratio.item() == pytest.approx(1 / 3)
    assert out.vllm_kl.item() == pytest.approx(VLLM_KL, rel=1e-6)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3, -2 / 3, 0.0, 0.0]]))


@pytest.mark.parametrize("gap", [40.0, 100.0, -40.0, -100.0])
@pytest.mark.parametrize("kw", [dict(level="token"), dict(level="seq"),
                                dict(level="token", mode="clip"),
                                dict(level="token", gating="binary_kl", threshold=0.5),
                                dict(level="seq", gating="tv", threshold=0.5)])
def test_extreme_log_ratios_stay_finite(gap, kw):
    old = torch.tensor([[-1.0, -2.0]])
    rollout = old - gap
    logp = (old + gap / 2).requires_grad_(True)
    out = policy_loss(logp, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool),
                      rollout_logprobs=rollout, is_correction=ISCorrection(**kw))
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and torch.isfinite(logp.grad).all()
    assert math.isfinite(out.vllm_kl.item()) and math.isfinite(out.is_filter_ratio.item())
