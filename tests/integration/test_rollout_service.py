"""Two real rollout replicas (vLLM and HF backends) as `quartet serve rollout` subprocesses:
generation against transformers, and versioned weight updates from this process acting as
the actor's rank 0 over a gloo group, plus the gRPC-streamed fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch

from quartet.clients.health import wait_for_serving
from quartet.clients.rollout import GrpcRolloutClient, broadcast_update, generate_sharded
from quartet.types import SamplingConfig
from quartet.weightsync import (
    TensorSpec,
    WeightGroupConfig,
    WeightSender,
    free_port,
    init_weight_group,
    specs_of,
)

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [[1, 50, 60, 70], [1, 51], [1, 80, 81, 82, 83, 84, 85, 86, 87]]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_new_tokens=10, logprobs=True)
BACKENDS = ("vllm", "hf")
# The vLLM replica as a shell with MKL_NUM_THREADS=1 starts it by hand: torch would compute on
# 1 thread while OpenMP defaults to 2, and vLLM's CPU attention aborted its first step on
# that ("thread_num (2 vs. 1)") until the generator aligned the two.
REPLICA_THREADS = {"vllm": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "1"},
                   "hf": {"OMP_NUM_THREADS": "1"}}


def start_replica(model: Path, backend: str, workdir: str) -> tuple[subprocess.Popen, Path]:
    port_file = Path(workdir) / f"{backend}.port"
    log = open(Path(workdir) / f"{backend}.log", "w")
    tmp = Path(workdir) / f"{backend}-tmp"  # its temporary files, to check none is left
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quartet.cli.main", "serve", "rollout", "--port", "0",
         "--port-file", str(port_file), "--model", str(model), "--backend", backend,
         "--dtype", "float32", "--max-model-len", "256", "--kv-cache-bytes", str(256 << 20),
         "--enforce-eager"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO), **REPLICA_THREADS[backend],
             "TMPDIR": str(tmp)},
    )
    return proc, port_file


@pytest.fixture(scope="module")
def replicas(tiny_model_path, tmp_path_factory):
    pytest.importorskip("vllm")
    workdir = str(tmp_path_factory.mktemp("rollout-it"))
    started = [start_replica(tiny_model_path, b, workdir) for b in BACKENDS]
    clients = []
    try:
        for (proc, port_file), backend in zip(started, BACKENDS, strict=True):
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                assert proc.poll() is None, Path(workdir, f"{backend}.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.1)
            address = f"127.0.0.1:{int(port_file.read_text())}"
            try:
                wait_for_serving(address, timeout_s=180, process=proc, what=backend)
            except Exception:
                print(Path(workdir, f"{backend}.log").read_text())
                raise
            clients.append(GrpcRolloutClient(address))
        yield clients
    finally:
        for c in clients:
            c.close()
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            assert proc.wait(timeout=30) == 0
        # vLLM's in-process engine core rendezvous through a file store in the temporary
        # directory; a replica stopped with SIGTERM removes it (it left one per replica).
        left = [p.name for b in BACKENDS for p in Path(workdir, f"{b}-tmp").iterdir()
                if p.name.startswith("vllm_dist_")]
        assert not left, left


@pytest.fixture(scope="module")
def reference(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def original_weights(tiny_model_path):
    from safetensors.torch import load_file

    return load_file(str(tiny_model_path / "model.safetensors"))


def greedy_tokens(client) -> list[list[int]]:
    return [o.samples[0].token_ids for o in client.generate(PROMPTS, GREEDY)]


def test_replicas_report_backend_and_match_transformers(replicas, reference):
    for client, backend in zip(replicas, BACKENDS, strict=True):
        info = client.info()
        assert info.backend == backend and info.inflight_requests == 0
        outs = client.generate(PROMPTS, GREEDY, return_text=True)
        for out, prompt in zip(outs, PROMPTS, strict=True):
            with torch.no_grad():
                want = reference.generate(torch.tensor([prompt]), max_new_tokens=10,
                                          do_sample=False, top_p=None, top_k=None,
                                          temperature=None, pad_token_id=0)[0, len(prompt):]
            s = out.samples[0]
            assert s.token_ids == want.tolist()[: len(s.token_ids)]
            assert out.weight_version == info.weight_version
            assert s.text is not None and len(s.logprobs) == len(s.token_ids)


def test_sharded_generation_over_replicas(replicas):
    outs = generate_sharded(replicas, PROMPTS * 2, SamplingConfig(n=2, max_new_tokens=4))
    assert [o.prompt_index for o in outs] == list(range(6))
    assert all(o.prompt_tokens == (PROMPTS * 2)[i] for i, o in enumerate(outs))


def test_weight_update_round_trip_over_gloo(replicas, original_weights):
    before = [greedy_tokens(c) for c in replicas]
    assert before[0] == before[1]
    version = max(c.info().weight_version for c in replicas) + 1
    port = free_port()
    cfg = WeightGroupConfig("127.0.0.1", port, len(replicas) + 1, 0, timeout_s=120)
    joins = [c.init_weight_group_future(cfg.with_rank(i + 1)) for i, c in enumerate(replicas)]
    group = init_weight_group(cfg)  # this process is the actor's rank 0
    assert [f.result(timeout=60).rank for f in joins] == [1, 2]
    sender = WeightSender(group, bucket_bytes=64 << 10)

    g = torch.Generator().manual_seed(1)
    changed = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in
               original_weights.items()}
    results = broadcast_update(replicas, sender, version, changed)
    assert [r.version for r in results] == [version] * 2
    after = [greedy_tokens(c) for c in replicas]
    assert after[0] != before[0]
    assert after[0] == after[1]  # both backends loaded the same new weights
    assert all(c.info().weight_version == version for c in replicas)

    broadcast_update(replicas, sender, version + 1, original_weights)
    assert [greedy_tokens(c) for c in replicas] == before  # restored exactly
    outs = replicas[0].generate(PROMPTS[:1], GREEDY)
    assert outs[0].weight_version == version + 1

    # A stale session and a bad manifest are refused; the replicas keep serving.
    specs = specs_of(original_weights)
    with pytest.raises(grpc.RpcError) as err:
        replicas[0].begin_weight_update(version, specs)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version:" in err.value.details()
    bad = [TensorSpec(specs[0].name, torch.float32, (7, 7)), *specs[1:]]
    with pytest.raises(grpc.RpcError) as err:
        replicas[1].begin_weight_update(version + 2, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensors[0].shape" in err.value.details()
    assert [greedy_tokens(c) for c in replicas] == before
    group.close()


def greedy_outputs(client) -> list[tuple[list[int], list[float]]]:
    return [(o.samples[0].token_ids, o.samples[0].logprobs)
            for o in client.generate(PROMPTS, GREEDY)]


def test_weight_update_through_shared_memory_loads_the_broadcasts_bits(replicas,
                                                                       original_weights):
    """The same-host plane, through its ring of two 64 KiB slots (the replicas copy chunk
    after chunk out of it) and written whole (64 MiB buckets: the tiny model fits in the
    ring, loaded from views): both backends then generate exactly (tokens and log-probs)
    what the same weights broadcast gave; overwriting the segment afterwards changes
    nothing (no loader kept a view of it), and no file stays in /dev/shm."""
    from quartet.weightsync import shm

    files = shm.segment_names()
    version = max(c.info().weight_version for c in replicas) + 1
    g = torch.Generator().manual_seed(2)
    changed = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in
               original_weights.items()}
    outputs = {}
    for plane, shared, bucket_bytes in (("broadcast", False, 64 << 10),
                                        ("ring", True, 64 << 10), ("whole", True, 64 << 20)):
        cfg = WeightGroupConfig("127.0.0.1", free_port(), len(replicas) + 1, 0,
                                timeout_s=120, shared_memory=shared)
        joins = [c.init_weight_group_future(cfg.with_rank(i + 1))
                 for i, c in enumerate(replicas)]
        group = init_weight_group(cfg)
        assert [f.result(timeout=60).rank for f in joins] == [1, 2]
        assert (group.segment is not None) == shared
        sender = WeightSender(group, bucket_bytes=bucket_bytes)
        broadcast_update(replicas, sender, version, changed)
        outputs[plane] = [greedy_outputs(c) for c in replicas]
        if shared:
            segment = group.segment
            assert (segment.size() == shm.RING_SLOTS * (64 << 10)) == (plane == "ring")
            segment.writable(segment.size()).fill_(0xFF)  # NaNs, were anything still a view
            assert [[t for t, _ in greedy_outputs(c)] for c in replicas] == [
                [t for t, _ in out] for out in outputs[plane]]
        broadcast_update(replicas, sender, version + 1, original_weights)
        version += 2
        group.close()
    assert outputs["ring"] == outputs["broadcast"] == outputs["whole"]
    assert not shm.segments_left(files)


def test_push_weights_fallback_round_trip(replicas, original_weights):
    client = replicas[0]
    before = greedy_tokens(client)
    version = client.info().weight_version + 1
    scaled = {k: v * 1.5 if "mlp" in k else v for k, v in original_weights.items()}
    assert client.push_weights(version, scaled, chunk_bytes=1 << 16).version == version
    assert greedy_tokens(client) != before
    assert client.push_weights(version + 1, original_weights).version == version + 1
    assert greedy_tokens(client) == before


def test_bad_input_keeps_replica_serving(replicas):
    client = replicas[0]
    for prompts, sampling, code, field in [
        ([], SamplingConfig(), grpc.StatusCode.INVALID_ARGUMENT, "prompt_tokens"),
        ([[1] * 300], SamplingConfig(), grpc.StatusCode.INVALID_ARGUMENT, "prompt_tokens[0]"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            client.generate(prompts, sampling)
        assert err.value.code() == code and err.value.details().startswith(field)
    assert len(client.generate(PROMPTS, GREEDY)) == 3


def test_cancelled_call_frees_the_engine(replicas):
    client = replicas[0]
    call = client.generate_stream([[1, 5 + i] for i in range(32)],
                                  SamplingConfig(n=4, max_new_tokens=240))
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: next(iter(call), None))
        time.sleep(0.5)
        call.cancel()
    deadline = time.monotonic() + 10
    while client.info().inflight_requests and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.info().inflight_requests == 0
    t = time.monotonic()
    assert len(client.generate(PROMPTS, GREEDY)) == 3
    assert time.monotonic() - t < 5
