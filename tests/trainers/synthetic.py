"""A preference set separable by a surface feature, so RM/DPO targets are reachable in seconds.

Chosen responses use only "positive" words and rejected ones only "negative" words; held-out
pairs use new word combinations and prompts. The tiny fixture's arithmetic preferences need the
model to learn addition, which a 2-layer model does not do in a few CPU steps.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["good", "happy", "yes", "thanks", "blue", "fast", "big"]
NEGATIVE = ["bad", "sad", "no", "red", "slow", "night", "small"]
PROMPT_WORDS = ["the", "cat", "dog", "bird", "fish", "one", "two", "three", "what", "is", "day"]


def write_separable_preferences(out_dir: Path, num_train: int = 96, num_eval: int = 32,
                                seed: int = 0) -> tuple[Path, Path]:
    """(train.jsonl, eval.jsonl) with {prompt, chosen, rejected} rows."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(num_train + num_eval):
        prompt = " ".join(rng.choice(PROMPT_WORDS) for _ in range(rng.randint(3, 5))) + "?"
        chosen = " ".join(rng.choice(POSITIVE) for _ in range(3)) + "."
        rejected = " ".join(rng.choice(NEGATIVE) for _ in range(3)) + "."
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": 0.5})
    paths = out_dir / "pref_train.jsonl", out_dir / "pref_eval.jsonl"
    for path, part in zip(paths, (rows[:num_train], rows[num_train:]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths
