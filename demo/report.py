"""`report.md`: held-out accuracy before/after with 95% intervals and tests, time per phase."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from demo.stats import paired_difference, two_proportion, wilson
from demo.task import kind_of


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summarize(before: list[dict], after: list[dict]) -> dict:
    b = [bool(r["correct"]) for r in before]
    a = [bool(r["correct"]) for r in after]
    n = len(b)
    paired = paired_difference(b, a)
    z, p_unpaired = two_proportion(sum(b), n, sum(a), n)
    return {
        "n": n, "before": paired.before, "after": paired.after,
        "before_ci": wilson(sum(b), n), "after_ci": wilson(sum(a), n),
        "diff": paired.diff, "diff_ci": (paired.diff_low, paired.diff_high),
        "only_before": paired.only_before, "only_after": paired.only_after,
        "mcnemar_p": paired.mcnemar_p, "z": z, "p_unpaired": p_unpaired,
        "significant": paired.mcnemar_p < 0.05 and paired.diff_low > 0,
    }


def _by_kind(rows: list[dict]) -> dict[str, tuple[int, int]]:
    total: Counter = Counter()
    right: Counter = Counter()
    for r in rows:
        k = kind_of(r["question"])
        total[k] += 1
        right[k] += int(r["correct"])
    return {k: (right[k], total[k]) for k in sorted(total)}


def write_report(out: Path, before: list[dict], after: list[dict], history: list[dict],
                 times: dict[str, float], flags: list[str], services: list[str],
                 notes: dict[str, str]) -> dict:
    s = summarize(before, after)
    mean = lambda rows, key: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
    lines = [
        "# quartet demo report",
        "",
        f"Model: SmolLM2-135M-Instruct ({notes['model']}). Task: arithmetic word problems, "
        f"reward = exact match of the response's last number (verifier). Algorithm: "
        f"{notes['algo']}. Seed {notes['seed']}.",
        "",
        f"## Held-out accuracy ({s['n']} problems never trained on, greedy decoding, "
        f"{notes['max_new_tokens']} new tokens max)",
        "",
        "| | accuracy | 95% CI (Wilson) |",
        "|---|---|---|",
        f"| before | {_pct(s['before'])} | {_pct(s['before_ci'][0])} – {_pct(s['before_ci'][1])} |",
        f"| after | {_pct(s['after'])} | {_pct(s['after_ci'][0])} – {_pct(s['after_ci'][1])} |",
        f"| **gain** | **{100 * s['diff']:+.1f} points** | {100 * s['diff_ci'][0]:+.1f} – "
        f"{100 * s['diff_ci'][1]:+.1f} (paired) |",
        "",
        f"Paired test (same problems): {s['only_after']} problems fixed, {s['only_before']} "
        f"broken; McNemar exact p = {s['mcnemar_p']:.2g}. Unpaired two-proportion z-test: "
        f"z = {s['z']:.2f}, p = {s['p_unpaired']:.2g}. "
        f"**{'Significant' if s['significant'] else 'Not significant'} at the 5% level.**",
        "",
        "| | before | after |",
        "|---|---|---|",
    ]
    kb, ka = _by_kind(before), _by_kind(after)
    for k in kb:
        lines.append(f"| accuracy on `{k}` problems | {kb[k][0]}/{kb[k][1]} | "
                     f"{ka[k][0]}/{ka[k][1]} |")
    lines += [
        f"| mean response tokens | {mean(before, 'tokens'):.1f} | {mean(after, 'tokens'):.1f} |",
        f"| truncated at the token limit | {_pct(mean(before, 'truncated'))} | "
        f"{_pct(mean(after, 'truncated'))} |",
        f"| responses with a number | "
        f"{_pct(sum(r['parsed'] is not None for r in before) / len(before))} | "
        f"{_pct(sum(r['parsed'] is not None for r in after) / len(after))} |",
        "",
        "## Training",
        "",
        "![curves](curves.png)",
        "",
        "| iteration | reward | KL | policy loss | response tokens | truncated |",
        "|---|---|---|---|---|---|",
    ]
    for m in history:
        lines.append(f"| {int(m['iteration'])} | {m['reward']:.3f} | {m['kl']:.4f} | "
                     f"{m.get('actor/policy_loss', float('nan')):.4f} | "
                     f"{m['response_length']:.1f} | {m.get('truncated_fraction', 0):.2f} |")
    phase_sums: dict[str, float] = {}
    for m in history:
        for k, v in m.items():
            if k.startswith("time/"):
                phase_sums[k[5:]] = phase_sums.get(k[5:], 0.0) + v
    lines += ["", "## Time per phase (wall clock)", "", "| phase | seconds |", "|---|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {v:.0f} |")
    lines += ["", "Inside training, summed over iterations:", "", "| PPO phase | seconds |",
              "|---|---|"]
    for k, v in phase_sums.items():
        lines.append(f"| {k} | {v:.0f} |")
    train_wall = next((v for k, v in times.items() if k.startswith("training")), None)
    if train_wall is not None:
        lines.append(f"| (services start, final checkpoint, shutdown) | "
                     f"{train_wall - sum(phase_sums.values()):.0f} |")
    lines += ["", f"Services that ran (one local process each): {', '.join(services)}.", "",
              "## Examples (held-out, before → after)", ""]
    shown = 0
    for rb, ra in zip(before, after, strict=True):
        if not rb["correct"] and ra["correct"] and shown < 4:
            lines += [f"- *{rb['question']}* (answer {rb['answer']})",
                      f"  - before: `{rb['response'].strip()!r}`",
                      f"  - after: `{ra['response'].strip()!r}`"]
            shown += 1
    lines += ["", "## Command and flags", "", "```", "make demo   # python -m demo",
              "quartet ppo \\", *[f"  {f}" for f in _pairs(flags)], "```", ""]
    (out / "report.md").write_text("\n".join(lines))
    return s


def _pairs(flags: list[str]) -> list[str]:
    out: list[str] = []
    for f in flags:
        if f.startswith("--") or not out:
            out.append(f)
        else:
            out[-1] += f" {f}"
    return [x + " \\" for x in out[:-1]] + out[-1:]
