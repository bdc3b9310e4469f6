"""Policy files: parsed once into an immutable object, swapped whole when the file changes.

A middleware holds a `Policy` and reads `policy.current` once per request: one
attribute read, no lock, no file I/O. A reload parses the new file completely before
the swap, so a request sees the old policy or the new one, never a mix; an invalid
edit is refused, the old policy stays in force, and the error is kept for
`/health/readiness`, `/admin/policies` and `/metrics`.

Files are watched by one daemon thread per process, started by the first request
(`Policy.ensure_watching()`): middlewares have no lifespan of their own. It watches the
directories rather than the files' inodes, so edits in place, editors' write-then-rename,
deletion then re-creation and Kubernetes ConfigMap swaps (`auth.yaml` ->
`..data/auth.yaml`, where `..data` is a symlink replaced atomically) are all seen.
`SIGHUP` reloads everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar

from watchfiles import Change, watch

from lockgate.kernel import metrics as prometheus
from lockgate.kernel.logs import get_logger
from lockgate.kernel.parsing import ConfigError, parse_yaml

T = TypeVar("T")
PolicyError = ConfigError  # every problem as `file:line: message`

STEP_MS = 50  # a burst of events ends after this much quiet: the usual delay from a save to the swap
DEBOUNCE_MS = 300  # the longest a burst is grouped before reloading anyway
RECHECK_S = 1.0  # re-read without events too: inotify can overflow, network filesystems send none
POLL_S = 0.5  # the interval when the platform has no file system events at all

log = get_logger("lockgate.policy")
REGISTRY: weakref.WeakSet[Policy[Any]] = weakref.WeakSet()
_lock = threading.Lock()  # guards REGISTRY, the counters and the watcher's start; never taken per request
_reloads: Counter[str] = Counter()  # by kind, per process, never going down (a policy dropped with its app keeps its count)
_failures: Counter[str] = Counter()


class Policy(Generic[T]):
    """`source` is a path to a YAML file or an already loaded mapping; `parse(raw,
    source_name)` turns the loaded YAML into the immutable policy object or raises
    `PolicyError`. A broken file at start-up is an error: there is no old policy to keep."""

    def __init__(self, kind: str, source: str | Path | Mapping[str, Any], parse: Callable[[Any, str], T]) -> None:
        self.kind = kind
        self.parse = parse
        self.path = None if isinstance(source, Mapping) else Path(source)
        self.loaded_at = 0.0
        self.version = ""
        self.last_error: str | None = None
        self.error_at: float | None = None
        self.reloads = 0
        self.failures = 0
        self._refused: str | None = None  # what the last refusal was about, so a re-check does not count it again
        self._reload_lock = threading.Lock()  # the watcher, SIGHUP and /admin/reload may race; requests never take it
        self._watching = False
        if isinstance(source, Mapping):
            self.current: T = self._checked(dict(source), f"<{kind} policy>")
            self.version = digest(repr(sorted(source.items())).encode())
            self.loaded_at = time.time()
        else:
            text = self._read()
            self.current = self._parse(text)
            self.version = digest(text)
            self.loaded_at = time.time()
        with _lock:
            REGISTRY.add(self)
        publish()
        if self.path is not None:
            _watcher.wake.set()  # a running watcher picks up this file's directory

    def ensure_watching(self) -> None:
        """Called by the middleware on every request: after the first call, one bool check."""
        if self._watching:
            return
        self._watching = True
        start_watching()

    def _read(self) -> bytes:
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise PolicyError([f"{self.path}: cannot read: {exc.strerror}"]) from None

    def _parse(self, text: bytes) -> T:
        return self._checked(parse_yaml(text, str(self.path)), str(self.path))

    def _checked(self, raw: Any, source: str) -> T:
        """The policy, or PolicyError: whatever the document holds, a parse function that
        trips over it is reported like any other problem (never a traceback), the same at
        start-up, in `lockgate check` and on reload."""
        try:
            return self.parse(raw, source)
        except PolicyError:
            raise
        except Exception as exc:  # noqa: BLE001 - a parse function's bug must not take down start-up or the policy in force
            log.debug("policy_parse_crashed", kind=self.kind, file=source, exc_info=True)
            raise PolicyError([f"{source}: cannot load: {type(exc).__name__}: {exc}"]) from None

    def reload(self) -> bool:
        """Re-reads the file; True when a new version is now in force."""
        if self.path is None:
            return False
        with self._reload_lock:
            try:
                text = self._read()
            except PolicyError as exc:
                return self._refuse(exc.problems[0], exc.problems[0])
            version = digest(text)
            if version == self.version:
                self._clear_error()  # a bad edit was reverted: the file again holds what is in force
                return False
            # a refused edit is parsed again at each look (every RECHECK_S at most): whether
            # it holds can depend on another file (a fallback chain naming a model gateway.yaml
            # adds in the same ConfigMap update, in whichever order the two are read);
            # `_refuse` still counts and logs each refused content once
            try:
                policy = self._parse(text)
            except PolicyError as exc:
                return self._refuse("; ".join(exc.problems), version)
            self.current = policy
            self.version = version
            self.loaded_at = time.time()
            self._clear_error()
            self.reloads += 1
            with _lock:
                _reloads[self.kind] += 1
        publish()
        log.info("policy_reloaded", kind=self.kind, file=str(self.path), version=version)
        return True

    def _refuse(self, error: str, refused: str) -> bool:
        """Keeps the policy in force; counts and logs each refused content once."""
        if refused == self._refused:
            return False
        self._refused = refused
        self.failures += 1
        with _lock:
            _failures[self.kind] += 1
        self.last_error = error
        self.error_at = time.time()
        publish()
        log.error("policy_reload_failed", kind=self.kind, file=str(self.path), error=error)
        return False

    def _clear_error(self) -> None:
        had_error = self.last_error is not None
        self._refused = None
        self.last_error = None
        self.error_at = None
        if had_error:
            publish()

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": str(self.path) if self.path else None,
            "version": self.version,
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
            "error_at": self.error_at,
            "reloads": self.reloads,
            "failures": self.failures,
        }


def publish() -> None:
    """Hands this process's counts to `/metrics` (kernel/metrics.py), where the workers'
    numbers meet."""
    prometheus.record_policies(metrics())


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def registered() -> list[Policy[Any]]:
    with _lock:
        return list(REGISTRY)


def reload_all() -> list[dict[str, Any]]:
    for policy in registered():
        policy.reload()
    return statuses()


def statuses() -> list[dict[str, Any]]:
    return statuses_of(registered())


def statuses_of(policies: list[Policy[Any]]) -> list[dict[str, Any]]:
    return sorted((p.status() for p in policies), key=lambda s: (s["kind"], s["file"] or ""))


def metrics() -> dict[str, Any]:
    """This process's totals for `/metrics`: reloads and refused edits by kind (counters
    that never go down), policies refusing an edit right now by kind, and how files are
    watched (`events`, `polling`, or `off` before the first request)."""
    invalid = Counter(p.kind for p in registered() if p.last_error)
    kinds = sorted({*_reloads, *_failures, *(p.kind for p in registered())})
    return {
        "reloads": {kind: _reloads[kind] for kind in kinds},
        "failures": {kind: _failures[kind] for kind in kinds},
        "invalid": {kind: invalid[kind] for kind in kinds},
        "reloads_total": sum(_reloads.values()),
        "failures_total": sum(_failures.values()),
        "watch": _watcher.mode,
    }


# -- watching -------------------------------------------------------------------------
# A daemon thread rather than an asyncio task: it serves whatever loop is running (tests
# run one loop per test, and a task would die with its loop), its file reads and parses
# never hold up requests on the loop, it cannot keep a process alive at exit, and
# swapping `policy.current` is one attribute store, atomic for the reader. Under
# `uvicorn --workers N` each worker is its own process and starts its own thread on
# its first request; a fork resets the state (`_forget`) so a child starts afresh.


class Flag:
    """A stop event watchfiles can poll (`is_set()`), set by a signal handler as well:
    a plain bool, no lock to deadlock on."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value

    def set(self) -> None:
        self.value = True

    def clear(self) -> None:
        self.value = False


@dataclass(frozen=True, slots=True)
class Targets:
    """What to watch: real directories (with their inode, so a directory replaced or
    re-pointed restarts the watch) and the names in them that matter."""

    dirs: tuple[tuple[str, int, int], ...]
    names: frozenset[str]

    def wanted(self, change: Change, path: str) -> bool:
        return os.path.basename(path) in self.names


def watch_targets(policies: list[Policy[Any]]) -> Targets:
    dirs: dict[str, tuple[int, int]] = {}
    names: set[str] = set()
    for policy in policies:
        if policy.path is None:
            continue
        for hop in symlink_hops(policy.path):
            names.add(os.path.basename(hop))
            for directory in (os.path.dirname(hop), os.path.dirname(os.path.realpath(hop))):
                real = os.path.realpath(directory)
                try:
                    stat = os.stat(real)
                except OSError:
                    continue  # gone for now: the re-check sees it come back
                dirs[real] = (stat.st_dev, stat.st_ino)
    return Targets(tuple(sorted((d, dev, ino) for d, (dev, ino) in dirs.items())), frozenset(names))


def symlink_hops(path: Path) -> list[str]:
    """The file and every symlink on the way to it, directories included: in a ConfigMap
    volume `auth.yaml` links to `..data/auth.yaml`, and an update replaces `..data`."""
    hops: list[str] = []
    pending = [os.path.abspath(path)]
    while pending and len(hops) < 40:
        hop = pending.pop()
        if hop in hops:
            continue
        hops.append(hop)
        try:
            if os.path.islink(hop):
                pending.append(os.path.normpath(os.path.join(os.path.realpath(os.path.dirname(hop)), os.readlink(hop))))
        except OSError:
            continue  # replaced while we looked: the next look sees the new one
        parent = os.path.dirname(hop)
        while parent != os.path.dirname(parent):
            if os.path.islink(parent):
                pending.append(parent)
            parent = os.path.dirname(parent)
    return hops


class Watcher:
    def __init__(self) -> None:
        self.wake = Flag()  # restart the watch: a new file, a SIGHUP, a stop
        self.stop = Flag()
        self.thread: threading.Thread | None = None
        self.mode = "off"
        self.hangups = 0
        self.seen_hangups = 0
        self.armed = False
        self.checked = 0.0  # monotonic time of the last reload_files()

    def start(self) -> None:
        """Under `_lock`."""
        if self.thread is not None and self.thread.is_alive() and not self.stop.is_set():
            self.wake.set()
            return
        self.stop = Flag()
        self.thread = threading.Thread(target=self.run, args=(self.stop,), name="lockgate-policy-watch", daemon=True)
        self.thread.start()

    def run(self, stop: Flag) -> None:
        while not stop.is_set():
            self.armed = False
            self.wake.clear()
            try:
                self.round(stop)
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                log.exception("policy_watch_error")
                self.sleep(POLL_S, stop)
        if self.thread is threading.current_thread():
            self.mode = "off"

    def round(self, stop: Flag) -> None:
        """Watch until woken; reload whatever changed while we were not looking."""
        if self.seen_hangups != self.hangups:
            self.seen_hangups = self.hangups
            log.info("policy_sighup")
        targets = watch_targets(registered())
        if not targets.dirs or self.mode == "polling":
            reload_files()
            self.sleep(POLL_S, stop)
            return
        self.mode = "events"
        try:
            self.watch(targets, stop)
        except FileNotFoundError:  # a directory vanished between looking and watching
            reload_files()
            self.sleep(POLL_S, stop)
        except (OSError, RuntimeError) as exc:  # no inotify here (limits, exotic filesystems)
            log.warning("policy_watch_polling", error=repr(exc))
            self.mode = "polling"

    def watch(self, targets: Targets, stop: Flag) -> None:
        events = watch(
            *(directory for directory, _, _ in targets.dirs),
            watch_filter=targets.wanted,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=self,
            rust_timeout=int(RECHECK_S * 1000),
            yield_on_timeout=True,
            raise_interrupt=False,
            recursive=False,
            ignore_permission_denied=True,
        )
        with contextlib.closing(events):  # stops watchfiles' own thread now, not at garbage collection
            for _ in events:
                reload_files()
                if stop.is_set() or watch_targets(registered()) != targets:
                    return  # a ConfigMap swap points at a new directory: watch that one

    def is_set(self) -> bool:
        """watchfiles' stop event, asked every step once the directories are watched. The
        first ask is the moment to catch up on changes made before: none falls between.
        Later asks re-read the files every RECHECK_S: while a file nobody watches keeps
        changing in a watched directory (a log written next to the config), watchfiles
        yields nothing, not even its timeout."""
        if not self.armed or time.monotonic() - self.checked >= RECHECK_S:
            self.armed = True
            reload_files()
        return self.wake.is_set()

    def sleep(self, seconds: float, stop: Flag) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.wake.is_set() and not stop.is_set():
            time.sleep(STEP_MS / 1000)


_watcher = Watcher()
_sighup_loop: asyncio.AbstractEventLoop | None = None  # where our handler lives when asyncio installed it
# the disposition ours replaced, put back when watching stops: SIG_IGN under `nohup`
_sighup_before: Any = signal.SIG_DFL
FREE = (signal.SIG_DFL, signal.SIG_IGN)  # dispositions nobody's handler: ours may take them


def reload_files() -> None:
    _watcher.checked = time.monotonic()
    for policy in registered():
        if policy.path is not None:
            policy.reload()


def start_watching() -> None:
    """Starts this process's watcher (or wakes it to pick up new files) and installs the
    SIGHUP handler. Idempotent; a gateway may call it from its lifespan so that SIGHUP
    works before the first request."""
    with _lock:
        _watcher.start()
    install_sighup()


def stop_watching(timeout: float = 5.0) -> None:
    """Stops the watcher thread and removes our SIGHUP handler (the disposition it
    replaced comes back); the next request starts them again. For tests, and for
    embedders that want no thread left behind."""
    global _sighup_loop, _sighup_before
    with _lock:
        thread = _watcher.thread
        _watcher.stop.set()
        _watcher.wake.set()
        for policy in REGISTRY:
            policy._watching = False
    if thread is not None:
        thread.join(timeout)
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return
    ours = signal.getsignal(signal.SIGHUP) is on_sighup
    if _sighup_loop is not None and not _sighup_loop.is_closed():
        ours = _sighup_loop.remove_signal_handler(signal.SIGHUP) or ours
    if ours:
        signal.signal(signal.SIGHUP, _sighup_before)
    _sighup_loop, _sighup_before = None, signal.SIG_DFL


def request_reload() -> None:
    """Has the watcher thread reload every policy now: SIGHUP's handler in a running loop."""
    _watcher.hangups += 1
    _watcher.wake.set()
    start_watching()


def on_sighup(signum: int, frame: FrameType | None) -> None:
    # runs between two bytecodes of the main thread: set flags only, take no lock
    _watcher.hangups += 1
    _watcher.wake.set()


def install_sighup() -> bool:
    """SIGHUP reloads every policy. Installed from the main thread only, through the
    running loop when there is one, over the default or an ignored SIGHUP (`nohup
    lockgate serve`: a hangup still must not stop it, and `kill -HUP` still reloads),
    and never over a handler someone else set (uvicorn's supervisor, for one, restarts
    its workers on SIGHUP). True when ours is in place."""
    global _sighup_loop, _sighup_before
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGHUP)
    if current is on_sighup:
        return True
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if _sighup_loop is not None and not _sighup_loop.is_closed() and current not in FREE:
        # a closed loop has put SIG_DFL back, so this is still ours: on the loop that runs
        # now, or on one that stopped without closing (an app served once, then another on
        # a new loop), where no signal would ever be read: then it moves here
        if running is None or running is _sighup_loop:
            return True
        _sighup_loop.remove_signal_handler(signal.SIGHUP)
        _sighup_loop = None
    elif current in FREE:
        _sighup_before = current
    else:
        log.info("policy_sighup_left_alone", handler=repr(current))
        return False
    try:
        if running is None:
            raise RuntimeError("no running loop")
        running.add_signal_handler(signal.SIGHUP, request_reload)
        _sighup_loop = running
    except (RuntimeError, NotImplementedError, ValueError):
        signal.signal(signal.SIGHUP, on_sighup)
    return True


def _forget() -> None:
    """In a forked child: the parent's thread and locks did not come along."""
    global _lock, _sighup_loop
    _lock = threading.Lock()
    _watcher.thread = None
    _watcher.mode = "off"
    _sighup_loop = None
    for policy in list(REGISTRY):
        policy._watching = False
        policy._reload_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget)
