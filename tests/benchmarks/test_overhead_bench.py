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


def test_ratio_interval_holds_the_ratio_and_narrows_with_more_rounds():
    import random
    import statistics

    from bench.overhead import ratio_interval

    rng = random.Random(1)
    load = [rng.uniform(0.6, 1.0) for _ in range(48)]  # each round's host load, both modes
    services = [x * 1.03 + rng.gauss(0, 0.02) for x in load]
    inprocess = [x + rng.gauss(0, 0.02) for x in load]
    ratio = statistics.median(services) / statistics.median(inprocess)
    lo, hi = ratio_interval(services, inprocess, paired=True)
    assert lo <= ratio <= hi
    few = ratio_interval(services[:12], inprocess[:12], paired=True)
    assert few[1] - few[0] > hi - lo  # 12 rounds say less than 48
    assert ratio_interval(services, inprocess, paired=True) == (lo, hi)  # seeded: repeatable


def test_no_timed_iterations_is_refused_by_name(capsys):
    from bench.overhead import parse

    assert parse([]).iterations == 40
    with pytest.raises(SystemExit):
        parse(["--iterations", "0"])
    assert "--iterations: must be >= 1" in capsys.readouterr().err
