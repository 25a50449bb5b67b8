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
    OwnershipConflictError,
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


class OwnedBySomeoneElse(RecordingRouter):
    async def set_routes(self, *args: Any) -> None:
        raise OwnershipConflictError("VirtualService fraud exists and is not owned by ...")


def test_a_write_refused_for_ownership_already_reported_as_a_conflict_is_not_repeated() -> None:
    controller = ReleaseController(
        client.ApiClient(), router=cast(Router, OwnedBySomeoneElse()),
        workloads=cast(Workloads, None), metrics=cast(MetricProvider, None),
        notifier=cast(Notifier, None),
    )
    spec = cast(Any, type("Spec", (), {"traffic": TRAFFIC}))
    foreign = RouteProblem("Conflict", "VirtualService shop/fraud exists and is not owned by ...")
    seen = RouteObservation(exists=True, problems=(foreign,))
    asyncio.run(controller._set_routes(WANT, "fraud", "shop", OWNER, spec, seen, False))
    assert controller._refused == {}
    # Not yet seen as a conflict (the object appeared after the read): remembered as refused.
    asyncio.run(controller._set_routes(WANT, "fraud", "shop", OWNER, spec,
                                       RouteObservation(exists=False), False))
    assert list(controller._refused) == [("shop", "fraud")]
