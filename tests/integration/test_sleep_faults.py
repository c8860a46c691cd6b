"""Releasing memory between phases (--vllm.enable_sleep, --ref.enable_sleep: the rollout's
vLLM engine and the reference, on a model that ties its LM head as SmolLM2 does) changes
nothing that is learned; a role killed while it has released its memory is restarted and the
run ends exactly as a fault-free one with the same flags.

The rollout is SIGKILLed after it released its weights and KV cache (the actor trains; the
next call it gets is the weight sync), the reference after it released its weights (the next
call is the next iteration's LogProbs). The restarted process starts with full weights: the
rollout's are the initial ones until the coordinator brings it to the current version, the
reference's the frozen ones it had."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quartet.testing.faults import kill, read_metrics, role_pid, runs_differences, wait_for

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ITERATIONS = 4
SLEEP = ("--vllm.enable_sleep", "--ref.enable_sleep")
# What each role logs when it releases its memory (rollout_engine.py, frozen_model.py).
RELEASED = {"rollout0": "released the generator's weights",
            "reference": "released the weights"}
# ... and when it next computes: a weight load (rollout), a restore before scoring (reference).
RESUMED = {"rollout0": "serving weight version", "reference": "restored the weights"}
SYNC_BOUND_S = 120.0
"""A sync that re-forms the group after a retirement, far below the group's 600 s timeout."""


def start(out: Path, model: Path, prompts: Path, *extra: str,
          sleep: bool = True) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "quartet.cli.main", "ppo",
           "--actor.model_name_or_path", str(model), "--data.dataset", str(prompts),
           "--reward.func", str(HERE / "rewards" / "digit_reward.py"),
           "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "4",
           "--rollout.max_new_tokens", "8", "--train.batch_size", "16",
           "--train.micro_batch_size", "8", "--train.num_iterations", str(ITERATIONS),
           "--algo.advantage.estimator", "group_norm", "--algo.kl.init_coef", "0.05",
           "--algo.kl.use_loss", "--algo.kl.estimator", "k3",
           "--ckpt.output_dir", str(out), "--ds.param_dtype", "fp32", "--ds.zero_stage", "0",
           "--actor.learning_rate", "1e-3", "--lr_scheduler", "constant",
           "--vllm.backend", "vllm", *(SLEEP if sleep else ()), *extra]
    with open(out / "ppo.out", "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, out: Path) -> list[dict]:
    assert proc.wait(600) == 0, (out / "ppo.out").read_text()[-4000:]
    return read_metrics(out)


@pytest.fixture(scope="module")
def tied_model():
    from quartet.testing import tiny_model_dir

    return tiny_model_dir(name="tiny-llama-tied", tie_word_embeddings=True)


@pytest.fixture(scope="module")
def clean_out(tmp_path_factory, tied_model, tiny_data) -> Path:
    """The fault-free run with both roles releasing between phases."""
    out = tmp_path_factory.mktemp("sleep-clean")
    assert len(finish(start(out, tied_model, tiny_data["prompts"]), out)) == ITERATIONS
    return out


@pytest.fixture(scope="module")
def clean_run(clean_out) -> list[dict]:
    return read_metrics(clean_out)


def test_releasing_between_phases_changes_nothing_that_is_learned(tmp_path, tied_model,
                                                                  tiny_data, clean_out):
    """The same run without releasing has the same metrics in every iteration (timings,
    transfer statistics and per-replica counters aside); the released run's roles released
    once per iteration."""
    out = tmp_path / "plain"
    plain = finish(start(out, tied_model, tiny_data["prompts"], sleep=False), out)
    slept = read_metrics(clean_out)
    assert len(plain) == ITERATIONS and learned(slept) == learned(plain)
    assert plain[-1]["kl"] != 0.0  # the reference took part
    rollout_log = (clean_out / "logs" / "rollout0.log").read_text()
    assert "backend=vllm" in rollout_log
    assert rollout_log.count(RELEASED["rollout0"]) == ITERATIONS
    reference_log = (clean_out / "logs" / "reference.log").read_text()
    assert reference_log.count(RELEASED["reference"]) == ITERATIONS
    assert RELEASED["rollout0"] not in (out / "logs" / "rollout0.log").read_text()


def learned(history: list[dict]) -> list[dict]:
    """What a run learned and sampled, without timings, transfer statistics and per-replica
    counters (keyed by the replica's address)."""
    return [{k: v for k, v in m.items() if not k.startswith(("time/", "sync/", "rollout/"))}
            for m in history]


def test_sigkill_while_released_restarts_the_role_and_the_run_equals_a_fault_free_one(
        tmp_path, tied_model, tiny_data, clean_run):
    """One run, two kills (a run's start-up costs more than its iterations): rollout0 after
    its second release, then, once it was restarted, the reference after its next release."""
    out = tmp_path / "killed"
    proc = start(out, tied_model, tiny_data["prompts"])
    for service in ("rollout0", "reference"):
        log_path = out / "logs" / f"{service}.log"
        before = log_path.read_text().count(RELEASED[service]) if log_path.is_file() else 0
        wait_for(released(log_path, RELEASED[service], max(2, before + 1)), 300,
                 f"{service}'s release", poll_s=0.01)
        kill(role_pid(proc.pid, service))
        at_kill = log_path.read_text()
        # killed asleep: nothing brought its memory back between the release and the kill
        assert RESUMED[service] not in at_kill[at_kill.rindex(RELEASED[service]):], \
            at_kill[-2000:]
        wait_for(released(log_path, f"restart 1 of {service}", 1), 300, f"{service}'s restart")
    rows = finish(proc, out)
    diffs = runs_differences(rows, clean_run)
    assert not diffs, diffs


def released(log_path: Path, line: str, times: int):
    """True once `line` is in the log `times` times."""
    return lambda: log_path.is_file() and log_path.read_text().count(line) >= times


def test_a_retired_replica_is_not_asked_to_release(tmp_path, tied_model, tiny_data):
    """Two replicas, one restart allowed: rollout1 killed twice is retired and the run goes
    on with rollout0, releasing only it (the release list was fixed at start, so the
    retired replica's ReleaseMemory failed the run). The second kill lands just before a
    weight sync (rollout0 begins the session, rollout1's begin fails): rollout0 must leave
    the old group at once, not at its 600 s timeout (the run stalled 10 min before the
    fix, in the weight sync that re-formed the group)."""
    out = tmp_path / "retired"
    proc = start(out, tied_model, tiny_data["prompts"], "--vllm.num_engines", "2",
                 "--restart.max_restarts", "1", "--restart.min_rollout_replicas", "1")
    log_path = out / "logs" / "rollout1.log"
    wait_for(rows_reach(out, 1), 300, "iteration 1")
    kill(role_pid(proc.pid, "rollout1"))
    wait_for(lambda: "restart 1 of rollout1" in log_path.read_text(), 120, "the restart")

    def released_in_the_group() -> bool:
        text = log_path.read_text()
        text = text[text.index("restart 1 of rollout1"):]
        joined = text.find("joined weight group")
        return joined >= 0 and RELEASED["rollout0"] in text[joined:]

    # killed asleep, a member of the formed group again: the next call it gets is the
    # sync's BeginWeightUpdate, after rollout0 began the session in the same group
    wait_for(released_in_the_group, 300, "rollout1's release after it rejoined the group",
             poll_s=0.01)
    kill(role_pid(proc.pid, "rollout1"))
    rows = finish(proc, out)
    assert len(rows) == ITERATIONS
    slowest = max(r["time/sync"] for r in rows)
    assert slowest < SYNC_BOUND_S, f"a weight sync took {slowest:.0f}s (the group's timeout?)"
    assert "retiring rollout rollout1" in (out / "ppo.out").read_text() + "".join(
        p.read_text() for p in (out / "logs").glob("*.log"))


def rows_reach(out: Path, n: int):
    return lambda: len(read_metrics(out)) >= n
