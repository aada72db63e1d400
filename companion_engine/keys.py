"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from companion_engine.engine import Engine

ENGINE: web.AppKey[Engine] = web.AppKey("companion_engine.engine")
