"""Pipelined TrainSteps (mini-batch k+1 sent while k trains) learn exactly what one step at
a time learns, and a failed step stops every step queued after it.

Real actor and critic engines behind real gRPC servers in this process (the servicers and
clients of the services); the loop's train phase runs twice on the tiny model from the same
initial weights and the same experience, pipelined and not, over two PPO epochs of four
mini-batches each."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import torch

from quartet.clients.actor import GrpcActorClient
from quartet.clients.base import RoleCallError
from quartet.clients.critic import GrpcCriticClient
from quartet.codec import RowBatch
from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.model import ModelConfig
from quartet.config.optim import AdamConfig, OptimConfig
from quartet.ppo.experience import AdvantageSettings, make_experience
from quartet.ppo.role_config import RoleTrainConfig, TrainingRoleConfig
from quartet.serving import RoleServer
from quartet.serving.errors import Internal
from quartet.v1 import actor_pb2_grpc, critic_pb2_grpc
from services.coordinator.ppo_loop import PPOLoop, PPOLoopSettings, PPORoles
from services.coordinator.rollouts import Prompt

ROWS, MINI_BATCH, EPOCHS = 8, 2, 2
REWARD = Path(__file__).resolve().parents[2] / "integration" / "rewards" / "digit_reward.py"


class RecordingSteps:
    """The server-side engine's train_step: records, as each step starts, whether the next
    step's request was already queued at the server (waiting up to `wait_s` for it), and
    fails step `fail_at` (0-based) like a broken step."""

    def __init__(self, engine, order, wait_s: float, fail_at: int = -1) -> None:
        self.engine, self.order, self.wait_s, self.fail_at = engine, order, wait_s, fail_at
        self.next_queued: list[bool] = []
        self.calls = 0
        self.train_step = engine.train_step

    def __call__(self, mb, loss):
        deadline = time.monotonic() + self.wait_s
        while len(self.order.queued()) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        self.next_queued.append(len(self.order.queued()) >= 2)
        step, self.calls = self.calls, self.calls + 1
        if step == self.fail_at:
            raise Internal(f"injected failure at step {step} (test)")
        return self.train_step(mb, loss)


class Stack:
    """An actor and a critic service on loopback, and a loop whose train phase uses them."""

    def __init__(self, model: str, out, pipelined: bool, wait_s: float,
                 fail_at: int = -1) -> None:
        from services.actor.actor import Actor
        from services.actor.servicer import ActorServicer
        from services.critic.critic import Critic
        from services.critic.servicer import CriticServicer

        def cfg():
            return TrainingRoleConfig(
                model=ModelConfig(model_name_or_path=model),
                ds=DeepSpeedConfig(zero_stage=0, param_dtype="fp32"),
                optim=OptimConfig(lr_scheduler="constant"), adam=AdamConfig(lr=1e-3),
                train=RoleTrainConfig(batch_size=MINI_BATCH, micro_batch_size=1, seed=7))

        torch.manual_seed(0)
        self.actor, self.critic = Actor(cfg()), Critic(cfg())
        actor_servicer, critic_servicer = ActorServicer(self.actor), CriticServicer(self.critic)
        self.actor_steps = RecordingSteps(self.actor, actor_servicer.steps, wait_s, fail_at)
        self.actor.train_step = self.actor_steps
        self.servers = [RoleServer("actor", port=0), RoleServer("critic", port=0)]
        for srv in self.servers:
            srv.start()
        actor_pb2_grpc.add_ActorServicer_to_server(actor_servicer, self.servers[0].grpc_server)
        critic_pb2_grpc.add_CriticServicer_to_server(critic_servicer,
                                                     self.servers[1].grpc_server)
        for srv in self.servers:
            srv.set_serving(True)
        self.clients = (GrpcActorClient(self.servers[0].address, timeout_s=120),
                        GrpcCriticClient(self.servers[1].address, timeout_s=120))
        settings = PPOLoopSettings(prompts_per_iteration=ROWS, mini_batch_size=MINI_BATCH,
                                   ppo_epochs=EPOCHS, pipeline_train_steps=pipelined,
                                   output_dir=str(out), run_id="pipe")
        roles = PPORoles(actor=self.clients[0], rollouts=[], rewards=[],
                         critic=self.clients[1])
        self.loop = PPOLoop(roles, settings, [Prompt("p", [1, 2])], str)

    def weights(self) -> dict[str, torch.Tensor]:
        return {**{f"actor.{n}": t.detach().clone()
                   for n, t in self.actor.engine.module.named_parameters()},
                **{f"critic.{n}": t.detach().clone()
                   for n, t in self.critic.engine.module.named_parameters()}}

    def close(self) -> None:
        self.loop.close()
        for client in self.clients:
            client.close()
        for srv in self.servers:
            srv.stop(0)


def experience(stack: Stack):
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, 200, (int(n),), generator=gen)
            for n in torch.randint(5, 12, (ROWS,), generator=gen)]
    batch = RowBatch(rows, [2 + i % 3 for i in range(ROWS)])
    actor, critic = stack.clients
    logprobs = actor.logprobs(batch)
    return make_experience(batch, logprobs, [lp - 0.01 for lp in logprobs],
                           critic.values(batch), torch.randn(ROWS, generator=gen),
                           AdvantageSettings(kl_coef=0.05))


@pytest.fixture(scope="module")
def world():
    from tests.trainers.dist_world import world_of_one

    yield from world_of_one()


def test_pipelined_steps_learn_bit_identically_and_arrive_ahead(world, tmp_path,
                                                                 tiny_model_path):
    stacks = {mode: Stack(str(tiny_model_path), tmp_path / mode, pipelined=mode == "pipelined",
                          wait_s=5.0 if mode == "pipelined" else 0.0)
              for mode in ("pipelined", "one at a time")}
    try:
        assert all(torch.equal(a, b) for a, b in zip(
            stacks["pipelined"].weights().values(),
            stacks["one at a time"].weights().values(), strict=True))
        exp = experience(stacks["one at a time"])
        metrics = {mode: [s.loop.train(exp, it) for it in range(2)]
                   for mode, s in stacks.items()}
        assert metrics["pipelined"] == metrics["one at a time"]  # losses, grad norms, ...
        assert metrics["pipelined"][1]["train_steps"] == EPOCHS * ROWS // MINI_BATCH
        assert metrics["pipelined"][1]["actor/policy_version"] > 0
        after = {mode: s.weights() for mode, s in stacks.items()}
        for name, tensor in after["pipelined"].items():
            assert torch.equal(tensor, after["one at a time"][name]), name
        steps = EPOCHS * ROWS // MINI_BATCH
        # pipelined: every step but each phase's last found the next one already queued
        assert stacks["pipelined"].actor_steps.next_queued == (
            [True] * (steps - 1) + [False]) * 2
        assert not any(stacks["one at a time"].actor_steps.next_queued)
    finally:
        for s in stacks.values():
            s.close()


def test_a_failed_step_stops_the_steps_queued_after_it(world, tmp_path, tiny_model_path):
    stack = Stack(str(tiny_model_path), tmp_path, pipelined=True, wait_s=5.0, fail_at=1)
    try:
        exp = experience(stack)
        with pytest.raises(RoleCallError) as info:
            stack.loop.train(exp, 0)
        assert info.value.role == "actor" and info.value.code == grpc.StatusCode.INTERNAL
        assert "injected failure at step 1" in str(info.value)
        # step 0 applied; step 1 failed; step 2 was queued behind it and did not apply
        assert stack.actor_steps.calls == 2 and stack.actor.global_step == 1
        assert stack.loop.roles.actor.info().policy_version == 1  # the service still answers
    finally:
        stack.close()


def test_pipelining_is_opt_in_through_train_pipeline_steps(tmp_path, tiny_model_path, tiny_data):
    from quartet.config.base import parse_config
    from services.coordinator.config import PPOJobConfig
    from services.coordinator.job import loop_settings

    base = ["--actor.model_name_or_path", str(tiny_model_path),
            "--data.dataset", str(tiny_data["prompts"]), "--ckpt.output_dir", str(tmp_path),
            "--reward.func", str(REWARD)]
    assert not loop_settings(parse_config(PPOJobConfig, base), str(tmp_path),
                             "r").pipeline_train_steps
    assert loop_settings(parse_config(PPOJobConfig, base + ["--train.pipeline_steps"]),
                         str(tmp_path), "r").pipeline_train_steps
