"""companion.yaml and profile loading: models, $env/$file, env overrides, located errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.config import AppConfig, Profile
from companion_engine.configload import (
    MAX_YAML_BYTES,
    load_config,
    load_profile,
    read_yaml,
    redact,
)
from companion_engine.errors import ConfigError
from tests.shipped import REPO, committed


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 3000
    assert config.store.url == "sqlite:///data/companion.db"
    assert config.path("data") == (tmp_path / "data").resolve()


def test_shipped_config_and_profile_are_valid(tmp_path: Path) -> None:
    """The committed companion.yaml and default profile hold what the README promises.

    Read from ``git show HEAD:...``: a user who edits ``llm:`` in their working copy, as
    the README tells them to, must not make this fail (issue 19.12)."""
    texts = {rel: committed(rel) for rel in ("companion.yaml", "profiles/default.yaml")}
    if None in texts.values():
        pytest.skip("not a git checkout: no committed copy to check values against")
    for rel, data in texts.items():
        write(tmp_path / rel, (data or b"").decode("utf-8"))
    config = load_config(tmp_path / "companion.yaml", env={})
    profile, _ = load_profile(config, env={})
    assert profile.llm.model == "ollama_chat/llama3.2"
    assert [s.name for s in profile.prompt][:3] == ["system_prompt", "first_message", "lorebook"]
    assert profile.prompt[2].options["token_budget"] == 800
    assert profile.speech.tts.name == "piper_local"
    assert profile.speech.splitter.options["first_fragment_min_chars"] == 20


def test_user_edits_of_the_shipped_files_do_not_fail_the_suite(tmp_path: Path) -> None:
    """Reproduction of issue 19.12: in a clone whose user edited ``llm:`` in
    ``profiles/default.yaml`` and the port in ``companion.yaml`` as the README says, the
    shipped-file tests still pass."""
    if committed("profiles/default.yaml") is None:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True,
                   capture_output=True)
    profile = clone / "profiles" / "default.yaml"
    profile.write_text(profile.read_text().replace(
        "model: ollama_chat/llama3.2", "model: openai/local-model").replace(
        "api_base: http://localhost:11434", "api_base: http://localhost:1234/v1"))
    config = clone / "companion.yaml"
    config.write_text(config.read_text().replace("port: 3000", "port: 3100"))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
         "tests/test_config.py::test_shipped_config_and_profile_are_valid",
         "tests/test_config.py::test_working_copies_of_the_shipped_files_are_valid"],
        cwd=clone, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(clone)})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "2 passed" in out.stdout


def test_working_copies_of_the_shipped_files_are_valid() -> None:
    """Whatever the user made of them, the working files must still load (validity only,
    with the real environment: a profile may use ``{$env: ...}``)."""
    config = load_config(REPO / "companion.yaml")
    for file in sorted(config.path("profiles").glob("*.yaml")):
        config.profile = file.stem
        load_profile(config)


def test_typo_in_companion_yaml_names_file_line_and_key(tmp_path: Path) -> None:
    f = write(tmp_path / "companion.yaml", "server:\n  host: 127.0.0.1\n  prot: 3000\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    (problem,) = err.value.problems
    assert problem.line == 3
    assert problem.path == "server.prot"
    assert str(problem).endswith("companion.yaml:3: server.prot: unknown option")


def test_typo_in_profile_stage_option_names_file_line_and_key(tmp_path: Path) -> None:
    """A stage option typo is found when the pipeline is built, with the YAML line."""
    from companion_engine.pipeline import build_pipeline
    from companion_engine.plugins import PluginHost
    from companion_engine.stages import PromptBuilder, StageOptions

    class Lore(PromptBuilder):
        name = "lorebook_t"

        class Options(StageOptions):
            scan_depth: int = 2

    class Plugin:
        __name__ = "lore_test"

        @staticmethod
        def register_prompt_builders() -> list[type]:
            return [Lore]

    from companion_engine import hookimpl

    Plugin.register_prompt_builders = hookimpl(Plugin.register_prompt_builders)  # type: ignore
    write(tmp_path / "companion.yaml", "reload: false\n")
    write(tmp_path / "profiles" / "default.yaml",
          "llm: {model: openai/x}\nprompt:\n  - system_prompt_t\n"
          "  - lorebook_t: {scan_depht: 2}\n")
    config = load_config(tmp_path / "companion.yaml", env={})
    profile, doc = load_profile(config, env={})
    host = PluginHost.load(None, builtins=(), entry_points=False, extra=[("lore_test", Plugin)])
    with pytest.raises(ConfigError) as err:
        build_pipeline(profile, host, doc=doc)
    messages = [str(p) for p in err.value.problems]
    assert any(m.startswith(f"{doc.display}:4: prompt[1].lorebook_t.scan_depht: unknown option")
               for m in messages), messages
    assert any("prompt[0]" in m and "unknown stage 'system_prompt_t'" in m
               and "known: lorebook_t" in m for m in messages), messages


def test_wrong_type_is_reported_with_line(tmp_path: Path) -> None:
    f = write(tmp_path / "companion.yaml", "reload: false\nserver:\n  port: lots\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    assert err.value.problems[0].line == 3
    assert "server.port" in str(err.value)


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    f = write(tmp_path / "companion.yaml", "server:\n  host: [127.0.0.1\nprofile: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    assert "YAML syntax error" in str(err.value)
    assert err.value.problems[0].line is not None


def test_safe_loader_only(tmp_path: Path) -> None:
    f = write(tmp_path / "companion.yaml", "profile: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    assert "python/object" in str(err.value)


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, "
                     f"*{prev}, *{prev}, *{prev}, *{prev}]")
    f = write(tmp_path / "companion.yaml", "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(f)
    assert "too many nodes" in str(err.value)


def test_oversize_yaml_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "companion.yaml", "# " + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(f, env={})


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    f = write(tmp_path / "companion.yaml", "- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(f, env={})


def test_env_and_file_references(tmp_path: Path) -> None:
    write(tmp_path / "secret.txt", "s3cret\n")
    f = write(tmp_path / "companion.yaml",
              "server:\n  api_key: {$file: secret.txt}\n"
              "store: {url: {$env: STORE_URL}}\n")
    config = load_config(f, env={"STORE_URL": "sqlite:///x.db"})
    assert config.server.api_key == "s3cret"
    assert config.store.url == "sqlite:///x.db"


def test_missing_env_reference_is_located(tmp_path: Path) -> None:
    f = write(tmp_path / "companion.yaml", "reload: true\nstore: {url: {$env: NOPE_X}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    assert str(err.value.problems[0]).endswith(
        "companion.yaml:2: store.url: environment variable NOPE_X is not set")


def test_environment_overrides(tmp_path: Path) -> None:
    f = write(tmp_path / "companion.yaml", "server: {host: 127.0.0.1, port: 3000}\n")
    config = load_config(f, env={"APP_PORT": "3100", "APP_HOST": "0.0.0.0",
                                 "COMPANION_PROFILE": "voice", "COMPANION_API_KEY": "k",
                                 "LOG_LEVEL": "debug"})
    assert (config.server.port, config.server.host) == (3100, "0.0.0.0")
    assert config.profile == "voice"
    assert config.server.api_key == "k"
    assert config.logging.level == "DEBUG"


def test_bad_environment_override_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path / "companion.yaml", "reload: true\n")
    with pytest.raises(ConfigError, match="APP_PORT"):
        load_config(f, env={"APP_PORT": "eighty"})


def test_dotenv_beside_config_is_read_and_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / ".env", "APP_PORT=3200\nCOMPANION_PROFILE=fromdotenv\n")
    f = write(tmp_path / "companion.yaml", "reload: true\n")
    monkeypatch.setenv("COMPANION_PROFILE", "fromenv")
    monkeypatch.delenv("APP_PORT", raising=False)
    config = load_config(f)
    assert config.server.port == 3200
    assert config.profile == "fromenv"


def test_profile_not_found_lists_known(tmp_path: Path) -> None:
    write(tmp_path / "profiles" / "a.yaml", "user_name: A\n")
    f = write(tmp_path / "companion.yaml", "profile: b\n")
    config = load_config(f, env={})
    with pytest.raises(ConfigError, match="profile 'b' not found; known: a"):
        load_profile(config, env={})


def test_profile_stage_forms() -> None:
    p = Profile.model_validate({
        "prompt": ["system_prompt", {"lorebook": {"scan_depth": 3}}, {"history": None}],
        "speech": {"splitter": "sentence", "tts": {"openai": {"voice": "af_sky"}}},
    })
    assert [(s.name, s.options) for s in p.prompt] == [
        ("system_prompt", {}), ("lorebook", {"scan_depth": 3}), ("history", {})]
    assert p.speech.tts.options == {"voice": "af_sky"}
    with pytest.raises(ValueError, match="one key"):
        Profile.model_validate({"prompt": [{"a": {}, "b": {}}]})


def test_redact_hides_secrets() -> None:
    data = AppConfig.model_validate({
        "server": {"api_key": "topsecret"},
        "store": {"url": "redis://:pw@localhost:6379/0"},
        "plugins": {"x": {"token": "t", "voice": "v"}},
    }).model_dump(mode="json")
    shown = redact(data)
    assert shown["server"]["api_key"] == "***"
    assert shown["store"]["url"] == "redis://***@localhost:6379/0"
    assert shown["plugins"]["x"] == {"token": "***", "voice": "v"}
    assert "topsecret" not in str(shown) and "pw" not in shown["store"]["url"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_any_text_is_loaded_or_rejected_with_a_located_error(tmp_path: Path, text: str) -> None:
    """Hypothesis: arbitrary file content never crashes the loader."""
    f = write(tmp_path / "companion.yaml", text)
    try:
        load_config(f, env={})
    except ConfigError as exc:
        assert exc.problems and all(p.file.endswith("companion.yaml") for p in exc.problems)
