"""Fault injection: a PPO run on the tiny model where a role process chosen at random is
killed with SIGKILL every k iterations, compared with the same run left alone.

Both runs are `quartet ppo` (actor, critic, reference, reward and rollout processes) with
the same seed and a checkpoint every iteration. Reported: iterations completed, restarts
(from the role logs), updates lost or applied twice (the actor's optimizer-step counter at
the end, against the fault-free run's), and whether every metric row equals the fault-free
run's (volatile timings excluded). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quartet.testing.faults import kill, read_metrics, role_pid, runs_differences

ROLES = ("actor", "critic", "reference", "reward0", "rollout0")
REWARD = Path(__file__).resolve().parents[1] / "examples" / "rewards" / "length_reward.py"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench faults", description=__doc__)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--kill-every", type=int, default=3,
                   help="SIGKILL a random role after every this many iterations")
    p.add_argument("--seed", type=int, default=0, help="choice of the roles to kill")
    p.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    return p.parse_args(argv)


def command(out: Path, model: Path, prompts: Path, iterations: int) -> list[str]:
    return [
        sys.executable, "-m", "quartet.cli.main", "ppo",
        "--actor.model_name_or_path", str(model), "--data.dataset", str(prompts),
        "--reward.func", str(REWARD), "--rollout.batch_size", "16",
        "--rollout.max_new_tokens", "8", "--train.batch_size", "8",
        "--train.micro_batch_size", "8", "--train.num_iterations", str(iterations),
        "--ckpt.output_dir", str(out), "--ckpt.save_steps", "1", "--lr_scheduler", "constant",
        "--ds.param_dtype", "fp32", "--ds.zero_stage", "0", "--actor.learning_rate", "5e-3",
        "--critic.learning_rate", "5e-3", "--algo.kl.init_coef", "0.01",
        "--restart.max_restarts", "5",
    ]


def run(out: Path, cmd: list[str], kill_every: int, rng: random.Random | None,
        iterations: int) -> tuple[int, list[str], float]:
    """Runs `cmd`; with `rng`, kills a random role after every `kill_every` rows."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    killed: list[str] = []
    with open(out / "ppo.out", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    next_kill = kill_every
    while proc.poll() is None:
        rows = len(read_metrics(out))
        if rng is not None and rows >= next_kill and next_kill < iterations:
            role = rng.choice(ROLES)
            try:
                kill(role_pid(proc.pid, role))
                killed.append(f"{role}@{rows}")
            except LookupError:
                killed.append(f"{role}@{rows} (not found)")
            next_kill += kill_every
        time.sleep(0.05)
    return proc.returncode, killed, time.perf_counter() - start


def restarts_in(logs: Path) -> int:
    return sum(p.read_text(errors="replace").count("---- restart ")
               for p in logs.glob("*.log"))


def main(argv: list[str] | None = None) -> int:
    from quartet.testing import tiny_model_dir, write_tiny_datasets

    args = parse(list(sys.argv[1:] if argv is None else argv))
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-faults-"))
    model = tiny_model_dir()
    prompts = write_tiny_datasets(root / "data")["prompts"]
    clean_code, _, clean_s = run(root / "clean", command(root / "clean", model, prompts,
                                                         args.iterations),
                                 args.kill_every, None, args.iterations)
    code, killed, faulty_s = run(root / "faulty", command(root / "faulty", model, prompts,
                                                          args.iterations),
                                 args.kill_every, random.Random(args.seed), args.iterations)
    clean, faulty = read_metrics(root / "clean"), read_metrics(root / "faulty")
    steps = [rows[-1].get("actor/policy_version", 0.0) if rows else 0.0
             for rows in (clean, faulty)]
    drift = steps[1] - steps[0]
    diffs = runs_differences(faulty, clean)
    result = {
        "bench": "faults", "iterations": args.iterations, "kill_every": args.kill_every,
        "killed": killed, "exit_code": code, "clean_exit_code": clean_code,
        "iterations_completed": len(faulty), "restarts": restarts_in(root / "faulty" / "logs"),
        "lost_updates": max(0.0, -drift), "duplicated_updates": max(0.0, drift),
        "final_metrics_equal_fault_free": not diffs and len(clean) == args.iterations,
        "differences": diffs[:5], "seconds_clean": round(clean_s, 1),
        "seconds_faulty": round(faulty_s, 1), "out": str(root),
    }
    for k, v in result.items():
        if k != "differences":
            print(f"{k:>32}: {v}")
    print(json.dumps(result))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
