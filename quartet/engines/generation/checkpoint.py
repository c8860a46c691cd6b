"""What a Hugging Face checkpoint directory says about its model, without loading it."""

from __future__ import annotations

import json
from pathlib import Path

from quartet.weightsync import TensorSpec

_ST_DTYPES = {
    "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def checkpoint_specs(model_dir: str | Path) -> dict[str, TensorSpec] | None:
    """Name -> spec of every tensor in the directory's safetensors files (headers only).

    None when the model is not a local directory with safetensors files.
    """
    import torch

    root = Path(model_dir)
    files = sorted(root.glob("*.safetensors")) if root.is_dir() else []
    if not files:
        return None
    specs: dict[str, TensorSpec] = {}
    for path in files:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            dtype = getattr(torch, _ST_DTYPES.get(meta["dtype"], "float32"))
            specs[name] = TensorSpec(name, dtype, tuple(meta["shape"]))
    # Tied embeddings: a trainer's state dict may still carry lm_head.weight (vLLM skips it).
    if model_config(root).get("tie_word_embeddings") and "lm_head.weight" not in specs:
        embed = specs.get("model.embed_tokens.weight")
        if embed is not None:
            specs["lm_head.weight"] = TensorSpec("lm_head.weight", embed.dtype, embed.shape)
    return specs


def model_config(model_dir: str | Path) -> dict:
    """The directory's config.json as a dict ({} when absent)."""
    path = Path(model_dir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
