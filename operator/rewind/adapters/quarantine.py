"""Quarantine entries of a namespace: what is known to be bad (issue 13).

Every reconcile hands the engine every entry of every ``Quarantine`` of the release's
namespace (``Inputs.quarantine``). Listing them per reconcile would be one request per
release per analysis interval for objects that hardly ever change, so the list is cached
per namespace, on the terms of :mod:`rewind.policycache`:

- the Quarantine watch (``handlers.quarantine_event``) drops a namespace's list on every
  event, *before* it wakes the releases of the namespace;
- a read under way when its namespace was dropped is not stored (an epoch per namespace);
- a list is trusted ``ttl`` seconds at most, which bounds staleness should the watch stall.

A failed list raises (:class:`QuarantineReadError`): the reconcile fails
rather than deciding as if nothing were quarantined, which would lift every mark.
A Quarantine the models refuse (the CRD's schema should have) is skipped and logged:
one broken object must not blind the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from pydantic import ValidationError

from rewind import API_GROUP, API_VERSION
from rewind.adapters import _kube
from rewind.adapters.base import AdapterError
from rewind.api import QUARANTINE_PLURAL, QuarantineEntry, QuarantineSpec

log = logging.getLogger(__name__)

#: Seconds a namespace's list is trusted without an event about it.
QUARANTINE_TTL = 30.0

#: One entry and how decisions name it: ``<namespace>/<quarantine>#<entry>``.
Named = tuple[str, QuarantineEntry]


def parse_quarantines(namespace: str, items: list[dict[str, Any]]) -> tuple[Named, ...]:
    """Every entry of the listed Quarantine objects, ordered by object then entry name
    (so the entry a decision names does not depend on the order the API lists them)."""
    out: list[Named] = []
    for item in sorted(items, key=lambda i: str((i.get("metadata") or {}).get("name", ""))):
        name = str((item.get("metadata") or {}).get("name", ""))
        try:
            spec = QuarantineSpec.model_validate(item.get("spec") or {})
        except ValidationError as err:
            log.warning("Quarantine %s/%s ignored: %s", namespace, name, err.errors()[0]["msg"])
            continue
        for entry in sorted(spec.entries, key=lambda e: e.name):
            out.append((f"{namespace}/{name}#{entry.name}", entry))
    return tuple(out)


class QuarantineReadError(AdapterError):
    """The Quarantines of a namespace could not be listed."""


@dataclass(frozen=True)
class _Cached:
    at: float
    entries: tuple[Named, ...]


class QuarantineCache:
    """The Quarantine entries of each namespace, listed from the API server."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        request_timeout: float = 30.0,
        ttl: float = QUARANTINE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._timeout = request_timeout
        self.ttl = ttl
        self._clock = clock
        self._cached: dict[str, _Cached] = {}
        self._epochs: dict[str, int] = {}
        #: Lists from the API server, for tests.
        self.reads = 0
        self._crd_missing = False

    async def entries(self, namespace: str) -> tuple[Named, ...]:
        """Every entry of the namespace's Quarantines (cached; see the module docstring).
        Raises QuarantineReadError when they cannot be listed."""
        cached = self._cached.get(namespace)
        if cached is not None and self._clock() - cached.at < self.ttl:
            return cached.entries
        epoch = self._epochs.get(namespace, 0)
        started = self._clock()
        self.reads += 1
        try:
            body = await _kube.call(
                self._custom.list_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                namespace,
                QUARANTINE_PLURAL,
                timeout=self._timeout,
            )
        except client.ApiException as err:
            if err.status == 404:
                # The Quarantine CRD is not installed (an upgrade that skipped crds/):
                # then no Quarantine can exist. Not cached: the CRD may come any time.
                if not self._crd_missing:
                    log.warning("the Quarantine CRD is not installed: nothing is quarantined")
                self._crd_missing = True
                return ()
            raise QuarantineReadError(
                f"could not list the Quarantines of namespace {namespace}: "
                f"{_kube.api_message(err)}"
            ) from err
        entries = parse_quarantines(namespace, list(body.get("items") or []))
        if self._epochs.get(namespace, 0) == epoch:
            self._cached[namespace] = _Cached(started, entries)
        return entries

    def invalidate(self, namespace: str) -> None:
        """A Quarantine of the namespace changed: list again next time."""
        self._cached.pop(namespace, None)
        self._epochs[namespace] = self._epochs.get(namespace, 0) + 1

    def clear(self) -> None:
        for namespace in list(self._cached):
            self.invalidate(namespace)
