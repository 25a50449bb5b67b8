"""Status tells the truth (issue 10): decisions follow what the API server shows.

1. A route write refused by an admission policy (as a mesh validation webhook would) holds
   the release: no step starts, Ready=False, a condition and an Event quote the refusal,
   Argo CD's health and kstatus say so too, and the rollout continues from the step it had
   reached once the refusal is lifted. Before, the status went 30 -> 60 -> Promoted in
   about 11 s while the mesh still sent everything to r1.
2. The promoted revision loses all its pods (every node cordoned, its pods deleted):
   Ready=False and Degraded=True within seconds, naming the Deployment and its ready/desired
   replicas; Argo CD says Degraded; the operator's metrics say it. With a post-promotion
   watch, traffic goes back to the still-warm previous revision by itself.

Both change the sandbox for everyone (a cluster-wide admission policy, cordoned nodes), so
they run alone (``exclusive``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests import go_tools
from tests.conftest import Kubectl, wait_for
from tests.sandbox.operator_helpers import (
    Recorder,
    Rewind,
    assert_holds,
    condition,
    policy_manifest,
    release_manifest,
    timeline,
    workload,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.exclusive]

REFUSAL = "routes are frozen by the mesh team (change window)"
NODES = ("kwok-node-0", "kwok-node-1")


def zero_metric_policy(name: str, strategy: dict[str, Any]) -> dict[str, Any]:
    """The issue's policy: interval 2s, one metric ``vector(0)`` with ``max: 0.5``."""
    policy = policy_manifest(name, strategy, interval="2s")
    policy["spec"]["analysis"]["metrics"] = [
        {"name": "zero", "query": "vector(0)", "thresholds": {"max": 0.5}}
    ]
    return policy


STEPS_30_60 = {
    "canary": {
        "steps": [
            {"weight": 30, "pause": {"duration": "2s"}},
            {"weight": 60, "pause": {"duration": "2s"}},
        ]
    }
}


def health_of(rw: Rewind, name: str) -> tuple[str, str]:
    """(Argo CD health, kstatus) of the ModelRelease as stored now."""
    obj = rw.release(name)
    argo = go_tools.health([obj])[0]
    assert "error" not in argo, argo
    return argo["health"]["status"], go_tools.kstatus([obj])[0]["status"]


@pytest.fixture()
def frozen_routes(kubectl: Kubectl, namespace: str) -> Iterator[str]:
    """A ValidatingAdmissionPolicy (and binding for this namespace) that refuses updates of
    VirtualServices, as a mesh validation webhook would. Yields the binding's name."""
    name = f"freeze-routes-{namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["networking.istio.io"],
                        "apiVersions": ["*"],
                        "operations": ["UPDATE"],
                        "resources": ["virtualservices"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": REFUSAL}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": namespace}
                }
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": [policy, binding]}))
    yield name
    kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
            "--ignore-not-found", "--wait=false")


def refusal_in_force(kubectl: Kubectl, namespace: str, vs: str) -> bool:
    """Admission policies take effect asynchronously: probe with a server-side dry run."""
    result = kubectl(
        "annotate", "virtualservice", vs, "-n", namespace, "probe=1", "--overwrite",
        "--dry-run=server", check=False,
    )
    return result.returncode != 0 and REFUSAL in result.stderr


def test_a_refused_route_write_holds_the_release_until_it_is_lifted(
    rw: Rewind, kubectl: Kubectl, namespace: str, frozen_routes: str
) -> None:
    name = "frozen"
    rw.apply(zero_metric_policy("steps-30-60", STEPS_30_60))
    # r1's only route write creates the VirtualService; the policy refuses updates.
    rw.promote_first_revision(name, "steps-30-60")
    wait_for("the VirtualService refusal in force",
             lambda: refusal_in_force(kubectl, namespace, name), timeout=15)

    with Recorder(rw.sandbox, namespace) as seen:
        rw.apply(release_manifest(name, "steps-30-60", version=2))
        status = rw.wait_status(
            name, "Stalled=True RoutesRefused",
            lambda s: condition(s, "Stalled").get("reason") == "RoutesRefused", timeout=30,
        )
        stalled = condition(status, "Stalled")
        assert REFUSAL in stalled["message"]
        assert f"VirtualService {namespace}/{name}" in stalled["message"]
        assert condition(status, "Ready")["status"] == "False"
        rw.event(name, type="Warning", reason="RoutesRefused", contains=REFUSAL)
        # The 11 s and more: nothing moves, and the status says what is in effect.
        assert_holds(
            "r1 at 100%, r2 at 0% in the status, no step started, not Promoted",
            lambda: (
                (s := rw.status(name)).get("phase") == "Progressing"
                and s.get("currentStep") == 1
                and "stepStartedAt" not in s
                and s.get("weights") == {"stable": 100, "candidate": 0}
                and rw.routes(name) is not None
                and rw.routes(name).weights == {1: 100}  # type: ignore[union-attr]
            ),
            seconds=12,
        )
        assert health_of(rw, name) == ("Degraded", "Failed")
        assert len(timeline(rw.status(name), "RoutesRefused")) == 1  # once, not per retry

        # Lifted: the rollout continues from the step it had actually reached.
        kubectl("delete", "validatingadmissionpolicybinding", frozen_routes)
        rw.wait_routes(name, {1: 70, 2: 30}, timeout=30)
        rw.wait_phase(name, "Promoted", stable=2, timeout=40)
        rw.wait_routes(name, {2: 100})
        assert health_of(rw, name) == ("Healthy", "Current")

    # Never Promoted while the mesh routed to the old revision: the first stored status
    # that says Promoted comes after the VirtualService's 100% to r2.
    full = next(rv for rv, routes in seen.routes(name) if routes.weights == {2: 100})
    promoted = next(rv for rv, s in seen.statuses(name)
                    if s.get("phase") == "Promoted" and s.get("stableRevision") == 2)
    assert promoted > full
    steps = [e["message"] for e in timeline(rw.status(name), "StepStarted")]
    assert any("30% (in effect" in m for m in steps) and any("60% (in effect" in m for m in steps)


@pytest.fixture()
def cordoned(kubectl: Kubectl) -> Iterator[None]:
    """Every node cordoned for the test; uncordoned after it, whatever happens."""
    yield
    for node in NODES:
        kubectl("uncordon", node, check=False)


def lose_all_pods(rw: Rewind, kubectl: Kubectl, namespace: str, release: str, rev: int) -> None:
    for node in NODES:
        kubectl("cordon", node)
    kubectl("delete", "pods", "-n", namespace, "-l",
            f"rewind.dev/release={release},rewind.dev/revision={rev}", "--wait=false")


def test_a_promoted_revision_without_pods_is_degraded_and_says_which(
    rw: Rewind, kubectl: Kubectl, namespace: str, cordoned: None
) -> None:
    name = "podless"
    rw.apply(zero_metric_policy("fast", {"canary": {"steps": [
        {"weight": 50, "pause": {"duration": "1s"}}]}}))
    rw.promote_first_revision(name, "fast")
    rw.apply(release_manifest(name, "fast", version=2))
    rw.wait_phase(name, "Promoted", stable=2, timeout=40)
    rw.wait_status(name, "Ready", lambda s: condition(s, "Ready").get("status") == "True")
    port = rw.restart_operator_with_metrics()

    lose_all_pods(rw, kubectl, namespace, name, 2)
    status = rw.wait_status(
        name, "Degraded=True StableUnavailable",
        lambda s: condition(s, "Degraded").get("reason") == "StableUnavailable", timeout=20,
    )
    assert status["phase"] == "Promoted"
    assert condition(status, "Ready")["status"] == "False"
    degraded = condition(status, "Degraded")
    assert degraded["status"] == "True"
    assert f"Deployment {namespace}/{workload(name, 2)} has 0/1 ready replicas" in (
        degraded["message"]
    )
    rw.event(name, type="Warning", reason="StableUnavailable", contains=workload(name, 2))
    assert health_of(rw, name) == ("Degraded", "Failed")
    samples = wait_for(
        "rewind_release_condition{type=Ready} 0",
        lambda: (m := rw.operator_metrics(port)).get(
            f'rewind_release_condition{{release="{name}",type="Ready"}}') == 0.0 and m,
        timeout=20,
    )
    assert samples[f'rewind_release_condition{{release="{name}",type="Stalled"}}'] == 1.0

    for node in NODES:
        kubectl("uncordon", node)
    rw.wait_status(name, "Ready again", lambda s: condition(s, "Ready").get("status") == "True",
                   timeout=30)
    assert health_of(rw, name) == ("Healthy", "Current")


def test_the_post_promotion_watch_switches_back_when_the_new_stable_loses_its_pods(
    rw: Rewind, kubectl: Kubectl, namespace: str, cordoned: None
) -> None:
    name = "watched"
    rw.apply(zero_metric_policy("watch", {"canary": {
        "steps": [{"weight": 50, "pause": {"duration": "1s"}}],
        "postPromotionDuration": "5m",
    }}))
    rw.promote_first_revision(name, "watch")
    rw.apply(release_manifest(name, "watch", version=2))
    rw.wait_routes(name, {2: 100}, timeout=40)
    rw.wait_status(name, "the post-promotion watch",
                   lambda s: "post-promotion watch" in s.get("message", ""))
    assert rw.replicas(name, 1) == 1  # the previous stable is still warm

    lose_all_pods(rw, kubectl, namespace, name, 2)
    status = rw.wait_phase(name, "RolledBack", stable=1, timeout=30)
    rw.wait_routes(name, {1: 100})
    assert any("0/1 ready replicas" in e["message"]
               for e in timeline(status, "CandidateUnavailable"))
