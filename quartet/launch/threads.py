"""How many compute threads each local role gets: the cores idle in each phase it runs in.

The synchronous PPO loop runs in phases, and within a phase only some roles compute:
generation (rollout, then a reward model), scoring (actor unless one-pass, reference,
critic), training (actor, critic). In each phase the computing roles share the cores evenly,
so a role that trains alone gets the whole machine, and two roles never oversubscribe the
cores with spinning OpenMP threads. Async generation overlaps the rollout engine with every
other phase, so it keeps one core for itself.

The rollout engines compute in the generate phase (a reward model scores after them, not
alongside), so synchronously they share all the cores, asynchronously the core kept for them.
A local vLLM engine on CPU runs in the rollout process and takes torch's thread count from
`OMP_NUM_THREADS` at start (it binds no threads of its own in-process, and refuses
`torch.set_num_threads` afterwards): left at the launcher's default of 1 it generated on one
core of two while every other role waited.

A role's process starts with `OMP_NUM_THREADS` = `MKL_NUM_THREADS` = its largest share (torch
reads MKL_NUM_THREADS over OMP_NUM_THREADS, so one inherited from the user's shell would
override the plan); a role that takes part in several phases (the actor, the critic) also
gets `QUARTET_PHASE_THREADS` ("score=1,train=2") and switches `torch.set_num_threads` at each
call (`phase_threads`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

PHASE_ENV = "QUARTET_PHASE_THREADS"

log = logging.getLogger("quartet.launch")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def role_threads(cores: int, *, actor_scores: bool, reference: bool, critic: bool,
                 reward_model: bool, async_generation: bool, rollouts: int = 1
                 ) -> dict[str, dict[str, int]]:
    """Threads per role ("actor", "critic", "reference", "reward", "rollout") and phase;
    `rollouts`: local rollout engines (each gets an equal share)."""
    phases = {
        "generate": {"reward"} if reward_model else set(),
        "score": {r for r, on in (("actor", actor_scores), ("reference", reference),
                                  ("critic", critic)) if on},
        "train": {"actor", "critic"} if critic else {"actor"},
    }
    usable = max(cores - 1, 1) if async_generation else cores
    plan = {role: {phase: max(usable // len(members), 1)
                   for phase, members in phases.items() if role in members}
            for role in ("actor", "critic", "reference", "reward")}
    generating = cores - usable if async_generation else cores
    plan["rollout"] = {"generate": max(generating // max(rollouts, 1), 1)}
    return plan


def uniform_threads(plan: dict[str, dict[str, int]], n: int) -> dict[str, dict[str, int]]:
    """`plan`'s roles and phases with `n` threads each: what an in-process run gives every
    role (one process, one `OMP_NUM_THREADS`), for comparing like with like."""
    return {role: {phase: n for phase in phases} for role, phases in plan.items()}


def thread_env(phases: dict[str, int]) -> dict[str, str]:
    """The environment that gives a role process its planned threads."""
    n = str(max(phases.values(), default=1))
    env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    if len(phases) > 1:
        env[PHASE_ENV] = ",".join(f"{p}={n}" for p, n in phases.items())
    return env


def planned_threads(phase: str) -> int | None:
    """This process's planned threads for `phase`, from its environment; None if unplanned."""
    for item in os.environ.get(PHASE_ENV, "").split(","):
        name, _, n = item.partition("=")
        if name == phase and n.isdigit():
            return int(n)
    return None


@contextmanager
def phase_threads(phase: str) -> Iterator[None]:
    """Runs the block with this process's planned threads for `phase` (no-op if unplanned)."""
    import torch

    n = planned_threads(phase)
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def openmp_default_threads() -> int:
    """The threads OpenMP gives a thread that never set its own: `OMP_NUM_THREADS` (its
    first level), else the usable cores."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else available_cores()


def align_torch_threads() -> int:
    """Makes torch compute with OpenMP's default thread count; returns that count.

    Why: torch takes its count from MKL_NUM_THREADS over OMP_NUM_THREADS, OpenMP its default
    from OMP_NUM_THREADS only. A kernel that plans its work with OpenMP's count and runs it
    on torch's threads then disagrees with itself: vLLM's CPU attention aborted its first
    step with "cpu_attn_impl.hpp Check failed: thread_num (2 vs. 1)" under OMP_NUM_THREADS=2
    MKL_NUM_THREADS=1. Call it before building an in-process vLLM engine on CPU (after that
    vLLM replaces `torch.set_num_threads` with a no-op)."""
    import torch

    n = openmp_default_threads()
    if torch.get_num_threads() != n:
        log.warning("torch computes with %d threads (MKL_NUM_THREADS=%s) but OpenMP's default "
                    "is %d (OMP_NUM_THREADS=%s): using %d, as vLLM's CPU kernels need both "
                    "equal; set MKL_NUM_THREADS and OMP_NUM_THREADS alike to choose",
                    torch.get_num_threads(), os.environ.get("MKL_NUM_THREADS"), n,
                    os.environ.get("OMP_NUM_THREADS"), n)
        torch.set_num_threads(n)
    return n
