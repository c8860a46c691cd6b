"""The demo's task: short arithmetic word problems with an exactly computable answer.

Problems are generated from a seed (`random.Random`), so the train and held-out splits are the
same on every machine; the held-out split uses a different seed stream and is checked to share
no question with the training split. The verifier (`reward.py` next to this file) parses the
response's final number and compares it with the label.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from demo.reward import is_correct, parse_answer

__all__ = ["Problem", "is_correct", "make_splits", "parse_answer", "write_jsonl"]

NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Leo", "Emma", "Max", "Zoe", "Noah", "Lily")
ITEMS = ("apples", "books", "coins", "stickers", "marbles", "pencils", "cards", "shells",
         "cookies", "stamps", "balloons", "toys")

INSTRUCTION = "Reply with only the final number."
SYSTEM = "Solve the math problem."
"""A short system message: it replaces the template's ~20-token default, and every prompt
token is paid for in each forward/backward pass."""


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int

    def prompt(self) -> str:
        return f"{self.question} {INSTRUCTION}"

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.prompt()}]

    @property
    def kind(self) -> str:
        return kind_of(self.question)


def kind_of(question: str) -> str:
    return "add" if " more." in question else "sub" if "gives away" in question else "mul"


def make_problem(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    kind = rng.choice(("add", "sub", "mul"))
    if kind == "add":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return Problem(q, a + b)
    if kind == "sub":
        a = rng.randint(10, 30)
        b = rng.randint(2, a - 2)
        q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        return Problem(q, a - b)
    a, b = rng.randint(2, 5), rng.randint(2, 10)
    q = f"{name} buys {a} boxes with {b} {item} in each box. How many {item} in total?"
    return Problem(q, a * b)


def make_split(n: int, seed: int, exclude: set[str] | None = None) -> list[Problem]:
    """`n` distinct problems from `seed`, none of whose questions is in `exclude`."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    while len(out) < n:
        p = make_problem(rng)
        if p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def make_splits(n_train: int, n_eval: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Held-out problems first (seed*2+1), then training problems that avoid them (seed*2)."""
    held_out = make_split(n_eval, seed * 2 + 1)
    train = make_split(n_train, seed * 2, exclude={p.question for p in held_out})
    return train, held_out


def write_jsonl(problems: list[Problem], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for p in problems:
            f.write(json.dumps({"prompt": p.messages(), "answer": str(p.answer)}) + "\n")
    return path
