"""Batch inference: best-of-n generation, scoring, and the two post-processors.

Rows written (one per sample, jsonl): ``input`` (the rendered prompt), ``output`` (the
response), ``prompt`` (the row's raw prompt), ``prompt_index``, ``finish_reason``, ``label``
when ``--data.label_key`` is set, ``reward`` when a reward source is given, ``step_scores``
when a process reward model returns them, and ``score`` (= reward) with
``--post_processor csft``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from quartet.config.inference import BatchInferenceJobConfig, InferenceDataConfig
from quartet.data.sources import get_key, load_rows
from quartet.data.templates import render_prompt
from quartet.methods.sampling import PromptItem, Sampler
from quartet.methods.scoring import RewardSources
from quartet.types import SamplingConfig

__all__ = ["attach_scores", "best_and_worst", "generate_rows", "keep_best", "load_scored_rows",
           "mean_reward", "run_batch_inference", "score_rows", "write_jsonl"]

log = logging.getLogger("quartet.methods")

Row = dict[str, Any]


def generate_rows(items: list[PromptItem], sampler: Sampler, sampling: SamplingConfig,
                  tokenizer: Any) -> list[Row]:
    """``sampling.n`` rows per prompt, in prompt order."""
    outputs = sampler.sample([i.tokens for i in items], sampling)
    rows: list[Row] = []
    for out in outputs:
        item = items[out.prompt_index]
        for sample in out.samples:
            text = tokenizer.decode(sample.token_ids, skip_special_tokens=True)
            row = {"input": item.text, "output": text, "prompt": item.raw,
                   "prompt_index": out.prompt_index, "finish_reason": sample.finish_reason}
            if item.label is not None:
                row["label"] = item.label
            rows.append(row)
    return rows


def load_scored_rows(data: InferenceDataConfig, tokenizer: Any) -> list[Row]:
    """Rows of ``--data.dataset`` to score (``--eval_task rm``): prompt ``--data.input_key``
    (rendered like a generation prompt) and response ``--data.output_key``."""
    rows: list[Row] = []
    index: dict[str, int] = {}
    condition = data.condition_slots()
    for source in load_rows(data.dataset, data.dataset_split, data.max_samples,
                            data.dataset_probs):
        for row in source.rows:
            value = get_key(row, data.input_key, source.name, "--data.input_key")
            output = get_key(row, data.output_key, source.name, "--data.output_key")
            extra = ({"label": str(get_key(row, data.label_key, source.name,
                                           "--data.label_key"))} if data.label_key else {})
            if data.apply_chat_template or data.input_template:
                text = render_prompt(tokenizer, value, data.apply_chat_template,
                                     data.input_template, {**row, **condition}, source.name)[0]
            else:
                text = str(value)
            rows.append({**row, "input": text, "output": str(output), **extra,
                         "prompt_index": index.setdefault(text, len(index))})
    return rows


def score_rows(rows: list[Row], rewards: RewardSources, with_labels: bool) -> list[Row]:
    """Adds ``reward`` (and ``step_scores`` from a process reward model) to every row;
    ``with_labels`` passes each row's ``label`` (``--data.label_key`` was given)."""
    if not rows:
        return rows
    labels = [str(r["label"]) for r in rows] if with_labels else []
    scored = rewards([r["input"] for r in rows], [r["output"] for r in rows], labels)
    for i, row in enumerate(rows):
        row["reward"] = scored.rewards[i]
        if scored.step_scores is not None:
            row["step_scores"] = scored.step_scores[i]
    return rows


def _groups(rows: list[Row]) -> dict[int, list[Row]]:
    groups: dict[int, list[Row]] = {}
    for row in rows:
        groups.setdefault(int(row["prompt_index"]), []).append(row)
    return groups


def keep_best(rows: list[Row]) -> list[Row]:
    """Rejection sampling: the highest-reward row of each prompt (the first on ties)."""
    return [max(g, key=lambda r: r["reward"]) for g in _groups(rows).values()]


def best_and_worst(rows: list[Row]) -> list[Row]:
    """Preference pairs ``{prompt, chosen, rejected, chosen_reward, rejected_reward}``: the
    best vs the worst sample of each prompt; prompts whose samples all score the same (no
    preference) are dropped."""
    pairs = []
    for group in _groups(rows).values():
        best = max(group, key=lambda r: r["reward"])
        worst = min(group, key=lambda r: r["reward"])
        if best["reward"] > worst["reward"]:
            pairs.append({"prompt": best["input"], "chosen": best["output"],
                          "rejected": worst["output"], "chosen_reward": best["reward"],
                          "rejected_reward": worst["reward"]})
    return pairs


def attach_scores(rows: list[Row]) -> list[Row]:
    """Conditional SFT data: every row keeps its sample and gets ``score`` = its reward, the
    value a ``--data.input_template`` slot such as ``{score:.0f}`` conditions on."""
    for row in rows:
        row["score"] = row["reward"]
    return rows


def mean_reward(rows: Iterable[Row]) -> float:
    values = [float(r["reward"]) for r in rows]
    return sum(values) / max(len(values), 1)


def write_jsonl(path: str | Path, rows: list[Row]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    return path


def run_batch_inference(job: BatchInferenceJobConfig) -> list[Row]:
    """Generate and/or score, post-process, write ``--output_path``; returns the rows."""
    from quartet.methods.sampling import build_sampler, load_prompt_items, sampling_config
    from quartet.models.loading import load_tokenizer

    task = job.task
    tokenizer = None
    if job.model.model_name_or_path:
        tokenizer = load_tokenizer(job.model, job.data.tokenizer_chat_template)
    elif job.data.apply_chat_template:
        raise ValueError("--data.apply_chat_template needs --model.model_name_or_path "
                         "(whose tokenizer holds the template)")
    if task.eval_task == "rm":
        rows = load_scored_rows(job.data, tokenizer)
    else:
        items = load_prompt_items(job.data, tokenizer, job.rollout.prompt_max_len,
                                  condition=job.data.condition_slots())
        sampler = build_sampler(job.backend, job.model.model_name_or_path, job.vllm,
                                job.rollout.seed or 0)
        try:
            rows = generate_rows(items, sampler, sampling_config(job.rollout, task.best_of_n),
                                 tokenizer)
        finally:
            sampler.close()
    if job.reward.num_sources():
        rewards = RewardSources(job.reward)
        try:
            score_rows(rows, rewards, bool(job.data.label_key))
        finally:
            rewards.close()
        log.info("mean reward of %d samples: %.4f", len(rows), mean_reward(rows))
    if task.post_processor == "rs":
        rows = keep_best(rows)
    elif task.post_processor == "csft":
        rows = attach_scores(rows)
    write_jsonl(task.output_path, rows)
    return rows
