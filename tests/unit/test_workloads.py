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
    has_mesh_proxy,
    istio_metric_reads,
    observe_deployment,
    proxy_expectation,
    service_protocol,
    spec_from_snapshot,
)
from rewind.api import ModelReleaseSpec, RolloutPolicySpec, spec_hash
from tests.api_cases import load_examples

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


# --- short fields only: exactly the Deployment every earlier operator built ----------------


def test_short_fields_build_the_same_pod_template_as_before() -> None:
    """A release without a template must not get a new pod template on upgrade (that would
    restart every revision's pods): the whole pod template is pinned here."""
    spec = make_spec(code={"image": IMAGE}, serving={"replicas": 1})
    template = build_deployment("fraud", "shop", OWNER, 1, spec, 1)["spec"]["template"]
    assert template["spec"] == {
        "containers": [
            {
                "name": "model-server",
                "image": IMAGE,
                "env": [
                    {"name": "REWIND_RELEASE", "value": "fraud"},
                    {"name": "REWIND_REVISION", "value": "1"},
                    {"name": "MODEL_URI", "value": "s3://models/fraud/2.1.0/model.onnx"},
                    {"name": "MODEL_DIGEST", "value": DIGEST},
                    {"name": "MODEL_VERSION", "value": "2.1.0"},
                    {"name": "DATA_VERSION", "value": "3f9c2d1"},
                ],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 5,
                },
            }
        ]
    }
    assert set(template["metadata"]) == {"labels", "annotations"}


# --- protocols ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "probe"),
    [
        ("http", {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5}),
        ("grpc", {"grpc": {"port": 9000}, "periodSeconds": 5}),
        ("http2", {"tcpSocket": {"port": "http"}, "periodSeconds": 5}),
    ],
)
def test_protocol_sets_the_service_app_protocol_and_the_readiness_probe(
    protocol: str, probe: dict[str, Any]
) -> None:
    spec = make_spec(
        serving={"port": 9000, "protocol": protocol, "readinessPath": "/ready"}
    )
    container = build_deployment("fraud", "shop", OWNER, 2, spec, 1)["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert container["readinessProbe"] == probe
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    revision_service = build_revision_service("fraud", "shop", OWNER, 2, spec)
    # The umbrella takes the protocol of the revision it selects, from that revision's own
    # Service (what UmbrellaService.point reads before it applies).
    umbrella = build_umbrella_service(
        "fraud", "shop", OWNER, 80, 2, service_protocol(revision_service)
    )
    for svc in (revision_service, umbrella):
        (port,) = svc["spec"]["ports"]
        assert (port["name"], port["appProtocol"]) == (protocol, protocol)
        assert port["targetPort"] == "http"  # the container port's name, whatever the protocol


# --- a full pod template -----------------------------------------------------------------

SIDECAR_IMAGE = "registry.example.com/shipper@sha256:" + "d" * 64


def template_spec(**serving: Any) -> ModelReleaseSpec:
    """A GPU model server: tolerations, a volume, a service account, env from a Secret."""
    template = {
        "metadata": {
            "labels": {"team": "llm", "rewind.dev/revision": "99"},
            "annotations": {"prometheus.io/scrape": "true"},
        },
        "spec": {
            "serviceAccountName": "weights-reader",
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                             "effect": "NoSchedule"}],
            "containers": [
                {"name": "log-shipper", "image": SIDECAR_IMAGE},
                {
                    "name": "model-server",
                    "env": [
                        {"name": "HF_TOKEN",
                         "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "t"}}},
                        {"name": "LOG_LEVEL", "value": "warn"},
                    ],
                    "ports": [{"name": "metrics", "containerPort": 9100}],
                    "volumeMounts": [{"name": "weights", "mountPath": "/models"}],
                    "startupProbe": {"grpc": {"port": 9000}, "failureThreshold": 60},
                },
            ],
            "volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "w"}}],
        },
    }
    return make_spec(
        code={"image": IMAGE, "env": [{"name": "LOG_LEVEL", "value": "info"}]},
        serving={"port": 9000, "protocol": "grpc", "template": template, **serving},
    )


def test_template_is_passed_on_with_rewinds_part_in_the_model_server() -> None:
    spec = template_spec()
    dep = build_deployment("fraud", "shop", OWNER, 4, spec, 2)
    pod = dep["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == "weights-reader"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["spec"]["volumes"] == [
        {"name": "weights", "persistentVolumeClaim": {"claimName": "w"}}
    ]
    shipper, server = pod["spec"]["containers"]
    assert shipper == {"name": "log-shipper", "image": SIDECAR_IMAGE}
    assert server["name"] == "model-server" and server["image"] == IMAGE
    # The template's env, then code.env (it wins over the template's), then the revision's.
    assert [e["name"] for e in server["env"]] == [
        "HF_TOKEN", "LOG_LEVEL", "REWIND_RELEASE", "REWIND_REVISION", "MODEL_URI",
        "MODEL_DIGEST", "MODEL_VERSION", "DATA_VERSION",
    ]
    assert server["env"][0]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "t"}}
    assert {"name": "LOG_LEVEL", "value": "info"} in server["env"]
    assert server["ports"] == [
        {"name": "http", "containerPort": 9000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9100},
    ]
    assert server["readinessProbe"] == {"grpc": {"port": 9000}, "periodSeconds": 5}
    assert server["startupProbe"] == {"grpc": {"port": 9000}, "failureThreshold": 60}
    assert server["volumeMounts"] == [{"name": "weights", "mountPath": "/models"}]
    # Rewind's labels win (the selector and Istio's telemetry need them); others are kept.
    assert pod["metadata"]["labels"]["rewind.dev/revision"] == "4"
    assert pod["metadata"]["labels"]["team"] == "llm"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["rewind.dev/spec-hash"] == spec_hash(spec)
    assert dep["spec"]["selector"]["matchLabels"] == {
        "rewind.dev/release": "fraud", "rewind.dev/revision": "4"}


def test_short_fields_fill_what_the_template_leaves_unset() -> None:
    spec = template_spec(
        resources={"limits": {"nvidia.com/gpu": 1}}, readinessPath="/unused",
    )
    spec = spec.model_copy(update={"code": spec.code.model_copy(update={"args": ["--x"]})})
    server = build_deployment("fraud", "shop", OWNER, 4, spec, 1)["spec"]["template"]["spec"][
        "containers"
    ][1]
    assert server["args"] == ["--x"]
    assert server["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    written = template_spec().model_copy(deep=True)
    assert written.serving.template is not None
    probe = {"exec": {"command": ["ready"]}}
    written.serving.template.spec.containers[1].readiness_probe = probe
    server = build_deployment("fraud", "shop", OWNER, 4, written, 1)["spec"]["template"]["spec"][
        "containers"
    ][1]
    assert server["readinessProbe"] == probe  # the template's probe replaces the default
    assert "args" not in server and "resources" not in server


def test_the_first_container_is_the_model_server_when_none_is_named_so() -> None:
    spec = make_spec(
        serving={"template": {"spec": {"containers": [
            {"name": "vllm", "args": ["--model", "/w"]},
            {"name": "log-shipper", "image": SIDECAR_IMAGE},
        ]}}},
        code={"image": IMAGE},
    )
    dep = build_deployment("fraud", "shop", OWNER, 1, spec, 1)
    vllm, shipper = dep["spec"]["template"]["spec"]["containers"]
    assert (vllm["name"], vllm["image"], vllm["args"]) == ("vllm", IMAGE, ["--model", "/w"])
    assert any(e["name"] == "MODEL_DIGEST" for e in vllm["env"])
    assert shipper == {"name": "log-shipper", "image": SIDECAR_IMAGE}
    dep["status"] = {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1,
                     "conditions": [{"type": "Available", "status": "True"}]}
    observed = observe_deployment(dep)
    assert observed is not None and observed.image == IMAGE


def test_snapshot_records_the_whole_template() -> None:
    spec = template_spec()
    snap = build_snapshot("fraud", "shop", OWNER, 4, spec)
    template = snap["data"]["serving"]["template"]
    assert template["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    restored = spec_from_snapshot(snap)
    assert restored == spec
    assert build_deployment("fraud", "shop", OWNER, 4, restored, 1) == build_deployment(
        "fraud", "shop", OWNER, 4, spec, 1)


# --- Istio's proxy -----------------------------------------------------------------------


def pod(annotations: dict[str, str] | None = None, containers: tuple[str, ...] = ("m",),
        init: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "metadata": {"annotations": annotations or {}},
        "spec": {"containers": [{"name": n} for n in containers],
                 "initContainers": [{"name": n} for n in init]},
    }


@pytest.mark.parametrize(
    ("observed", "meshed"),
    [
        (pod(), False),
        (pod({"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}), True),
        (pod(containers=("m", "istio-proxy")), True),
        (pod(init=("istio-init", "istio-proxy")), True),  # a native sidecar (Istio >= 1.19)
        (pod({"ambient.istio.io/redirection": "enabled"}), True),
        (pod({"ambient.istio.io/redirection": "disabled"}), False),
        (pod({"sidecar.istio.io/inject": "true"}), False),  # asked for, not injected
    ],
)
def test_a_pod_has_istios_proxy_when_injected_or_in_ambient_mode(
    observed: dict[str, Any], meshed: bool
) -> None:
    assert has_mesh_proxy(observed) is meshed


@pytest.mark.parametrize(
    ("mode", "namespace_labels", "pod_labels", "expected"),
    [
        ("Auto", {}, {}, ""),  # the sandbox, a cluster without Istio: nothing to check
        ("Auto", {"istio-injection": "enabled"}, {},
         "namespace shop is labelled istio-injection=enabled"),
        ("Auto", {"istio-injection": "disabled", "istio.io/rev": "1-22"}, {}, ""),
        ("Auto", {"istio.io/rev": "1-22"}, {}, "namespace shop is labelled istio.io/rev=1-22"),
        ("Auto", {"istio.io/dataplane-mode": "ambient"}, {},
         "namespace shop is in ambient mode (istio.io/dataplane-mode=ambient)"),
        ("Auto", {"istio-injection": "enabled"}, {"sidecar.istio.io/inject": "false"}, ""),
        ("Auto", {}, {"sidecar.istio.io/inject": "true"},
         "the pod template is labelled sidecar.istio.io/inject=true"),
        ("Required", {}, {}, "spec.traffic.sidecar is Required"),
        ("Ignore", {"istio-injection": "enabled"}, {}, ""),
    ],
)
def test_when_istios_proxy_is_expected(
    mode: str, namespace_labels: dict[str, str], pod_labels: dict[str, str], expected: str
) -> None:
    template = {"metadata": {"labels": pod_labels}, "spec": {"containers": [{"name": "m"}]}}
    spec = make_spec(
        serving={"template": template} if pod_labels else {},
        traffic={"hosts": ["fraud.example.com"], "sidecar": mode},
    )
    assert proxy_expectation(spec, "shop", namespace_labels) == expected


ISTIO_ERRORS = (
    'sum(rate(istio_requests_total{reporter="destination",'
    'destination_workload="{{candidateWorkload}}",response_code=~"5.."}[{{interval}}]))'
)
ISTIO_P95 = (
    "histogram_quantile(0.95, sum by (le) (rate(istio_request_duration_milliseconds_bucket{"
    'destination_workload="{{candidateWorkload}}"}[{{interval}}])))'
)
OWN_GAUGE = 'max(model_error_rate{workload="{{candidateWorkload}}"})'


def make_policy(*queries: str, breaker: str | None = None) -> RolloutPolicySpec:
    """A canary policy with a metric per query (m0, m1, ...) and an optional breaker."""
    raw: dict[str, Any] = {
        "strategy": {"canary": {"steps": [{"weight": 50, "pause": {"duration": "1m"}}]}},
        "analysis": {"metrics": [
            {"name": f"m{i}", "query": q, "thresholds": {"max": 1}}
            for i, q in enumerate(queries)
        ]},
    }
    if breaker is not None:
        raw["breaker"] = {"query": breaker, "thresholds": {"max": 1},
                          "fallback": {"directResponse": {"status": 503}}}
    return RolloutPolicySpec.model_validate(raw)


def test_which_of_the_policys_queries_read_istios_metrics() -> None:
    policy = make_policy(OWN_GAUGE, ISTIO_ERRORS, ISTIO_P95, breaker=ISTIO_ERRORS)
    assert istio_metric_reads(policy, "shop", "fraud") == [
        ("metric m1", ["istio_requests_total"]),
        ("metric m2", ["istio_request_duration_milliseconds_bucket"]),
        ("breaker query", ["istio_requests_total"]),
    ]
    assert istio_metric_reads(make_policy(OWN_GAUGE), "shop", "fraud") == []
    assert istio_metric_reads(make_policy(), "shop", "fraud") == []  # no metrics at all


@pytest.mark.parametrize(
    ("mode", "policy", "traffic", "pod_labels", "expected"),
    [
        # Issue 12: no injection label, Istio routing, Istio's metrics: expected, and why.
        ("Auto", make_policy(ISTIO_ERRORS), {}, {},
         "the policy's metric m0 reads istio_requests_total, which only Istio's proxy reports"),
        ("Auto", make_policy(OWN_GAUGE, ISTIO_P95, ISTIO_ERRORS, breaker=ISTIO_ERRORS), {}, {},
         "the policy's metric m1 reads istio_request_duration_milliseconds_bucket (as do the "
         "metric m2 and the breaker query), which only Istio's proxy reports"),
        ("Auto", make_policy(OWN_GAUGE, breaker=ISTIO_ERRORS), {}, {},
         "the policy's breaker query reads istio_requests_total, which only Istio's proxy "
         "reports"),
        ("Auto", make_policy(OWN_GAUGE), {}, {}, ""),  # metrics from elsewhere
        ("Auto", None, {}, {}, ""),  # the policy is not known (missing, invalid)
        # Routed by Gateway API: its gateway may be another implementation's.
        ("Auto", make_policy(ISTIO_ERRORS),
         {"gatewayAPI": {"parentRefs": [{"name": "public"}]}}, {}, ""),
        ("Auto", make_policy(ISTIO_ERRORS), {}, {"sidecar.istio.io/inject": "false"}, ""),
        ("Ignore", make_policy(ISTIO_ERRORS), {}, {}, ""),
        ("Required", make_policy(ISTIO_ERRORS), {}, {}, "spec.traffic.sidecar is Required"),
    ],
)
def test_a_proxy_is_expected_when_an_istio_routed_release_is_judged_on_istios_metrics(
    mode: str, policy: RolloutPolicySpec | None, traffic: dict[str, Any],
    pod_labels: dict[str, str], expected: str,
) -> None:
    template = {"metadata": {"labels": pod_labels}, "spec": {"containers": [{"name": "m"}]}}
    spec = make_spec(
        serving={"template": template} if pod_labels else {},
        traffic={"hosts": ["fraud.example.com"], "sidecar": mode, **traffic},
    )
    assert proxy_expectation(spec, "shop", {}, policy, "fraud") == expected
    # The namespace's label, when there is one, is the reason given.
    if expected.startswith("the policy's"):
        assert proxy_expectation(spec, "shop", {"istio-injection": "enabled"}, policy,
                                 "fraud") == "namespace shop is labelled istio-injection=enabled"


def test_the_examples_expect_a_proxy_where_they_read_istios_metrics_off_istios_routes() -> None:
    """The examples are for real clusters and keep Auto: routed by Istio and judged on its
    metrics, they need the proxy (hack/kind-up.sh labels their namespace); the one on
    Gateway API reads no istio_* metric and expects nothing without a label."""
    found: dict[str, str] = {}
    for file, docs in load_examples().items():
        kinds = {d["kind"]: d for d in docs}
        if {"ModelRelease", "RolloutPolicy"} - set(kinds):
            continue
        release = ModelReleaseSpec.model_validate(kinds["ModelRelease"]["spec"])
        policy = RolloutPolicySpec.model_validate(kinds["RolloutPolicy"]["spec"])
        assert release.traffic.sidecar == "Auto"
        found[file] = proxy_expectation(release, "shop", {}, policy, "x")
    also = "which only Istio's proxy reports"
    assert found == {
        "chatbot-bluegreen-approval.yaml": "the policy's metric error-rate reads "
        f"istio_requests_total (as do the metric p95-latency), {also}",
        "fraud-detection-canary.yaml": "the policy's metric error-rate reads "
        f"istio_requests_total (as do the metric p99-latency), {also}",
        "llm-gateway-api-canary.yaml": "",
        "llm-gpu-grpc.yaml": "the policy's metric grpc-error-rate reads istio_requests_total "
        f"(as do the metric p95-latency-ms), {also}",
        "recommender-shadow.yaml": "the policy's metric error-rate reads istio_requests_total "
        f"(as do the metric p99-latency-ratio), {also}",
    }
    (gateway_api,) = [d for d in load_examples()["llm-gateway-api-canary.yaml"]
                      if d["kind"] == "RolloutPolicy"]
    assert istio_metric_reads(RolloutPolicySpec.model_validate(gateway_api["spec"]), "shop",
                              "x") == []  # vLLM's own metrics
