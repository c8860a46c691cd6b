"""A run's training settings against a pre-started actor/critic's own configuration.

A service started by hand (cluster mode) was given its optimizer, learning rate and batch
sizes on its command line; the coordinator's run has its own. They must agree, or the run
trains with settings nobody asked for. The coordinator sends its settings with PrepareRun;
the service adopts what it can change safely between runs (the LR schedule's length) and
refuses the rest with the first differing field named.
"""

from __future__ import annotations

import math

from quartet.ppo.role_config import TrainingRoleConfig
from quartet.v1 import common_pb2

# Settings a service refuses to change under a run: (wire field, flag that sets it).
CHECKED = (
    ("learning_rate", "--adam.lr"),
    ("optimizer", "--optim"),
    ("lr_scheduler", "--lr_scheduler"),
    ("lr_warmup_ratio", "--lr_warmup_ratio"),
    ("min_lr_ratio", "--min_lr_ratio"),
    ("max_norm", "--max_norm"),
    ("weight_decay", "--adam.weight_decay"),
    ("batch_size", "--train.batch_size"),
    ("micro_batch_size", "--train.micro_batch_size"),
)


def train_settings(cfg: TrainingRoleConfig) -> common_pb2.TrainSettings:
    """The settings a role config trains with, as sent on the wire."""
    return common_pb2.TrainSettings(
        learning_rate=cfg.adam.lr, optimizer=cfg.optim.optim,
        lr_scheduler=cfg.optim.lr_scheduler, lr_warmup_ratio=cfg.optim.lr_warmup_ratio,
        min_lr_ratio=cfg.optim.min_lr_ratio, max_norm=cfg.optim.max_norm,
        weight_decay=cfg.adam.weight_decay, total_steps=cfg.train.total_steps,
        batch_size=cfg.train.batch_size, micro_batch_size=cfg.train.micro_batch_size,
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    return a == b


def mismatches(own: common_pb2.TrainSettings, wanted: common_pb2.TrainSettings,
               role: str) -> list[str]:
    """One line per setting the run wants differently from the service, naming the field,
    both values and the service flag that would make them agree."""
    out = []
    for field, flag in CHECKED:
        have, want = getattr(own, field), getattr(wanted, field)
        if not _same(have, want):
            out.append(f"train.{field}: the run wants {want!r}, the {role} service was started "
                       f"with {have!r} (restart it with {flag} {want})")
    return out
