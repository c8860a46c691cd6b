"""`python -m bench shared_prompts`: GRPO-shaped scoring and training, each prompt's samples
as plain rows vs one shared-prefix row per prompt, interleaved in one process.

The work of `python -m bench trl --algo grpo`'s actor and reference: SmolLM2-135M-Instruct
fp32 on CPU (2 threads), 16 of the demo's chat-template prompts x 4 samples of 32 response
tokens (random token ids: the cost does not depend on which), micro-batches of 8 (two whole
prompt groups), one 64-row optimizer step with the k3 KL in the loss. Per round it times,
in each layout, one log-prob pass over the 64 rows (what the reference's scoring runs) and
one `TrainStep` (the actor's forward + backward + AdamW step), alternating which layout
goes first. The last line is JSON: median seconds per layout and `score_speedup` /
`train_speedup` = plain / shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench shared_prompts", description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (+1 warm-up)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=4, help="samples per prompt")
    p.add_argument("--response-tokens", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=8)
    return p.parse_args(argv)


def grpo_rows(tokenizer, prompts: int, samples: int, response_tokens: int):
    """The demo's prompts (chat template) x `samples` random responses, grouped by prompt."""
    import torch

    from demo.task import make_split
    from quartet.codec import RowBatch

    g = torch.Generator().manual_seed(0)
    rows, plens = [], []
    for problem in make_split(prompts, 42):
        text = tokenizer.apply_chat_template(problem.messages(), add_generation_prompt=True,
                                             tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for _ in range(samples):
            tail = torch.randint(10, tokenizer.vocab_size, (response_tokens,), generator=g)
            rows.append(torch.cat([torch.tensor(ids), tail]))
            plens.append(len(ids))
    return RowBatch(rows, plens)


def grpo_actor_work(prompts: int, samples: int, response_tokens: int, micro_batch: int,
                    **model_flags):
    """The benchmark GRPO actor's work, in-process: `(actor, rows, mini-batch, loss
    settings)` for one 64-row (by default) TrainStep of SmolLM2-135M-Instruct fp32, ZeRO-0,
    with the k3 KL against reference log-probs (the actor's own, before training).
    `model_flags` are `ModelConfig` fields (e.g. checkpointing)."""
    import torch

    from demo.model import prepare_model
    from quartet.config.deepspeed import DeepSpeedConfig
    from quartet.config.model import ModelConfig
    from quartet.config.optim import AdamConfig, OptimConfig
    from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
    from quartet.ppo.role_config import RoleTrainConfig, TrainingRoleConfig
    from services.actor.actor import Actor

    actor = Actor(TrainingRoleConfig(
        model=ModelConfig(model_name_or_path=str(prepare_model()), **model_flags),
        ds=DeepSpeedConfig(zero_stage=0, param_dtype="fp32"),
        optim=OptimConfig(lr_scheduler="constant"), adam=AdamConfig(lr=1e-6),
        train=RoleTrainConfig(batch_size=prompts * samples, micro_batch_size=micro_batch)))
    batch = grpo_rows(actor.tokenizer, prompts, samples, response_tokens)
    ref = actor.logprobs(batch).logprobs
    g = torch.Generator().manual_seed(1)
    adv = [torch.randn(n, generator=g) for n in batch.response_lengths()]
    mb = PolicyMiniBatch(batch, None, adv, ref)
    loss = PolicyLossSettings(kl_coef=0.04, kl_estimator="k3", old_logprobs_from_forward=True)
    return actor, batch, mb, loss


def main(argv: list[str] | None = None) -> int:
    args = parse(argv or [])
    load_start = round(os.getloadavg()[0], 2)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    torch.set_num_threads(2)
    actor, batch, mb, loss = grpo_actor_work(args.prompts, args.samples, args.response_tokens,
                                             args.micro_batch)
    times: dict[str, dict[str, list[float]]] = {m: {"score": [], "train": []}
                                               for m in ("plain", "shared")}
    rng = random.Random(0)
    for r in range(args.rounds + 1):
        modes = ["plain", "shared"]
        rng.shuffle(modes)
        for mode in modes:
            actor.updater.share_prefix = mode == "shared"
            t0 = time.perf_counter()
            actor.logprobs(batch)
            t1 = time.perf_counter()
            actor.train_step(mb, loss)
            t2 = time.perf_counter()
            if r > 0:  # round 0 warms up
                times[mode]["score"].append(round(t1 - t0, 3))
                times[mode]["train"].append(round(t2 - t1, 3))
            print(f"round {r} {mode}: score {t1 - t0:.2f} s, train {t2 - t1:.2f} s",
                  flush=True)
    med = {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}
    print(json.dumps({
        "bench": "shared_prompts", "prompts": args.prompts, "samples": args.samples,
        "response_tokens": args.response_tokens, "micro_batch": args.micro_batch,
        "rounds": args.rounds, "loadavg_1m_start": load_start,
        "plain_score_s": med["plain"]["score"], "shared_score_s": med["shared"]["score"],
        "plain_train_s": med["plain"]["train"], "shared_train_s": med["shared"]["train"],
        "score_speedup": round(med["plain"]["score"] / med["shared"]["score"], 3),
        "train_speedup": round(med["plain"]["train"] / med["shared"]["train"], 3),
        "runs": times, "loadavg_1m_end": round(os.getloadavg()[0], 2)}))
    return 0
