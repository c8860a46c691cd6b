"""A round's trainer job (SFT for rejection sampling, DPO for iterative DPO), built from the
iterative method's own groups so that each round trains exactly like ``train_sft`` /
``train_dpo`` would with the same ``--train.*``, ``--ds.*``, ``--adam.*`` ... flags."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from quartet.config.data import DataConfig
from quartet.config.inference import RoundsJobConfig

__all__ = ["round_data", "round_job"]


def round_data(job: RoundsJobConfig, dataset: Path, **keys: Any) -> DataConfig:
    """The round's training data: a jsonl written by the method, cut at ``--data.max_len``.
    Prompts in it are already rendered, so no template is applied again."""
    return DataConfig(dataset=str(dataset), max_len=job.data.max_len, **keys)


def round_job(job_cls: type, job: RoundsJobConfig, policy: str, round_dir: Path,
              data: DataConfig, **groups: Any) -> Any:
    """``job_cls`` training ``policy`` on ``data``; the model is exported to
    ``<round_dir>/model`` (its metrics.jsonl beside it)."""
    first = policy == job.model.model_name_or_path
    model = replace(job.model, model_name_or_path=policy,
                    gguf_file=job.model.gguf_file if first else None)
    ckpt = replace(job.ckpt, output_dir=str(round_dir / "model"), path=None)
    return job_cls(model=model, data=data, train=job.train, ds=job.ds, optim=job.optim,
                   adam=job.adam, muon=job.muon, ckpt=ckpt,
                   logger=replace(job.logger, metrics_file=None), **groups)
