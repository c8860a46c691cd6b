"""The reference releasing its weights between score phases (--enable-sleep): log-probs after
release and restore equal those before, bit for bit; refused where releasing is not exact."""

from __future__ import annotations

import pytest
import torch

from quartet.codec.batches import RowBatch
from quartet.engines.frozen_model import FrozenCausalLM
from quartet.serving.errors import FailedPrecondition


def _batch() -> RowBatch:
    rows = [[1, 50, 60, 70, 80, 81, 82], [1, 51, 90, 91], [1, 80, 81, 82, 83, 84, 85, 86]]
    return RowBatch([torch.tensor(r) for r in rows], [4, 2, 5])


def test_logprobs_after_release_and_restore_equal_those_before_bit_for_bit(
        tiny_model_path, tmp_path):
    model = FrozenCausalLM(str(tiny_model_path), "float32", spill_dir=str(tmp_path))
    before = model.logprobs(_batch()).logprobs
    weights = sum(p.numel() * p.element_size() for p in model.engine.module.parameters())
    assert model.release_memory() == weights
    assert all(p.untyped_storage().nbytes() == 0 for p in model.engine.module.parameters())
    assert model.release_memory() == 0  # released already
    for _ in range(2):  # restored by scoring, released again without a second spill
        after = model.logprobs(_batch()).logprobs
        assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
        assert model.release_memory() == weights


def test_release_needs_the_flag(tiny_model_path):
    model = FrozenCausalLM(str(tiny_model_path), "float32")
    with pytest.raises(FailedPrecondition, match="--enable-sleep"):
        model.release_memory()
