"""`python -m bench checkpointing`: the actor's GRPO TrainStep without activation
checkpointing, with selective checkpointing and with full checkpointing: peak memory and
seconds per step.

The work of `python -m bench trl --algo grpo`'s actor (as `bench shared_prompts`):
SmolLM2-135M-Instruct fp32 on CPU (2 threads), ZeRO-0, 16 of the demo's chat-template
prompts x 4 samples of 32 random response tokens, micro-batches of 8 (two prompt groups,
each one shared-prefix row), one 64-row optimizer step with the k3 KL in the loss.

Each mode runs in its own process (`--child MODE`), so one mode's heap cannot lend another
its pages: load, one warm-up step, then `--steps` timed steps. Before each timed step the
heap is trimmed and the kernel's high-water mark reset (`/proc/self/clear_refs`), so
`step_peak_mb` is the process's peak RSS during that step alone and `activations_mb` its
rise over the RSS before it (activations, gradients, the optimizer's temporaries).
`policy_loss` of every step is printed: the modes must agree (checkpointing recomputes the
same values). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("none", "selective", "full")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench checkpointing", description=__doc__)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--steps", type=int, default=2, help="timed steps per mode (+1 warm-up)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=4, help="samples per prompt")
    p.add_argument("--response-tokens", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> None:
    """Sets VmHWM back to the current RSS (Linux >= 4.0: clear_refs value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(args: argparse.Namespace) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    from bench.shared_prompts import grpo_actor_work
    from quartet.heap import release_free_heap

    torch.set_num_threads(2)
    mode = args.child
    ckpt = {} if mode == "none" else {"gradient_checkpointing_enable": True,
                                       "gradient_checkpointing_policy": mode}
    actor, _, mb, loss = grpo_actor_work(args.prompts, args.samples, args.response_tokens,
                                         args.micro_batch, **ckpt)
    out: dict = {"step_s": [], "rss_before_mb": [], "step_peak_mb": [], "policy_loss": []}
    for step in range(args.steps + 1):
        release_free_heap()
        before = _status_kb("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        m = actor.train_step(mb, loss)
        dt = time.perf_counter() - t0
        peak = _status_kb("VmHWM")
        out["policy_loss"].append(m["policy_loss"])
        if step > 0:  # step 0 warms up (first-touch of Adam's moments, caches)
            out["step_s"].append(round(dt, 3))
            out["rss_before_mb"].append(before // 1024)
            out["step_peak_mb"].append(peak // 1024)
        print(f"{mode} step {step}: {dt:.2f} s, RSS before {before // 1024} MiB, peak "
              f"{peak // 1024} MiB, policy_loss {m['policy_loss']!r}", file=sys.stderr,
              flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv or [])
    if args.child:
        print(json.dumps(child(args)))
        return 0
    load_start = round(os.getloadavg()[0], 2)
    passthrough = ["--steps", str(args.steps), "--prompts", str(args.prompts), "--samples",
                   str(args.samples), "--response-tokens", str(args.response_tokens),
                   "--micro-batch", str(args.micro_batch)]
    runs = {}
    for mode in args.modes:
        proc = subprocess.run([sys.executable, "-m", "bench", "checkpointing", "--child", mode,
                               *passthrough], check=True, stdout=subprocess.PIPE, text=True)
        runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = {}
    for mode, r in runs.items():
        rise = [p - b for p, b in zip(r["step_peak_mb"], r["rss_before_mb"], strict=True)]
        summary[mode] = {"step_s": statistics.median(r["step_s"]),
                         "step_peak_mb": max(r["step_peak_mb"]),
                         "rss_before_mb": min(r["rss_before_mb"]),
                         "activations_mb": max(rise)}
    losses = {mode: r["policy_loss"] for mode, r in runs.items()}
    print(json.dumps({
        "bench": "checkpointing", "prompts": args.prompts, "samples": args.samples,
        "response_tokens": args.response_tokens, "micro_batch": args.micro_batch,
        "steps": args.steps, "loadavg_1m_start": load_start, "modes": summary,
        "same_losses": all(v == next(iter(losses.values())) for v in losses.values()),
        "runs": runs, "loadavg_1m_end": round(os.getloadavg()[0], 2)}))
    return 0
