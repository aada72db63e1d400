"""The Companion Engine test kit: llm_server, companion_config, companion_client."""

pytest_plugins = ["companion_engine.testing"]
