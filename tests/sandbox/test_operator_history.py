"""Revision history outlives the ModelRelease (project issue 11, item 7), end to end: real
API server and garbage collector, kwok nodes, the real `rewind-operator` process, gauges
the test sets for the analysis.

The issue's input exactly: r1 Promoted, r2 fails its analysis and is rolled back, Git still
says r2; the ModelRelease is deleted (`kubectl delete`) and the same manifest applied again.
Before records outlived the object, the new object's empty status made r2's spec "r1, first
release", promoted to 100% as soon as it was Available, with no analysis. Also: the
retention sweep deletes the records of a deleted release, and forgetting them on purpose.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.sandbox.operator_helpers import (
    BROKEN,
    HEALTHY,
    Recorder,
    Rewind,
    Routes,
    assert_holds,
    canary,
    condition,
    history,
    outcomes,
    parse_time,
    policy_manifest,
    release_manifest,
    timeline,
    workload,
)

pytestmark = pytest.mark.sandbox

NAME = "churn"
POLICY = "churn-canary"
RETRY = "rewind.dev/retry"
FORGET = "rewind.dev/forget-history"


def snapshot(rw: Rewind, revision: int) -> dict[str, Any] | None:
    """The ControllerRevision <release>-r<N> (None: it does not exist)."""
    result = rw.kubectl("get", "controllerrevision", workload(NAME, revision), "-n",
                        rw.namespace, "-o", "json", check=False)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def record(rw: Rewind, revision: int) -> dict[str, Any] | None:
    """The history record on revision N's snapshot (None: no snapshot or no record)."""
    found = snapshot(rw, revision)
    text = ((found or {}).get("metadata", {}).get("annotations") or {}).get("rewind.dev/record")
    return json.loads(text) if text else None


def wait_recorded(rw: Rewind, revision: int, outcome: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        f"r{revision}'s record to say {outcome}",
        lambda: (r := record(rw, revision)) is not None and r["outcome"] == outcome and r,
        timeout=20,
    )
    return found


def delete_release(rw: Rewind) -> None:
    """`kubectl delete` the ModelRelease; wait for the garbage collector to take what it
    owned (Deployments, Services, routes)."""
    rw.kubectl("delete", "modelrelease", NAME, "-n", rw.namespace, "--timeout=30s")
    wait_for(
        "the deleted release's Deployments, Services and routes garbage-collected",
        lambda: rw.get("deployments,services", "-l", f"rewind.dev/release={NAME}")["items"]
        == [] and rw.routes(NAME) is None,
        timeout=30,
    )


def test_a_release_deleted_and_applied_again_comes_back_rolled_back_and_retries(
    rw: Rewind,
) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), scale_down_delay="2s"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    manifest = release_manifest(NAME, POLICY, version=2)
    rw.apply(manifest)
    before = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
    rw.wait_routes(NAME, {1: 100})
    assert outcomes(before) == {1: "Promoted", 2: "RolledBack"}
    # r2 scaled away (scaleDownDelay 2s): a later reconcile than the one that rolled back
    # has run, so that one has finished all its writes.
    rw.wait_replicas(NAME, 2, 0, timeout=20)
    old_uid = rw.release(NAME)["metadata"]["uid"]

    delete_release(rw)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(manifest)  # the same manifest: Git still says r2
        status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
        rw.wait_routes(NAME, {1: 100})
        # Well past the canary's pause and analysis interval: nothing else happens.
        assert_holds("RolledBack with all users on r1",
                     lambda: rw.status(NAME)["phase"] == "RolledBack"
                     and rw.routes(NAME) == Routes({1: 100}),
                     seconds=4)
    new_uid = rw.release(NAME)["metadata"]["uid"]
    assert new_uid != old_uid

    # It knows r2 was rolled back and r1 is the last known-good; r2 is still current.
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}
    assert (status["stableRevision"], status["currentRevision"]) == (1, 2)
    assert history(status, 2)["reason"] == history(before, 2)["reason"]
    assert history(status, 1)["promotedAt"] == history(before, 1)["promotedAt"]
    adopted = timeline(status, "HistoryAdopted")
    assert len(adopted) == 1, timeline(status)
    assert "adopted 2 recorded revision(s) from ControllerRevisions churn-r1, churn-r2" in (
        adopted[0]["message"]), adopted
    assert f"recorded by ModelRelease uid {old_uid}" in adopted[0]["message"]
    assert "last known-good r1; the spec is r2 (RolledBack)" in adopted[0]["message"]
    rw.event(NAME, type="Normal", reason="HistoryAdopted", contains="adopted 2 recorded")
    assert not timeline(status, "RevisionCreated")  # no new revision: r2 is known
    assert not timeline(status, "RollbackStarted")  # restoring is not a rollback
    assert status["message"].startswith("r2 rolled back; r1 serves 100%"), status["message"]

    # r2 never got users, nor even a Deployment; r1 got the routes only once Available.
    statuses = [s for _, s in rec.statuses(NAME)]
    assert {s.get("phase") for s in statuses} <= {None, "Pending", "RolledBack"}, rec.phases(NAME)
    assert all(s.get("stableRevision", 0) in (0, 1) for s in statuses)
    assert not rec.versions("deployments", workload(NAME, 2))
    routes = rec.routes(NAME)
    assert [r.weights for _, r in routes] == [{1: 100}], routes
    r1_up = rec.first_available(NAME, 1)
    assert r1_up is not None and routes[0][0] > r1_up, (routes, r1_up)
    # Where it came from: the records on the snapshots, which outlived the old object
    # and now belong to the new one.
    assert (record(rw, 2) or {}).get("reason") == history(before, 2)["reason"]
    assert (record(rw, 1) or {}).get("promotedAt") == history(before, 1)["promotedAt"]
    uids = {(snapshot(rw, n) or {})["metadata"]["annotations"]["rewind.dev/release-uid"]
            for n in (1, 2)}
    assert uids == {new_uid}  # claimed by the object that adopted them

    # rewind.dev/retry=true retries r2 through the normal analysis (now healthy).
    rw.set_error_rate(NAME, 2, HEALTHY)
    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.annotate(NAME, RETRY, "true")
        promoted = rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
        rw.wait_routes(NAME, {2: 100})
    assert [r.weights for _, r in rec.routes(NAME)] == [{1: 100}, {1: 50, 2: 50}, {2: 100}]
    assert sorted(h["revision"] for h in promoted["history"]) == [1, 2]
    measured = [m for m in promoted["analysis"]["measurements"] if m["revision"] == 2]
    assert measured and all(m["verdict"] == "Pass" for m in measured), measured
    retried = timeline(promoted, "Retry")
    assert len(retried) == 1 and "r2 starts again against stable r1" in retried[0]["message"]
    wait_recorded(rw, 2, "Promoted")


def test_a_new_spec_after_recreation_is_the_next_revision_against_the_known_good(
    rw: Rewind,
) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), scale_down_delay="2s"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
    rw.wait_replicas(NAME, 2, 0, timeout=20)  # a later reconcile ran: the records are written
    delete_release(rw)

    rw.set_error_rate(NAME, 3, HEALTHY)
    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=3))
        status = rw.wait_phase(NAME, "Promoted", stable=3, timeout=60)
        rw.wait_routes(NAME, {3: 100})
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack", 3: "Promoted"}
    created = [e for e in timeline(status, "RevisionCreated") if e["revision"] == 3]
    assert len(created) == 1 and "r3 (against stable r1)" in created[0]["message"]
    routes = rec.routes(NAME)
    weights = [r.weights for _, r in routes]
    # Stage Ready routes everyone to r1 if r1 is up before r3 is; then the canary step.
    assert weights[-2:] == [{1: 50, 3: 50}, {3: 100}], routes
    assert weights[:-2] in ([], [{1: 100}]), routes
    assert not rec.versions("deployments", workload(NAME, 2))
    r1_up = rec.first_available(NAME, 1)
    assert r1_up is not None and routes[0][0] > r1_up
    assert (snapshot(rw, 3) or {})["data"]["model"]["version"] == "3.0.0"


def test_the_retention_sweep_deletes_the_records_of_a_deleted_release(rw: Rewind) -> None:
    rw.operator.stop()
    rw.operator.start("--history-retention", "4s")
    rw.apply(policy_manifest(POLICY, canary((50, "2s"))))
    rw.promote_first_revision(NAME, POLICY)
    wait_recorded(rw, 1, "Promoted")
    # While the release lives, the records its status refers to stay, whatever their age.
    assert_holds("r1's snapshot stays while its release lives",
                 lambda: record(rw, 1) is not None, seconds=6)

    delete_release(rw)
    marked = wait_for(
        "r1's snapshot marked orphaned-at",
        lambda: ((snapshot(rw, 1) or {}).get("metadata", {}).get("annotations") or {}).get(
            "rewind.dev/orphaned-at"),
        timeout=15,
    )
    wait_for("r1's snapshot deleted by the sweep", lambda: snapshot(rw, 1) is None, timeout=20)
    gone_at = time.time()
    assert gone_at >= parse_time(marked).timestamp() + 4 - 1  # not before the retention

    # Applied again now, nothing is adopted: a first release.
    rw.apply(release_manifest(NAME, POLICY, version=2))
    status = rw.wait_phase(NAME, "Promoted", stable=1, timeout=40)
    assert not timeline(status, "HistoryAdopted")
    assert history(status, 1)["modelVersion"] == "2.0.0"


@pytest.mark.parametrize("how", ["annotation", "kubectl"])
def test_forgetting_a_deleted_release_on_purpose_starts_afresh(rw: Rewind, how: str) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s"))))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
    wait_recorded(rw, 2, "RolledBack")
    delete_release(rw)

    fresh = release_manifest(NAME, POLICY, version=3)  # another model under the same name
    if how == "annotation":
        fresh["metadata"]["annotations"] = {FORGET: "true"}
    else:
        rw.kubectl("delete", "controllerrevisions", "-n", rw.namespace, "-l",
                   f"rewind.dev/release={NAME}")
    rw.apply(fresh)
    status = rw.wait_phase(NAME, "Promoted", stable=1, timeout=40)
    rw.wait_routes(NAME, {1: 100})
    assert outcomes(status) == {1: "Promoted"}
    assert history(status, 1)["modelVersion"] == "3.0.0"
    assert not timeline(status, "HistoryAdopted")
    if how == "annotation":
        forgotten = timeline(status, "HistoryForgotten")
        assert len(forgotten) == 1 and "forgot 2 recorded revision(s)" in forgotten[0]["message"]
    assert (snapshot(rw, 1) or {})["data"]["model"]["version"] == "3.0.0"
    assert snapshot(rw, 2) is None
    wait_recorded(rw, 1, "Promoted")


def test_a_record_lost_to_a_crash_is_written_after_the_restart(rw: Rewind) -> None:
    """Records follow the status: an operator killed between the two writes leaves the
    record behind the status (never ahead of it), and writes it once it is back."""
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), scale_down_delay="2s"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    status = rw.kill_operator_when(
        NAME, "phase RolledBack", lambda s: s.get("phase") == "RolledBack",
        after=lambda: rw.apply(release_manifest(NAME, POLICY, version=2)),
    )
    # Whether or not the record write made it before the kill, make it lost: what an
    # operator killed between the status write and the record write leaves.
    lagging = {**history(status, 2), "outcome": "Progressing"}
    for key in ("finishedAt", "reason"):
        lagging.pop(key, None)
    rw.kubectl("annotate", "--overwrite", "-n", rw.namespace, "controllerrevision",
               workload(NAME, 2), f"rewind.dev/record={json.dumps(lagging)}")
    assert (record(rw, 2) or {}).get("outcome") == "Progressing"

    rw.operator.start()
    written = wait_recorded(rw, 2, "RolledBack")
    assert written == history(rw.status(NAME), 2)



HOLD = "rewind.test/hold"  # a finalizer that keeps an object the garbage collector deletes


def test_applied_again_before_the_garbage_collector_is_done_still_comes_back(
    rw: Rewind,
) -> None:
    """Argo CD re-creates at once: the old object's Deployment and routes may still exist,
    owned by the old uid (here held by a finalizer). They are not taken for the new
    object's: it waits, reporting why, and comes back once they are gone."""
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), scale_down_delay="2s"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    manifest = release_manifest(NAME, POLICY, version=2)
    rw.apply(manifest)
    rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
    rw.wait_replicas(NAME, 2, 0, timeout=20)
    held = [("deployment", workload(NAME, 1)), ("virtualservice", NAME)]
    for kind, name in held:
        rw.kubectl("patch", kind, name, "-n", rw.namespace, "--type=merge", "-p",
                   json.dumps({"metadata": {"finalizers": [HOLD]}}))

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.kubectl("delete", "modelrelease", NAME, "-n", rw.namespace, "--timeout=30s")
        wait_for("the old Deployment and VirtualService held while being deleted",
                 lambda: all(rw.get(kind, name)["metadata"].get("deletionTimestamp")
                             for kind, name in held), timeout=30)
        rw.apply(manifest)
        new_uid = rw.release(NAME)["metadata"]["uid"]
        stalled = rw.wait_status(NAME, "Stalled by the old objects",
                                 lambda s: condition(s, "Stalled").get("status") == "True")
        assert "deleted ModelRelease of the same name" in condition(stalled, "Stalled")[
            "message"] or "not owned" in condition(stalled, "Stalled")["message"], stalled
        assert_holds("Pending while the old objects exist",
                     lambda: rw.status(NAME).get("phase") == "Pending", seconds=3)
        for kind, name in held:
            rw.kubectl("patch", kind, name, "-n", rw.namespace, "--type=merge", "-p",
                       json.dumps({"metadata": {"finalizers": None}}))
        status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=60)
        rw.wait_routes(NAME, {1: 100})
    vs = rw.get("virtualservice", NAME)
    assert [ref["uid"] for ref in vs["metadata"]["ownerReferences"]] == [new_uid]
    deployment = rw.get("deployment", workload(NAME, 1))
    assert [ref["uid"] for ref in deployment["metadata"]["ownerReferences"]] == [new_uid]
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}
    assert all(2 not in r.weights for _, r in rec.routes(NAME)), rec.routes(NAME)
    phases = {s.get("phase") for _, s in rec.statuses(NAME) if s.get("stableRevision") != 2}
    assert phases <= {None, "Pending", "RolledBack"}, rec.phases(NAME)
