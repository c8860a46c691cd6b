"""Merge a LoRA adapter saved by a quartet trainer into its base model; write a HF model.

    python -m quartet.cli.lora_combiner --model_path BASE --lora_path ADAPTER \\
        --output_path OUT [--is_rm] [--param_dtype bf16]

With ``--is_rm`` the adapter directory also holds the trained value head
(``value_head.safetensors``); the output then loads with
``AutoModelForSequenceClassification(num_labels=1)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from quartet.models.loading import torch_dtype


def merge(model_path: str, lora_path: str, output_path: str, is_rm: bool = False,
          param_dtype: str = "fp32") -> None:
    """Load base + adapter, fold the adapter into the weights, save to ``output_path``."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    dtype = torch_dtype(param_dtype)
    out = Path(output_path)
    out.mkdir(parents=True, exist_ok=True)
    if not is_rm:
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        merged = PeftModel.from_pretrained(base, lora_path).merge_and_unload()
        merged.save_pretrained(str(out), safe_serialization=True)
    else:
        meta = json.loads((Path(lora_path) / "value_head.json").read_text())
        base = AutoModel.from_pretrained(model_path, dtype=dtype)
        merged = PeftModel.from_pretrained(base, lora_path).merge_and_unload()
        prefix = meta["base_model_prefix"]
        state = {f"{prefix}.{k}": v.contiguous() for k, v in merged.state_dict().items()}
        state.update(load_file(str(Path(lora_path) / "value_head.safetensors")))
        config = merged.config
        config.architectures = [type(merged).__name__.removesuffix("Model")
                                + "ForSequenceClassification"]
        config.num_labels = 1
        config.value_head_prefix = meta["value_head_prefix"]
        config.save_pretrained(str(out))
        save_file({k: v.to(dtype) for k, v in state.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
        (out / "value_head.json").write_text(json.dumps(meta) + "\n")
    tokenizer_source = lora_path if (Path(lora_path) / "tokenizer_config.json").exists() \
        else model_path
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(str(out))
    del base
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quartet.cli.lora_combiner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="base model directory")
    parser.add_argument("--lora_path", required=True, help="adapter directory (trainer output)")
    parser.add_argument("--output_path", required=True, help="where the merged model goes")
    parser.add_argument("--is_rm", action="store_true", help="adapter belongs to a reward model")
    parser.add_argument("--param_dtype", choices=["bf16", "fp16", "fp32"], default="fp32",
                        help="dtype of the saved weights")
    args = parser.parse_args(argv)
    merge(args.model_path, args.lora_path, args.output_path, args.is_rm, args.param_dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
