"""`python -m bench overhead`: the same PPO work through services and in-process, one run.

`--modes services,services-async` instead measures async generation (iteration k+1 generated
while k trains) against the synchronous loop; `async_speedup` = sync / async s/iteration.

Both modes run the identical `PPOLoop` with identical settings and seeds, and (by default,
`--threads equal`) the same compute threads for every role: the in-process run is one
process with one `OMP_NUM_THREADS`, so the services get that count in every phase too,
instead of their thread plan (which gives the rollout every core to generate). The only
difference is then the transport (gRPC services in separate processes vs direct calls). The
first iteration of each mode is warm-up and not timed. The last line is JSON with `ratio`
= services seconds per iteration / in-process seconds per iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench overhead", description=__doc__)
    p.add_argument("--iterations", type=int, default=4, help="timed iterations (+1 warm-up)")
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
    return p.parse_args(argv)


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


def timed_loop(roles, cfg, prompts, decode, out: Path) -> dict[str, float]:
    from services.coordinator.job import loop_settings
    from services.coordinator.ppo_loop import PPOLoop

    loop = PPOLoop(roles, loop_settings(cfg, str(out), "bench"), prompts, decode)
    loop.iteration(0)  # warm-up: first forward passes, allocator, JIT paths
    start = time.perf_counter()
    phases: dict[str, float] = {}
    for it in range(1, cfg.train.num_iterations):
        m = loop.iteration(it)
        for k, v in m.items():
            if k.startswith("time/"):
                phases[k[5:]] = phases.get(k[5:], 0.0) + v
    n = cfg.train.num_iterations - 1
    loop.close()
    return {"s_per_iter": (time.perf_counter() - start) / n,
            **{f"{k}_s": v / n for k, v in phases.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse(list(argv or []))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from quartet.config.model import ModelConfig
    from quartet.models.loading import load_tokenizer
    from quartet.testing import tiny_model_dir, write_tiny_datasets
    from services.coordinator.prompts import load_prompts

    model = tiny_model_dir(name=f"bench-llama-h{args.hidden_size}-l{args.layers}",
                           hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                           intermediate_size=args.hidden_size * 2,
                           num_attention_heads=args.hidden_size // 64,
                           num_key_value_heads=args.hidden_size // 64)
    work = Path(tempfile.mkdtemp(prefix="quartet-bench-"))
    data = write_tiny_datasets(work / "data")["prompts"]
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(model)))
    result: dict = {"bench": "overhead", "model": model.name, "iterations": args.iterations,
                    "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                    "backend": args.backend, "estimator": args.estimator,
                    "threads": args.threads,
                    "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    print(f"overhead bench: {model.name}, {args.iterations} timed iterations of "
          f"{args.prompts} prompts x {args.max_new_tokens} tokens ({args.backend})", flush=True)
    for mode in args.modes.split(","):
        cfg = job_config(args, model, data, work / mode, async_enable=mode.endswith("-async"))
        prompts = load_prompts(cfg.data, tokenizer, cfg.rollout.prompt_max_len)

        def decode(ids):
            return tokenizer.decode(ids, skip_special_tokens=True)

        if mode.startswith("services"):
            from quartet.launch.threads import uniform_threads
            from services.coordinator.launch import PPOServices, thread_plan

            threads = (uniform_threads(thread_plan(cfg), torch.get_num_threads())
                       if args.threads == "equal" else None)
            with PPOServices(cfg, work / mode, threads=threads) as services:
                stats = timed_loop(services.roles(), cfg, prompts, decode, work / mode)
        else:
            from services.coordinator.inprocess import build_inprocess_roles

            stats = timed_loop(build_inprocess_roles(cfg), cfg, prompts, decode, work / mode)
        result[mode] = {k: round(v, 4) for k, v in stats.items()}
        print(f"  {mode:<10} {stats['s_per_iter']:.3f} s/iteration  " + "  ".join(
            f"{k}={v:.3f}" for k, v in stats.items() if k != "s_per_iter"), flush=True)
    if "services" in result and "inprocess" in result:
        result["ratio"] = round(result["services"]["s_per_iter"]
                                / result["inprocess"]["s_per_iter"], 3)
    if "services" in result and "services-async" in result:
        result["async_speedup"] = round(result["services"]["s_per_iter"]
                                        / result["services-async"]["s_per_iter"], 3)
    result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return 0
