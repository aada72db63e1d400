"""What every engine serving one store must agree on, behind one interface.

Several engines share a store: the worker processes of one ``companion serve``
(``server.workers``) or engines on several machines pointed at one Redis
(``store.url: redis://...``). Conversations, settings (the active character,
the model switch) and which cards exist live in the store itself; the rest of
what they must agree on goes through a ``SharedState``:

- rate-limit buckets (``take``) and per-client stream slots (``acquire_stream``), or
  both at once with the shared settings (``admit``: a request's admission),
- broadcasts between engines (``publish``: ``POST /-/reload`` reaches every engine).

``LocalState`` keeps buckets and slots in this process (per worker) and relays
broadcasts through the supervisor; ``RedisState`` keeps them in Redis (one
atomic script per request, so a limit is counted once across every engine) and
broadcasts over pub/sub. Modules use the interface, never the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from companion_engine.shared.base import (
    Admission,
    Event,
    EventHandler,
    RateLimit,
    SharedState,
    Slot,
    StoreUnavailable,
    is_outage,
)

if TYPE_CHECKING:
    from companion_engine.store import Store
    from companion_engine.supervisor import WorkerLink

__all__ = ["Admission", "Event", "EventHandler", "RateLimit", "SharedState", "Slot",
           "StoreUnavailable", "is_outage", "open_shared_state"]


async def open_shared_state(url: str, *, engine_id: str, store: Store | None = None,
                            bus: WorkerLink | None = None, max_clients: int = 10_000
                            ) -> SharedState:
    """The shared state for ``store.url``: Redis for ``redis://``, else this process.

    A Redis store's client is reused (one pool per engine), and its settings are read
    with each request's limits (``SharedState.admit``).
    """
    if url.startswith(("redis://", "rediss://", "unix://")):
        from companion_engine.shared.redis import RedisState
        from companion_engine.store.redis import RedisStore

        if isinstance(store, RedisStore):
            return RedisState(store.client, store.prefix, engine_id,  # type: ignore[arg-type]
                              owns_client=False, settings_key=store.settings_key)
        return await RedisState.open(url, engine_id=engine_id)
    from companion_engine.shared.local import LocalState

    return LocalState(engine_id=engine_id, bus=bus, max_clients=max_clients)
