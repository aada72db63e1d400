"""The deployment files say what the code and the README say.

No Docker engine runs on the test machines, so the image is not built here:
these tests check the ``Dockerfile`` and ``compose.yaml`` against the README, the
config models and each other (docs/deploy.md says how to build and run them).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from companion_engine.configload import load_config

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The arguments after ``pip install`` in shell commands (interpreter path ignored)."""
    found = []
    for command in commands:
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    found.append([w for w in words[i + 2:] if w not in ("--upgrade", "pip")])
                elif words[i] == "-m" and words[i + 1] == "pip" and "install" in words[i + 2:]:
                    j = words.index("install", i)
                    found.append([w for w in words[j + 1:] if w not in ("--upgrade", "pip")])
    return [f for f in found if f]


def readme_install_block() -> list[str]:
    """The commands of the README's "Installing without make" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Installing without make", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the section has a ```sh block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines()
            if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_dockerfile_installs_what_the_readme_installs() -> None:
    runs = [args for word, args in dockerfile_instructions() if word == "RUN"]
    image = pip_installs(runs)
    readme = pip_installs(readme_install_block())
    assert image and image == readme
    assert any("piper" in arg for arg in image[0]), "the image carries the embedded voice"


def test_dockerfile_is_slim_non_root_and_health_checked() -> None:
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    base = next(args for w, args in instructions if w == "FROM")
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base)
    users = [args for w, args in instructions if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert words.index("USER") < words.index("CMD")
    health = next(args for w, args in instructions if w == "HEALTHCHECK")
    assert "/health" in health and ":3000/" in health
    assert "EXPOSE" in words and next(a for w, a in instructions if w == "EXPOSE") == "3000"
    assert "companion" in next(a for w, a in instructions if w == "CMD")
    for word, args in instructions:
        if word == "COPY":
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_compose_runs_two_engines_on_redis_behind_a_proxy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    engines = {n: s for n, s in services.items() if s.get("build") == "."}
    assert len(engines) == 2
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync always" in command
    assert "healthcheck" in redis
    for service in engines.values():
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "COMPANION_API_KEY" in service["environment"]
    volumes = [set(s["volumes"]) for s in engines.values()]
    assert volumes[0] == volumes[1], "the engines mount the same config and cards volume"
    assert any(v.endswith(":/srv/companion/characters") for v in volumes[0])
    proxy = services["proxy"]
    assert set(proxy["depends_on"]) == set(engines)
    assert all(proxy["depends_on"][n]["condition"] == "service_healthy" for n in engines)


def test_the_proxy_passes_sse_unbuffered_to_both_engines(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mount = next(v for v in services["proxy"]["volumes"] if "nginx" in v)
    conf = (REPO / mount.split(":")[0]).read_text()
    for name, service in services.items():
        if service.get("build") == ".":
            assert f"server {name}:3000;" in conf
    assert re.search(r"^\s*proxy_buffering off;", conf, re.M)
    assert "proxy_http_version 1.1;" in conf and "$http_upgrade" in conf
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in conf


def test_the_engines_config_is_valid_and_trusts_only_the_proxy(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    engine = next(s for s in services.values() if s.get("build") == ".")
    mount = next(v for v in engine["volumes"] if v.endswith("companion.yaml:ro"))
    config = load_config(REPO / mount.split(":")[0], env={"COMPANION_API_KEY": "k" * 32})
    assert config.store.url.startswith("redis://redis:")
    assert config.server.api_key == "k" * 32 and config.server.host == "0.0.0.0"
    proxy_ip = services["proxy"]["networks"]["backend"]["ipv4_address"]
    assert config.server.trusted_proxies == [proxy_ip]
    subnet = compose["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    import ipaddress

    assert ipaddress.ip_address(proxy_ip) in ipaddress.ip_network(subnet)
