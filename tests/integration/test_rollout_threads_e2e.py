"""The rollout service `quartet ppo` launches runs vLLM on the tiny model with its planned
threads, even when the user's shell sets MKL_NUM_THREADS=1 (tests/conftest.py does too).

Torch takes its thread count from MKL_NUM_THREADS over OMP_NUM_THREADS, OpenMP's default
from OMP_NUM_THREADS only: with the plan's OMP_NUM_THREADS=2 and an inherited
MKL_NUM_THREADS=1, vLLM's CPU attention planned its step for 2 threads and ran it on 1
("cpu_attn_impl.hpp Check failed: thread_num (2 vs. 1)"), and `--vllm.backend auto` fell
back to HF generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from quartet.launch.threads import available_cores

HERE = Path(__file__).resolve().parent


def test_launched_rollout_generates_with_vllm_on_its_planned_threads(tmp_path, tiny_model_path,
                                                                       tiny_data):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "quartet.cli.main", "ppo",
           "--actor.model_name_or_path", str(tiny_model_path),
           "--data.dataset", str(tiny_data["prompts"]),
           "--reward.func", str(HERE / "rewards" / "digit_reward.py"),
           "--rollout.batch_size", "8", "--rollout.max_new_tokens", "8",
           "--train.batch_size", "8", "--train.micro_batch_size", "8",
           "--train.num_iterations", "2", "--algo.kl.init_coef", "0.01",
           "--ds.param_dtype", "fp32", "--ds.zero_stage", "0",
           "--ckpt.output_dir", str(out), "--vllm.backend", "vllm"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2
    log = (out / "logs" / "rollout0.log").read_text()
    assert "backend=vllm" in log, log[-3000:]
    assert "falling back" not in log.lower()
    if available_cores() > 1:  # the plan gives the generating rollout every core
        assert f"leaving Torch threads at {available_cores()}" in log, log[-3000:]
