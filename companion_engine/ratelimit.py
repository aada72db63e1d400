"""Per-client token buckets and stream slots, in memory that cannot grow without bound.

A client is an IP address (an IPv6 client by its /64, since one host holds a
whole /64). Buckets live in an LRU of ``max_clients`` entries: a flood of new
addresses evicts the longest-idle client, it never grows the process. Evicting
costs little: an idle client's bucket has refilled, the same state as a new one.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets keyed by client: ``capacity`` requests, refilled over ``window_s``."""

    def __init__(self, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, capacity: int, window_s: float) -> float:
        """Spend one token. Returns 0.0 when allowed, else seconds until a token is back."""
        rate = capacity / window_s
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(float(capacity), now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            # min(): the config may have shrunk the capacity since (hot reload).
            bucket.tokens = min(float(capacity), bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, never 0 (0 invites an instant retry)."""
    return str(max(1, math.ceil(seconds)))


class StreamSlots:
    """Open streams per client. An entry exists only while a stream is open."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def acquire(self, key: str, limit: int) -> bool:
        count = self._open.get(key, 0)
        if count >= limit:
            return False
        self._open[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)
