"""The operator's Kopf wiring: the RolloutPolicy cache and what Kopf is spared per event."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
import pytest
from kubernetes import client

from rewind import handlers
from rewind.adapters.quarantine import QuarantineCache, _Cached
from rewind.api import RolloutPolicySpec
from rewind.handlers import ReleaseLoops, UnusedDiffBase, _QuietSuccess
from rewind.metrics import OperatorMetrics
from rewind.policycache import Loaded, PolicyCache

POLICY = {
    "strategy": {"canary": {"steps": [{"weight": 10, "pause": {"duration": "1m"}}]}},
    "analysis": {"interval": "10s", "metrics": []},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Reads:
    """A fake API server for one policy: answers what it holds now, counts the reads, and can
    hold a read until released (to change the policy while a read is under way)."""

    weight: int | None = 10
    count: int = 0
    gate: asyncio.Event | None = None

    async def __call__(self) -> tuple[Loaded, bool]:
        self.count += 1
        weight = self.weight  # what the API server holds when the request is served
        if self.gate is not None:
            await self.gate.wait()
        if weight is None:
            return (None, "not found"), False
        spec = dict(POLICY, strategy={"canary": {"steps": [
            {"weight": weight, "pause": {"duration": "1m"}}]}})
        return (RolloutPolicySpec.model_validate(spec), None), True


async def settle() -> None:
    """Let every ready task run until it waits on something."""
    for _ in range(10):
        await asyncio.sleep(0)


def weight(loaded: Loaded) -> int | None:
    spec, _ = loaded
    assert spec is not None and spec.strategy.canary is not None
    return spec.strategy.canary.steps[0].weight


def test_a_policy_is_read_once_for_every_release_that_names_it() -> None:
    async def scenario() -> None:
        cache, reads = PolicyCache(clock=Clock()), Reads()
        for _ in range(5):
            assert weight(await cache.load("ns", "p", reads)) == 10
        assert reads.count == 1
        assert cache.reads == 1

    asyncio.run(scenario())


def test_an_event_about_the_policy_makes_the_next_reconcile_read_it_again() -> None:
    async def scenario() -> None:
        cache, reads = PolicyCache(clock=Clock()), Reads()
        await cache.load("ns", "p", reads)
        reads.weight = 20  # edited; the watch tells the cache
        cache.invalidate("ns", "p")
        assert weight(await cache.load("ns", "p", reads)) == 20
        assert reads.count == 2
        # Another policy's event changes nothing for this one.
        cache.invalidate("ns", "other")
        cache.invalidate("other-ns", "p")
        await cache.load("ns", "p", reads)
        assert reads.count == 2

    asyncio.run(scenario())


def test_a_read_under_way_when_the_policy_changed_is_not_kept() -> None:
    """The answer may predate the change: it serves the reconciles that asked before the
    event (as a read just before the edit would), never one after it."""

    async def scenario() -> None:
        gate = asyncio.Event()
        cache, reads = PolicyCache(clock=Clock()), Reads(gate=gate)
        early = asyncio.create_task(cache.load("ns", "p", reads))
        await settle()
        assert reads.count == 1
        reads.weight = 50
        cache.invalidate("ns", "p")  # the edit's event arrives while the read is served
        gate.set()
        assert weight(await early) == 10  # served by the API server before the edit
        reads.gate = None
        assert weight(await cache.load("ns", "p", reads)) == 50
        assert reads.count == 2

    asyncio.run(scenario())


def test_concurrent_misses_share_one_read_and_a_cancelled_waiter_cancels_nobody() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        cache, reads = PolicyCache(clock=Clock()), Reads(gate=gate)
        waiters = [asyncio.create_task(cache.load("ns", "p", reads)) for _ in range(50)]
        await settle()
        waiters[0].cancel()  # a release deleted (its loop stopped) mid-read
        await settle()
        gate.set()
        results = await asyncio.gather(*waiters[1:])
        assert {weight(r) for r in results} == {10}
        assert reads.count == 1

    asyncio.run(scenario())


def test_an_entry_expires_after_the_ttl_should_the_watch_stall() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache, reads = PolicyCache(ttl=30.0, clock=clock), Reads()
        await cache.load("ns", "p", reads)
        clock.now += 29.0
        await cache.load("ns", "p", reads)
        assert reads.count == 1
        reads.weight = 30  # changed, and no event came
        clock.now += 1.0
        assert weight(await cache.load("ns", "p", reads)) == 30
        assert reads.count == 2

    asyncio.run(scenario())


def test_a_missing_policy_is_read_every_time_and_clear_forgets_everything() -> None:
    async def scenario() -> None:
        cache, reads = PolicyCache(clock=Clock()), Reads(weight=None)
        for _ in range(3):
            assert await cache.load("ns", "p", reads) == (None, "not found")
        assert reads.count == 3
        reads.weight = 10
        await cache.load("ns", "p", reads)
        await cache.load("ns", "p", reads)
        assert reads.count == 4
        cache.clear()
        await cache.load("ns", "p", reads)
        assert reads.count == 5

    asyncio.run(scenario())


def test_a_failed_read_is_the_callers_error_and_is_not_kept() -> None:
    async def scenario() -> None:
        cache = PolicyCache(clock=Clock())

        async def broken() -> tuple[Loaded, bool]:
            raise RuntimeError("API server unreachable")

        with pytest.raises(RuntimeError):
            await cache.load("ns", "p", broken)
        reads = Reads()
        assert weight(await cache.load("ns", "p", reads)) == 10
        assert reads.count == 1

    asyncio.run(scenario())


@dataclass
class FakeController:
    policies: PolicyCache = field(default_factory=lambda: PolicyCache(clock=Clock()))
    quarantines: QuarantineCache = field(
        default_factory=lambda: QuarantineCache(client.ApiClient(), clock=Clock())
    )
    operator_metrics: OperatorMetrics = field(default_factory=OperatorMetrics)

    def forget(self, namespace: str, name: str) -> None:
        pass


def test_the_policy_watch_drops_the_cached_policy_before_it_wakes_the_releases() -> None:
    async def scenario() -> None:
        controller = FakeController()
        loops = ReleaseLoops(controller, active=False)  # type: ignore[arg-type]
        reads = Reads()
        await controller.policies.load("ns", "p", reads)
        woken: list[tuple[str, int]] = []

        def poke_namespace(namespace: str) -> None:
            # What a woken release would read at that moment.
            woken.append((namespace, reads.count))

        loops.poke_namespace = poke_namespace  # type: ignore[method-assign]
        memo = kopf.Memo(controller=controller, loops=loops)
        event: Any = {"type": "MODIFIED", "object": {
            "metadata": {"name": "p", "generation": 2}, "spec": POLICY,
            "status": {"observedGeneration": 2}}}
        reads.weight = 40
        policy_event: Any = handlers.policy_event  # Kopf types it as its handler protocol
        await policy_event(event=event, name="p", namespace="ns", memo=memo)
        assert woken == [("ns", 1)]
        assert weight(await controller.policies.load("ns", "p", reads)) == 40
        assert reads.count == 2

    asyncio.run(scenario())


def test_the_quarantine_watch_drops_the_namespaces_entries_before_it_wakes_the_releases() -> (
    None
):
    async def scenario() -> None:
        controller = FakeController()
        loops = ReleaseLoops(controller, active=False)  # type: ignore[arg-type]
        cache = controller.quarantines
        cache._cached["ns"] = _Cached(at=0.0, entries=())  # listed before the change
        woken: list[tuple[str, bool]] = []

        def poke_namespace(namespace: str) -> None:
            woken.append((namespace, namespace in cache._cached))

        loops.poke_namespace = poke_namespace  # type: ignore[method-assign]
        memo = kopf.Memo(controller=controller, loops=loops)
        event: Any = {"type": "ADDED", "object": {"metadata": {"name": "q", "namespace": "ns"}}}
        quarantine_event: Any = handlers.quarantine_event
        await quarantine_event(event=event, namespace="ns", memo=memo)
        assert woken == [("ns", False)]  # the releases woken list the Quarantines afresh

    asyncio.run(scenario())


def test_a_replica_standing_by_or_becoming_active_starts_with_no_cached_policy() -> None:
    async def scenario() -> None:
        controller = FakeController()
        loops = ReleaseLoops(controller, active=True)  # type: ignore[arg-type]
        reads = Reads()
        await controller.policies.load("ns", "p", reads)
        await loops.stand_by()
        await controller.policies.load("ns", "p", reads)
        assert reads.count == 2
        await loops.activate()
        await controller.policies.load("ns", "p", reads)
        assert reads.count == 3
        await loops.stop_all()

    asyncio.run(scenario())


def test_no_change_handler_is_registered_so_the_diff_base_is_never_needed() -> None:
    """UnusedDiffBase skips Kopf's per-event deep copy, which only change handlers
    (on.create, on.update, on.resume, on.delete, on.field) read: adding one would need it."""
    registry = kopf.get_default_registry()
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []  # daemons and timers diff too
    assert {h.id for h in registry._watching.get_all_handlers()} == {
        "release_event", "revision_event", "template_event", "policy_event", "route_event",
        "http_route_event", "quarantine_event"}
    storage = UnusedDiffBase(prefix="rewind.dev", key="last-handled-configuration")
    body = kopf.Body({"metadata": {"name": "x"}, "spec": {"a": 1}, "status": {"b": 2}})
    assert storage.build(body=body) == {}


def test_kopf_success_lines_are_dropped_and_failures_kept() -> None:
    quiet = _QuietSuccess()

    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, msg, None, None)

    assert not quiet.filter(record(logging.INFO, "Handler 'release_event' succeeded."))
    assert quiet.filter(record(logging.ERROR, "Handler 'release_event' failed with an "
                               "exception and will try again in 60 seconds: boom"))
    assert quiet.filter(record(logging.INFO, "Activity 'startup' succeeded."))
