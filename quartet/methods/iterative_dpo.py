"""Iterative (online) DPO (Xiong et al. 2024; the seed paper's appendix): each round samples
n responses per prompt from the current policy, pairs the best with the worst by reward and
runs DPO with the round's starting policy as the frozen reference."""

from __future__ import annotations

from pathlib import Path

from quartet.config.inference import IterativeDPOJobConfig
from quartet.config.jobs import DPOJobConfig
from quartet.config.ref import RefConfig
from quartet.engines.distributed import World
from quartet.methods.batch_inference import best_and_worst, write_jsonl
from quartet.methods.rounds import RoundPlan, Row, run_rounds
from quartet.methods.trainer_jobs import round_data, round_job
from quartet.trainers.dpo_trainer import DPOTrainer

__all__ = ["run_iterative_dpo"]


def run_iterative_dpo(job: IterativeDPOJobConfig, world: World) -> list[dict]:
    def plan(k: int, rows: list[Row], policy: str, round_dir: Path) -> RoundPlan | None:
        pairs = best_and_worst(rows)
        if len(pairs) < job.train.batch_size:
            return None  # too few prompts with a preference for one optimizer step
        data = write_jsonl(round_dir / "pairs.jsonl", pairs)
        dpo = round_job(DPOJobConfig, job, policy, round_dir,
                        round_data(job, data, prompt_key="prompt"), dpo=job.dpo,
                        ref=RefConfig(model_name_or_path=policy))
        gap = sum(p["chosen_reward"] - p["rejected_reward"] for p in pairs) / len(pairs)
        return RoundPlan(DPOTrainer, dpo, {"pairs": float(len(pairs)), "pair_reward_gap": gap})

    return run_rounds(job, world, plan)
