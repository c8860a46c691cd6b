"""Weights & Biases, only when ``--logger.wandb.key`` is given."""

from __future__ import annotations

from typing import Any

from quartet.config.logger import WandbConfig

__all__ = ["WandbWriter"]


class WandbWriter:
    def __init__(self, cfg: WandbConfig, run_name: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as err:
            raise RuntimeError("--logger.wandb.key is set but the wandb package is not "
                               "installed; install wandb or drop the flag") from err
        wandb.login(key=cfg.key)
        self._run = wandb.init(entity=cfg.org, project=cfg.project, group=cfg.group,
                               name=cfg.run_name or run_name, config=config, reinit=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()
