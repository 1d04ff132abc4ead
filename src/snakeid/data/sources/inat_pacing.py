"""The pace of the iNaturalist source's requests: `RateLimiter`, one grant per `1 / max_rps` s.

Clock arithmetic only, no HTTP and no state on disk: `inat_client.InatSession` waits on it before
every request, API call or photo alike, and tests drive it with a fake clock. Its own module so
the even pace iNaturalist asks for reads, and is tested, apart from retries and budgets.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """At most `rate` requests per second: each grant comes at least `1 / rate` after the last.

    A minimum interval rather than a token bucket on purpose: iNaturalist asks for an even pace,
    not bursts. `clock` must be monotonic; `sleep` advances it.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> float:
        """Block until the next request may go; returns the time it was granted."""
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = max(self._clock(), self._next)
        self._next = now + self.interval
        return now
