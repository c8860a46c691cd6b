"""SFT -> GRPO with a verifier reward on the tiny model raises held-out accuracy.

The task: "say A B :" -> "A B" over 16 words; 180 word pairs train, 76 unseen pairs are held
out. A short SFT gets the copy behaviour partly right (greedy held-out accuracy ~0.3); GRPO
(group_norm, 8 samples per prompt) with the verifier as the only reward then improves it on
pairs it never trained on. Held-out accuracy is greedy generation with transformers, outside
quartet's own engines.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
WORDS = "cat dog bird fish red blue green happy sad big small fast slow day night one".split()


def write_task(root: Path) -> tuple[Path, list[dict]]:
    pairs = [(a, b) for a in WORDS for b in WORDS]
    random.Random(0).shuffle(pairs)
    rows = [{"question": f"say {a} {b}", "response": f"{a} {b}", "label": f"{a} {b}"}
            for a, b in pairs]
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:180]))
    return train, rows[180:]


def heldout_accuracy(model_dir: Path, rows: list[dict]) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    right = 0
    for r in rows:
        ids = tok(r["question"] + " :", return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        right += text.split()[:2] == r["label"].split()
    return right / len(rows)


def _run(cmd: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "quartet.cli.main", *cmd],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_grpo_with_a_verifier_raises_heldout_accuracy(tmp_path, tiny_model_path):
    train, heldout = write_task(tmp_path)
    sft = tmp_path / "sft"
    _run(["sft", "--model.model_name_or_path", str(tiny_model_path),
          "--data.dataset", str(train), "--data.input_key", "question",
          "--data.output_key", "response", "--data.input_template", "{} :",
          "--data.max_len", "32", "--train.batch_size", "16", "--train.micro_batch_size", "16",
          "--train.max_epochs", "3", "--adam.lr", "2e-3", "--lr_scheduler", "constant",
          "--ds.zero_stage", "0", "--ds.param_dtype", "fp32", "--ckpt.output_dir", str(sft)])
    before = heldout_accuracy(sft, heldout)
    grpo = tmp_path / "grpo"
    _run(["ppo", "--actor.model_name_or_path", str(sft), "--data.dataset", str(train),
          "--data.input_key", "question", "--data.input_template", "{} :",
          "--data.label_key", "label",
          "--reward.func", str(HERE / "rewards" / "copy_verifier.py"),
          "--rollout.batch_size", "16", "--rollout.n_samples_per_prompt", "8",
          "--rollout.max_new_tokens", "4", "--rollout.temperature", "0.6",
          "--train.batch_size", "64", "--train.micro_batch_size", "32",
          "--train.num_iterations", "10", "--algo.advantage.estimator", "group_norm",
          "--algo.kl.init_coef", "0", "--actor.learning_rate", "2e-4",
          "--lr_scheduler", "constant", "--ds.zero_stage", "0", "--ds.param_dtype", "fp32",
          "--ckpt.output_dir", str(grpo)])
    after = heldout_accuracy(grpo / "checkpoints" / "hf" / "final", heldout)
    history = [json.loads(x) for x in (grpo / "metrics.jsonl").read_text().splitlines()]
    # measured: held-out 0.30 -> 0.50 (76 pairs); training reward 0.21 -> 0.38
    assert 0.05 < before < 0.7, before
    assert after >= before + 0.12, (before, after)
    assert sum(m["reward"] for m in history[-3:]) > sum(m["reward"] for m in history[:3])
