"""The data plane across processes: a sender process (rank 0) and receivers over gloo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quartet.weightsync import (
    WeightGroupConfig,
    WeightReceiver,
    WeightSyncError,
    free_port,
    init_weight_group,
    specs_of,
)

sys.path.insert(0, str(Path(__file__).parent))
from weight_sender_main import make_tensors  # noqa: E402

SENDER = Path(__file__).parent / "weight_sender_main.py"
REPO = Path(__file__).resolve().parents[2]


def start_sender(port: int, versions: str, world: int = 2, bucket_bytes: int = 4096):
    return subprocess.Popen(
        [sys.executable, str(SENDER), str(port), str(world), versions, str(bucket_bytes)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )


def join(port: int, rank: int = 1, world: int = 2):
    return init_weight_group(WeightGroupConfig("127.0.0.1", port, world, rank, timeout_s=60))


def finish(proc) -> str:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_round_trip_from_another_process():
    port = free_port()
    proc = start_sender(port, "1,2")
    group = join(port)
    receiver = WeightReceiver(group)
    for version in (1, 2):
        want = make_tensors(version)
        got = {name: t.clone() for name, t in receiver.receive(version, specs_of(want))}
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
        assert receiver.last_stats.num_buckets > 1  # 4 KiB buckets: really bucketed
    out = finish(proc)
    assert "sent 2" in out
    group.close()


def test_mismatched_session_fails_without_hanging_the_sender():
    port = free_port()
    proc = start_sender(port, "5,6")
    group = join(port)
    receiver = WeightReceiver(group)
    with pytest.raises(WeightSyncError, match="version: the sender sends 5"):
        receiver.receive(4, specs_of(make_tensors(5)))
    # A consumer that stops after one tensor still lets the sender finish.
    it = receiver.receive(6, specs_of(make_tensors(6)))
    next(it)
    it.close()
    assert "sent 6" in finish(proc)
    group.close()


def test_two_receivers_get_the_same_broadcast():
    import threading

    port = free_port()
    proc = start_sender(port, "3", world=3)
    results: dict[int, dict] = {}

    def receive(rank: int) -> None:
        group = join(port, rank=rank, world=3)
        want = make_tensors(3)
        results[rank] = {n: t.clone() for n, t in
                         WeightReceiver(group).receive(3, specs_of(want))}

    threads = [threading.Thread(target=receive, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    finish(proc)
    for rank in (1, 2):
        torch.testing.assert_close(results[rank]["a.weight"], make_tensors(3)["a.weight"])


def test_rank0_opens_the_store_on_its_own_host_before_anyone_joins():
    """The actor picks the port where it runs (host_store), so the coordinator may be
    elsewhere: members learn (address, port) from it, then join."""
    import threading

    from quartet.weightsync import WeightSender, host_store

    store = host_store("127.0.0.1", 2, timeout_s=60)
    cfg = WeightGroupConfig("127.0.0.1", store.port, 2, 0, timeout_s=60)
    joined = {}
    receiver = threading.Thread(target=lambda: joined.update(g=join(store.port)))
    receiver.start()
    sender = init_weight_group(cfg, store=store)
    receiver.join(60)
    want = make_tensors(1)
    got = {}

    def receive():
        got.update((n, t.clone()) for n, t in
                   WeightReceiver(joined["g"]).receive(1, specs_of(want)))

    t = threading.Thread(target=receive)
    t.start()
    WeightSender(sender, 4096).send(1, want)
    t.join(60)
    assert list(got) == list(want)
    sender.close()
    joined["g"].close()


@pytest.mark.parametrize("address, world, timeout_s, field", [
    ("no-such-host.invalid", 2, 60, "master_address"),  # would retry for all of timeout_s
    ("192.0.2.1", 2, 60, "master_address"),  # an address, but not one of this host's
    ("127.0.0.1", 2**40, 60, "world_size"),  # torch takes it as a C int
    ("127.0.0.1", 1, 60, "world_size"),
    ("127.0.0.1", 2, 1e30, "timeout_s"),  # overflows torch's milliseconds
    ("127.0.0.1", 2, float("nan"), "timeout_s"),
])
def test_host_store_refuses_what_it_cannot_host_quickly_and_by_name(address, world, timeout_s,
                                                                  field):
    from quartet.weightsync import host_store

    with pytest.raises(ValueError, match=field):
        host_store(address, world, timeout_s)
