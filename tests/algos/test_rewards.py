import statistics

import pytest
import torch

from quartet.algos.rewards import (
    RunningMeanStd,
    clip_rewards,
    combine_rewards,
    last_token_index,
    normalize_rewards,
    overlong_penalty,
    shape_rewards,
    stop_properly_penalty,
)


def test_last_token_index_right_left_single_empty():
    mask = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # right padded
            [0, 0, 1, 1, 1],  # left padded
            [0, 0, 1, 0, 0],  # one token
            [0, 0, 0, 0, 0],  # empty
            [1, 0, 1, 1, 0],  # a hole
        ]
    )
    assert last_token_index(mask).tolist() == [2, 4, 2, -1, 3]


def test_shape_rewards_right_and_left_padding():
    reward = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [9.0, 0.5, -0.5, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    out = shape_rewards(reward, kl, mask, kl_coef=0.1)
    expected = torch.tensor(
        [
            [-0.01, -0.02, -0.03 + 1.0, 0.0],  # reward on index 2, padding 0
            [0.0, -0.05, 0.05, -0.1 + 2.0],  # reward on index 3
        ]
    )
    torch.testing.assert_close(out, expected)


def test_shape_rewards_single_token_empty_row_no_kl_and_clip():
    reward = torch.tensor([5.0, -7.0, 3.0])
    mask = torch.tensor([[0, 1, 0], [0, 0, 0], [1, 1, 1]])
    out = shape_rewards(reward, None, mask, kl_coef=0.1, reward_clip=2.0)
    expected = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    torch.testing.assert_close(out, expected)
    out = shape_rewards(reward, None, mask.bool(), kl_coef=0.0, reward_clip=(-1.0, 4.0))
    assert out[0, 1].item() == 4.0 and out[2, 2].item() == 3.0


def test_shape_rewards_rejects_bad_shape():
    with pytest.raises(ValueError):
        shape_rewards(torch.zeros(3), None, torch.ones(2, 4), 0.1)


def test_clip_and_normalize():
    r = torch.tensor([-5.0, 0.5, 5.0])
    torch.testing.assert_close(clip_rewards(r, 1.0), torch.tensor([-1.0, 0.5, 1.0]))
    torch.testing.assert_close(clip_rewards(r, (0.0, 2.0)), torch.tensor([0.0, 0.5, 2.0]))
    with pytest.raises(ValueError):
        clip_rewards(r, (1.0, 0.0))
    torch.testing.assert_close(
        normalize_rewards(torch.tensor([3.0, 5.0]), mean=4.0, std=2.0, eps=0.0),
        torch.tensor([-0.5, 0.5]),
    )


def test_running_mean_std_matches_whole_stream():
    batches = [[1.0, 2.0, 3.0], [10.0], [-4.0, 0.5]]
    rms = RunningMeanStd()
    for b in batches:
        rms.update(torch.tensor(b))
    rms.update(torch.tensor([]))
    flat = [x for b in batches for x in b]
    assert rms.count == len(flat)
    assert rms.mean == pytest.approx(statistics.fmean(flat))
    assert rms.var == pytest.approx(statistics.pvariance(flat))

    left, right = RunningMeanStd(), RunningMeanStd()
    left.update(torch.tensor(batches[0]))
    right.update(torch.tensor(batches[1] + batches[2]))
    left.merge(right)
    assert left.mean == pytest.approx(rms.mean) and left.var == pytest.approx(rms.var)

    restored = RunningMeanStd()
    restored.load_state_dict(rms.state_dict())
    torch.testing.assert_close(
        restored.normalize(torch.tensor([rms.mean]), eps=0.0), torch.tensor([0.0])
    )


def test_combine_rewards():
    scores = [torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0])]
    torch.testing.assert_close(combine_rewards(scores), torch.tensor([11.0, 22.0]))
    torch.testing.assert_close(combine_rewards(scores, [0.5, 0.1]), torch.tensor([1.5, 3.0]))
    with pytest.raises(ValueError):
        combine_rewards(scores, [1.0])


def test_overlong_penalty_dapo():
    # max 20, buffer 5: no penalty up to 15, then -1/5 per token, -1 from 20 on
    lengths = torch.tensor([10, 15, 16, 18, 20, 25])
    expected = torch.tensor([0.0, 0.0, -0.2, -0.6, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, 20, 5), expected)
    torch.testing.assert_close(overlong_penalty(lengths, 20, 5, penalty_factor=2.0), 2 * expected)
    with pytest.raises(ValueError):
        overlong_penalty(lengths, 20, 0)


def test_stop_properly_penalty_scale_and_fixed():
    rewards = torch.tensor([1.0, -2.0, 4.0])
    truncated = torch.tensor([True, True, False])
    torch.testing.assert_close(
        stop_properly_penalty(rewards, truncated, 0.5), torch.tensor([0.5, -1.0, 4.0])
    )
    torch.testing.assert_close(
        stop_properly_penalty(rewards, truncated, -0.5), torch.tensor([-0.5, -0.5, 4.0])
    )
    with pytest.raises(ValueError):
        stop_properly_penalty(rewards, truncated, 1.5)


def test_negative_kl_coef_is_no_penalty_not_a_bonus():
    """OpenRLHF's compute_reward treats kl_coef <= 0 as 0."""
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    kl = torch.tensor([[0.5, 2.0, 9.0]])
    reward = torch.tensor([1.0])
    out = shape_rewards(reward, kl, mask, kl_coef=-0.1)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0]]))
