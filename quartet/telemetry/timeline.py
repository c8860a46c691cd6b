"""`quartet trace`: where an iteration's time went, per phase and per role, and a timeline
PNG with one row per service and replica and one bar per span."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from quartet.telemetry.trace_file import Span, iteration_roots, traces


def busy_seconds(spans: list[Span]) -> float:
    """Wall time covered by at least one of the spans (overlaps counted once)."""
    total, end = 0, None
    for s in sorted(spans, key=lambda s: s.start_ns):
        if end is None or s.start_ns > end:
            total += s.end_ns - s.start_ns
            end = s.end_ns
        elif s.end_ns > end:
            total += s.end_ns - end
            end = s.end_ns
    return total / 1e9


def iteration_summary(root: Span, spans: list[Span]) -> dict[str, object]:
    """Phase seconds (children of the root) and busy seconds of each service row (its SERVER
    spans) for the iteration whose root is `root`."""
    phases: dict[str, float] = defaultdict(float)
    for s in spans:
        if s.parent_id == root.span_id:
            phases[s.name] += s.seconds
    rows: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        if s.kind == "SERVER":
            rows[s.row].append(s)
    return {"iteration": root.attributes.get("quartet.iteration"), "seconds": root.seconds,
            "phases": dict(phases), "services": {r: busy_seconds(v) for r, v in rows.items()}}


def summarize(spans: list[Span]) -> str:
    by_trace = traces(spans)
    roots = iteration_roots(spans)
    if not roots:
        return "no PPO iteration spans in this file"
    lines = []
    for root in roots:
        summary = iteration_summary(root, by_trace[root.trace_id])
        it = summary["iteration"]
        lines.append(f"iteration {int(it) + 1 if it is not None else '?'}: "
                     f"{summary['seconds']:.2f}s  (trace {root.trace_id})")
        lines.append("  phases:   " + "  ".join(
            f"{k}={v:.2f}s" for k, v in summary["phases"].items()))
        lines.append("  services busy (server spans):")
        for row, sec in sorted(summary["services"].items(), key=lambda kv: -kv[1]):
            share = 100 * sec / max(summary["seconds"], 1e-9)
            lines.append(f"    {row:<28} {sec:7.2f}s  {share:5.1f}%")
    return "\n".join(lines)


def draw_timeline(spans: list[Span], out: Path, max_iterations: int | None = None) -> Path:
    """One row per service/replica, one bar per span (coordinator phases and every RPC's
    server side), for the iterations in the file (or the first `max_iterations`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roots = iteration_roots(spans)[:max_iterations]
    trace_ids = {r.trace_id for r in roots}
    phase_ids = {s.span_id for s in spans if s.parent_id in {r.span_id for r in roots}}
    shown = [s for s in spans if s.trace_id in trace_ids
             and (s.kind == "SERVER" or s.span_id in phase_ids)]
    if not shown:
        raise ValueError("no PPO iteration spans to draw")
    t0 = min(s.start_ns for s in shown)
    rows = sorted({s.row for s in shown}, key=lambda r: (not r.startswith("coordinator"), r))
    names = sorted({s.name for s in shown})
    cmap = plt.get_cmap("tab20")
    color = {n: cmap(i % 20) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(14, 0.55 * len(rows) + 2))
    for s in shown:
        y = rows.index(s.row)
        ax.barh(y, s.seconds, left=(s.start_ns - t0) / 1e9, height=0.6, color=color[s.name],
                edgecolor="black", linewidth=0.3)
    for r in roots:
        x = (r.start_ns - t0) / 1e9
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        it = r.attributes.get("quartet.iteration")
        ax.text(x, len(rows) - 0.4, f" iter {int(it) + 1 if it is not None else '?'}",
                fontsize=8, color="grey")
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first iteration started")
    handles = [matplotlib.patches.Patch(color=color[n], label=n) for n in names]
    ax.legend(handles=handles, fontsize=7, ncol=min(len(names), 6), loc="upper center",
              bbox_to_anchor=(0.5, -0.12 if len(rows) > 3 else -0.25))
    ax.set_title("quartet trace: coordinator phases and server spans per service replica")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
