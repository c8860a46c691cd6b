"""What the actor and critic roles share: one DeepSpeed engine built from the role's own
config, its tokenizer and limits, a lock, and checkpoints.

One lock serialises engine use: gRPC serves requests on a thread pool, and a scoring call
must not interleave with a TrainStep's forward/backward.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from quartet.ppo.role_config import TrainingRoleConfig


class TrainingRole:
    kind = "causal_lm"

    def __init__(self, cfg: TrainingRoleConfig) -> None:
        from quartet.engines.distributed import init_distributed
        from quartet.engines.train_engine import TrainEngine
        from quartet.models.loading import load_tokenizer

        torch.manual_seed(cfg.train.seed)
        self.cfg = cfg
        self.world = init_distributed()
        build = TrainEngine.causal_lm if self.kind == "causal_lm" else TrainEngine.value_model
        extra = {} if self.kind == "causal_lm" else {"seed": cfg.train.seed}
        self.engine = build(
            cfg.model, cfg.ds, cfg.optim, cfg.adam, cfg.muon,
            global_batch=cfg.train.batch_size, micro_batch=cfg.train.micro_batch_size,
            total_steps=cfg.train.total_steps, world=self.world, **extra,
        )
        self.tokenizer = load_tokenizer(cfg.model)
        hf_config = self.engine.module.config
        self.vocab_size = int(hf_config.vocab_size)
        self.max_len = int(getattr(hf_config, "max_position_embeddings", 1 << 30))
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.lock = threading.Lock()

    @property
    def global_step(self) -> int:
        return self.engine.global_step

    def save(self, output_dir: str, tag: str, hf_export: bool) -> tuple[str, str]:
        """DeepSpeed checkpoint under `deepspeed/<tag>`, HF export under `hf/<tag>`."""
        tag = tag or f"global_step{self.global_step}"
        out = Path(output_dir)
        with self.lock:
            self.engine.save_checkpoint(out / "deepspeed", tag)
            hf_dir = ""
            if hf_export:
                hf_dir = str(out / "hf" / tag)
                self.engine.save_hf(hf_dir, tokenizer=self.tokenizer)
        return hf_dir, str(out / "deepspeed" / tag)


def save_response(role: TrainingRole, request):
    """The Save RPC of both roles: validate, save, answer where things went."""
    from quartet.serving.errors import InvalidArgument
    from quartet.v1 import common_pb2

    if not request.output_dir:
        raise InvalidArgument("output_dir: must not be empty")
    hf_dir, ckpt = role.save(request.output_dir, request.tag, request.hf_export)
    return common_pb2.SaveResponse(hf_dir=hf_dir, checkpoint_dir=ckpt)
