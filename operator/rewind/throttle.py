"""Reports of a repeated condition at most once per interval (the operator's overload
warnings), each with how many times it happened since the last report."""

from __future__ import annotations

import time
from collections.abc import Callable


class Throttle:
    """Counts occurrences; :meth:`hit` returns how many happened since the last report
    (this one included) when a report is due, else None. The first is reported at once,
    later ones once ``interval`` seconds have passed since the last report. Not
    thread-safe: the event loop's only."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._reported_at: float | None = None
        self._unreported = 0

    def hit(self) -> int | None:
        self._unreported += 1
        now = self._clock()
        if self._reported_at is not None and now - self._reported_at < self.interval:
            return None
        count, self._unreported = self._unreported, 0
        self._reported_at = now
        return count
