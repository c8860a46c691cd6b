"""Knowledge distillation from a frozen teacher; runs under `deepspeed --module`, `torchrun`
or alone.

    python -m quartet.cli.train_kd --model.model_name_or_path STUDENT \
        --teacher.model_name_or_path TEACHER --data.dataset FILE --model.kd_coef 0.4 ...

Flags are generated from the config groups in :mod:`quartet.config`; see docs/methods.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from quartet.config.methods import KDJobConfig
from quartet.trainers.kd_trainer import KDTrainer
from quartet.trainers.run import main_for


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(KDTrainer, KDJobConfig, "quartet.cli.train_kd", argv)


if __name__ == "__main__":
    sys.exit(main())
