"""`quartet ppo` / `python -m services.coordinator.job`: PPO and its critic-free variants.

With no service addresses it starts every needed role as a local process (embedded mode);
with `--<role>.address` flags it drives services that already run (cluster mode).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from quartet.config.base import config_to_dict, parse_config
from quartet.config.renamed import RENAMED_PPO_FLAGS
from quartet.logs import setup_logging
from quartet.ppo.batch import PolicyLossSettings, ValueLossSettings
from quartet.ppo.experience import AdvantageSettings
from quartet.tracking.curves import plot_curves
from quartet.tracking.tracker import Tracker
from quartet.types import SamplingConfig
from services.coordinator.config import PPOJobConfig
from services.coordinator.ppo_loop import PPOLoop, PPOLoopSettings
from services.coordinator.rollouts import FilterSettings, RewardShaping

log = logging.getLogger("quartet.ppo")


def load_aggregate(path: str | None):
    """`aggregate(scores)` from a user's Python file, or None for the weighted sum."""
    if path is None:
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("quartet_reward_aggregate", path)
    if spec is None or spec.loader is None or not Path(path).is_file():
        raise ValueError(f"--reward.aggregate_func: {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "aggregate", None)
    if not callable(fn):
        raise ValueError(f"--reward.aggregate_func: {path} defines no aggregate(scores)")
    return fn


def loop_settings(cfg: PPOJobConfig, output_dir: str, run_id: str) -> PPOLoopSettings:
    """The loop's resolved settings: the one place flags turn into algorithm choices."""
    algo, r = cfg.algo, cfg.rollout
    return PPOLoopSettings(
        num_iterations=cfg.train.num_iterations,
        prompts_per_iteration=r.batch_size,
        n_samples_per_prompt=r.n_samples_per_prompt,
        sampling=SamplingConfig(n=r.n_samples_per_prompt, temperature=r.temperature,
                                top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens,
                                stop=tuple(r.stop), logprobs=True),
        mini_batch_size=cfg.train.batch_size,
        ppo_epochs=cfg.train.max_epochs,
        advantage=AdvantageSettings(
            estimator=algo.advantage.estimator, gamma=algo.advantage.gamma,
            lam=algo.advantage.lambd, kl_estimator=algo.kl.estimator,
            reward_clip=cfg.reward.clip_range, whiten=algo.advantage.whiten,
            no_std_norm=algo.advantage.no_std_norm,
        ),
        policy_loss=PolicyLossSettings(
            clip_eps_low=algo.clip_eps_low, clip_eps_high=algo.clip_eps_high,
            dual_clip=algo.dual_clip, entropy_coef=algo.entropy_coef,
            kl_estimator=algo.kl.estimator, reduction=algo.loss_reduction,
            temperature=r.temperature, policy_loss_type=cfg.actor.policy_loss_type,
            is_correction=algo.advantage.is_correction(),
            kl_unbiased_gradient=algo.kl.unbiased_gradient, ptx_coef=cfg.actor.ptx_coef,
        ),
        value_loss=ValueLossSettings(clip_eps=cfg.critic.value_clip or None),
        init_kl_coef=algo.kl.init_coef,
        kl_in_loss=algo.kl.use_loss,
        kl_target=algo.kl.target,
        kl_horizon=algo.kl.horizon,
        normalize_reward=cfg.reward.normalize_enable,
        shaping=RewardShaping(
            aggregate=load_aggregate(cfg.reward.aggregate_func),
            overlong_buffer_len=cfg.reward.overlong_buffer_len,
            overlong_penalty_factor=cfg.reward.overlong_penalty_factor,
            stop_properly_penalty_coef=cfg.reward.stop_properly_penalty_coef,
        ),
        filtering=FilterSettings(
            enabled=algo.dynamic_filtering_enable,
            low=algo.dynamic_filtering_reward_range[0],
            high=algo.dynamic_filtering_reward_range[1],
            max_rounds=algo.dynamic_filtering_max_rounds,
        ),
        async_generation=cfg.train.async_enable,
        pipeline_train_steps=cfg.train.pipeline_steps,
        freeze_actor_steps=cfg.actor.freezing_steps,
        save_steps=-1 if cfg.ckpt.disable_ds else cfg.ckpt.save_steps,
        resume=cfg.ckpt.load_enable,
        output_dir=output_dir,
        seed=cfg.train.seed,
        run_id=run_id,
    )


class ProgressPrinter:
    """A live line per phase (on a terminal) and one summary line per iteration; silent with
    ``--no-logger.progress_bar_enable``."""

    def __init__(self, total: int, stream=None, enabled: bool = True) -> None:
        self.total = total
        # sys.stdout when called, not at import (pytest swaps and closes capture streams)
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty()
        self.enabled = enabled

    def line(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        it = event["iteration"] + 1
        if event["phase"] != "done":
            if self.tty:
                self.stream.write(f"\r[iter {it}/{self.total}] {event['phase']}...".ljust(60))
                self.stream.flush()
            return
        m = event["metrics"]
        phases = " ".join(f"{p}={m.get('time/' + p, 0.0):.1f}s"
                          for p in ("generate", "score", "advantage", "train", "sync"))
        line = (f"[iter {it}/{self.total}] reward={m['reward']:.3f} kl={m['kl']:.4f} "
                f"len={m['response_length']:.1f}")
        if "actor/policy_loss" in m:
            line += f" pg_loss={m['actor/policy_loss']:.4f} clip={m['actor/clip_fraction']:.3f}"
        if "critic/value_loss" in m:
            line += f" v_loss={m['critic/value_loss']:.4f}"
        line += f" v{int(m['policy_version'])} | {phases}"
        self.stream.write(("\r" if self.tty else "") + line + "\n")
        self.stream.flush()


NOTHING_SAVED = "nothing was trained, so no checkpoint or policy was saved"
"""Why a run stopped before its first iteration leaves no checkpoint or hf/final export."""


def mark_starting(stop: threading.Event | None, starting: bool) -> None:
    """Tell a `StopRequest` whether the run is still starting (other events ignore it)."""
    if isinstance(stop, StopRequest):
        stop.starting = starting


def run(cfg: PPOJobConfig, run_id: str = "ppo", on_event=None,
        stop: threading.Event | None = None) -> list[dict[str, float]]:
    """Start (or connect to) the roles, run the loop, stop what was started.

    `on_event` receives the loop's phase events (after the progress printer); setting `stop`
    ends the run after the current iteration, with a final checkpoint.
    """
    from quartet.config.model import ModelConfig
    from quartet.heap import release_free_heap
    from quartet.models.loading import load_tokenizer
    from services.coordinator.checkpoint import CheckpointSettings, RunCheckpoints
    from services.coordinator.launch import PPOServices
    from services.coordinator.prompts import load_prompts
    from services.coordinator.run_state import RunTelemetry

    mark_starting(stop, True)  # until the loop begins, a first signal stops at once
    out = Path(cfg.ckpt.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2, default=str))
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=cfg.actor.model_name_or_path,
                                           gguf_file=cfg.actor.gguf_file),
                               cfg.data.tokenizer_chat_template)
    prompts = load_prompts(cfg.data, tokenizer, cfg.rollout.prompt_max_len)
    # read before any service starts, so a bad eval set fails fast
    eval_prompts = (load_prompts(cfg.data, tokenizer, cfg.rollout.prompt_max_len,
                                 split=cfg.eval.split, dataset=cfg.eval.dataset,
                                 max_samples=cfg.eval.max_samples)
                    if cfg.eval.dataset else [])
    pretrain = None
    if cfg.data.pretrain_dataset:
        from services.coordinator.ptx import PretrainRows, load_pretrain_samples

        pretrain = PretrainRows(load_pretrain_samples(
            cfg.data.pretrain_dataset, cfg.data.pretrain_split, cfg.data.pretrain_key,
            cfg.rollout.prompt_max_len + cfg.rollout.max_new_tokens, cfg.data.max_samples,
            tokenizer), cfg.train.seed)
    settings = loop_settings(cfg, str(out), run_id)
    log.info("PPO: %d prompts, estimator %s, %d iterations; settings %s", len(prompts),
             cfg.algo.advantage.estimator, cfg.train.num_iterations,
             json.dumps(asdict(settings), default=str))
    print(f"quartet ppo: starting services (logs in {out / 'logs'})", flush=True)
    started = time.perf_counter()
    longest = max((len(p.tokens) for p in prompts + eval_prompts), default=None)
    release_free_heap()  # what reading the dataset freed (Arrow tables, token lists)
    with (RunTelemetry(cfg, run_id, stop) as telemetry,
          PPOServices(cfg, out, longest_prompt=longest) as services):
        placement = getattr(services, "placement", None)
        if placement is not None:
            print(placement.table(), flush=True)
            print(f"  (placement: {out / 'placement.json'})", flush=True)
        else:
            for role, addresses in services.addresses.items():
                if addresses:
                    print(f"  {role:<9} {', '.join(addresses)}", flush=True)
        roles = services.roles(run_id)
        if pretrain is not None:
            from services.coordinator.ptx import PtxActor

            roles = replace(roles, actor=PtxActor(roles.actor, pretrain))
        print(f"quartet ppo: services ready in {time.perf_counter() - started:.0f}s; "
              f"training {cfg.train.num_iterations} iterations", flush=True)
        printer = ProgressPrinter(cfg.train.num_iterations,
                                  enabled=cfg.logger.progress_bar_enable)
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        tracker = Tracker(cfg.logger, str(out), run_id, cfg.train.num_iterations, 0,
                          is_main=True, config=config_to_dict(cfg), default_jsonl=False,
                          bar=False)
        evaluator = build_evaluator(cfg, roles, settings, eval_prompts, decode, run_id)
        loop: PPOLoop | None = None

        def events(event: dict) -> None:
            printer(event)
            if event["phase"] == "done":
                it = event["iteration"]
                if (it + 1) % cfg.logger.logging_steps == 0:
                    tracker.log(event["metrics"], it + 1)
                if evaluator is not None and evaluator.due(it) and loop is not None:
                    scores = evaluator.evaluate(it, loop.version)
                    tracker.log(scores, it + 1)
                    log_eval(out, it, scores, printer)
            telemetry.on_event(event)
            if on_event is not None:
                on_event(event)

        checkpoints = None
        if not cfg.ckpt.disable_ds:
            checkpoints = RunCheckpoints(
                CheckpointSettings(cfg.ckpt.ds_path, cfg.ckpt.max_num, cfg.ckpt.max_mem,
                                   cfg.ckpt.save_hf), roles.actor, roles.critic)
            latest = checkpoints.latest()
            if not cfg.ckpt.load_enable and latest is not None:
                raise ValueError(f"--ckpt.path {checkpoints.root} holds checkpoints of an "
                                 "earlier run: pass --ckpt.load_enable to resume it, or give "
                                 "another --ckpt.path / --ckpt.output_dir")
            if cfg.ckpt.load_enable:
                print(f"quartet ppo: resuming from {latest}" if latest else
                      f"quartet ppo: no checkpoint in {checkpoints.root}; starting fresh",
                      flush=True)
        loop = PPOLoop(roles, settings, prompts, decode=decode, on_event=events,
                       checkpoints=checkpoints, recovery=services.recovery())
        mark_starting(stop, False)  # from here a first signal ends the iteration
        try:
            history = loop.run(stop)
        finally:
            tracker.close()
            if evaluator is not None:
                evaluator.close()
    if history:
        plot_curves(history, out / "curves.png", title=f"quartet ppo: {run_id}")
    final = out / "checkpoints" / "hf" / "final"
    if not history and stop is not None and stop.is_set():
        print(f"quartet ppo: stopped before the first iteration in "
              f"{time.perf_counter() - started:.0f}s; {NOTHING_SAVED}", flush=True)
        return history
    print(f"quartet ppo: done in {time.perf_counter() - started:.0f}s; metrics in "
          f"{out / 'metrics.jsonl'}, curves in {out / 'curves.png'}, traces: "
          f"{telemetry.where}, policy in {final}", flush=True)
    return history


def build_evaluator(cfg: PPOJobConfig, roles, settings: PPOLoopSettings, prompts, decode,
                    run_id: str):
    """The held-out evaluator of `--eval.dataset` on `prompts`, or None without one."""
    if not cfg.eval.dataset:
        return None
    from services.coordinator.evaluation import HeldOutEvaluator

    shaping = settings.shaping
    if not shaping.weights and roles.reward_weights:
        shaping = replace(shaping, weights=roles.reward_weights)
    return HeldOutEvaluator(roles.rollouts, roles.rewards, prompts, settings.sampling, shaping,
                            decode, cfg.eval.steps, cfg.train.num_iterations, run_id)


def log_eval(out: Path, iteration: int, scores: dict[str, float], printer) -> None:
    """Eval metrics go to `<output_dir>/eval_metrics.jsonl` (one line per evaluation)."""
    with open(out / "eval_metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": iteration, **scores}) + "\n")
    printer.line(f"[eval after iter {iteration + 1}] reward={scores['eval/reward']:.3f} "
                 f"len={scores['eval/response_length']:.1f} "
                 f"({int(scores['eval/num_prompts'])} prompts, greedy)")


def with_yaml_config(argv: list[str]) -> list[str]:
    """`--config FILE.yaml` (nested groups or dotted keys) becomes flags placed before the
    command line's, so flags given explicitly override the file."""
    if "--config" not in argv:
        return argv
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise SystemExit("quartet ppo: error: --config needs a YAML file")
    import yaml

    from quartet.config.base import ConfigError, dict_to_argv, flatten_mapping

    path = Path(argv[i + 1])
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"quartet ppo: error: --config {path}: {exc}") from None
    if not isinstance(values, dict):
        raise SystemExit(f"quartet ppo: error: --config {path}: expected a mapping of flags")
    try:
        from_file = dict_to_argv(PPOJobConfig, flatten_mapping(values))
    except ConfigError as exc:
        raise SystemExit(f"quartet ppo: error: --config {path}: {exc}") from None
    return from_file + argv[:i] + argv[i + 2:]


class StopNow(KeyboardInterrupt):
    """A second SIGTERM/SIGINT: stop at once, without finishing the iteration or saving."""


class StartUpStopped(KeyboardInterrupt):
    """A SIGTERM/SIGINT while the services start: nothing is trained yet, so nothing is
    waited for; the services started so far are stopped as the start-up unwinds."""


class StopRequest(threading.Event):
    """The run's stop flag, set by a signal. `starting` is True until the loop's first
    iteration begins (set by `run`): a signal then interrupts the start-up at once instead
    of waiting for every service to come up (a minute on a busy host) only to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.starting = False


def stop_on_signals() -> StopRequest:
    """SIGTERM/SIGINT ask the run to stop: the current iteration finishes, a checkpoint is
    saved, every started role process is stopped, and `quartet ppo` exits 0. During the
    start-up the first one stops at once (exit 0; there is nothing to save). Later a second
    one stops at once (the role processes are stopped as the run unwinds; no checkpoint),
    for a user who cannot wait out an iteration (~100 s on SmolLM2 on a CPU)."""
    stop = StopRequest()

    def _on_signal(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            print(f"\nquartet ppo: {name} again: stopping now, without finishing the "
                  "iteration or saving", file=sys.stderr, flush=True)
            raise StopNow(signum)
        stop.set()
        if stop.starting:
            print(f"\nquartet ppo: {name} during start-up: stopping the services started "
                  "so far", file=sys.stderr, flush=True)
            raise StartUpStopped(signum)
        print(f"\nquartet ppo: {name}: finishing the current iteration, then saving and "
              "stopping (send it again to stop at once)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def with_auth_token_file(argv: list[str]) -> list[str]:
    """`--auth-token-file PATH` (as on `quartet serve`) becomes QUARTET_AUTH_TOKEN_FILE for
    this process: every client presents it and every service started here requires it.
    Without it an embedded run makes a token of its own (see PPOServices)."""
    if "--auth-token-file" not in argv:
        return argv
    i = argv.index("--auth-token-file")
    if i + 1 >= len(argv):
        raise SystemExit("quartet ppo: error: --auth-token-file needs a file")
    from quartet.security import TOKEN_ENV, SecurityConfigError, read_token

    try:
        read_token(argv[i + 1])
    except SecurityConfigError as exc:
        raise SystemExit(f"quartet ppo: error: --auth-token-file: {exc}") from None
    os.environ[TOKEN_ENV] = str(Path(argv[i + 1]).resolve())
    return argv[:i] + argv[i + 2:]


def main(argv: list[str] | None = None) -> int:
    from quartet.clients.base import RoleCallError
    from quartet.data.sources import DataError

    argv = with_auth_token_file(list(sys.argv[1:] if argv is None else argv))
    cfg = parse_config(PPOJobConfig, with_yaml_config(argv), prog="quartet ppo",
                       renamed=RENAMED_PPO_FLAGS)
    setup_logging("coordinator", "WARNING")
    # stable across restarts of the same run (resume), distinct between run directories
    run_id = Path(cfg.ckpt.output_dir).resolve().name or "ppo"
    try:
        run(cfg, run_id=run_id, stop=stop_on_signals())
    except StartUpStopped:
        print(f"quartet ppo: stopped before the first iteration; {NOTHING_SAVED}",
              file=sys.stderr)
        return 0
    except StopNow as exc:
        print("quartet ppo: stopped; the last checkpoint saved before is the one to resume "
              "from (--ckpt.load_enable)", file=sys.stderr)
        return 128 + int(exc.args[0])
    except (DataError, RoleCallError, TimeoutError, RuntimeError, ValueError) as exc:
        # A clear one-line cause; service logs hold the details.
        print(f"quartet ppo: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
