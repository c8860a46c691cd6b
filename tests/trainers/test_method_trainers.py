"""KTO and distillation trainers in one process: measured learning signals, data errors."""

from __future__ import annotations

import json

import pytest
import torch

from quartet.config import SFTJobConfig
from quartet.config.methods import KDJobConfig, KTOJobConfig
from quartet.data.sources import DataError
from quartet.trainers import SFTTrainer
from quartet.trainers.kd_trainer import KDTrainer
from quartet.trainers.kto_trainer import KTOTrainer
from tests.trainers.conftest import make_job


def _unpaired(path, pairs_file):
    """Each pair becomes two unpaired rows {prompt, output, label}."""
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "output": r["chosen"],
                                "label": True}) + "\n")
            f.write(json.dumps({"prompt": r["prompt"], "output": r["rejected"],
                                "label": "undesirable"}) + "\n")
    return path


def _kto_job(tmp_path, model, data, held_out, **kw):
    return make_job(KTOJobConfig, tmp_path, **{
        "model.model_name_or_path": str(model), "data.dataset": str(data),
        "eval.dataset": str(held_out), "data.prompt_key": "prompt",
        "train.batch_size": 16, "train.micro_batch_size": 8, "adam.lr": 2e-3,
        "model.beta": 0.1, **kw})


def _margin(trainer: KTOTrainer) -> float:
    samples = trainer.eval_samples
    logps = trainer.response_logps(samples)
    flags = torch.tensor([s.desirable for s in samples])
    return float(logps[flags].mean() - logps[~flags].mean())


@pytest.mark.parametrize("unpaired,vanilla", [(True, False), (False, True)])
def test_kto_raises_desirable_vs_undesirable_margin(world, tmp_path, tiny_model_path, separable,
                                                     unpaired, vanilla):
    train, held_out = separable
    if unpaired:
        train = _unpaired(tmp_path / "unpaired.jsonl", train)
    trainer = KTOTrainer(_kto_job(tmp_path, tiny_model_path, train, held_out,
                                  **{"model.vanilla_loss": vanilla}), world)
    assert len(trainer.train_samples) == 192  # 96 pairs -> 192 samples either way
    s = trainer.train_samples[0]
    assert s.kl_sequence.input_ids != s.sequence.input_ids  # a mismatched response
    before = _margin(trainer)
    history = trainer.fit()
    after = _margin(trainer)
    losses = [h["loss"] for h in history if "loss" in h]
    print(f"kto unpaired={unpaired} vanilla={vanilla}: held-out log-prob margin "
          f"{before:.2f} -> {after:.2f}, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert after > before + 5.0, (before, after)
    assert losses[-1] < losses[0] - 0.1
    assert "kl" in history[0] or "kl" in history[1]


def test_kto_wrong_label_key_names_key_and_file(world, tmp_path, tiny_model_path, separable):
    data = _unpaired(tmp_path / "u.jsonl", separable[0])
    with pytest.raises(DataError, match=r"--data.label_key 'is_good'.*u\.jsonl"):
        KTOTrainer(_kto_job(tmp_path, tiny_model_path, data, separable[1],
                            **{"data.label_key": "is_good"}), world)


def test_kd_kl_to_teacher_falls(world, tmp_path, tiny_model_path, tiny_data):
    common = {"data.dataset": str(tiny_data["sft"]), "data.input_key": "question",
              "data.output_key": "response", "eval.dataset": str(tiny_data["sft"]),
              "eval.split": "train", "eval.max_samples": 16}
    teacher_dir = tmp_path / "teacher"
    SFTTrainer(make_job(SFTJobConfig, teacher_dir, **{
        "model.model_name_or_path": str(tiny_model_path), "adam.lr": 3e-3, **common}),
        world).fit()
    job = make_job(KDJobConfig, tmp_path / "student", **{
        "model.model_name_or_path": str(tiny_model_path),
        "teacher.model_name_or_path": str(teacher_dir), "model.kd_coef": 0.9,
        "adam.lr": 3e-3, **common})
    history = KDTrainer(job, world).fit()
    evals = [h for h in history if "eval/kl" in h]
    before, after = evals[0]["eval/kl"], evals[-1]["eval/kl"]
    print(f"kd: held-out KL(teacher || student) {before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, evals


PLACEHOLDER = "<|system|>"  # one token of the tiny tokenizer (Math-Shepherd's "ки" is not)


def test_prm_step_accuracy_beats_chance_and_scores_steps(world, tmp_path, tiny_model_path):
    from quartet.config.methods import PRMJobConfig
    from quartet.rewards.base import RewardInputs
    from quartet.rewards.prm import ProcessReward
    from quartet.testing.words import write_prm_datasets
    from quartet.trainers.prm_trainer import PRMTrainer

    data = write_prm_datasets(tmp_path / "data", PLACEHOLDER)
    job = make_job(PRMJobConfig, tmp_path / "prm", **{
        "model.model_name_or_path": str(tiny_model_path), "data.dataset": str(data["prm_train"]),
        "eval.dataset": str(data["prm_eval"]), "eval.split": "train",
        "model.placeholder_token": PLACEHOLDER, "data.max_len": 48,
        "train.batch_size": 16, "train.micro_batch_size": 8, "train.max_epochs": 3,
        "adam.lr": 2e-3})
    history = PRMTrainer(job, world).fit()
    evals = [h for h in history if "eval/acc" in h]
    print(f"prm: held-out step accuracy {evals[0]['eval/acc']:.3f} -> {evals[-1]['eval/acc']:.3f}")
    assert evals[-1]["eval/acc"] >= 0.8, evals  # chance is 0.5 (balanced steps)
    # As a reward source: one score per step, the bad step scores lowest.
    prm = ProcessReward(str(tmp_path / "prm"))
    p = f" {PLACEHOLDER}"
    result = prm(RewardInputs(queries=["", ""], prompts=["the cat?", "the cat?"],
                              responses=[f" good yes{p} bad cat{p} blue day{p}",
                                         f" good yes{p} red dog{p}"], labels=["", ""]))
    assert [len(s) for s in result.step_scores] == [3, 2]
    first = result.step_scores[0]
    assert first[1] < min(first[0], first[2]) - 0.3, result.step_scores
    assert result.rewards[0] == min(first) and result.rewards[1] > result.rewards[0]


def test_prm_label_count_mismatch_names_row_and_file(world, tmp_path, tiny_model_path):
    from quartet.config.methods import PRMJobConfig
    from quartet.trainers.prm_trainer import PRMTrainer

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"input": f"a b {PLACEHOLDER} c d {PLACEHOLDER}",
                                "label": ["+"]}) + "\n")
    job = make_job(PRMJobConfig, tmp_path, **{
        "model.model_name_or_path": str(tiny_model_path), "data.dataset": str(path),
        "model.placeholder_token": PLACEHOLDER, "train.batch_size": 1,
        "train.micro_batch_size": 1})
    with pytest.raises(DataError, match=r"bad\.jsonl row 0 key 'label': 1 labels for 2 "):
        PRMTrainer(job, world)
