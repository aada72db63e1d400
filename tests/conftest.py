"""Shared fixtures: a config folder in a temp dir and a running app for it.

``make_config(profile={...}, config={...})`` writes ``companion.yaml`` and
``profiles/default.yaml`` under a fresh temp dir and returns the loaded
``AppConfig``. ``make_client(config)`` starts the real app on a real socket
(pytest-aiohttp's ``aiohttp_client``) and returns the test client.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Third-party plugins installed in the test environment must not change results.
os.environ.setdefault("COMPANION_LOAD_PLUGINS", "")

from collections.abc import Awaitable, Callable
from pathlib import Path

# LiteLLM is imported here, once, rather than by the first app in a background thread: that
# thread would still be filling sys.modules while later tests run, and hypothesis iterates
# sys.modules ("dictionary changed size during iteration").
import litellm  # noqa: F401
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import settings

from companion_engine.config import AppConfig

# Wall-clock deadlines make property tests flaky on a loaded 2-core machine; what matters
# is the property, and speed is measured by the benchmarks. On CI (CI set; .ci/run sets it)
# the examples are derandomized as in hypothesis' own "ci" profile: every CI run of a commit
# tries the same examples, so CI's verdict is reproducible; local runs and the lander keep
# exploring new ones.
settings.register_profile("companion", parent=settings.get_profile("ci") if os.environ.get("CI")
                          else None, deadline=None, print_blob=True)
settings.load_profile("companion")

#: The same fixtures plugin authors get: llm_server, companion_config, companion_client.
pytest_plugins = ["companion_engine.testing"]

REPO = Path(__file__).resolve().parents[1]
#: The team's shared folder sits beside the repository (CI lays it there too);
#: COMPANION_SHARED_DIR points elsewhere when it does not.
SHARED = Path(os.environ.get("COMPANION_SHARED_DIR", REPO.parent / "shared"))
CARDS = SHARED / "research" / "cards"

MakeConfig = Callable[..., AppConfig]
MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_config(companion_config: MakeConfig) -> MakeConfig:
    """Write a config folder and load it (``companion_engine.testing``'s ``companion_config``)."""
    return companion_config


@pytest.fixture
def make_client(companion_client: MakeClient) -> MakeClient:
    """Start the real app for a config (``companion_engine.testing``'s ``companion_client``)."""
    return companion_client


#: Small cards written for this suite, one per format (a fresh clone has these).
OWN_CARDS = REPO / "tests" / "data" / "cards"
SHARED_MISSING = (f"the real public cards are not here ({CARDS}): the team's shared folder "
                  "is not beside the repository (set COMPANION_SHARED_DIR to use one elsewhere)")


def shared_card(name: str) -> Path:
    """One of the real public cards in ../shared/research/cards; skips the test without it."""
    path = CARDS / name
    if not path.is_file():
        pytest.skip(SHARED_MISSING)
    return path


@pytest.fixture(params=["native", "litellm"])
def llm_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through each LLM client: the native one, then LiteLLM.

    Chat test modules use it for every test (``pytestmark``), so the same tests are the
    contract of both paths. ``litellm`` sends every model through LiteLLM, as
    ``llm.native: off`` does (whose own effect ``test_llm_native.py`` checks).
    """
    if request.param == "litellm":
        from companion_engine.llm import LLMGateway

        monkeypatch.setattr(LLMGateway, "native_protocol", lambda self, *args: None)
    return str(request.param)


@pytest.fixture
def cards_dir() -> Path:
    """The real public cards in ../shared/research/cards (read-only)."""
    if not CARDS.is_dir():
        pytest.skip(SHARED_MISSING)
    return CARDS


#: ``.ci/run`` sets COMPANION_STRICT_SKIPS=1: on CI a test may skip only because the shared
#: folder is absent; a skip for a missing tool, model or package fails the run (the clean
#: machine must have everything), and so does a run in which nothing passed.
STRICT_SKIPS = os.environ.get("COMPANION_STRICT_SKIPS") == "1"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not STRICT_SKIPS or session.config.option.collectonly:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = reporter.stats if reporter is not None else {}
    skipped = [r for r in stats.get("skipped", []) if r.when != "teardown"]
    unexpected = [r for r in skipped if SHARED_MISSING not in str(r.longrepr)]
    passed = len(stats.get("passed", []))
    for report in unexpected:
        where, _line, reason = report.longrepr if isinstance(report.longrepr, tuple) \
            else (report.nodeid, 0, str(report.longrepr))
        print(f"\nCOMPANION_STRICT_SKIPS: {report.nodeid} skipped ({where}: {reason})")
    if unexpected or passed == 0:
        print(f"\nCOMPANION_STRICT_SKIPS: {len(unexpected)} test(s) skipped for something "
              f"CI must provide, {passed} passed: failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
