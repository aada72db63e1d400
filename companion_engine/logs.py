"""Logging: loguru, human-readable on the console, JSON lines to a file when asked.

Each request gets an id (``X-Request-Id``) that every log line written while
serving it carries.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from pathlib import Path
from typing import Any

from loguru import logger

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

CONSOLE_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[request_id]}</cyan> {message}"
)


def _patch(record: Any) -> None:
    record["extra"].setdefault("request_id", request_id.get())


class _InterceptHandler(logging.Handler):
    """Route stdlib logging (aiohttp, litellm) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(level: str = "INFO", json_dir: Path | None = None) -> None:
    """Configure loguru once per process (idempotent)."""
    logger.remove()
    logger.configure(patcher=_patch)
    logger.add(sys.stderr, level=level, format=CONSOLE_FORMAT, backtrace=False, diagnose=False)
    if json_dir is not None:
        json_dir.mkdir(parents=True, exist_ok=True)
        logger.add(json_dir / "companion.jsonl", level=level, serialize=True, rotation="20 MB",
                   retention=5, enqueue=True, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    for name in ("LiteLLM", "litellm", "httpx", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
