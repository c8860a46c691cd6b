"""Where torch builds the C++ extensions DeepSpeed compiles at run time: in this virtualenv.

Why: torch's default, ~/.cache/torch_extensions, is shared by every virtualenv of the user,
and a build there records the venv's include and library paths. A second venv (another
checkout, `bench trl`'s TRL venv) rebuilt DeepSpeed's `deepspeed_shm_comm` op over the first
venv's build, and the first venv rebuilt it back at its next run: ~20 s and a ~3 GB `cc1plus`
inside a run's start-up and peak memory. Each venv builds into `<venv>/torch_extensions`
instead, once, at `make setup` (`python -m quartet.engines.torch_extensions`); a
`TORCH_EXTENSIONS_DIR` the user set is kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXTENSIONS_ENV = "TORCH_EXTENSIONS_DIR"


def venv_extensions_dir() -> Path | None:
    """`<venv>/torch_extensions` when running in a writable virtualenv, else None (torch's
    default stays)."""
    if sys.prefix == sys.base_prefix or not os.access(sys.prefix, os.W_OK):
        return None
    return Path(sys.prefix) / "torch_extensions"


def use_venv_extensions_dir() -> str | None:
    """Points this process's (and its children's) extension builds at the venv's directory
    unless `TORCH_EXTENSIONS_DIR` is set; returns the directory in use (None: torch's
    default). Call before DeepSpeed initialises its communication backend."""
    if EXTENSIONS_ENV not in os.environ and (path := venv_extensions_dir()) is not None:
        os.environ[EXTENSIONS_ENV] = str(path)
    return os.environ.get(EXTENSIONS_ENV)


def build_deepspeed_ops() -> str | None:
    """Builds (or finds built) DeepSpeed's CPU communication op where runs will load it;
    returns the directory."""
    directory = use_venv_extensions_dir()
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()  # None where DeepSpeed does not use it (an accelerator): nothing to build
    return directory


if __name__ == "__main__":
    print(f"DeepSpeed's ops are built in {build_deepspeed_ops() or 'torch default directory'}")
