"""Throttle: a repeated warning at most once per interval, with the count since the last."""

from __future__ import annotations

from rewind.throttle import Throttle


def test_the_first_is_reported_at_once_then_once_per_interval_with_the_count() -> None:
    now = [100.0]
    throttle = Throttle(60.0, clock=lambda: now[0])
    assert throttle.hit() == 1
    now[0] += 30
    assert throttle.hit() is None
    now[0] += 29.9
    assert throttle.hit() is None
    now[0] += 0.1
    assert throttle.hit() == 3  # the two held back, and this one
    assert throttle.hit() is None
