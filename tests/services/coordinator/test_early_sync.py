"""The loop begins the next weight update while the actor's last mini-batch trains
(`PPORoles.early_sync`: the replicas' Begin round trips leave the sync's critical path) and
closes it again when that training fails. On the in-process roles (the loop and role objects
of the services, no processes); the early sync itself is a recorder here (the real one,
`GroupWeightSync.open`/`cancel`, is covered with a real replica in
tests/services/rollout/test_weight_session_faults.py and by the PPO runs)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from quartet.config.base import parse_config
from quartet.config.model import ModelConfig
from quartet.models.loading import load_tokenizer
from services.coordinator.config import PPOJobConfig
from tests.trainers.dist_world import world_of_one

REWARD = Path(__file__).resolve().parents[2] / "integration" / "rewards" / "digit_reward.py"
MINI_BATCHES = 2


@pytest.fixture(scope="module", autouse=True)
def world():
    yield from world_of_one()


class RecordedSync:
    """The loop's calls of the early sync, and whether each open came while the actor's last
    step of the iteration was still running."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.opened = threading.Event()

    def open(self, version: int, iteration: int) -> None:
        self.calls.append(("open", version, iteration))
        self.opened.set()

    def cancel(self, reason: str) -> None:
        self.calls.append(("cancel", reason))


class LastStepWaits:
    """The actor's train_step; the last one of an iteration returns only once the early sync
    was opened (so an open that comes after training would time out here), and step
    `fail_at` raises like an actor that died."""

    def __init__(self, train_step, sync: RecordedSync, fail_at: int) -> None:
        self.train_step, self.sync, self.fail_at = train_step, sync, fail_at
        self.steps = 0
        self.open_during_last_step: list[bool] = []

    def __call__(self, mb, loss, header=None):
        self.steps += 1
        if self.steps % MINI_BATCHES == 0:
            self.open_during_last_step.append(self.sync.opened.wait(30))
            self.sync.opened.clear()
        if self.steps == self.fail_at:
            raise RuntimeError("actor step failed (test)")
        return self.train_step(mb, loss, header)


def test_the_next_update_opens_during_the_last_step_and_closes_when_training_fails(
        tmp_path, tiny_model_path, tiny_data):
    from services.coordinator.inprocess import InProcessRoles
    from services.coordinator.job import loop_settings
    from services.coordinator.ppo_loop import PPOLoop
    from services.coordinator.prompts import load_prompts

    cfg = parse_config(PPOJobConfig, [
        "--actor.model_name_or_path", str(tiny_model_path),
        "--data.dataset", str(tiny_data["prompts"]), "--reward.func", str(REWARD),
        "--vllm.backend", "hf", "--rollout.batch_size", "4", "--rollout.max_new_tokens", "4",
        "--train.batch_size", str(4 // MINI_BATCHES), "--train.micro_batch_size", "2",
        "--train.num_iterations", "2", "--ckpt.output_dir", str(tmp_path),
        "--ds.zero_stage", "0", "--ds.param_dtype", "fp32"])
    before = set(threading.enumerate())
    in_process = InProcessRoles(cfg)
    engine_threads = [t for t in threading.enumerate()
                      if t not in before and t.name == "hf-generate"]
    roles = in_process.roles()
    sync = RecordedSync()
    roles.early_sync = sync
    steps = LastStepWaits(roles.actor.train_step, sync, fail_at=2 * MINI_BATCHES)
    roles.actor.train_step = steps  # the loop calls roles.actor.train_step
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(tiny_model_path)))
    loop = PPOLoop(roles, loop_settings(cfg, str(tmp_path), "early"),
                   load_prompts(cfg.data, tokenizer, cfg.rollout.prompt_max_len),
                   lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    try:
        loop.iteration(0)
        assert sync.calls == [("open", 1, 0)]  # the version the sync after it sends
        assert steps.open_during_last_step == [True]
        assert loop.version == 1
        with pytest.raises(RuntimeError, match="actor step failed"):
            loop.iteration(1)
        assert steps.open_during_last_step == [True, True]
        assert sync.calls[1] == ("open", 2, 1)
        assert sync.calls[2][0] == "cancel" and "actor step failed" in sync.calls[2][1]
        assert len(sync.calls) == 3 and loop.version == 1  # no sync after the failure
    finally:
        loop.close()
        in_process.close()
    # closing the roles ended their rollout engine, as stopping a rollout service does
    assert len(engine_threads) == 1 and not engine_threads[0].is_alive()
