"""Running the gateway under uvicorn: the start-up line and a shutdown that drains.

On SIGTERM (what Kubernetes, Docker and systemd send), with one worker:

1. the app is marked draining (proxy/live.py): `/health/readiness` answers 503 and every
   answer carries `connection: close`;
2. the listening socket closes at once: new connections are refused;
3. requests and streams in flight finish, for up to `server.shutdown_grace_s`. Connections
   already open stay open meanwhile, so a client's next request on one is still answered
   (and that connection then closes) rather than cut;
4. once nothing is in flight, idle connections close; what is still running at the end
   of the grace has its connection cut, and ends as for a client that left; the lifespan
   closes the upstream client and the store; the process exits 0.

uvicorn's own shutdown closes idle connections at step 2 (a request racing that close
is lost) and re-raises SIGTERM at the end (exit status 143); `GracefulServer` changes
only those two things. With `--workers N` the workers are uvicorn's own: they drain for
`shutdown_grace_s` too, readiness turns 503 the same way, idle connections close at once.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import math
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from uvicorn.supervisors import Multiprocess

from lockgate.gateway.config import GatewayConfig
from lockgate.kernel.logs import get_logger

POLL_S = 0.05
CUT_WAIT_S = 1.0  # after the grace, how long cut requests get to wind down before they are cancelled
log = get_logger("lockgate.server")


# The collector's first-generation threshold when lockgate serves (CPython's is 700). A
# request allocates thousands of container objects and frees nearly all of them by
# reference counting, yet at 700 the collector ran ~110 passes a second under the
# bench's all six on disk (~1,100 req/s), and one pass in a hundred walked the whole
# heap (a gen-2 pass: 26 ms, a p99 spike): 1.05 s of a 17 s run, ~0.08 ms of CPU a
# request, counted with gc.callbacks. At 10,000 (what start-up built frozen out of its
# reach) it ran once in that run. Cyclic garbage waits longer to be freed: at most this
# many objects.
GC_THRESHOLD = (10_000, 20, 50)


def tune_gc() -> None:
    """For a process that serves lockgate (never an app lockgate is mounted into): what
    start-up built (modules, the config, the catalog, compiled policies) moves out of the
    collector's reach for good (gc.freeze), and young collections run less often (see
    GC_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


class ListenError(Exception):
    """The address cannot be listened on: one sentence for the person starting the gateway."""


def listen(host: str, port: int, config_path: str) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so a port in use or an address
    that is not this machine's is one clear sentence instead of uvicorn's `[Errno 98]`."""
    where = url_of((host, port))[len("http://") :]
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((host, port), family=family)
    except socket.gaierror:
        raise ListenError(f"lockgate serve: cannot listen on {where}: {host!r} is not an address or a name this machine can resolve "
                          f"(set server.host in {config_path} or pass --host)") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = (f"the port is already in use (another lockgate, or another program, listens there: stop it, "
                      f"or pick another port with --port N or server.port in {config_path})")
        elif exc.errno == errno.EACCES:
            reason = f"permission denied (ports below 1024 need privileges: pick another with --port N or server.port in {config_path})"
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = f"{host} is not an address of this machine (set server.host in {config_path} or pass --host)"
        else:
            reason = exc.strerror or str(exc)
        raise ListenError(f"lockgate serve: cannot listen on {where}: {reason}") from None
    sock.set_inheritable(True)  # the workers of --workers N serve it too
    return sock


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, announce: Callable[[list[socket.socket]], None]) -> None:
        super().__init__(config)
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.announce([s for server in self.servers for s in server.sockets])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)  # drained and stopped as asked: a clean exit, not death by signal

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        loop = asyncio.get_running_loop()
        grace = self.config.timeout_graceful_shutdown  # run() always sets it; None is uvicorn's "no limit"
        deadline = loop.time() + (grace if grace is not None else math.inf)
        while self.server_state.tasks and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(POLL_S)
        for connection in list(self.server_state.connections):
            connection.shutdown()
        while (self.server_state.connections or self.server_state.tasks) and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(POLL_S)
        if self.server_state.tasks:
            log.error("shutdown_grace_exceeded", cancelled=len(self.server_state.tasks), grace_s=self.config.timeout_graceful_shutdown)
            # cut the connections: each request then ends as for a client that left (the
            # upstream call cancelled, slots and reservations released), without a traceback
            for connection in list(self.server_state.connections):
                connection.transport.close()
            cut_at = loop.time()
            while self.server_state.tasks and loop.time() < cut_at + CUT_WAIT_S:
                await asyncio.sleep(POLL_S)
            for task in self.server_state.tasks:
                task.cancel(msg="shutdown_grace_s exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()


def run(app: Any, *, config: GatewayConfig, config_path: str, workers: int = 1, **options: Any) -> int:
    """Serves `app` as uvicorn would: an app for one worker, the import string of an app
    factory for several. With the start-up line and, for one worker, the draining
    shutdown above. Returns the exit status; raises `ListenError`."""
    factory = isinstance(app, str)
    # uvicorn annotates timeout_graceful_shutdown as int, but uses it as an asyncio timeout: any seconds
    grace = config.server.shutdown_grace_s
    server_config = uvicorn.Config(app, factory=factory, workers=workers, timeout_graceful_shutdown=grace, **options)  # type: ignore[arg-type]
    sock = listen(server_config.host, server_config.port, config_path)

    def announce(sockets: list[socket.socket]) -> None:
        listening = sockets[0].getsockname() if sockets else (server_config.host, server_config.port)
        log.warning(
            "lockgate_listening",
            url=url_of(listening),
            config=config_path,
            store=store_of(config),
            middleware=[name for name, _ in config.middleware],
            models=len(config.models),
            workers=workers,
            shutdown_grace_s=config.server.shutdown_grace_s,
        )

    try:
        if workers > 1:
            announce([sock])
            Multiprocess(server_config, sockets=[sock]).run()
            return 0
        tune_gc()  # with --workers, each worker does in app_from_env
        server = GracefulServer(server_config, announce)
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has already shut down as for SIGTERM, minus the exit status
        return 0
    return 0 if server.started else 3  # uvicorn's status for a server that never started


def url_of(address: tuple) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def store_of(config: GatewayConfig) -> str:
    """The store as the start-up line names it: never a password in a Redis URL."""
    store = config.store
    if store.backend == "disk":
        return f"disk:{store.path}"
    if store.backend == "redis":
        parts = urlsplit(store.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        if parts.username or parts.password:
            netloc = "***@" + netloc
        return "redis:" + urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return store.backend
