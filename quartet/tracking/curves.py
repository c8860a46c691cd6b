"""`curves.png` of a PPO run: reward, KL, losses, response length and where the time went,
per iteration (from the loop's metrics). `quartet ppo` writes it at the end of every run;
the demo adds its held-out accuracy to the reward panel."""

from __future__ import annotations

from pathlib import Path

PHASE_ORDER = ("replicas", "generate", "score", "advantage", "train", "sync", "checkpoint")


def _series(history: list[dict], key: str) -> list[float]:
    return [m.get(key, float("nan")) for m in history]


def plot_curves(history: list[dict], out: Path, title: str = "quartet ppo",
                before: float | None = None, after: float | None = None,
                reward_title: str = "reward (mean per sample)",
                reward_ylim: tuple[float, float] | None = None) -> Path:
    """`before`/`after`: a held-out score at the start and end, drawn on the reward panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [int(m["iteration"]) for m in history]
    last = it[-1] if it else 1
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    ax = axes[0][0]
    ax.plot(it, _series(history, "reward"), "o-", label="train reward")
    if before is not None and after is not None:
        ax.plot([0], [before], "s", color="tab:red", label="held-out (greedy)")
        ax.plot([last], [after], "s", color="tab:red")
        ax.plot([0, last], [before, after], ":", color="tab:red")
    ax.set_title(reward_title)
    if reward_ylim is not None:
        ax.set_ylim(*reward_ylim)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot(it, _series(history, "kl"), "o-", color="tab:purple")
    ax.set_title("KL(policy || reference), per response")
    ax = axes[0][2]
    ax.plot(it, _series(history, "actor/policy_loss"), "o-", label="policy loss")
    for key, label in (("actor/kl_loss", "KL loss"), ("critic/value_loss", "value loss")):
        if any(key in m for m in history):
            ax.plot(it, _series(history, key), "o-", label=label)
    ax.set_title("losses")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    lengths = _series(history, "response_length")
    ax.plot(it, lengths, "o-", color="tab:green", label="response tokens")
    ax.set_ylim(0, max([x for x in lengths if x == x] + [1.0]) * 1.1)
    ax.set_title("response length / truncated fraction")
    ax2 = ax.twinx()
    ax2.plot(it, _series(history, "truncated_fraction"), "s--", color="tab:orange",
             label="truncated")
    ax2.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    ax = axes[1][1]
    phases = [p for p in PHASE_ORDER if any(f"time/{p}" in m for m in history)]
    bottom = [0.0] * len(history)
    for phase in phases:
        values = [m.get(f"time/{phase}", 0.0) for m in history]
        ax.bar(it, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("seconds per phase")
    ax.legend(fontsize=8)
    ax = axes[1][2]
    replicas = sorted({k.split("/")[1] for m in history for k in m
                       if k.startswith("rollout/") and k.endswith("/samples")})
    for name in replicas:
        ax.plot(it, [m.get(f"rollout/{name}/samples", 0.0) for m in history], "o-",
                label=name)
    ax.set_title("samples generated per rollout replica")
    if replicas:
        ax.legend(fontsize=8)
    for row in axes:
        for a in row:
            a.set_xlabel("iteration")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
