"""Generated hierarchical flags: the seed's examples parse, old flags explain, errors name flags."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from quartet.config import (
    RENAMED_FLAGS,
    ConfigError,
    DeepSpeedConfig,
    DPOJobConfig,
    RMJobConfig,
    SFTJobConfig,
    build_parser,
    config_to_dict,
    from_dict,
    parse_config,
)

SEED_SFT = r"""
--model.model_name_or_path meta-llama/Meta-Llama-3-8B --data.dataset Open-Orca/OpenOrca
--data.input_key question --data.output_key response --data.input_template 'User: {}\nAssistant: '
--data.max_samples 500000 --data.max_len 2048 --ds.packing_samples --train.batch_size 256
--train.micro_batch_size 8 --train.max_epochs 1 --adam.lr 5e-6 --ds.zero_stage 2
--ds.param_dtype bf16 --ds.attn_implementation flash_attention_2
--model.gradient_checkpointing_enable --ckpt.output_dir ./checkpoint/llama3-8b-sft
--ckpt.save_steps -1 --logger.logging_steps 1 --eval.steps -1 --logger.wandb.key TOKEN
"""
SEED_MUON = r"""
--model.model_name_or_path meta-llama/Meta-Llama-3-8B --data.dataset Open-Orca/OpenOrca
--data.input_key question --data.output_key response --data.max_len 2048 --ds.packing_samples
--train.batch_size 256 --train.micro_batch_size 8 --train.max_epochs 1 --optim muon
--muon.lr 0.02 --muon.momentum 0.95 --adam.lr 5e-6 --adam.weight_decay 0.0
--lr_scheduler cosine_with_min_lr --lr_warmup_ratio 0.03 --min_lr_ratio 0.1 --max_norm 1.0
--ds.zero_stage 2 --ds.param_dtype bf16 --ds.attn_implementation flash_attention_2
--model.gradient_checkpointing_enable --ckpt.output_dir ./checkpoint/llama3-8b-sft-muon
"""
SEED_LORA = r"""
--model.model_name_or_path mistralai/Mixtral-8x7B-v0.1 --data.dataset Open-Orca/OpenOrca
--data.max_len 2048 --ds.packing_samples --train.batch_size 128 --train.micro_batch_size 1
--train.max_epochs 1 --adam.lr 5e-6 --ds.zero_stage 3 --ds.param_dtype bf16
--ds.attn_implementation flash_attention_2 --model.gradient_checkpointing_enable
--ds.lora.rank 64 --ds.lora.alpha 64 --ckpt.output_dir ./checkpoint/mixtral-sft-lora
"""
SEED_PREF = r"""
--model.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture
--data.dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku --data.apply_chat_template
--data.chosen_key chosen --data.rejected_key rejected --data.max_len 8192 --ds.packing_samples
--train.batch_size 256 --train.micro_batch_size 4 --train.max_epochs 1 --adam.lr 9e-6
--ds.zero_stage 3 --ds.param_dtype bf16 --ds.attn_implementation flash_attention_2
--model.gradient_checkpointing_enable --ckpt.output_dir ./checkpoint/x --ckpt.save_steps -1
--logger.logging_steps 1 --eval.steps -1 --logger.wandb.key TOKEN
"""
RM_EXTRA = ("--ds.value_head_prefix score --model.loss_type logexp --model.margin_loss_enable "
            "--model.compute_fp32_loss_enable")
DPO_EXTRA = ("--model.beta 0.1 --model.ipo_enable --model.label_smoothing 0.1 "
             "--model.nll_loss_coef 0.2 --ref.offload --min_lr_ratio 0.1")
SFT_EXTRA = ("--data.apply_chat_template --data.tokenizer_chat_template T --data.multiturn "
             "--model.pretrain_mode_enable --model.aux_loss_coef 0.01 --ds.load_in_4bit "
             "--ds.lora.rank 8 --ds.adam_offload")


def _argv(text: str) -> list[str]:
    return shlex.split(" ".join(text.split("\n")))


def test_seed_sft_example_parses():
    job = parse_config(SFTJobConfig, _argv(SEED_SFT))
    assert job.model.model_name_or_path == "meta-llama/Meta-Llama-3-8B"
    assert job.data.input_template == "User: {}\\nAssistant: "
    assert job.ds.packing_samples and job.model.gradient_checkpointing_enable
    assert (job.ds.zero_stage, job.ds.param_dtype, job.train.batch_size) == (2, "bf16", 256)
    assert job.adam.lr == 5e-6 and job.logger.wandb.key == "TOKEN" and job.eval.steps == -1


def test_seed_muon_and_lora_examples_parse():
    job = parse_config(SFTJobConfig, _argv(SEED_MUON))
    assert job.optim.optim == "muon" and job.muon.lr == 0.02 and job.optim.max_norm == 1.0
    assert job.optim.lr_scheduler == "cosine_with_min_lr" and job.optim.lr_warmup_ratio == 0.03
    job = parse_config(SFTJobConfig, _argv(SEED_LORA))
    assert job.ds.lora.rank == 64 and job.ds.lora.alpha == 64 and job.ds.zero_stage == 3


def test_seed_rm_and_dpo_flags_parse():
    rm = parse_config(RMJobConfig, _argv(SEED_PREF) + RM_EXTRA.split())
    assert rm.rm.loss_type == "logexp" and rm.rm.margin_loss_enable
    assert rm.rm.compute_fp32_loss_enable and rm.ds.value_head_prefix == "score"
    dpo = parse_config(DPOJobConfig, _argv(SEED_PREF) + DPO_EXTRA.split())
    assert dpo.dpo.beta == 0.1 and dpo.dpo.ipo_enable and dpo.ref.offload
    assert dpo.dpo.label_smoothing == 0.1 and dpo.dpo.nll_loss_coef == 0.2


def test_sft_specific_flags_parse():
    job = parse_config(SFTJobConfig, _argv(SEED_SFT) + SFT_EXTRA.split())
    assert job.data.multiturn and job.sft.pretrain_mode_enable and job.ds.load_in_4bit
    assert job.model.aux_loss_coef == 0.01 and job.ds.adam_offload


def test_launcher_local_rank_is_accepted():
    parse_config(SFTJobConfig, _argv(SEED_SFT) + ["--local_rank=1"])


@pytest.mark.parametrize("old,new", [("--pretrain", "--model.model_name_or_path"),
                                     ("--learning_rate", "--adam.lr"),
                                     ("--zero_stage", "--ds.zero_stage"),
                                     ("--lora_rank", "--ds.lora.rank")])
def test_old_flat_flags_name_the_new_flag(old, new, capsys):
    with pytest.raises(SystemExit):
        parse_config(SFTJobConfig, [old, "1"], renamed=RENAMED_FLAGS)
    assert f"{old} was removed; use {new}" in capsys.readouterr().err


@pytest.mark.parametrize("argv,flag", [
    (["--model.beta", "-1"], "--model.beta"),
    (["--ds.lora.rank", "-2"], "--ds.lora.rank"),
    (["--train.batch_size", "10", "--train.micro_batch_size", "4"], "--train.batch_size"),
    (["--optim", "muon", "--ds.adam_offload"], "--ds.adam_offload"),
    (["--model.label_smoothing", "0.7"], "--model.label_smoothing"),
    (["--ds.load_in_4bit"], "--ds.load_in_4bit"),
])
def test_validation_errors_name_flag_and_value(argv, flag, capsys):
    base = ["--model.model_name_or_path", "m", "--data.dataset", "d"]
    with pytest.raises(SystemExit):
        parse_config(DPOJobConfig, base + argv)
    assert flag in capsys.readouterr().err


def test_missing_required_flag():
    with pytest.raises(ConfigError, match="--model.model_name_or_path"):
        from_dict(SFTJobConfig, {"data.dataset": "d"})


def test_config_is_frozen_and_round_trips():
    job = from_dict(SFTJobConfig, {"model.model_name_or_path": "m", "data.dataset": "d",
                                   "ds.lora.rank": 4, "adam.betas": (0.9, 0.99)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.ds.zero_stage = 3  # type: ignore[misc]
    assert from_dict(SFTJobConfig, config_to_dict(job)) == job


def test_help_comes_from_field_docstrings():
    text = build_parser(DPOJobConfig).format_help()
    assert "--ds.zero_stage" in text and "ZeRO stage" in text
    assert "--model.beta" in text and "DPO temperature" in text
    assert "--ds.lora.rank" in text and "--logger.wandb.key" in text


def test_bool_flags_are_store_true():
    job = parse_config(SFTJobConfig, ["--model.model_name_or_path", "m", "--data.dataset", "d"])
    assert job.ds.packing_samples is False and job.model.gradient_checkpointing_enable is False
    assert DeepSpeedConfig().value_head_prefix == "score"
