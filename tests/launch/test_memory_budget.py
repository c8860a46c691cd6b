"""The launcher's memory budget: exact model sizes, and a clear refusal when roles don't fit."""

import pytest

from quartet.launch.memory import (
    GIB,
    MemoryBudgetError,
    check_budget,
    model_shape,
    scorer_bytes,
    trainer_bytes,
)


def test_model_shape_counts_parameters_from_the_safetensors_headers(tiny_model_path):
    from transformers import AutoModelForCausalLM

    shape = model_shape(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert shape.params == sum(p.numel() for p in model.state_dict().values())
    assert model_shape(tiny_model_path / "missing") is None


def test_a_trainer_needs_weights_gradients_and_adam_at_least(tiny_model_path):
    shape = model_shape(tiny_model_path)
    assert trainer_bytes(shape, "fp32", 2, 64, 16) > 16 * shape.params


def test_roles_that_do_not_fit_are_refused_with_the_numbers():
    budget = {"actor": 20 * GIB, "rollout0": 6 * GIB}
    with pytest.raises(MemoryBudgetError, match=r"actor 20\.0, rollout0 6\.0 GiB.*24\.0 GiB"):
        check_budget(budget, total=24 * GIB, available=20 * GIB)
    check_budget(budget, total=64 * GIB, available=8 * GIB)  # only a warning


def test_frozen_roles_are_budgeted_per_rank_in_their_dtype(tiny_model_path):
    from quartet.config.base import parse_config
    from services.coordinator.config import PPOJobConfig
    from services.coordinator.memory_budget import ppo_budget

    shape = model_shape(tiny_model_path)
    one = scorer_bytes(shape, "fp32", 8, 64, 1)
    assert scorer_bytes(shape, "fp32", 8, 64, 1, ranks=2) == 2 * one
    # ZeRO-3: the weights once over both ranks
    sharded = scorer_bytes(shape, "fp32", 8, 64, 1, ranks=2, sharded=True)
    assert sharded == 2 * one - 4 * shape.params
    assert scorer_bytes(shape, "bf16", 8, 64, 1) == one - 2 * shape.params

    def budget(*flags: str) -> dict[str, int]:
        return ppo_budget(parse_config(PPOJobConfig, [
            "--actor.model_name_or_path", str(tiny_model_path), "--data.dataset", "d.jsonl",
            "--reward.model_name_or_path", str(tiny_model_path), "--algo.kl.init_coef", "0.01",
            "--ds.param_dtype", "fp32", *flags]), str(tiny_model_path))

    base = budget()
    wide = budget("--reward.num_gpus_per_node", "2", "--ref.num_gpus_per_node", "3")
    assert wide["reward0"] == 2 * base["reward0"] and wide["reference"] == 3 * base["reference"]
    assert budget("--ds.param_dtype", "bf16")["reward0"] == base["reward0"] - 2 * shape.params
