"""Follow Kopf peering with Rewind's own reconcile loops.

Kopf peering pauses Kopf's handlers in every replica but the one with the highest priority.
Rewind's reconcile loops are plain asyncio tasks, not Kopf daemons, so Kopf cannot pause
them: without this gate a standby replica would keep rolling releases out beside the active
one. The gate reads the same peering object(s) Kopf keeps alive and applies Kopf's rule:
a replica is active only while no other live peer has the same or a higher priority.

It is stricter than Kopf in one way. A replica also stands by once its own keep-alive entry
is missing or about to expire (`SELF_MARGIN` before the deadline the other replicas see),
so an active replica that lost the API server stops before a standby takes over, not after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from rewind.adapters import _kube

log = logging.getLogger(__name__)

KOPF_GROUP = "kopf.dev"
KOPF_VERSION = "v1"
#: Kopf's default when a peer does not say how long it lives.
DEFAULT_LIFETIME = 60
#: We stand by this long before the others would consider us dead. Kopf renews its entry
#: 5-10 s before it expires, so the margin must stay well under 5 s.
SELF_MARGIN = timedelta(seconds=2)


@dataclass(frozen=True)
class Verdict:
    active: bool
    reason: str
    #: Live lower-priority peers exist: they may still be active until their next poll.
    contended: bool = False


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Peer:
    identity: str
    priority: int
    lastseen: datetime
    lifetime: timedelta

    @property
    def deadline(self) -> datetime:
        return self.lastseen + self.lifetime

    @classmethod
    def parse(cls, identity: str, info: Mapping[str, Any], now: datetime) -> Peer:
        """Like Kopf: a peer without `lastseen` counts as seen now, one without `lifetime`
        lives 60 s."""
        try:
            priority = int(info.get("priority", 0))
        except (TypeError, ValueError):
            priority = 0
        try:
            lifetime = int(info.get("lifetime", DEFAULT_LIFETIME))
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        lastseen = _parse_time(info.get("lastseen")) or now
        return cls(identity, priority, lastseen, timedelta(seconds=lifetime))


def peering_verdict(
    peerings: Mapping[str, Mapping[str, Any] | None],
    *,
    identity: str,
    priority: int,
    now: datetime,
) -> Verdict:
    """Whether this replica may run reconcile loops, from every peering object it is in.

    `peerings` maps where each object lives (cluster-wide, or a namespace) to its body, or
    None when it does not exist (Kopf stays paused then too)."""
    if not peerings:
        return Verdict(False, "no peering object to check")
    contended = False
    for where, body in peerings.items():
        if body is None:
            return Verdict(False, f"peering object {where} not found")
        status = body.get("status") or {}
        peers = [Peer.parse(str(pid), info, now) for pid, info in status.items()
                 if isinstance(info, Mapping)]
        own = next((peer for peer in peers if peer.identity == identity), None)
        if own is None:
            return Verdict(False, f"own keep-alive not yet in {where}")
        if now >= own.deadline - SELF_MARGIN:
            return Verdict(False, f"own keep-alive in {where} is about to expire")
        live = [peer for peer in peers if peer.identity != identity and peer.deadline > now]
        higher = sorted(peer.identity for peer in live if peer.priority > priority)
        if higher:
            return Verdict(False, f"standing by for higher priority {', '.join(higher)} "
                                  f"in {where}")
        same = sorted(peer.identity for peer in live if peer.priority == priority)
        if same:
            return Verdict(False, f"same priority {priority} as {', '.join(same)} in {where}: "
                                  "Kopf pauses them all; give each replica its own priority")
        contended = contended or bool(live)
    return Verdict(True, "highest priority among live peers", contended)


Transition = Callable[[Verdict], Awaitable[None]]


class PeeringGate:
    """Polls the peering object(s) and switches the loops on and off with the verdict.

    A read that fails leaves the last verdict standing until our own entry would expire,
    which the verdict already accounts for: the last bodies read are re-judged with the
    current time.

    Standing by is immediate; taking over from a live lower-priority replica waits
    `handover` seconds of unchanged verdicts, so that replica polls and stops first. After a
    crash there is nobody to wait for (its entry has expired), so the takeover is
    immediate."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        name: str,
        namespaces: Sequence[str] | None,
        identity: str,
        priority: int,
        on_change: Transition,
        poll_interval: float = 2.0,
        handover: float | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self.name = name
        self.namespaces = list(namespaces) if namespaces else None
        self.identity = identity
        self.priority = priority
        self.on_change = on_change
        self.poll_interval = poll_interval
        self.handover = timedelta(seconds=2 * poll_interval + 1 if handover is None
                                  else handover)
        self._now = now
        self._eligible_since: datetime | None = None
        self._bodies: dict[str, Mapping[str, Any] | None] = {}
        self.verdict = Verdict(False, "peering not read yet")

    async def _read(self) -> dict[str, Mapping[str, Any] | None]:
        if self.namespaces is None:
            body = await _kube.get_or_none(
                self._custom.get_cluster_custom_object, KOPF_GROUP, KOPF_VERSION,
                "clusterkopfpeerings", self.name, timeout=10.0)
            return {f"clusterkopfpeering/{self.name}": body}
        bodies: dict[str, Mapping[str, Any] | None] = {}
        for namespace in self.namespaces:
            bodies[f"kopfpeering/{self.name} in {namespace}"] = await _kube.get_or_none(
                self._custom.get_namespaced_custom_object, KOPF_GROUP, KOPF_VERSION,
                namespace, "kopfpeerings", self.name, timeout=10.0)
        return bodies

    async def check(self) -> Verdict:
        """One poll: read, judge, and call `on_change` when the verdict flips."""
        try:
            self._bodies = await self._read()
        except Exception as exc:  # judged again with the last bodies: we may have to stop
            log.warning("cannot read the peering %s: %s", self.name, exc)
        now = self._now()
        verdict = peering_verdict(self._bodies, identity=self.identity,
                                  priority=self.priority, now=now)
        if not verdict.active:
            self._eligible_since = None
        elif not self.verdict.active and verdict.contended:
            self._eligible_since = self._eligible_since or now
            if now - self._eligible_since < self.handover:
                return Verdict(False, f"taking over after {self.handover.total_seconds():g}s"
                                      " (a lower-priority replica may still be active)")
        if verdict.active != self.verdict.active:
            log.info("peering %s: %s (%s)", self.name,
                     "active" if verdict.active else "standby", verdict.reason)
            self.verdict = verdict
            await self.on_change(verdict)
        self.verdict = verdict
        return verdict

    async def run(self) -> None:
        """Poll forever; a bug in one poll must not leave the loops running unchecked."""
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("peering check failed; standing by")
                if self.verdict.active:
                    self.verdict = Verdict(False, "peering check failed")
                    with contextlib.suppress(Exception):
                        await self.on_change(self.verdict)
            await asyncio.sleep(self.poll_interval)
