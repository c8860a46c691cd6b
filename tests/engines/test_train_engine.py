"""TrainEngine: schedule, DeepSpeed config, steps move parameters, Muon, LoRA, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from quartet.algos.losses import sft_loss, token_logprobs
from quartet.config import (
    AdamConfig,
    DeepSpeedConfig,
    LoraConfig,
    ModelConfig,
    MuonConfig,
    OptimConfig,
)
from quartet.data import TokenizedSample, collate
from quartet.engines.ds_config import build_ds_config
from quartet.engines.scheduler import LRMultiplier
from quartet.engines.train_engine import TrainEngine
from tests.trainers.dist_world import world_of_one

BATCH = collate([TokenizedSample([1, 40, 41, 42, 43, 2], [0, 0, 1, 1, 1, 1]),
                 TokenizedSample([1, 50, 51, 2], [0, 1, 1, 1])], 0)


@pytest.fixture(scope="module")
def world():
    yield from world_of_one()


def _engine(world, path, ds=None, optim=None, lr=1e-2, total_steps=10):
    return TrainEngine.causal_lm(ModelConfig(model_name_or_path=str(path)),
                                 ds or DeepSpeedConfig(param_dtype="fp32"),
                                 optim or OptimConfig(lr_warmup_ratio=0.0), AdamConfig(lr=lr),
                                 MuonConfig(), global_batch=2, micro_batch=2,
                                 total_steps=total_steps, world=world)


def _loss(engine):
    out = engine.forward(BATCH)
    labels, mask, _ = BATCH.shifted()
    return sft_loss(token_logprobs(out.logits[:, :-1], labels), mask)


def test_cosine_with_min_lr_schedule():
    m = LRMultiplier("cosine_with_min_lr", total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    assert [m(0), m(1)] == pytest.approx([1 / 3, 2 / 3])
    assert m(2) == pytest.approx(1.0)
    assert m(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert m(10) == pytest.approx(0.1) and m(50) == pytest.approx(0.1)


def test_ds_config_choices():
    ds = DeepSpeedConfig(zero_stage=3)
    adam = build_ds_config(ds, OptimConfig(), AdamConfig(), MuonConfig(), 16, 2, 2)
    assert adam["gradient_accumulation_steps"] == 4 and adam["gradient_clipping"] == 1.0
    assert adam["optimizer"]["params"]["torch_adam"] is True  # no JIT-compiled op by default
    assert adam["optimizer"]["params"]["fused"] is True
    muon = build_ds_config(ds, OptimConfig(optim="muon"), AdamConfig(), MuonConfig(), 16, 2, 2)
    assert muon["zero_optimization"]["reduce_scatter"] is False
    assert muon["optimizer"]["type"] == "Muon"
    off = build_ds_config(DeepSpeedConfig(adam_offload=True), OptimConfig(), AdamConfig(),
                          MuonConfig(), 16, 2, 2)
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert off["optimizer"]["params"]["torch_adam"] is False
    assert "fused" not in off["optimizer"]["params"]


@pytest.mark.parametrize("stage", [0, 3])
def test_step_moves_every_parameter_and_reports(world, tiny_model_path, stage):
    engine = _engine(world, tiny_model_path, DeepSpeedConfig(zero_stage=stage,
                                                             param_dtype="fp32"))
    before = {n: t.clone() for n, t in engine.named_parameters_for_export()}
    engine.backward(_loss(engine))
    info = engine.step()
    assert info is not None and info.step == 1 and info.lr == pytest.approx(1e-2)
    assert math.isfinite(info.grad_norm) and info.grad_norm > 0
    after = dict(engine.named_parameters_for_export())
    assert before.keys() == after.keys() and "lm_head.weight" in after
    assert all(after[n].shape == before[n].shape for n in before)
    assert [n for n in before if torch.equal(before[n], after[n])] == []


def test_muon_zero3_trains(world, tiny_model_path):
    engine = _engine(world, tiny_model_path, DeepSpeedConfig(zero_stage=3, param_dtype="fp32"),
                     OptimConfig(optim="muon", lr_warmup_ratio=0.0), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = _loss(engine)
        losses.append(float(loss))
        engine.backward(loss)
        engine.step()
    assert "Muon" in type(engine.engine.optimizer).__name__ or engine.ds_config[
        "optimizer"]["type"] == "Muon"
    assert losses[-1] < 0.8 * losses[0], losses


def test_lora_step_changes_adapters_only(world, tiny_model_path):
    engine = _engine(world, tiny_model_path,
                     DeepSpeedConfig(zero_stage=2, param_dtype="fp32", lora=LoraConfig(rank=4)))
    before = {n: t.clone() for n, t in engine.named_parameters_for_export()}
    for _ in range(2):  # LoRA B starts at zero, so A moves only from the second step
        engine.backward(_loss(engine))
        engine.step()
    after = dict(engine.named_parameters_for_export())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    lora = {n for n in before if "lora_" in n}
    assert changed == lora


def test_checkpoint_round_trip(world, tiny_model_path, tmp_path):
    engine = _engine(world, tiny_model_path, DeepSpeedConfig(zero_stage=2, param_dtype="fp32"))
    engine.backward(_loss(engine))
    engine.step()
    engine.save_checkpoint(tmp_path, "global_step1", {"epoch": 7})
    saved = {n: t.clone() for n, t in engine.named_parameters_for_export()}
    lr = engine.lr
    for _ in range(2):
        engine.backward(_loss(engine))
        engine.step()
    state = engine.load_checkpoint(tmp_path)
    assert state["epoch"] == 7 and engine.global_step == 1 and engine.lr == pytest.approx(lr)
    assert all(torch.equal(saved[n], t) for n, t in engine.named_parameters_for_export())
    assert engine.load_checkpoint(tmp_path / "missing") is None


def test_bf16_with_gradient_checkpointing(world, tiny_model_path):
    engine = TrainEngine.causal_lm(
        ModelConfig(model_name_or_path=str(tiny_model_path), gradient_checkpointing_enable=True),
        DeepSpeedConfig(zero_stage=2, param_dtype="bf16"), OptimConfig(lr_warmup_ratio=0.0),
        AdamConfig(lr=1e-2), MuonConfig(), global_batch=2, micro_batch=2, total_steps=10,
        world=world)
    losses = []
    for _ in range(4):
        loss = _loss(engine)
        losses.append(float(loss))
        engine.backward(loss)
        engine.step()
    assert engine.forward(BATCH).logits.dtype == torch.bfloat16
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_adam_offload_trains(world, tiny_model_path):
    """DeepSpeedCPUAdam JIT-compiles on first use (~3 min), hence slow."""
    engine = _engine(world, tiny_model_path,
                     DeepSpeedConfig(zero_stage=2, param_dtype="fp32", adam_offload=True))
    losses = []
    for _ in range(4):
        loss = _loss(engine)
        losses.append(float(loss))
        engine.backward(loss)
        engine.step()
    assert "CPUAdam" in type(engine.engine.optimizer.optimizer).__name__
    assert losses[-1] < losses[0]


def test_world_of_one_skips_the_identity_all_reduce(world, tiny_model_path):
    """ZeRO-0 with one rank skips DeepSpeed's gradient all-reduce (flatten, reduce with
    itself, copy back); weights after two accumulated steps equal those of the reducing path."""
    torch.manual_seed(0)

    def trained(reduce: bool) -> dict[str, torch.Tensor]:
        engine = TrainEngine.causal_lm(
            ModelConfig(model_name_or_path=str(tiny_model_path)),
            DeepSpeedConfig(zero_stage=0, param_dtype="fp32"), OptimConfig(lr_warmup_ratio=0.0),
            AdamConfig(lr=1e-2), MuonConfig(), global_batch=4, micro_batch=2,
            total_steps=10, world=world)
        assert engine.engine.enable_backward_allreduce is False
        engine.engine.enable_backward_allreduce = reduce
        for _ in range(4):  # two optimizer steps of two accumulated micro-batches
            engine.backward(_loss(engine))
            engine.step()
        assert engine.global_step == 2
        return {n: t.clone() for n, t in engine.named_parameters_for_export()}

    skipped, reduced = trained(False), trained(True)
    assert skipped.keys() == reduced.keys()
    assert [n for n in skipped if not torch.equal(skipped[n], reduced[n])] == []


@pytest.mark.parametrize("tied", [False, True])
def test_hf_export_writes_the_trained_weights_without_copying_them(world, tiny_model_path,
                                                                   tmp_path, tied):
    """The export writes whole CPU parameters from their own memory (no second model in RAM,
    see `_gathered_state_dict`); what it writes is the trained model, tied output layer
    included, and loads back as it was."""
    from transformers import AutoModelForCausalLM

    from quartet.testing.tiny import tiny_model_dir

    path = (tiny_model_dir(name="tiny-llama-tied", tie_word_embeddings=True) if tied
            else tiny_model_path)
    engine = _engine(world, path)
    engine.backward(_loss(engine))
    engine.step()
    state = engine._gathered_state_dict()
    params = dict(engine.module.named_parameters())
    assert all(state[n].data_ptr() == p.data_ptr() for n, p in params.items())
    engine.save_hf(tmp_path / "hf", whole_directory=True)
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    assert back.config.tie_word_embeddings == tied
    for name, p in back.named_parameters():
        assert torch.equal(p, params[name]), name
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # nothing written beside it


def test_publish_dir_replaces_an_older_export_whole(tmp_path):
    """An export is written beside its final name and moved there: an older one is replaced
    as a whole (no stale file of it survives) and nothing is left beside it."""
    from quartet.engines.train_engine import publish_dir

    final = tmp_path / "hf" / "final"
    final.mkdir(parents=True)
    (final / "old-only.bin").write_text("old")
    (final / "config.json").write_text("old")
    new = tmp_path / "hf" / ".final.partial-1"
    new.mkdir()
    (new / "config.json").write_text("new")
    publish_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["config.json"]
    assert (final / "config.json").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["final"]


def test_an_interrupted_export_leaves_nothing_behind_the_next_one(tmp_path):
    """What a killed export left beside `hf/final` is cleared before the next export: a
    half-written `.partial-` directory is removed, and an older export that a kill between
    `publish_dir`'s two renames left under `.old-` becomes `final` again."""
    from quartet.engines.train_engine import clear_interrupted_exports

    hf = tmp_path / "hf"
    final = hf / "final"
    (hf / ".final.partial-7").mkdir(parents=True)
    (hf / ".final.partial-7" / "model.safetensors").write_text("half")
    (hf / ".final.old-7").mkdir()
    (hf / ".final.old-7" / "config.json").write_text("previous")
    (hf / ".other.partial-7").mkdir()  # another export's: not ours to touch
    clear_interrupted_exports(final)
    assert (final / "config.json").read_text() == "previous"
    assert sorted(p.name for p in hf.iterdir()) == [".other.partial-7", "final"]
    (hf / ".final.old-8").mkdir()  # final exists: a stale old copy is only removed
    clear_interrupted_exports(final)
    assert sorted(p.name for p in hf.iterdir()) == [".other.partial-7", "final"]
    assert (final / "config.json").read_text() == "previous"
