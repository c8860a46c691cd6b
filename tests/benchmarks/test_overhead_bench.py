"""`bench overhead`'s schedule and statistic (no services started: pure functions)."""

import pytest

from bench.overhead import ModeRun, resolve_order


def test_synchronous_modes_alternate_by_default():
    assert resolve_order("auto", ["services", "inprocess"]) == "alternate"


def test_async_modes_run_one_after_the_other():
    assert resolve_order("auto", ["services", "services-async"]) == "sequential"
    with pytest.raises(SystemExit, match="services-async generates ahead"):
        resolve_order("alternate", ["services", "services-async"])
    assert resolve_order("sequential", ["services", "inprocess"]) == "sequential"


class _Loop:
    """Iterations that take the seconds given, one stalled by the host."""

    def __init__(self, seconds):
        self.seconds = iter(seconds)

    def iteration(self, it):
        import time

        s = next(self.seconds)
        time.sleep(s)
        return {"time/generate": s / 2, "loss": 1.0}


def test_summary_reports_median_and_mean_and_every_iteration():
    run = ModeRun("services", _Loop([0.01, 0.01, 0.2, 0.01, 0.01]))
    for i in range(5):
        run.step(i + 1)
    s = run.summary()
    assert len(s["iter_s"]) == 5
    assert 0.009 < s["median_s_per_iter"] < 0.03  # the stalled iteration does not move it
    assert s["s_per_iter"] > 0.04  # the mean does
    assert s["generate_s"] == pytest.approx(0.024, abs=1e-3)
