"""Rejection-sampling fine-tuning: k rounds of best-of-n → score → keep the best → SFT.

    python -m quartet.cli.rs --model.model_name_or_path PATH --data.dataset prompts.jsonl \
        --data.input_key prompt --reward.func reward.py --num_rounds 2 --best_of_n 4 \
        --eval.dataset held_out.jsonl --ckpt.output_dir runs/rs

One process; see docs/methods.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from quartet.cli.rounds_main import rounds_main
from quartet.config.inference import RSJobConfig


def main(argv: Sequence[str] | None = None) -> int:
    from quartet.methods.rs import run_rs

    return rounds_main(RSJobConfig, run_rs, "quartet rs", argv)


if __name__ == "__main__":
    sys.exit(main())
