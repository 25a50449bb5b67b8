"""Argo CD health check and resource actions for ModelRelease (charts/rewind/argocd/*.lua).

The Lua runs under Lua 5.1 (lupa), the dialect of Argo CD's gopher-lua, against
ModelRelease objects built with the pydantic models. The release states come from the real
decision engine (driven by the engine test kit), and for every state the actions Argo CD
offers are exactly those the engine would act on rather than ignore.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from lupa import lua51

from rewind.api import (
    ANNOTATION_APPROVE_ROLLBACK,
    ANNOTATION_PROMOTE,
    ANNOTATION_REJECT_ROLLBACK,
    ANNOTATION_RETRY,
    ANNOTATION_ROLLBACK,
    Condition,
    ConditionStatus,
    ModelRelease,
    ModelReleaseStatus,
    ObjectMeta,
    Phase,
)
from rewind.engine import ANNOTATION_OF, ActionKind, EmitEvent
from tests.unit.test_engine_kit import (
    BLUE_GREEN_MANUAL,
    CANARY_MANUAL,
    FAIL,
    NAME,
    NAMESPACE,
    World,
    at_step,
    make_policy,
    make_spec,
    promoted_world,
)

ARGOCD = Path(__file__).resolve().parents[2] / "charts" / "rewind" / "argocd"
ACTIONS = {
    "approve-rollback": (ANNOTATION_APPROVE_ROLLBACK, "true"),
    "reject-rollback": (ANNOTATION_REJECT_ROLLBACK, "rejected in Argo CD"),
    "rollback": (ANNOTATION_ROLLBACK, "break glass from Argo CD"),
    "promote": (ANNOTATION_PROMOTE, "true"),
    "retry": (ANNOTATION_RETRY, "true"),
}
#: Argo CD health per phase, when the operator is up to date with the spec.
HEALTH = {
    Phase.PENDING: "Progressing",
    Phase.PROGRESSING: "Progressing",
    Phase.ROLLING_BACK: "Progressing",
    Phase.PAUSED: "Suspended",
    Phase.AWAITING_APPROVAL: "Suspended",
    Phase.PROMOTED: "Healthy",
    Phase.ROLLED_BACK: "Degraded",
    Phase.FAILED: "Degraded",
}


# --------------------------------------------------------------------------------------
# Running Argo CD Lua
# --------------------------------------------------------------------------------------


def to_lua(lua: Any, value: Any) -> Any:
    """JSON-like Python -> Lua, as Argo CD hands objects over (null fields are absent)."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[key] = to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, 1):
            table[index] = to_lua(lua, item)
        return table
    return value


def from_lua(value: Any) -> Any:
    if lua51.lua_type(value) != "table":
        return value
    items = dict(value.items())
    if items and all(isinstance(k, int) for k in items) and set(items) == set(
        range(1, len(items) + 1)
    ):
        return [from_lua(items[i]) for i in range(1, len(items) + 1)]
    return {k: from_lua(v) for k, v in items.items()}


def run_lua(script: str, obj: dict[str, Any]) -> Any:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = to_lua(lua, obj)
    return from_lua(lua.execute(script))


def lua_file(name: str) -> str:
    return (ARGOCD / name).read_text()


def health(obj: dict[str, Any]) -> dict[str, str]:
    result: dict[str, str] = run_lua(lua_file("health.lua"), obj)
    return result


def offered(obj: dict[str, Any]) -> set[str]:
    return set(run_lua(lua_file("discovery.lua"), obj) or {})


def act(name: str, obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run_lua(lua_file(f"actions/{name}.lua"), obj)
    return result


# --------------------------------------------------------------------------------------
# ModelRelease objects
# --------------------------------------------------------------------------------------


def manifest(
    status: ModelReleaseStatus | None,
    *,
    generation: int = 1,
    annotations: dict[str, str] | None = None,
    world: World | None = None,
) -> dict[str, Any]:
    """A ModelRelease as the API server would return it (pydantic-validated)."""
    release = ModelRelease(
        metadata=ObjectMeta(name=NAME, namespace=NAMESPACE, uid="u-1", generation=generation,
                            annotations=annotations or {}),
        spec=world.spec if world is not None else make_spec(),
        status=status if status is not None else ModelReleaseStatus(),
    )
    obj = release.model_dump(mode="json", by_alias=True, exclude_none=True)
    if status is None:
        del obj["status"]
    return obj


def from_world(w: World) -> dict[str, Any]:
    return manifest(w.status, generation=w.generation, world=w)


def engine_acts_on(w: World, kind: ActionKind) -> bool:
    """Whether the engine acts on the annotation now.

    Acting is recorded in status.timeline under the user's name; an ignored action is
    recorded as ActionIgnored, and one the engine cannot consider yet (no usable policy)
    is left on the object without any record.
    """
    trial = copy.deepcopy(w)
    assert not any(e.user == "argocd" for e in trial.status.timeline)
    decision = trial.act(kind, value=ACTIONS[kind][1], user="argocd")
    entries = [e.type for e in decision.status.timeline if e.user == "argocd"]
    ignored = any(
        isinstance(a, EmitEvent) and a.reason == "ActionIgnored" for a in decision.actions
    )
    return bool(entries) and "ActionIgnored" not in entries and not ignored


# --------------------------------------------------------------------------------------
# Release states reached through the real engine
# --------------------------------------------------------------------------------------


def _pending() -> World:
    w = World(None, policy_error="RolloutPolicy 'p' not found")
    w.step()
    return w


def _first_release_in_progress() -> World:
    w = World(make_policy(), ready_after=30)
    w.step()
    return w


def _canary_in_progress() -> World:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    return w


def _paused(strategy: dict[str, Any]) -> Callable[[], World]:
    def build() -> World:
        w = promoted_world(make_policy(strategy))
        w.release(make_spec("2.0.0"))
        w.run_until(lambda x: x.status.phase == Phase.PAUSED)
        return w

    return build


def _awaiting_approval() -> World:
    w = promoted_world(make_policy(approval={"requiredApprovers": 2, "timeout": "15m"}))
    w.verdicts = lambda _rev, _now: FAIL
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.status.phase == Phase.AWAITING_APPROVAL)
    return w


def _promoted_once() -> World:
    return promoted_world()


def _promoted_twice() -> World:
    return promoted_world(releases=2)


def _rolling_back() -> World:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=30)
    w.run(120)  # r1 is scaled to zero: a rollback to it has to wait for it
    w.act("rollback", value="drift", user="oncall")
    assert w.status.phase == Phase.ROLLING_BACK
    return w


def _rolled_back() -> World:
    w = promoted_world()
    w.verdicts = lambda _rev, _now: FAIL
    w.release(make_spec("2.0.0"))
    w.settle()
    return w


def _failed_first_release() -> World:
    w = World(make_policy())
    w.broken = {1}
    w.step()
    w.settle()
    return w


#: state -> (builder, phase it must be in, the actions Argo CD offers there)
STATES: dict[str, tuple[Callable[[], World], Phase, set[str]]] = {
    "pending-without-policy": (_pending, Phase.PENDING, set()),
    "first-release-in-progress": (_first_release_in_progress, Phase.PROGRESSING, {"rollback"}),
    "canary-in-progress": (_canary_in_progress, Phase.PROGRESSING, {"rollback"}),
    "canary-manual-gate": (_paused(CANARY_MANUAL), Phase.PAUSED, {"promote", "rollback"}),
    "blue-green-manual-switch": (_paused(BLUE_GREEN_MANUAL), Phase.PAUSED,
                                 {"promote", "rollback"}),
    "awaiting-approval": (_awaiting_approval, Phase.AWAITING_APPROVAL,
                          {"approve-rollback", "reject-rollback", "rollback"}),
    "promoted-first-release": (_promoted_once, Phase.PROMOTED, set()),
    "promoted-with-previous": (_promoted_twice, Phase.PROMOTED, {"rollback"}),
    "rolling-back": (_rolling_back, Phase.ROLLING_BACK, set()),
    "rolled-back": (_rolled_back, Phase.ROLLED_BACK, {"retry"}),
    "failed-first-release": (_failed_first_release, Phase.FAILED, {"retry"}),
}


def test_states_cover_every_phase_and_every_action() -> None:
    assert {phase for _, phase, _ in STATES.values()} == set(Phase)
    assert set(HEALTH) == set(Phase)
    assert {kind: key for kind, (key, _) in ACTIONS.items()} == dict(ANNOTATION_OF)


@pytest.fixture(params=list(STATES), scope="module")
def state(request: pytest.FixtureRequest) -> tuple[World, Phase, set[str]]:
    build, phase, actions = STATES[request.param]
    w = build()
    assert w.status.phase == phase, w.status.message
    return w, phase, actions


def test_health_of_each_engine_state(state: tuple[World, Phase, set[str]]) -> None:
    w, phase, _ = state
    obj = from_world(w)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    hs = health(obj)
    assert hs == {"status": HEALTH[phase], "message": w.status.message}


def test_discovery_offers_what_the_engine_acts_on(state: tuple[World, Phase, set[str]]) -> None:
    w, _, expected = state
    got = offered(from_world(w))
    assert got == expected
    acting = {kind for kind in get_args(ActionKind) if engine_acts_on(w, kind)}
    assert got == acting, f"Argo CD offers {sorted(got)}, the engine acts on {sorted(acting)}"


def test_discovered_actions_are_displayable() -> None:
    w = _awaiting_approval()
    actions = run_lua(lua_file("discovery.lua"), from_world(w))
    for name, entry in actions.items():
        assert entry["displayName"] and entry["iconClass"].startswith("fa "), name


# --------------------------------------------------------------------------------------
# Health edge cases (hand-built statuses)
# --------------------------------------------------------------------------------------


def _status(phase: Phase, message: str = "m", ready: bool | None = None,
            observed: int = 1) -> ModelReleaseStatus:
    conditions = []
    if ready is not None:
        conditions.append(Condition(type="Ready",
                                    status=ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
                                    reason=phase.value, observed_generation=observed))
    return ModelReleaseStatus(observed_generation=observed, phase=phase, message=message,
                              conditions=conditions)


@pytest.mark.parametrize("phase", list(Phase), ids=[p.value for p in Phase])
def test_every_phase_maps_to_its_health(phase: Phase) -> None:
    hs = health(manifest(_status(phase, "what happens", ready=phase == Phase.PROMOTED)))
    assert hs == {"status": HEALTH[phase], "message": "what happens"}


@pytest.mark.parametrize("phase", list(Phase), ids=[p.value for p in Phase])
def test_a_spec_the_operator_has_not_seen_is_progressing(phase: Phase) -> None:
    obj = manifest(_status(phase, ready=phase == Phase.PROMOTED, observed=4), generation=5)
    hs = health(obj)
    assert hs["status"] == "Progressing"
    assert hs["message"] == (
        "Waiting for the Rewind operator to act on generation 5 (last acted on 4)"
    )


def test_no_status_yet_is_progressing() -> None:
    assert health(manifest(None))["status"] == "Progressing"


def test_promoted_without_ready_true_is_not_healthy() -> None:
    for ready in (False, None):
        hs = health(manifest(_status(Phase.PROMOTED, "r1 promoted", ready=ready)))
        assert hs["status"] == "Progressing", ready
        assert hs["message"].endswith("r1 promoted")


def test_empty_message_falls_back_to_the_phase() -> None:
    assert health(manifest(_status(Phase.FAILED, "")))["message"] == "Failed"


def test_unknown_phase_is_unknown() -> None:
    obj = manifest(_status(Phase.PROGRESSING, "x"))
    obj["status"]["phase"] = "Hibernating"
    assert health(obj) == {"status": "Unknown", "message": "Unknown phase Hibernating: x"}


# --------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------


def _pruned(value: Any) -> Any:
    """Without empty lists and maps: Lua has one empty table for both."""
    if isinstance(value, dict):
        out = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


@pytest.mark.parametrize("name", list(ACTIONS))
def test_action_sets_its_annotation_and_nothing_else(name: str) -> None:
    key, value = ACTIONS[name]
    before = from_world(_awaiting_approval())
    before["metadata"]["annotations"] = {"team": "risk"}
    after = act(name, copy.deepcopy(before))
    assert after["metadata"]["annotations"] == {"team": "risk", key: value}
    after["metadata"]["annotations"] = before["metadata"]["annotations"]
    assert _pruned(after) == _pruned(before)


@pytest.mark.parametrize("name", list(ACTIONS))
def test_action_creates_the_annotations_map(name: str) -> None:
    key, value = ACTIONS[name]
    obj = manifest(_status(Phase.PAUSED))
    assert "annotations" not in obj["metadata"] or not obj["metadata"]["annotations"]
    obj["metadata"].pop("annotations", None)
    assert act(name, obj)["metadata"]["annotations"] == {key: value}


# --------------------------------------------------------------------------------------
# The argocd-cm snippet embeds exactly the .lua files
# --------------------------------------------------------------------------------------


def test_argocd_cm_snippet_embeds_the_lua_files() -> None:
    doc = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm"
    data = doc["data"]
    assert data["resource.customizations.health.rewind.dev_ModelRelease"] == lua_file("health.lua")
    actions = yaml.safe_load(data["resource.customizations.actions.rewind.dev_ModelRelease"])
    assert actions["discovery.lua"] == lua_file("discovery.lua")
    definitions = {d["name"]: d["action.lua"] for d in actions["definitions"]}
    assert set(definitions) == set(ACTIONS)
    for name, script in definitions.items():
        assert script == lua_file(f"actions/{name}.lua"), name


def test_argocd_cm_snippet_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("argocd_generate", ARGOCD / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.main(["--check"]) == 0, "run: python charts/rewind/argocd/generate.py"
