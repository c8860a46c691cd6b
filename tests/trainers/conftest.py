"""In-process trainer runs on a world of one (gloo), torn down after each module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quartet.config.base import from_dict
from tests.trainers.dist_world import world_of_one


@pytest.fixture(scope="module")
def world():
    yield from world_of_one()


@pytest.fixture(scope="session")
def separable(tmp_path_factory):
    from tests.trainers.synthetic import write_separable_preferences

    return write_separable_preferences(tmp_path_factory.mktemp("separable"))


def make_job(job_cls: type, out: Path, **values: Any):
    """A job with fast CPU defaults; ``values`` use dotted flag names without dashes."""
    base = {
        "ds.param_dtype": "fp32",
        "ds.zero_stage": 0,
        "data.max_len": 32,
        "train.batch_size": 8,
        "train.micro_batch_size": 4,
        "logger.progress_bar_enable": False,
        "logger.tensorboard_dir": "none",
        "ckpt.output_dir": str(out),
        "lr_warmup_ratio": 0.0,
    }
    base.update(values)
    return from_dict(job_cls, base)
