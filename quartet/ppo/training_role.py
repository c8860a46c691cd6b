"""What the actor and critic roles share: one DeepSpeed engine built from the role's own
config, its tokenizer and limits, a lock, checkpoints, and its data-parallel ranks.

One lock serialises engine use: gRPC serves requests on a thread pool, and a scoring call
must not interleave with a TrainStep's forward/backward (nor, with several ranks, two
fanned-out calls with each other).

With N ranks (`WORLD_SIZE` > 1, see `quartet.serving.ranks`) the public methods run on rank
0 and fan out: rows are split over the ranks, every rank runs the `shard_*`/`rank_*` method
on its part, and rank 0 merges the results in order. With one rank the same methods run
directly, so the in-process mode and a single service take the same path.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import torch

from quartet.algos.losses import LossNormaliser
from quartet.ppo.batch import (
    PolicyLossSettings,
    PolicyMiniBatch,
    ValueLossSettings,
    ValueMiniBatch,
)
from quartet.ppo.role_config import TrainingRoleConfig
from quartet.v1 import common_pb2


class TrainingRole:
    kind = "causal_lm"
    role_name = "actor"

    def __init__(self, cfg: TrainingRoleConfig) -> None:
        from quartet.engines.distributed import init_distributed
        from quartet.engines.train_engine import TrainEngine
        from quartet.models.loading import load_tokenizer
        from quartet.serving.ranks import RankGroup

        torch.manual_seed(cfg.train.seed)
        self.cfg = cfg
        self.world = init_distributed()
        size = self.world.world_size
        per_rank = cfg.train.micro_batch_size * size
        if cfg.train.batch_size % per_rank:
            raise ValueError(
                f"--train.batch_size: {cfg.train.batch_size} rows do not split into whole "
                f"micro-batches of {cfg.train.micro_batch_size} over {size} ranks; use a "
                f"multiple of {per_rank}")
        build = TrainEngine.causal_lm if self.kind == "causal_lm" else TrainEngine.value_model
        extra = {} if self.kind == "causal_lm" else {"seed": cfg.train.seed}
        self.engine = build(
            cfg.model, cfg.ds, cfg.optim, cfg.adam, cfg.muon,
            global_batch=cfg.train.batch_size, micro_batch=cfg.train.micro_batch_size,
            total_steps=cfg.train.total_steps, world=self.world, **extra,
        )
        hf_config = self.engine.module.config
        self.vocab_size = int(hf_config.vocab_size)
        self.max_len = int(getattr(hf_config, "max_position_embeddings", 1 << 30))
        # Only the pad id is needed between saves: the tokenizer (~56 MiB resident for
        # SmolLM2) is loaded again by `tokenizer` when an HF export writes it.
        self.pad_id = int(load_tokenizer(cfg.model).pad_token_id)
        self.rows_per_rank = cfg.train.batch_size // size
        self.lock = threading.Lock()
        self.ranks = RankGroup(self.world.rank, size)
        self.run_id = ""

    @property
    def tokenizer(self):
        """The model's tokenizer, loaded on each use (HF exports, benchmarks), not kept."""
        from quartet.models.loading import load_tokenizer

        return load_tokenizer(self.cfg.model)

    @property
    def global_step(self) -> int:
        return self.engine.global_step

    @property
    def world_size(self) -> int:
        return self.world.world_size

    def serve_worker(self) -> int:
        """Ranks > 0: serve rank 0's fanned-out calls until it stops; the exit code."""
        return self.ranks.serve_worker(self)

    def stop_workers(self) -> None:
        """Rank 0 at shutdown: let the other ranks exit."""
        self.ranks.stop()

    def check_rows(self, num_rows: int) -> None:
        from quartet.serving.errors import InvalidArgument

        if num_rows != self.cfg.train.batch_size:
            raise InvalidArgument(
                f"batch: TrainStep needs exactly {self.cfg.train.batch_size} rows "
                f"(train.batch_size of this service), got {num_rows}")

    def train_step(self, mb: PolicyMiniBatch | ValueMiniBatch,
                   loss: PolicyLossSettings | ValueLossSettings) -> dict[str, float]:
        """One optimizer step on the mini-batch (`PolicyMiniBatch` or `ValueMiniBatch`), its
        rows split over the ranks and its loss normalised over all of them."""
        from quartet.ppo.updates import merge_metrics
        from quartet.sharding import contiguous

        self.check_rows(len(mb.batch))
        norm = LossNormaliser.of_lengths(mb.batch.response_lengths())
        shards = [(mb.slice(r.start, r.stop), loss, norm)
                  for r in contiguous(len(mb.batch), self.ranks.size)]
        with self.lock:
            parts = self.ranks.call(self, "shard_train_step", shards)
        return {**merge_metrics(parts), "world_size": float(self.world_size)}

    def shard_train_step(self, mb: PolicyMiniBatch | ValueMiniBatch,
                         loss: PolicyLossSettings | ValueLossSettings,
                         norm: LossNormaliser) -> dict[str, float]:
        from quartet.launch.threads import phase_threads

        with phase_threads("train"):
            return self.updater.train_step(mb, loss, norm)

    def prepare_run(self, run_id: str, wanted: common_pb2.TrainSettings) -> bool:
        """Checks a run's settings against this service's; a new run id restarts the LR
        schedule over the run's `total_steps` and the per-run state (`start_run`) on every
        rank. Returns whether the run was new."""
        from quartet.ppo.run_settings import mismatches, train_settings
        from quartet.serving.errors import FailedPrecondition, InvalidArgument

        if not run_id:
            raise InvalidArgument("header.run_id: must name the run")
        if wanted.total_steps <= 0:
            raise InvalidArgument(f"train.total_steps: must be > 0, got {wanted.total_steps}")
        wrong = mismatches(train_settings(self.cfg), wanted, self.role_name)
        if wrong:
            raise FailedPrecondition("; ".join(wrong))
        with self.lock:
            if run_id == self.run_id:
                return False
            self.ranks.call_all(self, "rank_prepare_run", run_id, int(wanted.total_steps))
        return True

    def rank_prepare_run(self, run_id: str, total_steps: int) -> None:
        self.run_id = run_id
        self.engine.restart_schedule(total_steps)
        self.start_run()

    def start_run(self) -> None:
        """Per-run state a role restarts for a new run (the actor's weight version)."""

    def save(self, output_dir: str, tag: str, hf_export: bool,
             hf_only: bool = False) -> tuple[str, str]:
        """DeepSpeed checkpoint under `deepspeed/<tag>` (unless `hf_only`), HF export under
        `hf/<tag>`; every rank takes part (ZeRO shards are saved by their owners)."""
        tag = tag or f"global_step{self.global_step}"
        with self.lock:
            return self.ranks.call_all(self, "rank_save", output_dir, tag, hf_export,
                                       hf_only)[0]

    def rank_save(self, output_dir: str, tag: str, hf_export: bool,
                  hf_only: bool = False) -> tuple[str, str]:
        out = Path(output_dir)
        ckpt = ""
        if not hf_only:
            self.engine.save_checkpoint(out / "deepspeed", tag)
            ckpt = str(out / "deepspeed" / tag)
        hf_dir = ""
        if hf_export:
            hf_dir = str(out / "hf" / tag)
            self.engine.save_hf(hf_dir, tokenizer=self.tokenizer, whole_directory=True)
        return hf_dir, ckpt

    def load(self, checkpoint_dir: str, tag: str) -> int:
        """Weights, optimizer, scheduler and step counter from a checkpoint `save` wrote, on
        every rank; returns the restored global step."""
        with self.lock:
            return self.ranks.call_all(self, "rank_load", checkpoint_dir, tag)[0]

    def rank_load(self, checkpoint_dir: str, tag: str) -> int:
        from quartet.serving.errors import FailedPrecondition

        if self.engine.load_checkpoint(checkpoint_dir, tag) is None:
            raise FailedPrecondition(f"checkpoint_dir: no checkpoint {tag!r} in "
                                     f"{checkpoint_dir}")
        return self.global_step


def prepare_run_response(role: TrainingRole, request) -> common_pb2.PrepareRunResponse:
    """The PrepareRun RPC of both roles."""
    new = role.prepare_run(request.header.run_id, request.train)
    return common_pb2.PrepareRunResponse(run_id=request.header.run_id, new_run=new,
                                         global_step=role.global_step)


def add_save_root_argument(parser) -> None:
    """`--save-root` of both roles' servers."""
    parser.add_argument("--save-root", default=".",
                        help="Save writes and Load reads only under this directory (relative paths "
                             "resolves against it; default: the working directory)")


def save_response(role: TrainingRole, request, save_root: str = "."):
    """The Save RPC of both roles: validate (the directory must lie under `save_root`),
    save, answer where things went."""
    from quartet.serving.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
    from quartet.serving.paths import confine

    if not request.output_dir:
        raise InvalidArgument("output_dir: must not be empty")
    if request.hf_only and not request.hf_export:
        raise InvalidArgument("hf_only: needs hf_export (nothing would be written)")
    if "/" in request.tag or "\0" in request.tag or request.tag in (".", ".."):
        raise InvalidArgument(f"tag: must be a plain name, got {request.tag!r}")
    out = confine(request.output_dir, save_root, "output_dir")
    try:
        hf_dir, ckpt = role.save(str(out), request.tag, request.hf_export, request.hf_only)
    except OSError as exc:
        error = ResourceExhausted if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (
            FailedPrecondition)
        raise error(f"output_dir: cannot write the checkpoint under {out} "
                    f"({exc.strerror or exc})") from exc
    return common_pb2.SaveResponse(hf_dir=hf_dir, checkpoint_dir=ckpt)


def load_response(role: TrainingRole, request, save_root: str = "."):
    """The Load RPC of both roles: validate (the checkpoint must lie under `save_root`, like
    what Save writes), restore, answer the restored step."""
    from quartet.serving.errors import FailedPrecondition, InvalidArgument
    from quartet.serving.paths import confine
    from quartet.v1 import common_pb2

    if not request.checkpoint_dir or not request.tag:
        raise InvalidArgument("checkpoint_dir, tag: both are required")
    if "/" in request.tag or "\0" in request.tag or request.tag in (".", ".."):
        raise InvalidArgument(f"tag: must be a plain name, got {request.tag!r}")
    checkpoint_dir = confine(request.checkpoint_dir, save_root, "checkpoint_dir")
    if not (checkpoint_dir / request.tag).is_dir():
        raise FailedPrecondition(f"checkpoint_dir: {request.checkpoint_dir}/{request.tag} is "
                                 "not a directory on this service's filesystem")
    return common_pb2.LoadResponse(global_step=role.load(str(checkpoint_dir), request.tag))
