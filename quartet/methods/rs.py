"""Rejection-sampling fine-tuning (the seed paper's appendix; Llama 2's "rejection sampling"):
each round keeps the best-rewarded of n samples per prompt and runs SFT on them."""

from __future__ import annotations

from pathlib import Path

from quartet.config.inference import RSJobConfig
from quartet.config.jobs import SFTJobConfig
from quartet.engines.distributed import World
from quartet.methods.batch_inference import keep_best, mean_reward, write_jsonl
from quartet.methods.rounds import RoundPlan, Row, run_rounds
from quartet.methods.trainer_jobs import round_data, round_job
from quartet.trainers.sft_trainer import SFTTrainer

__all__ = ["run_rs"]


def run_rs(job: RSJobConfig, world: World) -> list[dict]:
    def plan(k: int, rows: list[Row], policy: str, round_dir: Path) -> RoundPlan:
        best = keep_best(rows)
        data = write_jsonl(round_dir / "best.jsonl", best)
        sft = round_job(SFTJobConfig, job, policy, round_dir,
                        round_data(job, data, input_key="input", output_key="output"))
        return RoundPlan(SFTTrainer, sft, {"kept_reward": mean_reward(best)})

    return run_rounds(job, world, plan)
