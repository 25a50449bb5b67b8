"""What the controller tells the engine about the annotation removals it sent
(``Inputs.removals_sent``): only removals it sent and got an answer to, since this process
started, for the value still on the object."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from kubernetes import client

from rewind.adapters.base import MetricProvider, Notifier, Router, Workloads
from rewind.controller import ReleaseController

KEY = ("shop", "fraud")
PROMOTE = "rewind.dev/promote"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Answer:
    data = b"{}"


class FakeCustom:
    """patch_namespaced_custom_object answers with ``status`` (None: 200 OK)."""

    def __init__(self, status: int | None = None) -> None:
        self.status = status
        self.patches: list[list[dict[str, Any]]] = []

    def patch_namespaced_custom_object(self, *args: Any, **_: Any) -> Answer:
        self.patches.append(args[-1])
        if self.status is not None:
            raise client.ApiException(status=self.status)
        return Answer()


class NoRoutes:
    def __init__(self) -> None:
        self.forgotten: list[tuple[str, str]] = []

    def forget(self, namespace: str, release: str) -> None:
        self.forgotten.append((namespace, release))


def controller(custom: FakeCustom, clock: list[datetime]) -> ReleaseController:
    c = ReleaseController(
        client.ApiClient(),
        router=cast(Router, NoRoutes()),
        workloads=cast(Workloads, None),
        metrics=cast(MetricProvider, None),
        notifier=cast(Notifier, None),
        clock=lambda: clock[0],
    )
    c._custom = cast(Any, custom)
    return c


def test_a_removal_answered_counts_from_its_first_send_while_the_value_stays() -> None:
    clock = [T0]
    c = controller(FakeCustom(), clock)
    seen = {PROMOTE: "true", PROMOTE + "-by": "alice"}
    assert c._sent_removals(KEY, seen) == {}  # nothing sent yet: a fresh process
    asyncio.run(c._remove_annotation("shop", "fraud", PROMOTE, seen))
    clock[0] = T0 + timedelta(seconds=30)
    asyncio.run(c._remove_annotation("shop", "fraud", PROMOTE, seen))  # put back, again
    assert c._sent_removals(KEY, seen) == {PROMOTE: T0}
    # Seen gone, or set again by someone else: forgotten, a later send starts afresh.
    assert c._sent_removals(KEY, {PROMOTE: "true", PROMOTE + "-by": "bob"}) == {}
    assert c._sent_removals(KEY, seen) == {}


@pytest.mark.parametrize("status", [409, 422])
def test_a_removal_refused_was_sent_too(status: int) -> None:
    c = controller(FakeCustom(status), [T0])
    seen = {PROMOTE: "true"}
    asyncio.run(c._remove_annotation("shop", "fraud", PROMOTE, seen))
    assert c._sent_removals(KEY, seen) == {PROMOTE: T0}


def test_a_restart_remembers_no_removal() -> None:
    c = controller(FakeCustom(), [T0])
    seen = {PROMOTE: "true"}
    asyncio.run(c._remove_annotation("shop", "fraud", PROMOTE, seen))
    assert controller(FakeCustom(), [T0])._sent_removals(KEY, seen) == {}
    c.forget(*KEY)  # the release deleted
    assert c._sent_removals(KEY, seen) == {}
    assert cast(NoRoutes, c.router).forgotten == [KEY]  # what the routers remember, too
