"""Valid examples and invalid variants of the Rewind API, shared by unit and sandbox tests.

Each invalid case is a valid example with one mutation, so a rejection can only come from
that mutation. The same table drives the pydantic models (tests/unit/test_api.py) and the
API server's admission of the generated CRDs (tests/sandbox/test_api_admission.py), which
keeps the two layers of validation in agreement.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

_DELETE = object()
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def load_examples() -> dict[str, list[dict[str, Any]]]:
    """File name -> the documents in it."""
    return {
        path.name: [d for d in yaml.safe_load_all(path.read_text()) if d]
        for path in sorted(EXAMPLES.glob("*.yaml"))
    }


def example(file: str, kind: str) -> dict[str, Any]:
    """A deep copy of the document of ``kind`` in examples/``file``."""
    for doc in load_examples()[file]:
        if doc["kind"] == kind:
            return copy.deepcopy(doc)
    raise KeyError(f"no {kind} in {file}")


def _tokens(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _TOKEN.findall(path)]


def mutate(doc: dict[str, Any], path: str, value: Any = _DELETE) -> dict[str, Any]:
    """Return a copy of ``doc`` with ``path`` (``a.b[0].c``) set to value, or deleted."""
    out = copy.deepcopy(doc)
    *parents, last = _tokens(path)
    node: Any = out
    for token in parents:
        if isinstance(token, str) and token not in node:
            node[token] = {}
        node = node[token]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Case:
    """One invalid manifest and what the rejection must say."""

    id: str
    base: tuple[str, str]  # (example file, kind)
    changes: tuple[tuple[str, Any], ...]  # (path, value or DELETE)
    path: str  # field path the API server error must name
    reason: str  # text the API server error must contain
    pydantic: bool = True  # False: only the API server can see it (e.g. metadata, types)
    extra: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        doc = example(*self.base)
        for path, value in self.changes:
            doc = mutate(doc, path, value)
        return doc


DELETE: Any = _DELETE
FRAUD_MR = ("fraud-detection-canary.yaml", "ModelRelease")
FRAUD_RP = ("fraud-detection-canary.yaml", "RolloutPolicy")
CHAT_RP = ("chatbot-bluegreen-approval.yaml", "RolloutPolicy")
REC_RP = ("recommender-shadow.yaml", "RolloutPolicy")
GW_MR = ("llm-gateway-api-canary.yaml", "ModelRelease")
GW = "spec.traffic.gatewayAPI"
D64 = "ab" * 32
TAG_IMAGE = "registry.example.com/fraud-server:2.1.0"
LLM_MR = ("llm-gpu-grpc.yaml", "ModelRelease")
LLM_RP = ("llm-gpu-grpc.yaml", "RolloutPolicy")
TEMPLATE = "spec.serving.template.spec"
SERVER = f"{TEMPLATE}.containers[0]"
SIDECAR = {"name": "log-shipper", "image": "registry.example.com/shipper@sha256:" + "d" * 64}
STEPS = "spec.strategy.canary.steps"
M0 = "spec.analysis.metrics[0]"
ON_SUCCESS = "spec.strategy.shadow.onSuccess"

INVALID: list[Case] = [
    # --- ModelRelease ---------------------------------------------------------------------
    Case(
        "missing-digest",
        FRAUD_MR,
        (("spec.model.artifactDigest", DELETE),),
        "spec.model.artifactDigest",
        "Required value",
    ),
    Case(
        "short-digest",
        FRAUD_MR,
        (("spec.model.artifactDigest", "sha256:abc123"),),
        "spec.model.artifactDigest",
        "should match",
    ),
    Case(
        "md5-digest",
        FRAUD_MR,
        (("spec.model.artifactDigest", "md5:" + "a" * 32),),
        "spec.model.artifactDigest",
        "should match",
    ),
    Case(
        "uppercase-digest",
        FRAUD_MR,
        (("spec.model.artifactDigest", "sha256:" + "AB" * 32),),
        "spec.model.artifactDigest",
        "should match",
    ),
    Case(
        "tag-only-image",
        FRAUD_MR,
        (("spec.code.image", TAG_IMAGE),),
        "spec.code.image",
        "pinned by digest",
    ),
    Case(
        "tag-image-opt-out",
        FRAUD_MR,
        (("spec.code.image", TAG_IMAGE), ("spec.code.allowTagImage", False)),
        "spec.code.image",
        "pinned by digest",
    ),
    Case(
        "image-with-space",
        FRAUD_MR,
        (("spec.code.image", "bad image@sha256:" + D64),),
        "spec.code.image",
        "should match",
    ),
    Case(
        "bad-dependencies-digest",
        FRAUD_MR,
        (("spec.environment.dependenciesDigest", "sha256:xyz"),),
        "spec.environment.dependenciesDigest",
        "should match",
    ),
    Case(
        "artifact-uri-without-scheme",
        FRAUD_MR,
        (("spec.model.artifactURI", "models/fraud/model.onnx"),),
        "spec.model.artifactURI",
        "should match",
    ),
    Case(
        "unknown-format",
        FRAUD_MR,
        (("spec.model.format", "pickle"),),
        "spec.model.format",
        "Unsupported value",
    ),
    Case(
        "unknown-signature-type",
        FRAUD_MR,
        (("spec.model.signatureRef", {"uri": "s3://m/sig", "type": "gpg"}),),
        "spec.model.signatureRef.type",
        "Unsupported value",
    ),
    Case(
        "registry-reserved-alias",
        FRAUD_MR,
        (("spec.model.registry.alias", "Latest"),),
        "spec.model.registry.alias",
        "reserved by MLflow",
    ),
    Case(
        "registry-version-alias",
        FRAUD_MR,
        (("spec.model.registry.alias", "v3"),),
        "spec.model.registry.alias",
        "reserved by MLflow",
    ),
    Case(
        "registry-version-not-a-number",
        FRAUD_MR,
        (("spec.model.registry.version", "v14"),),
        "spec.model.registry.version",
        "should match",
    ),
    Case(
        "registry-not-http",
        FRAUD_MR,
        (("spec.model.registry.trackingURI", "databricks://profile"),),
        "spec.model.registry.trackingURI",
        "should match",
    ),
    Case(
        "missing-policy-ref",
        FRAUD_MR,
        (("spec.policyRef", DELETE),),
        "spec.policyRef",
        "Required value",
    ),
    Case(
        "missing-traffic", FRAUD_MR, (("spec.traffic", DELETE),), "spec.traffic", "Required value"
    ),
    Case(
        "empty-hosts",
        FRAUD_MR,
        (("spec.traffic.hosts", []),),
        "spec.traffic.hosts",
        "should have at least 1 items",
    ),
    Case(
        "bad-host",
        FRAUD_MR,
        (("spec.traffic.hosts", ["Fraud Example"]),),
        "spec.traffic.hosts[0]",
        "should match",
    ),
    Case(
        "bad-gateway",
        FRAUD_MR,
        (("spec.traffic.gateways", ["istio system/public"]),),
        "spec.traffic.gateways[0]",
        "should match",
    ),
    # Hosts and gateways Istio refuses or misreads (issue 12): each was accepted at admission
    # and failed the release at its first route write (tests/sandbox/test_istioctl.py shows
    # istioctl refusing what Rewind wrote from each).
    Case(
        "host-label-over-63",
        FRAUD_MR,
        (("spec.traffic.hosts", ["x" * 64 + ".example.com"]),),
        "spec.traffic.hosts[0]",
        "at most 63 characters",
    ),
    Case(
        "host-empty-label",
        FRAUD_MR,
        (("spec.traffic.hosts", ["fraud..example.com"]),),
        "spec.traffic.hosts[0]",
        "no empty DNS label",
    ),
    Case(
        "host-label-ending-in-a-dash",
        FRAUD_MR,
        (("spec.traffic.hosts", ["fraud-.example.com"]),),
        "spec.traffic.hosts[0]",
        "DNS-1123 label",
    ),
    Case(
        "host-wildcard-not-first",
        FRAUD_MR,
        (("spec.traffic.hosts", ["fraud.*.example.com"]),),
        "spec.traffic.hosts[0]",
        "should match",
    ),
    Case(
        "host-numeric-last-label",
        FRAUD_MR,
        (("spec.traffic.hosts", ["fraud.example.123"]),),
        "spec.traffic.hosts[0]",
        "not all digits",
    ),
    Case(
        "host-wildcard-over-services",
        FRAUD_MR,
        (("spec.traffic.hosts", ["*.svc.cluster.local"]),),
        "spec.traffic.hosts[0]",
        "may not cover in-cluster Service names",
    ),
    Case(
        "host-wildcard-over-namespace",
        FRAUD_MR,
        (("spec.traffic.hosts", ["fraud.example.com", "*.risk.svc.cluster.local"]),),
        "spec.traffic.hosts[1]",
        "may not cover in-cluster Service names",
    ),
    Case(
        "host-wildcard-over-cluster-domain",
        FRAUD_MR,
        (("spec.traffic.hosts", ["*.cluster.local"]),),
        "spec.traffic.hosts[0]",
        "may not cover in-cluster Service names",
    ),
    Case(
        "hosts-wildcard-overlap",
        FRAUD_MR,
        (("spec.traffic.hosts", ["*.example.com", "fraud.example.com"]),),
        "spec.traffic.hosts",
        "two hosts overlap",
    ),
    Case(
        "hosts-duplicate",
        FRAUD_MR,
        (("spec.traffic.hosts", ["fraud.example.com", "fraud.example.com"]),),
        "spec.traffic.hosts",
        "two hosts overlap",
    ),
    Case(
        "short-host-is-release-name",
        FRAUD_MR,
        (("spec.traffic.hosts", ["fraud.example.com", "fraud-detector"]),),
        "spec.traffic.hosts",
        "IST0109",
    ),
    Case(
        "gateway-name-with-dots",
        FRAUD_MR,
        (("spec.traffic.gateways", ["istio-system/public.gateway"]),),
        "spec.traffic.gateways[0]",
        "with no dots",
    ),
    Case(
        "gateway-legacy-name-dot-namespace",
        FRAUD_MR,
        (("spec.traffic.gateways", ["public.istio-system"]),),
        "spec.traffic.gateways[0]",
        "with no dots",
    ),
    Case(
        "gateway-name-over-63",
        FRAUD_MR,
        (("spec.traffic.gateways", ["istio-system/" + "g" * 64]),),
        "spec.traffic.gateways[0]",
        "at most 63 characters",
    ),
    Case(
        "gateway-mesh",
        FRAUD_MR,
        (("spec.traffic.gateways", ["istio-system/public", "mesh"]),),
        "spec.traffic.gateways[1]",
        "traffic.meshRouting",
    ),
    Case(
        "mesh-routing-off-without-gateway",
        FRAUD_MR,
        (("spec.traffic.gateways", DELETE), ("spec.traffic.meshRouting", False)),
        "spec.traffic.meshRouting",
        "name at least one",
    ),
    Case(
        "route-timeout-zero",
        FRAUD_MR,
        (("spec.traffic.timeout", "0s"),),
        "spec.traffic.timeout",
        "must be more than 0s",
    ),
    Case(
        "route-per-try-timeout-zero",
        FRAUD_MR,
        (("spec.traffic.retries", {"attempts": 2, "perTryTimeout": "0ms"}),),
        "spec.traffic.retries.perTryTimeout",
        "must be more than 0s",
    ),
    Case(
        "route-retries-too-many",
        FRAUD_MR,
        (("spec.traffic.retries", {"attempts": 11}),),
        "spec.traffic.retries.attempts",
        "less than or equal to 10",
    ),
    Case(
        "replicas-zero",
        FRAUD_MR,
        (("spec.serving.replicas", 0),),
        "spec.serving.replicas",
        "greater than or equal to 1",
    ),
    Case(
        "replicas-too-many",
        FRAUD_MR,
        (("spec.serving.replicas", 101),),
        "spec.serving.replicas",
        "less than or equal to 100",
    ),
    Case(
        "replicas-wrong-type",
        FRAUD_MR,
        (("spec.serving.replicas", "three"),),
        "spec.serving.replicas",
        "must be of type integer",
    ),
    Case(
        "port-out-of-range",
        FRAUD_MR,
        (("spec.serving.port", 70000),),
        "spec.serving.port",
        "less than or equal to 65535",
    ),
    Case(
        "readiness-path-relative",
        FRAUD_MR,
        (("spec.serving.readinessPath", "healthz"),),
        "spec.serving.readinessPath",
        "should match",
    ),
    Case(
        "lineage-not-string",
        FRAUD_MR,
        (("spec.data.lineage.epochs", 12),),
        "spec.data.lineage.epochs",
        "must be of type string",
    ),
    Case(
        "data-version-with-space",
        FRAUD_MR,
        (("spec.data.version", "main branch"),),
        "spec.data.version",
        "should match",
    ),
    Case(
        "unknown-field-model",
        FRAUD_MR,
        (("spec.model.checksum", "x"),),
        "spec.model.checksum",
        "unknown field",
    ),
    Case(
        "env-value-from",
        FRAUD_MR,
        (("spec.code.env", [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),),
        "spec.code.env[0].valueFrom",
        "unknown field",
    ),
    Case(
        "model-wrong-type",
        FRAUD_MR,
        (("spec.model", "fraud-detector:2.1.0"),),
        "spec.model",
        "must be of type object",
    ),
    Case(
        "release-name-too-long",
        FRAUD_MR,
        (("metadata.name", "fraud-" + "x" * 50),),
        "metadata.name",
        "may not be more than 50",
        pydantic=False,
    ),
    Case(
        "release-name-with-dot",
        FRAUD_MR,
        (("metadata.name", "fraud.v2"),),
        "metadata.name",
        "should match",
        pydantic=False,
    ),
    # --- ModelRelease: pod template ---------------------------------------------------------
    Case(
        "template-and-workload-ref",
        LLM_MR,
        (("spec.serving.workloadRef", {"name": "llama-chat-template"}),),
        "spec.serving.workloadRef",
        "not both",
    ),
    Case(
        "template-model-server-image",
        LLM_MR,
        ((f"{SERVER}.image", "nvcr.io/nvidia/tritonserver@sha256:" + D64),),
        f"{TEMPLATE}.containers",
        "remove image",
    ),
    Case(
        # The first container is the model server when none is named model-server.
        "template-first-container-is-the-model-server",
        LLM_MR,
        ((f"{SERVER}.name", "triton"), (f"{SERVER}.image", "nvcr.io/nvidia/triton@sha256:" + D64)),
        f"{TEMPLATE}.containers",
        "remove image",
    ),
    Case(
        "template-sidecar-tag-image",
        LLM_MR,
        ((f"{TEMPLATE}.containers", [{"name": "model-server"},
                                     {"name": "log-shipper", "image": "shipper:1.2"}]),),
        f"{TEMPLATE}.containers",
        "pinned by digest",
    ),
    Case(
        "template-init-container-tag-image",
        LLM_MR,
        ((f"{TEMPLATE}.initContainers[0].image", "registry.example.com/ml/weights-check:v2"),),
        f"{TEMPLATE}.initContainers",
        "pinned by digest",
    ),
    Case(
        "template-serving-port-repeated",
        LLM_MR,
        ((f"{SERVER}.ports", [{"name": "grpc", "containerPort": 8001}]),),
        f"{TEMPLATE}.containers",
        "remove that port",
    ),
    Case(
        "template-port-named-http",
        LLM_MR,
        ((f"{SERVER}.ports", [{"name": "http", "containerPort": 8000}]),),
        f"{TEMPLATE}.containers",
        "remove that port",
    ),
    Case(
        "template-sets-model-uri",
        LLM_MR,
        ((f"{SERVER}.env", [{"name": "MODEL_URI", "value": "s3://elsewhere"}]),),
        f"{TEMPLATE}.containers",
        "set by Rewind",
    ),
    Case(
        "resources-twice",
        LLM_MR,
        (("spec.serving.resources", {"limits": {"memory": "4Gi"}}),),
        "spec.serving.resources",
        "not both",
    ),
    Case(
        "liveness-twice",
        FRAUD_MR,
        (
            ("spec.serving.template", {"spec": {"containers": [
                {"name": "model-server", "livenessProbe": {"tcpSocket": {"port": 8080}}}]}}),
            ("spec.serving.resources", DELETE),
        ),
        "spec.serving.livenessPath",
        "not both",
    ),
    Case(
        "grpc-with-liveness-path",
        LLM_MR,
        (("spec.serving.livenessPath", "/healthz"),),
        "spec.serving.livenessPath",
        "is an HTTP path",
    ),
    Case(
        "args-twice",
        LLM_MR,
        (("spec.code.args", ["--log-verbose=1"]),),
        f"{TEMPLATE}.containers",
        "not both",
    ),
    Case(
        "template-without-containers",
        LLM_MR,
        ((f"{TEMPLATE}.containers", []),),
        f"{TEMPLATE}.containers",
        "should have at least 1 items",
    ),
    Case(
        "template-container-name",
        LLM_MR,
        ((f"{TEMPLATE}.initContainers[0].name", "Check_Weights"),),
        f"{TEMPLATE}.initContainers[0].name",
        "should match",
    ),
    Case(
        "template-unknown-protocol",
        LLM_MR,
        (("spec.serving.protocol", "tcp"),),
        "spec.serving.protocol",
        "Unsupported value",
    ),
    Case(
        "workload-ref-bad-name",
        FRAUD_MR,
        (("spec.serving.workloadRef", {"name": "Helm Release"}),),
        "spec.serving.workloadRef.name",
        "should match",
    ),
    Case(
        "unknown-sidecar-mode",
        FRAUD_MR,
        (("spec.traffic.sidecar", "Off"),),
        "spec.traffic.sidecar",
        "Unsupported value",
    ),
    # --- RolloutPolicy --------------------------------------------------------------------
    Case(
        "two-strategies",
        FRAUD_RP,
        (("spec.strategy.blueGreen", {"autoSwitch": True}),),
        "spec.strategy",
        "exactly one of",
    ),
    Case("no-strategy", FRAUD_RP, (("spec.strategy", {}),), "spec.strategy", "exactly one of"),
    Case(
        "missing-strategy",
        FRAUD_RP,
        (("spec.strategy", DELETE),),
        "spec.strategy",
        "Required value",
    ),
    Case(
        "unknown-strategy",
        FRAUD_RP,
        (("spec.strategy", {"linear": {"steps": 3}}),),
        "spec.strategy.linear",
        "unknown field",
    ),
    Case(
        "decreasing-weights",
        FRAUD_RP,
        ((STEPS, [{"weight": 50}, {"weight": 25}, {"weight": 10}]),),
        STEPS,
        "strictly increasing",
    ),
    Case(
        "equal-weights",
        FRAUD_RP,
        ((STEPS, [{"weight": 10}, {"weight": 10}]),),
        STEPS,
        "strictly increasing",
    ),
    Case(
        "weight-150",
        FRAUD_RP,
        ((f"{STEPS}[2].weight", 150),),
        f"{STEPS}[2].weight",
        "less than or equal to 100",
    ),
    Case(
        "weight-0",
        FRAUD_RP,
        ((f"{STEPS}[0].weight", 0),),
        f"{STEPS}[0].weight",
        "greater than or equal to 1",
    ),
    Case(
        "weight-wrong-type",
        FRAUD_RP,
        ((f"{STEPS}[0].weight", "10%"),),
        f"{STEPS}[0].weight",
        "must be of type integer",
    ),
    Case("no-steps", FRAUD_RP, ((STEPS, []),), STEPS, "should have at least 1 items"),
    Case(
        "pause-duration-and-manual",
        FRAUD_RP,
        ((f"{STEPS}[0].pause", {"duration": "5m", "manual": True}),),
        f"{STEPS}[0].pause",
        "exactly one of pause.duration",
    ),
    Case(
        "pause-empty",
        FRAUD_RP,
        ((f"{STEPS}[0].pause", {}),),
        f"{STEPS}[0].pause",
        "exactly one of pause.duration",
    ),
    Case(
        "bad-duration-words",
        FRAUD_RP,
        ((f"{STEPS}[0].pause.duration", "5 minutes"),),
        f"{STEPS}[0].pause.duration",
        "should match",
    ),
    Case(
        "bad-duration-days",
        FRAUD_RP,
        (("spec.progressDeadline", "1d"),),
        "spec.progressDeadline",
        "should match",
    ),
    Case(
        "duration-wrong-type",
        FRAUD_RP,
        (("spec.keepPreviousWarm", 600),),
        "spec.keepPreviousWarm",
        "must be of type string",
    ),
    Case(
        "interval-below-1s",
        FRAUD_RP,
        (("spec.analysis.interval", "500ms"),),
        "spec.analysis.interval",
        "at least 1s",
    ),
    Case(
        "metric-timeout-over-interval",
        FRAUD_RP,
        (("spec.analysis.interval", "10s"), (f"{M0}.timeout", "30s")),
        "spec.analysis.metrics",
        "must be at most analysis.interval",
    ),
    Case(
        # No interval: the default (30s) applies, at admission as in the models.
        "metric-timeout-over-default-interval",
        FRAUD_RP,
        (("spec.analysis.interval", DELETE), ("spec.analysis.metrics[1].timeout", "45s")),
        "spec.analysis.metrics",
        "must be at most analysis.interval",
    ),
    Case(
        "metric-timeout-zero",
        FRAUD_RP,
        ((f"{M0}.timeout", "0s"),),
        f"{M0}.timeout",
        "more than 0s",
    ),
    Case(
        "metric-timeout-not-a-duration",
        FRAUD_RP,
        ((f"{M0}.timeout", "20"),),
        f"{M0}.timeout",
        "should match",
    ),
    Case(
        "min-greater-than-max",
        FRAUD_RP,
        ((f"{M0}.thresholds", {"min": 0.5, "max": 0.1}),),
        f"{M0}.thresholds",
        "less than or equal to thresholds.max",
    ),
    Case(
        "no-thresholds",
        FRAUD_RP,
        ((f"{M0}.thresholds", {}),),
        f"{M0}.thresholds",
        "at least one of thresholds.min",
    ),
    Case(
        "missing-thresholds",
        FRAUD_RP,
        ((f"{M0}.thresholds", DELETE),),
        f"{M0}.thresholds",
        "Required value",
    ),
    Case(
        "threshold-wrong-type",
        FRAUD_RP,
        ((f"{M0}.thresholds", {"max": "5%"}),),
        f"{M0}.thresholds.max",
        "must be of type number",
    ),
    Case(
        "unknown-template-variable",
        FRAUD_RP,
        ((f"{M0}.query", 'sum(rate(istio_requests_total{workload="{{canidate}}"}[1m]))'),),
        f"{M0}.query",
        "unknown template variable",
    ),
    Case(
        "bad-metric-name", FRAUD_RP, ((f"{M0}.name", "Error_Rate"),), f"{M0}.name", "should match"
    ),
    Case(
        "duplicate-metric-names",
        FRAUD_RP,
        (("spec.analysis.metrics[1].name", "error-rate"),),
        "spec.analysis.metrics[1]",
        "Duplicate value",
    ),
    Case(
        "failure-limit-zero",
        FRAUD_RP,
        (("spec.analysis.failureLimit", 0),),
        "spec.analysis.failureLimit",
        "greater than or equal to 1",
    ),
    Case(
        "unknown-no-data-policy",
        FRAUD_RP,
        (("spec.analysis.noData", "Skip"),),
        "spec.analysis.noData",
        "Unsupported value",
    ),
    Case(
        "unknown-rollback-mode",
        FRAUD_RP,
        (("spec.rollback.mode", "manual"),),
        "spec.rollback.mode",
        "Unsupported value",
    ),
    Case(
        "allow-tag-images-wrong-type",
        FRAUD_RP,
        (("spec.allowTagImages", "yes"),),
        "spec.allowTagImages",
        "must be of type boolean",
        pydantic=False,
    ),
    Case(
        "approval-without-approval-block",
        CHAT_RP,
        (("spec.rollback.approval", DELETE),),
        "spec.rollback.approval",
        "required when rollback.mode is approval",
    ),
    Case(
        "approval-zero-approvers",
        CHAT_RP,
        (("spec.rollback.approval.requiredApprovers", 0),),
        "spec.rollback.approval.requiredApprovers",
        "greater than or equal to 1",
    ),
    Case(
        "approval-unknown-timeout-action",
        CHAT_RP,
        (("spec.rollback.approval.onTimeout", "Ignore"),),
        "spec.rollback.approval.onTimeout",
        "Unsupported value",
    ),
    Case(
        "shadow-canary-without-canary",
        REC_RP,
        ((f"{ON_SUCCESS}.canary", DELETE),),
        f"{ON_SUCCESS}.canary",
        "required when onSuccess.action is Canary",
    ),
    Case(
        "shadow-bluegreen-without-bluegreen",
        REC_RP,
        ((f"{ON_SUCCESS}", {"action": "BlueGreen"}),),
        f"{ON_SUCCESS}.blueGreen",
        "required when onSuccess.action is BlueGreen",
    ),
    Case(
        "shadow-stop-with-canary",
        REC_RP,
        ((f"{ON_SUCCESS}.action", "Stop"),),
        f"{ON_SUCCESS}.canary",
        "only allowed when onSuccess.action is Canary",
    ),
    Case(
        "shadow-mirror-zero",
        REC_RP,
        (("spec.strategy.shadow.mirrorPercent", 0),),
        "spec.strategy.shadow.mirrorPercent",
        "greater than or equal to 1",
    ),
    Case(
        "shadow-unknown-action",
        REC_RP,
        ((f"{ON_SUCCESS}.action", "Promote"),),
        f"{ON_SUCCESS}.action",
        "Unsupported value",
    ),
    Case(
        "rollback-window-negative",
        FRAUD_RP,
        (("spec.rollbackWindow.revisions", -1),),
        "spec.rollbackWindow.revisions",
        "greater than or equal to 0",
    ),
    Case(
        "rollback-window-beyond-history",
        FRAUD_RP,
        (("spec.rollbackWindow.revisions", 21),),
        "spec.rollbackWindow.revisions",
        "less than or equal to 20",
    ),
    Case(
        "rollback-window-unknown-field",
        FRAUD_RP,
        (("spec.rollbackWindow.days", 3),),
        "spec.rollbackWindow.days",
        "unknown field",
    ),
    Case(
        "first-release-unknown",
        FRAUD_RP,
        (("spec.firstRelease", "Skip"),),
        "spec.firstRelease",
        "Unsupported value",
    ),
    # --- Gateway API routing ---------------------------------------------------------------
    Case(
        "gateway-api-with-istio-gateways",
        GW_MR,
        (("spec.traffic.gateways", ["istio-system/public"]),),
        "spec.traffic.gateways",
        "with gatewayAPI, name the Gateways in gatewayAPI.parentRefs",
    ),
    Case(
        "gateway-api-with-retries",
        GW_MR,
        (("spec.traffic.retries", {"attempts": 0}),),
        "spec.traffic.retries",
        "retries are not part of Gateway API's standard HTTPRoute",
    ),
    Case(
        "gateway-api-hostname-not-dns",
        GW_MR,
        (("spec.traffic.hosts", ["summarize-.example.com"]),),
        "spec.traffic.hosts[0]",
        "DNS-1123 label",
    ),
    Case(
        "gateway-api-timeout-too-long",
        GW_MR,
        (("spec.traffic.timeout", "100000h"),),
        "spec.traffic.timeout",
        "timeout must be at most 99999h",
    ),
    Case(
        "gateway-api-backend-timeout-over-timeout",
        GW_MR,
        ((f"{GW}.backendRequestTimeout", "301s"),),
        f"{GW}.backendRequestTimeout",
        "backendRequestTimeout must be at most timeout",
    ),
    Case(
        "gateway-api-backend-timeout-zero",
        GW_MR,
        ((f"{GW}.backendRequestTimeout", "0s"),),
        f"{GW}.backendRequestTimeout",
        "must be more than 0s",
    ),
    Case(
        "gateway-api-no-parents",
        GW_MR,
        ((f"{GW}.parentRefs", []),),
        f"{GW}.parentRefs",
        "should have at least 1 items",
    ),
    Case(
        "gateway-api-parent-without-name",
        GW_MR,
        ((f"{GW}.parentRefs", [{"namespace": "infra"}]),),
        f"{GW}.parentRefs[0].name",
        "Required value",
    ),
    Case(
        "gateway-api-same-parent-twice",
        GW_MR,
        ((f"{GW}.parentRefs", [{"name": "public", "namespace": "infra"},
                               {"name": "public", "namespace": "infra", "sectionName": "h"}]),),
        f"{GW}.parentRefs",
        "need distinct sectionNames",
    ),
    Case(
        "gateway-api-same-listener-twice",
        GW_MR,
        ((f"{GW}.parentRefs", [{"name": "public", "sectionName": "https"},
                               {"name": "public", "sectionName": "https"}]),),
        f"{GW}.parentRefs",
        "need distinct sectionNames",
    ),
    Case(
        "gateway-api-bad-parent-kind",
        GW_MR,
        ((f"{GW}.parentRefs[0].kind", "Gate way"),),
        f"{GW}.parentRefs[0].kind",
        "should match",
    ),
    Case(
        "gateway-api-endpoint-picker-without-port",
        GW_MR,
        ((f"{GW}.inferencePool.endpointPickerRef.port", DELETE),),
        f"{GW}.inferencePool.endpointPickerRef.port",
        "port is required when kind is Service",
    ),
    Case(
        "gateway-api-endpoint-picker-failure-mode",
        GW_MR,
        ((f"{GW}.inferencePool.endpointPickerRef.failureMode", "Retry"),),
        f"{GW}.inferencePool.endpointPickerRef.failureMode",
        "Unsupported value",
    ),
    Case(
        "header-route-same-header-twice",
        FRAUD_MR,
        (("spec.traffic.headerRoutes", [{"name": "beta", "headers": [
            {"name": "x-group", "exact": "beta"}, {"name": "x-group", "prefix": "b"}]}]),),
        "spec.traffic.headerRoutes[0].headers",
        "header names must be unique within a header route",
    ),
]

#: Variants that look unusual but must be accepted.
VALID_VARIANTS: list[tuple[str, tuple[str, str], tuple[tuple[str, Any], ...]]] = [
    (
        "tag-image-with-opt-in",
        FRAUD_MR,
        (("spec.code.image", TAG_IMAGE), ("spec.code.allowTagImage", True)),
    ),
    (
        "minimal-release",
        FRAUD_MR,
        (
            ("spec.data", DELETE),
            ("spec.environment", DELETE),
            ("spec.serving", DELETE),
            ("spec.code.args", DELETE),
            ("spec.code.env", DELETE),
            ("spec.traffic.gateways", DELETE),
        ),
    ),
    (
        "route-options",
        FRAUD_MR,
        (
            ("spec.traffic.timeout", "1ms"),
            ("spec.traffic.retries", {"attempts": 0, "perTryTimeout": "1h30m",
                                      "retryOn": "connect-failure,503"}),
        ),
    ),
    ("wildcard-host", FRAUD_MR, (("spec.traffic.hosts", ["*.fraud.example.com"]),)),
    (
        "disjoint-wildcards",
        FRAUD_MR,
        (("spec.traffic.hosts", ["*.a.example.com", "*.b.example.com", "example.com"]),),
    ),
    ("short-host-of-another-name", FRAUD_MR, (("spec.traffic.hosts", ["fraud"]),)),
    ("gateway-in-own-namespace", FRAUD_MR, (("spec.traffic.gateways", ["public"]),)),
    (
        "gateway-names-of-63",
        FRAUD_MR,
        (("spec.traffic.gateways", ["n" * 63 + "/" + "g" * 63]),),
    ),
    ("gateway-only-routing", FRAUD_MR, (("spec.traffic.meshRouting", False),)),
    (
        "template-tag-images-with-opt-in",
        LLM_MR,
        (
            (f"{TEMPLATE}.initContainers[0].image", "registry.example.com/ml/weights-check:v2"),
            ("spec.code.allowTagImage", True),
        ),
    ),
    (
        # A pinned sidecar first, the model server named: the order does not matter.
        "template-sidecar-before-the-model-server",
        LLM_MR,
        (
            (f"{TEMPLATE}.containers", [
                SIDECAR,
                {"name": "model-server", "args": ["tritonserver"]},
            ]),
        ),
    ),
    (
        # Only the model-server container's port is Rewind's: a sidecar may use any.
        "template-sidecar-uses-any-port",
        LLM_MR,
        ((f"{TEMPLATE}.containers", [{"name": "model-server"}, {**SIDECAR, "ports": [
            {"name": "http", "containerPort": 8001}]}]),),
    ),
    (
        "template-minimal",
        FRAUD_MR,
        (("spec.serving.template", {"spec": {"containers": [{"name": "model-server"}]}}),),
    ),
    ("workload-ref", FRAUD_MR, (("spec.serving.workloadRef", {"name": "fraud-helm"}),)),
    ("protocol-grpc", FRAUD_MR, (("spec.serving.protocol", "grpc"),
                                 ("spec.serving.livenessPath", DELETE))),
    ("protocol-http2", FRAUD_MR, (("spec.serving.protocol", "http2"),)),
    ("sidecar-required", FRAUD_MR, (("spec.traffic.sidecar", "Required"),)),
    ("threshold-min-only", FRAUD_RP, ((f"{M0}.thresholds", {"min": 0.9}),)),
    ("threshold-min-equals-max", FRAUD_RP, ((f"{M0}.thresholds", {"min": 1, "max": 1}),)),
    ("single-step-to-100", FRAUD_RP, ((STEPS, [{"weight": 100}]),)),
    (
        "metric-timeout-equal-to-interval",
        FRAUD_RP,
        (("spec.analysis.interval", "20s"), (f"{M0}.timeout", "20s")),
    ),
    ("metric-timeout-in-ms", FRAUD_RP, ((f"{M0}.timeout", "1500ms"),)),
    (
        "metric-timeout-within-default-interval",
        FRAUD_RP,
        (("spec.analysis.interval", DELETE), (f"{M0}.timeout", "30s")),
    ),
    ("template-with-spaces", FRAUD_RP, ((f"{M0}.query", 'up{pod=~"{{ candidateWorkload }}-.*"}'),)),
    ("no-metrics", FRAUD_RP, (("spec.analysis.metrics", []),)),
    (
        "minimal-policy",
        FRAUD_RP,
        (
            ("spec.analysis", DELETE),
            ("spec.rollback", DELETE),
            ("spec.progressDeadline", DELETE),
            ("spec.keepPreviousWarm", DELETE),
            ("spec.allowTagImages", DELETE),
        ),
    ),
    ("shadow-stop", REC_RP, ((ON_SUCCESS, {"action": "Stop"}),)),
    ("rollback-window-off", FRAUD_RP, (("spec.rollbackWindow", {"revisions": 0}),)),
    ("rollback-window-whole-history", FRAUD_RP, (("spec.rollbackWindow", {"revisions": 20}),)),
    ("rollback-window-default", FRAUD_RP, (("spec.rollbackWindow", {}),)),
    ("first-release-promote", FRAUD_RP, (("spec.firstRelease", "Promote"),)),
    ("first-release-gates", CHAT_RP, (("spec.firstRelease", "Gates"),)),
    (
        "gateway-api-services-minimal",
        GW_MR,
        (
            (f"{GW}", {"parentRefs": [{"name": "public"}]}),
            ("spec.traffic.timeout", DELETE),
            ("spec.traffic.headerRoutes", DELETE),
        ),
    ),
    (
        "gateway-api-mesh-service-parent-and-listeners",
        GW_MR,
        ((f"{GW}.parentRefs", [{"group": "", "kind": "Service", "name": "summarizer"},
                               {"name": "public", "namespace": "infra", "sectionName": "http"},
                               {"name": "public", "namespace": "infra", "sectionName": "https"},
                               {"name": "public", "sectionName": "https"}]),),
    ),
    (
        "gateway-api-backend-timeout-without-timeout",
        GW_MR,
        (("spec.traffic.timeout", DELETE), (f"{GW}.backendRequestTimeout", "99999h")),
    ),
    (
        "gateway-api-wildcard-host-and-prefix-header",
        GW_MR,
        (("spec.traffic.hosts", ["*.example.com"]),
         ("spec.traffic.headerRoutes", [{"name": "beta", "headers": [
             {"name": "x-group", "prefix": "beta"}, {"name": "x-user", "regex": "a.*"}]}])),
    ),
    (
        "gateway-api-endpoint-picker-not-a-service",
        GW_MR,
        ((f"{GW}.inferencePool.endpointPickerRef",
          {"group": "example.com", "kind": "Picker", "name": "p", "failureMode": "FailOpen"}),),
    ),
]
