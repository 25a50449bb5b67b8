"""RolloutPolicies as last read, shared by every release that names them.

Every reconcile needs its release's policy; reading it from the API server each time was
one request (and one validation) per release per analysis interval, for an object that
hardly ever changes and that many releases share. The cache cannot hand a decision a stale
policy for longer than the API server takes to tell the operator:

- the policy watch (``handlers.policy_event``) drops a policy's entry on every event about
  it, *before* it wakes the releases of its namespace, so they decide again with a fresh
  read;
- a read that was under way when its entry was dropped is not stored (an epoch per policy),
  so an answer from before a change never outlives the change's event;
- an entry is trusted for ``ttl`` seconds at most, which bounds staleness should the watch
  itself stall; a replica that stands by, or becomes active, starts empty;
- only policies that exist are kept: a missing one is read again every time.

Concurrent misses on one policy share one read. Entries are immutable once stored: the
engine never changes its inputs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rewind.api import RolloutPolicySpec

#: Seconds a cached policy is trusted without an event about it (a stalled watch's bound).
POLICY_TTL = 30.0

#: A parsed policy, or why it is unusable (not found, invalid), as ``_load_policy`` returns.
Loaded = tuple[RolloutPolicySpec | None, str | None]


@dataclass(frozen=True)
class _Entry:
    at: float
    loaded: Loaded


class PolicyCache:
    """Parsed RolloutPolicies by (namespace, name); see the module docstring."""

    def __init__(self, ttl: float = POLICY_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._epochs: dict[tuple[str, str], int] = {}
        self._reads: dict[tuple[str, str], asyncio.Future[tuple[Loaded, bool]]] = {}
        #: Reads from the API server, for tests and the benchmark.
        self.reads = 0

    async def load(
        self, namespace: str, name: str,
        read: Callable[[], Awaitable[tuple[Loaded, bool]]],
    ) -> Loaded:
        """The cached policy, else ``read()``: ``(loaded, exists)``; stored when it exists
        and no event about the policy came while it was read."""
        key = (namespace, name)
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.at < self.ttl:
            return entry.loaded
        pending = self._reads.get(key)
        if pending is None:
            pending = self._reads[key] = asyncio.ensure_future(self._read(key, read))
            pending.add_done_callback(self._done(key))
        # Shielded: a release whose loop is cancelled must not cancel the others' read.
        loaded, _ = await asyncio.shield(pending)
        return loaded

    def _done(self, key: tuple[str, str]) -> Callable[[asyncio.Future[tuple[Loaded, bool]]], None]:
        def forget(read: asyncio.Future[tuple[Loaded, bool]]) -> None:
            if self._reads.get(key) is read:
                del self._reads[key]
            if not read.cancelled():
                read.exception()  # retrieved: a failed read is the waiters' error, not a leak

        return forget

    async def _read(
        self, key: tuple[str, str], read: Callable[[], Awaitable[tuple[Loaded, bool]]]
    ) -> tuple[Loaded, bool]:
        epoch = self._epochs.get(key, 0)
        started = self._clock()
        self.reads += 1
        loaded, exists = await read()
        if exists and self._epochs.get(key, 0) == epoch:
            self._entries[key] = _Entry(started, loaded)
        return loaded, exists

    def invalidate(self, namespace: str, name: str) -> None:
        """The policy changed (or was created, or deleted): read it again next time, and
        never store a read that was already under way."""
        key = (namespace, name)
        self._entries.pop(key, None)
        self._epochs[key] = self._epochs.get(key, 0) + 1
        # The next load starts a new read instead of joining one that may predate the change.
        self._reads.pop(key, None)

    def clear(self) -> None:
        """Forget everything (a replica standing by or becoming active)."""
        for namespace, name in list(self._entries) + list(self._reads):
            self.invalidate(namespace, name)
        self._entries.clear()
