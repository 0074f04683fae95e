"""How many requests go to one provider at once: a cap that shrinks on 429 and grows back.

One rate-limited request should slow every concurrent request to that provider, not only itself:
otherwise eight runs retrying on their own keep the provider saturated. :class:`AdaptiveLimit` is
additive-increase / multiplicative-decrease (as TCP): a 429 halves the number of requests allowed in
flight and pauses new ones until the server's ``Retry-After`` (or the backoff) has passed; every
``limit`` successful requests raise the limit by one, up to the configured cap
(``--max-requests``, ``FEDAGENTBENCH_MAX_REQUESTS``; 0 = :data:`UNCAPPED`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: the ceiling when no cap is configured (more than any bench runs at once)
UNCAPPED = 64


class AdaptiveLimit:
    """Concurrent requests to one provider and host."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = self.ceiling
        self.in_flight = 0
        self.paused_until = 0.0
        self._successes = 0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one request slot (waits for a free slot and for any pause to end)."""
        with self._cond:
            while True:
                wait = self.paused_until - time.monotonic()
                if wait <= 0 and self.in_flight < self.limit:
                    break
                self._cond.wait(timeout=wait if wait > 0 else None)
            self.in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()

    def rate_limited(self, wait_s: float) -> None:
        """A 429: halve the limit (once per pause) and hold new requests for ``wait_s`` seconds."""
        with self._cond:
            now = time.monotonic()
            if now >= self.paused_until:  # the first 429 of a burst decides; the rest are the same event
                self.limit = max(1, self.limit // 2)
            self.paused_until = max(self.paused_until, now + max(0.0, wait_s))
            self._successes = 0
            self._cond.notify_all()

    def succeeded(self) -> None:
        """A request went through: after ``limit`` of them, allow one more in flight."""
        with self._cond:
            self._successes += 1
            if self.limit < self.ceiling and self._successes >= self.limit:
                self.limit += 1
                self._successes = 0
                self._cond.notify_all()


_limits: dict[str, AdaptiveLimit] = {}
_lock = threading.Lock()


def provider_limit(provider_key: str | None) -> AdaptiveLimit | None:
    """The shared limit of one provider and host (None for the baselines, which have no provider)."""
    if not provider_key:
        return None
    cap = int(os.environ.get("FEDAGENTBENCH_MAX_REQUESTS", "0") or 0)
    key = f"{provider_key}|{cap}"
    with _lock:
        if key not in _limits:
            _limits[key] = AdaptiveLimit(cap if cap > 0 else UNCAPPED)
        return _limits[key]
