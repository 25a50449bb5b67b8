"""Revision workloads built from snapshots, checked without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from rewind.adapters.base import OwnerRef, SnapshotCorruptError
from rewind.adapters.workloads import (
    build_deployment,
    build_revision_service,
    build_snapshot,
    build_umbrella_service,
    observe_deployment,
    spec_from_snapshot,
)
from rewind.api import ModelReleaseSpec, spec_hash

OWNER = OwnerRef(name="fraud", uid="0b7c6a2e-1111-2222-3333-444455556666")
DIGEST = "sha256:" + "a" * 64
IMAGE = "registry.example.com/fraud-server@sha256:" + "b" * 64


def make_spec(**overrides: Any) -> ModelReleaseSpec:
    raw: dict[str, Any] = {
        "policyRef": {"name": "fraud-canary"},
        "model": {
            "name": "fraud-detector",
            "version": "2.1.0",
            "artifactURI": "s3://models/fraud/2.1.0/model.onnx",
            "artifactDigest": DIGEST,
            "format": "onnx",
        },
        "code": {
            "image": IMAGE,
            "args": ["--workers=2"],
            "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "MODEL_URI", "value": "x"}],
        },
        "data": {"datasetRef": "s3://datasets/fraud", "version": "3f9c2d1"},
        "serving": {
            "replicas": 2,
            "port": 9000,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2}},
            "livenessPath": "/live",
        },
        "traffic": {"hosts": ["fraud.example.com"], "port": 80},
    }
    raw.update(overrides)
    return ModelReleaseSpec.model_validate(raw)


SPEC = make_spec()


def owned_and_named(obj: dict[str, Any], name: str) -> None:
    meta = obj["metadata"]
    assert (meta["name"], meta["namespace"]) == (name, "shop")
    assert meta["ownerReferences"] == [OWNER.to_k8s()]
    assert meta["ownerReferences"][0]["controller"] is True
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "rewind"
    assert meta["labels"]["rewind.dev/release"] == "fraud"


def test_deployment_runs_the_snapshot_image_with_provenance_env() -> None:
    dep = build_deployment("fraud", "shop", OWNER, 3, SPEC, replicas=2)
    owned_and_named(dep, "fraud-r3")
    assert dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["args"] == ["--workers=2"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "LOG_LEVEL": "info",
        "REWIND_RELEASE": "fraud",
        "REWIND_REVISION": "3",
        "MODEL_URI": "s3://models/fraud/2.1.0/model.onnx",  # the injected value wins
        "MODEL_DIGEST": DIGEST,
        "MODEL_VERSION": "2.1.0",
        "DATA_VERSION": "3f9c2d1",
    }
    assert len(container["env"]) == len(env)  # no duplicate names (apply would refuse them)


def test_deployment_ports_probes_and_resources_come_from_serving() -> None:
    container = build_deployment("fraud", "shop", OWNER, 3, SPEC, 1)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2"},
    }


def test_minimal_spec_has_no_liveness_probe_args_or_resources() -> None:
    spec = make_spec(
        code={"image": IMAGE},
        serving={},
        data=None,
    )
    container = build_deployment("fraud", "shop", OWNER, 1, spec, 1)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert "livenessProbe" not in container
    assert "args" not in container and "resources" not in container
    assert {"name": "DATA_VERSION", "value": ""} in container["env"]


def test_pods_carry_revision_labels_and_digests_as_annotations() -> None:
    dep = build_deployment("fraud", "shop", OWNER, 3, SPEC, 1)
    template = dep["spec"]["template"]["metadata"]
    assert dep["spec"]["selector"]["matchLabels"] == {
        "rewind.dev/release": "fraud",
        "rewind.dev/revision": "3",
    }
    labels = template["labels"]
    assert labels["app.kubernetes.io/name"] == "fraud"
    assert labels["rewind.dev/revision"] == "3"
    assert all(len(v) <= 63 for v in labels.values())
    assert template["annotations"]["rewind.dev/model-digest"] == DIGEST
    assert template["annotations"]["rewind.dev/model-version"] == "2.1.0"
    assert template["annotations"]["rewind.dev/data-version"] == "3f9c2d1"
    assert template["annotations"]["rewind.dev/spec-hash"] == spec_hash(SPEC)
    assert dep["metadata"]["annotations"] == template["annotations"]


@pytest.mark.parametrize("replicas", [-1, True, 1.5])
def test_bad_replicas_are_rejected(replicas: Any) -> None:
    with pytest.raises(ValueError, match="replicas"):
        build_deployment("fraud", "shop", OWNER, 1, SPEC, replicas)


def test_revision_service_selects_one_revision_by_named_port() -> None:
    svc = build_revision_service("fraud", "shop", OWNER, 3, SPEC)
    owned_and_named(svc, "fraud-r3")
    assert svc["spec"]["selector"] == {"rewind.dev/release": "fraud", "rewind.dev/revision": "3"}
    assert svc["spec"]["ports"] == [
        {"name": "http", "appProtocol": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


def test_umbrella_service_selects_one_revision_of_the_release() -> None:
    svc = build_umbrella_service("fraud", "shop", OWNER, SPEC.traffic.port, 2)
    owned_and_named(svc, "fraud")
    assert svc["spec"]["selector"] == {"rewind.dev/release": "fraud", "rewind.dev/revision": "2"}
    assert "rewind.dev/revision" not in svc["metadata"]["labels"]


def test_snapshot_round_trips_and_is_hash_checked() -> None:
    snap = build_snapshot("fraud", "shop", OWNER, 3, SPEC)
    meta = snap["metadata"]
    assert (meta["name"], meta["namespace"]) == ("fraud-r3", "shop")
    # Not owned: deleting the release must not garbage-collect its snapshots (records).
    assert "ownerReferences" not in meta
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "rewind",
        "rewind.dev/release": "fraud",
        "rewind.dev/revision": "3",
    }
    assert snap["apiVersion"] == "apps/v1" and snap["kind"] == "ControllerRevision"
    assert snap["revision"] == 3
    # Saved without a record: that follows once a status holds the revision.
    assert meta["annotations"] == {
        "rewind.dev/spec-hash": spec_hash(SPEC),
        "rewind.dev/release-uid": OWNER.uid,
    }
    assert snap["data"]["model"]["artifactURI"] == SPEC.model.artifact_uri  # camelCase JSON
    assert spec_from_snapshot(snap) == SPEC


def test_tampered_snapshot_is_refused() -> None:
    snap = build_snapshot("fraud", "shop", OWNER, 3, SPEC)
    snap["data"]["code"]["image"] = "registry.example.com/evil@sha256:" + "c" * 64
    with pytest.raises(SnapshotCorruptError, match="hashes to"):
        spec_from_snapshot(snap)


def test_snapshot_with_invalid_data_is_refused() -> None:
    snap = build_snapshot("fraud", "shop", OWNER, 3, SPEC)
    del snap["data"]["model"]
    with pytest.raises(SnapshotCorruptError, match="valid spec"):
        spec_from_snapshot(snap)


def deployment_status(
    replicas: int = 2,
    ready: int = 2,
    updated: int = 2,
    generation: int = 1,
    observed: int = 1,
    conditions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    dep = build_deployment("fraud", "shop", OWNER, 3, SPEC, replicas)
    dep["metadata"]["generation"] = generation
    dep["status"] = {
        "observedGeneration": observed,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "conditions": conditions
        if conditions is not None
        else [
            {"type": "Available", "status": "True"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    }
    return dep


def test_observe_available_revision() -> None:
    obs = observe_deployment(deployment_status())
    assert obs is not None
    assert (obs.revision, obs.replicas, obs.ready_replicas, obs.available) == (3, 2, 2, True)
    assert (obs.image, obs.model_digest, obs.spec_hash) == (IMAGE, DIGEST, spec_hash(SPEC))
    assert obs.message == "2/2 ready" and not obs.progress_deadline_exceeded


@pytest.mark.parametrize(
    "status",
    [
        {"ready": 1},
        {"updated": 1},
        {"generation": 2, "observed": 1},  # the controller has not seen the latest spec
        {"conditions": [{"type": "Available", "status": "False"}]},
        {"replicas": 0, "ready": 0, "updated": 0},  # scaled to zero cannot take traffic
    ],
)
def test_observe_not_available(status: dict[str, Any]) -> None:
    obs = observe_deployment(deployment_status(**status))
    assert obs is not None and obs.available is False


def test_observe_progress_deadline_exceeded() -> None:
    conditions = [
        {"type": "Available", "status": "False"},
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "fraud-r3-abc" has timed out progressing.',
        },
    ]
    obs = observe_deployment(deployment_status(ready=0, conditions=conditions))
    assert obs is not None and obs.progress_deadline_exceeded
    assert "timed out" in obs.message


def test_observe_ignores_objects_without_a_revision_label() -> None:
    dep = deployment_status()
    dep["metadata"]["labels"].pop("rewind.dev/revision")
    assert observe_deployment(dep) is None
