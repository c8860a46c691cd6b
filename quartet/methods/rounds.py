"""The loop both iterative methods share: sample from the current policy → score → build the
round's training data → train from the current policy → hand the new weights to the sampler.

A method supplies one function: from the scored samples of a round to a trainer job (or None
to skip training this round). Everything else — prompts, the generation engine, reward
sources, held-out greedy evaluation, round directories and the ``rounds.jsonl`` summary —
lives here once. Runs as one process (the trainer inside is a DeepSpeed world of one).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quartet.config.inference import RoundsJobConfig
from quartet.engines.distributed import World
from quartet.methods.batch_inference import generate_rows, mean_reward, score_rows, write_jsonl
from quartet.methods.sampling import build_sampler, load_prompt_items, sampling_config
from quartet.methods.scoring import RewardSources

__all__ = ["RoundPlan", "run_rounds"]

log = logging.getLogger("quartet.methods")

Row = dict[str, Any]


@dataclass
class RoundPlan:
    """What a method trains on in one round: ``trainer_cls(job, world)`` and a summary."""

    trainer_cls: type
    job: Any
    metrics: dict[str, float]


PlanRound = Callable[[int, list[Row], str, Path], RoundPlan | None]
"""(round index, scored samples, current policy path, round directory) -> plan or None."""


def run_rounds(job: RoundsJobConfig, world: World, plan_round: PlanRound,
               echo: Callable[[str], None] = print) -> list[dict]:
    """Run ``job.rounds.num_rounds`` rounds; returns (and writes) one summary per round plus
    the starting evaluation (round 0)."""
    from quartet.models.loading import load_tokenizer

    if world.world_size != 1:
        raise RuntimeError("iterative methods run as one process (sampling and scoring happen "
                           "between training rounds); start them without torchrun/deepspeed")
    if job.ds.lora.rank > 0:
        raise ValueError("--ds.lora.rank: iterative methods train full weights (each round "
                         "starts from the last round's exported model)")
    out = Path(job.ckpt.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(job.model, job.data.tokenizer_chat_template)
    condition = job.data.condition_slots()
    prompts = load_prompt_items(job.data, tokenizer, job.rollout.prompt_max_len,
                                condition=condition)
    eval_prompts = (load_prompt_items(job.data, tokenizer, job.rollout.prompt_max_len,
                                      job.eval.dataset, job.eval.split, job.eval.max_samples,
                                      condition)
                    if job.eval.dataset else [])
    rewards = RewardSources(job.reward)
    sampler = build_sampler(job.vllm.backend, job.model.model_name_or_path, job.vllm,
                            job.rollout.seed or 0)
    summaries: list[dict] = []
    policy = job.model.model_name_or_path
    labelled = bool(job.data.label_key)

    def evaluate() -> float | None:
        if not eval_prompts:
            return None
        rows = generate_rows(eval_prompts, sampler, sampling_config(job.rollout, 1, 0.0),
                             tokenizer)
        return mean_reward(score_rows(rows, rewards, labelled))

    def record(summary: dict) -> None:
        summaries.append(summary)
        with open(out / "rounds.jsonl", "a") as f:
            f.write(json.dumps(summary) + "\n")
        echo("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in summary.items()))

    try:
        (out / "rounds.jsonl").unlink(missing_ok=True)
        record({"round": 0, "eval_greedy_reward": evaluate()})
        for k in range(1, job.rounds.num_rounds + 1):
            tic = time.perf_counter()
            round_dir = out / f"round_{k}"
            sampling = sampling_config(job.rollout, job.rounds.best_of_n, seed_offset=1000 * k)
            rows = score_rows(generate_rows(prompts, sampler, sampling, tokenizer), rewards,
                              labelled)
            write_jsonl(round_dir / "samples.jsonl", rows)
            plan = plan_round(k, rows, policy, round_dir)
            summary: dict[str, Any] = {"round": k, "sample_reward": mean_reward(rows)}
            if plan is None:
                summary["skipped"] = "no training data this round"
            else:
                summary.update(plan.metrics)
                trainer = plan.trainer_cls(plan.job, world)
                history = trainer.fit()
                losses = [h["loss"] for h in history if "loss" in h]
                if losses:
                    summary.update(first_loss=losses[0], last_loss=losses[-1])
                sampler.load_weights(trainer.engine.named_parameters_for_export(), k)
                policy = str(round_dir / "model")
                del trainer
                gc.collect()
            summary["eval_greedy_reward"] = evaluate()
            summary["seconds"] = time.perf_counter() - tic
            record(summary)
    finally:
        sampler.close()
        rewards.close()
    return summaries
