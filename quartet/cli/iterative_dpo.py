"""Iterative DPO: k rounds of sampling n responses per prompt from the current policy,
best-vs-worst pairs by reward, DPO against the round's starting policy.

    python -m quartet.cli.iterative_dpo --model.model_name_or_path PATH \
        --data.dataset prompts.jsonl --data.input_key prompt --reward.func reward.py \
        --num_rounds 2 --best_of_n 4 --model.beta 0.1 --ckpt.output_dir runs/idpo

One process; see docs/methods.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from quartet.cli.rounds_main import rounds_main
from quartet.config.inference import IterativeDPOJobConfig


def main(argv: Sequence[str] | None = None) -> int:
    from quartet.methods.iterative_dpo import run_iterative_dpo

    return rounds_main(IterativeDPOJobConfig, run_iterative_dpo, "quartet iterative_dpo", argv)


if __name__ == "__main__":
    sys.exit(main())
