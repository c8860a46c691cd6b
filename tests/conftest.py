"""Session-wide offline fixtures: the tiny model and tiny datasets, built once."""

from __future__ import annotations

import os

import pytest

# Two cores on the CI machine: keep every library to one or two threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_path():
    """Directory of the tiny Llama + tokenizer in Hugging Face format (cached across runs)."""
    from quartet.testing import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Paths of the tiny jsonl datasets: keys sft, preference, prompts, chat_sft."""
    from quartet.testing import write_tiny_datasets

    return write_tiny_datasets(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def head16_model():
    """A tiny Llama with head size 16, which vLLM's CPU attention rejects (so `--backend
    auto` falls back to HF generate on it)."""
    from quartet.testing import tiny_model_dir

    return tiny_model_dir(name="tiny-llama-head16", hidden_size=64, num_attention_heads=4,
                          num_key_value_heads=4, head_dim=16)


# -- parallel runs (`make test`: pytest-xdist, two workers, --dist loadscope) --------------
#
# The unit of work is a module (so its module-scoped fixtures, a shared PPO run or running
# services, are set up once, on one worker) or a group of modules that must not run beside
# each other: the Ray tests (a local instance reserves a range of 200 worker ports from a
# random free port; two instances could take each other's). xdist's own `--dist loadgroup`
# cannot do this with pytest 9 (its `xdist_group` rewrites `Item._nodeid`, which pytest 9
# no longer reads), hence the scheduler below.
GROUPS = {
    "tests/integration/test_ppo_ray.py": "ray",
    "tests/integration/test_ray_restart.py": "ray",
}
# Units are handed out in collection order, each to the worker that runs short first, so
# the longest go first and the run ends on short ones. Seconds measured on the Intel Xeon
# host (2 cores), serial run of 2026-11-28 18:10 UTC; modules not listed follow, in order.
LONGEST_FIRST = (
    "tests/integration/test_ppo_faults.py",  # 189 s
    "tests/integration/test_ppo_ray.py",  # 100 s, with test_ray_restart ("ray"): 182 s
    "tests/integration/test_ray_restart.py",
    "tests/integration/test_sleep_faults.py",  # 153 s
    "tests/integration/test_ppo_e2e.py",  # 152 s
    "tests/integration/test_data_parallel.py",  # 88 s
    "tests/engines/test_train_engine.py",  # 85 s (DeepSpeedCPUAdam's first build)
    "tests/cli/test_train_cli.py",  # 70 s
    "tests/methods/test_methods_cli.py",  # 64 s
    "tests/serving/test_fuzz_rpcs.py",  # 55 s
    "tests/integration/test_registry_cluster.py",  # 54 s
    "tests/services/rollout/test_weight_session_faults.py",  # 44 s
    "tests/integration/test_grpo_verifier.py",  # 33 s
    "tests/integration/test_coordinator_service.py",  # 31 s
    "tests/integration/test_repeatable_runs.py",  # 23 s
    "tests/integration/test_rollout_service.py",  # 22 s
    "tests/integration/test_tracing.py",  # 19 s
    "tests/weightsync/test_weightsync_shm.py",  # 19 s
    "tests/engines/generation/test_generation_backends.py",  # 17 s
    "tests/trainers/test_trainers.py",  # 17 s
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)  # a run without pytest-xdist has no such hook
def pytest_xdist_make_scheduler(config, log):
    """With `--dist loadscope`: one unit per module or GROUPS entry, in collection order."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return GROUPS.get(_module(nodeid), _module(nodeid))

    config.option.loadscopereorder = False  # xdist would sort units by their test counts
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """On xdist's workers (each collects the same list): the longest modules first."""
    if hasattr(config, "workerinput"):
        rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(_module(item.nodeid), len(rank)))
