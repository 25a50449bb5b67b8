"""The crash soak's invariant checks (bench/_soak_checks.py) on hand-made histories: each
check flags what it must and stays quiet on a clean history, so a soak that reports zero
violations is not a checker that cannot see any."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _soak_checks import (
    EntryCache,
    ReleaseVersion,
    SoakAction,
    check_decisions,
    check_promotions,
    check_routes,
    check_traffic,
    deployment_version,
    release_version,
    route_version,
    service_version,
)

R = "soak-0"
T = "2026-01-01T00:00:{:02d}.000000Z"


def host(revision: int) -> str:
    """The host of a revision's own Service, as the router writes it."""
    return f"{R}-r{revision}.soak.svc.cluster.local"


def vs(rv: int, *weights: tuple[int, int], mirror: int = 0) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": "rewind",
        "route": [{"destination": {"host": host(r)}, "weight": w} for r, w in weights],
    }
    if mirror:
        route["mirror"] = {"host": host(mirror)}
        route["mirrorPercentage"] = {"value": 50.0}
    return {"metadata": {"name": R, "resourceVersion": str(rv)}, "spec": {"http": [route]}}


def svc(rv: int, revision: int | None) -> dict[str, Any]:
    """A revision's own Service (None: the umbrella Service, no revision label)."""
    labels = {"rewind.dev/release": R}
    if revision is not None:
        labels["rewind.dev/revision"] = str(revision)
    name = R if revision is None else f"{R}-r{revision}"
    return {"metadata": {"name": name, "resourceVersion": str(rv), "labels": labels}}


def _services(*raw: tuple[dict[str, Any], bool]) -> list[Any]:
    return [s for s in (service_version(r, deleted) for r, deleted in raw) if s is not None]


def dep(rv: int, revision: int, replicas: int, ready: int) -> dict[str, Any]:
    return {"metadata": {"name": f"{R}-r{revision}", "resourceVersion": str(rv),
                         "labels": {"rewind.dev/release": R,
                                    "rewind.dev/revision": str(revision)}},
            "spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


def entry(second: int, type_: str, revision: int, user: str = "", message: str = "") -> dict[
        str, Any]:
    return {"at": T.format(second), "type": type_, "revision": revision,
            "message": message or type_, "user": user}


class History:
    """Versions of one ModelRelease, each from the previous one with some fields changed."""

    def __init__(self) -> None:
        self.cache = EntryCache()
        self.status: dict[str, Any] = {"phase": "Promoted", "stableRevision": 1,
                                       "currentRevision": 1, "timeline": [], "history": [
                                           {"revision": 1, "outcome": "Promoted",
                                            "modelVersion": "1.0.0", "promotedAt": T.format(0)}]}
        self.annotations: dict[str, str] = {}
        self.versions: list[ReleaseVersion] = []
        self.rv = 0

    def add(self, *entries: dict[str, Any], **fields: Any) -> History:
        self.status.update(fields)
        self.status["timeline"] = [*self.status["timeline"], *entries]
        self.rv += 1
        obj = {"metadata": {"name": R, "resourceVersion": str(self.rv),
                            "annotations": dict(self.annotations)},
               "status": dict(self.status)}
        self.versions.append(release_version(obj, self.cache))
        return self

    def revision(self, n: int, model: str, outcome: str = "Progressing") -> None:
        rows = [h for h in self.status["history"] if h["revision"] != n]
        self.status["history"] = [*rows, {"revision": n, "outcome": outcome,
                                          "modelVersion": model}]


def final_stage(_release: str, model: str) -> tuple[int, bool] | None:
    return {"2.0.0": (2, False), "3.0.0": (2, True)}.get(model)


def rollout(h: History, *, last_round: str = "Pass", round_at_final: bool = True) -> None:
    """r2 (policy with 2 stages) through its stages, then Promoted."""
    h.revision(2, "2.0.0")
    h.add(entry(1, "RevisionCreated", 2), phase="Progressing", candidateRevision=2,
          currentRevision=2, currentStep=0, stepStartedAt=T.format(1))
    h.add(phase="Progressing", currentStep=1, stepStartedAt=T.format(2),
          analysis={"lastRunAt": T.format(3), "measurements": [
              {"revision": 2, "verdict": "Pass", "at": T.format(3)}]})
    h.add(phase="Progressing", currentStep=2, stepStartedAt=T.format(4))
    if round_at_final:
        h.add(analysis={"lastRunAt": T.format(5), "measurements": [
            {"revision": 2, "verdict": last_round, "at": T.format(5)}]})
    h.add(phase="Promoting")
    h.revision(2, "2.0.0", "Promoted")
    h.add(entry(7, "Promoted", 2), phase="Promoted", stableRevision=2, candidateRevision=0,
          currentStep=0, stepStartedAt=None)


# -- (1) ---------------------------------------------------------------------------------------


def test_routes_must_sum_to_100_and_reach_existing_revisions() -> None:
    deployments = [deployment_version(dep(1, 1, 1, 1)), deployment_version(dep(2, 2, 1, 1))]
    services = _services((svc(3, None), False), (svc(3, 1), False), (svc(3, 2), False))
    good = [route_version(vs(4, (1, 80), (2, 20)))]
    found = [d for d in deployments if d is not None]
    assert check_routes(good, services, found, []) == []
    bad = [route_version(vs(5, (1, 80), (2, 30))), route_version(vs(6, (1, 50), (3, 50))),
           route_version(vs(7, (1, 100), mirror=4))]
    messages = [v.message for v in check_routes(bad, services, found, [])]
    assert any("summing to 110" in m for m in messages), messages
    assert any("r3, which has no Deployment" in m for m in messages), messages
    assert any("r4, which has no Deployment" in m for m in messages), messages
    only_one = _services((svc(3, 1), False))
    messages = [v.message for v in check_routes(good, only_one, found, [])]
    assert messages == [f"VirtualService {R} at rv 4 routes to r2, which has no Service"]
    # A revision's Service deleted before the route still naming it.
    gone = _services((svc(2, 1), False), (svc(2, 2), False), (svc(3, 2), True))
    messages = [v.message for v in check_routes(good, gone, found, [])]
    assert messages == [f"VirtualService {R} at rv 4 routes to r2, which has no Service"]


def test_a_destination_is_a_revision_only_by_its_own_service_host() -> None:
    """A subset (no DestinationRule defines one), the umbrella Service or another release's
    revision is no revision of this release: routed to nothing."""
    routes = {"name": "rewind", "route": [
        {"destination": {"host": "soak-0-r2"}, "weight": 40},  # short host: r2
        {"destination": {"host": host(1), "subset": "r1"}, "weight": 20},
        {"destination": {"host": f"{R}.soak.svc.cluster.local"}, "weight": 20},
        {"destination": {"host": "soak-00-r1.soak.svc.cluster.local"}, "weight": 10},
        {"destination": {"host": f"{R}-r01"}, "weight": 10},
    ]}
    record = route_version({"metadata": {"name": R, "resourceVersion": "1"},
                            "spec": {"http": [routes]}})
    assert record.weights == ((2, 40), (0, 20), (0, 20), (0, 10), (0, 10))


# -- (2) ---------------------------------------------------------------------------------------


def _deps(*raw: dict[str, Any]) -> list[Any]:
    return [d for d in (deployment_version(r) for r in raw) if d is not None]


def test_traffic_only_moves_onto_revisions_with_ready_pods() -> None:
    h = History().add()
    clean = check_traffic([route_version(vs(5, (1, 100))), route_version(vs(9, (1, 80), (2, 20)))],
                          _deps(dep(1, 1, 1, 1), dep(6, 2, 1, 0), dep(8, 2, 1, 1)), h.versions)
    assert clean.violations == [] and clean.exemptions == 0
    early = check_traffic([route_version(vs(5, (1, 100))), route_version(vs(7, (1, 80), (2, 20)))],
                          _deps(dep(1, 1, 1, 1), dep(6, 2, 1, 0), dep(8, 2, 1, 1)), h.versions)
    assert [v.message for v in early.violations] == [
        f"VirtualService {R} at rv 7 moves traffic onto r2 (0% -> 20%), whose Deployment has "
        "0 ready of 1 replicas"]


def test_traffic_must_leave_a_revision_before_it_is_scaled_down() -> None:
    h = History().add()
    report = check_traffic(
        [route_version(vs(5, (1, 80), (2, 20))), route_version(vs(9, (1, 100)))],
        _deps(dep(1, 1, 1, 1), dep(2, 2, 1, 1), dep(7, 2, 0, 1)), h.versions)
    assert [v.message for v in report.violations] == [
        f"at rv 7 the Deployment of {R} r2 has 1 ready of 0 replicas while the "
        "VirtualService sends it 20%"]


def test_a_stable_that_loses_its_pods_keeps_its_traffic_exempt_but_counted() -> None:
    h = History().add()  # stable r1
    report = check_traffic([route_version(vs(5, (1, 100)))],
                           _deps(dep(1, 1, 1, 1), dep(7, 1, 1, 0)), h.versions)
    assert report.violations == [] and report.exemptions == 1
    scaled = check_traffic([route_version(vs(5, (1, 100)))],
                           _deps(dep(1, 1, 1, 1), dep(7, 1, 0, 0)), h.versions)
    assert len(scaled.violations) == 1, "scaling the stable down is never exempt"


# -- (3) ---------------------------------------------------------------------------------------


def test_promotion_needs_a_passing_round_at_the_final_stage() -> None:
    ok = History()
    rollout(ok)
    assert check_promotions(ok.versions, final_stage) == []
    failed = History()
    rollout(failed, last_round="Fail")
    assert ["did not pass" in v.message for v in check_promotions(failed.versions,
                                                                  final_stage)] == [True]
    missing = History()
    rollout(missing, round_at_final=False)
    assert ["no analysis round" in v.message for v in check_promotions(missing.versions,
                                                                       final_stage)] == [True]


def test_a_first_release_and_a_manual_gate_passed_by_a_human_need_no_round() -> None:
    first = History()
    first.status.update(stableRevision=0, history=[])
    first.revision(1, "1.0.0", "Promoted")
    first.add(phase="Progressing", candidateRevision=1, currentStep=0)
    first.add(entry(1, "Promoted", 1), phase="Promoted", stableRevision=1, candidateRevision=0)
    assert check_promotions(first.versions, final_stage) == []

    def gate(h: History, promote: bool) -> None:
        h.revision(3, "3.0.0")
        h.add(entry(1, "RevisionCreated", 3), phase="Progressing", candidateRevision=3,
              currentStep=1, stepStartedAt=T.format(1))
        h.add(phase="Paused", currentStep=2, stepStartedAt=T.format(2))
        if promote:
            h.add(entry(3, "PromoteRequested", 3, user="soak-1"), phase="Promoting")
        h.revision(3, "3.0.0", "Promoted")
        h.add(entry(4, "Promoted", 3), phase="Promoted", stableRevision=3, candidateRevision=0)

    human = History()
    gate(human, promote=True)
    assert check_promotions(human.versions, final_stage) == []
    nobody = History()
    gate(nobody, promote=False)
    assert ["without a human promote" in v.message
            for v in check_promotions(nobody.versions, final_stage)] == [True]


# -- (4) ---------------------------------------------------------------------------------------


def approvers(_release: str, _model: str) -> int:
    return 2


def test_each_soak_action_is_acted_on_exactly_once() -> None:
    h = History()
    h.add(entry(1, "BreakGlassRollback", 1, user="soak-1"),
          entry(2, "Approved", 1, user="soak-2"), entry(3, "Approved", 1, user="soak-2"),
          entry(4, "ActionIgnored", 1, user="soak-3"))
    actions = [SoakAction(R, "soak-1", "rewind.dev/rollback", frozenset({"BreakGlassRollback"})),
               SoakAction(R, "soak-2", "rewind.dev/approve-rollback", frozenset({"Approved"})),
               SoakAction(R, "soak-3", "rewind.dev/retry", frozenset({"Retry"})),
               SoakAction(R, "soak-4", "rewind.dev/promote", frozenset({"PromoteRequested"}))]
    messages = [v.message for v in check_decisions(h.versions, actions, approvers)]
    assert len(messages) == 4, messages
    assert any("by soak-2" in m and "taken twice" in m for m in messages), messages
    assert any("by soak-3 gave ActionIgnored" in m for m in messages), messages
    assert any("by soak-4" in m and "a decision was lost" in m for m in messages), messages
    assert f"{R} r1: soak-2 approved twice in one decision" in messages
    # The same approver twice is two actions: Approved, then ActionIgnored (counts once).
    twice = History()
    twice.add(entry(1, "Approved", 1, user="a"), entry(2, "ActionIgnored", 1, user="a"))
    again = [SoakAction(R, "a", "rewind.dev/approve-rollback", frozenset({"Approved"})),
             SoakAction(R, "a", "rewind.dev/approve-rollback", frozenset({"ActionIgnored"}))]
    assert check_decisions(twice.versions, again, approvers) == []


def test_every_rollback_is_started_once_and_finished_once() -> None:
    ok = History()
    ok.revision(2, "2.0.0")
    ok.add(entry(1, "RevisionCreated", 2), phase="Progressing", candidateRevision=2)
    ok.add(entry(2, "RollbackDecided", 2), entry(2, "RollbackStarted", 2), phase="RollingBack")
    ok.add(entry(3, "RolledBack", 2), phase="RolledBack")
    assert check_decisions(ok.versions, [], approvers) == []

    silent = History()
    silent.revision(2, "2.0.0")
    silent.add(entry(1, "RevisionCreated", 2), phase="Progressing", candidateRevision=2)
    silent.add(phase="RollingBack")
    silent.add(entry(3, "RolledBack", 2), phase="RolledBack")
    messages = [v.message for v in check_decisions(silent.versions, [], approvers)]
    assert any("entered RollingBack" in m and "0 new RollbackStarted" in m for m in messages)
    assert any("without a RollbackStarted" in m for m in messages), messages

    twice = History()
    twice.revision(2, "2.0.0")
    twice.add(entry(1, "RevisionCreated", 2), phase="Progressing", candidateRevision=2)
    twice.add(entry(2, "RollbackStarted", 2), phase="RollingBack")
    twice.add(entry(3, "RolledBack", 2), phase="RolledBack")
    twice.add(entry(4, "RollbackStarted", 2), entry(4, "RolledBack", 2), phase="RolledBack")
    messages = [v.message for v in check_decisions(twice.versions, [], approvers)]
    assert any("2 RollbackStarted entries in one attempt" in m for m in messages), messages
    assert any("2 RolledBack entries in one attempt" in m for m in messages), messages


def test_never_two_promotions_in_a_row_nor_a_rollback_short_of_approvers() -> None:
    h = History()
    h.add(entry(1, "Promoted", 2), entry(2, "Promoted", 2))
    messages = [v.message for v in check_decisions(h.versions, [], approvers)]
    assert any("two Promoted entries in a row" in m for m in messages), messages
    short = History()
    short.revision(2, "2.0.0")
    short.add(entry(1, "RevisionCreated", 2), phase="Progressing", candidateRevision=2)
    short.add(entry(2, "ApprovalRequested", 2), phase="AwaitingApproval")
    short.add(entry(3, "Approved", 2, user="a"),
              entry(3, "RollbackStarted", 2, message="rolling back: rollback approved by a"),
              phase="RollingBack")
    messages = [v.message for v in check_decisions(short.versions, [], approvers)]
    assert any("1 distinct approvers, 2 required" in m for m in messages), messages


def test_a_release_version_counts_ledger_entries_not_seen_gone_and_the_newest() -> None:
    """The ledger keeps entries seen gone (that is how a value that comes back is known):
    the soak's end waits for none pending, not for an empty ledger; a consumption shows as
    a newer entry even when the bounded ledger drops one for it."""
    ledger = [
        {"key": "rewind.dev/promote", "value": "true", "user": "a", "at": T.format(1),
         "goneAt": T.format(2)},
        {"key": "rewind.dev/retry", "value": "true", "user": "b", "at": T.format(3)},
    ]
    record = release_version({"metadata": {"name": R, "resourceVersion": "1"},
                              "status": {"consumedActions": ledger}}, EntryCache())
    assert (record.pending, record.last_consumed) == (1, T.format(3))
    empty = release_version({"metadata": {"name": R, "resourceVersion": "2"}, "status": {}},
                            EntryCache())
    assert (empty.pending, empty.last_consumed) == (0, "")
