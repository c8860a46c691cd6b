"""Run checkpoints of `quartet ppo`: the actor, the critic and the coordinator's own state,
written atomically, so a run killed at any moment resumes exactly where its last
checkpoint was taken.

Layout under `--ckpt.path` (default `<ckpt.output_dir>/ds_ckpt`)::

    iter6/actor/deepspeed/iter6/...    weights, optimizer, scheduler (DeepSpeed, via Save)
    iter6/actor/hf/iter6/              with --ckpt.save_hf
    iter6/critic/deepspeed/iter6/...   when the run has a critic
    iter6/coordinator.pt               CoordinatorState: iteration, policy version, data
                                       order and position, RNG states, KL controller,
                                       reward normaliser, metric rows, pending async batch
    latest                             the name of the newest complete checkpoint

A checkpoint is written under `.tmp-<name>-<pid>` and renamed into place only after every
part is on disk; `latest` is replaced with `os.replace`. A kill during a save leaves a `.tmp`
directory that loading ignores (and the next save removes), and the previous checkpoint
usable. In cluster mode `--ckpt.path` must be the same path on the coordinator, the actor
and the critic (a shared volume): each role writes its own part there.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from quartet.engines.checkpoint_rotation import prune_oldest

log = logging.getLogger("quartet.coordinator")

FORMAT = 1
STATE_FILE = "coordinator.pt"
LATEST_FILE = "latest"


class CheckpointedRole(Protocol):
    """What the actor and critic clients offer for checkpoints (Save/Load RPCs)."""

    def save(self, output_dir: str, hf_export: bool = True, tag: str = "",
             hf_only: bool = False) -> Any: ...
    def load(self, checkpoint_dir: str, tag: str) -> int: ...


@dataclass
class CoordinatorState:
    """Everything of the PPO loop that the next iteration depends on."""

    iteration: int
    """Iterations completed; the resumed loop runs iteration `iteration + 1` next."""
    policy_version: int
    seed: int
    loop_rng: Any
    collector: dict[str, Any]
    kl: dict[str, Any]
    reward_stats: dict[str, Any]
    history: list[dict[str, float]]
    """Metric rows so far; on resume metrics.jsonl is rewritten from them."""
    pending: Any = None
    """Async mode: the batch generated ahead for the next iteration (a `Rollouts`)."""
    python_rng: Any = None
    torch_rng: Any = None
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointSettings:
    """`--ckpt.*` as the PPO loop uses them."""

    path: str
    max_num: int = 3
    max_mem_gb: float = 1000.0
    save_hf: bool = False


class RunCheckpoints:
    """Saves and finds run checkpoints; restores the roles' parts through their Load RPC."""

    def __init__(self, settings: CheckpointSettings, actor: CheckpointedRole,
                 critic: CheckpointedRole | None = None) -> None:
        self.s = settings
        self.root = Path(settings.path).resolve()
        self.actor = actor
        self.critic = critic

    # ---------------------------------------------------------------- finding
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first (by iteration number)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir()
                 if p.is_dir() and p.name.startswith("iter") and (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1)

    def latest(self) -> Path | None:
        """The checkpoint `latest` names, if it is complete; else the newest complete one."""
        pointer = self.root / LATEST_FILE
        if pointer.is_file():
            candidate = self.root / pointer.read_text().strip()
            if (candidate / STATE_FILE).is_file():
                return candidate
        done = self.complete()
        return done[-1] if done else None

    # ---------------------------------------------------------------- saving
    def save(self, state: CoordinatorState) -> Path:
        """Writes checkpoint `iter<N>` atomically; returns its directory."""
        name = f"iter{state.iteration}"
        final = self.root / name
        if (final / STATE_FILE).is_file():
            self._point_latest(name)
            return final  # this iteration is already saved (a final save after a periodic one)
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        tmp.mkdir()
        self.actor.save(str(tmp / "actor"), hf_export=self.s.save_hf, tag=name)
        if self.critic is not None:
            self.critic.save(str(tmp / "critic"), hf_export=self.s.save_hf, tag=name)
        torch.save(state, tmp / (STATE_FILE + ".part"))
        os.replace(tmp / (STATE_FILE + ".part"), tmp / STATE_FILE)
        if final.exists():  # an incomplete leftover of the same name
            shutil.rmtree(final)
        os.rename(tmp, final)
        self._point_latest(name)
        self._prune()
        log.info("checkpoint %s saved (iteration %d, policy version %d)", final,
                 state.iteration, state.policy_version)
        return final

    def _point_latest(self, name: str) -> None:
        part = self.root / (LATEST_FILE + ".part")
        part.write_text(name + "\n")
        os.replace(part, self.root / LATEST_FILE)

    def _prune(self) -> None:
        """Keeps the newest `max_num` complete checkpoints (by iteration), and drops the
        oldest while they take more than `max_mem_gb` (the newest one is always kept)."""
        prune_oldest(self.complete(), self.s.max_num, self.s.max_mem_gb)

    # ---------------------------------------------------------------- loading
    def load_state(self, checkpoint: Path) -> CoordinatorState:
        state = torch.load(checkpoint / STATE_FILE, weights_only=False)
        if getattr(state, "format", None) != FORMAT:
            raise ValueError(f"--ckpt.load_enable: {checkpoint / STATE_FILE} has format "
                             f"{getattr(state, 'format', None)}, expected {FORMAT}")
        return state

    def load_roles(self, checkpoint: Path) -> None:
        """The actor (and critic) restore their parts of `checkpoint`."""
        name = checkpoint.name
        self.actor.load(str(checkpoint / "actor" / "deepspeed"), name)
        if self.critic is not None:
            self.critic.load(str(checkpoint / "critic" / "deepspeed"), name)


def capture_rng() -> tuple[Any, Any]:
    """This process's Python and torch RNG states (the coordinator draws from neither on
    purpose, but a reward shaping or aggregate function might)."""
    return random.getstate(), torch.get_rng_state()


def restore_rng(state: CoordinatorState) -> None:
    if state.python_rng is not None:
        random.setstate(state.python_rng)
    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
