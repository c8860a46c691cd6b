"""A member that dies, hangs or is dropped must not hold the others of a weight group in a
collective for the group's timeout (120 s here): every member leaves within seconds once
the group is aborted, and a member whose collective failed aborts it for everyone."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from quartet.weightsync import (
    WeightGroupConfig,
    WeightReceiver,
    WeightSender,
    WeightSyncError,
    abort_weight_group,
    free_port,
    host_store,
    init_weight_group,
    specs_of,
)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from weight_member_main import (  # noqa: E402
    BUCKET_BYTES,
    GROUP_TIMEOUT_S,
    PROMPT_S,
    config,
    tensors,
)

MEMBER = HERE / "weight_member_main.py"
REPO = HERE.parents[1]


def form(world: int) -> tuple[WeightGroupConfig, list]:
    """A group of `world` members in this process, one thread each (rank 0 hosts)."""
    store = host_store("127.0.0.1", world, GROUP_TIMEOUT_S)
    cfg = WeightGroupConfig("127.0.0.1", store.port, world, 0, timeout_s=GROUP_TIMEOUT_S)
    groups: list = [None] * world

    def join(rank: int) -> None:
        groups[rank] = init_weight_group(cfg.with_rank(rank),
                                         store=store if rank == 0 else None)

    threads = [threading.Thread(target=join, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(groups), "the group did not form"
    return cfg, groups


def listening(port: int) -> bool:
    """Whether a socket on this host listens on `port` (read from /proc/net/tcp: connecting
    to find out would be one more client of the store under test)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def in_thread(fn) -> tuple[threading.Thread, dict]:
    """Runs `fn` on a thread; the dict gets `error` (or `result`) and `seconds`."""
    out: dict = {}

    def run() -> None:
        start = time.monotonic()
        try:
            out["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out["error"] = exc
        out["seconds"] = time.monotonic() - start

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def assert_all_leave(waiting: list[tuple[threading.Thread, dict]], *phrases: str) -> None:
    """Every waiting member left within `PROMPT_S` with a WeightSyncError naming `phrases`."""
    for t, out in waiting:
        t.join(PROMPT_S)
        assert not t.is_alive(), "a member stayed in the aborted group"
        assert isinstance(out["error"], WeightSyncError)
        for phrase in phrases:
            assert phrase in str(out["error"])


def test_receivers_waiting_for_a_session_that_never_comes_leave_when_it_is_aborted():
    """The retired-replica stall: a replica began a session, the sync never broadcast it
    (another replica died first), and the group is aborted through its store from
    another process's point of view (the coordinator, or the actor re-forming)."""
    cfg, (sender, *receivers) = form(3)
    want = specs_of(tensors(1))
    waiting = [in_thread(lambda g=g: list(WeightReceiver(g).receive(1, want)))
               for g in receivers]
    time.sleep(1.0)
    assert all(t.is_alive() for t, _ in waiting)  # really blocked in the collective
    assert abort_weight_group(cfg, "rollout1 retired")
    assert_all_leave(waiting, "rollout1 retired")
    # the sender learns it too, and a new group on a new store forms at once
    with pytest.raises(WeightSyncError, match="aborted: rollout1 retired"):
        sender.barrier()
    _, groups = form(2)
    t, out = in_thread(lambda: list(WeightReceiver(groups[1]).receive(2, want)))
    WeightSender(groups[0], BUCKET_BYTES).send(2, tensors(1))
    t.join(PROMPT_S)
    assert [n for n, _ in out["result"]] == ["t0"]


def test_a_sender_blocked_on_a_hung_receiver_leaves_when_the_group_is_aborted():
    """A receiver that joined but stopped receiving (hung, or its process frozen): the
    sender's broadcast blocks once the socket buffers are full, and returns on abort."""
    cfg, (sender, receiving, _hung) = form(3)
    big = tensors(8)  # 64 MiB: far beyond what the socket buffers take without a reader
    rx, _ = in_thread(lambda: list(WeightReceiver(receiving).receive(1, specs_of(big))))
    tx, sent = in_thread(lambda: WeightSender(sender, BUCKET_BYTES).send(1, big))
    time.sleep(1.5)
    assert tx.is_alive(), "the broadcast did not block on the hung receiver"
    sender.abort("rank 2 hung")
    tx.join(PROMPT_S)
    rx.join(PROMPT_S)
    assert not tx.is_alive() and not rx.is_alive()
    assert isinstance(sent["error"], WeightSyncError)
    assert "rank 2 hung" in str(sent["error"])


def test_a_receiver_killed_during_the_broadcast_does_not_hold_the_others():
    """Rank 2 SIGKILLs itself after the first of 24 buckets: the sender's send to it fails,
    the sender aborts the group, and rank 1 (this process), which would otherwise wait
    for the next bucket until the group's timeout, leaves within seconds."""
    port, world, buckets = free_port(), 3, 24
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    sender = subprocess.Popen([sys.executable, str(MEMBER), "send", str(port), str(world),
                               str(buckets)], cwd=REPO, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    dying = subprocess.Popen([sys.executable, str(MEMBER), "die", str(port), str(world), "2",
                              str(buckets)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        group = init_weight_group(config(port, world, 1))
        start = time.monotonic()
        received = []
        with pytest.raises(WeightSyncError, match="aborted") as caught:
            for name, _ in WeightReceiver(group).receive(1, specs_of(tensors(buckets))):
                received.append(name)
        seconds = time.monotonic() - start
        assert dying.wait(60) == -9  # really SIGKILLed, mid-session
        assert len(received) < buckets, "the broadcast ended before the kill"
        assert seconds < PROMPT_S, (seconds, caught.value)
        assert sender.poll() is None  # rank 0 is alive: the abort, not its exit, freed us
        out, _ = sender.communicate("", timeout=60)
        assert sender.returncode == 0, out  # and it exits cleanly with an abandoned group
        failed = [line for line in out.splitlines() if line.startswith("failed")]
        assert failed and float(failed[0].split()[1]) < PROMPT_S, out
    finally:
        for p in (sender, dying):
            if p.poll() is None:
                p.kill()
                p.wait()


def joining(cfg: WeightGroupConfig, ranks: list[int], store=None) -> list:
    """Each rank of `ranks` starts `init_weight_group` on its own thread (rank 0 hosts)."""
    return [in_thread(lambda r=r: init_weight_group(
        cfg.with_rank(r), store=store if r == 0 else None)) for r in ranks]


def test_members_of_a_group_a_replica_never_joins_leave_when_it_is_aborted():
    """A replica that died before joining (the coordinator sees its InitWeightGroup fail):
    the actor and the other replica, waiting for it to form the group, leave within seconds
    of the coordinator's abort instead of waiting for the group's timeout."""
    store = host_store("127.0.0.1", 3, GROUP_TIMEOUT_S)
    cfg = WeightGroupConfig("127.0.0.1", store.port, 3, 0, timeout_s=GROUP_TIMEOUT_S)
    waiting = joining(cfg, [0, 1], store)
    time.sleep(1.0)
    assert all(t.is_alive() for t, _ in waiting)  # really waiting for rank 2
    assert abort_weight_group(cfg, "rollout 127.0.0.1:1 failed to join")
    assert_all_leave(waiting, "2 of 3 members joined", "rollout 127.0.0.1:1 failed to join")


def test_a_group_that_cannot_form_fails_at_its_timeout_naming_who_is_missing():
    store = host_store("127.0.0.1", 2, 2.0)
    cfg = WeightGroupConfig("127.0.0.1", store.port, 2, 0, timeout_s=2.0)
    [(t, out)] = joining(cfg, [0], store)
    t.join(PROMPT_S)
    assert not t.is_alive()
    assert isinstance(out["error"], WeightSyncError)
    assert "did not form within timeout_s=2: 1 of 2 members joined" in str(out["error"])
    assert 2.0 <= out["seconds"] < 2.0 + PROMPT_S


def test_a_member_leaves_a_forming_group_whose_rank_0_was_killed():
    """Rank 0 (the actor, hosting the store) is SIGKILLed while the group forms: the member
    waiting for the third one learns its store is gone and leaves within seconds."""
    port, world = free_port(), 3
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    host = subprocess.Popen([sys.executable, str(MEMBER), "send", str(port), str(world), "1"],
                            cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        [(t, out)] = joining(config(port, world, 1), [1])
        # Rank 0 is up (its store listens; a loaded host took over 3 s to import torch), then
        # a moment for our join to connect to that store and wait for the third member.
        deadline = time.monotonic() + 60
        while not listening(port):
            assert host.poll() is None and time.monotonic() < deadline, "rank 0 never listened"
            time.sleep(0.1)
        time.sleep(1.5)
        assert t.is_alive() and host.poll() is None
        host.kill()
        assert host.wait(60) == -9
        t.join(PROMPT_S)
        assert not t.is_alive(), "the member stayed in a group whose store is gone"
        assert isinstance(out["error"], WeightSyncError)
        assert "is gone while the group formed" in str(out["error"])
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
