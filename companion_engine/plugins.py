"""The plugin host: discovery, registration, isolation and listing.

Built-in features are ordinary plugins (``DEFAULT_PLUGINS``), registered first
so third-party plugins can override hooks. Then come installed distributions
(entry-point group ``companion_engine``) and local ``plugins/*.py`` files.
A plugin that fails to import, uses an unknown hook, raises while registering
or registers a stage name already taken is reported in ``errors`` and left
out; the others load. ``COMPANION_STRICT_PLUGINS=1`` re-raises instead, for
plugin authors.

Every hook is called through one place (``PluginHost.each``): impl by impl, in
pluggy's order (``tryfirst``/``trylast`` honoured; host hooks newest plugin
first, registration hooks built-ins first so built-in stage names win), each
call isolated and attributed. Hook wrappers (``hookwrapper``/``wrapper``) are
refused at registration with a clear error: no hook here has a result a wrapper
could meaningfully wrap, and half-supporting them would misread one.

A local ``plugins/*.py`` file is logged before it is imported and, when new or
changed, imported first in a throwaway subprocess (``companion_engine.plugin_probe``):
a file that kills or hangs that process is refused instead of taking the server
down with it.

Environment:

- ``COMPANION_LOAD_PLUGINS``: comma list of distribution names to load
  (empty string: no third-party plugins at all).
- ``COMPANION_DISABLED_PLUGINS``: comma list of plugin or distribution names to skip.
- ``COMPANION_TRACE_PLUGINS=1``: log every hook call (plugin, hook, time, result).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import importlib.util
import inspect
import os
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from loguru import logger
from pydantic import BaseModel

from companion_engine import hookspecs
from companion_engine.plugin_probe import probe_plugin_files
from companion_engine.stages import STAGE_KINDS, Stage

ENTRY_POINT_GROUP = "companion_engine"

#: Built-in plugins, registered first (so later plugins run before them).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "companion_engine.builtin.prompt_builders",
    "companion_engine.builtin.lorebook",
    "companion_engine.builtin.memory",
    "companion_engine.builtin.authors_note",
    "companion_engine.builtin.sanitizers",
    "companion_engine.builtin.splitters",
    "companion_engine.builtin.cleaners",
    "companion_engine.builtin.tts",
    "companion_engine.builtin.piper",
    "companion_engine.builtin.stt",
    "companion_engine.builtin.vad",
    "companion_engine.routes.system",
    "companion_engine.routes.characters",
    "companion_engine.routes.chat",
    "companion_engine.routes.models",
    "companion_engine.routes.conversations",
    "companion_engine.routes.prompt",
    "companion_engine.routes.tts",
    "companion_engine.routes.openai",
    "companion_engine.observers.metrics",
    "companion_engine.observers.tracing",
    "companion_engine.routes.transcribe",
    "companion_engine.routes.ws",
    "companion_engine.routes.app",
    "companion_engine.routes.events",
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
    digest: str | None = None  # content hash of a local plugin file


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")


def strict_mode() -> bool:
    return _flag("COMPANION_STRICT_PLUGINS")


def _summary(value: Any) -> str:
    """A short description of a hook's result for the trace log."""
    if isinstance(value, list | tuple):
        names = [getattr(v, "name", None) or getattr(v, "__name__", None) or type(v).__name__
                 for v in value]
        return f"[{', '.join(map(str, names[:8]))}{', ...' if len(names) > 8 else ''}]"
    return repr(value)[:80]


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
        previous: PluginHost | None = None,
    ) -> PluginHost:
        """Load built-ins, installed plugins and ``plugins_dir/*.py``; collect their stages.

        With ``previous`` (a reload), a local file whose content did not change keeps its
        module (its state, and what its ``startup`` did); a changed one is executed anew.
        """
        host = cls()
        disabled = {_norm(n) for n in _env_list("COMPANION_DISABLED_PLUGINS") or []}
        for modname in builtins:
            host._register_module(modname, builtin=True)
        if entry_points:
            host._load_entry_points(disabled)
        for name, obj in extra:
            host._register(name, obj, PluginInfo(name=name, module=obj))
        if plugins_dir is not None:
            host.load_directory(plugins_dir, disabled, previous=previous)
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
        wrappers = sorted(hc.name for hc in self.pm.get_hookcallers(obj) or []
                          for impl in hc.get_hookimpls()
                          if impl.plugin is obj and (impl.hookwrapper or impl.wrapper))
        if wrappers:
            self.pm.unregister(obj)
            self._fail(PluginFailure(name, "hooks", (
                f"hook wrappers are not supported ({', '.join(wrappers)}): drop "
                "hookwrapper=True / wrapper=True; every implementation is called on its own "
                "and failures are isolated per plugin"), info.source))
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

    def load_directory(self, directory: Path, disabled: set[str] | None = None, *,
                       previous: PluginHost | None = None) -> None:
        """Load every ``*.py`` file of ``directory`` as a plugin; a file unchanged since
        ``previous`` loaded it keeps its module, a new or changed one is probed and run."""
        if not directory.is_dir():
            return
        disabled = disabled or set()
        paths = [p for p in sorted(directory.glob("*.py"))
                 if not p.name.startswith(("_", ".")) and _norm(p.stem) not in disabled]
        digests = {p: _digest(p) for p in paths}
        kept = previous.infos if previous is not None else {}
        fresh = [p for p in paths if not ((old := kept.get(p.stem)) and old.source == str(p)
                                          and old.digest == digests[p])]
        refused = probe_plugin_files(fresh)
        for path in paths:
            old = kept.get(path.stem)
            if path not in fresh and old is not None:
                self._register(path.stem, old.module, old)  # unchanged: the same module
                continue
            if path in refused:
                self._fail(PluginFailure(path.stem, "import", refused[path], str(path)))
                continue
            modname = LOCAL_MODULE_PREFIX + path.stem
            logger.info("importing local plugin {}", path)
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
            self._register(path.stem, module, PluginInfo(
                name=path.stem, module=module, source=str(path), digest=digests[path]))

    # --- stages ---------------------------------------------------------------------------

    def collect_stages(self) -> None:
        """Call every registration hook one impl at a time, attributing each class."""
        for kind, (base, hook_name) in STAGE_KINDS.items():
            for plugin, result in self.each(hook_name, order="registration", stage="register"):
                # A single class is accepted as well as a list of them.
                classes = [result] if isinstance(result, type) else list(result or [])
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

    # --- calling hooks --------------------------------------------------------------------

    def each(self, hook_name: str, *, order: str = "call", plugins: Iterable[str] | None = None,
             stage: str | None = None, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """``(plugin, result)`` of every impl of ``hook_name``, called one at a time.

        ``order="call"`` is pluggy's (newest plugin first); ``"registration"`` the reverse
        (built-ins first). ``plugins`` limits the call to those plugin names. A raising
        impl is reported (``stage``, default ``hook:<name>``) and skipped; results may be
        awaitables (async hooks): ``call`` awaits them.
        """
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        if order == "call":
            impls = list(reversed(impls))
        only = set(plugins) if plugins is not None else None
        trace = _flag("COMPANION_TRACE_PLUGINS")
        for impl in impls:
            if only is not None and impl.plugin_name not in only:
                continue
            started = time.perf_counter()
            try:
                value = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as exc:
                self._fail(PluginFailure(impl.plugin_name, stage or f"hook:{hook_name}",
                                         f"{hook_name} raised {type(exc).__name__}: {exc}"),
                           exc)
                continue
            if trace:
                logger.info("plugin trace: {}.{}({}) -> {} in {:.2f} ms", impl.plugin_name,
                            hook_name, ", ".join(impl.argnames), _summary(value),
                            (time.perf_counter() - started) * 1000)
            yield impl.plugin_name, value

    async def call(self, hook_name: str, *, plugins: Iterable[str] | None = None,
                   **kwargs: Any) -> list[Any]:
        """Call a host hook impl by impl, awaiting async ones; failures are isolated."""
        results = []
        for plugin, value in self.each(hook_name, plugins=plugins, **kwargs):
            if inspect.isawaitable(value):
                try:
                    value = await value
                except Exception as exc:
                    self._fail(PluginFailure(plugin, f"hook:{hook_name}",
                                             f"{hook_name} raised {type(exc).__name__}: {exc}"),
                               exc)
                    continue
            if value is not None:
                results.append(value)
        return results

    def collect_routes(self, engine: Any) -> list[tuple[str, Any]]:
        """``register_routes`` results as (plugin name, route def) pairs."""
        return [(plugin, route) for plugin, value in self.each("register_routes", engine=engine)
                for route in value or []]

    def plugin_objects(self) -> dict[str, Any]:
        """Registered plugin name -> its module or object (to tell what a reload changed)."""
        return {name: self.pm.get_plugin(name) for name in self.infos}

    def implements(self, name: str, hook_name: str) -> bool:
        obj = self.pm.get_plugin(name)
        return obj is not None and any(
            hc.name == hook_name for hc in self.pm.get_hookcallers(obj) or [])

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


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


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
