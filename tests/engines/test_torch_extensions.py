"""DeepSpeed's run-time C++ ops build into this virtualenv, not the per-user cache that every
venv shares (where each venv rebuilt `deepspeed_shm_comm` over the other's build)."""

from __future__ import annotations

import os
import subprocess
import sys

from quartet.engines.torch_extensions import (
    EXTENSIONS_ENV,
    use_venv_extensions_dir,
    venv_extensions_dir,
)

# What a role process does first: join the process group (DeepSpeed loads its CPU comm op).
PROBE = ("import os\n"
         "from quartet.engines.distributed import init_distributed\n"
         "init_distributed()\n"
         f"print(os.environ.get({EXTENSIONS_ENV!r}, ''))\n")


def _probe() -> str:
    env = {k: v for k, v in os.environ.items() if k != EXTENSIONS_ENV}
    return subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True,
                          text=True, timeout=300, env=env).stdout.split()[-1]


def test_a_role_process_builds_deepspeeds_ops_in_its_venv():
    expected = venv_extensions_dir()
    assert expected is not None, "the tests run in a writable virtualenv (make setup)"
    assert _probe() == str(expected)
    assert (expected / "deepspeed_shm_comm").is_dir()


def test_a_directory_the_user_chose_is_kept(tmp_path, monkeypatch):
    chosen = str(tmp_path / "mine")
    monkeypatch.setenv(EXTENSIONS_ENV, chosen)
    assert use_venv_extensions_dir() == chosen and os.environ[EXTENSIONS_ENV] == chosen
