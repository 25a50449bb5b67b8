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
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

KOPF_GROUP = "kopf.dev"
KOPF_VERSION = "v1"
#: Kopf's default when a peer does not say how long it lives.
DEFAULT_LIFETIME = 60
#: We stand by this long before the others would consider us dead. Kopf renews its entry
#: 5-10 s before it expires, so the margin must stay under 5 s; a poll (sleep plus a read
#: bounded by the same interval) must fit inside it.
SELF_MARGIN = timedelta(seconds=3)


@dataclass(frozen=True)
class PeeringVerdict:
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
) -> PeeringVerdict:
    """Whether this replica may run reconcile loops, from every peering object it is in.

    `peerings` maps where each object lives (cluster-wide, or a namespace) to its body, or
    None when it does not exist (Kopf stays paused then too)."""
    if not peerings:
        return PeeringVerdict(False, "no peering object to check")
    contended = False
    for where, body in peerings.items():
        if body is None:
            return PeeringVerdict(False, f"peering object {where} not found")
        status = body.get("status") or {}
        peers = [Peer.parse(str(pid), info, now) for pid, info in status.items()
                 if isinstance(info, Mapping)]
        own = next((peer for peer in peers if peer.identity == identity), None)
        if own is None:
            return PeeringVerdict(False, f"own keep-alive not yet in {where}")
        if now >= own.deadline - SELF_MARGIN:
            return PeeringVerdict(False, f"own keep-alive in {where} is about to expire")
        live = [peer for peer in peers if peer.identity != identity and peer.deadline > now]
        higher = sorted(peer.identity for peer in live if peer.priority > priority)
        if higher:
            return PeeringVerdict(
                False, f"standing by for higher priority {', '.join(higher)} in {where}")
        same = sorted(peer.identity for peer in live if peer.priority == priority)
        if same:
            return PeeringVerdict(
                False, f"same priority {priority} as {', '.join(same)} in {where}: "
                       "Kopf pauses them all; give each replica its own priority")
        contended = contended or bool(live)
    return PeeringVerdict(True, "highest priority among live peers", contended)


def other_peers(
    peerings: Mapping[str, Mapping[str, Any] | None], *, identity: str, now: datetime
) -> tuple[set[str], dict[str, datetime]]:
    """(every other peer with an entry, the deadlines of those still live)."""
    present: set[str] = set()
    live: dict[str, datetime] = {}
    for body in peerings.values():
        for pid, info in ((body or {}).get("status") or {}).items():
            if str(pid) == identity or not isinstance(info, Mapping):
                continue
            present.add(str(pid))
            deadline = Peer.parse(str(pid), info, now).deadline
            if deadline > now:
                live[str(pid)] = min(deadline, live.get(str(pid), deadline))
    return present, live


Transition = Callable[[PeeringVerdict], Awaitable[None]]


class PeeringGate:
    """Polls the peering object(s) and switches the loops on and off with the verdict.

    Reads run on the gate's own threads and are bounded by the poll interval, so a slow API
    server or busy reconcile threads cannot keep an expiring replica active: a read that
    fails or times out leaves the last bodies, judged again with the current time.

    Standing by is immediate. Taking over waits `handover` when the previous holder may still
    be running: a live lower-priority replica, or a peer whose entry was just removed (a clean
    shutdown: Kopf drops the entry before Rewind's loops stop). Its own next poll stands it
    down within that time. After a crash the entry expires instead, and nobody is left to
    wait for."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        name: str,
        namespaces: Sequence[str] | None,
        identity: str,
        priority: int,
        on_change: Transition,
        poll_interval: float = 1.0,
        handover: float | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rewind-peering")
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
        self._hold_until: datetime | None = None
        self._last_live: dict[str, datetime] = {}
        self._bodies: dict[str, Mapping[str, Any] | None] = {}
        self.verdict = PeeringVerdict(False, "peering not read yet")

    async def _get(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API read on the gate's threads; 404 is None."""
        call = functools.partial(fn, *args, _preload_content=False,
                                 _request_timeout=self.poll_interval, **kwargs)
        try:
            response = await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(response.data) if response.data else None

    async def _read_namespace(self, namespace: str) -> tuple[bool, Mapping[str, Any] | None]:
        """(whether the namespace exists, its KopfPeering). Kopf serves only namespaces that
        exist, so the gate ignores the others too."""
        body = await self._get(self._custom.get_namespaced_custom_object, KOPF_GROUP,
                               KOPF_VERSION, namespace, "kopfpeerings", self.name)
        if body is not None:
            return True, dict(body)
        found = await self._get(self._core.list_namespace,
                                field_selector=f"metadata.name={namespace}")
        return bool(found and found.get("items")), None

    async def _read(self) -> dict[str, Mapping[str, Any] | None]:
        if self.namespaces is None:
            body = await self._get(self._custom.get_cluster_custom_object, KOPF_GROUP,
                                   KOPF_VERSION, "clusterkopfpeerings", self.name)
            return {f"clusterkopfpeering/{self.name}": body}
        found = await asyncio.gather(*(self._read_namespace(ns) for ns in self.namespaces))
        return {f"kopfpeering/{self.name} in {ns}": body
                for ns, (exists, body) in zip(self.namespaces, found, strict=True) if exists}

    async def check(self) -> PeeringVerdict:
        """One poll: read, judge, and call `on_change` when the verdict flips."""
        try:
            self._bodies = await asyncio.wait_for(self._read(), timeout=self.poll_interval)
            now = self._now()
            present, live = other_peers(self._bodies, identity=self.identity, now=now)
            # Gone before its deadline: removed by its own shutdown. (After the deadline,
            # Kopf's clean-up of a dead peer removes it too: that was a crash.)
            removed = [pid for pid, deadline in self._last_live.items()
                       if pid not in present and deadline > now]
            if removed and not self.verdict.active:
                self._hold_until = now + self.handover
            self._last_live = live
        except Exception as exc:  # judged again with the last bodies: we may have to stop
            log.warning("cannot read the peering %s: %s", self.name, exc or type(exc).__name__)
        now = self._now()
        verdict = peering_verdict(self._bodies, identity=self.identity,
                                  priority=self.priority, now=now)
        if not verdict.active:
            self._eligible_since = None
        elif not self.verdict.active:
            hold_until = self._hold_until
            if verdict.contended:
                self._eligible_since = self._eligible_since or now
                hold_until = max(hold_until or now, self._eligible_since + self.handover)
            if hold_until is not None and now < hold_until:
                wait = (hold_until - now).total_seconds()
                return PeeringVerdict(False, f"taking over in {wait:.1f}s (the previous "
                                             "replica may still be active)")
        if verdict.active != self.verdict.active:
            log.info("peering %s: %s (%s)", self.name,
                     "active" if verdict.active else "standby", verdict.reason)
            self.verdict = verdict
            await self.on_change(verdict)
        self.verdict = verdict
        return verdict

    async def run(self) -> None:
        """Poll forever; a bug in one poll must not leave the loops running unchecked."""
        try:
            while True:
                try:
                    await self.check()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("peering check failed; standing by")
                    if self.verdict.active:
                        self.verdict = PeeringVerdict(False, "peering check failed")
                        with contextlib.suppress(Exception):
                            await self.on_change(self.verdict)
                await asyncio.sleep(self.poll_interval)
        finally:
            self._threads.shutdown(wait=False, cancel_futures=True)
