"""Traces of a real 2-iteration `quartet ppo` run on the tiny model (all five service roles):
one trace per iteration holding spans from every service, with a correct parent tree; then
`quartet trace` summarises the file and draws the timeline."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from quartet.telemetry.trace_file import iteration_roots, read_spans, traces

HERE = Path(__file__).resolve().parent
SERVICE_ROLES = {"actor", "critic", "reference", "reward", "rollout"}


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory, tiny_model_path, tiny_data):
    out = tmp_path_factory.mktemp("ppo-traced")
    cmd = [
        sys.executable, "-m", "quartet.cli.main", "ppo",
        "--actor.model_name_or_path", str(tiny_model_path),
        "--data.dataset", str(tiny_data["prompts"]),
        "--reward.func", str(HERE / "rewards" / "digit_reward.py"),
        "--rollout.batch_size", "8", "--rollout.max_new_tokens", "8",
        "--train.batch_size", "8", "--train.micro_batch_size", "8",
        "--train.num_iterations", "2", "--ckpt.output_dir", str(out),
        "--ds.param_dtype", "fp32", "--ds.zero_stage", "0", "--algo.kl.init_coef", "0.01",
        "--vllm.num_engines", "2", "--vllm.backend", "hf",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_one_trace_per_iteration_with_every_service(traced_run):
    spans = read_spans(traced_run / "trace.jsonl")
    roots = iteration_roots(spans)
    assert [r.attributes["quartet.iteration"] for r in roots] == [0, 1]
    assert len({r.trace_id for r in roots}) == 2
    by_trace = traces(spans)
    for root in roots:
        members = by_trace[root.trace_id]
        assert {s.role for s in members} == SERVICE_ROLES | {"coordinator"}, \
            Counter(s.role for s in members)
        # both rollout replicas generated, each under this iteration's trace
        assert {s.replica for s in members if s.name == "Generate" and s.kind == "SERVER"} \
            == {"rollout0", "rollout1"}
        phases = {s.name for s in members if s.parent_id == root.span_id}
        assert {"generate", "score", "advantage", "train", "sync"} <= phases, phases


def test_parent_links_form_one_tree_per_iteration(traced_run):
    spans = read_spans(traced_run / "trace.jsonl")
    by_trace = traces(spans)
    for root in iteration_roots(spans):
        members = {s.span_id: s for s in by_trace[root.trace_id]}
        assert len(members) == len(by_trace[root.trace_id]), "span ids repeat"
        for s in members.values():
            if s is root:
                continue
            assert s.parent_id in members, f"{s.role}/{s.name} has a parent outside the trace"
            parent = members[s.parent_id]
            assert parent.start_ns <= s.start_ns, f"{s.name} starts before its parent"
            if s.kind == "SERVER":
                # each service's span hangs under the coordinator's client span of that call
                assert parent.kind == "CLIENT" and parent.role == "coordinator", (s, parent)
                assert parent.name == s.name
                # every request header names this iteration (weight RPCs: the update they carry)
                assert s.attributes.get("quartet.iteration",
                                        root.attributes["quartet.iteration"]) == \
                    root.attributes["quartet.iteration"], s
            # walking up always reaches the iteration root
            hops, node = 0, s
            while node.parent_id is not None and hops < 20:
                node, hops = members[node.parent_id], hops + 1
            assert node is root
        generate = [s for s in members.values() if s.role == "rollout" and s.name == "Generate"]
        assert generate and all(s.attributes["quartet.run_id"] for s in generate)
        trained = [s for s in members.values() if s.role == "actor" and s.name == "TrainStep"]
        assert trained and all(s.attributes["rpc.request_messages"] >= 1 for s in trained)


def test_quartet_trace_prints_time_per_role_and_draws_the_timeline(traced_run):
    png = traced_run / "timeline.png"
    result = subprocess.run(
        [sys.executable, "-m", "quartet.cli.main", "trace", str(traced_run / "trace.jsonl"),
         "--png", str(png)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("iteration ") == 2, result.stdout
    for row in ("actor", "critic", "reference", "reward0", "rollout0", "rollout1"):
        assert row in result.stdout, result.stdout
    assert png.stat().st_size > 10_000
    assert (traced_run / "curves.png").stat().st_size > 10_000
