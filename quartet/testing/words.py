"""Tiny datasets for the sampling methods (rejection sampling, iterative DPO, conditional SFT).

Why not the addition data of :mod:`quartet.testing.tiny`: these methods improve what a policy
already *samples*, so the policy must first produce readable, varied text. A random tiny model
emits byte-level garbage whose decoded text re-tokenizes into a few replacement-character
tokens; after a few SFT steps on ``words_sft.jsonl`` it answers every prompt with three words
from :data:`WORDS`, some of them the keywords that ``examples/rewards/keyword_reward.py``
counts ("yes", "good"). Best-of-n then has something to select, and the effect is measurable.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

__all__ = ["BAD_STEP_WORDS", "WORDS", "write_prm_datasets", "write_word_datasets"]

WORDS = ["yes", "good", "no", "bad", "red", "blue", "cat", "dog", "fast", "slow", "big",
         "small", "day", "night"]
_PROMPT_WORDS = ["the", "cat", "dog", "bird", "fish", "one", "two", "three", "what", "is"]


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(_PROMPT_WORDS) for _ in range(rng.randint(3, 5))) + "?"


def write_word_datasets(out_dir: str | os.PathLike, seed: int = 0, num_sft: int = 128,
                        num_prompts: int = 48, num_eval: int = 16) -> dict[str, Path]:
    """Write jsonl files and return their paths:

    - ``words_sft``: ``{prompt, response}``, the response three uniformly drawn words + ".";
    - ``word_prompts`` / ``word_prompts_eval``: ``{prompt}`` for sampling / held-out greedy
      evaluation (new prompts).
    """
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sft = [{"prompt": _prompt(rng),
            "response": " ".join(rng.choice(WORDS) for _ in range(3)) + "."}
           for _ in range(num_sft)]
    prompts = [{"prompt": _prompt(rng)} for _ in range(num_prompts + num_eval)]
    paths = {"words_sft": out / "words_sft.jsonl", "word_prompts": out / "word_prompts.jsonl",
             "word_prompts_eval": out / "word_prompts_eval.jsonl"}
    for key, rows in (("words_sft", sft), ("word_prompts", prompts[:num_prompts]),
                      ("word_prompts_eval", prompts[num_prompts:])):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


BAD_STEP_WORDS = ("no", "bad")
"""A step that holds one of these words is a bad step in :func:`write_prm_datasets`."""


def write_prm_datasets(out_dir: str | os.PathLike, placeholder: str, seed: int = 0,
                       num_train: int = 96, num_eval: int = 32) -> dict[str, Path]:
    """``prm_train`` / ``prm_eval`` jsonl: ``{input, prompt, response, label}``; ``input`` is
    the prompt followed by the response, 2-4 steps of two words each followed by
    `` <placeholder>``; the label per step ``+`` or ``-`` (bad when the step holds a word of
    :data:`BAD_STEP_WORDS`; about half the steps are bad). Held-out rows are new
    combinations."""
    rng = random.Random(seed)
    good_words = [w for w in WORDS if w not in BAD_STEP_WORDS]
    rows = []
    for _ in range(num_train + num_eval):
        steps, labels = [], []
        for _ in range(rng.randint(2, 4)):
            bad = rng.random() < 0.5
            words = [rng.choice(good_words), rng.choice(BAD_STEP_WORDS if bad else good_words)]
            rng.shuffle(words)
            steps.append(" ".join(words) + f" {placeholder}")
            labels.append("-" if bad else "+")
        prompt, response = _prompt(rng), " " + " ".join(steps)
        rows.append({"input": prompt + response, "prompt": prompt, "response": response,
                     "label": labels})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"prm_train": out / "prm_train.jsonl", "prm_eval": out / "prm_eval.jsonl"}
    for key, part in (("prm_train", rows[:num_train]), ("prm_eval", rows[num_train:])):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths
