"""Loading YAML config files into the config models, with errors that point at a line.

YAML is parsed with the safe loader only; a node map records the line of every
key path so a pydantic error becomes ``profiles/default.yaml:12:
prompt[1].lorebook.scan_depht: unknown option``. ``{$env: NAME}`` and
``{$file: path}`` values are resolved here, environment overrides applied last.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from dotenv import dotenv_values
from pydantic import BaseModel, ValidationError

from companion_engine.config import AppConfig, Profile
from companion_engine.errors import ConfigError, Problem

M = TypeVar("M", bound=BaseModel)

#: Largest YAML file read (bytes) and largest node count after alias expansion.
MAX_YAML_BYTES = 1_048_576
MAX_YAML_NODES = 200_000

#: Environment variable -> (config attribute path, type).
ENV_OVERRIDES: dict[str, tuple[str, type]] = {
    "APP_HOST": ("server.host", str),
    "APP_PORT": ("server.port", int),
    "COMPANION_PROFILE": ("profile", str),
    "COMPANION_API_KEY": ("server.api_key", str),
    "LOG_LEVEL": ("logging.level", str),
}


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def loc_path(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a key path: ``prompt[1].lorebook``."""
    path = ""
    for part in loc:
        path = _join(path, part)
    return path


class YamlDoc:
    """One parsed YAML file: its data and the line of every key path."""

    def __init__(self, file: Path, data: Any, lines: dict[str, int], display: str) -> None:
        self.file = file
        self.data = data
        self.lines = lines
        self.display = display

    def line(self, path: str) -> int | None:
        """The line of ``path`` or of its closest ancestor."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""

    def problem(self, path: str, message: str) -> Problem:
        return Problem(self.display, self.line(path), path, message)


def _index_nodes(node: yaml.Node, path: str, lines: dict[str, int], budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError("document expands to too many nodes (an alias bomb?)")
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            sub = _join(path, key)
            lines[sub] = key_node.start_mark.line + 1
            _index_nodes(value_node, sub, lines, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_nodes(item, _join(path, i), lines, budget)


def read_yaml(file: Path, display: str | None = None) -> YamlDoc:
    """Parse one YAML file safely; ``ConfigError`` with file and line on any problem."""
    shown = display or str(file)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(shown, None, "", f"cannot read: {exc.strerror}")]) from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError([Problem(shown, None, "", f"file is larger than {MAX_YAML_BYTES} bytes")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(shown, None, "", f"not UTF-8 ({exc.reason})")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        msg = f"YAML syntax error: {exc.problem or exc.context}"
        raise ConfigError([Problem(shown, line, "", msg)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(shown, None, "", f"YAML error: {exc}")]) from None
    if node is None:
        return YamlDoc(file, {}, {}, shown)
    lines: dict[str, int] = {}
    try:
        _index_nodes(node, "", lines, [MAX_YAML_NODES])
        data = yaml.SafeLoader(text).get_single_data()
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError([Problem(shown, None, "", str(exc))]) from None
    return YamlDoc(file, data, lines, shown)


def _resolve_refs(value: Any, doc: YamlDoc, path: str, problems: list[Problem],
                  env: dict[str, str]) -> Any:
    """Replace ``{$env: NAME}`` and ``{$file: path}`` values, recursively."""
    if isinstance(value, dict):
        if len(value) == 1 and ("$env" in value or "$file" in value):
            ((kind, ref),) = value.items()
            if not isinstance(ref, str) or not ref:
                problems.append(doc.problem(path, f"{kind} needs a name"))
                return None
            if kind == "$env":
                if ref not in env:
                    problems.append(doc.problem(path, f"environment variable {ref} is not set"))
                    return None
                return env[ref]
            target = Path(ref)
            if not target.is_absolute():
                target = doc.file.parent / target
            try:
                return target.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(doc.problem(path, f"$file {ref}: {exc.strerror}"))
                return None
        return {k: _resolve_refs(v, doc, _join(path, k), problems, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, doc, _join(path, i), problems, env) for i, v in enumerate(value)]
    return value


def _validate(model: type[M], doc: YamlDoc, data: Any, **extra: Any) -> M:
    try:
        return model.model_validate({**data, **extra}) if extra else model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            path = loc_path(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
            if err["type"] == "extra_forbidden":
                msg = "unknown option"
            else:
                msg = err["msg"].removeprefix("Value error, ")
            problems.append(doc.problem(path, msg))
        raise ConfigError(problems) from None


def environment(config_dir: Path) -> dict[str, str]:
    """The process environment over the ``.env`` beside the config (env wins)."""
    env: dict[str, str] = {}
    dotenv = config_dir / ".env"
    if dotenv.is_file():
        env.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    env.update(os.environ)
    return env


def load_config(path: Path | None, *, env: dict[str, str] | None = None) -> AppConfig:
    """Load ``companion.yaml`` (defaults if ``path`` is None) and apply env overrides."""
    if path is None:
        base = Path.cwd()
        doc = YamlDoc(base / "companion.yaml", {}, {}, "companion.yaml")
    else:
        path = path.resolve()
        base = path.parent
        doc = read_yaml(path, _display(path))
    env = environment(base) if env is None else env
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError([doc.problem("", "the top level must be a mapping of settings")])
    problems: list[Problem] = []
    data = _resolve_refs(data, doc, "", problems, env)
    if problems:
        raise ConfigError(problems)
    for var, (attr, typ) in ENV_OVERRIDES.items():
        if var in env and env[var] != "":
            try:
                value: Any = typ(env[var])
            except ValueError:
                raise ConfigError([Problem(var, None, attr, f"not a valid {typ.__name__}: "
                                           f"{env[var]!r}")]) from None
            section, _, key = attr.partition(".")
            if key:
                data.setdefault(section, {})
                if not isinstance(data[section], dict):
                    data[section] = {}
                data[section][key] = value
            else:
                data[section] = value
    config = _validate(AppConfig, doc, data)
    config.base_dir = base
    config.source = path
    return config


def load_profile(config: AppConfig, name: str | None = None,
                 env: dict[str, str] | None = None) -> tuple[Profile, YamlDoc]:
    """Load ``profiles/NAME.yaml``; returns the profile and its document (for line numbers)."""
    name = name or config.profile
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError([Problem("companion.yaml", None, "profile",
                                   f"invalid profile name {name!r}")])
    file = config.path("profiles") / f"{name}.yaml"
    if not file.is_file():
        known = sorted(p.stem for p in config.path("profiles").glob("*.yaml"))
        msg = f"profile {name!r} not found; known: {', '.join(known) or 'none'}"
        raise ConfigError([Problem(_display(file), None, "profile", msg)])
    doc = read_yaml(file, _display(file))
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError([doc.problem("", "the top level must be a mapping of settings")])
    problems: list[Problem] = []
    env = environment(config.base_dir) if env is None else env
    data = _resolve_refs(data, doc, "", problems, env)
    if problems:
        raise ConfigError(problems)
    profile = _validate(Profile, doc, data)
    profile.name = name
    profile.source = file
    return profile, doc


def _display(path: Path) -> str:
    """A path as users wrote it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


SECRET_WORDS = ("secret", "key", "token", "password", "passwd", "hash", "dsn", "credential")


def redact(value: Any, key: str = "") -> Any:
    """A copy of config data with secrets replaced by ``"***"`` (for ``/-/config``)."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if value is not None and any(w in key.lower() for w in SECRET_WORDS):
        return "***"
    if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1]:
        scheme, rest = value.split("://", 1)
        host = rest.rpartition("@")[2]
        return f"{scheme}://***@{host}"
    return value
