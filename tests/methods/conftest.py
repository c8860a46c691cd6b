"""A world of one and a warmed-up tiny policy (SFT on three-word answers), per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from quartet.config import SFTJobConfig
from tests.trainers.conftest import make_job
from tests.trainers.dist_world import world_of_one

ROOT = Path(__file__).resolve().parents[2]
KEYWORD_REWARD = ROOT / "examples" / "rewards" / "keyword_reward.py"

FAST = {"ds.param_dtype": "fp32", "ds.zero_stage": 0, "data.max_len": 48,
        "lr_warmup_ratio": 0.0, "logger.progress_bar_enable": False,
        "logger.tensorboard_dir": "none"}


@pytest.fixture(scope="module")
def world():
    yield from world_of_one()


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    from quartet.testing.words import write_word_datasets

    return write_word_datasets(tmp_path_factory.mktemp("words"))


@pytest.fixture(scope="module")
def warm_policy(world, words, tiny_model_path, tmp_path_factory) -> Path:
    """The tiny model after 24 SFT steps: answers every prompt with three words."""
    from quartet.trainers import SFTTrainer

    out = tmp_path_factory.mktemp("warm")
    SFTTrainer(make_job(SFTJobConfig, out, **{
        "model.model_name_or_path": str(tiny_model_path), "data.dataset": str(words["words_sft"]),
        "data.input_key": "prompt", "data.output_key": "response", "train.batch_size": 16,
        "train.micro_batch_size": 8, "train.max_epochs": 3, "adam.lr": 3e-3}), world).fit()
    return out
