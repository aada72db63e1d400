"""The ``SharedState`` interface and the error an outage of the shared store raises."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

#: A broadcast between engines: ``{"type": "reload", "origin": engine_id, ...}``.
Event = dict[str, Any]
EventHandler = Callable[[Event], Awaitable[None]]


class StoreUnavailable(Exception):
    """The shared store (Redis) cannot be reached right now; the request gets a 503.

    The engine keeps running and reconnects by itself: the next request after
    the store is back succeeds.
    """

    status = 503
    retry_after_s = 1


def is_outage(exc: BaseException) -> bool:
    """True for an error that means "the store is away", not "the request is wrong"."""
    if isinstance(exc, StoreUnavailable):
        return True
    import sys

    redis_exceptions = sys.modules.get("redis.exceptions")
    if redis_exceptions is not None:
        kinds = (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError,
                 redis_exceptions.BusyLoadingError)
        return isinstance(exc, kinds)
    return False


@dataclass(frozen=True, slots=True)
class Slot:
    """One open stream of one client (``key``); ``token`` names it in the shared state."""

    key: str
    token: str


#: A rate limit to spend one token of: (scope, capacity, window in seconds).
RateLimit = tuple[str, int, float]


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request needs from the shared state before its handler, from one call."""

    #: 0.0 when the rate limit allows the request (or none was asked), else the seconds
    #: until a token is back (then no stream slot was taken).
    wait: float = 0.0
    #: The stream slot taken; None when none was asked, all are taken, or ``wait``.
    slot: Slot | None = None
    #: The shared settings read with the limits (absent ones left out); None when this
    #: backend does not read them (read them from the store).
    settings: dict[str, Any] | None = None


class SharedState(ABC):
    """Rate-limit buckets, stream slots and broadcasts shared by the engines of one store."""

    #: ``local`` or ``redis`` (shown by ``/health``).
    backend: ClassVar[str]
    #: True when limits count across every engine on the store, False when per process.
    cluster_wide: ClassVar[bool]

    def __init__(self, engine_id: str) -> None:
        #: This engine's name in broadcasts (``host:pid``).
        self.engine_id = engine_id
        self._handler: EventHandler | None = None

    async def start(self, handler: EventHandler) -> None:
        """Begin receiving broadcasts from the other engines (not our own)."""
        self._handler = handler

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def take(self, scope: str, key: str, capacity: int, window_s: float) -> float:
        """Spend one token of ``key``'s bucket in ``scope`` (``rate``, ``auth``).

        Returns 0.0 when allowed, else the seconds until a token is back. O(1).
        """

    @abstractmethod
    async def acquire_stream(self, key: str, limit: int) -> Slot | None:
        """Open one of ``limit`` stream slots of client ``key``; None when all are taken."""

    @abstractmethod
    async def release_stream(self, slot: Slot) -> None:
        """Give a slot back (never raises: a slot not released expires by itself)."""

    async def admit(self, key: str, *, rate: RateLimit | None = None,
                    streams: int | None = None, settings: Sequence[str] = ()) -> Admission:
        """Spend a token of client ``key``'s ``rate`` bucket, then, if allowed, open one of
        ``streams`` slots; where the backend holds the store's settings, read ``settings``
        too. One round trip on Redis: the request's whole admission (one atomic script).

        This default takes the token and the slot one after the other and reads no
        settings (``Admission.settings`` is None).
        """
        wait = await self.take(rate[0], key, rate[1], rate[2]) if rate is not None else 0.0
        slot = None
        if streams is not None and not wait:
            slot = await self.acquire_stream(key, streams)
        return Admission(wait, slot)

    @abstractmethod
    async def publish(self, event: Event) -> int:
        """Send ``event`` to every other engine; returns how many received it."""

    @property
    def connected(self) -> bool:
        """False while the shared store is unreachable."""
        return True

    def status(self) -> dict[str, Any]:
        """What ``/health`` shows under ``shared``."""
        return {"backend": self.backend, "connected": self.connected,
                "limits": "cluster" if self.cluster_wide else "process"}

    async def _deliver(self, event: Event) -> None:
        if self._handler is not None and event.get("origin") != self.engine_id:
            await self._handler(event)
