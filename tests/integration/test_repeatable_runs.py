"""Run after run against the same pre-started services (issue 11, item 5), with a token.

An actor and a rollout are started once (cluster mode, token required); two `quartet ppo`
runs drive them one after the other: each run's versions start again at 1, and both
complete. A third run asking for a different learning rate is refused before training,
naming the field and the service flag.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quartet.launch.local import LocalCluster
from quartet.security import TOKEN_ENV, write_token

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


def quartet_ppo(out: Path, model: Path, prompts: Path, actor: str, rollout: str,
                token: Path, lr: str = "1e-3") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "quartet.cli.main", "ppo", "--auth-token-file", str(token),
           "--actor.model_name_or_path", str(model), "--actor.address", actor,
           "--vllm.address", rollout, "--data.dataset", str(prompts),
           "--reward.func", str(HERE / "rewards" / "digit_reward.py"),
           "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "2",
           "--rollout.max_new_tokens", "4", "--train.batch_size", "8",
           "--train.micro_batch_size", "8", "--train.num_iterations", "2",
           "--algo.advantage.estimator", "group_norm", "--algo.kl.init_coef", "0",
           "--ckpt.output_dir", str(out), "--ds.param_dtype", "fp32", "--ds.zero_stage", "0",
           "--actor.learning_rate", lr]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_two_runs_on_the_same_services_and_a_mismatched_lr(tmp_path, tiny_model_path,
                                                             tiny_data):
    token = write_token(tmp_path / "token")
    with LocalCluster(tmp_path / "logs", env={TOKEN_ENV: str(token),
                                              "OMP_NUM_THREADS": "1"}) as cluster:
        actor = cluster.start("actor", [
            "--save-root", str(tmp_path), "--model.model_name_or_path", str(tiny_model_path),
            "--ds.zero_stage", "0", "--ds.param_dtype", "fp32", "--adam.lr", "1e-3",
            "--train.batch_size", "8", "--train.micro_batch_size", "8"])
        rollout = cluster.start("rollout", ["--model", str(tiny_model_path), "--backend",
                                            "hf", "--max-model-len", "128"])
        cluster.wait_healthy(300)
        for run in ("run1", "run2"):
            result = quartet_ppo(tmp_path / run, tiny_model_path, tiny_data["prompts"],
                                 actor.address, rollout.address, token)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            rows = [json.loads(x) for x in
                    (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            assert [m["policy_version"] for m in rows] == [1, 2], run
            assert [m["rollout_weight_version"] for m in rows] == [0, 1], run
        refused = quartet_ppo(tmp_path / "run3", tiny_model_path, tiny_data["prompts"],
                              actor.address, rollout.address, token, lr="2e-3")
        assert refused.returncode == 1
        assert "train.learning_rate" in refused.stderr and "--adam.lr" in refused.stderr
        assert not (tmp_path / "run3" / "metrics.jsonl").exists()
        log = (tmp_path / "logs" / "actor.log").read_text()
        assert token.read_text().strip() not in log  # the secret never reaches a log
