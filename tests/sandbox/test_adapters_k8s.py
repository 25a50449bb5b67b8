"""The adapters against the real API server: Istio's CRD schema, kwok Deployments, GC.

The owner is a ConfigMap, not a ModelRelease, so these tests do not depend on Rewind's own
CRDs; owner references, garbage collection and ownership checks work the same for any kind.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import pytest
from kubernetes import client, watch

from rewind.adapters import _kube
from rewind.adapters.archive import KubeArchive, LegacySnapshotError
from rewind.adapters.base import (
    OwnerRef,
    OwnershipConflictError,
    RouteRefusedError,
    RouteState,
    SnapshotConflictError,
    SnapshotNotFoundError,
)
from rewind.adapters.events import EventRecorder
from rewind.adapters.router import (
    ISTIO_GROUP,
    ISTIO_VERSION,
    IstioRouter,
    build_virtual_service,
)
from rewind.adapters.workloads import KubeWorkloads, build_snapshot
from rewind.api import HistoryEntry, ModelReleaseSpec, Outcome, TrafficSpec, spec_hash
from tests.conftest import Kubectl, wait_for

pytestmark = pytest.mark.sandbox

T = TypeVar("T")
RELEASE = "fraud"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
IMAGE = "registry.example.com/fraud-server@sha256:" + "c" * 64
TRAFFIC = TrafficSpec(hosts=["fraud.example.com"], gateways=["istio-system/public"])


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_spec(digest: str = DIGEST_A, replicas: int = 2) -> ModelReleaseSpec:
    return ModelReleaseSpec.model_validate(
        {
            "policyRef": {"name": "fraud-canary"},
            "model": {
                "name": "fraud-detector",
                "version": "2.1.0",
                "artifactURI": "s3://models/fraud/2.1.0/model.onnx",
                "artifactDigest": digest,
            },
            "code": {"image": IMAGE, "env": [{"name": "LOG_LEVEL", "value": "info"}]},
            "data": {"datasetRef": "s3://datasets/fraud", "version": "3f9c2d1"},
            "serving": {"replicas": replicas, "port": 8080},
            "traffic": TRAFFIC.model_dump(by_alias=True),
        }
    )


def get_json(kubectl: Kubectl, namespace: str, *what: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", *what, "-n", namespace, "-o", "json").stdout)
    return result


@pytest.fixture()
def owner(kubectl: Kubectl, namespace: str) -> OwnerRef:
    kubectl("create", "configmap", RELEASE, "-n", namespace)
    uid = get_json(kubectl, namespace, "configmap", RELEASE)["metadata"]["uid"]
    return OwnerRef(name=RELEASE, uid=uid, api_version="v1", kind="ConfigMap")


@pytest.fixture()
def router(api_client: client.ApiClient) -> IstioRouter:
    return IstioRouter(api_client)


@pytest.fixture()
def workloads(api_client: client.ApiClient) -> KubeWorkloads:
    return KubeWorkloads(api_client)


# -- router ------------------------------------------------------------------------------


def test_routes_are_accepted_by_istios_schema_and_read_back(
    router: IstioRouter, owner: OwnerRef, namespace: str, kubectl: Kubectl, istio_crds: None
) -> None:
    assert run(router.get_routes(RELEASE, namespace)) is None
    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 90, 2: 10}))
    assert run(router.get_routes(RELEASE, namespace)) == RouteState({1: 90, 2: 10}, None, 0,
                                                                    None, 1)

    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 100, 2: 0}, 2, 50))
    assert run(router.get_routes(RELEASE, namespace)) == RouteState({1: 100}, 2, 50, None, 1)

    vs = get_json(kubectl, namespace, "virtualservice", RELEASE, "--show-managed-fields")
    assert vs["metadata"]["ownerReferences"][0]["uid"] == owner.uid
    assert vs["spec"]["gateways"] == ["istio-system/public", "mesh"]
    assert vs["spec"]["http"][0]["mirrorPercentage"] == {"value": 50}
    assert vs["spec"]["http"][0]["mirror"] == {
        "host": f"{RELEASE}-r2.{namespace}.svc.cluster.local"}
    managers = {m["manager"] for m in vs["metadata"]["managedFields"]}
    assert managers == {"rewind-operator"}
    umbrella = get_json(kubectl, namespace, "service", RELEASE)
    assert umbrella["spec"]["selector"] == {"rewind.dev/release": RELEASE,
                                            "rewind.dev/revision": "1"}
    assert kubectl("get", "destinationrules", "-n", namespace, "-o", "name").stdout == ""


def test_the_umbrella_service_follows_the_primary_revision_and_is_read_back(
    router: IstioRouter, owner: OwnerRef, namespace: str, kubectl: Kubectl, istio_crds: None
) -> None:
    """A canary at 90/10 keeps the in-cluster name on r1; the promotion moves it to r2 in
    the same call as the weights; someone else's edit of its selector is seen."""
    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 10, 2: 90},
                          primary_revision=1))
    seen = run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC))
    assert (dict(seen.weights), seen.primary_revision, seen.problems) == ({1: 10, 2: 90}, 1, ())
    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {2: 100}, primary_revision=2))
    assert run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC)).primary_revision == 2
    kubectl("patch", "service", RELEASE, "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"selector": {"rewind.dev/revision": None}}}))
    assert run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC)).primary_revision is None
    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {2: 100}, primary_revision=2))
    assert run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC)).primary_revision == 2


def test_routes_to_subsets_are_rewritten_then_their_destination_rule_deleted(
    router: IstioRouter, owner: OwnerRef, namespace: str, kubectl: Kubectl, istio_crds: None
) -> None:
    """An existing release upgraded in place: Rewind wrote subsets of the umbrella Service
    and a DestinationRule. The first write switches the VirtualService to each revision's
    Service while the DestinationRule stays (a proxy still on the old routes finds its
    subsets); the next write, once the new routes are read back, deletes it."""
    host = f"{RELEASE}.{namespace}.svc.cluster.local"
    meta = {"namespace": namespace, "ownerReferences": [owner.to_k8s()],
            "labels": {"app.kubernetes.io/managed-by": "rewind", "rewind.dev/release": RELEASE}}
    legacy_vs = {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": RELEASE, **meta},
        "spec": {"hosts": ["fraud.example.com", host], "gateways": ["istio-system/public", "mesh"],
                 "http": [{"name": "rewind", "route": [
                     {"destination": {"host": host, "subset": "r1"}, "weight": 80},
                     {"destination": {"host": host, "subset": "r2"}, "weight": 20}]}]},
    }
    legacy_rule = {
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": RELEASE, **meta},
        "spec": {"host": host, "subsets": [
            {"name": "r1", "labels": {"rewind.dev/revision": "1"}},
            {"name": "r2", "labels": {"rewind.dev/revision": "2"}}]},
    }
    for obj in (legacy_vs, legacy_rule):
        kubectl("apply", "--server-side", "--field-manager=rewind-operator", "-f", "-",
                input=json.dumps(obj))
    seen = run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC))
    assert dict(seen.weights) == {1: 80, 2: 20}
    assert [p.kind for p in seen.problems] == ["NotAccepted"]
    assert "routes to DestinationRule subsets" in seen.problems[0].message

    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 80, 2: 20}))
    vs = get_json(kubectl, namespace, "virtualservice", RELEASE)
    assert [d["destination"] for d in vs["spec"]["http"][0]["route"]] == [
        {"host": f"{RELEASE}-r1.{namespace}.svc.cluster.local"},
        {"host": f"{RELEASE}-r2.{namespace}.svc.cluster.local"},
    ]
    get_json(kubectl, namespace, "destinationrule", RELEASE)  # still there: make before break
    seen = run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC))
    assert (dict(seen.weights), seen.problems) == ({1: 80, 2: 20}, ())
    assert "DestinationRule" in seen.untidy

    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 80, 2: 20}))
    assert kubectl("get", "destinationrules", "-n", namespace, "-o", "name").stdout == ""

    # Gone for good (only an older Rewind wrote one): no round asks for it again.
    reads: list[str] = []
    read = router._get

    async def counted(plural: str, name: str, ns: str) -> dict[str, Any] | None:
        reads.append(plural)
        return await read(plural, name, ns)

    router._get = counted  # type: ignore[method-assign,assignment]
    assert run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC)).untidy == ""
    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 70, 2: 30}))
    run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC))
    assert "virtualservices" in reads and "destinationrules" not in reads, reads
    # A release forgotten (deleted; this replica standing by) is asked about afresh.
    router.forget(namespace, RELEASE)
    run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC))
    assert reads.count("destinationrules") == 1, reads


def test_switching_weights_is_one_write_and_repeating_it_none(
    router: IstioRouter,
    owner: OwnerRef,
    namespace: str,
    api_client: client.ApiClient,
    istio_crds: None,
) -> None:
    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 100}))
    api = client.CustomObjectsApi(api_client)

    def version() -> str:
        vs = cast(
            dict[str, Any],
            api.get_namespaced_custom_object(
                ISTIO_GROUP, ISTIO_VERSION, namespace, "virtualservices", RELEASE
            ),
        )
        return str(vs["metadata"]["resourceVersion"])

    before = version()
    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 75, 2: 25}, 2, 10))
    after = version()
    assert after != before

    # Replay every change to the VirtualService since `before`: exactly one.
    events = [
        event["type"]
        for event in watch.Watch().stream(
            api.list_namespaced_custom_object,
            ISTIO_GROUP,
            ISTIO_VERSION,
            namespace,
            "virtualservices",
            field_selector=f"metadata.name={RELEASE}",
            resource_version=before,
            timeout_seconds=2,
        )
    ]
    assert events == ["MODIFIED"]

    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 75, 2: 25}, 2, 10))
    assert version() == after  # an identical apply is not a write


def test_router_refuses_to_take_over_a_virtual_service_it_does_not_own(
    router: IstioRouter, owner: OwnerRef, namespace: str, kubectl: Kubectl, istio_crds: None
) -> None:
    foreign = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": RELEASE, "namespace": namespace},
        "spec": {
            "hosts": ["fraud.example.com"],
            "http": [{"route": [{"destination": {"host": "x"}}]}],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(foreign))
    with pytest.raises(OwnershipConflictError, match="not owned"):
        run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 100}))
    vs = get_json(kubectl, namespace, "virtualservice", RELEASE)
    assert vs["spec"]["http"][0]["route"][0]["destination"] == {"host": "x"}


HEADER_ROUTES = [
    {"name": "beta", "headers": [{"name": "x-group", "exact": "beta"},
                                 {"name": "x-tier", "prefix": "gold"}]},
    {"name": "staff", "headers": [{"name": "x-user", "regex": "^[a-z]+@example\\.com$"}]},
]


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": "120s"},
        {"timeout": "1500ms"},
        {"timeout": "1ms"},
        {"timeout": "1000h"},
        {"retries": {"attempts": 0}},
        {"retries": {"attempts": 3, "perTryTimeout": "2s",
                     "retryOn": "connect-failure,refused-stream,503"}},
        {"headerRoutes": HEADER_ROUTES},
        {"timeout": "1m30s", "retries": {"attempts": 1, "perTryTimeout": "45s"},
         "headerRoutes": HEADER_ROUTES},
    ],
    ids=["timeout", "timeout-ms", "timeout-1ms", "timeout-1000h", "retries-off",
         "retries-full", "header-routes", "everything"],
)
def test_every_route_option_is_accepted_by_istios_schema_as_written(
    router: IstioRouter, owner: OwnerRef, namespace: str, kubectl: Kubectl, istio_crds: None,
    options: dict[str, Any],
) -> None:
    """Istio's own CRD (with its CEL rules on durations) validates what Rewind writes, with
    field validation Strict: each option is stored exactly as rendered and read back as
    Rewind's own, with nothing amiss."""
    traffic = TrafficSpec.model_validate({**TRAFFIC.model_dump(by_alias=True), **options})
    header = 2 if "headerRoutes" in options else None
    run(router.set_routes(RELEASE, namespace, owner, traffic, {1: 80, 2: 20},
                          header_revision=header))
    stored = get_json(kubectl, namespace, "virtualservice", RELEASE)
    expected = build_virtual_service(RELEASE, namespace, owner, traffic, {1: 80, 2: 20},
                                     header_revision=header)
    assert stored["spec"] == expected["spec"]
    seen = run(router.observe_routes(RELEASE, namespace, owner, traffic))
    assert seen.problems == () and seen.weights == {1: 80, 2: 20}
    assert seen.header_revision == header


def test_istio_refuses_a_zero_timeout_which_is_why_rewinds_api_does(
    router: IstioRouter, owner: OwnerRef, namespace: str, istio_crds: None
) -> None:
    body = build_virtual_service(RELEASE, namespace, owner, TRAFFIC, {1: 100})
    body["spec"]["http"][0]["timeout"] = "0s"
    with pytest.raises(RouteRefusedError, match="must be a valid duration greater than 1ms"):
        run(router._apply("virtualservices", body))
    with pytest.raises(ValueError, match="must be more than 0s"):
        TrafficSpec(hosts=["fraud.example.com"], timeout="0s")


def test_a_hand_edit_is_drift_and_the_next_write_undoes_all_of_it(
    router: IstioRouter, owner: OwnerRef, namespace: str, kubectl: Kubectl, istio_crds: None
) -> None:
    """kubectl patch adds route options and an exportTo: the router names the editor and
    every field; one write restores the VirtualService exactly (the exportTo too, which an
    apply alone leaves to its owner), and Rewind is its only manager again."""
    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 100}))
    patch = [
        {"op": "add", "path": "/spec/http/0/timeout", "value": "120s"},
        {"op": "add", "path": "/spec/http/0/retries", "value": {"attempts": 0}},
        {"op": "add", "path": "/spec/exportTo", "value": ["."]},
    ]
    kubectl("patch", "virtualservice", RELEASE, "-n", namespace, "--type=json",
            "-p", json.dumps(patch))
    [problem] = run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC)).problems
    assert problem.kind == "Drift"
    assert f"VirtualService {namespace}/{RELEASE} was edited outside Rewind by kubectl-patch" in (
        problem.message
    )
    for change in ('spec.exportTo added: ["."]', 'spec.http[0].retries added: {"attempts":0}',
                   'spec.http[0].timeout added: "120s"'):
        assert change in problem.message

    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 100}))
    vs = get_json(kubectl, namespace, "virtualservice", RELEASE, "--show-managed-fields")
    assert vs["spec"] == build_virtual_service(RELEASE, namespace, owner, TRAFFIC,
                                               {1: 100})["spec"]
    assert {m["manager"] for m in vs["metadata"]["managedFields"]} == {"rewind-operator"}
    assert run(router.observe_routes(RELEASE, namespace, owner, TRAFFIC)).problems == ()


# -- workloads ---------------------------------------------------------------------------


def test_a_deleted_snapshot_is_never_rebuilt_from_guesswork(
    workloads: KubeWorkloads, owner: OwnerRef, namespace: str, kubectl: Kubectl
) -> None:
    """Restoring a revision whose snapshot is gone fails, naming the object and the fixes,
    instead of building something nobody verified."""
    run(workloads.save_snapshot(RELEASE, namespace, owner, 1, make_spec()))
    kubectl("delete", "controllerrevision", f"{RELEASE}-r1", "-n", namespace)
    with pytest.raises(SnapshotNotFoundError) as caught:
        run(workloads.ensure_revision(RELEASE, namespace, owner, 1, replicas=1))
    message = str(caught.value)
    assert f"ControllerRevision {namespace}/{RELEASE}-r1" in message
    assert "Restore that ControllerRevision" in message and "roll forward" in message
    assert kubectl("get", "deployment", f"{RELEASE}-r1", "-n", namespace,
                   check=False).returncode != 0


def wait_available(workloads: KubeWorkloads, namespace: str, revision: int) -> None:
    wait_for(
        f"revision {revision} to become Available",
        lambda: (
            (obs := run(workloads.observe_revisions(RELEASE, namespace)).get(revision)) is not None
            and obs.available
        ),
        timeout=90,
    )


def test_snapshot_save_is_idempotent_and_refuses_a_different_spec(
    workloads: KubeWorkloads, owner: OwnerRef, namespace: str, kubectl: Kubectl
) -> None:
    spec = make_spec()
    digest = run(workloads.save_snapshot(RELEASE, namespace, owner, 1, spec))
    assert digest == spec_hash(spec)
    assert run(workloads.save_snapshot(RELEASE, namespace, owner, 1, spec)) == digest

    with pytest.raises(SnapshotConflictError, match="immutable"):
        run(workloads.save_snapshot(RELEASE, namespace, owner, 1, make_spec(DIGEST_B)))
    assert run(workloads.load_snapshot(RELEASE, namespace, 1)) == spec

    stored = get_json(kubectl, namespace, "controllerrevision", f"{RELEASE}-r1")
    assert stored["revision"] == 1
    assert stored["metadata"]["annotations"]["rewind.dev/spec-hash"] == digest
    assert stored["metadata"]["annotations"]["rewind.dev/release-uid"] == owner.uid
    assert stored["metadata"]["labels"]["rewind.dev/release"] == RELEASE
    assert "ownerReferences" not in stored["metadata"]  # outlives the release


def test_a_snapshot_takes_its_history_record_again_and_again(
    workloads: KubeWorkloads, api_client: client.ApiClient, owner: OwnerRef, namespace: str,
) -> None:
    """The record is patched into the metadata of a ControllerRevision whose data never
    changes. The API server refuses any patch of one whose data it would re-serialize to
    other bytes (`data: field is immutable`): snapshots are saved in canonical bytes, also
    when the spec holds characters JSON encoders escape differently (<, >, &, non-ASCII)."""
    spec = make_spec().model_copy(deep=True)
    spec.code.env[0].value = "<tag> & caf\u00e9 \u2028"
    spec.model.artifact_uri = "s3://models/fraud/2.1.0/model.onnx?x=1&y=<2>"
    run(workloads.save_snapshot(RELEASE, namespace, owner, 1, spec))
    archive = KubeArchive(api_client)
    now = datetime.now(UTC)
    for outcome, promoted in ((Outcome.PROGRESSING, None), (Outcome.PROMOTED, now),
                              (Outcome.RETIRED, now)):
        entry = HistoryEntry(revision=1, spec_hash=spec_hash(spec), outcome=outcome,
                             promoted_at=promoted, reason="replaced by r2 & <r3>")
        assert run(archive.record(namespace, f"{RELEASE}-r1", entry, owner.uid, now))
        [stored] = run(archive.read(RELEASE, namespace))
        assert stored.entry == entry and stored.up_to_date(entry, owner.uid)
    assert run(workloads.load_snapshot(RELEASE, namespace, 1)) == spec  # data unchanged


def test_a_snapshot_saved_with_blanks_refuses_a_record_as_legacy(
    api_client: client.ApiClient, owner: OwnerRef, namespace: str,
) -> None:
    """What an operator before history records saved (the client's JSON, with blanks):
    the API server refuses to change its metadata, and the archive says why."""
    body = build_snapshot(RELEASE, namespace, owner, 1, make_spec())
    apps = client.AppsV1Api(api_client)
    run(_kube.call(apps.create_namespaced_controller_revision, namespace, body, timeout=30))
    entry = HistoryEntry(revision=1, spec_hash=spec_hash(make_spec()), outcome=Outcome.PROMOTED)
    with pytest.raises(LegacySnapshotError, match="saved by an operator without history"):
        run(KubeArchive(api_client).record(namespace, f"{RELEASE}-r1", entry, owner.uid,
                                           datetime.now(UTC)))


def test_revision_deployment_becomes_available_behind_its_services(
    workloads: KubeWorkloads, owner: OwnerRef, namespace: str, kubectl: Kubectl
) -> None:
    run(workloads.save_snapshot(RELEASE, namespace, owner, 1, make_spec()))
    run(workloads.ensure_revision(RELEASE, namespace, owner, 1, 2))
    run(workloads.ensure_revision(RELEASE, namespace, owner, 1, 2))  # idempotent
    wait_available(workloads, namespace, 1)

    obs = run(workloads.observe_revisions(RELEASE, namespace))[1]
    assert (obs.replicas, obs.ready_replicas, obs.image, obs.model_digest) == (
        2,
        2,
        IMAGE,
        DIGEST_A,
    )
    # The umbrella Service (the in-cluster name) is the router's: it moves with the routes.
    assert kubectl("get", "service", RELEASE, "-n", namespace, "--ignore-not-found",
                   "-o", "name").stdout == ""
    revision_svc = get_json(kubectl, namespace, "service", f"{RELEASE}-r1")
    # By release and revision: another release's r1 in the namespace is never behind it (the
    # DestinationRule subsets Rewind once wrote selected by revision alone).
    assert revision_svc["spec"]["selector"] == {"rewind.dev/release": RELEASE,
                                                "rewind.dev/revision": "1"}
    pods = get_json(kubectl, namespace, "pods", "-l", "rewind.dev/revision=1")["items"]
    assert len(pods) == 2
    assert all(p["metadata"]["labels"]["app.kubernetes.io/name"] == RELEASE for p in pods)


def test_ensure_after_scale_to_zero_restores_the_same_image_and_model(
    workloads: KubeWorkloads, owner: OwnerRef, namespace: str, kubectl: Kubectl
) -> None:
    run(workloads.save_snapshot(RELEASE, namespace, owner, 1, make_spec()))
    run(workloads.ensure_revision(RELEASE, namespace, owner, 1, 2))
    wait_available(workloads, namespace, 1)

    run(workloads.scale_revision(RELEASE, namespace, 1, 0))
    wait_for(
        "revision 1 to scale to zero",
        lambda: get_json(kubectl, namespace, "pods", "-l", "rewind.dev/revision=1")["items"] == [],
        timeout=60,
    )
    obs = run(workloads.observe_revisions(RELEASE, namespace))[1]
    assert (obs.replicas, obs.available) == (0, False)

    run(workloads.ensure_revision(RELEASE, namespace, owner, 1, 2))
    wait_available(workloads, namespace, 1)
    dep = get_json(kubectl, namespace, "deployment", f"{RELEASE}-r1")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"] == IMAGE
    assert env["MODEL_DIGEST"] == DIGEST_A
    assert env["REWIND_REVISION"] == "1"
    assert dep["status"]["observedGeneration"] == dep["metadata"]["generation"]


def test_scaling_a_missing_revision_to_zero_is_a_no_op(
    workloads: KubeWorkloads, namespace: str
) -> None:
    run(workloads.scale_revision(RELEASE, namespace, 9, 0))
    assert run(workloads.observe_revisions(RELEASE, namespace)) == {}


def test_deleting_the_owner_garbage_collects_everything(
    workloads: KubeWorkloads,
    router: IstioRouter,
    owner: OwnerRef,
    namespace: str,
    kubectl: Kubectl,
    istio_crds: None,
) -> None:
    run(workloads.save_snapshot(RELEASE, namespace, owner, 1, make_spec()))
    run(workloads.ensure_revision(RELEASE, namespace, owner, 1, 1))
    run(router.set_routes(RELEASE, namespace, owner, TRAFFIC, {1: 100}))
    kubectl("delete", "configmap", RELEASE, "-n", namespace)
    kinds = "deployment,service,virtualservice,destinationrule"
    wait_for(
        "the garbage collector to delete the release's objects",
        lambda: (
            get_json(kubectl, namespace, kinds, "-l", "rewind.dev/release=fraud")["items"] == []
        ),
        timeout=60,
    )
    # The snapshot is not owned: it outlives the release (with its history record).
    left = get_json(kubectl, namespace, "controllerrevisions", "-l", "rewind.dev/release=fraud")
    assert [i["metadata"]["name"] for i in left["items"]] == [f"{RELEASE}-r1"]


# -- pod templates -----------------------------------------------------------------------

SIDECAR_IMAGE = "registry.example.com/shipper@sha256:" + "d" * 64


def template_spec(**template_spec: Any) -> ModelReleaseSpec:
    """The release on the GPU node: a toleration, a node selector, a volume, env from a
    Secret, a pinned sidecar, gRPC."""
    doc = make_spec(replicas=1).model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["serving"] = {
        "replicas": 1, "port": 9000, "protocol": "grpc",
        "template": {"spec": {
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                             "effect": "NoSchedule"}],
            "containers": [
                {"name": "model-server",
                 "ports": [{"name": "metrics", "containerPort": 9100}],
                 "env": [{"name": "HF_TOKEN",
                          "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "t"}}}],
                 "resources": {"limits": {"nvidia.com/gpu": 1}},
                 "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
                {"name": "log-shipper", "image": SIDECAR_IMAGE},
            ],
            "volumes": [{"name": "cache", "emptyDir": {}}],
            **template_spec,
        }},
    }
    return ModelReleaseSpec.model_validate(doc)


def test_a_template_revision_runs_on_the_gpu_node_as_written(
    workloads: KubeWorkloads, owner: OwnerRef, namespace: str, kubectl: Kubectl
) -> None:
    """Server-side apply takes the template whole (ports without a protocol, quantities as
    numbers), applying it again changes nothing, and kwok runs it on the GPU node."""
    spec = template_spec()
    assert run(workloads.dry_run_revision(RELEASE, namespace, owner, 1, spec)) is None
    run(workloads.save_snapshot(RELEASE, namespace, owner, 1, spec))
    run(workloads.ensure_revision(RELEASE, namespace, owner, 1, 1))
    generation = get_json(kubectl, namespace, "deployment", f"{RELEASE}-r1")["metadata"][
        "generation"]
    run(workloads.ensure_revision(RELEASE, namespace, owner, 1, 1))  # no change, no rollout
    wait_available(workloads, namespace, 1)
    dep = get_json(kubectl, namespace, "deployment", f"{RELEASE}-r1")
    assert dep["metadata"]["generation"] == generation
    (pod,) = get_json(kubectl, namespace, "pods", "-l", "rewind.dev/revision=1")["items"]
    assert pod["spec"]["nodeName"] == "kwok-gpu-node-0"
    server, shipper = pod["spec"]["containers"]
    assert (server["name"], server["image"]) == ("model-server", IMAGE)
    assert server["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert server["readinessProbe"]["grpc"]["port"] == 9000
    assert server["volumeMounts"][0] == {"name": "cache", "mountPath": "/cache"}
    assert shipper["image"] == SIDECAR_IMAGE
    svc = get_json(kubectl, namespace, "service", f"{RELEASE}-r1")
    assert svc["spec"]["ports"][0]["appProtocol"] == "grpc"
    assert run(workloads.observe_revisions(RELEASE, namespace))[1].image == IMAGE


@pytest.mark.parametrize(
    ("template", "refusal"),
    [
        # A typo in a field Rewind does not declare: strict field validation names it.
        ({"tolerationz": []}, ".spec.template.spec.tolerationz: field not declared in schema"),
        # A mount of a volume the pod does not have.
        ({"volumes": []}, "volumeMounts[0].name: Not found"),
    ],
    ids=["unknown-field", "missing-volume"],
)
def test_the_dry_run_returns_what_the_api_server_refuses(
    workloads: KubeWorkloads, owner: OwnerRef, namespace: str, kubectl: Kubectl,
    template: dict[str, Any], refusal: str,
) -> None:
    message = run(workloads.dry_run_revision(RELEASE, namespace, owner, 3, template_spec(
        **template)))
    assert message is not None and message.startswith(
        "the API server refuses the Deployment of r3: ")
    assert refusal in message
    # Nothing was written.
    assert kubectl("get", "deployment", f"{RELEASE}-r3", "-n", namespace,
                   check=False).returncode != 0


def test_pods_without_istios_proxy_are_named(
    workloads: KubeWorkloads, owner: OwnerRef, namespace: str, kubectl: Kubectl
) -> None:
    """kwok's pods are never injected: r1's pods lack the proxy; r2's template carries an
    istio-proxy container (as injection would add), so its pods have it."""
    run(workloads.save_snapshot(RELEASE, namespace, owner, 1, make_spec(replicas=2)))
    proxied = template_spec(containers=[
        {"name": "model-server"},
        {"name": "istio-proxy", "image": SIDECAR_IMAGE},
    ], volumes=None)
    run(workloads.save_snapshot(RELEASE, namespace, owner, 2, proxied))
    for revision in (1, 2):
        run(workloads.ensure_revision(RELEASE, namespace, owner, revision, 2 if revision == 1
                                      else 1))
        wait_available(workloads, namespace, revision)
    mesh = run(workloads.observe_mesh(RELEASE, namespace))
    pods = sorted(p["metadata"]["name"] for p in get_json(
        kubectl, namespace, "pods", "-l", "rewind.dev/revision=1")["items"])
    assert mesh == {1: (2, tuple(pods)), 2: (1, ())}
    kubectl("label", "namespace", namespace, "istio-injection=enabled")
    labels = run(KubeWorkloads(workloads._apps.api_client).namespace_labels(namespace))
    assert labels is not None and labels["istio-injection"] == "enabled"


# -- events ------------------------------------------------------------------------------


def test_events_are_recorded_against_the_owner_and_truncated(
    api_client: client.ApiClient, owner: OwnerRef, namespace: str, kubectl: Kubectl
) -> None:
    recorder = EventRecorder(api_client, instance="sandbox-test")
    run(recorder.post(owner, namespace, "Warning", "RollbackDecided", "error-rate " + "x" * 3000))
    events = get_json(
        kubectl, namespace, "events", "--field-selector", f"involvedObject.uid={owner.uid}"
    )["items"]
    assert len(events) == 1
    event = events[0]
    assert (event["type"], event["reason"]) == ("Warning", "RollbackDecided")
    assert event["reportingComponent"] == "rewind-operator"
    assert len(event["message"].encode()) <= 1024 and event["message"].endswith("...")
