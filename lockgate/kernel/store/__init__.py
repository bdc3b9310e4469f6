"""The state store (see base.py for the contract every backend keeps): `open_store`
makes the backend gateway.yaml's `store:` names, served through quota leases (leases.py)
when it is shared.

Backends are imported when named: a disk store never loads the Redis client (160 ms).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lockgate.kernel.store.base import Claim, ClaimResult, Reservation, Store, attached, fits

__all__ = ["Claim", "ClaimResult", "Reservation", "Store", "attached", "fits", "open_store"]


def open_store(config: Any = None) -> Store:
    """A store from gateway.yaml's `store:` (a StoreConfig, a mapping, or a ready Store).
    A shared store (disk, redis) is served through quota leases unless `leases: false`."""
    if isinstance(config, Store):
        return config
    if config is None:
        config = {"backend": "memory"}
    if not isinstance(config, Mapping):
        config = {"backend": config.backend, "path": config.path, "url": config.url, "leases": config.leases, "max_connections": config.max_connections}
    backend = config.get("backend", "disk")
    if backend == "memory":
        from lockgate.kernel.store.memory import MemoryStore  # lazy: import only the backend named

        return MemoryStore()
    store: Store
    if backend == "disk":
        from lockgate.kernel.store.disk import DiskStore

        store = DiskStore(config.get("path") or ".lockgate/state")
    elif backend == "redis":
        from lockgate.kernel.store.redis import RedisStore

        store = RedisStore(config.get("url") or "redis://127.0.0.1:6379/0", max_connections=config.get("max_connections") or 64)
    else:
        raise ValueError(f"unknown store backend {backend!r}")
    if not config.get("leases", True):
        return store
    from lockgate.kernel.store.leases import LeasedStore

    return LeasedStore(store)
