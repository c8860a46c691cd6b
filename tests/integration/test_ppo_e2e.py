"""PPO across six real services on the tiny model: learning, KL, versions, checkpoint.

One `quartet ppo` run (embedded mode: actor, critic, reference, reward, rollout processes
plus this coordinator) is shared by the assertions below; it takes about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quartet.launch.threads import available_cores

HERE = Path(__file__).resolve().parent
ITERATIONS = 12


def run_ppo(out: Path, model: Path, prompts: Path, *extra: str,
            env: dict[str, str] | None = None) -> list[dict]:
    cmd = [
        sys.executable, "-m", "quartet.cli.main", "ppo",
        "--actor.model_name_or_path", str(model), "--data.dataset", str(prompts),
        "--rollout.batch_size", "32", "--rollout.max_new_tokens", "8",
        "--train.batch_size", "16", "--train.micro_batch_size", "16",
        "--train.num_iterations", str(ITERATIONS), "--ckpt.output_dir", str(out),
        "--lr_scheduler", "constant", "--ds.param_dtype", "fp32", "--ds.zero_stage", "0",
        "--actor.learning_rate", "5e-3", "--critic.learning_rate", "5e-3",
        "--actor.freezing_steps", "2", *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_grpo(out: Path, model: Path, prompts: Path, *extra: str) -> list[dict]:
    """A short critic-free run on the digit reward: group_norm, 4 samples per prompt, no KL."""
    cmd = [
        sys.executable, "-m", "quartet.cli.main", "ppo",
        "--actor.model_name_or_path", str(model), "--data.dataset", str(prompts),
        "--reward.func", str(HERE / "rewards" / "digit_reward.py"),
        "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "4",
        "--rollout.max_new_tokens", "8", "--train.micro_batch_size", "8",
        "--algo.advantage.estimator", "group_norm", "--algo.kl.init_coef", "0",
        "--ckpt.output_dir", str(out), "--ds.param_dtype", "fp32", "--ds.zero_stage", "0",
        "--actor.learning_rate", "1e-3", *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def gae_run(tmp_path_factory, tiny_model_path, tiny_data):
    """With one OpenMP and one MKL thread in the user's environment (see
    test_the_launched_rollout_generates_with_vllm_on_its_planned_threads)."""
    out = tmp_path_factory.mktemp("ppo-gae")
    history = run_ppo(out, tiny_model_path, tiny_data["prompts"],
                      "--reward.func", str(HERE / "rewards" / "digit_reward.py"),
                      "--algo.kl.init_coef", "0.01", "--vllm.backend", "vllm",
                      env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return out, history


def test_reward_rises_with_bounded_kl(gae_run):
    _, history = gae_run
    assert len(history) == ITERATIONS
    first = sum(m["reward"] for m in history[:3]) / 3
    last = sum(m["reward"] for m in history[-3:]) / 3
    # a random policy scores ~0.1 on this reward; measured ~0.4 after 12 iterations
    assert last > first + 0.1, [round(m["reward"], 3) for m in history]
    assert all(abs(m["kl"]) < 30 for m in history), [m["kl"] for m in history]
    for key in ("critic/value_loss", "actor/policy_loss", "actor/clip_fraction",
                "actor/entropy", "return", "time/generate", "time/train", "time/sync"):
        assert key in history[-1], key
    # one DeepSpeed rank each (multi-rank runs: tests/integration/test_data_parallel.py)
    assert history[-1]["actor/world_size"] == history[-1]["critic/world_size"] == 1.0


def test_rollout_serves_each_new_policy_version(gae_run):
    out, history = gae_run
    for i, m in enumerate(history):
        # iteration i generates with the weights synced at the end of iteration i-1
        assert m["rollout_weight_version"] == i
        assert m["policy_version"] == i + 1
        # the sampler's log-probs equal the actor's: the synced weights are the trained ones
        assert m["rollout_logprob_diff"] < 1e-3, m["rollout_logprob_diff"]
    # ... and they travelled through the /dev/shm ring (--vllm.sync_shared_memory, default)
    assert "(shared memory)" in (out / "logs" / "actor.log").read_text()


def test_value_loss_falls_and_checkpoint_loads(gae_run):
    out, history = gae_run
    # measured 0.061 -> 0.012 with the value head initialised at std 1/(hidden+1)
    assert history[-1]["critic/value_loss"] < history[0]["critic/value_loss"] / 2
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "hf" / "final")
    assert model.config.num_hidden_layers == 2


def test_the_launched_rollout_generates_with_vllm_on_its_planned_threads(gae_run):
    """`quartet ppo` launches its rollout service with vLLM on the tiny model and its planned
    threads, even when the user's shell sets MKL_NUM_THREADS=1 (tests/conftest.py does too).
    Torch takes its thread count from MKL_NUM_THREADS over OMP_NUM_THREADS, OpenMP's
    default: with MKL_NUM_THREADS=1, vLLM's CPU attention planned its step for 2 threads and
    ran it on 1 ("cpu_attn_impl.hpp Check failed: thread_num (2 vs. 1)"), and `--vllm.backend
    auto` fell back to HF generate."""
    out, _ = gae_run
    log = (out / "logs" / "rollout0.log").read_text()
    assert "backend=vllm" in log, log[-3000:]
    assert "falling back" not in log.lower()
    if available_cores() > 1:  # the plan gives the generating rollout every core
        assert f"leaving Torch threads at {available_cores()}" in log, log[-3000:]


def test_ppo_with_a_reward_model_trained_by_train_rm(tmp_path, tiny_model_path, tiny_data):
    rm_dir = tmp_path / "rm"
    train = subprocess.run([
        sys.executable, "-m", "quartet.cli.train_rm",
        "--model.model_name_or_path", str(tiny_model_path),
        "--data.dataset", str(tiny_data["preference"]), "--data.prompt_key", "prompt",
        "--train.batch_size", "8", "--train.micro_batch_size", "4", "--train.max_epochs", "2",
        "--adam.lr", "1e-3", "--ds.zero_stage", "0", "--ds.param_dtype", "fp32",
        "--data.max_len", "64", "--ckpt.output_dir", str(rm_dir),
    ], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    history = run_ppo(tmp_path / "ppo", tiny_model_path, tiny_data["prompts"],
                      "--reward.model_name_or_path", str(rm_dir),
                      "--reward.num_gpus_per_node", "2",  # 2 ranks (CPU slots) on this host
                      "--critic.learning_rate", "1e-3", "--algo.kl.init_coef", "0.01")
    placement = json.loads((tmp_path / "ppo" / "placement.json").read_text())["services"]
    assert placement["reward0"]["world_size"] == 2  # the local launcher started both
    first = sum(m["reward"] for m in history[:3]) / 3
    last = sum(m["reward"] for m in history[-3:]) / 3
    # the critic starts from the RM (value head included); the RM's score scale is its own:
    # measured 0.14 -> 0.31 (mean of the first vs last three iterations)
    assert last > first + 0.1, [round(m["reward"], 3) for m in history]
    assert all(abs(m["kl"]) < 30 for m in history)


def test_bad_flags_fail_fast_with_the_flag_named(tmp_path, tiny_model_path, tiny_data):
    base = [sys.executable, "-m", "quartet.cli.main", "ppo",
            "--actor.model_name_or_path", str(tiny_model_path),
            "--data.dataset", str(tiny_data["prompts"])]
    no_reward = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert no_reward.returncode == 2 and "--reward.model_name_or_path" in no_reward.stderr
    grpo_n1 = subprocess.run(base + ["--reward.func", "x.py", "--algo.advantage.estimator",
                                     "rloo"], capture_output=True, text=True, timeout=120)
    assert grpo_n1.returncode == 2 and "--rollout.n_samples_per_prompt" in grpo_n1.stderr
    missing_key = subprocess.run(
        base + ["--reward.func", "x.py", "--data.input_key", "question",
                "--ckpt.output_dir", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120)
    assert missing_key.returncode == 1
    assert "'question' is not a key" in missing_key.stderr and "prompt" in missing_key.stderr


def test_async_grpo_with_dynamic_filtering_and_is_correction(tmp_path, tiny_model_path,
                                                             tiny_data):
    """Generation of iteration k+1 overlaps training of k (one version stale), truncated IS
    corrects for it, and groups whose samples all score the same are filtered out."""
    history = run_grpo(tmp_path / "async", tiny_model_path, tiny_data["prompts"],
                       "--train.batch_size", "8", "--train.num_iterations", "4",
                       "--train.async_enable", "--algo.advantage.is_correction_level", "token",
                       "--algo.advantage.is_correction_mode", "clip",
                       "--algo.advantage.is_correction_threshold", "2.0",
                       "--algo.dynamic_filtering_enable",
                       "--algo.dynamic_filtering_reward_range", "0", "1")
    trained = [m for m in history if not m.get("skipped")]
    assert trained, history
    # iteration 1 samples come from v0 synchronously; later ones were generated one
    # version behind while the previous batch trained
    assert [m["staleness"] for m in history[1:]] == [1.0] * (len(history) - 1)
    assert all(0 < m["filter/kept_fraction"] <= 1 for m in history)
    # the sampler's policy lags the actor's by one update, so their log-probs now differ
    assert max(m["rollout_logprob_diff"] for m in trained[1:]) > 1e-3


def test_flash_reinforce_with_trust_region_eval_and_loggers(tmp_path, tiny_model_path,
                                                           tiny_data, monkeypatch):
    """FlashREINFORCE (one sample per prompt, batch-mean baseline) with OpenRLHF's sequence
    trust region (binary KL gate), PPO-ptx, a held-out greedy evaluation every 2 iterations,
    and the metrics in TensorBoard and an offline W&B run (no network)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "flash"
    history = run_grpo(out, tiny_model_path, tiny_data["prompts"],
                       "--algo.advantage.estimator", "flash_reinforce",
                       "--rollout.n_samples_per_prompt", "1", "--train.num_iterations", "3",
                       "--algo.advantage.is_correction_level", "seq",
                       "--algo.advantage.is_correction_gating", "binary_kl",
                       "--algo.advantage.is_correction_threshold", "0.5",
                       "--algo.loss_reduction", "sequence_mean",
                       "--eval.dataset", str(tiny_data["prompts"]), "--eval.split", "train",
                       "--eval.steps", "2", "--eval.max_samples", "6",
                       "--logger.wandb.key", "offline-key", "--logger.wandb.project", "q",
                       "--actor.ptx_coef", "0.1", "--data.pretrain_dataset",
                       str(tiny_data["sft"]), "--data.pretrain_key", "question")
    assert len(history) == 3
    assert all(m["actor/ptx_loss"] > 0 for m in history)  # PPO-ptx rode along
    for m in history:
        assert 0.0 <= m["actor/is_filter_ratio"] <= 1.0
        assert abs(m["actor/vllm_kl"]) < 1.0  # sampler and actor hold the same weights
    evals = [json.loads(x) for x in (out / "eval_metrics.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in evals] == [1, 2]  # after iteration 2 and after the last
    assert all(e["eval/num_prompts"] == 6 and 0.0 <= e["eval/reward"] <= 1.0 for e in evals)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_critic_free_run_with_an_http_reward_server_and_streamed_weight_sync(
        tmp_path, tiny_model_path, tiny_data):
    """The stdlib-only OpenRLHF-style verifier from examples/ plugs in with one flag. RLOO
    with no KL starts neither critic nor reference; weights travel over the gRPC fallback
    (actor.StreamWeights relayed into rollout.PushWeights)."""
    import time

    root = HERE.parents[1]
    port_file = tmp_path / "verifier.port"
    server = subprocess.Popen([sys.executable, str(root / "examples" / "reward_servers" /
                                                   "math_verifier_http.py"),
                               "--port", "0", "--port-file", str(port_file)])
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.1)
        url = f"http://127.0.0.1:{int(port_file.read_text())}/get_reward"
        out = tmp_path / "http"
        result = subprocess.run([
            sys.executable, "-m", "quartet.cli.main", "ppo",
            "--actor.model_name_or_path", str(tiny_model_path),
            "--data.dataset", str(tiny_data["prompts"]), "--data.label_key", "label",
            "--reward.remote_url", url, "--rollout.batch_size", "4",
            "--rollout.n_samples_per_prompt", "2", "--rollout.max_new_tokens", "4",
            # two mini-batches: the actor scores the samples itself (one-pass PPO keeps the
            # sampler's log-probs), so rollout_logprob_diff compares it with the sampler
            "--train.batch_size", "4", "--train.micro_batch_size", "4",
            "--train.num_iterations", "3", "--algo.advantage.estimator", "rloo",
            "--algo.kl.init_coef", "0", "--ckpt.output_dir", str(out),
            "--ds.param_dtype", "fp32", "--ds.zero_stage", "0", "--vllm.sync_backend", "grpc",
        ], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(history) == 3
        # a random tiny policy rarely states the right sum: rewards are 0/1 and mostly 0
        assert all(0.0 <= m["reward"] <= 1.0 for m in history)
        # the verifier's own extra log came back through the proxy
        assert all("reward0/answer_found" in m for m in history)
        started = {p.stem for p in (out / "logs").glob("*.log")}
        assert started == {"actor", "reward0", "rollout0"}, started
        assert [m["rollout_weight_version"] for m in history] == [0, 1, 2]
        assert all(m["rollout_logprob_diff"] < 1e-3 for m in history)
        assert "critic/value_loss" not in history[-1]
    finally:
        server.terminate()
        server.wait(timeout=30)
