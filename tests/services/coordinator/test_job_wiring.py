"""`quartet ppo`'s run() wiring (loggers, held-out evaluation, PPO-ptx, IS-correction
settings) on the in-process roles: the same loop and role objects as the services, no
processes, so the flags are checked to reach the run end to end in well under a minute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quartet.config.base import parse_config
from services.coordinator.config import PPOJobConfig
from tests.trainers.dist_world import world_of_one

HERE = Path(__file__).resolve().parents[3] / "tests" / "integration" / "rewards"


@pytest.fixture(scope="module", autouse=True)
def world():
    """The in-process roles join this world of one, torn down after the module: otherwise
    DeepSpeed's cached groups leak into later tests (in-process engines fail on dead groups)."""
    yield from world_of_one()


class InProcessServices:
    """Stands in for PPOServices: the roles in this process (services.coordinator.inprocess)."""

    def __init__(self, cfg, out, longest_prompt: int | None = None) -> None:
        from services.coordinator.inprocess import InProcessRoles

        assert longest_prompt is not None and longest_prompt > 0  # job.run read the prompts
        self.addresses: dict[str, list[str]] = {}
        self._in_process = InProcessRoles(cfg)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._in_process.close()

    def roles(self, run_id: str = "ppo"):
        return self._in_process.roles()

    def recovery(self):
        return None  # no processes to restart


def in_process_run(monkeypatch, model, prompts, out, *flags: str):
    """`quartet ppo`'s run() with these flags on the in-process roles; its history."""
    import services.coordinator.launch as launch
    from services.coordinator.job import run

    monkeypatch.setattr(launch, "PPOServices", InProcessServices)
    return run(parse_config(PPOJobConfig, [
        "--actor.model_name_or_path", str(model), "--data.dataset", str(prompts),
        "--reward.func", str(HERE / "digit_reward.py"), "--vllm.backend", "hf",
        "--rollout.max_new_tokens", "4", "--train.micro_batch_size", "2",
        "--train.num_iterations", "2", "--ckpt.output_dir", str(out),
        "--ds.zero_stage", "0", "--ds.param_dtype", "fp32", *flags]))


def test_flash_reinforce_eval_loggers_and_ptx_reach_the_run(tmp_path, tiny_model_path,
                                                            tiny_data, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "run"
    history = in_process_run(
        monkeypatch, tiny_model_path, tiny_data["prompts"], out,
        "--rollout.batch_size", "4", "--train.batch_size", "4", "--algo.kl.init_coef", "0",
        "--algo.advantage.estimator", "flash_reinforce",
        "--algo.advantage.is_correction_level", "seq",
        "--algo.advantage.is_correction_gating", "binary_kl",
        "--algo.advantage.is_correction_threshold", "0.5", "--algo.loss_reduction",
        "sequence_mean", "--actor.ptx_coef", "0.1",
        "--data.pretrain_dataset", str(tiny_data["sft"]), "--data.pretrain_key", "question",
        "--eval.dataset", str(tiny_data["prompts"]), "--eval.split", "train",
        "--eval.steps", "1", "--eval.max_samples", "3",
        "--logger.wandb.key", "offline-key", "--logger.wandb.project", "q")
    assert len(history) == 2
    for m in history:
        assert m["actor/ptx_loss"] > 0
        assert 0.0 <= m["actor/is_filter_ratio"] <= 1.0 and abs(m["actor/vllm_kl"]) < 1.0
    evals = [json.loads(x) for x in (out / "eval_metrics.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in evals] == [0, 1]
    assert all(e["eval/num_prompts"] == 3 for e in evals)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("flag, value", [("--actor.ptx_coef", "0.1"),
                                         ("--data.pretrain_dataset", "x.jsonl")])
def test_ptx_needs_both_flags(flag, value, capsys):
    base = ["--actor.model_name_or_path", "m", "--data.dataset", "d", "--reward.func", "r.py"]
    with pytest.raises(SystemExit):
        parse_config(PPOJobConfig, base + [flag, value])
    assert "--actor.ptx_coef" in capsys.readouterr().err


def test_gspo_with_unbiased_kl_loss_and_mean_only_whitening_run(tmp_path, tiny_model_path,
                                                                tiny_data, monkeypatch):
    """GSPO, the KL in the loss with the unbiased gradient (the loop rebuilds the loss
    settings with `asdict`), REINFORCE++ with mean-only normalisation."""
    history = in_process_run(
        monkeypatch, tiny_model_path, tiny_data["prompts"], tmp_path / "run",
        "--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2",
        "--train.batch_size", "4",
        "--algo.advantage.estimator", "reinforce_baseline", "--algo.advantage.no_std_norm",
        "--actor.policy_loss_type", "gspo", "--algo.kl.use_loss", "--algo.kl.estimator", "k3",
        "--algo.kl.init_coef", "0.01", "--algo.kl.unbiased_gradient",
        "--logger.tensorboard_dir", "none", "--no-logger.progress_bar_enable")
    assert len(history) == 2 and all("actor/kl_loss" in m for m in history)
    assert not (tmp_path / "run" / "tensorboard").exists()
