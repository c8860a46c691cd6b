"""SFT / RM / DPO trainers in one process: learning, packing equality, resume, exports."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from quartet.config import DPOJobConfig, RMJobConfig, SFTJobConfig
from quartet.data.tokenize import TokenizedSample
from quartet.trainers import DPOTrainer, RMTrainer, SFTTrainer
from tests.trainers.conftest import make_job


def _sft_job(tmp_path, tiny_model_path, tiny_data, **kw):
    return make_job(SFTJobConfig, tmp_path, **{
        "model.model_name_or_path": str(tiny_model_path), "data.dataset": str(tiny_data["sft"]),
        "data.input_key": "question", "data.output_key": "response", "adam.lr": 3e-3, **kw})


def _pref_job(cls, tmp_path, tiny_model_path, separable, **kw):
    train, held_out = separable
    return make_job(cls, tmp_path, **{
        "model.model_name_or_path": str(tiny_model_path), "data.dataset": str(train),
        "eval.dataset": str(held_out), "data.input_key": "prompt",
        "train.batch_size": 16, "train.micro_batch_size": 8, "adam.lr": 2e-3, **kw})


def _losses(history):
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_sft_loss_falls(world, tmp_path, tiny_model_path, tiny_data, stage):
    job = _sft_job(tmp_path, tiny_model_path, tiny_data, **{"ds.zero_stage": stage})
    losses = _losses(SFTTrainer(job, world).fit())
    print(f"sft stage {stage}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert len(losses) == 8
    assert losses[-1] < 0.6 * losses[0], losses
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_rm_learns_separable_preferences(world, tmp_path, tiny_model_path, separable, stage):
    job = _pref_job(RMJobConfig, tmp_path, tiny_model_path, separable,
                    **{"ds.zero_stage": stage, "train.max_epochs": 2, "eval.steps": 4,
                       "logger.tensorboard_dir": str(tmp_path / "tb")})
    history = RMTrainer(job, world).fit()
    losses = _losses(history)
    evals = [h for h in history if "eval/acc" in h]
    assert [e["step"] for e in evals] == [0, 4, 8, 12]  # 96 pairs / 16 = 6 steps x 2 epochs
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    print(f"rm stage {stage}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out acc "
          f"{evals[0]['eval/acc']:.3f} -> {evals[-1]['eval/acc']:.3f}")
    assert losses[-1] < 0.5 * losses[0], losses
    assert evals[-1]["eval/acc"] >= 0.9, evals


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_dpo_preference_accuracy_rises(world, tmp_path, tiny_model_path, separable, stage):
    job = _pref_job(DPOJobConfig, tmp_path, tiny_model_path, separable,
                    **{"ds.zero_stage": stage, "train.max_epochs": 2, "model.beta": 0.1})
    history = DPOTrainer(job, world).fit()
    evals = [h for h in history if "eval/acc" in h]
    assert evals[0]["step"] == 0 and evals[0]["eval/acc"] == pytest.approx(0.5)
    assert evals[-1]["eval/acc"] >= 0.8, evals
    losses = _losses(history)
    print(f"dpo stage {stage}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out acc "
          f"{evals[0]['eval/acc']:.3f} -> {evals[-1]['eval/acc']:.3f}")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at start
    assert losses[-1] < 0.5 * losses[0]
    last = history[-2] if "eval/acc" in history[-1] else history[-1]
    assert {"chosen_reward", "rejected_reward", "reward_margin", "acc"} <= set(last)


@pytest.mark.parametrize("variant", [
    {"model.ipo_enable": True}, {"model.label_smoothing": 0.1},
    {"model.nll_loss_coef": 0.5, "ref.offload": True},
    {"model.loss_type": "bco_pair", "model.aux_loss_coef": 0.01},
])
def test_dpo_variants_train(world, tmp_path, tiny_model_path, separable, variant):
    job = _pref_job(DPOJobConfig, tmp_path, tiny_model_path, separable, **variant)
    history = DPOTrainer(job, world).fit()
    evals = [h for h in history if "eval/acc" in h]
    assert evals[-1]["eval/reward_margin"] > 0.0
    if "model.nll_loss_coef" in variant:
        assert any("nll_loss" in h for h in history)


def test_rm_margin_and_logexp(world, tmp_path, tiny_model_path, separable):
    job = _pref_job(RMJobConfig, tmp_path, tiny_model_path, separable, **{
        "model.margin_loss_enable": True, "model.loss_type": "logexp",
        "model.compute_fp32_loss_enable": True})
    trainer = RMTrainer(job, world)
    assert trainer.train_samples[0].margin == 0.5
    losses = _losses(trainer.fit())
    assert losses[-1] < losses[0]


def test_resume_matches_uninterrupted_run(world, tmp_path, tiny_model_path, tiny_data):
    common = {"ds.zero_stage": 2, "train.batch_size": 8, "train.micro_batch_size": 2,
              "train.max_epochs": 2, "lr_warmup_ratio": 0.2}
    full = _losses(SFTTrainer(_sft_job(tmp_path / "a", tiny_model_path, tiny_data, **common),
                              world).fit())
    first = _losses(SFTTrainer(_sft_job(tmp_path / "b", tiny_model_path, tiny_data,
                                        **common, **{"train.stop_after_steps": 10}), world).fit())
    rest = _losses(SFTTrainer(_sft_job(tmp_path / "b", tiny_model_path, tiny_data,
                                       **common, **{"ckpt.load_enable": True}), world).fit())
    assert len(full) == 16 and len(first) == 10 and len(rest) == 6  # resume crosses an epoch
    assert first + rest == pytest.approx(full, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("trainer_cls,job_cls", [(SFTTrainer, SFTJobConfig),
                                                  (RMTrainer, RMJobConfig),
                                                  (DPOTrainer, DPOJobConfig)])
def test_packed_loss_equals_padded(world, tmp_path, tiny_model_path, tiny_data, separable,
                                   trainer_cls, job_cls):
    losses = []
    for packed in (False, True):
        if trainer_cls is SFTTrainer:
            job = _sft_job(tmp_path, tiny_model_path, tiny_data,
                           **{"ds.packing_samples": packed})
        else:
            job = _pref_job(job_cls, tmp_path, tiny_model_path, separable,
                            **{"ds.packing_samples": packed})
        trainer = trainer_cls(job, world)
        loss, metrics, _ = trainer.compute_loss(trainer.train_samples[:4])
        losses.append((float(loss), metrics))
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-5)
    for key in losses[0][1]:
        assert losses[0][1][key] == pytest.approx(losses[1][1][key], abs=1e-4), key


def test_sft_loss_is_response_only_and_hand_computed(world, tmp_path, tiny_model_path,
                                                      tiny_data):
    """Token-mean NLL over target tokens only; an all-masked row and a 1-token row add 0."""
    trainer = SFTTrainer(_sft_job(tmp_path, tiny_model_path, tiny_data), world)
    normal = trainer.train_samples[0]
    assert 0 < normal.num_targets < len(normal.input_ids)  # prompt tokens are masked
    masked_row = TokenizedSample(normal.input_ids[:5], [0] * 5)
    single = TokenizedSample(normal.input_ids[:1], [0])
    job = trainer.job
    for packed in (False, True):
        trainer.job = replace(job, ds=replace(job.ds, packing_samples=packed))
        loss, _, _ = trainer.compute_loss([masked_row, normal, single])
        with torch.no_grad():
            ids = torch.tensor([normal.input_ids])
            logits = trainer.engine.module(input_ids=ids).logits[0, :-1]
            targets = torch.tensor(normal.target_mask[1:], dtype=torch.bool)
            expected = F.cross_entropy(logits[targets], ids[0, 1:][targets])
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    trainer.job = job
    loss, _, _ = trainer.compute_loss([masked_row, single])
    assert float(loss) == 0.0


def test_pretrain_mode_targets_whole_sequence(world, tmp_path, tiny_model_path, tiny_data):
    trainer = SFTTrainer(_sft_job(tmp_path, tiny_model_path, tiny_data,
                                  **{"model.pretrain_mode_enable": True}), world)
    sample = trainer.train_samples[0]
    assert sample.target_mask == [0] + [1] * (len(sample.input_ids) - 1)


def test_every_trainable_parameter_changes(world, tmp_path, tiny_model_path, tiny_data):
    trainer = SFTTrainer(_sft_job(tmp_path, tiny_model_path, tiny_data,
                                  **{"ds.zero_stage": 3, "train.max_epochs": 1}), world)
    before = {n: t.clone() for n, t in trainer.engine.named_parameters_for_export()}
    trainer.fit()
    after = dict(trainer.engine.named_parameters_for_export())
    assert before.keys() == after.keys()
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged


def test_saved_rm_loads_as_sequence_classifier(world, tmp_path, tiny_model_path, separable):
    from transformers import AutoModelForSequenceClassification

    from quartet.data.batch import collate

    job = _pref_job(RMJobConfig, tmp_path, tiny_model_path, separable,
                    **{"ds.zero_stage": 3, "train.max_epochs": 1})
    trainer = RMTrainer(job, world)
    trainer.fit()
    samples = trainer.eval_samples[:4]
    with torch.no_grad():
        chosen, rejected, _ = trainer.scores(samples)
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), num_labels=1).eval()
    batch = collate([s.chosen for s in samples] + [s.rejected for s in samples],
                    trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, 0]
    assert torch.allclose(logits, torch.cat([chosen, rejected]), atol=1e-4)


def test_sft_sequence_mean_loss_weighs_samples_equally(world, tmp_path, tiny_model_path,
                                                       tiny_data):
    """--model.loss_agg_mode seq-mean-token-mean: mean over samples of each sample's mean NLL,
    the same packed or padded; a sample without targets is left out."""
    trainer = SFTTrainer(_sft_job(tmp_path, tiny_model_path, tiny_data,
                                  **{"model.loss_agg_mode": "seq-mean-token-mean"}), world)
    a, b = trainer.train_samples[0], trainer.train_samples[1]
    empty = TokenizedSample(a.input_ids[:5], [0] * 5)
    per_sample = []
    with torch.no_grad():
        for s in (a, b):
            ids = torch.tensor([s.input_ids])
            logits = trainer.engine.module(input_ids=ids).logits[0, :-1]
            targets = torch.tensor(s.target_mask[1:], dtype=torch.bool)
            per_sample.append(float(F.cross_entropy(logits[targets], ids[0, 1:][targets])))
    job = trainer.job
    for packed in (False, True):
        trainer.job = replace(job, ds=replace(job.ds, packing_samples=packed))
        loss, _, _ = trainer.compute_loss([a, empty, b])
        assert float(loss) == pytest.approx(sum(per_sample) / 2, rel=1e-5)
