"""Pipelined training steps apply in the order sent, and never after a failed one
(quartet.serving.step_order), with real threads arriving in either order."""

from __future__ import annotations

import threading
import time

import pytest

from quartet.serving.errors import FailedPrecondition
from quartet.serving.step_order import StepOrder
from quartet.v1 import common_pb2


def header(request_id: str, after: str = "") -> common_pb2.RequestHeader:
    return common_pb2.RequestHeader(request_id=request_id, after_request_id=after)


def in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []

    def target():
        try:
            out.append(fn())
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def test_a_step_that_arrives_first_waits_for_the_one_it_follows():
    order = StepOrder("actor")
    applied: list[str] = []
    second, out2 = in_thread(lambda: order.run(header("s1", after="s0"),
                                                lambda: applied.append("s1") or "one"))
    time.sleep(0.2)  # s1 arrived and waits: s0 was not seen yet
    assert applied == [] and second.is_alive()
    assert order.run(header("s0"), lambda: applied.append("s0") or "zero") == "zero"
    second.join(10)
    assert applied == ["s0", "s1"] and out2 == ["one"]


def test_a_step_after_a_failed_one_is_not_applied_and_says_which_failed():
    order = StepOrder("critic")
    release = threading.Event()

    def failing():
        release.wait(10)
        raise RuntimeError("out of memory (test)")

    first, out1 = in_thread(lambda: order.run(header("it3/critic_train0"), failing))
    applied: list[str] = []
    second, out2 = in_thread(lambda: order.run(header("it3/critic_train1",
                                                      after="it3/critic_train0"),
                                               lambda: applied.append("1")))
    third, out3 = in_thread(lambda: order.run(header("it3/critic_train2",
                                                     after="it3/critic_train1"),
                                              lambda: applied.append("2")))
    time.sleep(0.1)
    release.set()
    for t in (first, second, third):
        t.join(10)
    assert isinstance(out1[0], RuntimeError)
    assert applied == []
    assert isinstance(out2[0], FailedPrecondition)
    message = str(out2[0])
    assert message.startswith("critic: TrainStep it3/critic_train1 not applied")
    assert "it3/critic_train0" in message and "out of memory (test)" in message
    assert isinstance(out3[0], FailedPrecondition) and "it3/critic_train1" in str(out3[0])


def test_a_step_whose_predecessor_never_arrives_fails_after_the_wait():
    order = StepOrder("actor", unseen_wait_s=0.2)
    called: list[int] = []
    with pytest.raises(FailedPrecondition, match="follows step lost.*did not reach this actor"):
        order.run(header("next", after="lost"), lambda: called.append(1))
    assert called == []


def test_steps_without_an_order_run_at_once():
    order = StepOrder("actor")
    assert order.run(header("a"), lambda: 1) == 1
    assert order.run(common_pb2.RequestHeader(), lambda: 2) == 2
    assert order.run(header("b", after="a"), lambda: 3) == 3  # "a" applied before
