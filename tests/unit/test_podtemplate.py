"""What a pod template reads that its snapshot cannot pin; a Deployment's template resolved."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rewind import api
from rewind.podtemplate import (
    TEMPLATE_FROM_ANNOTATION,
    WorkloadRefError,
    resolve_workload_ref,
    unpinned_references,
)
from tests.api_cases import LLM_MR, example

IMAGE = "registry.example.com/server@sha256:" + "b" * 64
PINNED = "registry.example.com/tool@sha256:" + "c" * 64


def spec_with(template: dict[str, Any] | None = None, **serving: Any) -> api.ModelReleaseSpec:
    """The LLM example, with another template, or (only short fields given) without one."""
    doc = example(*LLM_MR)["spec"]
    if template is not None:
        doc["serving"] = {"port": 8001, "protocol": "grpc", "template": template, **serving}
    elif serving:
        doc["serving"] = serving
    return api.ModelReleaseSpec.model_validate(doc)


def test_the_example_names_its_secret_configmap_claim_and_service_account() -> None:
    assert unpinned_references(spec_with()) == [
        "ConfigMap triton-config",
        "PersistentVolumeClaim llama-3-8b-weights",
        "Secret hf-token",
        "ServiceAccount llm-weights-reader",
    ]


def test_short_fields_alone_pin_everything() -> None:
    assert unpinned_references(spec_with(replicas=2)) == []


def test_every_kind_of_unpinned_reference_is_found_once() -> None:
    template = {
        "spec": {
            "initContainers": [
                {"name": "fetch", "image": PINNED,
                 "envFrom": [{"secretRef": {"name": "bucket-creds"}}]},
            ],
            "containers": [
                {
                    "name": "model-server",
                    "env": [
                        {"name": "A",
                         "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "bucket-creds",
                                                                     "key": "b"}}},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "C", "value": "literal"},
                    ],
                    "envFrom": [{"configMapRef": {"name": "flags"}}],
                },
            ],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "labels", "downwardAPI": {"items": []}},
                {"name": "tls", "secret": {"secretName": "server-tls"}},
                {"name": "bundle", "projected": {"sources": [
                    {"configMap": {"name": "ca"}},
                    {"serviceAccountToken": {"audience": "s3", "path": "token"}},
                ]}},
                {"name": "host", "hostPath": {"path": "/var/models"}},
                {"name": "pinned-image", "image": {"reference": PINNED}},
                {"name": "tagged-image", "image": {"reference": "registry.example.com/w:1"}},
            ],
        }
    }
    assert unpinned_references(spec_with(template)) == [
        "ConfigMap ca",
        "ConfigMap cfg",
        "ConfigMap flags",
        "Secret bucket-creds",
        "Secret server-tls",
        "ServiceAccount default token",
        "Volume host (hostPath)",
        "Volume tagged-image (image)",
    ]


def test_a_long_list_is_bounded_and_says_how_many_more() -> None:
    volumes = [{"name": f"s{i:02d}", "secret": {"secretName": f"s{i:02d}"}} for i in range(30)]
    template = {"spec": {"containers": [{"name": "model-server"}], "volumes": volumes}}
    refs = unpinned_references(spec_with(template))
    assert len(refs) == api.MAX_UNPINNED
    assert refs[-1] == f"and {30 - api.MAX_UNPINNED + 1} more"


# --- serving.workloadRef -----------------------------------------------------------------


def helm_deployment() -> dict[str, Any]:
    """A Deployment as a Helm chart renders it and the API server stores it (defaults in)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat-helm", "generation": 7, "resourceVersion": "123"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": "chat"}},
            "template": {
                "metadata": {
                    "creationTimestamp": None,
                    "labels": {"app.kubernetes.io/instance": "chat"},
                    "annotations": {"checksum/config": "abc"},
                },
                "spec": {
                    "serviceAccountName": "chat",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                    "dnsPolicy": "ClusterFirst",
                    "containers": [
                        {
                            "name": "server",
                            "image": "registry.example.com/vllm:0.5.3",
                            "args": ["--model", "/w"],
                            "ports": [
                                {"name": "http", "containerPort": 8000, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
                            ],
                            "env": [{"name": "MODEL_URI", "value": "s3://old"},
                                    {"name": "WORKERS", "value": "2"}],
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            "imagePullPolicy": "IfNotPresent",
                        }
                    ],
                },
            },
        },
    }


def ref_spec(**serving: Any) -> api.ModelReleaseSpec:
    doc = copy.deepcopy(example(*LLM_MR)["spec"])
    doc["serving"] = {"replicas": 2, "port": 8000, "workloadRef": {"name": "chat-helm"},
                      **serving}
    return api.ModelReleaseSpec.model_validate(doc)


def test_a_referenced_deployment_gives_its_template_and_the_release_wins() -> None:
    resolved = resolve_workload_ref(ref_spec(), helm_deployment())
    assert resolved.serving.workload_ref is None
    template = resolved.serving.template
    assert template is not None
    assert template.metadata is not None
    assert template.metadata.labels == {"app.kubernetes.io/instance": "chat"}
    assert template.metadata.annotations == {
        "checksum/config": "abc", TEMPLATE_FROM_ANNOTATION: "Deployment/chat-helm"}
    (server,) = template.spec.containers
    assert server.image is None  # code.image runs
    assert server.args == ["--model", "/w"]  # kept: code.args is not set
    assert [p.name for p in server.ports or []] == ["metrics"]  # http and serving.port are Rewind's
    assert [e.name for e in server.env or []] == ["WORKERS"]
    assert server.resources == {"limits": {"nvidia.com/gpu": "1"}}
    dumped = template.model_dump(by_alias=True, exclude_none=True)
    assert dumped["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert "creationTimestamp" not in dumped["metadata"]
    # The Deployment's own fields (replicas, selector) are not the revision's.
    assert resolved.serving.replicas == 2


def test_what_the_release_sets_replaces_the_deployments() -> None:
    doc = copy.deepcopy(example(*LLM_MR)["spec"])
    doc["code"]["args"] = ["--model", "/other"]
    doc["serving"] = {"port": 8000, "workloadRef": {"name": "chat-helm"},
                      "resources": {"limits": {"nvidia.com/gpu": 2}}, "livenessPath": "/live",
                      "protocol": "http"}
    resolved = resolve_workload_ref(api.ModelReleaseSpec.model_validate(doc), helm_deployment())
    assert resolved.serving.template is not None
    server = resolved.serving.template.spec.containers[0]
    assert server.args is None and server.resources is None and server.liveness_probe is None


def test_the_template_is_part_of_the_revision() -> None:
    spec = ref_spec()
    first = resolve_workload_ref(spec, helm_deployment())
    scaled = helm_deployment()
    scaled["spec"]["replicas"] = 3
    scaled["metadata"]["generation"] = 8
    assert api.spec_hash(resolve_workload_ref(spec, scaled)) == api.spec_hash(first)
    upgraded = helm_deployment()
    upgraded["spec"]["template"]["metadata"]["annotations"]["checksum/config"] = "def"
    assert api.spec_hash(resolve_workload_ref(spec, upgraded)) != api.spec_hash(first)


def test_a_tagged_image_in_the_referenced_deployment_is_refused() -> None:
    deployment = helm_deployment()
    deployment["spec"]["template"]["spec"]["containers"].append(
        {"name": "shipper", "image": "fluent-bit:3.0"})
    with pytest.raises(WorkloadRefError, match=r"Deployment chat-helm .*pinned by digest"):
        resolve_workload_ref(ref_spec(), deployment)


def test_a_deployment_without_containers_is_refused() -> None:
    with pytest.raises(WorkloadRefError, match="no pod template"):
        resolve_workload_ref(ref_spec(), {"spec": {"template": {"spec": {}}}})
