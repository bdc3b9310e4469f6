"""Calls into the store with a deadline, and what a policy does when the store fails.

Every policy that keeps state (throttle, budget, cache, runtime keys) takes

    store_failure: closed        # closed: answer 503 `store_unavailable`; open: let the request through
    store_timeout_s: 0.5         # the longest a request waits for the store before that happens

A store that is down, unreachable or has answered nothing for `store_timeout_s` is the
same failure: no request ever hangs on it, and none gets a bare 500. A store that is
busy is not failing: while it goes on answering other calls (a burst queued behind a
write batch, a connection pool, another worker's transaction), a call waits its turn, up
to BUSY_LIMIT_S, so load is never mistaken for an outage. A closed policy refuses the
request (OpenAI's error shape, `Retry-After`), because a limit that cannot be checked
must not be assumed to hold; an open one serves it unchecked and counts it
(`lockgate_store_failures_total`).

What was already decided is never lost to a failure: a settle (spend), a release or a
token correction that cannot be written goes to the store's backlog and is written
once the store answers again, in order (spend is recorded late, never dropped, as long
as the process lives; each deferred write is logged with its amounts). A claim or
reservation whose outcome is unknown (it timed out, it may have landed) is undone
through the backlog too, so it cannot hold a slot or headroom until it expires.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from lockgate.kernel import metrics
from lockgate.kernel.errors import GatewayError
from lockgate.kernel.logs import get_logger
from lockgate.kernel.parsing import Checker
from lockgate.kernel.store.base import Claim, ClaimResult, Reservation, Store, attached

T = TypeVar("T")
MODES = ("closed", "open")
DEFAULT_TIMEOUT_S = 0.5
BUSY_LIMIT_S = 10.0  # the longest a call waits for a store that is answering others meanwhile
LOOP_STARVED = 0.1  # a last look later than this part of the deadline: the loop, not the store, is slow
CPU_STARVED = 0.25  # kept off the CPU for more than this part of the last look: the machine, not the store, is slow
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 5.0
BACKLOG_MAX = 100_000  # writes kept for a store that stays down; past this the oldest are logged and dropped
log = get_logger("lockgate.store")


class StoreUnavailable(Exception):
    """The store failed or did not answer within the policy's deadline."""


@dataclass(frozen=True, slots=True)
class StoreFailure:
    mode: str = "closed"
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def closed(self) -> bool:
        return self.mode == "closed"


def parse_store_failure(check: Checker, raw: dict[Any, Any], default_mode: str) -> StoreFailure:
    """`store_failure` and `store_timeout_s` of a policy file, problems reported to `check`."""
    mode = check.string(raw, "store_failure", default_mode)
    if mode not in MODES:
        check.fail(raw, "store_failure", f"store_failure must be closed or open, not {mode!r}")
        mode = default_mode
    timeout = check.number(raw, "store_timeout_s", DEFAULT_TIMEOUT_S, minimum=0.001)
    return StoreFailure(mode, float(timeout))


def unavailable() -> GatewayError:
    return GatewayError(
        503,
        "The gateway's state store is unavailable, so this request's limits cannot be checked. Try again shortly.",
        "api_error",
        "store_unavailable",
        headers={"retry-after": "1"},
    )


class Progress:
    """When the store last answered a call made through `call` (loop time)."""

    __slots__ = ("last",)

    def __init__(self, store: Store) -> None:
        self.last = -math.inf


def runqueue_wait() -> float:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux's
    schedstat); 0.0 where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Watch:
    """Expires a call's deadline once the store has answered nothing for `timeout_s` (or
    the call has waited BUSY_LIMIT_S): checked when the last answer turns that old, so a
    call queued behind others that are being answered goes on waiting, and so does one
    held up by the store's own work (`Store.working`: a disk checkpoint or queued batch).

    Silence is only the store's when this process could have heard an answer. Before
    expiring, the watch looks once more a quarter deadline later (an answer that came in
    meanwhile, after a stall, is taken) and asks whether the process was starved over
    that look: its loop late by more than LOOP_STARVED of the deadline (a burst of
    callbacks ahead of the answers), or the thread kept off the CPU by other processes for
    more than CPU_STARVED of the look. Either way the silence says nothing of the store,
    and the call gets another deadline, up to BUSY_LIMIT_S. On 2 cores kept busy by other
    processes, 1,000 connections on the disk store got 454-1,000 x 503 from a healthy
    store without this."""

    __slots__ = ("loop", "deadline", "store", "progress", "timeout_s", "started", "handle", "look")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: asyncio.Timeout, store: Store, progress: Progress, timeout_s: float) -> None:
        self.loop, self.deadline, self.store, self.progress, self.timeout_s = loop, deadline, store, progress, timeout_s
        self.started = loop.time()
        self.look: tuple[float, float] | None = None  # the last look: when it is due (loop time), the thread's runqueue wait then
        self.handle: asyncio.Handle = loop.call_at(self.started + timeout_s, self.check)

    def check(self) -> None:
        now = self.loop.time()
        stale = self.progress.last + self.timeout_s
        limit = self.started + BUSY_LIMIT_S
        look, self.look = self.look, None
        if now >= limit:
            self.deadline.reschedule(now)
        elif stale > now:
            self.handle = self.loop.call_at(min(stale, limit), self.check)
        elif self.store.working():
            self.handle = self.loop.call_at(min(now + self.timeout_s / 4, limit), self.check)
        elif look is None:
            due = now + self.timeout_s / 4
            self.look = (due, runqueue_wait())
            self.handle = self.loop.call_at(due, self.check)
        elif now - look[0] > self.timeout_s * LOOP_STARVED or runqueue_wait() - look[1] > self.timeout_s / 4 * CPU_STARVED:
            self.handle = self.loop.call_at(min(now + self.timeout_s, limit), self.check)
        else:
            self.deadline.reschedule(now)

    def cancel(self) -> None:
        self.handle.cancel()


@types.coroutine
def resume(work: Coroutine[Any, Any, T], pending: Any) -> Generator[Any, Any, T]:
    """The rest of a coroutine whose first step already ran (`pending`: what that step
    yielded), awaited as `await work` would be from there: what the task sends or throws
    goes on to it."""
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            work.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - a cancellation or a thrown error is the coroutine's to handle
            try:
                pending = work.throw(exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            continue
        try:
            pending = work.send(sent)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def first_step(work: Awaitable[T], context: contextvars.Context | None = None) -> tuple[bool, Any]:
    """Runs a coroutine until it first waits: (True, its result) when it never had to (a
    call a lease, an in-process store or a local read answers), else (False, what to
    await for the rest). Most calls through `call` are such: a deadline, a timer and a
    task for each were a fifth of the loop's work a request. `context`: where the step
    runs when the rest will run in a task of its own (given the same context), so what
    the coroutine set in its context vars (a tracing span) is still there."""
    if type(work) is not types.CoroutineType:
        return False, work
    try:
        pending = work.send(None) if context is None else context.run(work.send, None)
    except StopIteration as done:
        return True, done.value
    return False, resume(work, pending)


def start_task(work: Coroutine[Any, Any, T]) -> tuple[bool, Any]:
    """`create_task(work)` that runs its first step at once: (True, the result) when it
    never waited (and no task was made), else (False, the task running the rest), in
    one copy of the caller's context throughout, as a task's would be."""
    context = contextvars.copy_context()
    done, rest = first_step(work, context)
    if done:
        return True, rest

    async def finish() -> T:
        return await rest  # type: ignore[no-any-return]

    return False, asyncio.get_running_loop().create_task(finish(), context=context)


async def shielded(work: Coroutine[Any, Any, T]) -> T:
    """`await asyncio.shield(work)`, without the task when `work` finishes at once."""
    done, rest = start_task(work)
    if done:
        return rest  # type: ignore[no-any-return]
    return await asyncio.shield(rest)


async def call(store: Store, work: Awaitable[T], timeout_s: float) -> T:
    """`work` (a store call), or StoreUnavailable if it fails, or if it is not answered
    while the store answers nothing else for `timeout_s` (see the module docstring). A
    call answered without waiting (from a lease, from memory) needs no deadline."""
    loop = asyncio.get_running_loop()
    progress: Progress = attached(store, "_lockgate_progress", Progress)
    try:
        done, rest = first_step(work)
    except store.errors as exc:
        raise StoreUnavailable(type(exc).__name__) from None
    if done:
        progress.last = loop.time()
        return rest  # type: ignore[no-any-return]
    work = rest
    try:
        async with asyncio.timeout(None) as deadline:
            watch = Watch(loop, deadline, store, progress, timeout_s)
            try:
                result = await work
            finally:
                watch.cancel()
    except TimeoutError:
        now = loop.time()
        quiet = f"; its last answer {now - progress.last:.2f}s ago" if progress.last > -math.inf else ""
        raise StoreUnavailable(f"no answer within {timeout_s:g}s (waited {now - watch.started:.2f}s{quiet})") from None
    except store.errors as exc:
        raise StoreUnavailable(type(exc).__name__) from None
    progress.last = loop.time()
    return result


async def claim(store: Store, claims: Sequence[Claim], entry_id: str, timeout_s: float) -> ClaimResult:
    """`store.claim` within the deadline; granted at once, with no deadline to keep, from
    a lease this process holds."""
    result = store.claim_now(claims, entry_id)
    return result if result is not None else await call(store, store.claim(claims, entry_id), timeout_s)


async def reserve(store: Store, claims: Sequence[Claim], entry_id: str, timeout_s: float) -> Reservation:
    """`store.reserve` within the deadline; at once from a lease this process holds."""
    result = store.reserve_now(claims, entry_id)
    return result if result is not None else await call(store, store.reserve(claims, entry_id), timeout_s)


def failed(policy: str, failure: StoreFailure, error: StoreUnavailable, request_id: str) -> None:
    """Counts and logs one request's store failure (what happens next is the caller's)."""
    outcome = "refused" if failure.closed else "passed"
    metrics.store_failures.labels(policy, outcome).inc()
    log.warning("store_unavailable", policy=policy, outcome=outcome, error=str(error), request_id=request_id)


class Backlog:
    """Writes that must happen but could not yet: retried in order until the store answers."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: deque[tuple[str, Callable[[], Awaitable[Any]], dict[str, Any]]] = deque()
        self.task: asyncio.Task[None] | None = None

    def add(self, what: str, write: Callable[[], Awaitable[Any]], **facts: Any) -> None:
        if len(self.pending) >= BACKLOG_MAX:
            lost, _, lost_facts = self.pending.popleft()
            log.error("store_backlog_dropped", what=lost, **lost_facts)
        self.pending.append((what, write, facts))
        metrics.store_backlog.set(len(self.pending))
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self._drain())

    async def _drain(self) -> None:
        wait = RETRY_FIRST_S
        while self.pending:
            what, write, facts = self.pending[0]
            try:
                await call(self.store, write(), max(DEFAULT_TIMEOUT_S, wait))
            except StoreUnavailable:
                await asyncio.sleep(wait)
                wait = min(wait * 2, RETRY_MAX_S)
                continue
            except Exception:  # noqa: BLE001 - a write the store refuses for good is logged, not retried forever
                log.error("store_backlog_write_failed", what=what, **facts)
            else:
                if facts:
                    log.info("store_backlog_written", what=what, **facts)
            self.pending.popleft()
            metrics.store_backlog.set(len(self.pending))
            wait = RETRY_FIRST_S


def backlog(store: Store) -> Backlog:
    """The one backlog of a store object, shared by every middleware using it."""
    return attached(store, "_lockgate_backlog", Backlog)


async def write_or_defer(store: Store, what: str, write: Callable[[], Awaitable[Any]], timeout_s: float, **facts: Any) -> bool:
    """Writes now if the store answers in time, else leaves it to the backlog; True when
    written now. A write queued behind others waits its turn, so order is kept."""
    queue = backlog(store)
    if not queue.pending:
        try:
            await call(store, write(), timeout_s)
            return True
        except StoreUnavailable as exc:
            log.warning("store_write_deferred", what=what, error=str(exc), **facts)
    queue.add(what, write, **facts)
    return False


def spawn(store: Store, work: Coroutine[Any, Any, Any], failure: str, **facts: Any) -> None:
    """Runs a write nobody waits for (a cache entry): its first step at once (a disk write
    is queued, a Redis command sent, an in-process one done, before this returns), the
    rest kept alive on the store until done; a failure logged as `failure`, never raised."""
    try:
        done, task = start_task(work)
    except Exception as exc:  # noqa: BLE001 - nobody waits for it: logged, as a later failure is
        log.warning(failure, error=str(exc), **facts)
        return
    if done:
        return
    tasks: set[asyncio.Task[Any]] = attached(store, "_lockgate_spawned", lambda _: set())
    tasks.add(task)

    def ended(finished: asyncio.Task[Any]) -> None:
        tasks.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            log.warning(failure, error=str(finished.exception()), **facts)

    task.add_done_callback(ended)
