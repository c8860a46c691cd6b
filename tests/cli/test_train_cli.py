"""The train_* CLIs as real processes: torchrun x2, the deepspeed launcher, one plain process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quartet.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    return env


def _flags(algo: str, model: Path, tiny_data, separable, out: Path, stage: int) -> list[str]:
    flags = ["--model.model_name_or_path", str(model), "--data.max_len", "32",
             "--train.batch_size", "8", "--train.micro_batch_size", "2",
             "--ds.zero_stage", str(stage), "--ds.param_dtype", "fp32",
             "--ckpt.output_dir", str(out), "--logger.tensorboard_dir", "none",
             "--no-logger.progress_bar_enable", "--lr_warmup_ratio", "0"]
    if algo == "sft":
        return flags + ["--data.dataset", str(tiny_data["sft"]), "--data.input_key", "question",
                        "--data.output_key", "response", "--adam.lr", "3e-3"]
    return flags + ["--data.dataset", str(separable[0]), "--data.input_key", "prompt",
                    "--data.max_samples", "64", "--adam.lr", "2e-3"]


def _run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    from tests.trainers.synthetic import write_separable_preferences

    return write_separable_preferences(tmp_path_factory.mktemp("separable"))


# Every trainer and every ZeRO stage runs on two processes: sft/3, dpo/0, rm/2 (under the
# deepspeed launcher, below), and dpo/3, whose frozen reference is partitioned over both
# ranks. All nine combinations also run on one process in tests/trainers (in-process).
# QUARTET_TRAIN_GRID=1 runs the whole 3x3 grid on two processes (5 more runs, ~40 s): each
# of them repeats what a run above and an in-process one check.
_DEFAULT = {("sft", 3), ("dpo", 0), ("dpo", 3)}
_GRID = [(a, s) for a in ("sft", "rm", "dpo") for s in (0, 2, 3)
         if os.environ.get("QUARTET_TRAIN_GRID") == "1" or (a, s) in _DEFAULT]


@pytest.mark.parametrize("algo,stage", _GRID)
def test_torchrun_two_processes(algo, stage, tmp_path, tiny_model_path, tiny_data, separable):
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", f"quartet.cli.train_{algo}",
           *_flags(algo, tiny_model_path, tiny_data, separable, tmp_path, stage)]
    _run(cmd)
    losses = _losses(tmp_path)
    assert len(losses) == 8
    assert losses[-1] < 0.75 * losses[0], losses
    assert (tmp_path / "model.safetensors").exists()


def test_deepspeed_launcher_two_processes(tmp_path, tiny_model_path, tiny_data, separable):
    port = free_port()
    _run([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(port),
          "--module", "quartet.cli.train_rm",
          *_flags("rm", tiny_model_path, tiny_data, separable, tmp_path, 2)])
    losses = _losses(tmp_path)
    assert len(losses) == 8
    assert losses[-1] < 0.75 * losses[0]
    # DeepSpeed's same-host CPU allreduce makes a ~66 MB /dev/shm file per rank and never
    # removes it; init_distributed unlinks them once every rank has mapped them.
    left = sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    assert not left, f"shared-memory files left behind: {left}"


@pytest.mark.parametrize("module", ["train_sft", "train_rm", "train_dpo"])
def test_old_flag_names_new_one(module, capsys):
    import importlib

    main = importlib.import_module(f"quartet.cli.{module}").main
    with pytest.raises(SystemExit) as exc:
        main(["--pretrain", "m", "--learning_rate", "1e-5"])
    assert exc.value.code == 2
    assert "--pretrain was removed; use --model.model_name_or_path" in capsys.readouterr().err


def test_plain_process_lora_sft_then_combiner(tmp_path, tiny_model_path, tiny_data, separable):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    # One plain process, no launcher: the CLI sets up its own world of one.
    _run([sys.executable, "-m", "quartet.cli.train_sft",
          *_flags("sft", tiny_model_path, tiny_data, separable, out, 2),
          "--ds.lora.rank", "8", "--ds.lora.alpha", "16", "--adam.lr", "1e-2"])
    losses = _losses(out)
    assert losses[-1] < 0.75 * losses[0]
    assert (out / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists()
    merged = tmp_path / "merged"
    _run([sys.executable, "-m", "quartet.cli.lora_combiner", "--model_path",
          str(tiny_model_path), "--lora_path", str(out), "--output_path", str(merged)])
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_path))
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    full = AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    ids = torch.tensor([[5, 40, 41, 42, 43]])
    with torch.no_grad():
        a, b = peft_model(input_ids=ids).logits, full(input_ids=ids).logits
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_path)).eval()
    with torch.no_grad():
        c = plain(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(b, c, atol=1e-3)  # the adapter changed something
