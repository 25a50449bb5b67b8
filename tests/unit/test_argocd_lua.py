"""Argo CD health check and resource actions for ModelRelease (charts/rewind/argocd/*.lua).

The Lua runs in hack/tools' argocd-lua, which sets gopher-lua up the way Argo CD does (no
string, no math library, unless resource.customizations.useOpenLibs is set) and validates
the results as Argo CD does; kstatus (cli-utils) reads the same objects. The objects are the
hand-built cases of tests/argocd_objects.py (every phase, generation ahead, Stalled, missing
status or conditions) and release states reached through the real decision engine. Every
batch runs in one process per tool.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from typing import Any, get_args

import pytest
import yaml

from rewind.api import (
    ANNOTATION_APPROVE_ROLLBACK,
    ANNOTATION_PROMOTE,
    ANNOTATION_REJECT_ROLLBACK,
    ANNOTATION_RETRY,
    ANNOTATION_ROLLBACK,
    ModelRelease,
    ObjectMeta,
    Phase,
)
from rewind.engine import ANNOTATION_OF, ActionKind, EmitEvent, SetRoutes
from tests import go_tools
from tests.argocd_objects import CASES, PHASES, Case, manifest, operator_status
from tests.go_tools import (
    ACTIONS,
    ARGOCD,
    DISCOVERY_LUA,
    HEALTH_LUA,
    KSTATUS_OF_HEALTH,
    action_lua,
    argocd_lua,
    job,
)
from tests.unit.test_engine_kit import (
    BLUE_GREEN_MANUAL,
    CANARY_MANUAL,
    FAIL,
    INCONCLUSIVE,
    NAME,
    NAMESPACE,
    World,
    at_step,
    make_policy,
    make_spec,
    promoted_world,
)

#: action -> (annotation it sets, its value on an object at resourceVersion {rv}): unique to
#: the object's version, since the operator never acts twice on a value that acted.
ANNOTATIONS = {
    "approve-rollback": (ANNOTATION_APPROVE_ROLLBACK, "true-{rv}"),
    "reject-rollback": (ANNOTATION_REJECT_ROLLBACK,
                        "rejected in Argo CD (at resourceVersion {rv})"),
    "rollback": (ANNOTATION_ROLLBACK, "break glass from Argo CD (at resourceVersion {rv})"),
    "promote": (ANNOTATION_PROMOTE, "true-{rv}"),
    "retry": (ANNOTATION_RETRY, "true-{rv}"),
}


def action_value(name: str, obj: dict[str, Any]) -> str:
    return ANNOTATIONS[name][1].format(rv=obj["metadata"].get("resourceVersion", "unknown"))


def lua_file(name: str) -> str:
    return (ARGOCD / name).read_text()


# --------------------------------------------------------------------------------------
# Hand-built cases: every script over every case, in one argocd-lua and one kstatus run
# --------------------------------------------------------------------------------------


class Runs:
    """Results for CASES: health, discovery, every action, kstatus."""

    def __init__(self) -> None:
        objs = [c.obj for c in CASES]
        jobs = [job("health", HEALTH_LUA, o) for o in objs]
        jobs += [job("discovery", DISCOVERY_LUA, o) for o in objs]
        for name in ACTIONS:
            jobs += [job("action", action_lua(name), o) for o in objs]
        out = argocd_lua(jobs)
        n = len(objs)
        self.health = dict(zip([c.id for c in CASES], out[:n], strict=True))
        self.discovery = dict(zip([c.id for c in CASES], out[n : 2 * n], strict=True))
        self.actions: dict[tuple[str, str], dict[str, Any]] = {}
        for i, name in enumerate(ACTIONS):
            chunk = out[(2 + i) * n : (3 + i) * n]
            for case, result in zip(CASES, chunk, strict=True):
                self.actions[(case.id, name)] = result
        self.kstatus = dict(zip([c.id for c in CASES], go_tools.kstatus(objs), strict=True))


@pytest.fixture(scope="module")
def runs() -> Runs:
    return Runs()


def by_id(cases: list[Case]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])


def test_cases_cover_every_phase_and_every_health() -> None:
    assert {c.obj.get("status", {}).get("phase") for c in CASES} >= set(PHASES)
    assert set(PHASES) >= {p.value for p in Phase}, "a phase of the API is missing here"
    assert {c.health for c in CASES} == set(KSTATUS_OF_HEALTH)
    assert {kind: key for kind, (key, _) in ANNOTATIONS.items()} == dict(ANNOTATION_OF)
    assert set(ACTIONS) == set(ANNOTATIONS)


@by_id(CASES)
def test_health(case: Case, runs: Runs) -> None:
    result = runs.health[case.id]
    assert "error" not in result, result["error"]
    hs = result["health"]
    assert hs["status"] == case.health, hs
    assert hs.get("message"), f"empty health message: {hs}"
    assert case.says in hs["message"]


@by_id(CASES)
def test_discovery(case: Case, runs: Runs) -> None:
    result = runs.discovery[case.id]
    assert "error" not in result, result["error"]
    offered = result["actions"]
    assert {a["name"] for a in offered} == case.actions
    for action in offered:
        assert not action.get("disabled")
        assert action["displayName"] and action["iconClass"].startswith("fa "), action


@by_id(CASES)
@pytest.mark.parametrize("name", ACTIONS)
def test_action_sets_its_annotation_and_nothing_else(case: Case, name: str, runs: Runs) -> None:
    result = runs.actions[(case.id, name)]
    assert "error" not in result, result["error"]
    [impacted] = result["impacted"]
    assert impacted["operation"] == "patch"
    key, value = ANNOTATIONS[name][0], action_value(name, case.obj)
    before = case.obj["metadata"].get("annotations", {})
    assert impacted["resource"]["metadata"]["annotations"] == {**before, key: value}
    # What Argo CD sends to the API server: a merge patch of the live and returned objects.
    # Nothing else may change (a status patch would race the operator).
    assert impacted["mergePatch"] == {"metadata": {"annotations": {key: value}}}


@by_id(CASES)
def test_kstatus_agrees_with_argocd(case: Case, runs: Runs) -> None:
    ks = runs.kstatus[case.id]
    assert "error" not in ks, ks
    if case.operator_written:
        assert ks["status"] == KSTATUS_OF_HEALTH[case.health], (case.health, ks)
    else:
        # Conditions the operator never writes this way: kstatus cannot know better.
        assert ks["status"] == case.kstatus, ks


def test_the_issue_input_is_progressing_not_a_lua_error() -> None:
    """Issue 10: generation 3, observedGeneration 2 made the old script call string.format,
    which Argo CD does not load: it showed "attempt to index a non-table object(nil) with
    key 'format'" instead of Progressing."""
    obj = manifest({"observedGeneration": 2, "phase": "Promoted", "message": "r2 promoted"},
                   generation=3)
    [result] = go_tools.health([obj])
    assert "error" not in result, result["error"]
    assert result["health"] == {
        "status": "Progressing",
        "message": "Waiting for the Rewind operator to act on generation 3 (last acted on 2)",
    }


def test_the_harness_runs_lua_as_argocd_does() -> None:
    """No string or math library; os only through require (Argo CD registers its safe os
    under the table library's name, so the global stays nil); numbers stay numbers."""
    probe = """
        local globals = type(string) .. "," .. type(math) .. "," .. type(os) .. "," .. type(io)
          .. "," .. type(coroutine) .. "," .. type(json) .. "," .. type(table) .. ","
          .. type(require) .. "," .. type(actionParams)
        local os = require("os")
        return {status = "Healthy", message = globals .. ";" .. type(os.date) .. ";"
          .. type(os.time) .. ";" .. type(os.exit) .. ";" .. tostring(obj.metadata.generation)
          .. ";" .. type(obj.metadata.generation)}
    """
    obj = manifest(operator_status("Promoted"), generation=7)
    restricted, open_libs = argocd_lua([job("health", probe, obj),
                                        job("health", probe, obj, open_libs=True)])
    assert restricted["health"]["message"] == (
        "nil,nil,nil,nil,nil,nil,table,function,table;function;function;nil;7;number")
    assert open_libs["health"]["message"].startswith("table,table,table,table,table,nil,")
    # The failure Argo CD showed for the old script: string.format on a nil global.
    [old] = argocd_lua([job("health", 'return {status = string.format("%s", "x")}', obj)])
    assert "attempt to index a non-table object(nil) with key 'format'" in old["error"]
    assert old["health"]["status"] == "Unknown"


def test_the_harness_validates_results_as_argocd_does() -> None:
    obj = manifest(operator_status("Promoted"))
    got = argocd_lua([
        job("health", 'return {status = "Fine"}', obj),
        job("health", "return {}", obj),
        job("health", "return 3", obj),
        job("discovery", "return {}", obj),
        job("discovery", "return {a = {}, b = {disabled = true, displayName = 'B'}}", obj),
        job("action", "obj.metadata.labels = {} return obj", obj),
    ])
    assert got[0]["health"] == {"status": "Unknown",
                                "message": "Lua returned an invalid health status"}
    assert got[1]["health"] == {}
    assert got[2]["error"] == "expect table output from Lua script, not number"
    assert got[3]["actions"] == []
    assert got[4]["actions"] == [{"name": "a"},
                                 {"name": "b", "disabled": True, "displayName": "B"}]
    # An emptied map comes back as a map (Argo CD's cleanReturnedObj), and is patched as one.
    assert got[5]["impacted"][0]["mergePatch"] == {"metadata": {"labels": {"team": None}}}
    assert got[5]["impacted"][0]["resource"]["metadata"]["labels"] == {}


def test_scripts_give_the_same_results_with_and_without_open_libs() -> None:
    """They use nothing Argo CD leaves out by default."""
    objs = [c.obj for c in CASES]
    scripts = [("health", HEALTH_LUA), ("discovery", DISCOVERY_LUA)]
    scripts += [("action", action_lua(name)) for name in ACTIONS]
    jobs = [job(kind, script, o, open_libs=open_libs)
            for open_libs in (False, True) for kind, script in scripts for o in objs]
    out = argocd_lua(jobs)
    half = len(out) // 2
    assert out[:half] == out[half:]


def test_a_missing_tool_fails_naming_make_tools(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    monkeypatch.setenv("REWIND_TEST_TOOLS", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="make tools"):
        go_tools.kstatus([])


# --------------------------------------------------------------------------------------
# Release states reached through the real engine
# --------------------------------------------------------------------------------------


def from_world(w: World) -> dict[str, Any]:
    """The ModelRelease of an engine world, as the API server would return it."""
    release = ModelRelease(
        metadata=ObjectMeta(name=NAME, namespace=NAMESPACE, uid="u-1", generation=w.generation),
        spec=w.spec,
        status=w.status,
    )
    obj = release.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {"apiVersion": "rewind.dev/v1alpha1", "kind": "ModelRelease", **obj}


def engine_acts_on(w: World, kind: ActionKind) -> bool:
    """Whether the engine acts on the annotation now.

    Acting is recorded in status.timeline under the user's name; an ignored action is
    recorded as ActionIgnored, and one the engine cannot consider yet (no usable policy)
    is left on the object without any record.
    """
    trial = copy.deepcopy(w)
    assert not any(e.user == "argocd" for e in trial.status.timeline)
    decision = trial.act(kind, value=ANNOTATIONS[kind][1].format(rv=4711), user="argocd")
    entries = [e.type for e in decision.status.timeline if e.user == "argocd"]
    ignored = any(
        isinstance(a, EmitEvent) and a.reason == "ActionIgnored" for a in decision.actions
    )
    return bool(entries) and "ActionIgnored" not in entries and not ignored


def _pending() -> World:
    w = World(None, policy_error="RolloutPolicy 'p' not found")
    w.step()
    return w


def _first_release_in_progress() -> World:
    w = World(make_policy(), ready_after=30)
    w.step()
    return w


def _first_release_preview() -> World:
    """A first release at 0% under firstRelease: Gates; nothing to measure: it holds."""
    w = World(make_policy(first_release=None))
    w.verdicts = lambda _rev, _now: INCONCLUSIVE
    w.step()
    w.run(120)
    assert w.status.current_step == 1
    return w


def _first_release_gate() -> World:
    w = World(make_policy(CANARY_MANUAL, first_release=None))
    w.step()
    w.run_until(lambda x: x.status.phase == Phase.PAUSED)
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


def _rolling_back() -> World:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=30)
    w.run(120)  # r1 is scaled to zero: a rollback to it has to wait for it
    w.act("rollback", value="drift", user="oncall")
    assert w.status.phase == Phase.ROLLING_BACK
    return w


def _rollback_stalled(releases: int) -> Callable[[], World]:
    """Rolling back to a retired revision that never becomes Available (a quota)."""

    def build() -> World:
        w = promoted_world(make_policy(keep_previous_warm="1m", progress_deadline="2m"),
                           releases=releases)
        w.run(120)
        w.broken.update(range(1, releases))
        w.act("rollback", value="bad answers", user="oncall")
        w.run(130)
        assert w.condition("Stalled")[1] == "RollbackStalled"
        return w

    return build


def _rolled_back_onto_unproven() -> World:
    """A roll-forward from a stalled rollback, itself rolled back to the revision it left."""
    w = _rollback_stalled(2)()
    w.verdicts = lambda _rev, _now: FAIL
    w.release(make_spec("3.0.0"))
    w.settle()
    return w


def _restoring() -> World:
    """The spec was reverted to r1 (retired): it is scaled up from its snapshot."""
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=30)
    w.run(120)
    w.release(make_spec("1.0.0"))
    assert w.status.restoring
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


def _promoting() -> World:
    """The last step passed; 100% is written but not read back yet."""
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    w.follow_route_writes = False
    w.run_until(lambda x: x.status.phase == Phase.PROMOTING)
    return w


def _routes_refused() -> World:
    """A mesh admission webhook refuses the VirtualService write of the first step."""
    w = promoted_world()
    w.refuse_routes = "VirtualService risk/fraud was refused: denied by mesh policy"
    w.release(make_spec("2.0.0"))
    w.run(30)
    return w


def _routes_pending() -> World:
    """The first step's routes are written but not read back yet."""
    w = promoted_world()
    w.follow_route_writes = False
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.status.current_step == 1)
    return w


def _promoted_stable_down() -> World:
    """The promoted revision lost every pod (nodes cordoned, pods deleted)."""
    w = promoted_world()
    w.broken.add(1)
    w.step(5)
    return w


def _promoted_routes_edited() -> World:
    """Someone edited the VirtualService; the restoring write is not read back yet."""
    w = promoted_world(releases=2)
    w.follow_route_writes = False
    w.routes = SetRoutes({1: 100}, None, 0)
    w.step(5)
    return w


def _post_promotion_watch() -> World:
    w = promoted_world(make_policy(
        {"canary": {"steps": [{"weight": 50, "pause": {"duration": "1m"}}],
                    "postPromotionDuration": "5m"}}
    ))
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    return w


#: state -> (builder, its phase, the Argo CD health, the actions Argo CD offers there)
STATES: dict[str, tuple[Callable[[], World], Phase, str, set[str]]] = {
    # No usable policy: the operator says Stalled (PolicyError), so Argo CD says Degraded.
    "pending-without-policy": (_pending, Phase.PENDING, "Degraded", set()),
    "first-release-in-progress": (_first_release_in_progress, Phase.PROGRESSING, "Progressing",
                                  {"rollback"}),
    "first-release-preview": (_first_release_preview, Phase.PROGRESSING, "Progressing",
                              {"promote", "rollback"}),
    "first-release-gate": (_first_release_gate, Phase.PAUSED, "Suspended",
                           {"promote", "rollback"}),
    "canary-in-progress": (_canary_in_progress, Phase.PROGRESSING, "Progressing", {"rollback"}),
    "canary-manual-gate": (_paused(CANARY_MANUAL), Phase.PAUSED, "Suspended",
                           {"promote", "rollback"}),
    "blue-green-manual-switch": (_paused(BLUE_GREEN_MANUAL), Phase.PAUSED, "Suspended",
                                 {"promote", "rollback"}),
    "awaiting-approval": (_awaiting_approval, Phase.AWAITING_APPROVAL, "Suspended",
                          {"approve-rollback", "reject-rollback", "rollback"}),
    "promoted-first-release": (promoted_world, Phase.PROMOTED, "Healthy", set()),
    "promoted-with-previous": (lambda: promoted_world(releases=2), Phase.PROMOTED, "Healthy",
                               {"rollback"}),
    "rolling-back": (_rolling_back, Phase.ROLLING_BACK, "Progressing", set()),
    "rollback-stalled": (_rollback_stalled(2), Phase.ROLLING_BACK, "Degraded", set()),
    "rollback-stalled-older-known-good": (_rollback_stalled(3), Phase.ROLLING_BACK,
                                          "Degraded", {"rollback"}),
    "restoring": (_restoring, Phase.PROGRESSING, "Progressing", {"rollback"}),
    "rolled-back-onto-unproven": (_rolled_back_onto_unproven, Phase.ROLLED_BACK, "Degraded",
                                  {"retry", "rollback"}),
    "promoting": (_promoting, Phase.PROMOTING, "Progressing", {"rollback"}),
    "canary-routes-refused": (_routes_refused, Phase.PROGRESSING, "Degraded", {"rollback"}),
    "canary-routes-pending": (_routes_pending, Phase.PROGRESSING, "Progressing", {"rollback"}),
    "post-promotion-watch": (_post_promotion_watch, Phase.PROGRESSING, "Progressing",
                             {"rollback"}),
    "promoted-stable-down": (_promoted_stable_down, Phase.PROMOTED, "Degraded", set()),
    "promoted-routes-edited": (_promoted_routes_edited, Phase.PROMOTED, "Progressing",
                               {"rollback"}),
    "rolled-back": (_rolled_back, Phase.ROLLED_BACK, "Degraded", {"retry"}),
    "failed-first-release": (_failed_first_release, Phase.FAILED, "Degraded", {"retry"}),
}


class EngineRuns:
    """The engine states, and health, discovery and kstatus of each, in one run per tool."""

    def __init__(self) -> None:
        self.worlds: dict[str, World] = {}
        for state, (build, phase, _, _) in STATES.items():
            w = build()
            assert w.status.phase == phase, w.status.message
            self.worlds[state] = w
        objs = [from_world(w) for w in self.worlds.values()]
        out = argocd_lua([job("health", HEALTH_LUA, o) for o in objs]
                         + [job("discovery", DISCOVERY_LUA, o) for o in objs])
        self.health = dict(zip(STATES, out[: len(objs)], strict=True))
        self.discovery = dict(zip(STATES, out[len(objs) :], strict=True))
        self.kstatus = dict(zip(STATES, go_tools.kstatus(objs), strict=True))


@pytest.fixture(scope="module")
def engine() -> EngineRuns:
    return EngineRuns()


def test_states_cover_every_phase() -> None:
    assert {phase for _, phase, _, _ in STATES.values()} == set(Phase)


@pytest.mark.parametrize("state", list(STATES))
def test_health_of_each_engine_state(state: str, engine: EngineRuns) -> None:
    result, expected = engine.health[state], STATES[state][2]
    assert "error" not in result, result["error"]
    assert result["health"]["status"] == expected, result
    assert result["health"].get("message")
    ks = engine.kstatus[state]
    assert ks["status"] == KSTATUS_OF_HEALTH[expected], (result, ks)


@pytest.mark.parametrize("state", list(STATES))
def test_discovery_offers_what_the_engine_acts_on(state: str, engine: EngineRuns) -> None:
    w = engine.worlds[state]
    got = {a["name"] for a in engine.discovery[state]["actions"]}
    assert got == STATES[state][3]
    acting = {kind for kind in get_args(ActionKind) if engine_acts_on(w, kind)}
    assert got == acting, f"Argo CD offers {sorted(got)}, the engine acts on {sorted(acting)}"


def test_engine_states_agree_with_kstatus_through_the_shared_helper(engine: EngineRuns) -> None:
    """go_tools.disagreements is what other tests feed engine-made statuses to."""
    objs = [from_world(w) for w in engine.worlds.values()]
    assert go_tools.disagreements(objs) == []


# --------------------------------------------------------------------------------------
# The argocd-cm snippet embeds exactly the .lua files
# --------------------------------------------------------------------------------------


def test_an_argocd_action_taken_again_later_acts_again() -> None:
    """Its value names the object's version: a second break glass from Argo CD, for another
    incident, is not the same value coming back."""
    w = promoted_world(releases=3)
    w.act("rollback", value=ANNOTATIONS["rollback"][1].format(rv=4711), user="argocd")
    assert w.status.stable_revision == 2
    w.release(make_spec("4.0.0"))
    w.settle()
    w.act("rollback", value=ANNOTATIONS["rollback"][1].format(rv=5210), user="argocd")
    assert w.status.phase == Phase.ROLLED_BACK and w.status.stable_revision == 2
    assert w.status.timeline[-1].type == "RolledBack"


def test_argocd_cm_snippet_embeds_the_lua_files() -> None:
    doc = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm"
    data = doc["data"]
    assert data["resource.customizations.health.rewind.dev_ModelRelease"] == lua_file("health.lua")
    actions = yaml.safe_load(data["resource.customizations.actions.rewind.dev_ModelRelease"])
    assert actions["discovery.lua"] == lua_file("discovery.lua")
    definitions = {d["name"]: d["action.lua"] for d in actions["definitions"]}
    assert set(definitions) == set(ANNOTATIONS)
    for name, script in definitions.items():
        assert script == lua_file(f"actions/{name}.lua"), name
    # Argo CD's default: no useOpenLibs, so the scripts run without string and math.
    assert not any("useOpenLibs" in key for key in data)


def test_argocd_cm_snippet_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("argocd_generate", ARGOCD / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.main(["--check"]) == 0, "run: python charts/rewind/argocd/generate.py"
