"""The commands as real processes: `quartet rs` against a running rollout service (weights
pushed to it after each round), and `batch_inference --eval_task generate_vllm` with an
in-process vLLM engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quartet.launch.local import LocalCluster
from tests.methods.conftest import KEYWORD_REWARD, ROOT

COMMON = ["--ds.zero_stage", "0", "--ds.param_dtype", "fp32", "--data.max_len", "48",
          "--lr_warmup_ratio", "0", "--logger.tensorboard_dir", "none",
          "--no-logger.progress_bar_enable"]


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run([sys.executable, "-m", "quartet.cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_rs_through_the_rollout_service(tmp_path, warm_policy, words):
    from quartet.clients.rollout import GrpcRolloutClient

    with LocalCluster(tmp_path / "logs") as cluster:
        cluster.start("rollout", ["--model", str(warm_policy), "--backend", "hf",
                                  "--dtype", "float32"])
        cluster.wait_healthy(120)
        address = cluster.services["rollout"].address
        proc = _run(["rs", "--model.model_name_or_path", str(warm_policy),
                     "--vllm.address", address, "--data.dataset", str(words["word_prompts"]),
                     "--data.input_key", "prompt", "--eval.dataset",
                     str(words["word_prompts_eval"]), "--num_rounds", "1", "--best_of_n", "8",
                     "--rollout.max_new_tokens", "8", "--reward.func", str(KEYWORD_REWARD),
                     "--train.batch_size", "8", "--train.micro_batch_size", "8",
                     "--adam.lr", "1e-3", "--ckpt.output_dir", str(tmp_path / "rs"), *COMMON])
        with GrpcRolloutClient(address) as client:
            assert client.info().weight_version == 1  # round 1's weights were pushed
    rounds = [json.loads(line) for line in (tmp_path / "rs" / "rounds.jsonl").read_text()
              .splitlines()]
    print(proc.stdout.strip())
    assert rounds[1]["eval_greedy_reward"] > rounds[0]["eval_greedy_reward"] + 0.5, rounds


def test_batch_inference_generate_vllm_in_process(tmp_path, warm_policy, words):
    pytest.importorskip("vllm")
    out = tmp_path / "best.jsonl"
    proc = _run(["batch_inference", "--eval_task", "generate_vllm",
                 "--model.model_name_or_path", str(warm_policy), "--vllm.max_model_len", "128",
                 "--vllm.tensor_parallel_size", "1", "--data.dataset", str(words["word_prompts"]),
                 "--data.input_key", "prompt", "--best_of_n", "4", "--rollout.temperature", "1.0",
                 "--rollout.max_new_tokens", "8", "--reward.func", str(KEYWORD_REWARD),
                 "--post_processor", "rs", "--output_path", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 48 and all("reward" in r for r in rows)
    assert "wrote 48 rows" in proc.stdout


def test_prm_served_as_reward_source_returns_step_scores(world, tmp_path, tiny_model_path):
    """train_prm → `quartet serve reward --prm-model` → `batch_inference --eval_task rm`
    through the service: every row gets one score per step."""
    from quartet.config.methods import PRMJobConfig
    from quartet.testing.words import write_prm_datasets
    from quartet.trainers.prm_trainer import PRMTrainer
    from tests.trainers.conftest import make_job

    placeholder = "<|system|>"
    data = write_prm_datasets(tmp_path / "data", placeholder)
    PRMTrainer(make_job(PRMJobConfig, tmp_path / "prm", **{
        "model.model_name_or_path": str(tiny_model_path), "data.dataset": str(data["prm_train"]),
        "model.placeholder_token": placeholder, "data.max_len": 48, "train.batch_size": 16,
        "train.micro_batch_size": 8, "train.max_epochs": 3, "adam.lr": 2e-3}), world).fit()
    p = f" {placeholder}"
    scored = tmp_path / "solutions.jsonl"
    scored.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "the cat?", "response": f" good yes{p} blue day{p}"},
        {"prompt": "the cat?", "response": f" good yes{p} bad cat{p} blue day{p}"}]))
    with LocalCluster(tmp_path / "logs") as cluster:
        cluster.start("reward", ["--prm-model", str(tmp_path / "prm")])
        cluster.wait_healthy(120)
        out = tmp_path / "scored.jsonl"
        _run(["batch_inference", "--eval_task", "rm", "--data.dataset", str(scored),
              "--data.input_key", "prompt", "--data.output_key", "response",
              "--reward.address", cluster.services["reward"].address, "--output_path", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["step_scores"]) for r in rows] == [2, 3]
    assert rows[0]["reward"] > rows[1]["reward"] + 0.3, rows
    assert rows[1]["step_scores"][1] == pytest.approx(rows[1]["reward"], abs=1e-6)
