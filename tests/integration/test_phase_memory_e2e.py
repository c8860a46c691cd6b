"""A synchronous GRPO run whose rollout and reference release their memory between phases
(--vllm.enable_sleep, --ref.enable_sleep) learns exactly what the same run learns without:
the same metrics in every iteration. The model ties its LM head, as SmolLM2 does.

Each run gets its own vLLM rollout service, started here with one compute thread. (Written
when a launched rollout fell back to HF generate on this model, which cannot release; since
2026-11-28 it runs vLLM too: tests/integration/test_rollout_threads_e2e.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quartet.launch.local import LocalCluster

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
SLEEP = ("--vllm.enable_sleep", "--ref.enable_sleep")


def grpo(out: Path, model: Path, prompts: Path, *extra: str) -> list[dict]:
    with LocalCluster(out / "rollout-logs", env={"OMP_NUM_THREADS": "1"}) as cluster:
        rollout = cluster.start("rollout", ["--model", str(model), "--backend", "vllm",
                                            "--max-model-len", "128", "--seed", "42",
                                            "--enforce-eager", "--enable-sleep"])
        cluster.wait_healthy(300)
        cmd = [sys.executable, "-m", "quartet.cli.main", "ppo",
               "--actor.model_name_or_path", str(model), "--data.dataset", str(prompts),
               "--vllm.address", rollout.address,
               "--reward.func", str(HERE / "rewards" / "digit_reward.py"),
               "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "4",
               "--rollout.max_new_tokens", "8", "--train.batch_size", "16",
               "--train.micro_batch_size", "8", "--train.num_iterations", "3",
               "--algo.advantage.estimator", "group_norm", "--algo.kl.init_coef", "0.05",
               "--algo.kl.use_loss", "--algo.kl.estimator", "k3",
               "--ckpt.output_dir", str(out), "--ds.param_dtype", "fp32",
               "--ds.zero_stage", "0", "--actor.learning_rate", "1e-3",
               "--lr_scheduler", "constant", *extra]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def learned(history: list[dict]) -> list[dict]:
    """What a run learned and sampled, without timings, transfer statistics and per-replica
    counters (keyed by the replica's address)."""
    return [{k: v for k, v in m.items() if not k.startswith(("time/", "sync/", "rollout/"))}
            for m in history]


def test_releasing_between_phases_changes_nothing_that_is_learned(tmp_path, tiny_data):
    from quartet.testing import tiny_model_dir

    model = tiny_model_dir(name="tiny-llama-tied", tie_word_embeddings=True)
    plain = grpo(tmp_path / "plain", model, tiny_data["prompts"])
    slept = grpo(tmp_path / "sleep", model, tiny_data["prompts"], *SLEEP)
    assert len(plain) == 3 and learned(slept) == learned(plain)
    assert plain[-1]["kl"] != 0.0  # the reference took part
    rollout_log = (tmp_path / "sleep" / "rollout-logs" / "rollout.log").read_text()
    assert "backend=vllm" in rollout_log
    assert rollout_log.count("released the generator's weights") == 3
    reference_log = (tmp_path / "sleep" / "logs" / "reference.log").read_text()
    assert reference_log.count("released the weights") == 3
