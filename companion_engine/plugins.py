"""The plugin host: discovery, registration, isolation and listing.

Built-in features are ordinary plugins (``DEFAULT_PLUGINS``), registered first
so third-party plugins can override hooks. Then come installed distributions
(entry-point group ``companion_engine``) and local ``plugins/*.py`` files.
A plugin that fails to import, uses an unknown hook, raises while registering
or registers a stage name already taken is reported in ``errors`` and left
out; the others load. ``COMPANION_STRICT_PLUGINS=1`` re-raises instead, for
plugin authors.

Environment:

- ``COMPANION_LOAD_PLUGINS``: comma list of distribution names to load
  (empty string: no third-party plugins at all).
- ``COMPANION_DISABLED_PLUGINS``: comma list of plugin or distribution names to skip.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from loguru import logger
from pydantic import BaseModel

from companion_engine import hookspecs
from companion_engine.stages import STAGE_KINDS, Stage

ENTRY_POINT_GROUP = "companion_engine"

#: Built-in plugins, registered first (so later plugins run before them).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "companion_engine.builtin.prompt_builders",
    "companion_engine.builtin.lorebook",
    "companion_engine.builtin.memory",
    "companion_engine.builtin.sanitizers",
    "companion_engine.builtin.splitters",
    "companion_engine.builtin.cleaners",
    "companion_engine.builtin.tts",
    "companion_engine.builtin.piper",
    "companion_engine.routes.system",
    "companion_engine.routes.characters",
    "companion_engine.routes.chat",
    "companion_engine.routes.models",
    "companion_engine.routes.conversations",
    "companion_engine.routes.prompt",
    "companion_engine.routes.tts",
)

LOCAL_MODULE_PREFIX = "companion_local_plugins."


class PluginError(Exception):
    """Raised in strict mode where a plugin problem would otherwise be isolated."""


@dataclass(slots=True)
class PluginFailure:
    """A plugin that failed to load, register or run a hook."""

    plugin: str
    stage: str  # import | hooks | register | duplicate | hook:<name>
    error: str
    source: str | None = None
    traceback: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "stage": self.stage, "error": self.error,
                "source": self.source}


@dataclass(slots=True)
class StageInfo:
    """A registered stage class and the plugin that registered it."""

    cls: type[Stage]
    plugin: str
    kind: str


@dataclass(slots=True)
class PluginInfo:
    name: str
    module: ModuleType | Any
    builtin: bool = False
    version: str | None = None
    distribution: str | None = None
    source: str | None = None  # file path for local plugins


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def strict_mode() -> bool:
    return os.environ.get("COMPANION_STRICT_PLUGINS", "") not in ("", "0", "false")


class PluginHost:
    """Owns one ``pluggy.PluginManager`` and what its plugins registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.errors: list[PluginFailure] = []
        #: kind -> stage name -> StageInfo
        self.stages: dict[str, dict[str, StageInfo]] = {k: {} for k in STAGE_KINDS}

    # --- loading --------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        plugins_dir: Path | None = None,
        *,
        builtins: Iterable[str] = DEFAULT_PLUGINS,
        entry_points: bool = True,
        extra: Iterable[tuple[str, Any]] = (),
    ) -> PluginHost:
        """Load built-ins, installed plugins and ``plugins_dir/*.py``; collect their stages."""
        host = cls()
        disabled = {_norm(n) for n in _env_list("COMPANION_DISABLED_PLUGINS") or []}
        for modname in builtins:
            host._register_module(modname, builtin=True)
        if entry_points:
            host._load_entry_points(disabled)
        for name, obj in extra:
            host._register(name, obj, PluginInfo(name=name, module=obj))
        if plugins_dir is not None:
            host.load_directory(plugins_dir, disabled)
        host.collect_stages()
        return host

    def _fail(self, failure: PluginFailure, exc: BaseException | None = None) -> None:
        if exc is not None and failure.traceback is None:
            failure.traceback = "".join(traceback.format_exception(exc))
        self.errors.append(failure)
        where = f" ({failure.source})" if failure.source else ""
        logger.error("plugin {}{} failed at {}: {}", failure.plugin, where, failure.stage,
                     failure.error)
        if strict_mode():
            raise PluginError(f"plugin {failure.plugin}: {failure.error}") from exc

    def _register(self, name: str, obj: Any, info: PluginInfo) -> bool:
        """Register one plugin object; unknown hook names unregister it again."""
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:  # pluggy.PluginValidationError, ValueError
            self._fail(PluginFailure(name, "hooks", str(exc), info.source), exc)
            return False
        unknown = [
            hc.name for hc in self.pm.get_hookcallers(obj) or [] if not hc.has_spec()
        ]
        if unknown:
            self.pm.unregister(obj)
            known = ", ".join(sorted(n for n in dir(self.pm.hook) if not n.startswith("_")))
            msg = f"unknown hook(s) {', '.join(sorted(unknown))}; known hooks: {known}"
            self._fail(PluginFailure(name, "hooks", msg, info.source))
            return False
        self.infos[name] = info
        return True

    def _register_module(self, modname: str, *, builtin: bool) -> None:
        try:
            module = importlib.import_module(modname)
        except Exception as exc:
            self._fail(PluginFailure(modname, "import", f"{type(exc).__name__}: {exc}"), exc)
            return
        self._register(modname, module, PluginInfo(name=modname, module=module, builtin=builtin))

    def _load_entry_points(self, disabled: set[str]) -> None:
        wanted = _env_list("COMPANION_LOAD_PLUGINS")
        wanted_norm = {_norm(n) for n in wanted} if wanted is not None else None
        seen: set[tuple[str, str]] = set()
        for dist in md.distributions():
            dist_name = dist.metadata["Name"] or "?"
            if wanted_norm is not None and _norm(dist_name) not in wanted_norm:
                continue
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP:
                    continue
                key = (_norm(dist_name), ep.name)
                if key in seen:  # the same dist seen twice on sys.path
                    continue
                seen.add(key)
                if _norm(ep.name) in disabled or _norm(dist_name) in disabled:
                    logger.info("plugin {} disabled by COMPANION_DISABLED_PLUGINS", ep.name)
                    continue
                if self.pm.has_plugin(ep.name):
                    self._fail(PluginFailure(ep.name, "import",
                                             f"a plugin named {ep.name!r} is already loaded; "
                                             f"{dist_name} not loaded"))
                    continue
                try:
                    obj = ep.load()
                except Exception as exc:
                    self._fail(PluginFailure(ep.name, "import", f"{type(exc).__name__}: {exc}",
                                             f"{dist_name} {dist.version}"), exc)
                    continue
                self._register(ep.name, obj, PluginInfo(
                    name=ep.name, module=obj, version=dist.version, distribution=dist_name))

    def load_directory(self, directory: Path, disabled: set[str] | None = None) -> None:
        """Load every ``*.py`` file of ``directory`` as a plugin (fresh code each call)."""
        if not directory.is_dir():
            return
        disabled = disabled or set()
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith(("_", ".")) or _norm(path.stem) in disabled:
                continue
            modname = LOCAL_MODULE_PREFIX + path.stem
            try:
                spec = importlib.util.spec_from_file_location(modname, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                spec.loader.exec_module(module)
            except (Exception, SystemExit) as exc:
                sys.modules.pop(modname, None)
                err = f"{type(exc).__name__}: {exc}"
                line = _error_line(exc, path)
                src = f"{path}:{line}" if line else str(path)
                self._fail(PluginFailure(path.stem, "import", err, src), exc)
                continue
            self._register(path.stem, module,
                           PluginInfo(name=path.stem, module=module, source=str(path)))

    # --- stages ---------------------------------------------------------------------------

    def collect_stages(self) -> None:
        """Call every registration hook one impl at a time, attributing each class."""
        for kind, (base, hook_name) in STAGE_KINDS.items():
            caller = getattr(self.pm.hook, hook_name)
            # get_hookimpls() is in reverse call order: built-ins (registered first) come first.
            for impl in caller.get_hookimpls():
                plugin = impl.plugin_name
                try:
                    result = impl.function(*[{}.get(a) for a in impl.argnames])
                    # A single class is accepted as well as a list of them.
                    classes = [result] if isinstance(result, type) else list(result or [])
                except Exception as exc:
                    self._fail(PluginFailure(plugin, "register",
                                             f"{hook_name} raised {type(exc).__name__}: {exc}"),
                               exc)
                    continue
                for cls in classes:
                    problem = _check_stage_class(cls, base)
                    if problem:
                        self._fail(PluginFailure(plugin, "register", f"{hook_name}: {problem}"))
                        continue
                    taken = self.stages[kind].get(cls.name)
                    if taken is not None:
                        self._fail(PluginFailure(
                            plugin, "duplicate",
                            f"{kind.replace('_', ' ')} {cls.name!r} is registered by both "
                            f"{taken.plugin} and {plugin}; the one from {plugin} is ignored"))
                        continue
                    self.stages[kind][cls.name] = StageInfo(cls=cls, plugin=plugin, kind=kind)

    def stage(self, kind: str, name: str) -> StageInfo | None:
        return self.stages[kind].get(name)

    # --- host hooks -----------------------------------------------------------------------

    async def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a host hook impl by impl, awaiting async ones; failures are isolated."""
        results = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                value = impl.function(*[kwargs[a] for a in impl.argnames])
                if inspect.isawaitable(value):
                    value = await value
            except Exception as exc:
                self._fail(PluginFailure(impl.plugin_name, f"hook:{hook_name}",
                                         f"{type(exc).__name__}: {exc}"), exc)
                continue
            if value is not None:
                results.append(value)
        return results

    def collect_routes(self, engine: Any) -> list[tuple[str, Any]]:
        """``register_routes`` results as (plugin name, route def) pairs."""
        routes: list[tuple[str, Any]] = []
        for impl in reversed(self.pm.hook.register_routes.get_hookimpls()):
            try:
                value = impl.function(*[{"engine": engine}[a] for a in impl.argnames])
                routes.extend((impl.plugin_name, r) for r in value or [])
            except Exception as exc:
                self._fail(PluginFailure(impl.plugin_name, "hook:register_routes",
                                         f"{type(exc).__name__}: {exc}"), exc)
        return routes

    # --- listing --------------------------------------------------------------------------

    def listing(self, *, include_builtin: bool = True) -> dict[str, Any]:
        """What ``companion plugins`` and ``/-/plugins`` show."""
        plugins = []
        for name, info in self.infos.items():
            if info.builtin and not include_builtin:
                continue
            obj = self.pm.get_plugin(name)
            hooks = sorted(hc.name for hc in self.pm.get_hookcallers(obj) or []) if obj else []
            stages: dict[str, list[str]] = {}
            for kind, by_name in self.stages.items():
                names = sorted(n for n, s in by_name.items() if s.plugin == name)
                if names:
                    stages[kind] = names
            plugins.append({
                "name": name, "version": info.version, "distribution": info.distribution,
                "builtin": info.builtin, "source": info.source, "hooks": hooks,
                "stages": stages,
            })
        return {"plugins": plugins, "errors": [e.as_dict() for e in self.errors]}


def _check_stage_class(cls: Any, base: type[Stage]) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return f"{cls!r} is not a subclass of {base.__name__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        return f"{cls.__name__}.name must be an identifier string, got {name!r}"
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        return (f"{cls.__name__}.Options must be a pydantic model "
                "(subclass companion_engine.stages.StageOptions)")
    return None


def _error_line(exc: BaseException, path: Path) -> int | None:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return exc.lineno
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    return line
