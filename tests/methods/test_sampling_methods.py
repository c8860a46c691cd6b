"""Batch inference, rejection sampling, iterative DPO and conditional SFT on the tiny policy,
in one process (HF generate in-process): measured effects asserted with margins."""

from __future__ import annotations

import json

import pytest

from quartet.config.base import from_dict
from quartet.config.inference import BatchInferenceJobConfig, IterativeDPOJobConfig, RSJobConfig
from quartet.data.sources import DataError
from quartet.methods.batch_inference import run_batch_inference
from tests.methods.conftest import FAST, KEYWORD_REWARD


def _infer(out, model, dataset, **kw):
    job = from_dict(BatchInferenceJobConfig, {
        "eval_task": "generate", "model.model_name_or_path": str(model),
        "data.dataset": str(dataset), "data.input_key": "prompt", "output_path": str(out),
        "rollout.max_new_tokens": 8, "reward.func": (str(KEYWORD_REWARD),), **kw})
    return run_batch_inference(job)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _mean(rows, key="reward"):
    return sum(r[key] for r in rows) / len(rows)


def test_best_of_n_then_rs_keeps_the_best_and_rm_rescoring_agrees(tmp_path, warm_policy, words):
    every = _infer(tmp_path / "all.jsonl", warm_policy, words["word_prompts"], best_of_n=4)
    assert len(every) == 4 * 48 and len(_rows(tmp_path / "all.jsonl")) == 192
    best = _infer(tmp_path / "rs.jsonl", warm_policy, words["word_prompts"], best_of_n=4,
                  post_processor="rs")
    assert len(best) == 48
    by_prompt = {}
    for r in every:
        by_prompt.setdefault(r["prompt_index"], []).append(r["reward"])
    # Same seed, same samples: each kept row is its prompt's maximum.
    assert [r["reward"] for r in best] == [max(by_prompt[i]) for i in range(48)]
    print(f"best-of-4: mean reward {_mean(every):.3f} -> kept {_mean(best):.3f}")
    assert _mean(best) > _mean(every) + 0.3
    # --eval_task rm re-scores a generated file and gives the same rewards.
    job = from_dict(BatchInferenceJobConfig, {
        "eval_task": "rm", "data.dataset": str(tmp_path / "rs.jsonl"),
        "data.input_key": "input", "data.output_key": "output",
        "output_path": str(tmp_path / "rescored.jsonl"), "reward.func": (str(KEYWORD_REWARD),)})
    rescored = run_batch_inference(job)
    assert [r["reward"] for r in rescored] == [r["reward"] for r in best]


def test_wrong_prompt_key_names_key_and_file(tmp_path, warm_policy, words):
    with pytest.raises(DataError, match=r"--data.input_key 'question'.*word_prompts\.jsonl"):
        _infer(tmp_path / "x.jsonl", warm_policy, words["word_prompts"],
               **{"data.input_key": "question"})


def _rounds_job(cls, tmp_path, warm_policy, words, **kw):
    return from_dict(cls, {
        **FAST, "model.model_name_or_path": str(warm_policy),
        "data.dataset": str(words["word_prompts"]), "data.input_key": "prompt",
        "eval.dataset": str(words["word_prompts_eval"]), "vllm.backend": "hf",
        "rollout.max_new_tokens": 8, "reward.func": (str(KEYWORD_REWARD),),
        "train.batch_size": 8, "train.micro_batch_size": 8, "ckpt.output_dir": str(tmp_path),
        "num_rounds": 2, **kw})


def test_rejection_sampling_raises_greedy_reward(world, tmp_path, warm_policy, words):
    from quartet.methods.rs import run_rs

    job = _rounds_job(RSJobConfig, tmp_path, warm_policy, words,
                      **{"best_of_n": 8, "adam.lr": 1e-3})
    summary = run_rs(job, world)
    greedy = [s["eval_greedy_reward"] for s in summary]
    print(f"rs: held-out greedy reward by round {greedy}; sampled "
          f"{[round(s.get('sample_reward', 0), 3) for s in summary]}")
    assert greedy[1] > greedy[0] + 0.5, summary
    assert greedy[2] > greedy[0] + 1.0, summary
    assert (tmp_path / "round_2" / "model" / "model.safetensors").exists()
    assert len(_rows(tmp_path / "rounds.jsonl")) == 3


def test_iterative_dpo_raises_reward_over_two_rounds(world, tmp_path, warm_policy, words):
    from quartet.methods.iterative_dpo import run_iterative_dpo

    job = _rounds_job(IterativeDPOJobConfig, tmp_path, warm_policy, words,
                      **{"best_of_n": 4, "adam.lr": 5e-4, "model.beta": 0.1})
    summary = run_iterative_dpo(job, world)
    greedy = [s["eval_greedy_reward"] for s in summary]
    sampled = [s["sample_reward"] for s in summary[1:]]
    print(f"iterative dpo: held-out greedy reward by round {greedy}; sampled {sampled}")
    assert summary[1]["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # ref = round's policy
    assert sampled[1] > sampled[0] + 0.1, summary
    assert greedy[2] > greedy[0] + 1.0, summary
    pair = _rows(tmp_path / "round_1" / "pairs.jsonl")[0]
    assert pair["chosen_reward"] > pair["rejected_reward"]


def test_conditional_sft_steers_by_the_condition(world, tmp_path, warm_policy, words):
    """csft data (samples + score) → SFT conditioned on the score → generation with a high vs
    a low score condition: the measured keyword count follows the condition."""
    from quartet.config import SFTJobConfig
    from quartet.trainers import SFTTrainer
    from tests.trainers.conftest import make_job

    data = tmp_path / "csft.jsonl"
    rows = _infer(data, warm_policy, words["word_prompts"], best_of_n=8,
                  post_processor="csft", **{"rollout.max_new_tokens": 6})
    assert len(rows) == 8 * 48 and all(r["score"] == r["reward"] for r in rows)
    template = "quality {score:.0f}: {}"
    SFTTrainer(make_job(SFTJobConfig, tmp_path / "csft", **{
        "model.model_name_or_path": str(warm_policy), "data.dataset": str(data),
        "data.input_key": "prompt", "data.output_key": "output", "data.input_template": template,
        "train.batch_size": 16, "train.micro_batch_size": 16, "train.max_epochs": 3,
        "adam.lr": 3e-3, "data.max_len": 48}), world).fit()
    steered = {}
    for score in (0, 2):
        out = _infer(tmp_path / f"steer{score}.jsonl", tmp_path / "csft",
                     words["word_prompts_eval"], **{
                         "rollout.temperature": 0.0, "data.input_template": template,
                         "data.condition": (f"score={score}",)})
        assert out[0]["input"].startswith(f"quality {score}: ")
        steered[score] = _mean(out)
    print(f"conditional sft: greedy keyword count with score=0 {steered[0]:.3f}, "
          f"score=2 {steered[2]:.3f}")
    assert steered[2] > steered[0] + 0.5, steered
