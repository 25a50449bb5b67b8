"""HA: only the active replica runs reconcile loops, by Kopf's peering rule."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from rewind.adapters.quarantine import QuarantineCache
from rewind.controller import ReconcileResult
from rewind.handlers import ReleaseLoops
from rewind.main import main
from rewind.metrics import OperatorMetrics
from rewind.peering import SELF_MARGIN, PeeringGate, PeeringVerdict, peering_verdict
from rewind.policycache import PolicyCache

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
WHERE = "clusterkopfpeering/rewind"


def entry(priority: int, seen_ago: float = 1.0, lifetime: int = 30) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat()}


def peering(**peers: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "rewind"}, "status": peers}


def verdict(body: Mapping[str, Any] | None, me: str = "me", priority: int = 1) -> PeeringVerdict:
    return peering_verdict({WHERE: body}, identity=me, priority=priority, now=NOW)


def test_the_highest_live_priority_is_active() -> None:
    assert verdict(peering(me=entry(1), other=entry(0))).active


def test_a_live_higher_priority_peer_puts_us_on_standby() -> None:
    result = verdict(peering(me=entry(0), other=entry(1)), priority=0)
    assert not result.active
    assert "other" in result.reason


def test_a_dead_higher_priority_peer_does_not_count() -> None:
    assert verdict(peering(me=entry(0), other=entry(1, seen_ago=31)), priority=0).active


def test_same_priority_pauses_everyone_like_kopf() -> None:
    result = verdict(peering(me=entry(1), twin=entry(1)))
    assert not result.active
    assert "own priority" in result.reason


def test_missing_object_or_own_entry_means_standby() -> None:
    assert "not found" in verdict(None).reason
    assert not verdict(None).active
    assert not verdict(peering(other=entry(0))).active


def test_no_peering_object_configured_is_not_a_licence_to_run() -> None:
    assert not peering_verdict({}, identity="me", priority=1, now=NOW).active


def test_we_stand_by_before_the_others_see_us_dead() -> None:
    lifetime = 30
    margin = SELF_MARGIN.total_seconds()
    fresh = verdict(peering(me=entry(1, seen_ago=lifetime - margin - 0.5, lifetime=lifetime)))
    stale = verdict(peering(me=entry(1, seen_ago=lifetime - margin + 0.5, lifetime=lifetime)))
    assert fresh.active
    assert not stale.active
    assert "expire" in stale.reason


def test_every_namespace_must_agree() -> None:
    bodies: dict[str, Mapping[str, Any] | None] = {
        "kopfpeering/rewind in a": peering(me=entry(1)),
        "kopfpeering/rewind in b": peering(me=entry(1), other=entry(5)),
    }
    result = peering_verdict(bodies, identity="me", priority=1, now=NOW)
    assert not result.active
    assert " in b" in result.reason


def test_malformed_entries_fall_back_to_kopf_defaults() -> None:
    # Non-numeric priority counts as 0, a missing lastseen as "seen now" (Kopf does both).
    body = peering(me=entry(1), odd={"priority": "high", "lifetime": "x"}, bare={})
    assert verdict(body).active
    assert not verdict(peering(me=entry(0), bare={}), priority=0).active


# --- the gate and the loops ---------------------------------------------------------------


@dataclass
class FakeController:
    """Counts reconciles; every reconcile asks to run again soon."""

    operator_metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    policies: PolicyCache = field(default_factory=PolicyCache)
    quarantines: QuarantineCache = field(
        default_factory=lambda: QuarantineCache(client.ApiClient())
    )
    reconciles: list[tuple[str, str]] = field(default_factory=list)
    forgotten: list[tuple[str, str]] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    deliveries: None = None  # no notifier targets

    async def reconcile(self, namespace: str, name: str) -> ReconcileResult:
        self.reconciles.append((namespace, name))
        return ReconcileResult(requeue_after=0.01, gone=name in self.gone)

    def forget(self, namespace: str, name: str) -> None:
        self.forgotten.append((namespace, name))


async def until(check: Any, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def active_gauge(controller: FakeController) -> float:
    value = controller.operator_metrics.registry.get_sample_value("rewind_operator_active")
    assert value is not None
    return value


def test_a_standby_remembers_releases_and_runs_them_once_active() -> None:
    async def scenario() -> None:
        controller = FakeController()
        loops = ReleaseLoops(controller, active=False)  # type: ignore[arg-type]
        assert not loops.ensure("ns", "a", "uid-a")
        assert not loops.ensure("ns", "b", "uid-b")
        await asyncio.sleep(0.05)
        assert controller.reconciles == []
        assert loops.running() == []

        await loops.activate()
        assert active_gauge(controller) == 1
        assert loops.running() == [("ns", "a"), ("ns", "b")]
        await until(lambda: {("ns", "a"), ("ns", "b")} <= set(controller.reconciles),
                    "both releases to reconcile")

        await loops.stand_by()
        assert active_gauge(controller) == 0
        assert loops.running() == []
        assert set(controller.forgotten) == {("ns", "a"), ("ns", "b")}
        count = len(controller.reconciles)
        await asyncio.sleep(0.05)
        assert len(controller.reconciles) == count

        await loops.activate()  # the same releases again, without a new watch event
        assert loops.running() == [("ns", "a"), ("ns", "b")]
        await loops.stop_all()

    asyncio.run(scenario())


def test_a_release_deleted_while_on_standby_is_not_resumed() -> None:
    async def scenario() -> None:
        controller = FakeController()
        loops = ReleaseLoops(controller, active=False)  # type: ignore[arg-type]
        loops.ensure("ns", "a", "uid-a")
        await loops.stop("ns", "a", "uid-a")  # its DELETED event
        await loops.activate()
        assert loops.running() == []

    asyncio.run(scenario())


def test_a_release_found_gone_is_dropped_for_good() -> None:
    async def scenario() -> None:
        controller = FakeController(gone={"a"})
        loops = ReleaseLoops(controller)  # type: ignore[arg-type]
        loops.ensure("ns", "a", "uid-a")
        await until(lambda: loops.running() == [], "the loop to end")
        await loops.stand_by()
        await loops.activate()
        assert loops.running() == []

    asyncio.run(scenario())


class ScriptedGate(PeeringGate):
    """The real gate with its reads replaced by a script (the API part is tested on the
    sandbox)."""

    def __init__(self, reads: list[Any], priority: int = 1, **kwargs: Any) -> None:
        super().__init__(client.ApiClient(), name="rewind", namespaces=None, identity="me",
                         priority=priority, **kwargs)
        self.reads = reads

    async def _read(self) -> dict[str, Mapping[str, Any] | None]:
        item = self.reads.pop(0)
        if isinstance(item, Exception):
            raise item
        if item == "hang":  # an API server that never answers
            await asyncio.Event().wait()
        return {WHERE: item}


def test_the_gate_calls_back_on_every_flip_and_only_then() -> None:
    async def scenario() -> None:
        seen: list[bool] = []

        async def on_change(verdict: PeeringVerdict) -> None:
            seen.append(verdict.active)

        mine, theirs = peering(me=entry(1)), peering(me=entry(1), other=entry(2))
        crashed = peering(me=entry(1), other=entry(2, seen_ago=31))
        gate = ScriptedGate([mine, mine, theirs, theirs, crashed], on_change=on_change,
                            now=lambda: NOW)
        for _ in range(5):
            await gate.check()
        assert seen == [True, False, True]

    asyncio.run(scenario())


def test_a_gate_that_cannot_read_stands_by_when_its_entry_expires() -> None:
    async def scenario() -> None:
        seen: list[bool] = []
        clock = [NOW]

        async def on_change(verdict: PeeringVerdict) -> None:
            seen.append(verdict.active)

        gate = ScriptedGate([peering(me=entry(1, seen_ago=0)), OSError("connection refused"),
                             OSError("connection refused")],
                            on_change=on_change, now=lambda: clock[0])
        await gate.check()
        clock[0] = NOW + timedelta(seconds=5)
        await gate.check()  # read fails, the last read still says we are alive
        assert seen == [True]
        clock[0] = NOW + timedelta(seconds=29)
        await gate.check()
        assert seen == [True, False]

    asyncio.run(scenario())


def test_kopf_renews_before_our_margin() -> None:
    """Kopf renews its entry 5-10 s before it expires: a wider margin would make the active
    replica stand by between two renewals."""
    assert timedelta(seconds=5) > SELF_MARGIN


def test_taking_over_from_a_live_lower_replica_waits_for_it_to_stop() -> None:
    async def scenario() -> None:
        seen: list[bool] = []
        clock = [NOW]

        async def on_change(verdict: PeeringVerdict) -> None:
            seen.append(verdict.active)

        body = peering(me=entry(2, seen_ago=0), lower=entry(1, seen_ago=0))
        gate = ScriptedGate([body] * 4, priority=2, on_change=on_change,
                            now=lambda: clock[0], poll_interval=2.0)
        assert gate.handover == timedelta(seconds=5)
        assert not (await gate.check()).active
        clock[0] = NOW + timedelta(seconds=4.9)
        assert not (await gate.check()).active
        assert seen == []
        clock[0] = NOW + timedelta(seconds=5)
        assert (await gate.check()).active
        assert seen == [True]
        clock[0] = NOW + timedelta(seconds=6)
        assert (await gate.check()).active  # already active: no new wait
        assert seen == [True]

    asyncio.run(scenario())


def test_alone_or_after_a_crash_the_takeover_is_immediate() -> None:
    async def scenario() -> None:
        seen: list[bool] = []

        async def on_change(verdict: PeeringVerdict) -> None:
            seen.append(verdict.active)

        crashed = peering(me=entry(1, seen_ago=0), old=entry(2, seen_ago=31))
        gate = ScriptedGate([crashed], on_change=on_change, now=lambda: NOW)
        assert (await gate.check()).active
        assert seen == [True]

    asyncio.run(scenario())


def test_a_hung_read_cannot_keep_an_expiring_replica_active() -> None:
    async def scenario() -> None:
        seen: list[bool] = []
        clock = [NOW]

        async def on_change(verdict: PeeringVerdict) -> None:
            seen.append(verdict.active)

        gate = ScriptedGate([peering(me=entry(1, seen_ago=0)), "hang"],
                            on_change=on_change, now=lambda: clock[0], poll_interval=0.2)
        await gate.check()
        clock[0] = NOW + timedelta(seconds=28)  # lifetime 30: inside the margin
        loop = asyncio.get_running_loop()
        started = loop.time()
        verdict = await gate.check()
        assert loop.time() - started < 1.0  # bounded by the poll interval, not the server
        assert not verdict.active and "expire" in verdict.reason
        assert seen == [True, False]

    asyncio.run(scenario())


def test_a_cleanly_removed_higher_peer_is_given_time_to_stop() -> None:
    """Kopf drops its entry on shutdown before Rewind's loops stop; unlike an expired entry
    (a crash), that replica may still be running for one more poll."""
    async def scenario() -> None:
        seen: list[bool] = []
        clock = [NOW]

        async def on_change(verdict: PeeringVerdict) -> None:
            seen.append(verdict.active)

        before = peering(me=entry(1, seen_ago=0), old=entry(2, seen_ago=0))
        after = peering(me=entry(1, seen_ago=0))
        gate = ScriptedGate([before, after, after, after], on_change=on_change,
                            now=lambda: clock[0], poll_interval=1.0)
        assert gate.handover == timedelta(seconds=3)
        assert not (await gate.check()).active  # "old" leads
        clock[0] = NOW + timedelta(seconds=1)
        held = await gate.check()  # "old" removed itself: wait
        assert not held.active and "taking over" in held.reason
        clock[0] = NOW + timedelta(seconds=3.5)
        assert not (await gate.check()).active
        clock[0] = NOW + timedelta(seconds=4)
        assert (await gate.check()).active
        assert seen == [True]

    asyncio.run(scenario())


def test_a_watched_namespace_that_does_not_exist_is_left_out() -> None:
    """Kopf serves only existing namespaces; requiring a KopfPeering in a deleted one would
    stand every replica by for good."""
    async def scenario() -> None:
        async def on_change(verdict: PeeringVerdict) -> None:
            pass

        class Namespaced(PeeringGate):
            async def _read_namespace(
                self, namespace: str
            ) -> tuple[bool, Mapping[str, Any] | None]:
                if namespace == "deleted":
                    return False, None
                if namespace == "unpeered":
                    return True, None
                return True, peering(me=entry(1, seen_ago=0))

        gate = Namespaced(client.ApiClient(), name="rewind", namespaces=["a", "deleted"],
                          identity="me", priority=1, on_change=on_change, now=lambda: NOW)
        assert (await gate.check()).active
        gate.namespaces = ["a", "unpeered"]
        verdict = await gate.check()
        assert not verdict.active and "unpeered" in verdict.reason

    asyncio.run(scenario())


def test_a_dead_peer_cleaned_up_by_kopf_is_not_mistaken_for_a_clean_shutdown() -> None:
    """Kopf's clean-up deletes a dead peer's entry once it has expired: a crash, so the
    takeover must not wait."""
    async def scenario() -> None:
        clock = [NOW]

        async def on_change(verdict: PeeringVerdict) -> None:
            pass

        before = peering(me=entry(1, seen_ago=0), old=entry(2, seen_ago=25))  # 5 s left
        after = peering(me=entry(1, seen_ago=0))
        gate = ScriptedGate([before, after], on_change=on_change, now=lambda: clock[0])
        assert not (await gate.check()).active
        clock[0] = NOW + timedelta(seconds=6)  # past old's deadline, then cleaned up
        assert (await gate.check()).active

    asyncio.run(scenario())


@pytest.mark.parametrize("namespace", ["team-*", "a,b", "a b", "!kube-system"])
def test_peering_refuses_namespace_patterns_the_gate_cannot_read(namespace: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--peering", "rewind", "--namespace", namespace])
    assert "plain namespace names" in str(caught.value.code)
    assert namespace in str(caught.value.code)


def test_peering_refuses_a_lifetime_kopf_cannot_renew_in_time() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--peering", "rewind", "--peering-lifetime", "5"])
    assert "at least 10 seconds" in str(caught.value.code)
