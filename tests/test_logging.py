"""Logging: JSON lines to a file under data/logs/, tagged with the request id."""

from __future__ import annotations

import json
from pathlib import Path

from loguru import logger

from companion_engine.logs import request_id, setup_logging


def test_json_lines_file_carries_request_id(tmp_path: Path) -> None:
    setup_logging("INFO", tmp_path / "logs")
    token = request_id.set("req-42")
    try:
        logger.info("turn done ttft={}ms", 12)
    finally:
        request_id.reset(token)
    logger.debug("not at INFO")
    logger.complete()
    setup_logging("WARNING")  # closes the file sink
    lines = (tmp_path / "logs" / "companion.jsonl").read_text().splitlines()
    records = [json.loads(line)["record"] for line in lines]
    assert [r["message"] for r in records] == ["turn done ttft=12ms"]
    assert records[0]["extra"]["request_id"] == "req-42"
    assert records[0]["level"]["name"] == "INFO"


async def test_unhandled_errors_are_logged_with_the_request_id(make_client, make_config) -> None:  # type: ignore[no-untyped-def]
    from tests.plugin_helpers import write_plugin
    from tests.test_app import BOOM_PLUGIN

    config = make_config()
    write_plugin(config.path("plugins"), "boom", BOOM_PLUGIN)
    messages: list[str] = []
    sink = logger.add(messages.append, level="DEBUG", format="{extra[request_id]} {message}")
    try:
        client = await make_client(config)
        resp = await client.get("/x/boom", headers={"X-Request-Id": "trace-me"})
        assert resp.status == 500
    finally:
        logger.remove(sink)
    logged = [m for m in messages if m.startswith("trace-me ")]
    assert logged and "unhandled error in GET /x/boom" in logged[0]
    assert "secret internals" in logged[0]  # the traceback goes to the log, not the client
