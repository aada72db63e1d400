"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from companion_engine.engine import Engine
    from companion_engine.talk.session import TalkSession

ENGINE: web.AppKey[Engine] = web.AppKey("companion_engine.engine")
#: Open ``/api/ws`` sessions, closed (1001) when the server shuts down.
TALK_SESSIONS: web.AppKey[set[TalkSession]] = web.AppKey("companion_engine.talk.sessions")
