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


def segment_files() -> set[str]:
    return {p.name for p in shm.SHM_DIR.glob(shm.FILE_PREFIX + "*")}


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
    receiver.loaded()
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        assert torch.equal(got[name].view(-1).view(torch.uint8),
                           want[name].view(-1).view(torch.uint8)), name  # bit for bit
    assert receiver.last_stats.num_buckets > 1


@pytest.fixture
def no_segment_left():
    before = segment_files()
    yield
    assert segment_files() == before, "a weight segment was left in /dev/shm"


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
                           for f in segment_files())
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "formed shm=1" in out and "sent 3" in out
        # a segment larger than a bucket (4 KiB here) was freed once every member loaded
        # (before the next session, the sender allocates it again)
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
    """Rank 2 SIGKILLs itself once the group (with its segment) formed: the sender, blocked
    in the session's header until every receiver is in, fails and aborts the group, and
    rank 1 (this process) leaves within seconds, having loaded nothing."""
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
        assert dying.wait(60) == -9
        start = time.monotonic()
        with pytest.raises(WeightSyncError, match="aborted"):
            list(WeightReceiver(group).receive(1, specs_of(tensors(buckets))))
        assert time.monotonic() - start < PROMPT_S
        out, _ = sender.communicate("", timeout=60)
        assert sender.returncode == 0, out
        failed = [line for line in out.splitlines() if line.startswith("failed")]
        assert failed and float(failed[0].split()[1]) < PROMPT_S, out
    finally:
        for p in (sender, dying):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def pair():
    """(sender, receiver) groups of one same-host group formed in this process."""
    store = host_store("127.0.0.1", 2, 60)
    cfg = WeightGroupConfig("127.0.0.1", store.port, 2, 0, timeout_s=60, shared_memory=True)
    joined: dict = {}
    member = threading.Thread(target=lambda: joined.update(g=init_weight_group(
        cfg.with_rank(1))))
    member.start()
    sender = init_weight_group(cfg, store=store)
    member.join(60)
    yield sender, joined["g"]
    sender.close()
    joined["g"].close()


def send_and_receive(pair, want: dict, bucket_bytes: int) -> dict:
    sender, member = pair
    got: dict = {}
    t = threading.Thread(target=lambda: got.update(
        (n, x.clone()) for n, x in WeightReceiver(member).receive(1, specs_of(want))))
    t.start()
    WeightSender(sender, bucket_bytes).send(1, want)
    t.join(60)
    return got


def test_a_segment_within_one_bucket_stays_mapped_between_sessions(pair):
    """No "loaded" round: the pages stay (re-written in place by the next session), as the
    broadcast's packing buffer would hold one bucket."""
    want = {"a": torch.randn(3000), "b": torch.arange(10)}
    got = send_and_receive(pair, want, BUCKET_BYTES)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert pair[0].segment.allocated_bytes() >= 3000 * 4


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
