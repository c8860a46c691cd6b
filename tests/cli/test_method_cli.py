"""The method commands' flags: hierarchical flags parse, OpenRLHF's flat ones name their
replacement, and `quartet <command>` reaches each module."""

from __future__ import annotations

import importlib

import pytest

from quartet.cli.main import FORWARDED
from quartet.config.base import parse_config

COMMANDS = {"kto": "quartet.cli.train_kto", "kd": "quartet.cli.train_kd",
            "prm": "quartet.cli.train_prm", "batch_inference": "quartet.cli.batch_inference",
            "rs": "quartet.cli.rs", "iterative_dpo": "quartet.cli.iterative_dpo"}


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


def test_prm_flags_parse():
    from quartet.config.methods import PRMJobConfig

    job = parse_config(PRMJobConfig, [
        "--model.model_name_or_path", "m", "--data.dataset", "d.jsonl",
        "--model.placeholder_token", "ки", "--model.reward_tokens", "+", "-",
        "--data.label_key", "steps"])
    assert job.prm.reward_tokens == ("+", "-") and job.data.label_key == "steps"


def test_batch_inference_seed_style_flags_parse():
    """OpenRLHF's batch_inference names that stayed flat (--eval_task, --best_of_n,
    --post_processor, --output_path) next to the hierarchical ones."""
    from quartet.config.inference import BatchInferenceJobConfig

    job = parse_config(BatchInferenceJobConfig, [
        "--eval_task", "generate_vllm", "--model.model_name_or_path", "m",
        "--data.dataset", "p.jsonl", "--data.input_key", "prompt", "--best_of_n", "4",
        "--vllm.tensor_parallel_size", "2", "--rollout.temperature", "0.7",
        "--rollout.max_new_tokens", "128", "--reward.func", "r.py", "--post_processor", "rs",
        "--output_path", "out.jsonl"])
    assert (job.task.eval_task, job.task.best_of_n, job.task.post_processor) == (
        "generate_vllm", 4, "rs")
    assert job.vllm.tensor_parallel_size == 2 and job.rollout.temperature == 0.7
    rm = parse_config(BatchInferenceJobConfig, [
        "--eval_task", "rm", "--data.dataset", "g.jsonl", "--reward.model_name_or_path", "rm",
        "--post_processor", "csft", "--output_path", "o.jsonl"])
    assert rm.backend == "auto" and rm.task.post_processor == "csft"


@pytest.mark.parametrize("argv,message", [
    (["--eval_task", "rm", "--data.dataset", "d", "--output_path", "o"],
     "--reward.func: --eval_task rm needs a reward source"),
    (["--model.model_name_or_path", "m", "--data.dataset", "d", "--output_path", "o",
      "--post_processor", "rs"], "--post_processor rs needs a reward source"),
    (["--model.model_name_or_path", "m", "--data.dataset", "d"], "--output_path: is required"),
    (["--eval_task", "generate", "--vllm.backend", "vllm", "--model.model_name_or_path", "m",
      "--data.dataset", "d", "--output_path", "o"], "vllm contradicts --eval_task generate"),
])
def test_batch_inference_rejects_incomplete_jobs(argv, message, capsys):
    from quartet.cli.batch_inference import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_rounds_flags_parse():
    from quartet.config.inference import IterativeDPOJobConfig, RSJobConfig

    common = ["--model.model_name_or_path", "m", "--data.dataset", "p.jsonl",
              "--reward.address", "127.0.0.1:1", "--num_rounds", "3", "--best_of_n", "8",
              "--vllm.address", "127.0.0.1:2", "--eval.dataset", "e.jsonl"]
    rs = parse_config(RSJobConfig, common)
    assert rs.rounds.num_rounds == 3 and rs.vllm.address == ("127.0.0.1:2",)
    idpo = parse_config(IterativeDPOJobConfig, [*common, "--model.beta", "0.2"])
    assert idpo.dpo.beta == 0.2


@pytest.mark.parametrize("module,flat,new", [
    ("train_kto", "--vanilla_loss", "--model.vanilla_loss"),
    ("train_kto", "--label_key", "--data.label_key"),
    ("train_kto", "--prompt_key", "--data.prompt_key"),
    ("train_kto", "--desirable_loss_weight", "--model.desirable_loss_weight"),
    ("train_kd", "--kd_coef", "--model.kd_coef"),
    ("train_kd", "--teacher_model", "--teacher.model_name_or_path"),
    ("train_prm", "--placeholder_token", "--model.placeholder_token"),
    ("batch_inference", "--tp_size", "--vllm.tensor_parallel_size"),
    ("batch_inference", "--temperature", "--rollout.temperature"),
    ("batch_inference", "--pretrain", "--model.model_name_or_path"),
    ("rs", "--max_new_tokens", "--rollout.max_new_tokens"),
    ("iterative_dpo", "--beta", "--model.beta"),
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


@pytest.mark.parametrize("module,argv,flag", [
    ("batch_inference", ["--model.model_name_or_path", "m", "--data.dataset", "d",
                         "--output_path", "o", "--data.chosen_key", "c"], "--data.chosen_key"),
    ("rs", ["--model.model_name_or_path", "m", "--data.dataset", "d", "--reward.func", "r.py",
            "--data.output_key", "a"], "--data.output_key"),
    ("train_prm", ["--model.model_name_or_path", "m", "--data.dataset", "d",
                   "--data.input_template", "Q: {}"], "--data.input_template"),
])
def test_unused_data_flags_are_rejected(module, argv, flag, capsys):
    main = importlib.import_module(f"quartet.cli.{module}").main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"{flag}: is not used by" in capsys.readouterr().err
