"""Model construction: causal LMs, value-head models (RM and critic), LoRA/QLoRA, attention."""

from quartet.models.attention import forward_inputs, resolve_attn_implementation
from quartet.models.loading import (
    ModelLoadError,
    apply_lora,
    load_causal_lm,
    load_tokenizer,
    load_value_model,
    torch_dtype,
)
from quartet.models.value_model import ValueModel

__all__ = [
    "ModelLoadError",
    "ValueModel",
    "apply_lora",
    "forward_inputs",
    "load_causal_lm",
    "load_tokenizer",
    "load_value_model",
    "resolve_attn_implementation",
    "torch_dtype",
]
