"""The benchmark's per-step CPU seconds are never negative, even when a round takes no
measurable CPU (os.times ticks are 10 ms; a tiny step often spans none)."""
import collections
import os

from xlm_jax.benchmarks.train_step import timed

Times = collections.namedtuple("Times", "user system")


def test_a_round_without_a_cpu_tick_reports_zero_not_minus_zero(monkeypatch):
    # 0.02 + 0.01 - 0.02 - 0.01 is -3.5e-18 in floats, which printed as "-0.00".
    monkeypatch.setattr(os, "times", lambda: Times(user=0.02, system=0.01))
    round_ = timed(lambda num_steps: None, num_steps=1)
    assert (round_.cpu, round_.system) == (0.0, 0.0)
    assert f"{round_.cpu:.2f} {round_.system:.2f}" == "0.00 0.00"


def test_cpu_is_user_plus_system_per_step(monkeypatch):
    ticks = iter([Times(user=1.00, system=0.50), Times(user=1.30, system=0.60)])
    monkeypatch.setattr(os, "times", lambda: next(ticks))
    round_ = timed(lambda num_steps: None, num_steps=2)
    assert abs(round_.cpu - 0.20) < 1e-12
    assert abs(round_.system - 0.05) < 1e-12
