"""RunCheckpoints: atomic layout, `latest`, pruning, and what a kill during a save leaves."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from services.coordinator.checkpoint import (
    CheckpointSettings,
    CoordinatorState,
    RunCheckpoints,
)


class FakeRole:
    """Writes a marker file where Save would put the DeepSpeed checkpoint; can fail."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.fail_at = fail_at
        self.loaded: list[tuple[str, str]] = []

    def save(self, output_dir, hf_export=True, tag="", hf_only=False):
        if tag == self.fail_at:
            raise RuntimeError("killed during save")
        d = Path(output_dir) / "deepspeed" / tag
        d.mkdir(parents=True)
        (d / "state").write_text(tag)

    def load(self, checkpoint_dir, tag):
        assert (Path(checkpoint_dir) / tag / "state").read_text() == tag
        self.loaded.append((checkpoint_dir, tag))
        return 0


def state(iteration: int) -> CoordinatorState:
    rng = random.Random(iteration)
    return CoordinatorState(iteration=iteration, policy_version=iteration, seed=1,
                            loop_rng=rng.getstate(), collector={"order": [1, 2]}, kl={},
                            reward_stats={}, history=[{"iteration": float(iteration)}])


def test_save_load_roundtrip_and_latest(tmp_path):
    actor, critic = FakeRole(), FakeRole()
    ck = RunCheckpoints(CheckpointSettings(str(tmp_path)), actor, critic)
    assert ck.latest() is None
    ck.save(state(2))
    path = ck.save(state(4))
    assert ck.latest() == path and path.name == "iter4"
    assert (tmp_path / "latest").read_text().strip() == "iter4"
    loaded = ck.load_state(path)
    assert loaded.iteration == 4 and loaded.history == [{"iteration": 4.0}]
    ck.load_roles(path)
    assert actor.loaded == [(str(path / "actor" / "deepspeed"), "iter4")]
    assert critic.loaded == [(str(path / "critic" / "deepspeed"), "iter4")]


def test_a_failed_save_leaves_the_previous_checkpoint_usable(tmp_path):
    ck = RunCheckpoints(CheckpointSettings(str(tmp_path)), FakeRole(), FakeRole("iter2"))
    first = ck.save(state(1))
    with pytest.raises(RuntimeError, match="killed during save"):
        ck.save(state(2))
    assert ck.latest() == first
    assert [p.name for p in ck.complete()] == ["iter1"]
    assert list(tmp_path.glob(".tmp-iter2-*"))  # the leftover is ignored ...
    ck.critic = FakeRole()
    ck.save(state(3))
    assert not list(tmp_path.glob(".tmp-*"))  # ... and removed by the next save


def test_a_stale_latest_pointer_falls_back_to_the_newest_complete(tmp_path):
    ck = RunCheckpoints(CheckpointSettings(str(tmp_path)), FakeRole())
    ck.save(state(1))
    newest = ck.save(state(2))
    (tmp_path / "latest").write_text("iter9\n")
    assert ck.latest() == newest


def test_max_num_keeps_the_newest(tmp_path):
    ck = RunCheckpoints(CheckpointSettings(str(tmp_path), max_num=2), FakeRole())
    for it in (1, 2, 3, 10):
        ck.save(state(it))
    assert [p.name for p in ck.complete()] == ["iter3", "iter10"]


def test_max_mem_drops_the_oldest_but_never_the_newest(tmp_path):
    ck = RunCheckpoints(CheckpointSettings(str(tmp_path), max_num=5, max_mem_gb=1e-12),
                        FakeRole())
    for it in (1, 2, 3):
        ck.save(state(it))
    assert [p.name for p in ck.complete()] == ["iter3"]


def test_saving_the_same_iteration_twice_is_a_no_op(tmp_path):
    ck = RunCheckpoints(CheckpointSettings(str(tmp_path)), FakeRole())
    assert ck.save(state(5)) == ck.save(state(5))
