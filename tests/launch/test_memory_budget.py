"""The launcher's memory budget: exact model sizes, and a clear refusal when roles don't fit."""

import pytest

from quartet.launch.memory import (
    GIB,
    MemoryBudgetError,
    check_budget,
    model_shape,
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
