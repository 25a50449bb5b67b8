"""The engine and pod templates (issue 12, "Workloads"): what a revision's snapshot cannot pin
is named in its history and an Event, a template the API server refuses fails the revision,
a referenced Deployment that cannot give a template holds the release, and pods without
Istio's proxy where one is expected make the release Degraded, never Stalled.

Each test drives the engine through ``World`` (tests/unit/test_engine_kit.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rewind.api import ModelReleaseSpec, Phase, ServingSpec
from rewind.engine import Decision, EmitEvent
from tests.unit.test_engine_kit import (
    FAIL,
    NAMESPACE,
    PASS,
    World,
    make_policy,
    make_spec,
    promoted_world,
)


def events(d: Decision | Iterable[Decision], reason: str) -> list[EmitEvent]:
    """The Events of a decision (or of several) with this reason."""
    ds = [d] if isinstance(d, Decision) else list(d)
    return [a for x in ds for a in x.actions if isinstance(a, EmitEvent) and a.reason == reason]

TEMPLATE: dict[str, Any] = {
    "spec": {
        "serviceAccountName": "weights-reader",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            {
                "name": "model-server",
                "env": [{"name": "HF_TOKEN",
                         "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "t"}}}],
                "volumeMounts": [{"name": "weights", "mountPath": "/models"}],
            }
        ],
        "volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}}],
    }
}
UNPINNED = ["PersistentVolumeClaim weights", "Secret hf-token", "ServiceAccount weights-reader"]


def with_template(spec: ModelReleaseSpec) -> ModelReleaseSpec:
    serving = ServingSpec.model_validate({"replicas": 2, "template": TEMPLATE})
    return spec.model_copy(update={"serving": serving})


def condition(w: World, type_: str) -> tuple[str, str, str]:
    return w.condition(type_)


def kstatus(w: World) -> list[str]:
    """The kstatus conditions that are True (exactly one, always)."""
    return [t for t in ("Ready", "Reconciling", "Stalled") if condition(w, t)[0] == "True"]


# --------------------------------------------------------------------------------------
# Unpinned references
# --------------------------------------------------------------------------------------


def test_a_new_revision_names_what_its_snapshot_cannot_pin() -> None:
    w = promoted_world()
    assert w.status.history[0].unpinned == []
    d = w.release(with_template(make_spec("2.0.0")))
    entry = next(e for e in w.status.history if e.revision == 2)
    assert entry.unpinned == UNPINNED
    (event,) = events(d, "Unpinned")
    assert event.type == "Normal"
    assert event.message.startswith(
        "r2 reads what its snapshot cannot pin: PersistentVolumeClaim weights, Secret "
        "hf-token, ServiceAccount weights-reader; a rollback to r2 re-creates its pod "
        "template exactly"
    )
    assert w.timeline_types()[-2:] == ["RevisionCreated", "Unpinned"]
    w.settle()
    assert w.phase() == Phase.PROMOTED
    # Kept through the revision's life, and only said once.
    assert next(e for e in w.status.history if e.revision == 2).unpinned == UNPINNED
    assert w.timeline_types().count("Unpinned") == 1
    assert len(events(w.decisions, "Unpinned")) == 1


def test_short_fields_alone_have_nothing_unpinned_and_no_event() -> None:
    w = promoted_world()
    d = w.release(make_spec("2.0.0"))
    assert not events(d, "Unpinned")
    assert all(e.unpinned == [] for e in w.status.history)


# --------------------------------------------------------------------------------------
# The API server refuses the revision's Deployment (server-side dry run)
# --------------------------------------------------------------------------------------

REFUSED = (
    'the API server refuses the Deployment of r2: Deployment.apps "fraud-r2" is invalid: '
    "spec.template.spec.containers[0].volumeMounts[0].name: Not found: \"weight\""
)


def test_a_template_the_api_server_refuses_fails_the_revision_and_the_stable_serves() -> None:
    w = promoted_world()
    w.template_error = REFUSED
    d = w.release(with_template(make_spec("2.0.0")))
    assert w.phase() == Phase.FAILED
    assert w.outcome(2) == "Failed"
    entry = next(e for e in w.status.history if e.revision == 2)
    assert entry.reason == REFUSED
    assert 2 not in w.snapshots and 2 not in w.deployments  # nothing was created
    assert w.weights() == {1: 100}
    assert condition(w, "Stalled")[:2] == ("True", "Failed") and kstatus(w) == ["Stalled"]
    (failed,) = events(d, "Failed")
    assert failed.type == "Warning" and REFUSED in failed.message
    # Fixed in a new spec: released as usual.
    w.template_error = None
    w.release(with_template(make_spec("2.0.1")))
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 3


def test_a_retry_is_dry_run_again() -> None:
    w = promoted_world()
    w.template_error = REFUSED
    w.release(with_template(make_spec("2.0.0")))
    assert w.phase() == Phase.FAILED
    w.act("retry")
    assert w.phase() == Phase.FAILED  # still refused
    w.template_error = None  # e.g. the admission policy that refused it was fixed
    w.act("retry", "true-2")
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2


# --------------------------------------------------------------------------------------
# serving.workloadRef cannot give a template
# --------------------------------------------------------------------------------------

MISSING = (
    "Deployment chat-helm (serving.workloadRef) not found in namespace risk: create it or fix "
    "spec.serving.workloadRef.name"
)


def test_a_missing_referenced_deployment_holds_the_release_where_it_is() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m"))
    w.spec_error = MISSING
    w.release(make_spec("2.0.0"))
    w.run(120)
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 1
    assert [e.revision for e in w.status.history] == [1]  # no revision was made of it
    assert w.weights() == {1: 100}
    assert condition(w, "Stalled") == ("True", "WorkloadRefError", MISSING)
    assert kstatus(w) == ["Stalled"]
    w.spec_error = None  # the Deployment was created
    w.step()
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2
    assert kstatus(w) == ["Ready"]


def test_break_glass_works_while_the_referenced_deployment_is_missing() -> None:
    w = promoted_world(releases=2)
    w.spec_error = MISSING
    w.act("rollback", "r2 leaks PII")
    w.settle()
    assert w.status.stable_revision == 1 and w.weights() == {1: 100}


def test_first_release_waits_for_its_template() -> None:
    w = World(make_policy())
    w.spec_error = MISSING
    w.run(30)
    assert w.phase() == Phase.PENDING and not w.status.history
    assert w.status.message == f"waiting for a usable pod template: {MISSING}"
    assert condition(w, "Stalled")[1] == "WorkloadRefError"


# --------------------------------------------------------------------------------------
# Pods without Istio's proxy
# --------------------------------------------------------------------------------------

EXPECTED = "namespace risk is labelled istio-injection=enabled"


def test_a_stable_without_sidecars_is_degraded_not_stalled_with_one_event() -> None:
    w = promoted_world()
    w.proxy_expected = EXPECTED
    w.unmeshed = {1: ("fraud-r1-7d9-a", "fraud-r1-7d9-b")}
    d = w.step(5)
    status, reason, message = condition(w, "Degraded")
    assert (status, reason) == ("True", "SidecarMissing")
    assert message.startswith(
        "r1: 2 of 2 running pods of r1 (fraud-r1-7d9-a, fraud-r1-7d9-b) have no Istio proxy, "
        f"although {EXPECTED}"
    )
    # What to do: have the proxy injected, or say the metrics come from elsewhere.
    assert f"label namespace {NAMESPACE} istio-injection=enabled" in message
    assert "spec.traffic.sidecar: Ignore if the metrics come from elsewhere" in message
    # Still serving and Ready: the mesh routes to it, it is only not measured.
    assert kstatus(w) == ["Ready"] and w.phase() == Phase.PROMOTED
    (event,) = events(d, "SidecarMissing")
    assert event.type == "Warning"
    w.run(60)
    assert len(events(w.decisions, "SidecarMissing")) == 1  # said once
    w.unmeshed = {}  # the pods were deleted and came back injected
    w.step(5)
    assert condition(w, "Degraded")[:2] == ("False", "AsExpected")


def test_nothing_is_reported_while_no_proxy_is_expected() -> None:
    w = promoted_world()
    w.unmeshed = {1: ("fraud-r1-7d9-a",)}  # not even observed: the sandbox, a mesh-less cluster
    w.run(30)
    assert condition(w, "Degraded")[:2] == ("False", "AsExpected")
    assert not events(w.decisions, "SidecarMissing")


def test_a_candidate_without_sidecars_is_named_and_the_rollout_goes_on() -> None:
    w = promoted_world()
    w.proxy_expected = EXPECTED
    w.unmeshed = {2: ("fraud-r2-abc-x",)}
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.status.weights.candidate > 0)
    status, reason, message = condition(w, "Degraded")
    assert (status, reason) == ("True", "SidecarMissing") and message.startswith("r2: ")
    assert len(kstatus(w)) == 1
    w.settle()
    assert w.phase() == Phase.PROMOTED
    assert condition(w, "Degraded")[2].startswith("r2: ")  # now the stable
    assert len(events(w.decisions, "SidecarMissing")) == 1


def test_a_failed_candidate_without_sidecars_is_no_longer_reported_once_rolled_back() -> None:
    w = promoted_world()
    w.proxy_expected = EXPECTED
    w.unmeshed = {2: ("fraud-r2-abc-x",)}
    w.verdicts = lambda rev, _now: FAIL if rev == 2 else PASS
    w.release(make_spec("2.0.0"))
    w.settle()
    assert w.phase() == Phase.ROLLED_BACK
    assert condition(w, "Degraded")[1] == "RolledBack"
