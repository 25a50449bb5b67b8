"""The operator end to end, as GitOps and real clusters use it (issue 11, items 4-7): a
rollback a ResourceQuota keeps from finishing, a git revert to a known-good spec, an action
annotation kept in Git that Argo CD's self-heal keeps putting back, and a first release with
gates. Real API server (ResourceQuota admission, quota controller), kwok nodes, Prometheus
and the real `rewind-operator` process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.sandbox.operator_helpers import (
    ANNOTATION_ROLLBACK,
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

NAME = "fraud"
POLICY = "fraud-canary"


def _with_memory(release: dict[str, Any], memory: str) -> dict[str, Any]:
    release["spec"]["serving"]["resources"] = {"requests": {"memory": memory}}
    return release


def test_a_rollback_a_resource_quota_keeps_from_finishing_is_superseded_by_the_fix(
    rw: Rewind,
) -> None:
    """r2 Promoted, r1 retired; a ResourceQuota now refuses r1's pods; break glass. The
    rollback stalls and says its ways out; the fix (a new spec) supersedes it, released
    against r2, which serves meanwhile. Nothing is ever routed to r1."""
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), keep_previous_warm="2s",
                             progress_deadline="8s"))
    rw.apply(_with_memory(release_manifest(NAME, POLICY, version=1), "256Mi"))
    rw.wait_phase(NAME, "Promoted", stable=1, timeout=40)
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.set_error_rate(NAME, 3, HEALTHY)
    rw.apply(_with_memory(release_manifest(NAME, POLICY, version=2), "64Mi"))
    rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
    rw.wait_replicas(NAME, 1, 0, timeout=30)  # retired
    wait_for("r1's pod gone", lambda: not rw.get(
        "pods", "-l", "rewind.dev/revision=1")["items"], timeout=30)

    # r1 asks for 256Mi; the namespace may now use 200Mi in all (r2 uses 64Mi).
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "memory"},
             "spec": {"hard": {"requests.memory": "200Mi"}}}
    rw.apply(quota)
    wait_for("the quota controller to count what runs", lambda: rw.get(
        "resourcequota", "memory").get("status", {}).get("used", {}).get("requests.memory")
        == "64Mi", timeout=30)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.annotate(NAME, ANNOTATION_ROLLBACK, "bad answers")
        rw.wait_phase(NAME, "RollingBack", stable=1, candidate=2, timeout=20)

        def refused() -> bool:
            items = rw.get("events", "--field-selector", "reason=FailedCreate")["items"]
            return any(e["involvedObject"]["name"].startswith(f"{workload(NAME, 1)}-")
                       and "exceeded quota" in e["message"] for e in items)

        wait_for("the quota to refuse r1's pod", refused, timeout=30)
        status = rw.wait_status(NAME, "the rollback stalled", lambda s: condition(
            s, "Stalled").get("reason") == "RollbackStalled", timeout=30)
        assert status["phase"] == "RollingBack"
        stalled = condition(status, "Stalled")["message"]
        for text in (stalled, status["message"]):
            assert "Ways out: fix what keeps r1 from becoming Available" in text
            assert "apply a new spec: it supersedes this rollback and is released against r2" \
                in text
        assert rw.routes(NAME) == Routes({2: 100})  # users stay on what serves

        # The fix: a new spec. The operator used to defer it "until the rollback is done".
        rw.apply(_with_memory(release_manifest(NAME, POLICY, version=3), "64Mi"))
        status = rw.wait_phase(NAME, "Promoted", stable=3, timeout=60)
        rw.wait_routes(NAME, {3: 100})
        rw.wait_replicas(NAME, 1, 0, timeout=30)

    assert all(1 not in r.weights for _, r in rec.routes(NAME)), rec.routes(NAME)
    assert [r.weights for _, r in rec.routes(NAME)][:2] == [{2: 100}, {2: 50, 3: 50}]
    assert rec.first_available(NAME, 1) is None
    abandoned = timeline(status, "RollbackAbandoned")
    assert len(abandoned) == 1 and "r2 keeps serving" in abandoned[0]["message"]
    created = [e for e in timeline(status, "RevisionCreated") if e["revision"] == 3]
    assert "against r2, which serves users but is not known-good" in created[0]["message"]
    assert outcomes(status) == {1: "Retired", 2: "RolledBack", 3: "Promoted"}
    assert "could not be restored" in history(status, 1)["reason"]
    assert condition(status, "Ready")["status"] == "True"
    rw.event(NAME, type="Warning", reason="RollbackAbandoned", contains="r2 keeps serving")


class SelfHeal:
    """Argo CD with selfHeal, as a loop: `kubectl apply` of the manifest in Git (which
    carries an action annotation) every half second, so whatever the operator removes is
    put back. ``version`` is the spec in Git; ``configured`` counts the applies that wrote."""

    def __init__(self, rw: Rewind, annotations: dict[str, str], version: int) -> None:
        self.rw, self.annotations, self.version = rw, annotations, version
        self.configured = 0
        self.applies = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def manifest(self) -> dict[str, Any]:
        release = release_manifest(NAME, POLICY, version=self.version)
        release["metadata"]["annotations"] = dict(self.annotations)
        return release

    def _run(self) -> None:
        while not self._stop.is_set():
            out = self.rw.kubectl("apply", "-n", self.rw.namespace, "-f", "-",
                                  input=json.dumps(self.manifest())).stdout
            self.applies += 1
            if "unchanged" not in out:
                self.configured += 1
            self._stop.wait(0.5)

    @contextmanager
    def running(self) -> Iterator[SelfHeal]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)


def _removals(rec: Recorder, key: str) -> int:
    """How often the annotation went from present to absent between stored versions."""
    count, before = 0, False
    for seen in rec.versions("modelreleases", NAME):
        present = key in (seen.obj["metadata"].get("annotations") or {})
        count += before and not present
        before = present
    return count


def test_a_break_glass_kept_in_git_never_rolls_back_the_next_release_and_never_loops(
    rw: Rewind,
) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), keep_previous_warm="5m"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.set_error_rate(NAME, 3, HEALTHY)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)

    git = SelfHeal(rw, {ANNOTATION_ROLLBACK: "bad answers"}, version=2)
    with Recorder(rw.sandbox, rw.namespace) as rec, git.running():
        status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=30)
        # Put back after the operator removed it: recognised, left on the object.
        status = rw.wait_status(NAME, "the value left on the object", lambda s: any(
            c.get("keep") and c["value"] == "bad answers" and not c.get("goneAt")
            for c in s.get("consumedActions", [])), timeout=30)
        wait_for("Argo CD to apply at least 10 times", lambda: git.applies >= 10, timeout=30)
        assert rw.release(NAME)["metadata"]["annotations"][ANNOTATION_ROLLBACK] == "bad answers"
        # The team commits the fix; the annotation is still in Git.
        git.version = 3
        rw.wait_phase(NAME, "Promoted", stable=3, timeout=60)
        rw.wait_routes(NAME, {3: 100})
        applies = git.applies

        def r3_serving() -> bool:
            return rw.status(NAME)["phase"] == "Promoted" and rw.routes(NAME) == Routes({3: 100})

        assert_holds("r3 promoted, serving 100%", r3_serving, 5)
        # Argo CD kept applying meanwhile (how often depends on the machine's load).
        wait_for("Argo CD to apply 5 more times", lambda: git.applies >= applies + 5,
                 timeout=30)
        assert r3_serving()
        removals = _removals(rec, ANNOTATION_ROLLBACK)

    status = rw.status(NAME)
    assert len(timeline(status, "BreakGlassRollback")) == 1
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack", 3: "Promoted"}
    # Nothing looped: the operator removed it once (at most twice, had Argo CD put it back
    # before the operator saw it gone), and Argo CD wrote only to put it back and for v3.
    assert 1 <= removals <= 2, removals
    assert git.configured <= removals + 2, (git.configured, removals)
    notes = [e for e in timeline(status, "ActionIgnored") if "bad answers" in e["message"]]
    assert len(notes) == 1 and "a reason acts once" in notes[0]["message"]


def test_a_git_revert_restores_the_retired_known_good_revision(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), keep_previous_warm="2s"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
    rw.wait_replicas(NAME, 1, 0, timeout=30)  # retired

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=1))  # git revert
        status = rw.wait_status(NAME, "r1 restored", lambda s: s.get("phase") == "Promoted"
                                and s.get("stableRevision") == 1, timeout=40)
        rw.wait_routes(NAME, {1: 100})

    assert status["currentRevision"] == 1 and [h["revision"] for h in status["history"]] == [1, 2]
    assert [r.weights for _, r in rec.routes(NAME)] == [{2: 100}, {1: 100}]  # one switch
    # Routed only once r1 was Available again (scaled up from its snapshot).
    available = rec.first_available(NAME, 1)
    switched = next(rv for rv, r in rec.routes(NAME) if r.weights == {1: 100})
    assert available is not None and available < switched
    started = timeline(status, "RestoreStarted")
    assert len(started) == 1 and "the spec equals r1's" in started[0]["message"]
    restored = timeline(status, "Restored")
    assert len(restored) == 1 and restored[0]["message"].startswith("r1 restored")
    assert history(status, 1)["outcome"] == "Promoted"
    assert parse_time(history(status, 1)["promotedAt"]) >= parse_time(started[0]["at"])
    assert condition(status, "Ready")["status"] == "True"
    rw.event(NAME, type="Normal", reason="Restored", contains="r1 restored")


def test_a_first_release_runs_its_gates_before_it_takes_traffic(rw: Rewind) -> None:
    """firstRelease left to its default (Gates): the first revision is analysed at 0%, on
    what reaches its own Service (smoke tests: here the gauge), before any route; one that
    nothing reaches holds until a human vouches for it."""
    rw.apply(policy_manifest(POLICY, canary((50, "3s")), first_release=None))
    rw.set_error_rate(NAME, 1, HEALTHY)  # the smoke tests' result
    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=1))
        status = rw.wait_phase(NAME, "Promoted", stable=1, timeout=40)
        rw.wait_routes(NAME, {1: 100})
    preview = [e for e in timeline(status, "StepStarted") if "first release preview" in
               e["message"]]
    assert len(preview) == 1
    promoted = timeline(status, "Promoted")[-1]
    assert (parse_time(promoted["at"]) - parse_time(preview[0]["at"])).total_seconds() >= 3
    measured = [m for m in status["analysis"]["measurements"] if m["revision"] == 1]
    assert measured and all(m["verdict"] == "Pass" for m in measured)
    available = rec.first_available(NAME, 1)
    routes = rec.routes(NAME)
    assert [r.weights for _, r in routes] == [{1: 100}]
    assert available is not None and available < routes[0][0]

    # Another release nothing sends traffic to: no data, it holds and says how to move on.
    rw.apply(release_manifest("vision", POLICY, version=1))
    status = rw.wait_status("vision", "holding on no data", lambda s: condition(
        s, "Degraded").get("reason") == "AnalysisInconclusive", timeout=30)
    assert status["phase"] == "Progressing" and rw.routes("vision") is None
    assert "send smoke tests to Service vision-r1" in status["message"]
    assert_holds("vision held at 0%", lambda: rw.status("vision")["phase"] == "Progressing"
                 and rw.routes("vision") is None, 4)
    rw.annotate("vision", "rewind.dev/promote", "true")
    rw.wait_phase("vision", "Promoted", stable=1, timeout=30)
    rw.wait_routes("vision", {1: 100})
