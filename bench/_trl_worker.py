"""TRL's side of `python -m bench trl`: runs inside the benchmark's own TRL virtualenv.

Standalone on purpose (it never imports quartet): the TRL environment has only TRL's pins.
Arguments name the work; the result (per-step seconds, load seconds) is written as JSON to
`--out`. The parent process measures the whole command's wall time and peak memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

STARTED = time.perf_counter()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--algo", required=True, choices=["grpo", "dpo", "rm"])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, required=True, help="optimizer steps (warm-up included)")
    p.add_argument("--micro-batch", type=int, required=True)
    p.add_argument("--batch", type=int, required=True, help="rows (GRPO) or pairs per step")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--reward-file", default="")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args()


def verifier(path: str):
    """The benchmark's rule reward (an OpenRLHF-style file) as a TRL reward function."""
    spec = importlib.util.spec_from_file_location("bench_reward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def reward(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(module.is_correct(t, a)) for t, a in zip(texts, answer, strict=True)]

    return reward


def main() -> None:
    args = parse()
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback

    torch.manual_seed(args.seed)
    marks: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())

    common = dict(
        output_dir=args.workdir, max_steps=args.steps, learning_rate=args.lr,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.batch // args.micro_batch,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        report_to="none", save_strategy="no", logging_steps=1, seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    data = load_dataset("json", data_files=args.data, split="train")
    if args.algo == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        cfg = GRPOConfig(
            **{**common, "per_device_train_batch_size": args.micro_batch},
            num_generations=args.num_generations, max_completion_length=args.max_new_tokens,
            temperature=args.temperature, beta=args.beta, loss_type="dapo",
            num_iterations=1, use_vllm=False, log_completions=False,
            model_init_kwargs={"dtype": torch.float32})
        trainer = GRPOTrainer(model=args.model, reward_funcs=verifier(args.reward_file),
                              args=cfg, train_dataset=data, callbacks=[StepClock()])
    elif args.algo == "dpo":
        from trl import DPOConfig, DPOTrainer

        cfg = DPOConfig(**common, beta=args.beta, loss_type=["sigmoid"],
                        max_length=args.max_len, model_init_kwargs={"dtype": torch.float32})
        trainer = DPOTrainer(model=args.model, args=cfg, train_dataset=data,
                             callbacks=[StepClock()])
    else:
        from trl import RewardConfig, RewardTrainer

        cfg = RewardConfig(**common, max_length=args.max_len,
                           model_init_kwargs={"dtype": torch.float32})
        trainer = RewardTrainer(model=args.model, args=cfg, train_dataset=data,
                                callbacks=[StepClock()])
    ready = time.perf_counter()
    trainer.train()
    trainer.save_model(os.path.join(args.workdir, "final"))  # quartet saves its result too
    step_s = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    result = {"step_s": step_s, "load_s": ready - STARTED, "threads": torch.get_num_threads(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
