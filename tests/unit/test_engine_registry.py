"""Model registry sync (issue 13, item 3): the MLflow alias follows the routes.

``spec.model.registry`` names the MLflow model version a revision is. The alias (default
``production``) is moved to the version of the revision the routes in effect serve: on
promotion, and back on rollback, once the routes are read back; never before. Each move is
read back, recorded in the timeline and tagged on the version (the adapter writes the tag:
here the fake records what it was asked). MLflow being down changes nothing else: the
rollback's route writes and timing are those of a release without a registry, and the
RegistrySynced condition says out of sync until MLflow answers again.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rewind.api import ModelReleaseSpec, Phase, RegistrySpec
from rewind.engine import SetRoutes, SyncRegistryAlias, decide
from tests.unit.test_engine_kit import (
    FAIL,
    FakeRegistry,
    World,
    actions_of,
    at_step,
    make_policy,
    make_spec,
)

DOWN = "ClientConnectorError: Cannot connect to host 127.0.0.1:5000"


def registered(version: str, mlflow: str | None = None, **registry: Any) -> ModelReleaseSpec:
    """make_spec(f"{version}.0.0") as MLflow model version ``mlflow`` (default ``version``)."""
    spec = make_spec(f"{version}.0.0")
    entry = RegistrySpec.model_validate(
        {"trackingURI": "http://mlflow.test:5000", "name": "fraud-detector",
         "version": mlflow or version} | registry
    )
    return spec.model_copy(update={"model": spec.model.model_copy(update={"registry": entry})})


def world(**kwargs: Any) -> World:
    """r1 (MLflow version 1) promoted; the alias read and moved by the fake."""
    w = World(make_policy(), spec=registered("1"), registry=FakeRegistry(), **kwargs)
    w.step()
    w.settle()
    w.step()  # the move is read back: recorded
    assert w.status.phase == Phase.PROMOTED
    return w


def synced(w: World) -> tuple[str, str]:
    status, reason, _ = w.condition("RegistrySynced")
    return status, reason


def moves(w: World) -> list[str]:
    return [e.message for e in w.status.timeline if e.type == "RegistryAliasMoved"]


def test_the_first_promotion_moves_the_alias_once_it_serves() -> None:
    w = world()
    assert w.registry is not None and w.registry.alias == "1"
    assert w.registry.tags == [("1", "r1 promoted")]
    assert synced(w) == ("True", "InSync")
    assert moves(w) == [
        "alias production of MLflow model fraud-detector moved from version (unset) to 1 "
        "(r1 promoted); version 1 tagged rewind.dev/alias-production-moved"
    ]
    assert w.status.registry is not None and w.status.registry.version == "1"
    assert w.status.history[0].registry is not None
    assert w.status.history[0].registry.version == "1"


def test_the_alias_stays_on_the_stable_during_a_rollout_and_moves_on_promotion() -> None:
    w = world()
    assert w.registry is not None
    w.release(registered("2"))
    at_step(w, 2)  # r2 at 50%: the stable still serves most users
    assert w.registry.alias == "1" and synced(w) == ("True", "InSync")
    w.settle()
    assert w.phase() == Phase.PROMOTED
    w.step()
    assert w.registry.alias == "2"
    assert w.registry.tags[-1] == ("2", "r2 promoted")
    assert moves(w)[-1].startswith(
        "alias production of MLflow model fraud-detector moved from version 1 to 2"
    )
    promoted = max(i for i, e in enumerate(w.status.timeline) if e.type == "Promoted")
    moved = max(i for i, e in enumerate(w.status.timeline) if e.type == "RegistryAliasMoved")
    assert promoted < moved
    assert synced(w) == ("True", "InSync")


def test_a_rollback_moves_the_alias_back_once_its_routes_are_in_effect() -> None:
    w = world()
    assert w.registry is not None
    w.release(registered("2"))
    w.settle()
    w.step()
    assert w.registry.alias == "2"
    w.annotate("rollback", "label flips")
    w.step()
    w.settle()
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    w.step()
    assert w.registry.alias == "1"
    assert w.registry.tags[-1] == ("1", "rolled back to r1")
    assert "moved from version 2 to 1 (rolled back to r1)" in moves(w)[-1]
    assert synced(w) == ("True", "InSync")


def test_no_move_while_the_rollback_target_is_cold() -> None:
    """RollingBack to a target that is not Available yet: users stay on r2, so does the
    alias; it moves once r1 serves."""
    w = World(make_policy(keep_previous_warm="1s", scale_down_delay="1s"), spec=registered("1"),
              registry=FakeRegistry())
    w.step()
    w.settle()
    w.step()
    assert w.registry is not None
    w.release(registered("2"))
    w.settle()
    w.run(60)  # r1 retired and scaled to zero
    assert w.replicas(1) == 0 and w.registry.alias == "2"
    w.ready_after = 60.0
    w.annotate("rollback", "label flips")
    w.step()
    assert w.phase() == Phase.ROLLING_BACK and w.weights() == {2: 100}
    w.step(10)
    assert w.registry.alias == "2"
    assert synced(w) == ("False", "Waiting")
    w.settle()
    w.step()
    assert w.registry.alias == "1" and w.phase() == Phase.ROLLED_BACK


def _rollback_run(registry: FakeRegistry | None) -> tuple[list[Any], list[Any], World]:
    """r2 fails its analysis at 10%: what the routes do, step by step."""
    w = World(make_policy(), spec=registered("1"), registry=registry)
    w.step()
    w.settle()
    w.step()
    if registry is not None:
        registry.down = DOWN  # MLflow goes down before the bad release
    w.release(registered("2"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    routes, phases = [], []
    for _ in range(12):
        d = w.step(10)
        routes.append([a for a in actions_of(d, SetRoutes)])
        phases.append(w.phase())
    return routes, phases, w


def test_mlflow_down_never_blocks_nor_delays_a_rollback() -> None:
    with_mlflow = _rollback_run(FakeRegistry())
    without = _rollback_run(None)
    assert with_mlflow[0] == without[0]  # the same route writes, in the same reconciles
    assert with_mlflow[1] == without[1]
    w = with_mlflow[2]
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert w.registry is not None and w.registry.alias == "1"  # never moved to 2
    status, reason, message = w.condition("RegistrySynced")
    assert (status, reason) == ("False", "RegistryError")
    assert DOWN in message and "retrying" in message
    assert w.status.registry is not None and w.status.registry.error == DOWN
    # The alias stayed on 1 throughout: nothing to move back once MLflow answers.
    w.registry.down = ""
    w.step(10)
    w.step()
    assert synced(w) == ("True", "InSync") and w.registry.alias == "1"


def test_mlflow_back_after_a_rollback_moves_the_alias_then() -> None:
    w = world()
    assert w.registry is not None
    w.release(registered("2"))
    w.settle()
    w.step()
    w.registry.down = DOWN
    w.annotate("rollback", "label flips")
    w.step()
    w.settle()
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert w.registry.alias == "2"
    assert synced(w) == ("False", "RegistryError")
    w.registry.down = ""
    w.step(10)
    w.step()
    assert w.registry.alias == "1" and synced(w) == ("True", "InSync")
    assert "moved from version 2 to 1 (rolled back to r1)" in moves(w)[-1]


def test_a_tag_that_could_not_be_written_is_said_so() -> None:
    w = world()
    assert w.registry is not None
    w.registry.tag_down = "HTTP 503"
    w.release(registered("2"))
    w.settle()
    w.step()
    assert w.registry.alias == "2" and w.registry.tags == [("1", "r1 promoted")]
    assert moves(w)[-1].endswith(
        "(r2 promoted); tagging version 2 rewind.dev/alias-production-moved failed "
        "(HTTP 503): retried"
    )
    assert synced(w) == ("False", "RegistryError")


def test_a_move_by_hand_is_moved_back() -> None:
    w = world()
    assert w.registry is not None
    w.registry.alias = "7"
    w.registry.observation = None  # read afresh (the adapter reads every minute)
    w.step(60)
    w.step()
    assert w.registry.alias == "1" and synced(w) == ("True", "InSync")


def test_a_revision_released_without_a_registry_version_leaves_the_alias() -> None:
    mlflow = FakeRegistry(alias="5")
    w = World(make_policy(), spec=make_spec("1.0.0"), registry=mlflow)
    w.step()
    w.settle()
    assert w.status.registry is None and actions_of(w.decisions[-1], SyncRegistryAlias) == []
    # The registry is configured with r2: r1 names no version; the alias stays meanwhile.
    w.release(registered("2"))
    w.step()
    assert synced(w) == ("False", "NoVersion") and mlflow.alias == "5"
    w.settle()
    w.step()
    assert mlflow.alias == "2" and synced(w) == ("True", "InSync")


def test_a_restart_keeps_the_stored_condition_until_the_alias_is_read() -> None:
    w = world()
    assert w.registry is not None
    w.registry.observation = None  # a new operator process: nothing read yet
    d = decide(w.inputs())
    assert d.status.conditions == w.status.conditions
    assert actions_of(d, SyncRegistryAlias) == [SyncRegistryAlias(
        "http://mlflow.test:5000", "fraud-detector", "production", "1", 1, "r1 promoted",
    )]


def test_removing_the_registry_drops_its_status_and_condition() -> None:
    w = world()
    w.release(make_spec("2.0.0"))
    assert w.status.registry is None
    assert all(c.type != "RegistrySynced" for c in w.status.conditions)


@pytest.mark.parametrize("alias", ["latest", "LATEST", "v1", "V12"])
def test_aliases_mlflow_reserves_are_refused(alias: str) -> None:
    with pytest.raises(ValidationError, match="reserved by MLflow"):
        RegistrySpec.model_validate({"name": "m", "version": "1", "alias": alias})


def test_a_version_is_a_number() -> None:
    with pytest.raises(ValidationError):
        RegistrySpec.model_validate({"name": "m", "version": "v1"})
    assert RegistrySpec.model_validate({"name": "m", "version": "12"}).alias == "production"
