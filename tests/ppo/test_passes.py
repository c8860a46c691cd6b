"""Skipped passes change nothing: one-pass PPO gives the same losses and weights as the
separate old-log-prob pass, and the thread plan follows the phases."""

import os
import subprocess
import sys

import pytest
import torch

from quartet.codec import RowBatch
from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.model import ModelConfig
from quartet.config.optim import AdamConfig, OptimConfig
from quartet.launch.threads import PHASE_ENV, role_threads, thread_env, uniform_threads
from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
from quartet.ppo.passes import old_logprobs_from_forward
from quartet.ppo.role_config import RoleTrainConfig, TrainingRoleConfig
from tests.trainers.dist_world import world_of_one


@pytest.fixture(scope="module", autouse=True)
def world():
    """The actors of this module join a world of one that is torn down after it: left alive,
    a later in-process vLLM engine destroys its process group while DeepSpeed keeps the groups
    it derived from it, and the next DeepSpeed engine in this pytest process fails with
    "Group ... is not registered" (tests/ppo then tests/engines in one run)."""
    yield from world_of_one()


def test_one_pass_only_with_one_epoch_one_minibatch_and_no_reward_kl():
    assert old_logprobs_from_forward(1, 64, 64, 0.0, False)
    assert not old_logprobs_from_forward(2, 64, 64, 0.0, False)  # epoch 2: weights moved
    assert not old_logprobs_from_forward(1, 64, 32, 0.0, False)  # 2nd mini-batch: moved
    assert not old_logprobs_from_forward(1, 64, 64, 0.01, False)  # KL in the reward
    assert not old_logprobs_from_forward(1, 64, 64, 0.0, True)  # adaptive KL


def test_thread_plan_gives_lone_roles_the_machine_and_splits_overlaps():
    grpo = role_threads(2, actor_scores=False, reference=True, critic=False,
                        reward_model=False, async_generation=False)
    assert grpo["actor"] == {"train": 2} and grpo["reference"] == {"score": 2}
    # The rollout engine generates while every other role waits: all the cores.
    assert grpo["rollout"] == {"generate": 2}
    ppo = role_threads(2, actor_scores=True, reference=True, critic=True,
                       reward_model=True, async_generation=False)
    assert ppo == {"actor": {"score": 1, "train": 1}, "critic": {"score": 1, "train": 1},
                   "reference": {"score": 1}, "reward": {"generate": 2},
                   "rollout": {"generate": 2}}
    # Async: the rollouts overlap training and keep the one core left to them; two local
    # engines share the cores evenly.
    assert role_threads(4, actor_scores=False, reference=True, critic=False, reward_model=False,
                        async_generation=True)["rollout"] == {"generate": 1}
    assert role_threads(4, actor_scores=False, reference=True, critic=False, reward_model=False,
                        async_generation=False, rollouts=2)["rollout"] == {"generate": 2}
    two_pass = role_threads(4, actor_scores=True, reference=True, critic=False,
                            reward_model=False, async_generation=False)["actor"]
    assert two_pass == {"score": 2, "train": 4}
    env = thread_env(two_pass)
    assert env == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", PHASE_ENV: "score=2,train=4"}
    # A fresh interpreter, as a role process is: an in-process vLLM engine earlier in the
    # same pytest process replaces torch.set_num_threads with a no-op.
    probe = ("import torch\n"
             "from quartet.launch.threads import phase_threads\n"
             "before = torch.get_num_threads()\n"
             "with phase_threads('score'):\n"
             "    inside = torch.get_num_threads()\n"
             "print(before, inside, torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=120).stdout.split()
    before, inside, after = out
    assert inside == "2" and after == before
    assert role_threads(1, actor_scores=True, reference=True, critic=True,
                        reward_model=True, async_generation=True)["critic"]["train"] == 1


def test_uniform_threads_keep_the_plans_roles_and_phases():
    """What `bench overhead --threads equal` gives the services: the in-process thread
    count for every role in every phase it computes in."""
    plan = role_threads(2, actor_scores=True, reference=True, critic=True,
                        reward_model=False, async_generation=False)
    assert uniform_threads(plan, 1) == {
        "actor": {"score": 1, "train": 1}, "critic": {"score": 1, "train": 1},
        "reference": {"score": 1}, "reward": {}, "rollout": {"generate": 1}}
    assert thread_env(uniform_threads(plan, 1)["rollout"]) == {"OMP_NUM_THREADS": "1",
                                                                "MKL_NUM_THREADS": "1"}


def test_torch_is_aligned_with_openmps_default_threads():
    """Under OMP_NUM_THREADS=2 MKL_NUM_THREADS=1 (a shell's MKL setting) torch computes on 1
    thread and OpenMP defaults to 2; `align_torch_threads` makes torch use OpenMP's 2 (what
    an in-process vLLM CPU engine needs), and leaves an agreeing process alone."""
    probe = ("import torch\n"
             "from quartet.launch.threads import align_torch_threads\n"
             "before = torch.get_num_threads()\n"
             "print(before, align_torch_threads(), torch.get_num_threads())\n")
    for omp, mkl, expected in (("2", "1", ["1", "2", "2"]), ("1", "1", ["1", "1", "1"])):
        out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                             text=True, timeout=120,
                             env={**os.environ, "OMP_NUM_THREADS": omp,
                                  "MKL_NUM_THREADS": mkl}).stdout.split()
        assert out == expected, (omp, mkl, out)


def _actor(tiny_model_path, rows: int):
    from services.actor.actor import Actor

    return Actor(TrainingRoleConfig(
        model=ModelConfig(model_name_or_path=str(tiny_model_path)),
        ds=DeepSpeedConfig(zero_stage=0, param_dtype="fp32"),
        optim=OptimConfig(lr_scheduler="constant"), adam=AdamConfig(lr=1e-3),
        train=RoleTrainConfig(batch_size=rows, micro_batch_size=2, seed=7),
    ))


@pytest.mark.parametrize("kl_coef", [0.0, 0.04])
def test_one_pass_step_equals_the_two_pass_step(tiny_model_path, kl_coef):
    g = torch.Generator().manual_seed(3)
    prompts = [2, 5, 3, 4]
    rows = [torch.randint(3, 200, (p + 3 + i,), generator=g) for i, p in enumerate(prompts)]
    batch = RowBatch(rows, prompts)
    adv = [torch.randn(n, generator=g) for n in batch.response_lengths()]
    ref = [torch.randn(n, generator=g) * 0.1 - 5.0 for n in batch.response_lengths()]
    two, one = _actor(tiny_model_path, 4), _actor(tiny_model_path, 4)
    old = two.logprobs(batch).logprobs  # the pass one-pass PPO skips
    loss = PolicyLossSettings(kl_coef=kl_coef)
    m_two = two.train_step(PolicyMiniBatch(batch, old, adv, ref), loss)
    m_one = one.train_step(PolicyMiniBatch(batch, None, adv, ref),
                           PolicyLossSettings(kl_coef=kl_coef, old_logprobs_from_forward=True))
    for key in ("policy_loss", "ratio", "grad_norm") + (("kl_loss",) if kl_coef else ()):
        assert m_one[key] == pytest.approx(m_two[key], rel=1e-4, abs=1e-6), key
    for (name, a), (_, b) in zip(two.engine.module.named_parameters(),
                                 one.engine.module.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=2e-6), name
    start = _actor(tiny_model_path, 4)
    delta = max(float((a.detach() - s.detach()).abs().max()) for a, s in zip(
        one.engine.module.parameters(), start.engine.module.parameters(), strict=True))
    assert delta > 1e-4  # the step did move the weights (so equality means something)
