"""Hot reload: config, profiles, characters and local plugins change the running server.

A change is never applied in place. The new config, profile and (when a plugin
file changed) plugin host are loaded and the new pipeline built *off to the
side*; only when all of that succeeded are they swapped in, in one step with no
``await`` in between, so a request sees either the old world or the new one.
Turns already running keep the pipeline they leased (``Engine.lease``); the old
pipeline's stages are closed when its last turn ends.

An invalid change (YAML syntax, schema error, unknown stage, a local plugin file
that fails) keeps everything running as it was and is reported in the log and
in ``/health`` (``config.last_error``, with file and line) until a valid change
arrives. Settings that cannot change in a running process (``server.host``,
``server.port``, ``store.url``, ``paths.*``, ``reload``) keep their running value
and are listed in ``config.restart_required``; the rest of the change applies.

Triggers: the watcher (``watchfiles.awatch`` over the config folder, ``profiles/``,
``characters/`` and ``plugins/``, non-recursive), ``POST /-/reload`` and SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from loguru import logger
from watchfiles import Change, awatch

from companion_engine.configload import load_config, load_profile
from companion_engine.engine import ReloadStatus
from companion_engine.errors import ConfigError, Problem
from companion_engine.keys import ENGINE
from companion_engine.pipeline import build_pipeline
from companion_engine.plugins import PluginFailure, PluginHost

if TYPE_CHECKING:
    from companion_engine.config import AppConfig, Profile
    from companion_engine.configload import YamlDoc
    from companion_engine.engine import Engine
    from companion_engine.pipeline import Pipeline

#: What a changed file affects. ``config`` covers ``companion.yaml`` and ``.env``.
Kind = Literal["config", "profiles", "plugins", "characters"]
EVERYTHING: frozenset[Kind] = frozenset({"config", "profiles", "plugins", "characters"})
#: Kinds that need a new pipeline (characters only need a rescan of the folder).
PIPELINE_KINDS: frozenset[Kind] = frozenset({"config", "profiles", "plugins"})

#: Settings a running server cannot change: they keep their running value on reload.
RESTART_ONLY: tuple[str, ...] = (
    "server.host", "server.port", "server.workers", "store.url", "store.cache_messages",
    "paths.profiles", "paths.characters", "paths.plugins", "paths.data",
    "reload",
)
#: Settings the command line may override (``--host``, ``--port``, ``--profile``,
#: ``--no-reload``); a reload keeps the override and compares against it.
CLI_OVERRIDABLE: tuple[str, ...] = ("server.host", "server.port", "profile", "reload")

#: Watcher timing (ms): a batch is handed over once no new change arrived for ``STEP_MS``
#: (editors write several files or a temp file and a rename), at the latest after
#: ``DEBOUNCE_MS``.
STEP_MS = 40
DEBOUNCE_MS = 400

CHARACTER_SUFFIXES = frozenset({".json", ".png", ".yaml", ".yml"})
#: Editor droppings: swap, backup and temp files are never a change of their own.
TEMP_SUFFIXES = (".swp", ".swx", ".swo", ".tmp", ".temp", ".part", ".bak", ".orig", "~",
                 ".crdownload", ".kate-swp")


def is_temp_name(name: str) -> bool:
    """Hidden files, editor swap/backup files and atomic-write temporaries."""
    return (not name or name.startswith((".", "#", "~")) or name.endswith(TEMP_SUFFIXES)
            or name == "4913")  # vim's "can I write here" probe


def get_dotted(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_dotted(obj: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


# --- what is watched ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchedPaths:
    """The files hot reload cares about, and what each one affects."""

    config_file: Path | None
    profiles: Path
    characters: Path
    plugins: Path

    @classmethod
    def for_config(cls, config: AppConfig) -> WatchedPaths:
        source = config.source.resolve() if config.source is not None else None
        return cls(source, config.path("profiles"), config.path("characters"),
                   config.path("plugins"))

    @property
    def folders(self) -> tuple[Path, ...]:
        """Every folder to watch (the config file's folder first), without repeats."""
        found = [self.config_file.parent] if self.config_file is not None else []
        found += [self.profiles, self.characters, self.plugins]
        return tuple(dict.fromkeys(found))

    def classify(self, path: Path) -> Kind | None:
        """What a change of ``path`` affects, or None when it does not matter."""
        name, parent, suffix = path.name, path.parent, path.suffix.lower()
        if self.config_file is not None and parent == self.config_file.parent and (
                name in (self.config_file.name, ".env")):
            return "config"
        if is_temp_name(name):
            return None
        if parent == self.characters and suffix in CHARACTER_SUFFIXES:
            return "characters"
        if parent == self.plugins and suffix == ".py" and not name.startswith("_"):
            return "plugins"
        if parent == self.profiles and suffix == ".yaml":
            return "profiles"
        return None

    def is_folder_event(self, change: Change, path: Path) -> bool:
        """A watched folder itself came or went: the watcher must be set up again."""
        return change != Change.modified and path in self.folders

    def watch_filter(self, change: Change, path: str) -> bool:
        p = Path(path)
        return self.classify(p) is not None or self.is_folder_event(change, p)


def describe(paths: Iterable[Path], base: Path | None) -> str:
    """File names for a log line, relative to the config folder when inside it."""
    shown = []
    for p in sorted(paths):
        try:
            shown.append(str(p.relative_to(base)) if base else str(p))
        except ValueError:
            shown.append(str(p))
    return ", ".join(shown)


# --- building the next state off to the side ----------------------------------------------------


@dataclass
class Candidate:
    """Everything a reload swaps in, loaded and validated but not yet live."""

    config: AppConfig
    profile: Profile
    doc: YamlDoc
    plugins: PluginHost
    restart_required: list[str]


class PluginReloadError(ConfigError):
    """A reload refused because local plugin files failed; ``failures`` says how."""

    def __init__(self, problems: list[Problem], failures: list[PluginFailure]) -> None:
        super().__init__(problems)
        self.failures = failures


def local_plugin_names(config: AppConfig) -> set[str]:
    folder = config.path("plugins")
    return {p.stem for p in folder.glob("*.py")} if folder.is_dir() else set()


def local_plugin_problems(host: PluginHost, plugins_dir: Path) -> list[Problem]:
    """Failures of ``plugins/*.py`` files in a freshly loaded host, as file:line problems.

    Installed (site-packages) plugins are not reloaded, so only local files count.
    """
    local = {p.stem for p in plugins_dir.glob("*.py")} if plugins_dir.is_dir() else set()
    problems = []
    for err in host.errors:
        if err.plugin not in local:
            continue
        file, line = str(plugins_dir / f"{err.plugin}.py"), None
        if err.source:
            head, _, tail = err.source.rpartition(":")
            file, line = (head, int(tail)) if tail.isdigit() else (err.source, None)
        problems.append(Problem(file, line, "", f"plugin {err.plugin}: {err.stage}: {err.error}"))
    return problems


@dataclass(slots=True)
class PluginChanges:
    """What a reload changes among the loaded plugins (by module identity)."""

    #: Plugins of the old host whose code goes away: they get ``shutdown``.
    stopped: list[str] = field(default_factory=list)
    #: Plugins of the new host that are new code: they get ``startup``.
    started: list[str] = field(default_factory=list)
    #: Route plugins among them: routes are fixed once the server listens.
    restart_required: list[str] = field(default_factory=list)


def plugin_changes(old: PluginHost, new: PluginHost) -> PluginChanges:
    """Compare two hosts: built-ins and installed plugins are the same module objects in
    both (imports are cached), a re-executed ``plugins/*.py`` file is a new one."""
    changes = PluginChanges()
    if new is old:
        return changes
    before, after = old.plugin_objects(), new.plugin_objects()
    changes.stopped = [n for n, obj in before.items() if after.get(n) is not obj]
    changes.started = [n for n, obj in after.items() if before.get(n) is not obj]
    with_routes = {n for n in changes.stopped if old.implements(n, "register_routes")}
    with_routes |= {n for n in changes.started if new.implements(n, "register_routes")}
    changes.restart_required = [f"plugins/{n}.py: routes (they keep serving the code the "
                                "server started with)" for n in sorted(with_routes)]
    return changes


def prepare(running: AppConfig, current_host: PluginHost, pins: dict[str, Any],
            reload_plugins: bool) -> Candidate:
    """Load and validate the next config, profile and plugins (blocking: run in a thread).

    Raises ``ConfigError`` for anything invalid; nothing running is touched.
    """
    if running.source is not None:
        fresh = load_config(running.source)
        for key, value in pins.items():
            fresh.override(key, value)
    else:
        fresh = running.model_copy(deep=True)
    restart_required = []
    for key in RESTART_ONLY:
        if get_dotted(fresh, key) != get_dotted(running, key):
            restart_required.append(key)
            set_dotted(fresh, key, get_dotted(running, key))
    profile, doc = load_profile(fresh)
    host = current_host
    if reload_plugins:
        host = PluginHost.load(fresh.path("plugins"), previous=current_host)
        problems = local_plugin_problems(host, fresh.path("plugins"))
        if problems:
            raise PluginReloadError(problems, [e for e in host.errors
                                               if e.plugin in local_plugin_names(fresh)])
    return Candidate(fresh, profile, doc, host, restart_required)


# --- the reloader -------------------------------------------------------------------------------


class Reloader:
    """Reloads on demand (``reload``/``request``) and, once started, on file changes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.watched = WatchedPaths.for_config(engine.config)
        #: Command-line overrides of the running config, re-applied on every reload.
        self.pins: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        #: Kinds whose last reload failed: retried with the next reload, whatever triggers it.
        self._pending: set[Kind] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        #: Local plugin failures that made the last reload fail (the old code still runs).
        self.rejected_plugins: list[PluginFailure] = []
        #: Plugin files whose routes changed since start-up (routes need a restart).
        self._stale_routes: set[str] = set()

    @property
    def watching(self) -> bool:
        return self._watch_task is not None and not self._watch_task.done()

    async def find_pins(self) -> None:
        """Note which settings the command line changed, so a reload does not undo them
        (nor reports them as needing a restart): the ones it recorded as overrides, and any
        overridable setting that differs from the file."""
        running = self.engine.config
        self.pins = running.overrides
        source = running.source
        if source is None:
            return
        try:
            from_file = await asyncio.to_thread(load_config, source)
        except ConfigError:
            return
        self.pins.update({key: get_dotted(running, key) for key in CLI_OVERRIDABLE
                          if get_dotted(running, key) != get_dotted(from_file, key)})

    # --- reloading ----------------------------------------------------------------------------

    async def reload(self, reason: str = "manual",
                     kinds: Iterable[Kind] = EVERYTHING) -> bool:
        """Reload what ``kinds`` affects (default: everything); True if it all applied.

        Reloads run one at a time; a failed kind is retried with the next reload.
        """
        async with self._lock:
            todo = set(kinds) | self._pending
            ok = True
            if todo & PIPELINE_KINDS:
                ok = await self._reload_pipeline(reason, reload_plugins="plugins" in todo)
                self._pending = set() if ok else todo & PIPELINE_KINDS
            if "characters" in todo:
                await self._rescan_characters()
            return ok

    def request(self, reason: str) -> None:
        """Schedule a reload of everything (for signal handlers: does not block)."""
        self._spawn(self.reload(reason))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_pipeline(self, reason: str, *, reload_plugins: bool) -> bool:
        engine = self.engine
        started = time.perf_counter()
        try:
            candidate = await asyncio.to_thread(
                prepare, engine.config, engine.plugins, self.pins, reload_plugins)
            # Built on the loop, as at start-up: stage constructors may expect one.
            pipeline = build_pipeline(candidate.profile, candidate.plugins,
                                      generation=engine.pipeline.generation + 1,
                                      doc=candidate.doc)
            await pipeline.setup(engine)
        except ConfigError as exc:
            if isinstance(exc, PluginReloadError):
                self.rejected_plugins = exc.failures
            self._failed(reason, str(exc))
            await engine.plugins.call("reload_failed", engine=engine, error=str(exc))
            return False
        except Exception as exc:  # a bug or a plugin misbehaving: still never fatal
            logger.opt(exception=exc).error("reload ({}) crashed", reason)
            error = f"{type(exc).__name__}: {exc}"
            self._failed(reason, error)
            await engine.plugins.call("reload_failed", engine=engine, error=error)
            return False
        previous_host = engine.plugins
        changed = plugin_changes(previous_host, candidate.plugins)
        self._stale_routes.update(changed.restart_required)
        candidate.restart_required.extend(sorted(self._stale_routes))
        if candidate.plugins is not previous_host:
            self.rejected_plugins = []
        self._swap(candidate, pipeline)
        if changed.stopped:  # the old code of a changed or removed plugin file says goodbye
            await previous_host.call("shutdown", plugins=changed.stopped, engine=engine)
        if changed.started:  # and the new code is started, as at start-up
            await engine.plugins.call("startup", plugins=changed.started, engine=engine)
        logger.info("reloaded ({}): generation {}, profile {} in {:.0f} ms{}", reason,
                    pipeline.generation, candidate.profile.name,
                    (time.perf_counter() - started) * 1000,
                    f"; restart required for {', '.join(candidate.restart_required)}"
                    if candidate.restart_required else "")
        await engine.plugins.call("config_reloaded", engine=engine)
        return True

    def _swap(self, candidate: Candidate, pipeline: Pipeline) -> None:
        """Make the candidate live. No ``await`` in here: this is the atomic step."""
        engine = self.engine
        previous = engine.config
        engine.config = candidate.config
        engine.plugins = candidate.plugins
        engine.swap_pipeline(pipeline)
        engine.reload_status = ReloadStatus(
            generation=pipeline.generation, last_reload=time.time(), last_error=None,
            restart_required=candidate.restart_required)
        if hasattr(engine, "characters"):
            engine.characters.default_id = candidate.profile.character
        if candidate.config.logging != previous.logging:
            self._apply_logging(candidate.config)

    def _failed(self, reason: str, error: str) -> None:
        status = self.engine.reload_status
        self.engine.reload_status = ReloadStatus(
            generation=status.generation, last_reload=status.last_reload, last_error=error,
            restart_required=status.restart_required)
        logger.error("reload ({}) rejected; still running generation {}:\n{}", reason,
                     status.generation, error)

    @staticmethod
    def _apply_logging(config: AppConfig) -> None:
        from companion_engine.logs import setup_logging

        json_dir = config.path("data") / "logs" if config.logging.json_file else None
        setup_logging(config.logging.level, json_dir)
        logger.info("log level is now {}", config.logging.level)

    async def _rescan_characters(self) -> None:
        characters = getattr(self.engine, "characters", None)
        if characters is None:
            return
        try:
            await characters.rescan()
        except Exception as exc:  # the folder vanished mid-scan, a disk error, ...
            logger.error("rescanning characters failed: {}: {}", type(exc).__name__, exc)

    # --- watching -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching files. Returns once the watcher is listening."""
        if self.watching:
            return
        self._stop.clear()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())
        # awatch sets up its OS watches synchronously on its first step: let it take it.
        await asyncio.sleep(0)
        logger.info("watching {} for changes",
                    ", ".join(str(p) for p in self.watched.folders if p.is_dir()))

    async def _watch(self) -> None:
        while not self._stop.is_set():
            folders = [p for p in self.watched.folders if p.is_dir()]
            rewatch = False
            try:
                async for changes in awatch(
                        *folders, watch_filter=self.watched.watch_filter, debounce=DEBOUNCE_MS,
                        step=STEP_MS, stop_event=self._stop, recursive=False):
                    rewatch = await self._on_changes(changes)
                    if rewatch:
                        break
            except Exception as exc:  # a folder removed while being set up, inotify limits
                logger.error("file watcher failed ({}: {}); retrying", type(exc).__name__, exc)
                rewatch = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
            if not rewatch:
                return

    async def _on_changes(self, changes: set[tuple[Change, str]]) -> bool:
        """Reload for one batch of changes; True if the watched folders must be re-read."""
        kinds: set[Kind] = set()
        relevant: set[Path] = set()
        rewatch = False
        for change, name in changes:
            path = Path(name)
            kind = self.watched.classify(path)
            if kind is not None:
                kinds.add(kind)
                relevant.add(path)
            elif self.watched.is_folder_event(change, path):
                rewatch = True  # a whole folder appeared or went: re-read all of it
                kinds |= EVERYTHING
                relevant.add(path)
        if kinds:
            base = self.watched.config_file.parent if self.watched.config_file else None
            await self.reload(f"changed: {describe(relevant, base)}", kinds)
        return rewatch

    async def stop(self) -> None:
        """Stop the watcher and any scheduled reload."""
        self._stop.set()
        if self._watch_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_task, 5.0)
            self._watch_task = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def reload_ctx(app: web.Application) -> AsyncIterator[None]:
    """The reloader for this app: always there for ``POST /-/reload`` and SIGHUP; the
    file watcher only when ``reload`` is on."""
    engine = app[ENGINE]
    reloader = Reloader(engine)
    await reloader.find_pins()
    engine.reloader = reloader
    if engine.config.reload:
        await reloader.start()
    yield
    await reloader.stop()
    engine.reloader = None
