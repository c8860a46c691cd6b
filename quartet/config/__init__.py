"""Typed config groups, generated hierarchical CLI flags, validation, freezing.

Use :func:`parse_config` with a job dataclass (e.g. :class:`SFTJobConfig`); a service or engine
receives only its own groups (``ModelConfig``, ``DeepSpeedConfig``...), never the whole job.
"""

from quartet.config.base import (
    ConfigError,
    build_parser,
    config_to_dict,
    field_docs,
    flat_group,
    from_dict,
    group_under,
    parse_config,
)
from quartet.config.ckpt import CkptConfig
from quartet.config.data import DataConfig
from quartet.config.deepspeed import DeepSpeedConfig, LoraConfig
from quartet.config.eval import EvalConfig
from quartet.config.jobs import DPOJobConfig, RMJobConfig, SFTJobConfig, TrainerJobConfig
from quartet.config.logger import LoggerConfig, WandbConfig
from quartet.config.model import ModelConfig
from quartet.config.objectives import DPOObjectiveConfig, RMObjectiveConfig, SFTObjectiveConfig
from quartet.config.optim import AdamConfig, MuonConfig, OptimConfig
from quartet.config.ref import RefConfig
from quartet.config.renamed import RENAMED_FLAGS
from quartet.config.train import TrainConfig

__all__ = [
    "RENAMED_FLAGS",
    "AdamConfig",
    "CkptConfig",
    "ConfigError",
    "DPOJobConfig",
    "DPOObjectiveConfig",
    "DataConfig",
    "DeepSpeedConfig",
    "EvalConfig",
    "LoggerConfig",
    "LoraConfig",
    "ModelConfig",
    "MuonConfig",
    "OptimConfig",
    "RMJobConfig",
    "RMObjectiveConfig",
    "RefConfig",
    "SFTJobConfig",
    "SFTObjectiveConfig",
    "TrainConfig",
    "TrainerJobConfig",
    "WandbConfig",
    "build_parser",
    "config_to_dict",
    "field_docs",
    "flat_group",
    "from_dict",
    "group_under",
    "parse_config",
]
