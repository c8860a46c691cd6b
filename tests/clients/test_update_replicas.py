"""`update_replicas` aborts the weight group when a replica fails during a sync, and
`JoinWatch` when a replica fails to join while the group forms, so the sender and the other
replicas do not wait in it for the group's timeout (fake replicas;
the group itself is tested in tests/weightsync/test_weightsync_abort.py)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import grpc
import pytest

from quartet.clients.base import RoleCallError
from quartet.clients.rollout import JoinWatch, update_replicas
from quartet.weightsync import TensorSpec


class Dead(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


class Replica:
    """What update_replicas uses of a GrpcRolloutClient; `finish` resolves when told."""

    def __init__(self, address: str, begin_fails: bool = False) -> None:
        self.address = address
        self.begin_fails = begin_fails
        self.finish: Future = Future()

    def begin_weight_update(self, version, specs, bucket_bytes, header=None) -> int:
        if self.begin_fails:
            raise Dead()
        return 1

    def finish_weight_update_future(self, version, timeout_s, header=None) -> Future:
        return self.finish


SPECS = [TensorSpec("w", __import__("torch").float32, (2,))]


def test_a_replica_failing_during_the_broadcast_aborts_the_group_and_frees_the_sender():
    a, b = Replica("a:1"), Replica("b:2")
    aborted: list[str] = []
    group_aborted = threading.Event()

    def abort(reason: str) -> None:
        aborted.append(reason)
        group_aborted.set()

    def broadcast() -> str:
        b.finish.set_exception(Dead())  # b dies while the sender is blocked on it
        if not group_aborted.wait(30):
            return "sent"  # the sender would have waited for the group's timeout
        raise RuntimeError("weight group aborted")

    with pytest.raises(RuntimeError, match="weight group aborted"):
        update_replicas([a, b], 3, SPECS, 1 << 20, broadcast, abort=abort)
    assert len(aborted) == 1 and "b:2" in aborted[0] and "version 3" in aborted[0]
    assert a.finish.cancelled()


def test_a_begin_that_fails_after_others_began_aborts_the_group():
    """The retired-replica stall: rollout0 began (its receive waits for a header), then
    rollout1's begin failed, and nothing would ever be broadcast."""
    aborted: list[str] = []
    with pytest.raises(RoleCallError, match="b:2: BeginWeightUpdate"):
        update_replicas([Replica("a:1"), Replica("b:2", begin_fails=True)], 4, SPECS,
                        1 << 20, lambda: pytest.fail("broadcast after a failed begin"),
                        abort=aborted.append)
    assert len(aborted) == 1 and "not begun on every replica" in aborted[0]
    aborted.clear()
    with pytest.raises(RoleCallError):  # the first one: nobody began, nothing to abort
        update_replicas([Replica("a:1", begin_fails=True)], 4, SPECS, 1 << 20,
                        lambda: None, abort=aborted.append)
    assert not aborted


def test_a_healthy_sync_aborts_nothing():
    a = Replica("a:1")
    aborted: list[str] = []

    def broadcast() -> str:
        a.finish.set_result(type("R", (), {"version": 5, "load_seconds": 0.1})())
        return "sent"

    sent, results = update_replicas([a], 5, SPECS, 1 << 20, broadcast, abort=aborted.append)
    assert sent == "sent" and results[0].version == 5 and not aborted


def test_the_first_replica_failing_to_join_aborts_the_forming_group_and_is_named():
    """The others' joins fail after the abort too; the cause is the first one."""
    a, b, c = Replica("a:1"), Replica("b:2"), Replica("c:3")
    joins = [Future(), Future(), Future()]
    aborted: list[str] = []
    called = threading.Event()

    def abort(reason: str) -> None:
        aborted.append(reason)
        called.set()

    watch = JoinWatch([a, b, c], joins, abort)
    joins[0].set_result("joined")
    watch.raise_first()  # nothing failed yet
    joins[1].set_exception(Dead())  # b died before joining
    assert called.wait(30)
    joins[2].set_exception(RuntimeError("weight group aborted"))  # c left on the abort
    with pytest.raises(RoleCallError, match="b:2: InitWeightGroup failed with UNAVAILABLE"):
        watch.raise_first()
    assert len(aborted) == 1 and "b:2 failed to join" in aborted[0]
