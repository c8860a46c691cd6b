"""The body of the iterative methods' commands (``quartet rs``, ``quartet iterative_dpo``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from quartet.config.base import parse_config
from quartet.config.inference import INFERENCE_RENAMED_FLAGS
from quartet.config.renamed import RENAMED_FLAGS


def rounds_main(job_cls: type, run: Callable, prog: str, argv: Sequence[str] | None) -> int:
    """Parse ``job_cls`` flags and run ``run(job, world)`` in a world of one."""
    from quartet.data.sources import DataError
    from quartet.engines.distributed import init_distributed
    from quartet.logs import setup_logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    job = parse_config(job_cls, argv, prog=prog,
                       renamed={**RENAMED_FLAGS, **INFERENCE_RENAMED_FLAGS})
    setup_logging(prog.split()[-1], "WARNING")
    try:
        run(job, init_distributed())
    except (DataError, ValueError, RuntimeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0
