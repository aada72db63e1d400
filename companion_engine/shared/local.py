"""``LocalState``: buckets and stream slots in this process; broadcasts via the supervisor.

With one process this is exact. With ``server.workers`` > 1 on SQLite each
worker counts its own clients (a client spread over N workers may get up to N
times the limit; documented), and broadcasts are relayed to the sibling
workers by the supervisor (``companion_engine.supervisor``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, ClassVar

from companion_engine.ratelimit import RateLimiter, StreamSlots
from companion_engine.shared.base import Event, EventHandler, SharedState, Slot

if TYPE_CHECKING:
    from companion_engine.supervisor import WorkerLink


class LocalState(SharedState):
    backend: ClassVar[str] = "local"
    cluster_wide: ClassVar[bool] = False

    def __init__(self, engine_id: str, *, bus: WorkerLink | None = None,
                 max_clients: int = 10_000) -> None:
        super().__init__(engine_id)
        self.bus = bus
        self.max_clients = max_clients
        self._buckets: dict[str, RateLimiter] = {}
        self.streams = StreamSlots()
        self._tokens = itertools.count()

    async def start(self, handler: EventHandler) -> None:
        await super().start(handler)
        if self.bus is not None:
            self.bus.on_event = self._deliver

    async def close(self) -> None:
        if self.bus is not None:
            self.bus.on_event = None

    async def take(self, scope: str, key: str, capacity: int, window_s: float) -> float:
        limiter = self._buckets.get(scope)
        if limiter is None:
            limiter = self._buckets[scope] = RateLimiter(self.max_clients)
        return limiter.take(key, capacity, window_s)

    async def acquire_stream(self, key: str, limit: int) -> Slot | None:
        if not self.streams.acquire(key, limit):
            return None
        return Slot(key, str(next(self._tokens)))

    async def release_stream(self, slot: Slot) -> None:
        self.streams.release(slot.key)

    async def publish(self, event: Event) -> int:
        if self.bus is None:
            return 0
        return self.bus.publish({**event, "origin": self.engine_id})
