"""`python -m bench placement`: one short `quartet ppo` run per launcher, with its cost.

Runs the same GAE PPO job (tiny model, critic, reference, rule reward, 2 rollout engines)
with `--launcher local` and `--launcher ray` (a local Ray instance the run starts) and
reports wall time, service start-up time, and the peak memory and process count of
everything the run started (found by a tag in the environment, which Ray's daemons and
workers inherit too).

    python -m bench placement [--launchers local ray] [--iterations 3] [-- extra ppo flags]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def tagged_rss(tag: bytes) -> tuple[int, int]:
    """(bytes of resident memory, processes) of every process whose environment has `tag`."""
    total = count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if tag not in f.read():
                    continue
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
            count += 1
        except OSError:
            continue
    return total, count


def run_once(launcher: str, iterations: int, extra: list[str], workdir: Path) -> dict:
    from quartet.testing import tiny_model_dir, write_tiny_datasets

    model = tiny_model_dir()
    data = write_tiny_datasets(workdir / "data")
    reward = Path(__file__).resolve().parents[1] / "tests/integration/rewards/digit_reward.py"
    out = workdir / launcher
    tag = f"QUARTET_BENCH_TAG={uuid.uuid4().hex}"
    cmd = [sys.executable, "-m", "quartet.cli.main", "ppo", "--launcher", launcher,
           "--actor.model_name_or_path", str(model), "--data.dataset", str(data["prompts"]),
           "--reward.func", str(reward), "--algo.kl.init_coef", "0.01",
           "--vllm.num_engines", "2", "--vllm.backend", "hf",
           "--rollout.batch_size", "8", "--rollout.max_new_tokens", "8",
           "--train.batch_size", "8", "--train.micro_batch_size", "8",
           "--train.num_iterations", str(iterations), "--ckpt.output_dir", str(out),
           "--ds.param_dtype", "fp32", "--ds.zero_stage", "2", *extra]
    peak = {"rss": 0, "procs": 0}
    done = threading.Event()

    def sample() -> None:
        key = tag.encode()
        while not done.is_set():
            rss, procs = tagged_rss(key)
            peak["rss"] = max(peak["rss"], rss)
            peak["procs"] = max(peak["procs"], procs)
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    name, value = tag.split("=")
    started = time.perf_counter()
    sampler.start()
    result = subprocess.run(cmd, capture_output=True, text=True,
                            env={**os.environ, name: value}, timeout=1500)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if result.returncode != 0:
        raise SystemExit(f"{launcher}: quartet ppo failed:\n{result.stderr[-3000:]}")
    ready = re.search(r"services ready in (\d+)s", result.stdout)
    leftover = tagged_rss(tag.encode())[1]
    return {"launcher": launcher, "wall_s": round(wall, 1),
            "services_ready_s": int(ready.group(1)) if ready else None,
            "peak_rss_gib": round(peak["rss"] / 2**30, 2), "peak_processes": peak["procs"],
            "processes_left_after": leftover}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m bench placement")
    p.add_argument("--launchers", nargs="+", default=["local", "ray"],
                   choices=["local", "ray"])
    p.add_argument("--iterations", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-placement-") as tmp:
        for name in args.launchers:
            print(json.dumps(run_once(name, args.iterations, extra, Path(tmp))), flush=True)
    return 0
