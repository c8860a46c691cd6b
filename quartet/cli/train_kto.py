"""KTO from unpaired desirable/undesirable feedback; runs under `deepspeed --module`,
`torchrun` or alone.

    python -m quartet.cli.train_kto --model.model_name_or_path PATH --data.dataset FILE \
        --data.prompt_key prompt --data.output_key output --data.label_key label ...

Flags are generated from the config groups in :mod:`quartet.config`; see docs/methods.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from quartet.config.methods import KTOJobConfig
from quartet.trainers.kto_trainer import KTOTrainer
from quartet.trainers.run import main_for


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(KTOTrainer, KTOJobConfig, "quartet.cli.train_kto", argv)


if __name__ == "__main__":
    sys.exit(main())
