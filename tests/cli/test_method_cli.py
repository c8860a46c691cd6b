"""The method commands' flags: hierarchical flags parse, OpenRLHF's flat ones name their
replacement, and `quartet <command>` reaches each module."""

from __future__ import annotations

import importlib

import pytest

from quartet.cli.main import FORWARDED
from quartet.config.base import parse_config

COMMANDS = {"kto": "quartet.cli.train_kto", "kd": "quartet.cli.train_kd"}


@pytest.mark.parametrize("command,module", sorted(COMMANDS.items()))
def test_quartet_subcommand_forwards(command, module):
    assert FORWARDED[command] == module
    assert callable(importlib.import_module(module).main)


def test_kto_flags_parse():
    from quartet.config.methods import KTOJobConfig

    job = parse_config(KTOJobConfig, [
        "--model.model_name_or_path", "m", "--data.dataset", "d.jsonl",
        "--data.prompt_key", "q", "--data.output_key", "a", "--data.label_key", "ok",
        "--model.vanilla_loss", "--model.desirable_loss_weight", "1.33",
        "--model.undesirable_loss_weight", "1", "--model.beta", "0.05",
        "--train.micro_batch_size", "2"])
    assert (job.data.prompt_key, job.data.output_key, job.data.label_key) == ("q", "a", "ok")
    assert job.kto.vanilla_loss and job.kto.desirable_loss_weight == 1.33


def test_kd_flags_parse():
    from quartet.config.methods import KDJobConfig

    job = parse_config(KDJobConfig, [
        "--model.model_name_or_path", "s", "--teacher.model_name_or_path", "t",
        "--data.dataset", "d.jsonl", "--model.kd_coef", "0.4", "--teacher.offload"])
    assert job.kd.kd_coef == 0.4 and job.teacher.offload


@pytest.mark.parametrize("module,flat,new", [
    ("train_kto", "--vanilla_loss", "--model.vanilla_loss"),
    ("train_kto", "--label_key", "--data.label_key"),
    ("train_kto", "--desirable_loss_weight", "--model.desirable_loss_weight"),
    ("train_kd", "--kd_coef", "--model.kd_coef"),
    ("train_kd", "--teacher_model", "--teacher.model_name_or_path"),
])
def test_flat_flags_name_replacement(module, flat, new, capsys):
    main = importlib.import_module(f"quartet.cli.{module}").main
    with pytest.raises(SystemExit) as exc:
        main([flat, "x"])
    assert exc.value.code == 2
    assert f"{flat} was removed; use {new}" in capsys.readouterr().err


def test_kd_requires_teacher(capsys):
    from quartet.cli.train_kd import main

    with pytest.raises(SystemExit):
        main(["--model.model_name_or_path", "s", "--data.dataset", "d.jsonl"])
    assert "--teacher.model_name_or_path: is required" in capsys.readouterr().err
