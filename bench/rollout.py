"""Rollout throughput: the gRPC service against the bare engine, and vLLM against HF.

    python -m bench rollout [--model DIR] [--num-prompts 64] [--max-new-tokens 128]

Each backend is measured twice in the same run, interleaved: the bare engine driven
in this process (vLLM's `LLM.generate`, or transformers' `generate`), and the same engine
behind `quartet serve rollout` in a subprocess, called through `GrpcRolloutClient`. Tokens/s
counts generated tokens over wall time (sampling at temperature 1, no log-probs). The last
line is JSON; `ratio` is vLLM service / vLLM bare engine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.scratch import Scratch

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench rollout", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF model directory (default: the tiny Llama)")
    p.add_argument("--backends", default="vllm,hf", help="comma-separated: vllm, hf")
    p.add_argument("--num-prompts", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=16, help="mean prompt length (ragged)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--logprobs", action="store_true",
                   help="also return the sampled tokens' log-probs (as PPO rollouts do)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds; each mode's best run is compared (least disturbed)")
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--kv-cache-bytes", type=int, default=512 << 20)
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                   help="vLLM without torch.compile, in both modes (default on: fast start)")
    return p.parse_args(argv)


def make_prompts(args, vocab_size: int) -> list[list[int]]:
    rng = random.Random(0)
    lo = max(2, args.prompt_len // 2)
    return [[1] + [rng.randrange(10, vocab_size) for _ in range(rng.randint(lo, 2 * lo) - 1)]
            for _ in range(args.num_prompts)]


def interleaved(modes: dict, repeats: int) -> dict[str, list[float]]:
    """tokens/s of each mode over `repeats` rounds, the modes alternating within a round (so
    a burst of load from other processes hits both alike); one warm-up run each first."""
    for fn in modes.values():
        fn()
    rates: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            t = time.perf_counter()
            tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - t))
    return rates


# Bare engines ------------------------------------------------------------------------------
def bare_vllm(args, prompts):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    affinity = os.sched_getaffinity(0)
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
              kv_cache_memory_bytes=args.kv_cache_bytes, enforce_eager=args.enforce_eager,
              seed=0)
    os.sched_setaffinity(0, affinity)  # vLLM pins this process; the client needs its cores
    params = SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_new_tokens, seed=0,
                            logprobs=0 if args.logprobs else None)
    inputs = [{"prompt_token_ids": p} for p in prompts]

    def run() -> int:
        outs = llm.generate(inputs, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    return run


def bare_hf(args, prompts):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model.eval()
    eos = model.generation_config.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1

    @torch.inference_mode()
    def run() -> int:
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens,
                             num_return_sequences=args.n, pad_token_id=0,
                             return_dict_in_generate=True, output_scores=args.logprobs)
        new = out.sequences[:, width:]
        if args.logprobs:
            steps = torch.stack([s.log_softmax(-1) for s in out.scores], dim=1)
            steps.gather(-1, new[:, : steps.shape[1], None])
        total = 0
        for row in new.tolist():
            total += next((i + 1 for i, t in enumerate(row) if t == eos), len(row))
        return total

    return run


# Service -----------------------------------------------------------------------------------
class Service:
    """`quartet serve rollout` in `scratch` (its log and port file there; the scratch stops
    it and removes them however the bench ends)."""

    def __init__(self, args, backend: str, scratch: Scratch) -> None:
        self.workdir = scratch.path / backend
        self.workdir.mkdir()
        port_file = self.workdir / "port"
        self.log_path = self.workdir / "service.log"
        cmd = [sys.executable, "-m", "quartet.cli.main", "serve", "rollout", "--port", "0",
               "--port-file", str(port_file), "--model", args.model, "--backend", backend,
               "--dtype", args.dtype, "--max-model-len", str(args.max_model_len),
               "--kv-cache-bytes", str(args.kv_cache_bytes),
               "--enforce-eager" if args.enforce_eager else "--no-enforce-eager"]
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get(
            "PYTHONPATH", "")}
        with open(self.log_path, "w") as log:
            self.proc = scratch.popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                      env=env)
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rollout service ({backend}) did not start; the end of its "
                                   f"log:\n{self.log_tail()}")
            time.sleep(0.1)
        self.address = f"127.0.0.1:{int(port_file.read_text())}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait(self) -> None:
        from quartet.clients.health import wait_for_serving

        try:
            wait_for_serving(self.address, timeout_s=300, process=self.proc, what="rollout")
        except Exception as exc:  # the scratch (and the log) goes with the bench: show it
            raise RuntimeError(f"{exc}; the end of the rollout's log:\n{self.log_tail()}"
                               ) from exc

    def runner(self, args, prompts):
        from quartet.clients.rollout import GrpcRolloutClient
        from quartet.types import SamplingConfig

        client = GrpcRolloutClient(self.address)
        sampling = SamplingConfig(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens,
                                  seed=0, logprobs=args.logprobs)

        def run() -> int:
            outs = client.generate(prompts, sampling)
            return sum(len(s.token_ids) for o in outs for s in o.samples)

        return run


def main(argv: list[str] | None = None) -> int:
    args = parse(list(argv or []))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.model is None:
        from quartet.testing import tiny_model_dir

        args.model = str(tiny_model_dir())
    from quartet.engines.generation.checkpoint import model_config

    vocab = int(model_config(args.model).get("vocab_size", 512))
    prompts = make_prompts(args, vocab)
    backends = [b for b in args.backends.split(",") if b]
    print(f"rollout bench: model={args.model} prompts={len(prompts)} "
          f"(mean len {statistics.mean(map(len, prompts)):.1f}) n={args.n} "
          f"max_new_tokens={args.max_new_tokens} repeats={args.repeats} "
          f"logprobs={args.logprobs} eager={args.enforce_eager}", flush=True)
    result: dict = {"bench": "rollout", "model": Path(args.model).name,
                    "num_prompts": len(prompts), "n": args.n,
                    "max_new_tokens": args.max_new_tokens, "logprobs": args.logprobs,
                    "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    for backend in backends:
        # The service starts (and idles) before the bare engine is measured in this process.
        with Scratch(f"bench-rollout-{backend}-") as scratch:
            service = Service(args, backend, scratch)
            service.wait()
            bare = (bare_vllm if backend == "vllm" else bare_hf)(args, prompts)
            served = service.runner(args, prompts)
            rates = interleaved({"bare": bare, "service": served}, args.repeats)
        bare_rate, svc_rate = max(rates["bare"]), max(rates["service"])
        for name, rate in (("bare engine", bare_rate), ("service", svc_rate)):
            key = "bare" if name == "bare engine" else "service"
            print(f"{backend:>5} {name:<11}: best {rate:9.1f} tok/s, median "
                  f"{statistics.median(rates[key]):9.1f} tok/s", flush=True)
        print(f"{backend:>5} service / bare engine: {svc_rate / bare_rate:.3f}", flush=True)
        result[f"{backend}_bare_tok_s"] = round(bare_rate, 1)
        result[f"{backend}_service_tok_s"] = round(svc_rate, 1)
        result[f"{backend}_ratio"] = round(svc_rate / bare_rate, 3)
    if "vllm" in backends:
        result["ratio"] = result["vllm_ratio"]
    elif backends:
        result["ratio"] = result[f"{backends[0]}_ratio"]
    if "vllm" in backends and "hf" in backends:
        result["vllm_over_hf_bare"] = round(result["vllm_bare_tok_s"] / result["hf_bare_tok_s"],
                                            2)
        print(f"vLLM / HF (bare): {result['vllm_over_hf_bare']:.2f}x")
    result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
