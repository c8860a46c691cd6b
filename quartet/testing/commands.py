"""Command lines the integration tests and benchmarks start real runs with.

A run under test is a real `quartet ppo` process; the first arguments (interpreter, model,
prompts, reward file, launcher) are the same for every such test, the rest is each test's
own work. One builder keeps those first arguments from drifting apart between tests.
"""

from __future__ import annotations

import sys
from pathlib import Path


def quartet_ppo_command(model: Path, prompts: Path, reward: Path, *extra: str,
                        launcher: str | None = None) -> list[str]:
    """`python -m quartet.cli.main ppo` on `model` and `prompts` scored by the reward
    function in `reward`, then `extra`; `launcher` ("local", "ray") when not the default."""
    cmd = [sys.executable, "-m", "quartet.cli.main", "ppo"]
    if launcher is not None:
        cmd += ["--launcher", launcher]
    return cmd + [
        "--actor.model_name_or_path", str(model), "--data.dataset", str(prompts),
        "--reward.func", str(reward), *extra,
    ]
