"""Supervised fine-tuning. Runs under `deepspeed --module`, `torchrun`, or as one plain process.

    python -m quartet.cli.train_sft --model.model_name_or_path PATH --data.dataset FILE ...

Flags are generated from the config groups in :mod:`quartet.config`; see docs/trainers.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from quartet.config.jobs import SFTJobConfig
from quartet.trainers.run import main_for
from quartet.trainers.sft_trainer import SFTTrainer


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(SFTTrainer, SFTJobConfig, "quartet.cli.train_sft", argv)


if __name__ == "__main__":
    sys.exit(main())
