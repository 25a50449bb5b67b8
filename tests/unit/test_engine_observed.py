"""The engine decides from what is observed, never from what it asked for (issue 10).

Each test drives the engine through ``World`` (tests/unit/test_engine_kit.py), whose router
can refuse writes, report conflicts or edits outside Rewind, and whose Deployments can lose
their pods. On the engine before this change, a refused route write still advanced the
steps to Promoted, and a promoted revision with no pods stayed Ready.
"""

from __future__ import annotations

from typing import Any

from rewind.api import ModelReleaseSpec, Phase, TrafficSpec
from rewind.engine import RouteProblem, SetRoutes, analysis_due
from tests.unit.test_engine_kit import (
    FAIL,
    PASS,
    World,
    at_step,
    events,
    make_policy,
    make_spec,
    promoted_world,
    routes_of,
)

REFUSAL = (
    'VirtualService risk/fraud was refused by the API server (HTTP 422): '
    'ValidatingAdmissionPolicy "mesh-guard" denied request: routes are frozen'
)
STEPS_30_60: dict[str, Any] = {
    "canary": {
        "steps": [
            {"weight": 30, "pause": {"duration": "2s"}},
            {"weight": 60, "pause": {"duration": "2s"}},
        ]
    }
}


def condition(w: World, type_: str) -> tuple[str, str, str]:
    return w.condition(type_)


def ready(w: World) -> bool:
    return condition(w, "Ready")[0] == "True"


def with_header_routes(spec: ModelReleaseSpec) -> ModelReleaseSpec:
    traffic = TrafficSpec.model_validate(
        {
            "hosts": ["fraud.example.com"],
            "headerRoutes": [
                {"name": "beta-testers", "headers": [{"name": "x-group", "exact": "beta"}]}
            ],
        }
    )
    return spec.model_copy(update={"traffic": traffic})


# --------------------------------------------------------------------------------------
# A route write is refused
# --------------------------------------------------------------------------------------


def test_a_refused_route_write_holds_the_step_and_says_who_refused_it() -> None:
    w = promoted_world(make_policy(STEPS_30_60, interval="2s"))
    w.refuse_routes = REFUSAL
    w.release(make_spec("2.0.0"))
    w.run(60, dt=1)
    s = w.status
    # The mesh still sends everything to r1, and the status says so.
    assert w.weights() == {1: 100}
    assert (s.weights.stable, s.weights.candidate) == (100, 0)
    assert s.phase == Phase.PROGRESSING and s.current_step == 1
    assert s.step_started_at is None and s.analysis.last_run_at is None
    assert not s.routes.in_effect and [(x.revision, x.weight) for x in s.routes.wanted] == [
        (1, 70),
        (2, 30),
    ]
    assert not ready(w)
    stalled = condition(w, "Stalled")
    assert stalled[0] == "True" and stalled[1] == "RoutesRefused"
    assert "mesh-guard" in stalled[2] and "VirtualService risk/fraud" in stalled[2]
    assert condition(w, "Reconciling")[0] == "False"
    refused = [e for e in s.timeline if e.type == "RoutesRefused"]
    assert len(refused) == 1 and "routes are frozen" in refused[0].message  # once, not per retry
    assert [e.reason for e in events(w.decisions, "Warning")].count("RoutesRefused") == 1
    assert "StepStarted" not in [e.type for e in s.timeline if e.revision == 2]

    # The refusal is lifted: the rollout continues from the step it had reached.
    w.refuse_routes = None
    w.step(1)
    assert w.weights() == {1: 70, 2: 30} and w.status.routes.in_effect
    started = [e for e in w.status.timeline if e.type == "StepStarted"]
    assert "canary step 1/2 at 30% (in effect" in started[-1].message
    assert condition(w, "Stalled")[0] == "False" and condition(w, "Reconciling")[0] == "True"
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.weights() == {2: 100} and ready(w)


def test_never_promoted_while_the_mesh_routes_to_the_old_revision() -> None:
    w = promoted_world(make_policy(STEPS_30_60, interval="2s"))
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    w.refuse_routes = REFUSAL  # refused from the last step on: the promotion's write too
    w.run(600, dt=5)
    assert w.phase() == Phase.PROMOTING and w.weights() == {1: 40, 2: 60}
    assert not ready(w) and condition(w, "Stalled")[1] == "RoutesRefused"
    assert "Promoted" not in [e.type for e in w.status.timeline if e.revision == 2]
    w.refuse_routes = None
    w.step(1)
    assert w.phase() == Phase.PROMOTED and w.weights() == {2: 100} and ready(w)


def test_a_rollback_is_done_only_once_its_routes_are_read_back() -> None:
    w = promoted_world(make_policy(STEPS_30_60, interval="2s"))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.refuse_routes = REFUSAL
    w.act("rollback", value="bad answers", user="oncall")
    assert w.phase() == Phase.ROLLING_BACK and w.weights() == {1: 70, 2: 30}
    w.step(1)  # the refusal of the write, reported
    assert w.phase() == Phase.ROLLING_BACK and w.weights() == {1: 70, 2: 30}
    assert "moving traffic" in w.status.message and "mesh-guard" in w.status.message
    assert condition(w, "Stalled")[1] == "RoutesRefused"
    w.refuse_routes = None
    w.step(1)
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}


def test_a_refusal_of_other_routes_does_not_block_the_routes_already_in_effect() -> None:
    """A refused step-2 write does not keep a rollback to the split in effect from ending."""
    w = promoted_world(make_policy(STEPS_30_60, interval="2s"))
    w.refuse_routes = REFUSAL
    w.release(make_spec("2.0.0"))
    w.run(5, dt=1)
    assert w.weights() == {1: 100}
    w.act("rollback", value="never mind", user="oncall")
    # r1 100% is what the mesh has: the rollback is done; r2 never had users.
    assert w.phase() == Phase.FAILED and w.outcome(2) == "Failed"
    assert condition(w, "Stalled")[1] == "Failed"


def test_analysis_waits_for_the_step_to_be_in_effect() -> None:
    w = promoted_world(make_policy(STEPS_30_60, interval="2s"))
    w.follow_route_writes = False
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.status.current_step == 1)
    assert w.status.step_started_at is None
    assert not analysis_due(w.status, w.policy, w.now + w.now.resolution * 10**7)


# --------------------------------------------------------------------------------------
# The serving revision loses its pods
# --------------------------------------------------------------------------------------


def test_a_promoted_revision_without_pods_is_degraded_not_ready() -> None:
    w = promoted_world(releases=2)
    assert ready(w)
    w.broken.add(2)  # nodes cordoned, pods deleted: 0 ready
    w.step(2)
    assert w.phase() == Phase.PROMOTED and not ready(w)
    degraded = condition(w, "Degraded")
    assert degraded[:2] == ("True", "StableUnavailable")
    assert "Deployment risk/fraud-r2 has 0/2 ready replicas" in degraded[2]
    assert condition(w, "Stalled")[:2] == ("True", "StableUnavailable")
    assert condition(w, "Ready")[1] == "StableUnavailable"
    w.run(30)
    assert [e.type for e in w.status.timeline].count("StableUnavailable") == 1
    w.broken.clear()
    w.step(2)
    assert ready(w) and condition(w, "Degraded")[0] == "False"
    assert w.status.timeline[-1].type == "StableAvailable"


def test_a_candidate_with_users_and_no_ready_pod_is_rolled_back() -> None:
    w = promoted_world(make_policy(STEPS_30_60, interval="2s"))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.broken.add(2)
    w.step(1)
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    kinds = [e.type for e in w.status.timeline]
    assert kinds.index("CandidateUnavailable") < kinds.index("RollbackStarted")
    assert "0/2 ready replicas" in w.status.history[-1].reason


# --------------------------------------------------------------------------------------
# The post-promotion watch (canary)
# --------------------------------------------------------------------------------------


def watched(**kwargs: Any) -> World:
    policy = make_policy(
        {
            "canary": {
                "steps": [{"weight": 50, "pause": {"duration": "1m"}}],
                "postPromotionDuration": "5m",
            }
        },
        **kwargs,
    )
    w = promoted_world(policy)
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    assert w.weights() == {2: 100} and w.status.phase == Phase.PROGRESSING
    assert "post-promotion watch" in w.status.message
    return w


def test_the_watch_passes_then_the_release_is_promoted() -> None:
    w = watched()
    w.run(200)
    assert w.phase() == Phase.PROGRESSING and w.replicas(1) == 2  # still watched, r1 warm
    w.run(120)
    assert w.phase() == Phase.PROMOTED and ready(w) and w.status.stable_revision == 2


def test_a_failed_analysis_in_the_watch_switches_back_to_the_warm_previous() -> None:
    w = watched()
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert w.outcome(2) == "RolledBack" and w.status.stable_revision == 1


def test_an_unavailable_new_stable_in_the_watch_switches_back() -> None:
    w = watched()
    w.broken.add(2)
    w.step(2)
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert "CandidateUnavailable" in [e.type for e in w.status.timeline]


def test_in_approval_mode_the_watch_asks_before_switching_back() -> None:
    w = watched(approval={"requiredApprovers": 1, "timeout": "15m"})
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.AWAITING_APPROVAL and w.weights() == {2: 100}
    w.act("approve-rollback", user="alice")
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}


# --------------------------------------------------------------------------------------
# Someone else's hands on the routes
# --------------------------------------------------------------------------------------


def test_weights_edited_by_hand_are_reported_and_restored() -> None:
    w = promoted_world(releases=2)
    w.follow_route_writes = False
    # kubectl edit virtualservice: the umbrella Service, untouched, still selects r2.
    w.routes = SetRoutes({1: 50, 2: 50}, None, 0, None, 2)
    w.step(5)
    assert not ready(w) and condition(w, "Reconciling")[:2] == ("True", "RoutesNotInEffect")
    drift = [e for e in w.status.timeline if e.type == "RouteDrift"]
    assert len(drift) == 1, drift
    assert "r1 50%, r2 50%, in-cluster name to r2 instead of r2 100%" in drift[0].message
    assert w.weights() == {2: 100}  # the write restored it
    w.step(1)
    assert ready(w) and [e.type for e in w.status.timeline].count("RouteDrift") == 1


def test_an_option_edited_by_hand_is_reported_once_and_restored() -> None:
    w = promoted_world(releases=2)
    message = "VirtualService risk/fraud was edited outside Rewind by kubectl-edit (timeout)"
    w.route_problems = (RouteProblem("Drift", message),)
    w.step(5)
    assert [e.message for e in w.status.timeline if e.type == "RouteDrift"] == [message]
    assert len(w.route_problems) == 0 and ready(w)  # the write restored it, read back


def test_a_conflicting_route_holds_the_release_and_names_it() -> None:
    w = promoted_world()
    other = (
        "VirtualService team-b/catch-all also routes fraud.example.com on gateway "
        "istio-system/public: Istio picks one of them"
    )
    w.route_problems = (RouteProblem("Conflict", other),)
    w.release(make_spec("2.0.0"))
    w.run(120)
    assert w.status.current_step == 1 and w.status.step_started_at is None
    assert condition(w, "Stalled")[1] == "RouteConflict" and "team-b/catch-all" in (
        condition(w, "Stalled")[2]
    )
    assert [e.type for e in w.status.timeline].count("RouteConflict") == 1
    w.route_problems = ()
    w.settle()
    assert w.phase() == Phase.PROMOTED


def test_a_conflict_seen_before_any_route_is_needed_is_reported_once() -> None:
    """A first release waiting to become Available needs no routes yet; a conflict seen
    then is still reported (Stalled, one Event), not once per reconcile."""
    w = World(make_policy(), ready_after=20)
    w.route_problems = (RouteProblem("Conflict", "VirtualService team-b/legacy also routes"),)
    w.run(15, dt=1)
    assert condition(w, "Stalled")[:2] == ("True", "RouteConflict")
    assert [e.reason for e in w.events].count("RouteConflict") == 1
    assert [e.type for e in w.status.timeline].count("RouteConflict") == 1
    w.run(15, dt=1)  # Available now: promoting waits for the conflict to go
    assert w.phase() == Phase.PROMOTING
    assert [e.reason for e in w.events].count("RouteConflict") == 1
    w.route_problems = ()
    w.run(2, dt=1)
    assert w.phase() == Phase.PROMOTED and ready(w)


def test_routes_that_never_take_effect_stall_after_the_progress_deadline() -> None:
    w = promoted_world(make_policy(progress_deadline="1m"))
    w.route_problems = (RouteProblem("NotAccepted", "gateway has not accepted the route"),)
    w.release(make_spec("2.0.0"))
    w.run(30)
    assert condition(w, "Reconciling")[0] == "True"
    w.run(40)
    stalled = condition(w, "Stalled")
    assert stalled[:2] == ("True", "RoutesNotInEffect") and "not accepted" in stalled[2]


# --------------------------------------------------------------------------------------
# Header routes (A/B) and the Promoting phase
# --------------------------------------------------------------------------------------


def test_header_routes_send_their_callers_to_the_candidate_but_never_to_a_shadow() -> None:
    w = promoted_world(make_policy({"shadow": {"mirrorPercent": 50, "duration": "1m",
                                              "onSuccess": {"action": "Canary", "canary": {
                                                  "steps": [{"weight": 20}]}}}}))
    w.release(with_header_routes(make_spec("2.0.0")))
    at_step(w, 1)
    assert routes_of(w.decisions[-1])[-1].header_revision is None  # shadow: no answers
    at_step(w, 2)
    assert w.routes is not None and w.routes.header_revision == 2
    w.settle()
    assert w.routes is not None and w.routes.header_revision is None


def test_a_preview_candidate_that_answered_header_callers_is_rolled_back_not_failed() -> None:
    w = promoted_world(make_policy({"blueGreen": {"previewDuration": "1m"}}))
    w.release(with_header_routes(make_spec("2.0.0")))
    at_step(w, 1)
    assert w.weights() == {1: 100} and w.routes is not None and w.routes.header_revision == 2
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.ROLLED_BACK and w.outcome(2) == "RolledBack"


def test_promoted_only_once_the_full_switch_is_read_back() -> None:
    w = promoted_world(make_policy(STEPS_30_60, interval="2s"))
    w.follow_route_writes = False
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.status.phase == Phase.PROMOTING, dt=1)
    assert w.weights() == {2: 100} and not ready(w)  # written, not yet read back
    w.step(0)
    assert w.phase() == Phase.PROMOTED and ready(w)
    w.verdicts = lambda _r, _n: PASS


# --------------------------------------------------------------------------------------
# The operator's own saturation (issue 11, item 2)
# --------------------------------------------------------------------------------------


def test_an_overloaded_operator_holds_and_says_so_never_rolls_back() -> None:
    from rewind.api import Measurement, QueryErrorKind, Verdict

    w = promoted_world(make_policy(failure_limit=1))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    starved = Measurement(
        metric="error-rate",
        verdict=Verdict.INCONCLUSIVE,
        error_kind=QueryErrorKind.OVERLOADED,
        message="error-rate: query error (overloaded): not sent within 10s",
    )
    for _ in range(5):
        w.step(10, measurements=[starved])
    assert w.phase() == Phase.PROGRESSING and w.status.current_step == 1
    degraded = condition(w, "Degraded")
    assert degraded[:2] == ("True", "OperatorOverloaded")
    assert "--analysis-threads" in degraded[2] and "not the model" in degraded[2]
    w.step(10)  # a passing round: the condition clears
    assert condition(w, "Degraded")[0] == "False"


def test_a_first_release_stopped_while_its_routes_point_at_it_stays_up() -> None:
    """Found by the fuzz: break glass on a first release whose 100% was written but not
    in effect (a conflicting route) asked to scale it down and keep it up at once. It is
    all that serves, so it stays up; the release is Failed."""
    w = World(make_policy())
    w.route_problems = (RouteProblem("Conflict", "VirtualService other/x claims the host"),)
    w.step()
    w.step(1)
    assert w.phase() == Phase.PROMOTING and w.weights() == {1: 100}
    w.act("rollback", value="true")
    assert w.phase() == Phase.FAILED and w.replicas(1) == 2


def test_a_policy_edited_to_a_shadow_mid_switch_never_mirrors_to_the_live_revision() -> None:
    """Found by the fuzz: a blue-green at post-switch (r2 at 100%) whose policy becomes a
    shadow holds the split in effect, and must not also mirror to r2."""
    from tests.unit.test_engine_kit import BLUE_GREEN, SHADOW_STOP

    w = promoted_world(make_policy(BLUE_GREEN))
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.weights() == {2: 100})
    w.policy = make_policy(SHADOW_STOP)
    w.step(1)  # World.step checks: no mirror to a revision with live weight
    assert w.weights() == {2: 100} and w.mirror() == (None, 0)
