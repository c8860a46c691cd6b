"""`python -m bench overhead`: the same PPO work through services and in-process, one run.

`--modes services,services-async` instead measures async generation (iteration k+1 generated
while k trains) against the synchronous loop; `async_speedup` = sync / async s/iteration.

Both modes run the identical `PPOLoop` with identical settings and seeds, and (by default,
`--threads equal`) the same compute threads for every role: the in-process run is one
process with one `OMP_NUM_THREADS`, so the services get that count in every phase too,
instead of their thread plan (which gives the rollout every core to generate). The only
difference is then the transport (gRPC services in separate processes vs direct calls). The
first iteration of each mode is warm-up and not timed.

The statistic, and why: on a shared host the load from other jobs comes and goes over tens
of seconds, and it only ever slows an iteration down. Measured one mode after the other,
a busy minute landed on one mode only and moved `ratio` between 0.70 and 1.22 in runs of
the same code (docs/benchmarks.md, fourth pass). So by default (`--order auto`) both modes
are started first and their iterations alternate (each round starts with the next mode),
and `ratio` = the median of the services' iteration seconds / the median of the in-process
ones: alternating puts both modes under the same load, the median ignores the few iterations
a burst stalled. `ratio_mean` is the previous statistic (mean / mean) over the same
iterations. `ratio_ci95` is a bootstrap interval of `ratio` over the rounds (resampled whole,
since a round's iterations share the host's load): how much `ratio` says. With 12
iterations a mode it spanned +-6-8% on a busy 2-core host (docs/benchmarks.md, tenth pass),
so 40 are timed by default. Async modes run one after the other (their rollout generates
ahead in the background, so it would compute during the other mode's iterations). The last
line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import time
from pathlib import Path

from bench.scratch import Scratch


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench overhead", description=__doc__)
    p.add_argument("--iterations", type=int, default=40,
                   help="timed iterations per mode (+1 warm-up each); `ratio_ci95` narrows "
                        "with their square root")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prompts", type=int, default=16, help="prompts per iteration")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--estimator", default="gae")
    p.add_argument("--modes", default="services,inprocess")
    p.add_argument("--threads", default="equal", choices=["equal", "planned"],
                   help="equal (default): every service computes on OMP_NUM_THREADS threads "
                        "in every phase, as every role does in the in-process run, so only "
                        "the transport differs; planned: the services' own thread plan "
                        "(the rollout gets all cores to generate)")
    p.add_argument("--order", default="auto", choices=["auto", "alternate", "sequential"],
                   help="alternate: every mode is started first, then their iterations take "
                        "turns (round i starts with mode i mod n), so the host's load hits "
                        "every mode alike; sequential: one mode's iterations after the "
                        "other's; auto (default): alternate, sequential when a mode is async")
    args = p.parse_args(argv)
    if args.iterations < 1:
        p.error(f"--iterations: must be >= 1 (timed iterations per mode), got {args.iterations}")
    return args


def job_config(args: argparse.Namespace, model: Path, data: Path, out: Path,
               async_enable: bool = False):
    from quartet.config.base import parse_config
    from services.coordinator.config import PPOJobConfig

    reward = Path(__file__).resolve().parents[1] / "examples" / "rewards" / "length_reward.py"
    return parse_config(PPOJobConfig, [
        "--actor.model_name_or_path", str(model), "--data.dataset", str(data),
        "--reward.func", str(reward), "--rollout.batch_size", str(args.prompts),
        "--rollout.max_new_tokens", str(args.max_new_tokens),
        "--train.batch_size", str(args.prompts // 2), "--train.micro_batch_size", "4",
        "--train.num_iterations", str(args.iterations + 1), "--ckpt.output_dir", str(out),
        "--ds.zero_stage", "0", "--ds.param_dtype", "fp32", "--lr_scheduler", "constant",
        "--vllm.backend", args.backend, "--algo.advantage.estimator", args.estimator,
        # compiled in both modes: the in-process engine always was (vLLM's default), and the
        # services would otherwise run eagerly on CPU (their start-up default)
        "--vllm.enforce_eager", "false",
    ] + (["--rollout.n_samples_per_prompt", "2"] if args.estimator != "gae" else [])
      + (["--train.async_enable", "--algo.advantage.is_correction_level", "token",
          "--algo.advantage.is_correction_mode", "clip",
          "--algo.advantage.is_correction_threshold", "2.0"] if async_enable else []))


class ModeRun:
    """One mode's loop and what its timed iterations measured."""

    def __init__(self, name: str, loop) -> None:
        self.name = name
        self.loop = loop
        self.iter_s: list[float] = []
        self.phases: dict[str, float] = {}

    def warm_up(self) -> None:
        self.loop.iteration(0)  # first forward passes, allocator, JIT paths: not timed

    def step(self, iteration: int) -> None:
        start = time.perf_counter()
        metrics = self.loop.iteration(iteration)
        self.iter_s.append(time.perf_counter() - start)
        for k, v in metrics.items():
            if k.startswith("time/"):
                self.phases[k[5:]] = self.phases.get(k[5:], 0.0) + v

    def summary(self) -> dict:
        n = len(self.iter_s)
        return {"s_per_iter": round(statistics.mean(self.iter_s), 4),
                "median_s_per_iter": round(statistics.median(self.iter_s), 4),
                **{f"{k}_s": round(v / n, 4) for k, v in self.phases.items()},
                "iter_s": [round(x, 4) for x in self.iter_s]}


def ratio_interval(a: list[float], b: list[float], paired: bool, level: float = 0.95,
                   resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval (percentile, `level`) of median(a) / median(b): how far the
    `ratio` of these iterations could be from the one more iterations would give.

    `paired` (alternating modes): a[i] and b[i] ran in the same round, under the same load,
    so whole rounds are resampled and a busy stretch of the host moves both medians alike;
    otherwise each mode's iterations are resampled on their own."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        ia = [rng.randrange(len(a)) for _ in a]
        ib = ia if paired else [rng.randrange(len(b)) for _ in b]
        ratios.append(statistics.median(a[i] for i in ia) / statistics.median(b[i] for i in ib))
    ratios.sort()
    tail = (1 - level) / 2
    return (round(ratios[int(tail * resamples)], 3),
            round(ratios[min(int((1 - tail) * resamples), resamples - 1)], 3))


def resolve_order(order: str, modes: list[str]) -> str:
    asynchronous = [m for m in modes if m.endswith("-async")]
    if order == "auto":
        return "sequential" if asynchronous else "alternate"
    if order == "alternate" and asynchronous:
        raise SystemExit(f"--order alternate: {asynchronous[0]} generates ahead in the "
                         "background, so its rollout would compute during the other mode's "
                         "iterations; use --order sequential (or auto)")
    return order



def bench_model(hidden_size: int, layers: int) -> Path:
    """The benchmark's tiny Llama (built once, cached), also `bench weight_plane`'s."""
    from quartet.testing import tiny_model_dir

    return tiny_model_dir(name=f"bench-llama-h{hidden_size}-l{layers}",
                          hidden_size=hidden_size, num_hidden_layers=layers,
                          intermediate_size=hidden_size * 2,
                          num_attention_heads=hidden_size // 64,
                          num_key_value_heads=hidden_size // 64)

def main(argv: list[str] | None = None) -> int:
    args = parse(list(argv or []))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from quartet.config.model import ModelConfig
    from quartet.models.loading import load_tokenizer
    from quartet.testing import write_tiny_datasets
    from services.coordinator.job import loop_settings
    from services.coordinator.ppo_loop import PPOLoop
    from services.coordinator.prompts import load_prompts

    modes = args.modes.split(",")
    order = resolve_order(args.order, modes)
    model = bench_model(args.hidden_size, args.layers)
    # the roles' logs, checkpoints and data: removed however the bench ends
    with Scratch("quartet-bench-overhead-") as scratch:
        work = scratch.path
        data = write_tiny_datasets(work / "data")["prompts"]
        tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(model)))

        def decode(ids):
            return tokenizer.decode(ids, skip_special_tokens=True)

        def start(mode: str, stack: contextlib.ExitStack) -> ModeRun:
            """`mode`'s roles (services stop when `stack` closes) and its warmed-up loop."""
            cfg = job_config(args, model, data, work / mode, async_enable=mode.endswith("-async"))
            prompts = load_prompts(cfg.data, tokenizer, cfg.rollout.prompt_max_len)
            if mode.startswith("services"):
                from quartet.launch.threads import uniform_threads
                from services.coordinator.launch import PPOServices, thread_plan

                threads = (uniform_threads(thread_plan(cfg), torch.get_num_threads())
                           if args.threads == "equal" else None)
                roles = stack.enter_context(PPOServices(cfg, work / mode, threads=threads)).roles()
            else:
                from services.coordinator.inprocess import InProcessRoles

                roles = stack.enter_context(InProcessRoles(cfg)).roles()
            run = ModeRun(mode, PPOLoop(roles, loop_settings(cfg, str(work / mode), "bench"),
                                        prompts, decode))
            stack.callback(run.loop.close)
            run.warm_up()
            return run

        result: dict = {"bench": "overhead", "model": model.name, "iterations": args.iterations,
                        "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                        "backend": args.backend, "estimator": args.estimator,
                        "threads": args.threads, "order": order,
                        "loadavg_1m_start": round(os.getloadavg()[0], 2)}
        print(f"overhead bench: {model.name}, {args.iterations} timed iterations of "
              f"{args.prompts} prompts x {args.max_new_tokens} tokens ({args.backend}), "
              f"modes {order}", flush=True)
        runs: list[ModeRun] = []
        if order == "alternate":
            with contextlib.ExitStack() as stack:
                runs = [start(mode, stack) for mode in modes]
                for i in range(args.iterations):  # each round starts with the next mode
                    for run in runs[i % len(runs):] + runs[:i % len(runs)]:
                        run.step(i + 1)
        else:
            for mode in modes:
                with contextlib.ExitStack() as stack:
                    run = start(mode, stack)
                    for i in range(args.iterations):
                        run.step(i + 1)
                runs.append(run)
        for run in runs:
            result[run.name] = summary = run.summary()
            print(f"  {run.name:<14} median {summary['median_s_per_iter']:.3f} s/iteration "
                  f"(mean {summary['s_per_iter']:.3f})  " + "  ".join(
                      f"{k}={v:.3f}" for k, v in summary.items()
                      if k.endswith("_s") and k != "iter_s"), flush=True)

        def ratio(a: str, b: str, key: str) -> float:
            return round(result[a][key] / result[b][key], 3)

        if "services" in result and "inprocess" in result:
            result["ratio"] = ratio("services", "inprocess", "median_s_per_iter")
            result["ratio_mean"] = ratio("services", "inprocess", "s_per_iter")
            result["ratio_ci95"] = ratio_interval(result["services"]["iter_s"],
                                                  result["inprocess"]["iter_s"],
                                                  paired=order == "alternate")
        if "services" in result and "services-async" in result:
            result["async_speedup"] = ratio("services", "services-async", "median_s_per_iter")
            result["async_speedup_mean"] = ratio("services", "services-async", "s_per_iter")
        result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result))
    return 0
