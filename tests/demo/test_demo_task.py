"""The demo's task, verifier, statistics and report: fast, no model, no services."""

from __future__ import annotations

import json
import math

import pytest

from demo.report import summarize
from demo.reward import is_correct, parse_answer, reward_func
from demo.stats import mcnemar_exact, paired_difference, two_proportion, wilson
from demo.task import Problem, kind_of, make_splits, write_jsonl


def test_splits_are_deterministic_and_disjoint():
    train_a, held_a = make_splits(500, 256, seed=42)
    train_b, held_b = make_splits(500, 256, seed=42)
    assert train_a == train_b and held_a == held_b
    assert len({p.question for p in held_a}) == 256
    assert not {p.question for p in train_a} & {p.question for p in held_a}
    assert make_splits(50, 50, seed=1)[1] != held_a[:50]


def test_answers_are_exact():
    _, held = make_splits(0, 300, seed=0)
    kinds = {p.kind for p in held}
    assert kinds == {"add", "sub", "mul"}
    for p in held:
        nums = [int(x) for x in p.question.replace("?", " ").replace(".", " ").split()
                if x.isdigit()]
        a, b = nums
        expected = {"add": a + b, "sub": a - b, "mul": a * b}[p.kind]
        assert p.answer == expected, p
        assert p.answer > 0


@pytest.mark.parametrize("text,value", [
    ("42", 42), ("The answer is 17.", 17), ("10 - 5 = 5 stamps.", 5), ("1,200", 1200),
    ("so she has", None), ("3.5", None), ("-4", -4), ("7.0", 7),
])
def test_parse_answer(text, value):
    assert parse_answer(text) == value


def test_reward_func_is_the_verifier():
    out = reward_func(["q1 12", "q2 5 = 7"], ["q1 ", "q2 "], ["12", "5"],
                      responses=["12", "5 = 7"])
    assert out["rewards"] == [1.0, 0.0]
    assert out["extra_logs"]["has_number"] == [1.0, 1.0]
    # without responses it strips the prompt from the query
    assert reward_func(["Q: 3"], ["Q: "], ["3"])["rewards"] == [1.0]
    assert is_correct("Ben has 2 + 3 = 5 apples", 5)
    assert not is_correct("Ben has 5 apples and", "6")


def test_prompts_are_chat_messages_with_labels(tmp_path):
    path = write_jsonl([Problem("Tom has 2 apples and gets 3 more. How many?", 5)],
                       tmp_path / "p.jsonl")
    row = json.loads(path.read_text())
    assert row["answer"] == "5"
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert kind_of(row["prompt"][1]["content"]) == "add"


def test_wilson_interval():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17
    assert wilson(20, 20)[1] == 1.0


def test_two_proportion_and_mcnemar():
    z, p = two_proportion(50, 200, 80, 200)
    assert z == pytest.approx(3.2, abs=0.05) and p < 0.01
    assert two_proportion(10, 100, 10, 100) == (0.0, 1.0)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    # 0 vs 6 discordant pairs: 2 * 0.5**6
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_paired_difference():
    before = [True] * 30 + [False] * 70
    after = [True] * 25 + [False] * 5 + [True] * 30 + [False] * 40
    r = paired_difference(before, after)
    assert r.before == 0.3 and r.after == 0.55
    assert r.diff == pytest.approx(0.25)
    assert r.only_before == 5 and r.only_after == 30
    assert r.diff_low < 0.25 < r.diff_high and r.diff_low > 0
    assert math.isclose(r.mcnemar_p, mcnemar_exact(5, 30))


def test_summarize_marks_significance():
    rows = lambda flags: [{"correct": f} for f in flags]  # noqa: E731
    s = summarize(rows([False] * 100), rows([True] * 20 + [False] * 80))
    assert s["significant"] and s["diff"] == pytest.approx(0.2)
    s = summarize(rows([True, False] * 50), rows([False, True] * 50))
    assert not s["significant"]
