"""`python -m bench trl` builds both sides' commands from paths and flags that must stay
valid as the code moves (the demo's reward file moved once and the GRPO benchmark pointed at
nothing). Cheap checks: every file the commands name exists, and quartet's side parses
with the real job configurations (no renamed or removed flag)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import trl
from quartet.config.base import parse_config_or_raise

ROOT = Path(trl.__file__).resolve().parents[1]


def named_files(cmd: list[str]) -> list[Path]:
    """Arguments that name a file of this repository (a script, the reward file)."""
    return [Path(a) for a in cmd if a.startswith(str(ROOT)) and Path(a).suffix == ".py"]


@pytest.mark.parametrize("algo", sorted(trl.WORK))
def test_commands_name_existing_files(algo, tmp_path):
    quartet = trl.quartet_command(algo, tmp_path / "model", tmp_path / "d.jsonl",
                                  tmp_path / "out", steps=2)
    other = trl.trl_command(Path("python"), algo, tmp_path / "model", tmp_path / "d.jsonl",
                            tmp_path / "out", steps=2)
    files = named_files(quartet) + named_files(other)
    assert files, "expected the commands to name at least the TRL worker script"
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"bench trl --algo {algo} names files that do not exist: {missing}"


@pytest.mark.parametrize("algo", sorted(trl.WORK))
def test_quartet_side_parses(algo, tmp_path):
    from quartet.config.jobs import DPOJobConfig, RMJobConfig
    from services.coordinator.config import PPOJobConfig

    cmd = trl.quartet_command(algo, tmp_path / "model", tmp_path / "d.jsonl",
                              tmp_path / "out", steps=2)
    job = {"grpo": PPOJobConfig, "dpo": DPOJobConfig, "rm": RMJobConfig}[algo]
    argv = cmd[cmd.index("quartet.cli.main") + 2:]
    cfg = parse_config_or_raise(job, argv)
    if algo == "grpo":
        assert cfg.rollout.n_samples_per_prompt == 4
        assert cfg.train.num_iterations == 3
    else:
        assert cfg.train.stop_after_steps == 3


@pytest.mark.parametrize("shape", trl.PAIR_SHAPES)
def test_pair_shapes_share_what_they_say(shape):
    """`shared-tail` pairs differ only after the explanation; `distinct` ones from the first
    answer token (so a shared-prefix layout saves only the prompt there)."""
    from quartet.data.shared_prefix import common_prefix_len

    rows = trl.pair_texts(0, 8, shape)
    assert len(rows) == 8
    for r in rows:
        shared = common_prefix_len(r["chosen"], r["rejected"])
        if shape == "shared-tail":
            assert shared > 0.8 * len(r["chosen"])
        else:
            assert shared < 3
        assert r["chosen"] != r["rejected"]


def test_unknown_pair_shape_is_refused():
    with pytest.raises(ValueError, match="--pairs"):
        trl.pair_texts(0, 2, "same")


def test_grpo_shape_flags_reach_both_sides(tmp_path):
    """`--prompts/--group/--max-new-tokens/--micro-batch` change the work on both sides alike."""
    from services.coordinator.config import PPOJobConfig

    shape = trl.shape_for("grpo", prompts=8, group=2, max_new_tokens=64, micro=4)
    assert (shape.batch, shape.micro) == (16, 4)
    cmd = trl.quartet_command("grpo", tmp_path / "m", tmp_path / "d.jsonl", tmp_path / "o",
                              steps=2, shape=shape)
    cfg = parse_config_or_raise(PPOJobConfig, cmd[cmd.index("quartet.cli.main") + 2:])
    assert (cfg.rollout.batch_size, cfg.rollout.n_samples_per_prompt) == (8, 2)
    assert (cfg.rollout.max_new_tokens, cfg.train.batch_size) == (64, 16)
    assert cfg.train.micro_batch_size == 4
    other = trl.trl_command(Path("python"), "grpo", tmp_path / "m", tmp_path / "d.jsonl",
                            tmp_path / "o", steps=2, shape=shape)
    flag = {k: v for k, v in zip(other, other[1:], strict=False) if k.startswith("--")}
    assert (flag["--batch"], flag["--micro-batch"]) == ("16", "4")
    assert (flag["--max-new-tokens"], flag["--num-generations"]) == ("64", "2")


@pytest.mark.parametrize("algo,kwargs,flag", [
    ("dpo", {"prompts": 8}, "--prompts"),
    ("rm", {"max_new_tokens": 64}, "--max-new-tokens"),
    ("grpo", {"group": 1}, "--group"),
    ("grpo", {"micro": 5}, "--micro-batch"),
    ("grpo", {"prompts": 0}, "--prompts"),
])
def test_shape_flags_refused_with_the_flag_named(algo, kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        trl.shape_for(algo, **kwargs)


@pytest.mark.parametrize("algo,steps", [("grpo", 4), ("dpo", 8), ("rm", 12)])
def test_timed_steps_default_per_algorithm_and_an_explicit_count_wins(algo, steps):
    assert trl.parse(["--algo", algo]).steps == steps
    assert trl.parse(["--algo", algo, "--steps", "3"]).steps == 3


def test_zero_timed_steps_is_refused(capsys):
    with pytest.raises(SystemExit):
        trl.parse(["--algo", "rm", "--steps", "0"])
    assert "--steps: expected at least 1 timed step, got 0" in capsys.readouterr().err
