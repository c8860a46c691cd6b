"""A process that formed its world of one can start another that forms its own.

Why: `init_distributed` once exported RANK/WORLD_SIZE/MASTER_PORT for its world of one; a
process it started (a role, a trainer, a test's probe) inherited them, took itself for rank 0
of a launched world and failed with EADDRINUSE on the port its parent's store still held.
Both processes are real: the parent keeps its process group alive while the child joins.
"""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = ("from quartet.engines.distributed import init_distributed\n"
         "print('child', init_distributed().world_size)\n")

PARENT = ("import os, subprocess, sys\n"
          "from quartet.engines.distributed import init_distributed\n"
          "world = init_distributed()\n"
          "leaked = sorted(k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')\n"
          "                if k in os.environ)\n"
          "print('parent', world.rank, world.world_size, 'exported', leaked)\n"
          "child = subprocess.run([sys.executable, '-c', sys.argv[1]], capture_output=True,\n"
          "                       text=True, timeout=240)\n"
          "print(child.stdout, child.stderr[-3000:])\n"
          "sys.exit(child.returncode)\n")


def test_a_world_of_one_exports_no_rendezvous_its_children_would_inherit():
    launched = {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in launched}
    run = subprocess.run([sys.executable, "-c", PARENT, CHILD], capture_output=True, text=True,
                         timeout=300, env=env)
    assert "parent 0 1 exported []" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.returncode == 0 and "child 1" in run.stdout, run.stdout[-4000:]
