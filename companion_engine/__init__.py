"""Companion Engine: a plugin-based server for AI companion apps.

Plugins import ``hookimpl`` from here::

    from companion_engine import hookimpl
"""

from __future__ import annotations

from companion_engine.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl", "hookspec"]
