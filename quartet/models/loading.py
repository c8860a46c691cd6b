"""Load tokenizers, causal LMs and value models from config, with LoRA/QLoRA applied."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quartet.config.deepspeed import DeepSpeedConfig, LoraConfig
from quartet.config.model import ModelConfig
from quartet.models.attention import resolve_attn_implementation
from quartet.models.checkpointing import checkpoint_kwargs
from quartet.models.value_model import ValueModel

__all__ = [
    "ModelLoadError",
    "apply_lora",
    "load_causal_lm",
    "load_tokenizer",
    "load_value_model",
    "torch_dtype",
]

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as configured here."""


def torch_dtype(param_dtype: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[param_dtype]


PLAIN_TOKENIZER_MODEL_TYPES = frozenset({"llama", "qwen3", "gpt2"})
"""Model types whose saved `TokenizersBackend` tokenizer `AutoTokenizer` loads as exactly that
class (transformers 5: no model-specific tokenizer registered over it, not in its
MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS; tests/models/test_tokenizer_loading.py checks)."""


def plain_tokenizer_dir(model: ModelConfig) -> Path | None:
    """The local directory of a tokenizer `AutoTokenizer` would load as the generic
    `TokenizersBackend`, or None. Loading that class directly skips importing
    `transformers.models.auto` (torch._dynamo, sympy: ~160 MiB resident), which a process
    that holds no model (the PPO coordinator) does not need otherwise."""
    path = Path(model.model_name_or_path)
    if model.gguf_file or model.trust_remote_code or not (path / "tokenizer.json").is_file():
        return None
    try:
        tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
    plain = (tok_cfg.get("tokenizer_class") == "TokenizersBackend" and "auto_map" not in tok_cfg
             and model_type in PLAIN_TOKENIZER_MODEL_TYPES)
    return path if plain else None


def load_tokenizer(model: ModelConfig, chat_template: str | None = None) -> Any:
    """The model's tokenizer; pad token falls back to EOS; optional chat template override."""
    plain = plain_tokenizer_dir(model)
    if plain is not None:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        tok = TokenizersBackend.from_pretrained(str(plain))
    else:
        from transformers import AutoTokenizer

        kwargs: dict[str, Any] = {"trust_remote_code": model.trust_remote_code}
        if model.gguf_file:
            kwargs["gguf_file"] = model.gguf_file
        tok = AutoTokenizer.from_pretrained(model.model_name_or_path, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if chat_template:
        path = Path(chat_template)
        tok.chat_template = path.read_text() if path.is_file() else chat_template
    return tok


def _quantization(ds: DeepSpeedConfig) -> Any:
    if not ds.load_in_4bit:
        return None
    import importlib.util

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            "--ds.load_in_4bit (QLoRA) needs a CUDA GPU and the bitsandbytes package; this "
            f"machine has cuda={torch.cuda.is_available()}, bitsandbytes="
            f"{importlib.util.find_spec('bitsandbytes') is not None}. Use plain LoRA "
            "(--ds.lora.rank without --ds.load_in_4bit) on CPU."
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(ds.param_dtype),
    )


def _pretrained_kwargs(model: ModelConfig, ds: DeepSpeedConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "attn_implementation": resolve_attn_implementation(ds.attn_implementation,
                                                           ds.packing_samples),
        "trust_remote_code": model.trust_remote_code,
        "dtype": torch.float32 if not ds.load_in_4bit else torch_dtype(ds.param_dtype),
    }
    if model.gguf_file:
        kwargs["gguf_file"] = model.gguf_file
    quant = _quantization(ds)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


def _checkpointing(module: nn.Module, model: ModelConfig) -> None:
    if model.gradient_checkpointing_enable:
        reentrant = model.gradient_checkpointing_use_reentrant
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs(
            model.gradient_checkpointing_policy, reentrant))
        if hasattr(module, "enable_input_require_grads"):
            # Reentrant checkpointing needs an input that requires grad when weights are frozen.
            module.enable_input_require_grads()


def apply_lora(module: nn.Module, lora: LoraConfig, quantized: bool = False) -> nn.Module:
    """Wrap ``module`` (an HF PreTrainedModel) with peft adapters; only adapters train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        module = prepare_model_for_kbit_training(module, use_gradient_checkpointing=False)
    targets: Any = list(lora.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    cfg = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=targets, bias="none")
    return get_peft_model(module, cfg)


def load_causal_lm(model: ModelConfig, ds: DeepSpeedConfig) -> nn.Module:
    """An ``AutoModelForCausalLM`` in fp32 master precision (DeepSpeed casts for bf16)."""
    from transformers import AutoModelForCausalLM

    module = AutoModelForCausalLM.from_pretrained(model.model_name_or_path,
                                                  **_pretrained_kwargs(model, ds))
    if model.aux_loss_coef > 0 and hasattr(module.config, "output_router_logits"):
        module.config.output_router_logits = True
    module.config.use_cache = False
    _checkpointing(module, model)
    if ds.lora.rank > 0:
        module = apply_lora(module, ds.lora, quantized=ds.load_in_4bit)
    return module


def _head_weight_from_checkpoint(path: str, head_prefix: str) -> torch.Tensor | None:
    """The saved value head, if ``path`` is a local checkpoint that has one."""
    from safetensors import safe_open

    root = Path(path)
    if not root.is_dir():
        return None
    key = f"{head_prefix}.weight"
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            if key in f.keys():
                return f.get_tensor(key)
    return None


def load_value_model(model: ModelConfig, ds: DeepSpeedConfig, seed: int = 42) -> ValueModel:
    """A base decoder plus a scalar head named ``--ds.value_head_prefix``.

    The head is loaded from the checkpoint when present (continuing an RM, or a critic
    initialised from an RM), else initialised with std ``1/(hidden+1)`` from ``seed`` (as
    OpenRLHF does): a fresh critic then starts with values near 0 instead of values of order 1,
    which would swamp the first advantages with value noise.
    """
    from transformers import AutoModel

    base = AutoModel.from_pretrained(model.model_name_or_path, **_pretrained_kwargs(model, ds))
    base.config.use_cache = False
    base_prefix = getattr(base, "base_model_prefix", "") or "model"
    hidden = base.config.hidden_size
    _checkpointing(base, model)
    if ds.lora.rank > 0:
        base = apply_lora(base, ds.lora, quantized=ds.load_in_4bit)
    value = ValueModel(base, base_prefix, ds.value_head_prefix, hidden)
    saved = _head_weight_from_checkpoint(model.model_name_or_path, ds.value_head_prefix)
    with torch.no_grad():
        if saved is not None:
            value.head.weight.copy_(saved.reshape(1, hidden).float())
        else:
            gen = torch.Generator().manual_seed(seed)
            value.head.weight.normal_(0.0, 1.0 / (hidden + 1), generator=gen)
    return value
