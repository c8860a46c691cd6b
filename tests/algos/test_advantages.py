import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quartet.algos.advantages import (
    ESTIMATORS,
    compute_advantages,
    discounted_returns,
    dr_grpo,
    flash_reinforce,
    gae,
    group_norm,
    reinforce,
    reinforce_baseline,
    rloo,
)


def ref_gae(rewards, values, mask, gamma, lam):
    """Independent reference: plain Python over the valid positions of each row."""
    adv_rows, ret_rows = [], []
    for r_row, v_row, m_row in zip(rewards, values, mask, strict=True):
        idx = [t for t, m in enumerate(m_row) if m]
        adv = [0.0] * len(m_row)
        last, next_v = 0.0, 0.0
        for t in reversed(idx):
            delta = r_row[t] + gamma * next_v - v_row[t]
            last = delta + gamma * lam * last
            adv[t] = last
            next_v = v_row[t]
        adv_rows.append(adv)
        ret_rows.append([a + v if m else 0.0 for a, v, m in zip(adv, v_row, m_row, strict=True)])
    return adv_rows, ret_rows


def ref_reward_to_go(rewards, mask, gamma):
    out = []
    for r_row, m_row in zip(rewards, mask, strict=True):
        g, row = 0.0, [0.0] * len(m_row)
        for t in reversed(range(len(m_row))):
            if m_row[t]:
                g = r_row[t] + gamma * g
                row[t] = g
        out.append(row)
    return out


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_gae_gamma_lambda_one_hand_computed():
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]])
    out = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    # A_t = (sum of future rewards) - V_t; returns = 1 everywhere
    torch.testing.assert_close(out.advantages, t([[0.5, 0.4, 0.3]]))
    torch.testing.assert_close(out.returns, t([[1.0, 1.0, 1.0]]))


def test_gae_discounted_hand_computed_right_and_left_padding():
    # gamma 0.99, lam 0.95, r = [0, 0, 1], V = [0.5, 0.6, 0.7]
    # t=2: delta = 1 - 0.7 = 0.3;                    A2 = 0.3
    # t=1: delta = 0.99*0.7 - 0.6 = 0.093;            A1 = 0.093 + 0.9405*0.3 = 0.37515
    # t=0: delta = 0.99*0.6 - 0.5 = 0.094;            A0 = 0.094 + 0.9405*0.37515 = 0.446828575
    adv = [0.446828575, 0.37515, 0.3]
    ret = [0.946828575, 0.97515, 1.0]
    rewards = t([[0.0, 0.0, 1.0, 5.0], [5.0, 0.0, 0.0, 1.0]])
    values = t([[0.5, 0.6, 0.7, 9.0], [9.0, 0.5, 0.6, 0.7]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    out = gae(rewards, values, mask, gamma=0.99, lam=0.95)
    torch.testing.assert_close(out.advantages, t([adv + [0.0], [0.0] + adv]))
    torch.testing.assert_close(out.returns, t([ret + [0.0], [0.0] + ret]))


def test_gae_single_token_and_all_masked_row():
    rewards = t([[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    values = t([[0.0, 0.5, 0.0], [float("nan"), 1.0, float("inf")]])
    mask = torch.tensor([[0, 1, 0], [0, 0, 0]])
    out = gae(rewards, values, mask, gamma=0.99, lam=0.95)
    torch.testing.assert_close(out.advantages, t([[0.0, 1.5, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(out.returns, t([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))


def test_gae_skips_a_hole_in_the_mask():
    rewards, values = t([[0.0, 7.0, 1.0]]), t([[0.5, 7.0, 0.7]])
    out = gae(rewards, values, torch.tensor([[1, 0, 1]]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(out.advantages, t([[0.5, 0.0, 0.3]]))


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 1.0)


masks = st.integers(1, 6).flatmap(
    lambda length: st.lists(
        st.tuples(st.integers(0, length), st.booleans()), min_size=1, max_size=4
    ).map(
        lambda rows: [
            [1] * n + [0] * (length - n) if right else [0] * (length - n) + [1] * n
            for n, right in rows
        ]
    )
)


@settings(max_examples=40, deadline=None)
@given(masks, st.randoms(use_true_random=False))
def test_property_gae_lambda_gamma_one_is_reward_to_go_minus_value(mask, rnd):
    rewards = [[rnd.uniform(-1, 1) for _ in row] for row in mask]
    values = [[rnd.uniform(-1, 1) for _ in row] for row in mask]
    out = gae(t(rewards), t(values), torch.tensor(mask), gamma=1.0, lam=1.0)
    rtg = ref_reward_to_go(rewards, mask, 1.0)
    expected = [
        [g - v if m else 0.0 for g, v, m in zip(gr, vr, mr, strict=True)]
        for gr, vr, mr in zip(rtg, values, mask, strict=True)
    ]
    torch.testing.assert_close(out.advantages, t(expected))
    torch.testing.assert_close(out.returns, t(rtg))


@settings(max_examples=40, deadline=None)
@given(masks, st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.randoms(use_true_random=False))
def test_property_gae_matches_reference_loop(mask, gamma, lam, rnd):
    rewards = [[rnd.uniform(-1, 1) for _ in row] for row in mask]
    values = [[rnd.uniform(-1, 1) for _ in row] for row in mask]
    out = gae(t(rewards), t(values), torch.tensor(mask), gamma, lam)
    adv, ret = ref_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(out.advantages, t(adv))
    torch.testing.assert_close(out.returns, t(ret))


def test_reinforce_discounted_return_to_go():
    # gamma 0.9, r = [0.1, 0, 1]: G2 = 1, G1 = 0.9, G0 = 0.1 + 0.81 = 0.91
    rewards = t([[0.1, 0.0, 1.0, 3.0], [3.0, 0.1, 0.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    out = reinforce(rewards, mask, gamma=0.9)
    expected = t([[0.91, 0.9, 1.0, 0.0], [0.0, 0.91, 0.9, 1.0]])
    torch.testing.assert_close(out.advantages, expected)
    torch.testing.assert_close(out.returns, expected)
    torch.testing.assert_close(discounted_returns(rewards, mask, 1.0)[0], t([1.1, 1.0, 1.0, 0.0]))


# two prompts, n = 4; the second group has zero variance
GROUPS = t([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])


def test_reinforce_baseline_and_dr_grpo_subtract_group_mean():
    expected = t([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(reinforce_baseline(GROUPS, 4), expected)
    torch.testing.assert_close(dr_grpo(GROUPS, 4), expected)


def test_rloo_leave_one_out():
    # sample 0: baseline (0 + 0 + 1) / 3 = 1/3 -> 2/3; sample 1: baseline 2/3 -> -2/3
    expected = t([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(rloo(GROUPS, 4), expected)
    with pytest.raises(ValueError, match=">= 2"):
        rloo(GROUPS, 1)


def test_group_norm_hand_computed():
    # deviations +-0.5, unbiased var = (4 * 0.25) / 3 = 1/3, std = 0.57735
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(group_norm(GROUPS, 4), t([a, -a, -a, a, 0, 0, 0, 0]))
    b = 0.5 / (0.5 + 1e-6)  # population std 0.5
    torch.testing.assert_close(group_norm(GROUPS, 4, unbiased=False), t([b, -b, -b, b, 0, 0, 0, 0]))


def test_zero_variance_groups_are_exactly_zero():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7], dtype=torch.float32)
    for fn in (reinforce_baseline, rloo, group_norm, dr_grpo):
        out = fn(rewards, 3)
        assert torch.equal(out, torch.zeros(6)), fn.__name__
    assert torch.equal(group_norm(t([3.0, -1.0]), 1), t([0.0, 0.0]))


def test_group_size_must_divide():
    for fn in (reinforce_baseline, rloo, group_norm, dr_grpo):
        with pytest.raises(ValueError):
            fn(t([1.0, 2.0, 3.0]), 2)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.integers(1, 3), st.randoms(use_true_random=False))
def test_property_rloo_is_scaled_mean_baseline(n, prompts, rnd):
    rewards = t([rnd.uniform(-1, 1) for _ in range(n * prompts)])
    expected = n / (n - 1) * reinforce_baseline(rewards, n)
    torch.testing.assert_close(rloo(rewards, n), expected)


def test_compute_advantages_group_norm_broadcasts_over_tokens():
    rewards = t([1.0, 0.0])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    out = compute_advantages("group_norm", rewards, mask, n_samples_per_prompt=2)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # unbiased std of {1, 0} = sqrt(0.5)
    torch.testing.assert_close(out.advantages, t([[a, a, 0.0], [0.0, -a, -a]]))
    torch.testing.assert_close(out.returns, out.advantages)


def test_compute_advantages_reinforce_with_kl_in_reward():
    rewards = t([1.0])
    kl = t([[0.5, 1.0, 2.0]])
    mask = torch.ones(1, 3)
    out = compute_advantages("reinforce", rewards, mask, kl=kl, kl_coef=0.1, gamma=1.0)
    # token rewards [-0.05, -0.1, -0.2 + 1] -> returns-to-go [0.65, 0.7, 0.8]
    torch.testing.assert_close(out.advantages, t([[0.65, 0.7, 0.8]]))


def test_compute_advantages_gae_and_clip():
    rewards = t([5.0])
    values = t([[0.5, 0.6, 0.7]])
    out = compute_advantages(
        "gae", rewards, torch.ones(1, 3), values=values, gamma=1.0, lam=1.0, reward_clip=1.0
    )
    torch.testing.assert_close(out.advantages, t([[0.5, 0.4, 0.3]]))


def test_compute_advantages_errors():
    with pytest.raises(ValueError) as err:
        compute_advantages("ppo", t([1.0]), torch.ones(1, 2))
    for name in ESTIMATORS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="values"):
        compute_advantages("gae", t([1.0]), torch.ones(1, 2))


def test_compute_advantages_rloo_and_dr_grpo_run_end_to_end():
    rewards = t([1.0, 0.0, 0.5, 0.5])
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]])
    for est in ("reinforce_baseline", "rloo", "dr_grpo"):
        out = compute_advantages(est, rewards, mask, n_samples_per_prompt=2)
        assert torch.isfinite(out.advantages).all()
        assert out.advantages[2:].abs().sum().item() == 0.0  # zero-variance second group
        assert (out.advantages[~mask.bool()] == 0).all()


def test_flash_reinforce_subtracts_the_batch_mean():
    torch.testing.assert_close(flash_reinforce(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])),
                               torch.tensor([0.4, -0.6, -0.6, 0.4, 0.4]))
    assert flash_reinforce(torch.full((3,), 0.1)).abs().sum().item() == 0.0
    out = compute_advantages("flash_reinforce", torch.tensor([2.0, 0.0]),
                             torch.tensor([[1, 1], [1, 0]]))
    torch.testing.assert_close(out.advantages, torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))
