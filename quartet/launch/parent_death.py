"""Role processes die with the thread that launched them (Linux `PR_SET_PDEATHSIG`).

The launcher passes its pid in `QUARTET_DIE_WITH_PARENT`; the child arms the signal itself,
first thing after exec. It used to be armed in a `preexec_fn` between fork and exec, but a
`preexec_fn` makes Python fork() instead of vfork(), which runs gRPC's fork handlers in a
process full of gRPC threads: a launching coordinator service's actor once died with SIGSEGV
before exec (empty log, exit -11). Arming after exec has one race, the parent dying before
`prctl`; the parent-pid check below closes it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

ENV = "QUARTET_DIE_WITH_PARENT"
PR_SET_PDEATHSIG = 1


def child_env() -> dict[str, str]:
    """What a launcher adds to a child's environment so the child dies with it."""
    return {ENV: str(os.getpid())}


def arm_from_env() -> None:
    """Called first by `quartet serve`: SIGKILL this process when its launcher dies."""
    parent = os.environ.pop(ENV, "")
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != int(parent):  # the launcher died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
