"""When the controller writes routes: only when a write can make them true."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest
from kubernetes import client

from rewind.adapters.base import (
    MetricProvider,
    Notifier,
    OwnerRef,
    RouteObservation,
    RouteProblem,
    Router,
    Workloads,
)
from rewind.api import TrafficSpec
from rewind.controller import ReleaseController
from rewind.engine import SetRoutes

OWNER = OwnerRef(name="fraud", uid="0b7c6a2e-1111-2222-3333-444455556666")
TRAFFIC = TrafficSpec(hosts=["fraud.example.com"])
WANT = SetRoutes({1: 80, 2: 20}, None, 0)
CONFLICT = RouteProblem("Conflict", "VirtualService team-b/catch-all also routes ...")


class RecordingRouter:
    def __init__(self) -> None:
        self.writes: list[dict[int, int]] = []

    async def set_routes(self, release: str, namespace: str, owner: OwnerRef,
                         traffic: TrafficSpec, weights: Mapping[int, int], *_: Any) -> None:
        self.writes.append(dict(weights))


def write(seen: RouteObservation) -> list[dict[int, int]]:
    router = RecordingRouter()
    controller = ReleaseController(
        client.ApiClient(),
        router=cast(Router, router),
        workloads=cast(Workloads, None),
        metrics=cast(MetricProvider, None),
        notifier=cast(Notifier, None),
    )
    spec = cast(Any, type("Spec", (), {"traffic": TRAFFIC}))
    asyncio.run(controller._set_routes(WANT, "fraud", "shop", OWNER, spec, seen, False))
    return router.writes


def test_routes_in_place_are_not_written_again() -> None:
    assert write(RouteObservation(exists=True, weights={1: 80, 2: 20})) == []


def test_another_virtual_service_alone_is_not_repaired_by_writing_ours_again() -> None:
    seen = RouteObservation(exists=True, weights={1: 80, 2: 20}, problems=(CONFLICT,))
    assert write(seen) == []


@pytest.mark.parametrize(
    "seen",
    [
        RouteObservation(exists=True, weights={1: 100}, problems=(CONFLICT,)),  # other weights
        RouteObservation(exists=False, problems=(CONFLICT,)),  # not written yet
        RouteObservation(exists=True, weights={1: 80, 2: 20},
                         problems=(CONFLICT, RouteProblem("Drift", "edited by hand"))),
    ],
)
def test_routes_a_write_can_fix_are_written_even_during_a_conflict(
    seen: RouteObservation,
) -> None:
    assert write(seen) == [{1: 80, 2: 20}]
