"""`python -m bench trl --algo grpo|dpo|rm`: quartet against TRL on identical work, one run.

Both sides train SmolLM2-135M-Instruct (fp32, CPU, ZeRO-0 / plain torch) from the same
plain HF directory (`demo.model.prepare_model`), on the same data, with the same
batch and micro-batch sizes; the runs are interleaved (quartet, TRL, then TRL, quartet with
`--repeats 2` ...) so the shared host's load hits both alike. TRL runs in its own virtualenv
(`bench/trl_env.py`: pinned versions, torch from the same CPU wheel), as a subprocess
(`bench/_trl_worker.py`), with 2 threads as a user would run it.

The work (`--algo`):
- grpo: 16 prompts x 4 samples of the demo's arithmetic problems (chat template), at most 32
  new tokens, temperature 1, the demo's verifier as reward, group-normalised advantages,
  k3 KL against the frozen reference in the loss (beta 0.04), token-mean loss, lr 1e-6, one
  optimizer step of 64 rows per iteration (micro-batch 8); quartet: `quartet ppo` with
  actor, reference, reward and vLLM rollout services, with `--vllm.enable_sleep
  --ref.enable_sleep` (the rollout's and the reference's weights freed while the actor
  trains: TRL's single process holds no idle copies to free) and the actor's activation
  checkpointing (`--checkpointing`, default full); TRL: `GRPOTrainer` (HF generate, no
  checkpointing).
- dpo: 4 preference pairs per step (one micro-batch), at most 256 tokens, sigmoid loss
  beta 0.1, frozen reference; `quartet dpo` vs `DPOTrainer`.
- rm: 4 pairs per step; `quartet rm` vs `RewardTrainer`.
- dpo/rm pairs (`--pairs`): `shared-tail` (default) answers that differ only in the final
  number; `distinct` rejected answers that differ from their first token.
- other shapes, both sides alike: `--prompts`, `--group` (samples per prompt) and
  `--max-new-tokens` (grpo; still one optimizer step of prompts x group rows per
  iteration) and `--micro-batch` (every algo).

Timed: `--steps` optimizer steps after one warm-up step (default `TIMED_STEPS`: 4 for GRPO,
as the issue's work; 8 for DPO and 12 for RM, whose steps take 2-8 s: over four of them the
host's noise alone moved the RM ratio from 1.18 to 1.90 between runs of the same command).
`quartet_per_s`/`trl_per_s` are samples (GRPO rows) or pairs per second over the timed
steps; `ratio` = quartet / TRL.
`wall_ratio` = TRL's whole command seconds / quartet's (start-up, model loading and the
final save included). Memory (`PeakMemory`), over each command's whole process tree: RSS from
/proc/PID/statm every 0.2 s, the rest from /proc/PID/smaps_rollup every 1 s (reading
smaps_rollup walks a process's page tables under its memory-map lock: ~50 ms per read of
a SmolLM2 trainer; read every 0.2 s it slowed quartet's GRPO iterations by ~29%):
- `*_peak_rss_mb`: the largest sum of RSS (the issue's figure). It counts every shared page
  (libtorch, libpython and other library text, shared memory) once per process mapping it,
  so it overstates what a multi-process run occupies.
- `*_peak_pss_mb`: the largest sum of PSS (each shared page divided among the processes that
  map it): what the tree really occupies in RAM. For one process RSS and PSS nearly agree.
- per run, `peak_{rss,pss,uss,anon}_mb_by_process`: each kind of process's own peak RSS, PSS,
  USS (private pages: what ending it would free) and anonymous PSS (heap, tensors, arenas);
  `pss_mb_by_process_at_peak`: each one's PSS in the sample where the tree's PSS peaked
  (the roles peak at different moments: this says which one makes the tree's peak);
  `rss_mb_by_process_at_peak` / `rss_peak_at_s`: each one's RSS in the sample where the
  tree's RSS peaked, and how many seconds into the command that sample was.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.scratch import Scratch

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "_trl_worker.py"

WORK = {
    # algo: rows or pairs per optimizer step, micro-batch, unit
    "grpo": {"batch": 64, "micro": 8, "unit": "samples"},
    "dpo": {"batch": 4, "micro": 4, "unit": "pairs"},
    "rm": {"batch": 4, "micro": 4, "unit": "pairs"},
}
TIMED_STEPS = {"grpo": 4, "dpo": 8, "rm": 12}
"""Default timed steps per algorithm: enough seconds of steps that a run's ratio is not the
host's noise (docs/benchmarks.md, "Ninth pass (lead)")."""
PAIR_SHAPES = ("shared-tail", "distinct")
CHECKPOINTING = ("none", "selective", "full")
DEFAULT_CHECKPOINTING = "full"
"""GRPO, quartet's actor: `--actor.gradient_checkpointing_policy` (none: off). With
selective (the default from the sixth pass to the ninth) the actor's training step was the
tree's peak, and on the Intel Xeon host of the ninth and tenth passes that peak (5418-5592
MiB RSS) exceeded TRL's (5166): full keeps only the layer inputs, ~300-400 MiB less at the
step (benchmarks.md, "Tenth pass (mem)"). Its cost is one more forward per layer in
backward; `--checkpointing selective` remains for comparing. TRL's side runs without
checkpointing, as its GRPOTrainer does by default."""
GRPO_DEFAULTS = {"prompts": 16, "group": 4, "max_new_tokens": 32}


@dataclass(frozen=True)
class Shape:
    """The work of one comparison: rows (GRPO) or pairs per optimizer step, the micro-batch,
    and for GRPO the prompts per iteration, samples per prompt and new-token limit. The
    defaults are the issue's work; the flags exist to check other shapes side by side."""

    batch: int
    micro: int
    unit: str
    prompts: int = 0
    group: int = 0
    max_new_tokens: int = 0


def shape_for(algo: str, prompts: int | None = None, group: int | None = None,
              max_new_tokens: int | None = None, micro: int | None = None) -> Shape:
    """The work for `algo`, with any GRPO shape flag given; errors name the flag."""
    w = WORK[algo]
    if algo != "grpo":
        given = [f for f, v in (("--prompts", prompts), ("--group", group),
                                ("--max-new-tokens", max_new_tokens)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only for --algo grpo (the {algo} work has "
                             f"{w['batch']} pairs per step)")
        batch, extra = w["batch"], {}
    else:
        extra = {"prompts": GRPO_DEFAULTS["prompts"] if prompts is None else prompts,
                 "group": GRPO_DEFAULTS["group"] if group is None else group,
                 "max_new_tokens": (GRPO_DEFAULTS["max_new_tokens"] if max_new_tokens is None
                                    else max_new_tokens)}
        bad = {k: v for k, v in extra.items() if v < 1}
        if bad:
            raise ValueError(f"--prompts/--group/--max-new-tokens: expected >= 1, got {bad}")
        if extra["group"] < 2:
            raise ValueError(f"--group: GRPO normalises rewards within a prompt's group; "
                             f"expected >= 2, got {extra['group']}")
        batch = extra["prompts"] * extra["group"]  # one optimizer step per iteration
    micro = min(w["micro"], batch) if micro is None else micro
    if micro < 1 or batch % micro:
        raise ValueError(f"--micro-batch: expected a divisor of the {batch} "
                         f"{w['unit']} per step, got {micro}")
    return Shape(batch=batch, micro=micro, unit=w["unit"], **extra)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench trl", description=__doc__)
    p.add_argument("--algo", required=True, choices=sorted(WORK))
    p.add_argument("--steps", type=int, default=None,
                   help="timed optimizer steps (+1 warm-up); default: "
                        + ", ".join(f"{a} {n}" for a, n in TIMED_STEPS.items()))
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds; each round runs both, alternating which goes first")
    p.add_argument("--only", choices=["quartet", "trl"], default=None,
                   help="run one side only (profiling); no ratio then")
    p.add_argument("--pairs", choices=PAIR_SHAPES, default=None,
                   help="dpo/rm: how much chosen and rejected share (default shared-tail); "
                        "see pair_texts")
    p.add_argument("--prompts", type=int, default=None,
                   help=f"grpo: prompts per iteration (default {GRPO_DEFAULTS['prompts']})")
    p.add_argument("--group", type=int, default=None,
                   help=f"grpo: samples per prompt (default {GRPO_DEFAULTS['group']}); one "
                        "optimizer step of prompts x group rows per iteration")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"grpo: new-token limit (default {GRPO_DEFAULTS['max_new_tokens']})")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="rows or pairs per forward/backward, the same on both sides "
                        "(default: grpo 8, dpo/rm 4)")
    p.add_argument("--checkpointing", choices=CHECKPOINTING, default=None,
                   help="grpo: quartet's actor activation checkpointing (default "
                        f"{DEFAULT_CHECKPOINTING}; TRL's side never checkpoints)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (else removed at the end, on a failure and "
                        "on SIGTERM/SIGINT, with the run in progress stopped)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = TIMED_STEPS[args.algo]
    if args.steps < 1:
        p.error(f"--steps: expected at least 1 timed step, got {args.steps}")
    return args


# --------------------------------------------------------------------------- data
def pair_texts(seed: int, n: int, shape: str = "shared-tail") -> list[dict[str, str]]:
    """Preference pairs from the demo's arithmetic problems: a worked answer that ends in
    the right number (chosen) and one that ends in a wrong number (rejected).

    ``shape`` says how much of the two answers is the same. ``shared-tail``: the same worked
    explanation, only the final number differs (the best case for a shared-prefix layout);
    ``distinct``: the rejected answer is a different, shorter text from its first token on, as
    in most human preference data, so only the prompt is shared."""
    if shape not in PAIR_SHAPES:
        raise ValueError(f"--pairs: expected one of {PAIR_SHAPES}, got {shape!r}")
    from demo.task import make_split

    rng = random.Random(seed)
    rows = []
    for p in make_split(n, seed):
        wrong = p.answer + rng.choice([-3, -2, -1, 1, 2, 3])
        explain = ("Let's work through it step by step. First I read the numbers in the "
                   "question carefully, then I decide whether to add, subtract or multiply, "
                   "and finally I check the result once more before answering.")
        rejected = (f"{explain} The answer is {wrong}." if shape == "shared-tail" else
                    f"Probably {wrong}, I did not check it.")
        rows.append({"prompt": f"Question: {p.question}\nAnswer: ",
                     "chosen": f"{explain} The answer is {p.answer}.",
                     "rejected": rejected})
    return rows


def write_data(algo: str, work: Path, n_rows: int, seed: int = 42,
               pairs: str = "shared-tail") -> Path:
    path = work / f"{algo}.jsonl"
    if algo == "grpo":
        from demo.task import make_split, write_jsonl

        return write_jsonl(make_split(n_rows, seed), path)
    rows = pair_texts(seed, n_rows, pairs)
    if algo == "rm":  # implicit prompt: the prompt is part of both texts
        rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}
                for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- commands
def quartet_command(algo: str, model: Path, data: Path, out: Path, steps: int,
                    shape: Shape | None = None,
                    checkpointing: str = DEFAULT_CHECKPOINTING) -> list[str]:
    w = shape or shape_for(algo)
    total = steps + 1
    base = [sys.executable, "-m", "quartet.cli.main"]
    if algo == "grpo":
        reward = ROOT / "demo" / "reward.py"
        return base + [
            "ppo", "--actor.model_name_or_path", str(model), "--data.dataset", str(data),
            "--data.input_key", "prompt", "--data.label_key", "answer",
            "--data.apply_chat_template", "--reward.func", str(reward),
            "--algo.advantage.estimator", "group_norm",
            "--rollout.batch_size", str(w.prompts),
            "--rollout.n_samples_per_prompt", str(w.group),
            "--rollout.max_new_tokens", str(w.max_new_tokens), "--rollout.temperature", "1.0",
            "--train.batch_size", str(w.batch), "--train.micro_batch_size", str(w.micro),
            "--train.num_iterations", str(total), "--actor.learning_rate", "1e-6",
            "--lr_scheduler", "constant", "--algo.kl.init_coef", "0.04", "--algo.kl.use_loss",
            "--algo.kl.estimator", "k3", "--algo.loss_reduction", "token_mean",
            "--ds.param_dtype", "fp32", "--ds.zero_stage", "0", "--ckpt.output_dir", str(out),
            # the rollout's weights and KV cache and the reference's weights are freed while
            # the actor trains (the tree's peak); TRL's one process has no idle copies
            "--vllm.enable_sleep", "--ref.enable_sleep",
            # the tree peaks in the actor's training step: its activations
            *([] if checkpointing == "none" else [
                "--actor.gradient_checkpointing_enable",
                "--actor.gradient_checkpointing_policy", checkpointing]),
        ]
    common = [
        "--model.model_name_or_path", str(model), "--data.dataset", str(data),
        "--data.max_len", "256", "--train.batch_size", str(w.batch),
        "--train.micro_batch_size", str(w.micro), "--train.stop_after_steps", str(total),
        "--train.max_epochs", "1", "--lr_scheduler", "constant", "--ds.param_dtype", "fp32",
        "--ds.zero_stage", "0", "--logger.logging_steps", "1", "--ckpt.output_dir", str(out),
        "--ckpt.disable_ds", "--no-logger.progress_bar_enable",
    ]
    if algo == "dpo":
        return base + ["dpo", *common, "--data.prompt_key", "prompt", "--model.beta", "0.1",
                       "--adam.lr", "5e-7"]
    return base + ["rm", *common, "--adam.lr", "9e-6"]


def trl_command(python: Path, algo: str, model: Path, data: Path, out: Path,
                steps: int, shape: Shape | None = None) -> list[str]:
    w = shape or shape_for(algo)
    # -I: the worker must import the real `trl`, never this file (bench/trl.py)
    cmd = [str(python), "-I", str(WORKER), "--algo", algo, "--model", str(model),
           "--data", str(data), "--out", str(out / "result.json"), "--workdir", str(out),
           "--steps", str(steps + 1), "--micro-batch", str(w.micro),
           "--batch", str(w.batch)]
    if algo == "grpo":
        cmd += ["--reward-file", str(ROOT / "demo" / "reward.py"),
                "--beta", "0.04", "--lr", "1e-6", "--max-new-tokens", str(w.max_new_tokens),
                "--num-generations", str(w.group)]
    elif algo == "dpo":
        cmd += ["--beta", "0.1", "--lr", "5e-7", "--max-len", "256"]
    else:
        cmd += ["--lr", "9e-6", "--max-len", "256"]
    return cmd


# --------------------------------------------------------------------------- measuring
def process_label(cmdline: list[str]) -> str:
    """A short name for one process of a measured tree: the role of a `quartet serve ROLE`
    process, else the program (`-m` module or script) it runs."""
    if "serve" in cmdline[:-1]:
        return cmdline[cmdline.index("serve") + 1]
    if "-m" in cmdline[:-1]:
        return cmdline[cmdline.index("-m") + 1]
    scripts = [Path(a).name for a in cmdline[1:] if a.endswith(".py")]
    return scripts[0] if scripts else (Path(cmdline[0]).name if cmdline else "?")


def read_smaps_rollup(pid: int) -> dict[str, int]:
    """The kernel's memory summary of one process (/proc/PID/smaps_rollup), in bytes:
    `Rss`, `Pss` (each shared page divided by the number of processes mapping it),
    `Private_Clean` + `Private_Dirty` (USS: what ending the process would free), `Pss_Anon`
    (heap, tensors), `Pss_File` (library text, mmapped files), `Pss_Shmem`. Empty when the
    process is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


# per-process figures sampled: name -> how it is computed from smaps_rollup
MEMORY_KINDS = {
    "rss": lambda m: m.get("Rss", 0),
    "pss": lambda m: m.get("Pss", 0),
    "uss": lambda m: m.get("Private_Clean", 0) + m.get("Private_Dirty", 0),
    "anon": lambda m: m.get("Pss_Anon", 0),
}


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def read_statm_rss(pid: int) -> int | None:
    """One process's resident set in bytes, from /proc/PID/statm (the kernel's counters: no
    page-table walk); None when the process is gone or unreadable."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None



class PeakMemory:
    """Peaks of one process tree's memory, sampled in a thread.

    - `peak["rss"]`: the largest sum of RSS over the process and its descendants (the issue's
      figure: what `ps`/`top` would add up; every shared page, e.g. libtorch's text, is
      counted once per process mapping it), read from /proc/PID/statm every `interval_s`.
    - `peak["pss"]`: the largest sum of PSS (each shared page split between the processes
      mapping it): the memory the tree really occupies, shared pages counted once; read
      from /proc/PID/smaps_rollup every `rollup_every_s`.
    - `by_label[kind][label]`: the largest RSS / PSS / USS (private pages) / anonymous PSS
      of each kind of process (`process_label`): which role holds what (RSS at every
      sample, the others at the smaps_rollup samples).

    Why two rates: smaps_rollup walks the page tables of each process while holding its
    memory-map lock (~50 ms for a SmolLM2 trainer's 3 GiB of 4 KiB pages), so the measured
    processes' own mmap/munmap/brk and page faults wait behind it; read every 0.2 s it cost
    ~0.25 of this host's 2 cores and slowed quartet's GRPO iterations by ~29% (benchmarks.md,
    "Seventh pass (speed)"). statm reads counters only.
    """

    def __init__(self, pid: int, interval_s: float = 0.2, rollup_every_s: float = 1.0) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.rollup_every_s = rollup_every_s
        self.peak: dict[str, int] = {"rss": 0, "pss": 0}
        self.at_pss_peak: dict[str, int] = {}
        """Each kind of process's PSS in the sample where the tree's PSS peaked."""
        self.at_rss_peak: dict[str, int] = {}
        """Each kind of process's RSS in the sample where the tree's RSS peaked."""
        self.rss_peak_at_s = 0.0
        """Seconds from the sampler's start to that sample (which phase made the peak)."""
        self._started = time.monotonic()
        self.by_label: dict[str, dict[str, int]] = {k: {} for k in MEMORY_KINDS}
        self._labels: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self, rollup: bool) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """Tree totals and per-label sums: RSS always, the smaps_rollup kinds with `rollup`."""
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return {}, {}
        kinds = MEMORY_KINDS if rollup else {}
        totals = {"rss": 0, **{k: 0 for k in kinds}}
        per_label: dict[str, dict[str, int]] = {}
        for p in procs:
            try:
                if p.pid not in self._labels:
                    self._labels[p.pid] = process_label(p.cmdline())
            except psutil.Error:
                continue
            values: dict[str, int] = {}
            if rollup:
                smaps = read_smaps_rollup(p.pid)
                if not smaps:
                    continue
                values = {kind: value(smaps) for kind, value in kinds.items()}
            rss = read_statm_rss(p.pid)
            if rss is None:
                continue
            values["rss"] = rss
            label = per_label.setdefault(self._labels[p.pid], dict.fromkeys(values, 0))
            for kind, v in values.items():
                totals[kind] += v
                label[kind] += v
        for label, values in per_label.items():
            for kind, v in values.items():
                self.by_label[kind][label] = max(self.by_label[kind].get(label, 0), v)
        return totals, per_label

    def _run(self) -> None:
        last_rollup = -float("inf")
        while not self._stop.is_set():
            rollup = time.monotonic() - last_rollup >= self.rollup_every_s
            if rollup:
                last_rollup = time.monotonic()
            totals, per_label = self._sample(rollup)
            if rollup and totals.get("pss", 0) > self.peak["pss"]:
                self.at_pss_peak = {label: v["pss"] for label, v in per_label.items()}
            if totals.get("rss", 0) > self.peak["rss"]:
                self.at_rss_peak = {label: v["rss"] for label, v in per_label.items()}
                self.rss_peak_at_s = time.monotonic() - self._started
            for kind in self.peak:
                self.peak[kind] = max(self.peak[kind], totals.get(kind, 0))
            self._stop.wait(self.interval_s)

    def stop(self) -> dict[str, float]:
        """Stops sampling; returns the tree's peaks in MiB (`rss`, `pss`)."""
        self._stop.set()
        self._thread.join()
        return {k: v / 2**20 for k, v in self.peak.items()}

    def by_process_mb(self, kind: str) -> dict[str, int]:
        return {k: round(v / 2**20) for k, v in sorted(self.by_label[kind].items())}

    def at_pss_peak_mb(self) -> dict[str, int]:
        return {k: round(v / 2**20) for k, v in sorted(self.at_pss_peak.items())}

    def at_rss_peak_mb(self) -> dict[str, int]:
        return {k: round(v / 2**20) for k, v in sorted(self.at_rss_peak.items())}


def run_measured(cmd: list[str], log_path: Path, env: dict[str, str],
                 start: Callable[..., subprocess.Popen] = subprocess.Popen
                 ) -> tuple[float, PeakMemory]:
    """Runs a command to completion (started by `start`: `Scratch.popen` stops it if the
    benchmark is stopped); returns (wall seconds, its tree's memory peaks)."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = start(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                     stdin=subprocess.DEVNULL)
        memory = PeakMemory(proc.pid)
        code = proc.wait()
    wall = time.perf_counter() - started
    memory.stop()
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{cmd[2] if len(cmd) > 2 else cmd[0]} exited {code}; "
                           f"log {log_path} (removed with the work directory; --keep keeps "
                           f"it):\n{tail}")
    return wall, memory


def quartet_step_seconds(algo: str, out: Path, per_step: int) -> list[float]:
    """Per-iteration (GRPO: sum of the loop's phase times) or per-step seconds."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if algo == "grpo":
        return [sum(v for k, v in r.items() if k.startswith("time/")) for r in rows]
    return [per_step / r["samples_per_s"] for r in rows if "samples_per_s" in r]


def steady_rate(step_s: list[float], steps: int, per_step: int) -> tuple[float, list[float]]:
    """Units per second over the last `steps` steps (the first one is warm-up)."""
    timed = step_s[-steps:]
    if len(timed) < steps or len(step_s) < steps + 1:
        raise RuntimeError(f"expected {steps + 1} steps, measured {len(step_s)}: {step_s}")
    return per_step * len(timed) / sum(timed), timed


def main(argv: list[str] | None = None) -> int:
    args = parse(list(argv or []))
    from bench.trl_env import ensure_trl_venv
    from demo.model import prepare_model

    if args.pairs is not None and args.algo == "grpo":
        raise SystemExit("--pairs: only for --algo dpo|rm (GRPO has no preference pairs)")
    if args.checkpointing is not None and args.algo != "grpo":
        raise SystemExit("--checkpointing: only for --algo grpo (the DPO and RM runs train "
                         "without checkpointing on both sides)")
    try:  # refused before anything is built or loaded
        shape_for(args.algo, args.prompts, args.group, args.max_new_tokens, args.micro_batch)
    except ValueError as e:
        raise SystemExit(f"bench trl: {e}") from None
    model = prepare_model()
    python = ensure_trl_venv() if args.only != "quartet" else None
    # Removed (unless --keep) however the benchmark ends: finished, failed, SIGTERM, Ctrl-C.
    with Scratch(f"quartet-bench-trl-{args.algo}-", keep=args.keep) as scratch:
        result = measure(args, model, python, scratch)
    print(json.dumps(result))
    return 0


def measure(args: argparse.Namespace, model: Path, python: Path | None,
            scratch: Scratch) -> dict:
    """Runs both sides `args.repeats` times in `scratch`; the result line's fields."""
    w = shape_for(args.algo, args.prompts, args.group, args.max_new_tokens, args.micro_batch)
    work = scratch.path
    pairs = args.pairs or "shared-tail"
    checkpointing = args.checkpointing or DEFAULT_CHECKPOINTING
    # GRPO draws `prompts` rows per iteration; both sides read the same file in order
    data = write_data(args.algo, work, max(512, w.prompts * (args.steps + 1)), pairs=pairs)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    sides = ["quartet", "trl"] if args.only is None else [args.only]
    result: dict = {"bench": "trl", "algo": args.algo, "steps": args.steps,
                    "per_step": w.batch, "micro_batch": w.micro, "unit": w.unit,
                    **({"prompts": w.prompts, "group": w.group,
                        "max_new_tokens": w.max_new_tokens} if args.algo == "grpo" else {}),
                    "repeats": args.repeats,
                    **({"pairs": pairs} if args.algo != "grpo" else {}),
                    **({"checkpointing": checkpointing} if args.algo == "grpo" else {}),
                    "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    print(f"bench trl: {args.algo}, {args.steps} timed steps of {w.batch} {w.unit}, "
          f"work dir {work}", flush=True)
    for r in range(args.repeats):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            out = work / f"{side}{r}"
            out.mkdir()
            if side == "quartet":
                cmd = quartet_command(args.algo, model, data, out, args.steps, w,
                                      checkpointing)
            else:
                cmd = trl_command(python, args.algo, model, data, out, args.steps, w)
            wall, memory = run_measured(cmd, work / f"{side}{r}.log", env, scratch.popen)
            peak = memory.stop()
            if side == "quartet":
                step_s = quartet_step_seconds(args.algo, out, w.batch)
            else:
                step_s = json.loads((out / "result.json").read_text())["step_s"]
            rate, timed = steady_rate(step_s, args.steps, w.batch)
            run = {"per_s": round(rate, 4), "wall_s": round(wall, 1),
                   "peak_rss_mb": round(peak["rss"]), "peak_pss_mb": round(peak["pss"]),
                   **{f"peak_{k}_mb_by_process": memory.by_process_mb(k) for k in MEMORY_KINDS},
                   "pss_mb_by_process_at_peak": memory.at_pss_peak_mb(),
                   "rss_mb_by_process_at_peak": memory.at_rss_peak_mb(),
                   "rss_peak_at_s": round(memory.rss_peak_at_s, 1),
                   "step_s": [round(x, 2) for x in step_s]}
            runs[side].append(run)
            print(f"  {side:<8} round {r}: {rate:.3f} {w.unit}/s  wall {wall:.0f}s  "
                  f"peak RSS {peak['rss']:.0f} MiB, PSS {peak['pss']:.0f} MiB  "
                  f"steps {run['step_s']}", flush=True)
            for kind in MEMORY_KINDS:
                print(f"    peak {kind} by process (MiB): {run[f'peak_{kind}_mb_by_process']}",
                      flush=True)
            print(f"    pss by process when the tree's PSS peaked (MiB): "
                  f"{run['pss_mb_by_process_at_peak']}", flush=True)
            print(f"    rss by process when the tree's RSS peaked ({run['rss_peak_at_s']} s "
                  f"in; MiB): {run['rss_mb_by_process_at_peak']}", flush=True)
    for side, rs in runs.items():
        result[f"{side}_per_s"] = round(sum(x["per_s"] for x in rs) / len(rs), 4)
        result[f"{side}_wall_s"] = round(sum(x["wall_s"] for x in rs) / len(rs), 1)
        result[f"{side}_peak_rss_mb"] = max(x["peak_rss_mb"] for x in rs)
        result[f"{side}_peak_pss_mb"] = max(x["peak_pss_mb"] for x in rs)
        result[f"{side}_runs"] = rs
    if len(runs) == 2:
        result["ratio"] = round(result["quartet_per_s"] / result["trl_per_s"], 3)
        result["wall_ratio"] = round(result["trl_wall_s"] / result["quartet_wall_s"], 3)
    result["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    return result
