"""Frozen companions of a trained policy: DPO/KTO's reference, distillation's teacher.

One builder so that every trainer loads a frozen model the same way: same dtype and attention
as the trained engine, no LoRA, no 4-bit quantisation, optional CPU offload between calls.
"""

from __future__ import annotations

from dataclasses import replace

from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.model import ModelConfig
from quartet.engines.distributed import World
from quartet.engines.inference_engine import InferenceEngine
from quartet.engines.train_engine import TrainEngine
from quartet.models.loading import load_causal_lm

__all__ = ["ReferencedPolicy", "frozen_causal_lm"]


def frozen_causal_lm(path: str, model: ModelConfig, ds: DeepSpeedConfig, engine: TrainEngine,
                     world: World, offload: bool = False) -> InferenceEngine:
    """A frozen causal LM at ``path`` beside ``engine`` (the GGUF file name and remote-code
    setting of ``model`` carry over)."""
    cfg = ModelConfig(model_name_or_path=path, gguf_file=model.gguf_file,
                      trust_remote_code=model.trust_remote_code)
    frozen_ds = replace(ds, lora=replace(ds.lora, rank=0), load_in_4bit=False)
    return InferenceEngine(load_causal_lm(cfg, frozen_ds), world.device, engine.dtype,
                           engine.attn_implementation, offload=offload)


class ReferencedPolicy:
    """Mixin of trainers whose policy is scored against a frozen reference (DPO, KTO): builds
    the policy engine and ``self.reference`` (``--ref.model_name_or_path``, default the
    policy's own starting weights; ``--ref.offload``)."""

    def build_engine(self) -> TrainEngine:
        j = self.job  # type: ignore[attr-defined]
        engine = TrainEngine.causal_lm(j.model, j.ds, j.optim, j.adam, j.muon,
                                       **self.engine_args())  # type: ignore[attr-defined]
        self.reference = frozen_causal_lm(j.ref.model_name_or_path or j.model.model_name_or_path,
                                          j.model, j.ds, engine, self.world,  # type: ignore
                                          j.ref.offload)
        return engine
