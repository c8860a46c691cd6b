"""Direct preference optimisation; runs under `deepspeed --module`, `torchrun` or alone.

    python -m quartet.cli.train_dpo --model.model_name_or_path PATH --data.dataset FILE ...

Flags are generated from the config groups in :mod:`quartet.config`; see docs/trainers.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from quartet.config.jobs import DPOJobConfig
from quartet.trainers.dpo_trainer import DPOTrainer
from quartet.trainers.run import main_for


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(DPOTrainer, DPOJobConfig, "quartet.cli.train_dpo", argv)


if __name__ == "__main__":
    sys.exit(main())
