"""The ``companion`` command: ``serve``, ``check`` and ``plugins``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from companion_engine import __version__
from companion_engine.errors import ConfigError, Problem, StartupError
from companion_engine.scaffold import KINDS

DESCRIPTION = """\
Companion Engine: a server for AI companion apps (character chat with streaming voice).

Commands:
  serve     start the HTTP + SSE server (default http://127.0.0.1:3000)
  check     validate companion.yaml, the profiles, the characters and the plugins
  plugins   list installed plugins, their hooks and stages, and load failures

Run `companion COMMAND --help` for a command's options.
"""


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, metavar="PATH",
                   help="server config file (default: ./companion.yaml if it exists)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="companion", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"companion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="start the server",
        description="Start the HTTP + SSE server. Config files are watched and re-applied "
                    "live unless --no-reload is given.")
    _config_arg(serve)
    serve.add_argument("--host", help="address to bind (overrides server.host and APP_HOST)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port and APP_PORT)")
    serve.add_argument("--profile", help="profile name in profiles/ (overrides `profile:`)")
    serve.add_argument("--no-reload", action="store_true",
                       help="do not watch config, profiles, characters and plugins for changes")

    check = sub.add_parser(
        "check", help="validate config, profiles, characters and plugins",
        description="Validate everything the server would load. Prints `file:line: message` "
                    "per problem and exits 1, or a summary and exits 0.")
    _config_arg(check)

    plugins = sub.add_parser(
        "plugins", help="list plugins",
        description="List plugins (built-in and installed), their version, hooks and the "
                    "stages they register, plus plugins that failed to load and why.")
    _config_arg(plugins)
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.add_argument("--all", action="store_true", help="include built-in plugins")
    actions = plugins.add_subparsers(dest="plugins_command", metavar="ACTION")
    new = actions.add_parser(
        "new", help="write a new plugin package, ready to test and publish",
        description="Write companion-NAME/: pyproject.toml with the entry point, the stage, "
                    "a pytest suite using companion_engine.testing, and a README. Its tests "
                    "pass as generated: cd companion-NAME && pip install -e '.[test]' && pytest")
    new.add_argument("name", help="plugin name, e.g. beep-voice (stage beep_voice, "
                                  "package companion-beep-voice)")
    new.add_argument("--kind", choices=sorted(KINDS), default="sanitizer",
                     help="; ".join(f"{k}: {v}" for k, v in KINDS.items()))
    new.add_argument("--dir", type=Path, default=Path("."), help="parent folder (default: .)")
    install = actions.add_parser(
        "install", help="pip-install plugins into the engine's own environment",
        description="Run pip install in the environment companion runs from, then list "
                    "the stages each newly installed plugin registers.")
    install.add_argument("specs", nargs=argparse.REMAINDER, metavar="SPEC",
                         help="what pip installs: a name, name==version, a path, -e PATH; "
                              "pip options (-U, --no-deps, ...) pass through")
    return parser


def _config_path(arg: Path | None) -> Path | None:
    if arg is not None:
        return arg
    default = Path("companion.yaml")
    return default if default.is_file() else None


def _print_problems(problems: list[Problem] | list[str]) -> None:
    for p in problems:
        print(str(p), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "plugins_command", None) == "install":
        args.specs = [*args.specs, *unknown]  # pip's own options pass through
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "check":
            return cmd_check(args)
        return cmd_plugins(args)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return 1
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# --- serve -----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def app_url(host: str, port: int) -> str:
    """Where a browser on this machine finds the web app (a wildcard bind via loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}/app" if ":" in shown else f"http://{shown}:{port}/app"


def cmd_serve(args: argparse.Namespace) -> int:
    from companion_engine.configload import load_config
    from companion_engine.logs import setup_logging

    config = load_config(_config_path(args.config))
    if args.host:
        config.override("server.host", args.host)
    if args.port is not None:
        config.override("server.port", args.port)
    if args.profile:
        config.override("profile", args.profile)
    if args.no_reload:
        config.override("reload", False)
    json_dir = config.path("data") / "logs" if config.logging.json_file else None
    setup_logging(config.logging.level, json_dir)
    if not is_loopback(config.server.host) and not config.server.api_key:
        raise StartupError(
            f"refusing to bind {config.server.host}: a non-loopback address needs "
            "server.api_key (or COMPANION_API_KEY) so the API is not open to the network")
    from companion_engine.supervisor import ENV_FD, Supervisor, WorkerLink, worker_argv

    workers = config.server.worker_count()
    if workers > 1 and ":memory:" in config.store.url:
        raise StartupError("server.workers > 1 needs a store the workers share: an in-memory "
                           "SQLite database is private to each process (use a file or Redis)")
    if workers > 1 and ENV_FD not in os.environ:
        supervisor = Supervisor(worker_argv(args), config.server.host, config.server.port,
                                workers, grace_s=config.server.shutdown_grace_s)
        return asyncio.run(supervisor.run())
    asyncio.run(_serve(config, WorkerLink.from_env()))
    return 0


async def _serve(config: Any, link: Any = None) -> None:
    from aiohttp import web

    from companion_engine.app import create_app
    from companion_engine.keys import ENGINE

    app = create_app(config)
    app[ENGINE].link = link
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=config.server.shutdown_grace_s)
    try:
        await runner.setup()  # a stage failing its setup() stops here (ConfigError)
    except BaseException:
        await runner.cleanup()
        raise
    try:
        await _listen_and_wait(runner, config, link)
    finally:
        _on_second_signal(runner, config.server.shutdown_grace_s, worker=link is not None)
        await runner.cleanup()
        if link is not None:
            await link.aclose()


def _on_second_signal(runner: Any, grace_s: float, *, worker: bool = False) -> None:
    """Say how long stopping may take; a second SIGINT/SIGTERM closes every connection, so
    turns in progress end now (interrupted, as when their clients leave). A worker hears
    only its supervisor's SIGTERM (Ctrl-C reaches the whole process group)."""
    from loguru import logger

    server = runner.server
    busy = [conn for conn in (server.connections if server is not None else [])
            if getattr(conn, "_request_in_progress", False)]
    if busy:
        logger.info("shutting down: {} request(s) in progress get up to {:g} s to finish "
                    "(a second Ctrl-C stops them now)", len(busy), grace_s)
    else:
        logger.info("shutting down")

    def now() -> None:
        logger.info("second signal: closing every connection")
        for conn in list(server.connections if server is not None else []):
            conn.force_close()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM,) if worker else (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, now)


async def _listen_and_wait(runner: Any, config: Any, link: Any = None) -> None:
    from aiohttp import web
    from loguru import logger

    from companion_engine.keys import ENGINE

    # Workers of one supervisor bind the same port; the kernel spreads connections.
    site = web.TCPSite(runner, config.server.host, config.server.port,
                       reuse_port=True if link is not None else None)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.server.host}:{config.server.port}: "
                           f"{exc.strerror or exc}") from None
    engine = runner.app[ENGINE]
    port = config.server.port
    for sock in getattr(site._server, "sockets", None) or []:
        port = sock.getsockname()[1]
        break
    character = engine.characters.active_id
    _freeze_startup_heap()
    logger.info(
        "ready on http://{}:{} profile={} character={} llm={} tts={} reload={} store={}{}",
        config.server.host, port, engine.profile.name, character or "-", engine.active_model,
        engine.pipeline.tts.name if engine.profile.speech.enabled else "off",
        "on" if config.reload else "off", engine.shared.backend,
        f" worker={engine.worker.id}/{engine.worker.count}" if link is not None else "")
    if link is None:  # with workers, the supervisor says it once
        logger.info("web app: {}", app_url(config.server.host, port))
    stop = asyncio.Event()
    if link is not None:
        link.start(stop.set)
        link.ready()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # A worker leaves Ctrl-C to its supervisor, which stops it with SIGTERM (a second
    # Ctrl-C: a second SIGTERM, which ends its turns at once).
    loop.add_signal_handler(signal.SIGINT, (lambda: None) if link is not None else stop.set)
    if hasattr(signal, "SIGHUP"):
        def on_hup() -> None:
            if engine.reloader is not None:
                engine.reloader.request("SIGHUP")
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    check = loop.create_task(_warn_if_llm_unreachable(engine))
    try:
        await stop.wait()
    finally:
        check.cancel()
        await asyncio.gather(check, return_exceptions=True)


async def _warn_if_llm_unreachable(engine: Any) -> None:
    """One warning beside the ``ready`` line when the provider does not answer (the same
    probe ``/health`` uses, so its cache is warm for the first health check)."""
    from loguru import logger

    from companion_engine.routes.system import llm_problem, provider_health

    problem = llm_problem(await provider_health(engine))
    if problem is not None:
        logger.warning("{} (/health says degraded)", problem)


def _freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the garbage collector's reach.

    Modules, config, the pipeline and caches live as long as the process; without this,
    every full collection walks them again (LiteLLM's import alone is ~200 MB, frozen
    too when it finishes: ``companion_engine.llm``). Turns' own garbage is collected
    as usual.
    """
    import gc

    gc.collect()
    gc.freeze()


# --- check -----------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Validate without serving; asyncio only for the character store's loader."""
    from companion_engine.checks import run_checks
    from companion_engine.logs import setup_logging

    setup_logging("CRITICAL")  # every problem is printed below, once, as file:line
    problems, summary = asyncio.run(run_checks(_config_path(args.config)))
    if problems:
        _print_problems(problems)
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    for line in summary:
        print(line)
    return 0


# --- plugins ---------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    if args.plugins_command == "new":
        return cmd_plugins_new(args)
    if args.plugins_command == "install":
        return cmd_plugins_install(args)
    return cmd_plugins_list(args)


def cmd_plugins_new(args: argparse.Namespace) -> int:
    from companion_engine.scaffold import ScaffoldError, write_package

    try:
        root = write_package(args.name, args.kind, args.dir)
    except ScaffoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {root}/ ({args.kind})")
    print(f"  cd {root} && pip install -e '.[test]' && pytest")
    return 0


def _third_party_stages() -> dict[str, dict[str, Any]]:
    """``companion plugins --json`` of a fresh process: what is installed right now."""
    out = subprocess.run([sys.executable, "-m", "companion_engine", "plugins", "--json"],
                         capture_output=True, text=True, check=False,
                         env={k: v for k, v in os.environ.items()
                              if k != "COMPANION_LOAD_PLUGINS"})
    try:
        listing = json.loads(out.stdout)
    except ValueError:
        return {}
    return {p["name"]: p for p in listing.get("plugins", []) if not p.get("builtin")}


def cmd_plugins_install(args: argparse.Namespace) -> int:
    """``pip install`` into this interpreter's environment, like ``llm install``."""
    if not args.specs:
        print("error: name what to install, e.g. companion plugins install companion-chime",
              file=sys.stderr)
        return 2
    before = _third_party_stages()
    cmd = [sys.executable, "-m", "pip", "install", *args.specs]
    print("$ " + " ".join(cmd[2:]), file=sys.stderr)
    code = subprocess.call(cmd)
    if code != 0:
        print(f"error: pip install failed (exit code {code})", file=sys.stderr)
        return code
    after = _third_party_stages()
    added = {n: p for n, p in after.items() if n not in before or p != before[n]}
    if not added:
        print("installed; no new Companion Engine plugin found in what pip installed "
              "(a plugin declares an entry point in the group 'companion_engine')")
        return 0
    for name, p in added.items():
        version = f" {p['version']}" if p.get("version") else ""
        stages = "; ".join(f"{k.replace('_', ' ')}s: {', '.join(v)}"
                           for k, v in p.get("stages", {}).items()) or "no stages"
        print(f"installed {name}{version} ({p.get('distribution') or '?'}): {stages}")
    return 0


def cmd_plugins_list(args: argparse.Namespace) -> int:
    from companion_engine.configload import load_config
    from companion_engine.logs import setup_logging
    from companion_engine.plugins import PluginHost

    setup_logging("CRITICAL")  # failures are part of the listing
    config = load_config(_config_path(args.config))
    host = PluginHost.load(config.path("plugins"))
    listing = host.listing(include_builtin=args.all or args.json)
    failed = 1 if listing["errors"] else 0
    if args.json:
        print(json.dumps(listing, indent=2))
        return failed
    for p in listing["plugins"]:
        version = f" {p['version']}" if p["version"] else ""
        origin = " (built-in)" if p["builtin"] else (f" ({p['source']})" if p["source"] else "")
        print(f"{p['name']}{version}{origin}")
        if p["hooks"]:
            print(f"  hooks:  {', '.join(p['hooks'])}")
        for kind, names in p["stages"].items():
            print(f"  {kind.replace('_', ' ')}s: {', '.join(names)}")
    if not listing["plugins"] and not failed:
        print("no third-party plugins installed (use --all to include built-ins)")
    for err in listing["errors"]:
        where = f" ({err['source']})" if err.get("source") else ""
        print(f"FAILED {err['plugin']}{where}: {err['stage']}: {err['error']}")
    if failed:
        print(f"{len(listing['errors'])} plugin(s) failed to load", file=sys.stderr)
    return failed


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
