"""The Ray launcher restarts a role process killed with SIGKILL, as the local launcher does
(tests/integration/test_ppo_faults.py): the service comes back in the same Ray actor on the
same port, gets the current weights, the interrupted phase is re-run, and the run finishes
every iteration with every replica on every update. A SIGTERM to a run under Ray stops it
the same graceful way as under the local launcher (Ray's own handler, put in place by
`ray.init`, used to abort the driver instead)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from quartet.launch.ray_launcher import RAY_ENV
from quartet.testing.commands import quartet_ppo_command
from quartet.testing.faults import alive, descendants, kill, read_metrics, wait_for

HERE = Path(__file__).resolve().parent
ITERATIONS = 8  # an iteration of this job takes ~0.5 s; the kill lands after the second

pytestmark = pytest.mark.slow


def _rank0_pid(out: Path, service: str) -> int:
    placement = json.loads((out / "placement.json").read_text())
    return int(placement["services"][service]["ranks"][0]["pid"])


def ray_ppo_command(out: Path, model: Path, prompts: Path, *extra: str) -> list[str]:
    """The job under the Ray launcher; later flags in `extra` override the defaults."""
    return quartet_ppo_command(
        model, prompts, HERE / "rewards" / "digit_reward.py",
        "--algo.advantage.estimator", "group_norm", "--algo.kl.init_coef", "0.0",
        "--rollout.n_samples_per_prompt", "2", "--vllm.backend", "hf",
        "--rollout.batch_size", "4", "--rollout.max_new_tokens", "4",
        "--train.batch_size", "8", "--train.micro_batch_size", "8",
        "--train.num_iterations", str(ITERATIONS), "--ckpt.output_dir", str(out),
        "--ds.param_dtype", "fp32", "--ds.zero_stage", "0", *extra, launcher="ray",
    )


@contextmanager
def ppo_process(cmd: list[str], log_path: Path) -> Iterator[subprocess.Popen]:
    """`cmd` running with its output in `log_path`; killed if the test leaves it running."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **RAY_ENV})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill(proc.pid)
            proc.wait(60)


@pytest.mark.parametrize("service", ["rollout0", "actor"])
def test_a_sigkilled_role_under_ray_is_restarted_and_the_run_finishes(
        service, tmp_path, tiny_model_path, tiny_data):
    out = tmp_path / "run"
    cmd = ray_ppo_command(out, tiny_model_path, tiny_data["prompts"])
    with ppo_process(cmd, tmp_path / "ppo.out") as proc:
        wait_for(lambda: len(read_metrics(out)) >= 2, 600, "iteration 2", poll_s=0.02)
        victim = _rank0_pid(out, service)
        kill(victim)
        at_kill = len(read_metrics(out))
        code = proc.wait(600)
    text = (tmp_path / "ppo.out").read_text()
    assert code == 0, text[-4000:]
    assert at_kill <= ITERATIONS - 3, f"killed after {at_kill} rows: not mid-run"
    assert not alive(victim)
    assert f"{service} died" in text and "restart 1 of" in text, text[-4000:]
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    # the restarted replica was brought to the current weights before it served again
    assert [r["rollout_weight_version"] for r in rows] == list(range(ITERATIONS))


def test_sigterm_under_ray_finishes_the_iteration_saves_and_stops_everything(
        tmp_path, tiny_model_path, tiny_data):
    out = tmp_path / "run"
    cmd = ray_ppo_command(out, tiny_model_path, tiny_data["prompts"],
                          "--train.num_iterations", "50", "--ckpt.save_steps", "1")
    with ppo_process(cmd, tmp_path / "ppo.out") as proc:
        wait_for(lambda: len(read_metrics(out)) >= 2, 600, "iteration 2", poll_s=0.02)
        children = descendants(proc.pid)  # the local Ray head, its workers, the roles
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    text = (tmp_path / "ppo.out").read_text()
    assert code == 0, text[-4000:]
    assert "finishing the current iteration" in text, text[-4000:]
    done = len(read_metrics(out))
    assert 2 <= done < 50
    assert (out / "ds_ckpt" / "latest").read_text().strip() == f"iter{done}"
    left = [p for p in children if alive(p)]
    assert len(children) >= 5 and not left, f"outlived quartet ppo: {left} of {children}"
