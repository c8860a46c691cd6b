"""TrainEngine: one DeepSpeed-wrapped trainable model, shared by SFT/RM/DPO and the PPO roles.

It owns the module (a causal LM or a :class:`~quartet.models.ValueModel`), the DeepSpeed engine,
the optimizer (torch AdamW, DeepSpeedCPUAdam with offload, or DeepSpeed's Muon) and the LR
scheduler. Callers compute losses with :mod:`quartet.algos`; the engine only runs forward,
backward, step, checkpoints and exports. Every method that touches parameters is collective:
call it on every rank.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.model import ModelConfig
from quartet.config.optim import AdamConfig, MuonConfig, OptimConfig
from quartet.data.batch import TokenBatch
from quartet.engines.checkpoint_rotation import prune_checkpoints
from quartet.engines.distributed import World, barrier
from quartet.engines.ds_config import build_ds_config
from quartet.engines.optim import decay_groups, trainable_parameters
from quartet.engines.scheduler import build_scheduler
from quartet.models.attention import forward_inputs, resolve_attn_implementation
from quartet.models.embedding_grad import embed_into_grad, plain_embedding
from quartet.models.loading import load_causal_lm, load_value_model, torch_dtype
from quartet.models.output_layer import plain_output_layer
from quartet.models.value_model import ValueModel

__all__ = ["ModelOutput", "StepInfo", "TrainEngine"]

log = logging.getLogger(__name__)

ModelKind = Literal["causal_lm", "value"]


@dataclass(frozen=True)
class StepInfo:
    """What one optimizer step did."""

    step: int
    """Optimizer steps taken so far (1 after the first)."""
    lr: float
    """Learning rate the step used (first param group)."""
    grad_norm: float
    """Global gradient norm before clipping."""


@dataclass
class ModelOutput:
    """Forward result: ``logits [R, T, V]`` (causal LM) or ``values [R, T]`` (value model)."""

    logits: Tensor | None = None
    values: Tensor | None = None
    aux_loss: Tensor | None = None


class TrainEngine:
    """A trainable model under DeepSpeed. Build with :meth:`causal_lm` or :meth:`value_model`."""

    def __init__(
        self,
        model: nn.Module,
        kind: ModelKind,
        *,
        ds: DeepSpeedConfig,
        optim: OptimConfig,
        adam: AdamConfig,
        muon: MuonConfig,
        global_batch: int,
        micro_batch: int,
        total_steps: int,
        world: World,
    ) -> None:
        import deepspeed

        self.kind = kind
        self.ds = ds
        self.world = world
        self.attn_implementation = resolve_attn_implementation(ds.attn_implementation,
                                                               ds.packing_samples)
        self.dtype = torch_dtype(ds.param_dtype)
        self.is_lora = ds.lora.rank > 0
        self.ds_config = build_ds_config(ds, optim, adam, muon, global_batch, micro_batch,
                                         world.world_size)
        if optim.optim == "adam":
            params: Any = decay_groups(model, adam.weight_decay)
        else:
            params = [p for _, p in trainable_parameters(model)]

        def scheduler(optimizer: torch.optim.Optimizer) -> Any:
            return build_scheduler(optimizer, optim.lr_scheduler, total_steps,
                                   optim.lr_warmup_ratio, optim.min_lr_ratio)

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=params, config=self.ds_config, lr_scheduler=scheduler
        )
        if world.world_size == 1 and ds.zero_stage == 0:
            # A world of one has nothing to average: DeepSpeed's stage-0 all-reduce would
            # flatten every gradient into a model-sized buffer, all-reduce it with itself and
            # copy it back after each accumulation boundary (time and one model's worth of
            # peak memory, for an identity).
            self.engine.enable_backward_allreduce = False
        self.total_steps = total_steps
        self.optim = optim
        self.global_step = 0

    def restart_schedule(self, total_steps: int) -> None:
        """A new run on a served engine: the LR schedule starts again at its step 0 and
        spans `total_steps` (weights and optimizer moments carry over)."""
        o = self.optim
        optimizer = self.scheduler.optimizer  # the one DeepSpeed built the schedule on
        self.scheduler = build_scheduler(optimizer, o.lr_scheduler, total_steps,
                                         o.lr_warmup_ratio, o.min_lr_ratio)
        self.engine.lr_scheduler = self.scheduler
        self.total_steps = total_steps

    # ------------------------------------------------------------------ construction
    @classmethod
    def causal_lm(cls, model: ModelConfig, ds: DeepSpeedConfig, optim: OptimConfig,
                  adam: AdamConfig, muon: MuonConfig, *, global_batch: int, micro_batch: int,
                  total_steps: int, world: World) -> TrainEngine:
        """A policy/SFT model: ``AutoModelForCausalLM`` (+ LoRA)."""
        module = load_causal_lm(model, ds)
        return cls(module, "causal_lm", ds=ds, optim=optim, adam=adam, muon=muon,
                   global_batch=global_batch, micro_batch=micro_batch, total_steps=total_steps,
                   world=world)

    @classmethod
    def value_model(cls, model: ModelConfig, ds: DeepSpeedConfig, optim: OptimConfig,
                    adam: AdamConfig, muon: MuonConfig, *, global_batch: int, micro_batch: int,
                    total_steps: int, world: World, seed: int = 42) -> TrainEngine:
        """A reward model or critic: decoder + scalar head named ``--ds.value_head_prefix``."""
        module = load_value_model(model, ds, seed=seed)
        return cls(module, "value", ds=ds, optim=optim, adam=adam, muon=muon,
                   global_batch=global_batch, micro_batch=micro_batch, total_steps=total_steps,
                   world=world)

    # ------------------------------------------------------------------ compute
    @property
    def module(self) -> nn.Module:
        """The wrapped model (parameters are shards under ZeRO-3)."""
        return self.engine.module

    @property
    def device(self) -> torch.device:
        return self.world.device

    def forward(self, batch: TokenBatch, logits_from: int = 0) -> ModelOutput:
        """Run the model on ``batch`` (moved to this rank's device); a causal LM returns the
        logits of positions ``logits_from..T-1`` only (see `scoring.response_start`)."""
        batch = batch.to(self.device)
        if self.kind == "value":
            values = self.engine(batch, attn_implementation=self.attn_implementation,
                                 dtype=self.dtype)
            return ModelOutput(values=values)
        out = self.engine(**forward_inputs(batch, self.attn_implementation, self.dtype,
                                           logits_from))
        return ModelOutput(logits=out.logits, aux_loss=getattr(out, "aux_loss", None))

    def output_weight(self) -> Tensor | None:
        """The output layer's weight `[V, H]` when this model's logits are exactly
        `final hidden states @ weight.T` (:func:`quartet.models.output_layer.plain_output_layer`)
        and the engine is ZeRO-0 without LoRA: then :meth:`forward_hidden` and chunked log-probs
        can replace the logits. None otherwise: :meth:`forward_hidden` calls the decoder
        without DeepSpeed's forward, whose output hooks start a ZeRO-1/2/3 optimizer's
        backward (and ZeRO-3 shards the weight)."""
        if self.kind != "causal_lm" or self.is_lora or self.ds.zero_stage != 0:
            return None
        head = plain_output_layer(self.module)
        return head.weight if head is not None else None

    @property
    def plain_grad_accumulation(self) -> bool:
        """Whether gradients accumulate in `param.grad` with nothing watching them until the
        optimizer step (ZeRO-0, fp32: DeepSpeed hooks no gradient and steps a plain torch
        optimizer), so backward code may add into `.grad` itself
        (`quartet.algos.chunked_logprobs.hidden_token_stats(into_grad=True)`)."""
        return self.ds.zero_stage == 0 and self.dtype == torch.float32 and not self.is_lora

    def forward_hidden(self, batch: TokenBatch, hidden_from: int = 0) -> Tensor:
        """The decoder's final hidden states `[R, T - hidden_from, H]` of positions
        `hidden_from..T-1` (the input of the output layer; only where :meth:`output_weight` is
        not None)."""
        batch = batch.to(self.device)
        inputs = forward_inputs(batch, self.attn_implementation, self.dtype)
        decoder = self.module.get_decoder()
        embedding = plain_embedding(decoder.get_input_embeddings())
        if embedding is not None and self.plain_grad_accumulation and torch.is_grad_enabled():
            # its backward adds the rows into .grad: no dense [V, H] gradient per micro-batch
            inputs["inputs_embeds"] = embed_into_grad(embedding, inputs.pop("input_ids"))
        hidden = decoder(**inputs).last_hidden_state
        return hidden[:, hidden_from:]

    def backward(self, loss: Tensor) -> None:
        """Backward of one micro-batch loss (DeepSpeed scales it for accumulation)."""
        self.engine.backward(loss)

    def step(self) -> StepInfo | None:
        """Advance one micro-batch; returns :class:`StepInfo` when the optimizer stepped."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        lr = self.lr
        # ZeRO-1/2/3 record the pre-clip norm; stage 0 does not, so measure it here (gradients
        # are already all-reduced after the boundary backward).
        own_norm = self._local_grad_norm() if boundary and self.ds.zero_stage == 0 else None
        self.engine.step()
        if not boundary:
            return None
        self.global_step += 1
        norm = own_norm if own_norm is not None else self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return StepInfo(step=self.global_step, lr=lr, grad_norm=norm)

    def _local_grad_norm(self) -> float:
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not grads:
            return float("nan")
        return float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, directory: str | Path, tag: str,
                        client_state: dict[str, Any] | None = None, max_num: int | None = None,
                        max_mem_gb: float | None = None) -> None:
        """DeepSpeed checkpoint (model, optimizer, scheduler, ``client_state``) as ``tag``.

        Keeps at most the ``max_num`` newest tags and ``max_mem_gb`` GB of them (rank 0 deletes
        the oldest; see :func:`quartet.engines.checkpoint_rotation.prune_checkpoints`).
        """
        state = dict(client_state or {})
        state["quartet_global_step"] = self.global_step
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=state)
        if self.world.is_main:
            prune_checkpoints(directory, max_num=max_num, max_mem_gb=max_mem_gb)
        barrier()

    def load_checkpoint(self, directory: str | Path, tag: str | None = None
                        ) -> dict[str, Any] | None:
        """Restore the latest (or ``tag``) checkpoint; None when there is none."""
        directory = Path(directory)
        if tag is None and not (directory / "latest").is_file():
            return None
        path, client_state = self.engine.load_checkpoint(
            str(directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            return None
        self.global_step = int(client_state.get("quartet_global_step", 0))
        return client_state

    # ------------------------------------------------------------------ export
    def named_parameters_for_export(self) -> Iterator[tuple[str, Tensor]]:
        """Every parameter as a full tensor with its Hugging Face name (collective).

        Under ZeRO-3 each parameter is gathered for the duration of one yield; copy what you
        keep. LoRA models yield the peft names (adapters separate from base weights).
        """
        import deepspeed

        zero3 = self.ds.zero_stage == 3
        for name, param in self.module.named_parameters():
            if zero3 and hasattr(param, "ds_id"):
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    yield name, param.data
            else:
                yield name, param.data

    def parameter_shapes(self) -> Iterator[tuple[str, torch.Size, torch.dtype]]:
        """Name, full shape and dtype of each parameter `named_parameters_for_export` yields,
        in the same order, without gathering anything (ZeRO-3 keeps the full shape in
        `ds_shape`): a weight manifest costs no communication."""
        for name, param in self.module.named_parameters():
            yield name, getattr(param, "ds_shape", param.shape), param.dtype

    @property
    def gathers_for_export(self) -> bool:
        """Whether an export needs every rank: ZeRO-3 shards the parameters themselves."""
        return self.ds.zero_stage == 3 and self.world.world_size > 1

    def _gathered_state_dict(self) -> dict[str, Tensor]:
        """Every parameter as a CPU tensor to write. ZeRO-3's gathered parameters exist only
        while their gather lasts and device tensors must come to CPU: those are copied. A
        whole parameter already in CPU memory is written from it (safetensors writes from
        the tensors' memory): a copy would hold a second model beside the weights and the
        optimizer's moments while the export runs (the PPO actor's final export, with every
        other role awake, was the GRPO tree's memory peak)."""
        whole = self.ds.zero_stage != 3
        return {n: (t.detach() if whole and t.device.type == "cpu"
                    else t.detach().to("cpu", copy=True)).contiguous()
                for n, t in self.named_parameters_for_export()}

    def save_hf(self, directory: str | Path, tokenizer: Any = None,
                whole_directory: bool = False) -> None:
        """Hugging Face export (collective; rank 0 writes).

        Causal LM: ``save_pretrained``. Value model: the decoder plus head, loadable with
        ``AutoModelForSequenceClassification(num_labels=1)`` when the head is named ``score``.
        LoRA: the adapter only (merge with ``python -m quartet.cli.lora_combiner``).

        ``whole_directory``: `directory` holds this export and nothing else (PPO's
        ``hf/<tag>``); it is written beside and moved into place when complete, replacing an
        older export, so a run killed mid-export (a second SIGTERM, the OOM killer) leaves no
        half-written model under that name. Without it the files are written into
        `directory` in place (a trainer's output directory also holds its logs).
        """
        state = self._gathered_state_dict()
        if self.world.is_main:
            final = Path(directory)
            out = final.parent / f".{final.name}.partial-{os.getpid()}" \
                if whole_directory else final
            if whole_directory:
                clear_interrupted_exports(final)
            out.mkdir(parents=True, exist_ok=not whole_directory)
            if self.kind == "value":
                _save_value_model(self.module, state, out)
            else:
                self.module.save_pretrained(str(out), state_dict=state, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(out))
            if whole_directory:
                publish_dir(out, final)
        barrier()


def publish_dir(written: Path, final: Path) -> None:
    """Move a completely written directory to its final name, replacing an older one.

    A directory cannot be renamed over a non-empty one, so an older export is first moved
    aside and removed after the new one is in place; whatever the moment of a kill, `final`
    holds a whole export or none, never a mix of two or a half-written one."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(written, final)
    shutil.rmtree(old, ignore_errors=True)


def clear_interrupted_exports(final: Path) -> None:
    """Removes what an export to `final` that was killed left beside it (`publish_dir`'s
    hidden `.<name>.partial-<pid>` and `.<name>.old-<pid>` directories: a model's size each,
    on every kill). A kill between `publish_dir`'s two renames leaves no `final` but the
    older export, whole, under `.old-`: it is moved back first, so `final` again holds the
    last complete export until the new one replaces it."""
    leftovers = sorted(final.parent.glob(f".{final.name}.partial-*")) \
        + sorted(final.parent.glob(f".{final.name}.old-*"))
    olds = [p for p in leftovers if ".old-" in p.name]
    if olds and not final.exists():
        os.rename(olds[-1], final)
        log.info("restored %s from %s (an earlier export was interrupted)", final, olds[-1])
    for path in leftovers:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def _hf_base(module: nn.Module) -> nn.Module:
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def _save_value_model(model: ValueModel, state: dict[str, Tensor], out: Path) -> None:
    from safetensors.torch import save_file

    base = model.base
    prefix = model.base_prefix
    head_key = f"{model.head_prefix}.weight"
    config = _hf_base(base).config
    meta = {"value_head_prefix": model.head_prefix, "base_model_prefix": prefix}
    if hasattr(base, "peft_config"):
        # LoRA: save the adapter of the base and the (fully trained) head beside it.
        inner = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        base.save_pretrained(str(out), state_dict=inner)
        save_file({head_key: state[head_key]}, str(out / "value_head.safetensors"))
        (out / "value_head.json").write_text(json.dumps(meta) + "\n")
        return
    arch = type(base).__name__.removesuffix("Model") + "ForSequenceClassification"
    config = config.__class__.from_dict(config.to_dict())
    config.architectures = [arch]
    config.num_labels = 1
    config.value_head_prefix = model.head_prefix
    config.save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "value_head.json").write_text(json.dumps(meta) + "\n")
