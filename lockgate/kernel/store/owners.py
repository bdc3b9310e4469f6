"""Leases and reservations of processes that died.

A concurrency slot and a budget reservation are held by the process serving the request;
they are dropped when it ends. A process killed (`kill -9`, OOM, a node lost) never drops
them, and they would hold a slot or budget headroom until they expired (15 minutes).

So every process that takes leases says it is alive: a heartbeat in the store (host, pid,
process start time) renewed every HEARTBEAT_S for TTL_S. Every entry id begins with its
process's id (`proxy.context.owner_id`). A process sweeps at its start and every
SWEEP_S: an owner holding lease entries is dead when its heartbeat has lapsed, or, on
this same host, at once when its pid is gone or belongs to a newer process. A dead
owner's leases and reservations are released; what it already settled (spent money,
counted requests) is never touched, so spend is never under-counted.
"""

from __future__ import annotations

import asyncio
import os
import socket

from lockgate.kernel.context import owner_id
from lockgate.kernel.logs import get_logger
from lockgate.kernel.store.base import Store, attached

HEARTBEAT_S = 5.0
TTL_S = 20.0  # a heartbeat lapses after this: four missed renewals
SWEEP_S = 30.0
log = get_logger("lockgate.store")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): a pid reused by a newer process has another."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


HOST = f"{socket.gethostname()}/{_boot_id()}"


def my_info() -> str:
    pid = os.getpid()
    return f"{HOST} {pid} {_start_ticks(pid) or '-'}"


def is_dead(info: str | None) -> bool:
    """Whether the owner that wrote `info` is gone: no live heartbeat, or a pid on this
    host that no longer runs (or now runs another process)."""
    if info is None:
        return True
    host, _, rest = info.partition(" ")
    if host != HOST or not rest:
        return False  # another host: its heartbeat says
    pid_text, _, started = rest.partition(" ")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    now_started = _start_ticks(pid)
    return now_started is None or (started != "-" and now_started != started)


async def sweep(store: Store) -> int:
    """Releases the leases of every dead owner; returns how many entries went."""
    me = owner_id()
    released = 0
    for owner, info in (await store.lease_owners()).items():
        if owner == me or not is_dead(info):
            continue
        count = await store.release_owner(owner)
        released += count
        log.warning("released_dead_owner", owner=owner, entries=count, last_seen=info)
    return released


class Keeper:
    """One store's heartbeat and sweeps in this process, on the event loop that uses it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.task: asyncio.Task[None] | None = None
        self.owner = ""

    async def ensure(self, timeout_s: float) -> None:
        """Called before a lease is taken: after the first call (one heartbeat written, so
        no other process can mistake our first lease for a dead one's), one check."""
        loop = asyncio.get_running_loop()
        if self.task is not None and not self.task.done() and self.task.get_loop() is loop and self.owner == owner_id():
            return
        self.owner = owner_id()  # a forked worker is a new owner
        self.task = loop.create_task(self._run())
        down: tuple[type[BaseException], ...] = (TimeoutError, *self.store.errors)  # the store being down is the guard's to report
        try:
            async with asyncio.timeout(timeout_s):
                await self.store.heartbeat(self.owner, my_info(), TTL_S)
        except down as exc:
            log.warning("heartbeat_failed", error=type(exc).__name__)

    async def _run(self) -> None:
        beats = 0
        while True:
            try:
                if beats % int(SWEEP_S / HEARTBEAT_S) == 0:
                    await sweep(self.store)
                await self.store.heartbeat(self.owner, my_info(), TTL_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop the heartbeat
                log.warning("heartbeat_failed", error=type(exc).__name__)
            beats += 1
            await asyncio.sleep(HEARTBEAT_S)


def keeper(store: Store) -> Keeper:
    """The one heartbeat keeper of a store object."""
    return attached(store, "_lockgate_keeper", Keeper)
