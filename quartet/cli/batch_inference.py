"""Batch inference: best-of-n sampling and/or reward scoring to jsonl.

    python -m quartet.cli.batch_inference --eval_task generate_vllm \
        --model.model_name_or_path PATH --data.dataset prompts.jsonl --data.input_key prompt \
        --best_of_n 4 --rollout.temperature 1.0 --reward.func reward.py \
        --post_processor rs --output_path best.jsonl

``--eval_task rm`` scores the (prompt, response) rows of a file instead; see docs/methods.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from quartet.config.base import parse_config
from quartet.config.inference import INFERENCE_RENAMED_FLAGS, BatchInferenceJobConfig
from quartet.config.renamed import RENAMED_FLAGS


def main(argv: Sequence[str] | None = None) -> int:
    from quartet.data.sources import DataError
    from quartet.logs import setup_logging
    from quartet.methods.batch_inference import mean_reward, run_batch_inference

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    job = parse_config(BatchInferenceJobConfig, argv, prog="quartet batch_inference",
                       renamed={**RENAMED_FLAGS, **INFERENCE_RENAMED_FLAGS})
    setup_logging("batch_inference", "WARNING")
    try:
        rows = run_batch_inference(job)
    except (DataError, ValueError, RuntimeError) as exc:
        print(f"quartet batch_inference: error: {exc}", file=sys.stderr)
        return 1
    line = f"quartet batch_inference: wrote {len(rows)} rows to {job.task.output_path}"
    if rows and "reward" in rows[0]:
        line += f" (mean reward {mean_reward(rows):.4f})"
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
