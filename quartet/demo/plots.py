"""`curves.png`: reward, KL, losses and response length per PPO iteration."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], out: Path, before: float | None = None,
                after: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [int(m["iteration"]) for m in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0][0]
    ax.plot(it, [m["reward"] for m in history], "o-", label="train reward (sampled, T=0.7)")
    if before is not None and after is not None:
        ax.plot([0], [before], "s", color="tab:red", label="held-out accuracy (greedy)")
        ax.plot([it[-1] if it else 1], [after], "s", color="tab:red")
        ax.plot([0, it[-1] if it else 1], [before, after], ":", color="tab:red")
    ax.set_title("reward = verifier accuracy")
    ax.set_xlabel("iteration")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot(it, [m["kl"] for m in history], "o-", color="tab:purple")
    ax.set_title("KL(policy || reference), per response")
    ax.set_xlabel("iteration")
    ax = axes[1][0]
    ax.plot(it, [m.get("actor/policy_loss", float("nan")) for m in history], "o-",
            label="policy loss")
    if any("actor/kl_loss" in m for m in history):
        ax.plot(it, [m.get("actor/kl_loss", float("nan")) for m in history], "o-",
                label="KL loss")
    if any("critic/value_loss" in m for m in history):
        ax.plot(it, [m.get("critic/value_loss", float("nan")) for m in history], "o-",
                label="value loss")
    ax.set_title("losses")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    ax.plot(it, [m["response_length"] for m in history], "o-", color="tab:green",
            label="response tokens")
    ax.set_ylim(0, max([m["response_length"] for m in history] + [1.0]) * 1.1)
    ax.set_xlabel("iteration")
    ax.set_title("response length / truncated fraction")
    ax2 = ax.twinx()
    ax2.plot(it, [m.get("truncated_fraction", float("nan")) for m in history], "s--",
             color="tab:orange", label="truncated")
    ax2.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    fig.suptitle("quartet demo: GRPO on SmolLM2-135M-Instruct (arithmetic, verifier reward)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
