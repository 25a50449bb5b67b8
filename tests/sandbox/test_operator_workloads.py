"""The operator end to end with full pod templates (issue 12, "Workloads").

The example GPU LLM (examples/llm-gpu-grpc.yaml: tolerations, a node selector, volumes, a
service account, env from a Secret, gRPC) is released through a canary onto the sandbox's
GPU node (kwok, tainted nvidia.com/gpu=present:NoSchedule, 8 GPUs) and rolled back to its
previous revision, re-created exactly from its snapshot. A Helm-style Deployment gives a
release its template (serving.workloadRef). A template the API server refuses fails its
revision. Pods without Istio's proxy where the namespace expects one, or where the policy
reads Istio's metrics off an Istio-routed release, are reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_cases import LLM_MR, example, mutate
from tests.conftest import Kubectl, wait_for
from tests.sandbox.operator_helpers import (
    ANNOTATION_ROLLBACK,
    HEALTHY,
    IMAGE,
    Rewind,
    canary,
    condition,
    digest,
    history,
    outcomes,
    policy_manifest,
    release_manifest,
    timeline,
)

pytestmark = pytest.mark.sandbox

NAME = "llama-chat"
POLICY = "llm-canary"
GPU_NODE = "kwok-gpu-node-0"
TEMPLATE = "spec.serving.template.spec"
UNPINNED = [
    "ConfigMap triton-config",
    "PersistentVolumeClaim llama-3-8b-weights",
    "Secret hf-token",
    "ServiceAccount llm-weights-reader",
]


def llm_release(version: int) -> dict[str, Any]:
    """The example ModelRelease, one replica (the GPU node has 8 GPUs for both revisions and
    a re-created one), a model version per ``version``."""
    doc = example(*LLM_MR)
    doc = mutate(doc, "spec.serving.replicas", 1)
    doc = mutate(doc, "spec.model.version", f"3.{version}.0")
    return mutate(doc, "spec.model.artifactDigest", digest(version))


def prerequisites(namespace: str) -> list[dict[str, Any]]:
    """What the example names and does not create: its service account, Secret, ConfigMap
    and the claim on the weights (bound to a static volume: the sandbox has no provisioner)."""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "llm-weights-reader"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"},
         "stringData": {"token": "hf_sandbox"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "triton-config"},
         "data": {"config.pbtxt": "backend: \"vllm\""}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "llama-3-8b-weights"},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                  "volumeName": f"{namespace}-weights",
                  "resources": {"requests": {"storage": "16Gi"}}}},
    ]


@pytest.fixture()
def weights_volume(kubectl: Kubectl, namespace: str) -> Iterator[None]:
    """A static PersistentVolume for the claim (cluster-scoped: deleted after the test)."""
    pv = {"apiVersion": "v1", "kind": "PersistentVolume",
          "metadata": {"name": f"{namespace}-weights"},
          "spec": {"capacity": {"storage": "16Gi"}, "accessModes": ["ReadOnlyMany"],
                   "storageClassName": "", "hostPath": {"path": "/var/lib/weights"},
                   "claimRef": {"namespace": namespace, "name": "llama-3-8b-weights"}}}
    kubectl("apply", "-f", "-", input=json.dumps(pv))
    yield
    kubectl("delete", "pv", f"{namespace}-weights", "--wait=false", check=False)


def pods(rw: Rewind, revision: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = rw.get("pods", "-l", f"rewind.dev/revision={revision}")[
        "items"]
    return [p for p in items if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def deployment(rw: Rewind, revision: int) -> dict[str, Any]:
    return rw.get("deployment", f"{NAME}-r{revision}")


def test_the_gpu_llm_example_runs_on_the_gpu_node_and_rolls_back_from_its_snapshot(
    rw: Rewind, kubectl: Kubectl, weights_volume: None
) -> None:
    rw.apply(*prerequisites(rw.namespace))
    rw.apply(policy_manifest(POLICY, canary((20, "2s"), (50, "2s")), keep_previous_warm="3s"))
    rw.apply(llm_release(1))
    status = rw.wait_phase(NAME, "Promoted", stable=1, timeout=60)

    # Its pod: on the GPU node, as its service account, with its volumes and the Secret.
    (pod,) = wait_for("r1's pod running", lambda: pods(rw, 1), timeout=30)
    spec = pod["spec"]
    assert spec["nodeName"] == GPU_NODE
    assert spec["serviceAccountName"] == "llm-weights-reader"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["weights"]["persistentVolumeClaim"]["claimName"] == "llama-3-8b-weights"
    assert volumes["config"]["configMap"]["name"] == "triton-config"
    (server,) = spec["containers"]
    assert server["image"] == example(*LLM_MR)["spec"]["code"]["image"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {m["name"] for m in server["volumeMounts"]} >= {"weights", "config", "shm"}
    env = {e["name"]: e for e in server["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    assert env["MODEL_DIGEST"]["value"] == digest(1)  # the artifact, whatever the template
    assert server["readinessProbe"]["grpc"]["port"] == 8001
    assert spec["initContainers"][0]["name"] == "check-weights"
    for service in (NAME, f"{NAME}-r1"):
        (port,) = rw.get("service", service)["spec"]["ports"]
        assert (port["appProtocol"], port["port"], port["targetPort"]) == ("grpc", 8001, "http")
    # What the snapshot cannot pin is named, in the history and an Event.
    assert history(status, 1)["unpinned"] == UNPINNED
    rw.event(NAME, type="Normal", reason="Unpinned", contains="Secret hf-token")
    assert [e["type"] for e in timeline(status) if e["revision"] == 1][:2] == [
        "RevisionCreated", "Unpinned"]
    snapshot = rw.get("controllerrevision", f"{NAME}-r1")
    assert snapshot["data"]["serving"]["template"]["spec"]["tolerations"] == (
        example(*LLM_MR)["spec"]["serving"]["template"]["spec"]["tolerations"])
    written = deployment(rw, 1)["spec"]["template"]

    # r2 changes the model and the template, through the canary, on the same GPU node.
    rw.set_error_rate(NAME, 2, HEALTHY)
    more_env = [
        *example(*LLM_MR)["spec"]["serving"]["template"]["spec"]["containers"][0]["env"],
        {"name": "NCCL_DEBUG", "value": "WARN"},
    ]
    r2 = mutate(llm_release(2), f"{TEMPLATE}.containers[0].env", more_env)
    rw.apply(r2)
    rw.wait_status(NAME, "r2 on the canary", lambda s: s.get("weights", {}).get("candidate", 0)
                   > 0, timeout=60)
    assert {p["spec"]["nodeName"] for p in pods(rw, 2)} == {GPU_NODE}
    status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=60)
    rw.wait_routes(NAME, {2: 100})
    assert outcomes(status)[2] == "Promoted"
    rw.wait_replicas(NAME, 1, 0, timeout=30)  # r1 retired after keepPreviousWarm

    # r1's Deployment is lost; break glass re-creates it from its snapshot, exactly.
    kubectl("delete", "deployment", f"{NAME}-r1", "-n", rw.namespace)
    rw.annotate(NAME, ANNOTATION_ROLLBACK, "the 3.2 weights answer in the wrong language")
    status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=60)
    rw.wait_routes(NAME, {1: 100})
    recreated = deployment(rw, 1)["spec"]["template"]
    assert recreated == written
    (pod,) = wait_for("r1's pod running again", lambda: pods(rw, 1), timeout=30)
    assert pod["spec"]["nodeName"] == GPU_NODE
    assert pod["spec"]["serviceAccountName"] == "llm-weights-reader"
    assert history(status, 1)["unpinned"] == UNPINNED
    assert condition(status, "Degraded")["reason"] == "RolledBack"  # no sidecar expected here


def helm_deployment(replicas: int, config_checksum: str) -> dict[str, Any]:
    """A Deployment as a Helm chart would render it: the pod shape, a tag image (Rewind runs
    code.image instead), its own labels and a config checksum annotation."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat-helm", "labels": {"app.kubernetes.io/instance": "chat"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": "chat"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/instance": "chat"},
                             "annotations": {"checksum/config": config_checksum}},
                "spec": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                     "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "model-server",
                        "image": "registry.example.com/vllm:0.5.3",
                        "ports": [{"name": "http", "containerPort": 8000}],
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }],
                },
            },
        },
    }


def test_a_helm_deployment_gives_the_template_and_is_never_written(
    rw: Rewind, kubectl: Kubectl
) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), keep_previous_warm="3s"))
    release = release_manifest("chat", POLICY, version=1)
    release["spec"]["serving"] = {"replicas": 1, "port": 8000,
                                  "workloadRef": {"name": "chat-helm"}}
    # Applied before its Deployment (a GitOps sync order): it waits, Stalled, and says why.
    rw.apply(release)
    status = rw.wait_status("chat", "Stalled WorkloadRefError",
                            lambda s: condition(s, "Stalled").get("reason") == "WorkloadRefError")
    assert "Deployment chat-helm (serving.workloadRef) not found" in condition(
        status, "Stalled")["message"]
    assert status.get("phase", "Pending") == "Pending" and not status.get("history")

    # The chart's Deployment still runs a replica of its own: said once, never scaled.
    rw.apply(helm_deployment(1, "abc"))
    status = rw.wait_phase("chat", "Promoted", stable=1, timeout=60)
    rw.event("chat", type="Warning", reason="WorkloadRefRunning", contains="set its replicas")
    (pod,) = wait_for("chat-r1's pod", lambda: [
        p for p in rw.get("pods", "-l", "rewind.dev/release=chat")["items"]
        if p["status"].get("phase") == "Running"], timeout=30)
    assert pod["spec"]["nodeName"] == GPU_NODE
    (server,) = pod["spec"]["containers"]
    assert server["image"] == IMAGE  # code.image, not the chart's tag
    assert [p["containerPort"] for p in server["ports"]] == [8000]
    template = rw.get("controllerrevision", "chat-r1")["data"]["serving"]["template"]
    assert template["metadata"]["annotations"] == {
        "checksum/config": "abc", "rewind.dev/template-from": "Deployment/chat-helm"}
    assert rw.get("controllerrevision", "chat-r1")["data"]["serving"].get("workloadRef") is None

    # Scaling the chart's Deployment is not a new revision; a new template is one.
    kubectl("scale", "deployment/chat-helm", "--replicas=0", "-n", rw.namespace)
    rw.set_error_rate("chat", 2, HEALTHY)
    rw.apply(helm_deployment(0, "def"))  # helm upgrade: the config changed
    # Seen at once (the Deployment's watch wakes the release), not at the idle resync (60s).
    rw.wait_status("chat", "r2 created from the new template",
                   lambda s: any(h["revision"] == 2 for h in s.get("history", [])), timeout=15)
    status = rw.wait_phase("chat", "Promoted", stable=2, timeout=60)
    assert [h["revision"] for h in status["history"]] == [1, 2]
    assert any(e["type"] == "StepStarted" and e["revision"] == 2 for e in timeline(status))
    template = rw.get("controllerrevision", "chat-r2")["data"]["serving"]["template"]
    assert template["metadata"]["annotations"]["checksum/config"] == "def"
    # Rewind never wrote the chart's Deployment.
    helm = rw.get("deployment", "chat-helm", "--show-managed-fields")
    assert helm["spec"]["replicas"] == 0
    assert "rewind-operator" not in {m["manager"] for m in helm["metadata"]["managedFields"]}

    # Both deleted and applied again, the release first: its history waits for the template
    # (adopted against the spec a revision runs), then r2 is restored, not released anew.
    kubectl("delete", "modelrelease/chat", "deployment/chat-helm", "-n", rw.namespace)
    rw.apply(release)
    status = rw.wait_status("chat", "Stalled WorkloadRefError again",
                            lambda s: condition(s, "Stalled").get("reason") == "WorkloadRefError")
    assert not status.get("history")
    rw.apply(helm_deployment(0, "def"))
    status = rw.wait_phase("chat", "Promoted", stable=2, timeout=60)
    assert [h["revision"] for h in status["history"]] == [1, 2]
    assert any(e["type"] == "HistoryAdopted" for e in timeline(status))


def test_a_template_the_api_server_refuses_fails_its_revision_before_anything_runs(
    rw: Rewind,
) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s"))))
    rw.promote_first_revision("fraud", POLICY)
    broken = release_manifest("fraud", POLICY, version=2)
    broken["spec"]["serving"] = {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "model-server", "volumeMounts": [{"name": "weights", "mountPath": "/w"}]},
    ]}}}
    rw.apply(broken)
    status = rw.wait_phase("fraud", "Failed", timeout=30)
    reason = history(status, 2)["reason"]
    assert reason.startswith("the API server refuses the Deployment of r2: ")
    assert 'volumeMounts[0].name: Not found: "weights"' in reason
    assert condition(status, "Stalled")["status"] == "True"
    assert rw.replicas("fraud", 2) is None  # nothing was created
    routes = rw.routes("fraud")
    assert routes is not None and routes.weights == {1: 100}
    assert status["stableRevision"] == 1


def test_pods_without_istios_proxy_in_an_injected_namespace_are_reported(
    rw: Rewind, kubectl: Kubectl
) -> None:
    """The namespace asks for injection, kwok's pods never get it: Degraded SidecarMissing
    and one Warning Event, while the release is Promoted and Ready (it serves; it is only
    not measured). Elsewhere in the sandbox (no injection label) nothing is said."""
    kubectl("label", "namespace", rw.namespace, "istio-injection=enabled")
    rw.apply(policy_manifest(POLICY, canary((50, "2s"))))
    status = rw.promote_first_revision("fraud", POLICY)
    status = rw.wait_status("fraud", "Degraded SidecarMissing",
                            lambda s: condition(s, "Degraded").get("reason") == "SidecarMissing")
    message = condition(status, "Degraded")["message"]
    assert message.startswith("r1: 1 of 1 running pods of r1 (fraud-r1-")
    assert f"namespace {rw.namespace} is labelled istio-injection=enabled" in message
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Stalled")["status"] == "False"
    rw.event("fraud", type="Warning", reason="SidecarMissing", contains="no Istio proxy")


#: The error ratio as Istio's proxies report it (the sandbox has none: no data, ever).
ISTIO_ERROR_RATE = (
    'sum(rate(istio_requests_total{reporter="destination", '
    'destination_workload_namespace="{{namespace}}", '
    'destination_workload="{{candidateWorkload}}", response_code=~"5.."}[{{interval}}]))'
    ' / sum(rate(istio_requests_total{reporter="destination", '
    'destination_workload_namespace="{{namespace}}", '
    'destination_workload="{{candidateWorkload}}"}[{{interval}}]))'
)


def test_pods_without_istios_proxy_are_reported_when_the_policy_reads_istios_metrics(
    rw: Rewind, kubectl: Kubectl
) -> None:
    """No injection label on the namespace, Istio routing, and a policy whose error-rate
    reads istio_requests_total: the pods have no proxy, so every query finds no data. The
    release says why (Degraded SidecarMissing, one Warning Event) and what to do, instead of
    leaving the revision silently unmeasured. Once the policy reads metrics from elsewhere,
    nothing is expected any more and the condition goes."""
    labels = rw.get("namespace", rw.namespace)["metadata"].get("labels") or {}
    assert not {"istio-injection", "istio.io/rev", "istio.io/dataplane-mode"} & set(labels)
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), query=ISTIO_ERROR_RATE))
    rw.promote_first_revision("fraud", POLICY)
    status = rw.wait_status("fraud", "Degraded SidecarMissing",
                            lambda s: condition(s, "Degraded").get("reason") == "SidecarMissing")
    message = condition(status, "Degraded")["message"]
    assert message.startswith("r1: 1 of 1 running pods of r1 (fraud-r1-")
    assert ("the policy's metric error-rate reads istio_requests_total, which only Istio's "
            "proxy reports") in message
    assert f"label namespace {rw.namespace} istio-injection=enabled" in message
    assert "spec.traffic.sidecar: Ignore if the metrics come from elsewhere" in message
    assert condition(status, "Ready")["status"] == "True"
    rw.event("fraud", type="Warning", reason="SidecarMissing", contains="istio_requests_total")

    # The metrics come from elsewhere now (the test's gauge): no proxy is expected.
    rw.apply(policy_manifest(POLICY, canary((50, "2s"))))
    status = rw.wait_status("fraud", "Degraded no longer SidecarMissing",
                            lambda s: condition(s, "Degraded").get("reason") != "SidecarMissing")
    assert condition(status, "Degraded")["status"] == "False"
