"""Property-based tests of the pure engine (issue 11, "fuzzed engine").

Hypothesis drives ``decide`` through ``World`` (tests/unit/test_engine_kit.py) with random
sequences of clock jumps, analysis verdicts, human annotations (good and bad values, several
users, removals that get lost), spec changes (including reverts to an earlier spec), policy
edits and deletions, workloads that lose pods or vanish, route writes refused, conflicting or
edited by hand, and crashes between the status write and the actions (either half lost).
After every decision, besides everything ``World`` checks (``check_invariants``: one route
write summing to 100, bounded lists, action order, exactly one of Ready / Reconciling /
Stalled, ...; ``check_idempotent``: deciding again changes nothing):

- no exception, and the status is valid against the CRD's own schema (crds/*.yaml);
- the weights in effect sum to 100 whenever there are routes;
- live traffic never moves onto a revision that is not Available (the stable excepted);
- no revision leaves its stages for promotion without a passing analysis round at the last
  analysed stage (unless a human passed a manual gate, or the policy has no metrics);
- no decision is taken twice: each annotation a human set acts at most once.

``REWIND_FUZZ_EXAMPLES`` sets the number of examples. CI runs 10,000 derandomized (the
same examples every run, so main stays green for a reason); any other number explores new
random examples each run, e.g. a bench run:
``REWIND_FUZZ_EXAMPLES=200000 .venv/bin/pytest tests/unit/test_engine_fuzz.py``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewind.api import ModelReleaseStatus, Phase
from rewind.engine import (
    ANNOTATION_OF,
    ActionKind,
    HumanAction,
    RouteProblem,
    SetRoutes,
    decide,
)
from rewind.engine_plan import StageKind
from tests.unit.test_engine_kit import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    STRATEGIES,
    World,
    check_invariants,
    make_policy,
    make_spec,
    meas,
    new_timeline,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("REWIND_FUZZ_EXAMPLES", "10000"))
#: The CI run is deterministic; a bench run (another count) explores.
DERANDOMIZE = "REWIND_FUZZ_EXAMPLES" not in os.environ


def _status_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema of status, as JSON Schema (nullable -> a null type)."""
    crd = yaml.safe_load((ROOT / "crds" / "modelreleases.rewind.dev.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: convert(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
            if out.pop("nullable", False) and "type" in out:
                out["type"] = [out["type"], "null"]
            return out
        if isinstance(node, list):
            return [convert(v) for v in node]
        return node

    converted: dict[str, Any] = convert(schema)
    return converted


STATUS_VALIDATOR = jsonschema.Draft7Validator(_status_schema())

#: The timeline entry each action writes when it is acted on (not ignored).
ACTED = {
    "rollback": "BreakGlassRollback",
    "approve-rollback": "Approved",
    "reject-rollback": "Rejected",
    "promote": "PromoteRequested",
    "retry": "Retry",
}
KINDS: tuple[ActionKind, ...] = ("rollback", "approve-rollback", "reject-rollback", "promote",
                                 "retry")
VALUES = ("true", "TRUE", " true ", "false", "", "bad answers", "x" * 300)
USERS = ("", "alice", "bob")
VERSIONS = ("1.0.0", "2.0.0", "3.0.0", "4.0.0")
POLICIES = (*sorted(STRATEGIES), "none")
VERDICTS = {"pass": PASS, "fail": FAIL, "inconclusive": INCONCLUSIVE}

Event = tuple[Any, ...]
events: st.SearchStrategy[Event] = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from((0, 1, 2, 5, 10, 10, 30, 60, 300, 3600))),
    st.tuples(st.just("verdict"), st.sampled_from(("pass", "pass", "fail", "inconclusive",
                                                   "none"))),
    st.tuples(st.just("annotate"), st.sampled_from(KINDS), st.sampled_from(VALUES),
              st.sampled_from(USERS)),
    st.tuples(st.just("spec"), st.sampled_from(VERSIONS), st.booleans()),
    st.tuples(st.just("policy"), st.sampled_from(POLICIES), st.sampled_from((1, 2)),
              st.booleans()),
    st.tuples(st.just("deploy"), st.sampled_from(("break", "degrade", "heal", "delete")),
              st.integers(1, 5)),
    st.tuples(st.just("routes"), st.sampled_from(("refuse", "accept", "conflict", "clear",
                                                  "edit", "drift"))),
    st.tuples(st.just("removals"), st.booleans()),
    st.tuples(st.just("crash"), st.sampled_from(("status-lost", "actions-lost"))),
    st.tuples(st.just("ready_after"), st.sampled_from((0.0, 5.0, 30.0))),
    # Artifact integrity: the policy verifies (or not); a revision's store is tampered with
    # (or put right); a verification takes this long.
    st.tuples(st.just("integrity"), st.booleans()),
    st.tuples(st.just("tamper"), st.integers(1, 4), st.booleans()),
    st.tuples(st.just("verify_seconds"), st.sampled_from((0.0, 15.0, 120.0))),
)


@dataclass
class Harness:
    """A World plus what the properties need to remember across decisions."""

    w: World
    verdict: str = "pass"
    #: annotation key -> id of the value a human last set (a new id per set)
    set_ids: dict[str, int] = field(default_factory=dict)
    acted: set[int] = field(default_factory=set)
    next_id: int = 0
    integrity: bool = False
    last_policy: tuple[str, int, bool] | None = None

    def policy_for(self, name: str, failure_limit: int, approval: bool) -> None:
        if name == "none":
            self.w.policy = None
            self.w.policy_error = "RolloutPolicy 'p' not found"
            return
        self.w.policy = make_policy(
            STRATEGIES[name],
            failure_limit=failure_limit,
            approval={"requiredApprovers": 2, "timeout": "10m"} if approval else None,
            keep_previous_warm="2m",
            progress_deadline="3m",
            integrity={"reverifyAfter": "30m", "timeout": "5m"} if self.integrity else None,
        )
        self.w.policy_error = None
        self.last_policy = (name, failure_limit, approval)

    def verdicts(self, _rev: int, _now: Any) -> Any:
        return VERDICTS.get(self.verdict, PASS)

    # -- one event ---------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        w = self.w
        kind = event[0]
        if kind == "tick":
            self.reconcile(event[1])
        elif kind == "verdict":
            self.verdict = event[1]
            w.verdicts = self.verdicts
        elif kind == "annotate":
            _, action, value, user = event
            w.annotate(action, value, user)
            self.next_id += 1
            self.set_ids[ANNOTATION_OF[action]] = self.next_id
            self.reconcile(0)
        elif kind == "spec":
            _, version, tag_only = event
            image = "registry.example.com/fraud:latest" if tag_only else None
            w.spec = make_spec(version, image=image, allow_tag_image=tag_only)
            w.generation += 1
            self.reconcile(0)
        elif kind == "policy":
            self.policy_for(event[1], event[2], event[3])
            self.reconcile(0)
        elif kind == "deploy":
            _, what, rev = event
            if what == "break":
                w.broken.add(rev)
            elif what == "degrade":
                w.degraded.add(rev)
            elif what == "heal":
                w.broken.discard(rev)
                w.degraded.discard(rev)
            else:
                w.deployments.pop(rev, None)
        elif kind == "routes":
            self.route_fault(event[1])
        elif kind == "removals":
            w.lose_removals = event[1]
        elif kind == "crash":
            self.crash(event[1])
        elif kind == "ready_after":
            w.ready_after = event[1]
        elif kind == "integrity":
            self.integrity = event[1]
            self.policy_for(*(self.last_policy or (sorted(STRATEGIES)[0], 1, False)))
            self.reconcile(0)
        elif kind == "tamper":
            _, rev, bad = event
            if bad:
                w.tampered[rev] = f"r{rev}/model.onnx has digest sha256:ffff"
            else:
                w.tampered.pop(rev, None)
        elif kind == "verify_seconds":
            w.verify_seconds = event[1]

    def route_fault(self, fault: str) -> None:
        w = self.w
        if fault == "refuse":
            w.refuse_routes = "VirtualService risk/fraud was refused: frozen"
        elif fault == "accept":
            w.refuse_routes = None
            w.refused = None
        elif fault == "conflict":
            w.route_problems = (RouteProblem("Conflict", "VirtualService other/x claims it"),)
        elif fault == "clear":
            w.route_problems = ()
        elif fault == "drift":
            w.route_problems = (RouteProblem("Drift", "edited outside Rewind (timeout)"),)
        elif fault == "edit" and w.routes is not None:
            # A hand edit of the weights: everything to the lowest revision routed.
            rev = min(w.routes.weights)
            if w.deployments.get(rev) is not None:
                w.routes = SetRoutes({rev: 100}, None, 0)

    def crash(self, kind: str) -> None:
        """A decision half done: its actions without its status, or the reverse."""
        w = self.w
        inp = w.inputs(None, list(w.annotations.values()))
        d = decide(inp)
        check_invariants(inp, d)
        self.check(inp.status, d.status, inp.revisions, before_routes=w.weights())
        if kind == "status-lost":
            w.apply(d)
        else:
            w.status = d.status

    # -- one reconcile, and the properties --------------------------------------------

    def reconcile(self, advance: float) -> None:
        w = self.w
        before, observed, weights = w.status, w.observe(), w.weights()
        d = w.step(advance)
        after = {r: o for r, o in w.observe().items() if o.available}
        self.check(before, d.status, {**observed, **after}, before_routes=weights)

    def check(self, before: ModelReleaseStatus, s: ModelReleaseStatus,
              observed: Mapping[int, Any], *, before_routes: dict[int, int]) -> None:
        w = self.w
        doc = s.model_dump(mode="json", by_alias=True, exclude_none=True)
        errors = sorted(STATUS_VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:3]]
        if w.routes is not None:
            assert sum(w.routes.weights.values()) == 100, w.routes
            for rev, weight in w.routes.weights.items():
                if weight > before_routes.get(rev, 0) and rev != s.stable_revision:
                    o = observed.get(rev)
                    assert o is not None and o.available, (rev, s.phase, s.message)
                if weight > before_routes.get(rev, 0) and w.policy is not None and (
                    w.policy.integrity is not None
                ):
                    # More users only for a revision whose artifact verified.
                    e = next((h for h in s.history if h.revision == rev), None)
                    verdict = e.integrity.verdict if e and e.integrity else None
                    assert verdict == "Verified", (rev, verdict, s.phase, s.message)
        fresh = new_timeline(before, s)
        self.check_analysis_before_promotion(before, s, fresh)
        self.check_once(fresh)

    def check_analysis_before_promotion(
        self, before: ModelReleaseStatus, s: ModelReleaseStatus, fresh: list[Any]
    ) -> None:
        """Leaving the stages for promotion needs a passing round at an analysed last
        stage, unless a human passed a manual gate in this decision."""
        rolling = (Phase.PROGRESSING, Phase.PAUSED)
        left = before.phase in rolling and s.phase in (Phase.PROMOTING, Phase.PROMOTED)
        cand = before.candidate_revision
        policy = self.w.policy
        if not left or not cand or not before.stable_revision or policy is None:
            return
        # Only the candidate's own promotion counts: not a restore of another revision on a
        # Git revert (the candidate is superseded), nor a shadow that passed and stopped.
        promoting = (
            s.phase == Phase.PROMOTING and s.candidate_revision == cand and not s.restoring
        )
        promoted = s.phase == Phase.PROMOTED and s.stable_revision == cand
        if not (promoting or promoted):
            return
        if any(e.type == "PromoteRequested" for e in fresh):
            return
        from rewind.engine import plan_for

        stage = plan_for(before, policy).stage(before.current_step)
        if not stage.analysed or stage.kind == StageKind.READY:
            return
        rounds = [m for m in s.analysis.measurements if m.revision == cand]
        assert rounds, f"r{cand} left {stage.label} with no analysis"
        last = max(m.at for m in rounds if m.at is not None)
        assert all(m.verdict == PASS for m in rounds if m.at == last), rounds

    def check_once(self, fresh: list[Any]) -> None:
        """Each annotation a human set acts at most once (its entry names its user)."""
        for e in fresh:
            kinds = [k for k, t in ACTED.items() if t == e.type]
            if not kinds:
                continue
            key = ANNOTATION_OF[kinds[0]]
            ident = self.set_ids.get(key)
            assert ident is not None, f"{e.type} with no annotation set: {e.message}"
            if e.type == "Approved":
                continue  # N-of-M: each approver once, checked by the engine tests
            assert ident not in self.acted, f"{e.type} acted twice on the same annotation"
            self.acted.add(ident)


@pytest.mark.timeout(max(900, EXAMPLES // 10))  # about 10 ms an example on a quiet machine
@settings(
    max_examples=EXAMPLES,
    derandomize=DERANDOMIZE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    start=st.sampled_from(sorted(STRATEGIES)),
    script=st.lists(events, min_size=1, max_size=14),
)
def test_random_histories_keep_every_invariant(start: str, script: list[Event]) -> None:
    h = Harness(World(make_policy(STRATEGIES[start])))
    h.w.verdicts = h.verdicts
    h.reconcile(0)
    for event in script:
        h.apply(event)
    h.reconcile(10)


def test_the_schema_validator_refuses_what_the_api_server_would() -> None:
    """The fuzz's schema check is real: an out-of-range weight or an unknown phase fails."""
    good = ModelReleaseStatus().model_dump(mode="json", by_alias=True, exclude_none=True)
    assert not list(STATUS_VALIDATOR.iter_errors(good))
    bad = copy.deepcopy(good)
    bad["weights"] = {"stable": 150, "candidate": 0}
    assert list(STATUS_VALIDATOR.iter_errors(bad))
    bad = copy.deepcopy(good)
    bad["phase"] = "Exploded"
    assert list(STATUS_VALIDATOR.iter_errors(bad))


def test_the_harness_catches_a_decision_taken_twice() -> None:
    """A break glass acted on twice for one annotation is reported."""
    h = Harness(World(make_policy()))
    h.set_ids["rewind.dev/rollback"] = 1
    entry = type("E", (), {"type": "BreakGlassRollback", "message": "m"})()
    h.check_once([entry])
    try:
        h.check_once([entry])
    except AssertionError as err:
        assert "twice" in str(err)
    else:
        raise AssertionError("a second act on the same annotation was not caught")


def test_the_harness_catches_traffic_onto_an_unavailable_revision() -> None:
    h = Harness(World(make_policy()))
    h.reconcile(0)
    h.reconcile(10)
    w = h.w
    w.routes = SetRoutes({1: 50, 9: 50}, None, 0)
    try:
        h.check(w.status, w.status, {}, before_routes={1: 100})
    except AssertionError:
        return
    raise AssertionError("50% onto r9, which does not exist, was not caught")


_ = (timedelta, HumanAction, meas)
