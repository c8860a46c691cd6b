"""--vllm.enable_sleep / --ref.enable_sleep: refused where releasing is not exact, passed to
the services this run starts, and called by `PhaseMemory` on the roles done with a phase."""

from __future__ import annotations

import grpc
import pytest

from quartet.clients.base import RoleCallError
from quartet.config.base import ConfigError, parse_config, parse_config_or_raise
from services.coordinator.config import PPOJobConfig
from services.coordinator.launch import service_commands, thread_plan
from services.coordinator.phase_memory import PhaseMemory

BASE = ["--actor.model_name_or_path", "m", "--data.dataset", "d.jsonl", "--reward.func", "r.py",
        "--algo.kl.init_coef", "0.01"]


@pytest.mark.parametrize(("flags", "named", "why"), [
    (["--vllm.enable_sleep", "--train.async_enable"], "--vllm.enable_sleep",
     "generate the next batch while the actor trains"),
    (["--vllm.enable_sleep", "--vllm.backend", "hf"], "--vllm.enable_sleep", "vLLM backend"),
    (["--vllm.enable_sleep", "--train.colocate_all_models"], "--vllm.enable_sleep",
     "already puts the engines to sleep"),
    (["--ref.enable_sleep", "--ds.zero_stage", "3"], "--ref.enable_sleep", "partitioned"),
    (["--ref.enable_sleep", "--ref.offload"], "--ref.enable_sleep", "--ref.offload"),
    (["--ref.enable_sleep", "--ref.num_gpus_per_node", "2"], "--ref.enable_sleep",
     "one rank only"),
    (["--ref.enable_sleep", "--algo.kl.init_coef", "0"], "--ref.enable_sleep",
     "no reference"),
])
def test_setups_where_releasing_is_not_exact_are_refused(flags, named, why):
    with pytest.raises(ConfigError, match=why) as err:
        parse_config_or_raise(PPOJobConfig, [*BASE, *flags])
    assert named in str(err.value)


def test_the_started_services_get_the_flags(tmp_path):
    cfg = parse_config(PPOJobConfig, [*BASE, "--vllm.enable_sleep", "--ref.enable_sleep",
                                      "--ckpt.output_dir", str(tmp_path)])
    cmds = service_commands(cfg, "cpu", thread_plan(cfg, cores=2))
    assert "--enable-sleep" in cmds["rollout0"].args
    ref = list(cmds["reference"].args)
    assert "--enable-sleep" in ref and ref[ref.index("--spill-dir") + 1] == str(tmp_path)
    plain = parse_config(PPOJobConfig, BASE)
    cmds = service_commands(plain, "cpu", thread_plan(plain, cores=2))
    assert "--enable-sleep" not in cmds["rollout0"].args + cmds["reference"].args


class _Role:
    def __init__(self, address: str = "r:1", fail: bool = False) -> None:
        self.address, self.fail, self.calls = address, fail, []

    def release_memory(self, header=None) -> int:
        if self.fail:
            raise _Unavailable()
        self.calls.append(header.iteration)
        return 1 << 20


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.FAILED_PRECONDITION

    def details(self):
        return "rollout: ReleaseMemory needs the service started with --enable-sleep"


def test_phase_memory_releases_the_roles_done_with_the_phase():
    rollouts, reference = [_Role("a:1"), _Role("b:2")], _Role()
    memory = PhaseMemory(rollouts, reference, run_id="run")
    memory("generate", 3)
    assert [r.calls for r in rollouts] == [[3], [3]] and reference.calls == []
    memory("score", 3)
    assert reference.calls == [3]
    with pytest.raises(RoleCallError, match=r"rollout at x:9: ReleaseMemory failed with "
                                            r"FAILED_PRECONDITION: .*--enable-sleep"):
        PhaseMemory([_Role("x:9", fail=True)])("generate", 0)


def test_phase_memory_releases_the_replicas_in_the_run_now():
    """Registry mode: the rollouts are a function of the membership; a replica that joined
    mid-run releases too, one that left is not called (it would fail the run)."""
    first, joined = _Role("a:1"), _Role("c:3")
    current = [first]
    memory = PhaseMemory(lambda: list(current))
    memory("generate", 0)
    current[:] = [joined]  # `first` left, `joined` came
    memory("generate", 1)
    assert first.calls == [0] and joined.calls == [1]
