"""Process reward model training; runs under `deepspeed --module`, `torchrun` or alone.

    python -m quartet.cli.train_prm --model.model_name_or_path PATH --data.dataset FILE \
        --data.input_key input --data.label_key label --model.placeholder_token "ки" \
        --model.reward_tokens + - ...

Serve the result as a reward source with per-step scores: `quartet serve reward --prm-model
DIR`. Flags are generated from the config groups in :mod:`quartet.config`; see
docs/methods.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from quartet.config.methods import PRMJobConfig
from quartet.trainers.prm_trainer import PRMTrainer
from quartet.trainers.run import main_for


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(PRMTrainer, PRMJobConfig, "quartet.cli.train_prm", argv)


if __name__ == "__main__":
    sys.exit(main())
