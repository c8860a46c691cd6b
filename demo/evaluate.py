"""Held-out evaluation: greedy decoding with vLLM (in-process engine), checked by the verifier.

Runs as its own process (`python -m demo.evaluate MODEL PROBLEMS.jsonl OUT.jsonl`) so
the vLLM engine's memory and threads are gone when it ends; the demo calls it before training
(on the initial model) and after (on the saved HF checkpoint). Greedy decoding (temperature
0) makes the score a deterministic function of the weights and the problems.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def evaluate(model: str, problems: list[dict], max_new_tokens: int, seed: int = 0) -> dict:
    from transformers import AutoTokenizer

    from demo.reward import is_correct, parse_answer
    from quartet.engines.generation import build_generator
    from quartet.types import SamplingConfig

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts, questions = [], []
    for p in problems:
        messages = p["prompt"]
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        questions.append(messages[-1]["content"])
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    # Eager mode: no torch.compile warm-up (~70 s per new checkpoint here), and greedy
    # decoding of a few thousand tokens is as fast either way on CPU.
    generator = build_generator("vllm", model, dtype="float32", seed=seed, enforce_eager=True)
    started = time.perf_counter()
    try:
        stream = generator.generate(prompts, SamplingConfig(temperature=0.0,
                                                            max_new_tokens=max_new_tokens))
        outputs = sorted(stream.collect(), key=lambda o: o.prompt_index)
    finally:
        generator.close()
    seconds = time.perf_counter() - started
    rows = []
    for p, out in zip(problems, outputs, strict=True):
        sample = out.samples[0]
        text = tokenizer.decode(sample.token_ids, skip_special_tokens=True)
        rows.append({"question": questions[len(rows)], "answer": p["answer"], "response": text,
                     "parsed": parse_answer(text), "correct": is_correct(text, p["answer"]),
                     "tokens": len(sample.token_ids),
                     "truncated": sample.finish_reason == "length"})
    return {"rows": rows, "seconds": seconds,
            "tokens": sum(r["tokens"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo.evaluate")
    ap.add_argument("model")
    ap.add_argument("problems", help="jsonl with prompt and answer")
    ap.add_argument("out", help="where to write per-problem results (jsonl)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    problems = [json.loads(line) for line in Path(args.problems).read_text().splitlines()]
    result = evaluate(args.model, problems, args.max_new_tokens, args.seed)
    out = Path(args.out)
    with open(out, "w") as f:
        for row in result["rows"]:
            f.write(json.dumps(row) + "\n")
    summary = {"n": len(result["rows"]), "correct": sum(r["correct"] for r in result["rows"]),
               "seconds": result["seconds"], "tokens": result["tokens"]}
    out.with_suffix(".summary.json").write_text(json.dumps(summary))
    print(json.dumps(summary), flush=True)
    sys.stdout.flush()
    # vLLM's in-process engine leaves non-daemon threads behind; the results are written.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
