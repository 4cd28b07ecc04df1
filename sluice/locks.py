"""Distributed locks: leases with fencing tokens, kept in the store.

Each acquisition gets a token larger than every token handed out before, for any lock. A holder
that stalls past its lease loses the lock to the next taker; its token is then stale, and any
resource that checks tokens (``lease.check()``, or a downstream that keeps the highest token it
has seen) rejects it. Leases renew themselves at a third of their time-to-live while held.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sluice.errors import ConfigError, LeaseLost, LockNotAcquired, StoreError

if TYPE_CHECKING:
    from sluice.store import Store

log = logging.getLogger("sluice.locks")


class Lease:
    """A held lock. Use as a context manager; released on exit."""

    def __init__(self, store: Store, name: str, owner: str, ttl: float, token: int,
                 auto_renew: bool) -> None:
        self.store = store
        self.name = name
        self.owner = owner
        self.ttl = ttl
        self.token = token
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        if auto_renew:
            self._renewer = threading.Thread(target=self._renew_loop, daemon=True,
                                             name=f"sluice-lock-{name}")
            self._renewer.start()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def renew(self, ttl: float | None = None) -> None:
        """Extend the lease; raises ``LeaseLost`` if it already expired or was taken over."""
        if ttl is not None:
            self.ttl = ttl
        if self.store.lock_renew(self.name, self.token, self.ttl) is None:
            self.lost = True
            raise LeaseLost(f"lock {self.name!r}: lease with token {self.token} is no longer held")

    def valid(self) -> bool:
        """True while this lease still holds the lock (asks the store)."""
        return not self.lost and self.store.lock_check(self.name, self.token)

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this lease still holds the lock: call before a write."""
        if not self.valid():
            self.lost = True
            raise LeaseLost(f"lock {self.name!r}: token {self.token} is stale")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=2)
        try:
            self.store.lock_release(self.name, self.token)
        except StoreError as exc:  # the lease will simply expire
            log.warning("lock %r: release failed (%s); it expires in %.0fs", self.name, exc,
                        self.ttl)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except LeaseLost:
                log.warning("lock %r lost (token %d)", self.name, self.token)
                return
            except StoreError as exc:
                log.warning("lock %r: renewal failed, will retry: %s", self.name, exc)


def acquire(store: Store, name: str, owner: str, *, ttl: float, wait: float | None,
            auto_renew: bool) -> Lease:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"lock name must be a non-empty string, got {name!r}")
    if not isinstance(ttl, int | float) or ttl <= 0:
        raise ConfigError(f"lock {name!r}: ttl must be a number of seconds > 0, got {ttl!r}")
    deadline = None if wait is None else time.monotonic() + wait
    pause = 0.02
    while True:
        got = store.lock_acquire(name, owner, ttl)
        if got is not None:
            return Lease(store, name, owner, ttl, got[0], auto_renew)
        if deadline is not None and time.monotonic() >= deadline:
            raise LockNotAcquired(f"lock {name!r} is held by another owner; gave up after "
                                  f"{wait:g}s (pass a longer wait= or retry later)")
        sleep = pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
        time.sleep(sleep)
        pause = min(0.5, pause * 1.5)
