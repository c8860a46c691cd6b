"""The same-host shared-memory data plane (`quartet.weightsync.shm`) across processes: the
bytes a receiver loads are the sender's bit for bit, a member that cannot take the segment
makes every member broadcast, faults end sessions as on the broadcast path, and nothing is
left in /dev/shm (after a run, a SIGKILL of the sender, or a creator killed mid-formation).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from quartet.weightsync import (
    WeightGroupConfig,
    WeightReceiver,
    WeightSender,
    WeightSyncError,
    free_port,
    host_store,
    init_weight_group,
    shm,
    specs_of,
)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from weight_member_main import BUCKET_BYTES, PROMPT_S, config, tensors  # noqa: E402
from weight_sender_main import make_tensors  # noqa: E402

REPO = HERE.parents[1]
SENDER = HERE / "weight_sender_main.py"
MEMBER = HERE / "weight_member_main.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def start_sender(port: int, versions: str, offer: bool = True) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SENDER), str(port), "2", versions, "4096",
                             "1" if offer else "0"], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def join(port: int, take: bool = True):
    return init_weight_group(WeightGroupConfig("127.0.0.1", port, 2, 1, timeout_s=60,
                                               shared_memory=take))


def receive_exact(group, version: int) -> None:
    want = make_tensors(version)
    receiver = WeightReceiver(group)
    got = {name: t.clone() for name, t in receiver.receive(version, specs_of(want))}
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        assert torch.equal(got[name].view(-1).view(torch.uint8),
                           want[name].view(-1).view(torch.uint8)), name  # bit for bit
    assert receiver.last_stats.num_buckets > 1


@pytest.fixture
def no_segment_left():
    before = shm.segment_names()
    yield
    assert not shm.segments_left(before), "a weight segment was left in /dev/shm"


def test_a_session_through_shared_memory_is_bit_exact_and_no_file_stays(no_segment_left):
    port = free_port()
    proc = start_sender(port, "1,2,3")
    group = join(port)
    try:
        assert group.segment is not None
        for version in (1, 2, 3):
            receive_exact(group, version)
            # unlinked once every member held it: only descriptors and mappings remain
            assert not any(f.startswith(f"{shm.FILE_PREFIX}{proc.pid}-")
                           for f in shm.segment_names())
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "formed shm=1" in out and "sent 3" in out
        # the sessions (~40 KB) went through the ring of two 4 KiB slots (the bucket size
        # here), whose pages were freed once every member copied the last chunk (before
        # the next session, the sender allocates them again)
        assert group.segment.size() == shm.RING_SLOTS * 4096
        assert group.segment.allocated_bytes() <= shm.DATA_OFFSET
    finally:
        group.close()
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("why", ["declined", "another host"])
def test_a_member_that_cannot_take_the_segment_makes_every_member_broadcast(
        why, monkeypatch, no_segment_left):
    if why == "another host":
        monkeypatch.setattr(shm, "host_id", lambda: "a-boot-id-of-another-host")
    port = free_port()
    proc = start_sender(port, "1")
    group = join(port, take=why != "declined")
    try:
        assert group.segment is None
        receive_exact(group, 1)
        out, _ = proc.communicate(timeout=60)
        assert "formed shm=0" in out and "sent 1" in out, out
    finally:
        group.close()


def test_a_mismatched_session_fails_without_hanging_the_sender(no_segment_left):
    port = free_port()
    proc = start_sender(port, "5,6")
    group = join(port)
    try:
        with pytest.raises(WeightSyncError, match="version: the sender sends 5"):
            WeightReceiver(group).receive(4, specs_of(make_tensors(5)))
        receive_exact(group, 6)  # the next session is whole
        out, _ = proc.communicate(timeout=60)
        assert "sent 6" in out, out
    finally:
        group.close()


def test_a_sigkilled_sender_leaves_nothing_in_dev_shm_and_frees_the_receiver(no_segment_left):
    """The sender sent version 1 and waits for this member in version 2's header when it
    is killed: the receiver leaves within seconds (its store is gone) and /dev/shm holds
    none of its files."""
    port = free_port()
    proc = start_sender(port, "1,2")
    group = join(port)
    try:
        receive_exact(group, 1)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -9
        start = time.monotonic()
        with pytest.raises(WeightSyncError, match="aborted|gone|failed"):
            WeightReceiver(group).receive(2, specs_of(make_tensors(2)))
        assert time.monotonic() - start < PROMPT_S
    finally:
        group.close()
        if proc.poll() is None:
            proc.kill()


def test_a_receiver_killed_in_a_session_does_not_hold_the_others(no_segment_left):
    """Rank 2 SIGKILLs itself once the first bucket (8 MiB, one slot) came through the ring:
    the sender, blocked in a chunk's all-reduce until every receiver copied the one
    before, fails and aborts the group, and rank 1 (this process) leaves within seconds,
    having loaded nothing."""
    port, world, buckets = free_port(), 3, 4
    sender = subprocess.Popen([sys.executable, str(MEMBER), "send", str(port), str(world),
                               str(buckets), "1"], cwd=REPO, env=ENV, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    dying = subprocess.Popen([sys.executable, str(MEMBER), "die", str(port), str(world), "2",
                              str(buckets), "1"], cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        group = init_weight_group(config(port, world, 1, shm=1))
        assert group.segment is not None
        start = time.monotonic()  # the session, rank 2's death in it, and the abort
        with pytest.raises(WeightSyncError, match="aborted"):
            list(WeightReceiver(group).receive(1, specs_of(tensors(buckets))))
        assert time.monotonic() - start < PROMPT_S
        assert dying.wait(60) == -9
        out, _ = sender.communicate("", timeout=60)
        assert sender.returncode == 0, out
        failed = [line for line in out.splitlines() if line.startswith("failed")]
        assert failed and float(failed[0].split()[1]) < PROMPT_S, out
    finally:
        for p in (sender, dying):
            if p.poll() is None:
                p.kill()
                p.wait()


def form_pair(shared_memory: bool = True):
    """(sender, receiver) groups of one same-host group formed in this process."""
    store = host_store("127.0.0.1", 2, 60)
    cfg = WeightGroupConfig("127.0.0.1", store.port, 2, 0, timeout_s=60,
                            shared_memory=shared_memory)
    joined: dict = {}
    member = threading.Thread(target=lambda: joined.update(g=init_weight_group(
        cfg.with_rank(1))))
    member.start()
    sender = init_weight_group(cfg, store=store)
    member.join(60)
    assert (sender.segment is not None) == shared_memory
    return sender, joined["g"]


@pytest.fixture
def pair():
    sender, member = form_pair()
    yield sender, member
    sender.close()
    member.close()


def send_and_receive(pair, want: dict, bucket_bytes: int, version: int = 1,
                     on_tensor=lambda: None, stop_after: int | None = None) -> dict:
    """What the receiver of `pair` got (clones; the first `stop_after` tensors only, the
    consumer then stops), `on_tensor` called on its thread after each tensor arrived."""
    sender, member = pair
    got: dict = {}

    def consume():
        for name, x in WeightReceiver(member).receive(version, specs_of(want)):
            got[name] = x.clone()
            on_tensor()
            if len(got) == stop_after:
                break

    t = threading.Thread(target=consume)
    t.start()
    WeightSender(sender, bucket_bytes).send(version, want)
    t.join(60)
    assert not t.is_alive()
    return got


def ring_model(version: int) -> dict[str, torch.Tensor]:
    """Several 4 KiB buckets and tensors that straddle 4 KiB slots: ~30 chunks."""
    g = torch.Generator().manual_seed(version)
    return {"embed": torch.randn(50, 97, generator=g),  # 19400 B: alone, five chunks
            **{f"layer{i}.w": torch.randn(31, 13, generator=g).to(torch.bfloat16)
               for i in range(12)},
            "layer.mask": torch.rand(1001, generator=g) > 0.5,
            "head": torch.randn(4000, generator=g, dtype=torch.float64)}  # 32000 B


def test_a_multi_bucket_model_through_the_ring_equals_the_broadcast_bit_for_bit(pair):
    """Chunks cut across tensors and buckets, slots reused ~15 times each: every byte as
    the broadcast delivers it (and as sent), session after session."""
    broadcast = form_pair(shared_memory=False)
    try:
        for version in (1, 2, 3):
            want = ring_model(version)
            through_ring = send_and_receive(pair, want, 4096, version)
            broadcasted = send_and_receive(broadcast, want, 4096, version)
            assert list(through_ring) == list(broadcasted) == list(want)
            for name in want:
                for got in (through_ring[name], broadcasted[name]):
                    assert got.dtype == want[name].dtype and got.shape == want[name].shape
                    assert torch.equal(got.reshape(-1).view(torch.uint8),
                                       want[name].reshape(-1).view(torch.uint8)), name
    finally:
        for group in broadcast:
            group.close()


def test_the_segment_holds_at_most_two_slots_during_a_session_and_none_after(pair):
    """The whole model (~60 KB here, 4 KiB buckets) never lands in /dev/shm: while the
    receiver copies chunk after chunk, the segment holds two slots of one bucket each."""
    sender, _ = pair
    want = ring_model(1)
    model_bytes = sum(t.numel() * t.element_size() for t in want.values())
    assert model_bytes > 7 * shm.RING_SLOTS * 4096
    seen: list[int] = []
    got = send_and_receive(pair, want, 4096,
                           on_tensor=lambda: seen.append(sender.segment.allocated_bytes()))
    assert len(got) == len(want)
    assert max(seen) <= shm.DATA_OFFSET + shm.RING_SLOTS * 4096, seen
    assert sender.segment.size() == shm.RING_SLOTS * 4096
    assert sender.segment.allocated_bytes() <= shm.DATA_OFFSET  # freed after the session


def test_the_slot_is_capped_below_a_large_bucket():
    assert shm.slot_bytes(4096) == 4096
    assert shm.slot_bytes(64 << 20) == shm.MAX_SLOT_BYTES == 16 << 20


def test_a_consumer_that_stops_early_in_the_ring_does_not_hang_the_sender(pair):
    got = send_and_receive(pair, ring_model(1), 4096, stop_after=2)
    assert len(got) == 2
    want = ring_model(2)
    got = send_and_receive(pair, want, 4096, version=2)  # the next session is whole
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_session_within_two_slots_stays_mapped_between_sessions(pair):
    """Written whole, loaded from views, no "freed" round: the pages stay (re-written in
    place by the next session), as the broadcast's packing buffer would hold one bucket."""
    want = {"a": torch.randn(1500), "b": torch.arange(10)}  # 6096 B in the layout
    got = send_and_receive(pair, want, 4096)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert pair[0].segment.allocated_bytes() >= 1500 * 4
    assert pair[0].segment.size() < shm.RING_SLOTS * 4096  # the session's bytes, no ring


def test_a_session_without_room_in_dev_shm_is_broadcast(pair, monkeypatch, caplog):
    def full(self, nbytes):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shm.SharedSegment, "writable", full)
    assert pair[0].segment is not None and pair[1].segment is not None
    want = {"a": torch.randn(3000), "b": torch.arange(10)}
    with caplog.at_level(logging.WARNING, "quartet.weightsync"):
        got = send_and_receive(pair, want, BUCKET_BYTES)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert "this session broadcasts" in caplog.text


def test_a_file_left_by_a_creator_killed_mid_formation_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{shm.FILE_PREFIX}{dead.pid}-0123456789abcdef"
    stale.write_bytes(b"x")
    mine = tmp_path / f"{shm.FILE_PREFIX}{os.getpid()}-fedcba9876543210"
    mine.write_bytes(b"x")  # a live creator's (this process): kept
    offer = shm.offer_segment(dist.HashStore(), True, directory=tmp_path)
    assert offer is not None
    assert not stale.exists() and mine.exists() and offer.path.exists()
    offer.withdraw()
    offer.segment.close()
    assert not offer.path.exists()


def test_an_offer_is_taken_only_with_its_token(tmp_path):
    store = dist.HashStore()
    offer = shm.offer_segment(store, True, directory=tmp_path)
    try:
        taken = shm.accept_segment(store, True)
        assert taken is not None
        taken.close()
        forged = store.get(shm.OFFER_KEY).decode().replace('"token": "', '"token": "0')
        store.set(shm.OFFER_KEY, forged)
        assert shm.accept_segment(store, True) is None
    finally:
        offer.withdraw()
        offer.segment.close()


def test_a_leak_check_counts_dead_and_own_creators_not_a_live_other_process(tmp_path):
    """What the leak checks here (and in tests run beside them) count: a file that appeared
    and whose creator is gone or is this process; another live process's file is in use."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"{shm.FILE_PREFIX}{os.getpid()}-old").write_bytes(b"x")
        before = shm.segment_names(tmp_path)
        names = [f"{shm.FILE_PREFIX}{pid}-new" for pid in (dead.pid, os.getpid(), other.pid)]
        for name in names:
            (tmp_path / name).write_bytes(b"x")
        assert shm.segments_left(before, tmp_path) == sorted(names[:2])
        assert shm.segments_left(shm.segment_names(tmp_path), tmp_path) == []
    finally:
        other.kill()
        other.wait()
