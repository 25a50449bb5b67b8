"""The latest ModelRelease bodies the watch delivered, so a reconcile does not read again
the object the watch has just shown (one GET per release per round, the largest object
Rewind reads, at scale about a sixth of the operator's requests: bench/bench_scale.py).

Correctness never rests on this cache. Every status write is guarded by the uid and
resourceVersion of the body the decision was made from (``ReleaseController._write_status``):
a body the API server has moved past makes the write fail with 422, and the release decides
again. Two rules keep that from happening on the operator's own writes:

- after the operator writes the object (its status, an annotation removal), the body is
  read from the API server until the watch delivers that write, or ``echo_wait`` seconds
  pass (a watch that restarted may never deliver that very version);
- a body of another object of the same name (deleted and created again) is never served:
  the entry is keyed by name and replaced by whatever the watch delivers last, and a late
  DELETED of the old uid removes nothing of the new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Seconds after its own write that a release's body is read from the API server when the
#: watch has not delivered that write (its echo normally arrives within milliseconds).
ECHO_WAIT = 5.0


@dataclass
class _Entry:
    body: Mapping[str, Any] | None = None
    #: resourceVersion of the operator's last write not yet seen on the watch, and until
    #: when (monotonic seconds) to wait for it.
    awaiting: str | None = None
    until: float = 0.0


class ReleaseCache:
    """Bodies by (namespace, name); fed by the ModelRelease watch (:meth:`seen`) and told of
    the operator's own writes (:meth:`wrote`). Not thread-safe: event loop only."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, echo_wait: float = ECHO_WAIT
    ) -> None:
        self._clock = clock
        self._echo_wait = echo_wait
        self._entries: dict[tuple[str, str], _Entry] = {}

    def seen(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event: keep its body (read-only from here on), or drop it on DELETED."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        entry = self._entries.get(key)
        if event_type == "DELETED":
            held = entry.body if entry is not None else None
            if held is not None and (held.get("metadata") or {}).get("uid") == meta.get("uid"):
                del self._entries[key]
            return
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.body = body
        if entry.awaiting is not None and meta.get("resourceVersion") == entry.awaiting:
            entry.awaiting = None

    def wrote(self, namespace: str, name: str, resource_version: str | None) -> None:
        """The operator stored a new version of the object: serve nothing older."""
        entry = self._entries.setdefault((namespace, name), _Entry())
        if not resource_version:
            entry.body = None  # unknown version: read it next time
            entry.awaiting = None
            return
        entry.awaiting = resource_version
        entry.until = self._clock() + self._echo_wait

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The body to decide from, or None: read it from the API server."""
        entry = self._entries.get((namespace, name))
        if entry is None or entry.body is None:
            return None
        if entry.awaiting is not None:
            if self._clock() < entry.until:
                return None
            entry.awaiting = None
            entry.body = None  # the echo never came: read afresh, then trust the watch
            return None
        return entry.body

    def forget(self, namespace: str, name: str) -> None:
        self._entries.pop((namespace, name), None)

    def clear(self) -> None:
        """Forget every body: the watch was paused (a standby replica), so they may be old."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
