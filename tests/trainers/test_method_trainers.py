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
