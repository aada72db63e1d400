"""``server.workers``: several serving processes on one port, kept alive by a supervisor.

``companion serve`` with ``workers: N`` (or ``auto``: one per core) becomes a small
supervisor that starts N worker processes, each a full ``companion serve`` bound to
the same address with ``SO_REUSEPORT``, so the kernel spreads connections over them.
The supervisor holds the port (bound, never listening) for its whole life, so a
restarted worker can always bind it again, and it imports nothing heavy.

It restarts a worker that dies (backing off when one keeps dying at once), forwards
SIGHUP (reload) to every worker and SIGTERM/SIGINT (stop) to every worker, waiting
for them to finish their streams. Each worker has a socket to the supervisor
(``WorkerLink``): it reports when it is ready, and broadcasts (``POST /-/reload``)
are relayed to its siblings. A worker whose supervisor is gone stops by itself.

The workers share the store: SQLite (WAL, with a busy timeout) or Redis. Rate limits
are per worker with SQLite and shared with Redis (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

#: Environment of a worker: its index, the count, and its end of the supervisor's socket.
ENV_ID, ENV_COUNT, ENV_FD = "COMPANION_WORKER_ID", "COMPANION_WORKERS", "COMPANION_WORKER_FD"
#: Seconds a worker gets beyond its own ``server.shutdown_grace_s`` to exit after SIGTERM
#: before it is killed.
STOP_MARGIN_S = 5.0
#: A worker that ran shorter than this before dying is restarted after a growing delay.
STABLE_S = 10.0
MAX_BACKOFF_S = 10.0
MAX_MESSAGE = 64 * 1024


# --- the worker's side ------------------------------------------------------------------------


class WorkerLink:
    """A worker's line to its supervisor (a SOCK_SEQPACKET socket inherited at start)."""

    def __init__(self, sock: socket.socket, worker_id: int, count: int) -> None:
        self.sock = sock
        self.worker_id = worker_id
        self.count = count
        sock.setblocking(False)
        #: Called with each broadcast a sibling sent.
        self.on_event: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @classmethod
    def from_env(cls) -> WorkerLink | None:
        fd = os.environ.get(ENV_FD)
        if not fd:
            return None
        sock = socket.socket(fileno=int(fd))
        return cls(sock, int(os.environ.get(ENV_ID, "0")), int(os.environ.get(ENV_COUNT, "1")))

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.send(json.dumps(message).encode())
        except OSError as exc:  # the supervisor is gone; the reader notices and stops us
            logger.debug("supervisor link: {}", exc)

    def ready(self) -> None:
        self._send({"type": "ready", "pid": os.getpid()})

    def publish(self, event: dict[str, Any]) -> int:
        """Relay ``event`` to the sibling workers; returns how many there are."""
        self._send({"type": "publish", "event": event})
        return self.count - 1

    def start(self, supervisor_gone: Callable[[], None]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read(supervisor_gone))

    async def _read(self, supervisor_gone: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(self.sock, MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                logger.warning("the supervisor is gone; worker {} stops", self.worker_id)
                supervisor_gone()
                return
            try:
                message = json.loads(data)
            except ValueError:
                continue
            if message.get("type") == "event" and self.on_event is not None:
                task = loop.create_task(self.on_event(message["event"]))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._handlers):
            task.cancel()
        self.sock.close()


# --- the supervisor ---------------------------------------------------------------------------


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    sock: socket.socket | None = None
    started_at: float = 0.0
    ready: bool = False
    backoff: float = 0.5
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT; port 0 picks a free one."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class Supervisor:
    """Starts, watches and stops the workers of one ``companion serve``."""

    def __init__(self, argv: list[str], host: str, port: int, count: int,
                 env: dict[str, str] | None = None, *, grace_s: float = 10.0) -> None:
        #: ``companion serve`` arguments of a worker, without ``--port``.
        self.argv = argv
        self.host = host
        self.requested_port = port
        self.port = port
        self.count = count
        self.env = env or {}
        self.workers = [Worker(i) for i in range(count)]
        self.stopping = False
        #: Seconds the workers give turns in progress when they stop.
        self.grace_s = grace_s
        self.failed: str | None = None
        self._stop = asyncio.Event()
        self._announced = False
        self.metrics_dir: Path | None = None

    async def run(self) -> int:
        from companion_engine.errors import StartupError

        try:
            holder = reserve_port(self.host, self.requested_port)
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.host}:{self.requested_port}: "
                               f"{exc.strerror or exc}") from None
        self.port = holder.getsockname()[1]
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="companion-metrics-"))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        logger.info("supervisor {}: starting {} workers on {}:{}", os.getpid(), self.count,
                    self.host, self.port)
        try:
            for worker in self.workers:
                await self._spawn(worker)
            await self._stop.wait()
        finally:
            self.stopping = True
            await self._stop_all()
            holder.close()
            self._clean_metrics()
        if self.failed:
            logger.error(self.failed)
            return 1
        logger.info("supervisor {}: all workers stopped", os.getpid())
        return 0

    def _request_stop(self) -> None:
        # At once, not when run() resumes: Ctrl-C reaches the workers too, and one that
        # exits first must not be restarted.
        if self.stopping:  # a second signal: the workers stop their turns at once too
            self._signal_all(signal.SIGTERM)
        self.stopping = True
        self._stop.set()

    # --- workers ------------------------------------------------------------------------------

    async def _spawn(self, worker: Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        env = {**os.environ, **self.env, ENV_ID: str(worker.index), ENV_COUNT: str(self.count),
               ENV_FD: str(theirs.fileno()),
               "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "companion_engine", "serve", *self.argv,
            "--port", str(self.port), env=env, pass_fds=(theirs.fileno(),))
        theirs.close()
        worker.sock, worker.ready, worker.started_at = ours, False, time.monotonic()
        loop = asyncio.get_running_loop()
        worker.tasks = [loop.create_task(self._read(worker)),
                        loop.create_task(self._watch(worker))]
        logger.info("worker {} started (pid {})", worker.index, worker.proc.pid)

    async def _read(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        sock = worker.sock
        assert sock is not None
        while True:
            try:
                data = await loop.sock_recv(sock, MAX_MESSAGE)
            except OSError:
                return
            if not data:
                return
            try:
                message = json.loads(data)
            except ValueError:
                continue
            if message.get("type") == "ready":
                worker.ready = True
                if not self._announced and all(w.ready for w in self.workers):
                    self._announced = True
                    logger.info("ready: {} workers on http://{}:{}", self.count, self.host,
                                self.port)
                    from companion_engine.cli import app_url

                    logger.info("web app: {}", app_url(self.host, self.port))
            elif message.get("type") == "publish":
                self._relay(worker, message.get("event"))

    def _relay(self, sender: Worker, event: Any) -> None:
        data = json.dumps({"type": "event", "event": event}).encode()
        for other in self.workers:
            if other is not sender and other.sock is not None:
                with contextlib.suppress(OSError):
                    other.sock.send(data)

    async def _watch(self, worker: Worker) -> None:
        assert worker.proc is not None
        code = await worker.proc.wait()
        self._mark_dead(worker.proc.pid)
        if worker.sock is not None:
            worker.sock.close()
            worker.sock = None
        if self.stopping:
            return
        ran = time.monotonic() - worker.started_at
        if not worker.ready and not any(w.ready for w in self.workers) and code != 0 \
                and ran < STABLE_S:
            # Not one worker ever came up: a config or start-up error, not a crash.
            self.failed = (f"worker {worker.index} failed to start (exit code {code}); "
                           "see its error above")
            self._stop.set()
            return
        worker.backoff = 0.5 if ran >= STABLE_S else min(worker.backoff * 2, MAX_BACKOFF_S)
        delay = 0.0 if ran >= STABLE_S else worker.backoff
        logger.warning("worker {} (pid {}) exited with code {} after {:.1f} s; restarting{}",
                       worker.index, worker.proc.pid, code, ran,
                       f" in {delay:.1f} s" if delay else "")
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(worker)

    def _forward_hup(self) -> None:
        logger.info("SIGHUP: reloading every worker")
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    async def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        procs = [w.proc for w in self.workers if w.proc is not None]
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if waits:
            limit = self.grace_s + STOP_MARGIN_S
            _, pending = await asyncio.wait(waits, timeout=limit)
            if pending:
                logger.warning("{} worker(s) did not stop in {:.0f} s; killing them",
                               len(pending), limit)
                self._signal_all(signal.SIGKILL)
                await asyncio.gather(*pending, return_exceptions=True)
        for worker in self.workers:
            for task in worker.tasks:
                task.cancel()
            await asyncio.gather(*worker.tasks, return_exceptions=True)
            if worker.sock is not None:
                worker.sock.close()

    # --- multi-process metrics ----------------------------------------------------------------

    def _mark_dead(self, pid: int) -> None:
        """Drop a dead worker's live gauges (active streams) from the shared metrics folder,
        as ``prometheus_client.multiprocess.mark_process_dead`` does (not imported here)."""
        if self.metrics_dir is None:
            return
        for path in self.metrics_dir.glob(f"gauge_live*_{pid}.db"):
            with contextlib.suppress(OSError):
                path.unlink()

    def _clean_metrics(self) -> None:
        if self.metrics_dir is None:
            return
        for path in self.metrics_dir.glob("*"):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.metrics_dir.rmdir()


def worker_argv(args: Any) -> list[str]:
    """The ``serve`` options a worker gets (the supervisor adds ``--port``)."""
    argv: list[str] = []
    if args.config is not None:
        argv += ["--config", str(Path(args.config).resolve())]
    if args.host:
        argv += ["--host", args.host]
    if args.profile:
        argv += ["--profile", args.profile]
    if args.no_reload:
        argv.append("--no-reload")
    return argv
