"""Experience making: ragged rows in, per-row advantages/returns/KL out, as the math says."""

import torch

from quartet.algos.advantages import gae
from quartet.codec import RowBatch
from quartet.ppo.experience import AdvantageSettings, experience_stats, make_experience


def test_gae_experience_matches_hand_computation():
    # two samples: responses of 2 and 1 tokens
    batch = RowBatch([torch.tensor([5, 6, 7]), torch.tensor([5, 8])], [1, 1])
    old = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5])]
    ref = [torch.tensor([-1.5, -2.0]), torch.tensor([-0.5])]
    values = [torch.tensor([0.2, 0.4]), torch.tensor([0.1])]
    rewards = torch.tensor([1.0, 0.0])
    s = AdvantageSettings(estimator="gae", gamma=1.0, lam=1.0, kl_coef=0.1, whiten=False)
    exp = make_experience(batch, old, ref, values, rewards, s)
    # k1 KL = old - ref: row 0 -> [0.5, 0.0]; token rewards [-0.05, 1.0], row 1 -> [0.0]
    assert torch.allclose(exp.kl[0], torch.tensor([0.5, 0.0]))
    # gamma = lam = 1: returns are rewards-to-go, advantages = returns - values
    assert torch.allclose(exp.returns[0], torch.tensor([0.95, 1.0]))
    assert torch.allclose(exp.advantages[0], torch.tensor([0.75, 0.6]))
    assert torch.allclose(exp.returns[1], torch.tensor([0.0]))
    assert torch.allclose(exp.advantages[1], torch.tensor([-0.1]))
    # same numbers from the padded GAE directly
    direct = gae(torch.tensor([[-0.05, 1.0], [0.0, 0.0]]), torch.tensor([[0.2, 0.4], [0.1, 0]]),
                 torch.tensor([[1, 1], [1, 0]]).bool(), 1.0, 1.0)
    assert torch.allclose(direct.advantages[0], exp.advantages[0])
    stats = experience_stats(exp)
    assert abs(stats["reward"] - 0.5) < 1e-6 and abs(stats["kl"] - 0.25) < 1e-6


def test_group_estimator_whitening_and_minibatch_views():
    batch = RowBatch([torch.tensor([1, 2, 3])] * 4, [1] * 4)
    lp = [torch.tensor([-1.0, -1.0])] * 4
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])  # two prompts x two samples
    s = AdvantageSettings(estimator="group_norm", n_samples_per_prompt=2)
    exp = make_experience(batch, lp, None, None, rewards, s)
    # group 2 has zero variance: exactly zero advantages, never NaN
    assert torch.equal(exp.advantages[2], torch.zeros(2))
    assert exp.advantages[0][0] > 0 > exp.advantages[1][0]
    mb = exp.policy_minibatch([3, 0])
    assert len(mb.batch) == 2 and mb.ref_logprobs is None
    assert torch.equal(mb.advantages[1], exp.advantages[0])
