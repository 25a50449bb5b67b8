"""ModelRelease and RolloutPolicy (rewind.dev/v1alpha1) as pydantic v2 models.

This module is the single source of truth for the API: ``rewind.crdgen`` turns these models
into the CRDs in ``crds/``, so every ``Field(description=...)`` here is what a platform
engineer reads in ``kubectl explain``. Python attributes are snake_case; YAML/JSON keys are
camelCase (``alias_generator=to_camel``, ``populate_by_name=True``).

Cross-field rules are written twice on purpose: as CEL (``x-kubernetes-validations``, in
``json_schema_extra``) so the API server rejects bad objects at admission, and as pydantic
validators so the operator and unit tests reject the same objects without a cluster.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from rewind import API_GROUP, API_VERSION
from rewind.templates import (
    TEMPLATE_QUERY_PATTERN,
    TEMPLATE_VARIABLES,
    query_variables,
    render_query,
    template_variables,
    validate_template,
)

__all__ = [
    "ANNOTATION_APPROVE_ROLLBACK",
    "ANNOTATION_DRILL",
    "ANNOTATION_PROMOTE",
    "ANNOTATION_REJECT_ROLLBACK",
    "ANNOTATION_RESET_BREAKER",
    "ANNOTATION_RETRY",
    "ANNOTATION_ROLLBACK",
    "API_GROUP",
    "API_VERSION",
    "DEFAULT_CLUSTER_DOMAIN",
    "DEFAULT_ROLLBACK_WINDOW",
    "DIGEST_PATTERN",
    "DNS_LABEL_PATTERN",
    "DNS_SUBDOMAIN_PATTERN",
    "DURATION_PATTERN",
    "GATEWAY_HOSTNAME_PATTERN",
    "GATEWAY_MAX_TIMEOUT",
    "GATEWAY_PATTERN",
    "HOST_PATTERN",
    "IMAGE_DIGEST_SUFFIX_PATTERN",
    "INJECTED_ENV",
    "MAX_CONSUMED_ACTIONS",
    "MAX_HISTORY",
    "MAX_HUMAN_TEXT",
    "MAX_MEASUREMENTS",
    "MAX_MESSAGE",
    "MAX_NOTIFICATIONS",
    "MAX_NOTIFICATION_TARGETS",
    "MAX_RELEASE_NAME",
    "MAX_SHORT_TEXT",
    "MAX_TIMELINE",
    "MAX_UNPINNED",
    "MESH_GATEWAY",
    "MODELRELEASE_KIND",
    "MODELRELEASE_PLURAL",
    "MODEL_SERVER_CONTAINER",
    "ROLLOUTPOLICY_KIND",
    "ROLLOUTPOLICY_PLURAL",
    "SERVING_PORT_NAME",
    "TEMPLATE_QUERY_PATTERN",
    "TEMPLATE_VARIABLES",
    "URI_PATTERN",
    "AnalysisSpec",
    "AnalysisStatus",
    "ApprovalRecord",
    "ApprovalSpec",
    "ApprovalTimeoutAction",
    "BlueGreenStrategy",
    "BreakerFallback",
    "BreakerReset",
    "BreakerResetMode",
    "BreakerSpec",
    "BreakerState",
    "BreakerStatus",
    "CanaryStep",
    "CanaryStrategy",
    "CodeSpec",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "ConsumedAction",
    "Container",
    "ContainerPort",
    "DataSpec",
    "DecisionAction",
    "Digest",
    "DirectResponseSpec",
    "DrillFailure",
    "DrillPhase",
    "DrillResult",
    "DrillSpec",
    "DrillStatus",
    "DrillVerdict",
    "Duration",
    "EndpointPickerFailureMode",
    "EndpointPickerRef",
    "EnvFromSource",
    "EnvVar",
    "EnvVarSource",
    "EnvironmentSpec",
    "FallbackServiceSpec",
    "FirstRelease",
    "GatewayAPITraffic",
    "GatewayParentRef",
    "HeaderMatch",
    "HeaderRoute",
    "HistoryEntry",
    "InferencePoolBackend",
    "IntegrityRecord",
    "IntegritySpec",
    "IntegrityVerdict",
    "KeyRef",
    "KeySelector",
    "KeySource",
    "Measurement",
    "MetricSpec",
    "ModelFormat",
    "ModelRelease",
    "ModelReleaseSpec",
    "ModelReleaseStatus",
    "ModelSpec",
    "NameReference",
    "NoDataPolicy",
    "NotificationRecord",
    "NotificationState",
    "NotificationsSpec",
    "ObjectMeta",
    "Outcome",
    "PassThroughModel",
    "PauseSpec",
    "PendingDecision",
    "PersistentVolumeClaimSource",
    "Phase",
    "PodSpec",
    "PodTemplate",
    "PodTemplateMetadata",
    "PolicyRef",
    "ProjectedVolumeSource",
    "Quantity",
    "Quarantine",
    "QuarantineEntry",
    "QuarantineMark",
    "QuarantineSpec",
    "QuarantineStatus",
    "QueryErrorKind",
    "QueryErrorPolicy",
    "ResourceRequirements",
    "RetrySpec",
    "RollbackMode",
    "RollbackSpec",
    "RollbackWindowSpec",
    "RolloutPolicy",
    "RolloutPolicySpec",
    "RolloutPolicyStatus",
    "RouteWeight",
    "RoutesStatus",
    "S3Access",
    "SecretName",
    "SecretVolumeSource",
    "ServiceAccountTokenProjection",
    "ServingProtocol",
    "ServingSpec",
    "ShadowAction",
    "ShadowOnSuccess",
    "ShadowStrategy",
    "SidecarMode",
    "SignaturePolicy",
    "SignatureRef",
    "SignatureType",
    "SpecModel",
    "StatusModel",
    "StrategySpec",
    "StrategyType",
    "TemplateEnvVar",
    "Thresholds",
    "TimelineEntry",
    "TimelineType",
    "TrafficSpec",
    "Verdict",
    "Volume",
    "VolumeProjection",
    "Weights",
    "WorkloadRef",
    "append_bounded",
    "clip",
    "format_value",
    "gateway_error",
    "hosts_match",
    "image_digest",
    "in_cluster_host",
    "model_server_index",
    "parse_duration",
    "query_variables",
    "release_host_errors",
    "render_query",
    "spec_hash",
    "spec_images",
    "tag_image_error",
    "template_variables",
    "validate_template",
    "workload_name",
]

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

MODELRELEASE_KIND = "ModelRelease"
MODELRELEASE_PLURAL = "modelreleases"
ROLLOUTPOLICY_KIND = "RolloutPolicy"
ROLLOUTPOLICY_PLURAL = "rolloutpolicies"
QUARANTINE_KIND = "Quarantine"
QUARANTINE_PLURAL = "quarantines"
#: Entries of one Quarantine object.
MAX_QUARANTINE_ENTRIES = 100

#: A release names its Services ``<name>-r<N>`` (DNS-1035 labels, <= 63 chars).
MAX_RELEASE_NAME = 50

#: Bounded status lists: the status schema sets maxItems to these, so trim before writing.
MAX_MEASUREMENTS = 20
MAX_HISTORY = 20
MAX_TIMELINE = 50
#: The ledger of action annotations: values acted on are remembered (bounded) after their
#: annotation is gone, so the same value coming back never acts on the same thing again.
MAX_CONSUMED_ACTIONS = 20
#: At most this many unpinned references are listed per revision (status.history).
MAX_UNPINNED = 16
#: The notification outbox (status.notifications): every message still to deliver, and the
#: newest delivered or given up, are remembered so a restart neither loses nor repeats one.
MAX_NOTIFICATIONS = 30
#: Notifier targets one RolloutPolicy may name (spec.notifications.targets).
MAX_NOTIFICATION_TARGETS = 8
#: Default of RolloutPolicy spec.rollbackWindow.revisions.
DEFAULT_ROLLBACK_WINDOW = 3

#: Bounded status strings (maxLength in the schema). Reading clips longer values instead of
#: failing, and the engine clips what it writes: a status the API server refuses (etcd's
#: object size limit, or these bounds) would stop the release from being reconciled at all.
MAX_MESSAGE = 1024  # messages and reasons
MAX_HUMAN_TEXT = 256  # an action annotation's value or its author, as stored in status
MAX_SHORT_TEXT = 128  # engine-chosen identifiers: timeline types, condition types/reasons

ANNOTATION_APPROVE_ROLLBACK = f"{API_GROUP}/approve-rollback"
ANNOTATION_REJECT_ROLLBACK = f"{API_GROUP}/reject-rollback"
ANNOTATION_ROLLBACK = f"{API_GROUP}/rollback"
ANNOTATION_PROMOTE = f"{API_GROUP}/promote"
ANNOTATION_RETRY = f"{API_GROUP}/retry"
ANNOTATION_RESET_BREAKER = f"{API_GROUP}/reset-breaker"
ANNOTATION_DRILL = f"{API_GROUP}/drill"

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
DIGEST_PATTERN = r"^sha256:[a-f0-9]{64}$"
#: An image reference pinned by digest ends with this (the tag, if any, is then ignored).
IMAGE_DIGEST_SUFFIX_PATTERN = r"@sha256:[a-f0-9]{64}$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
URI_PATTERN = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^\s]+$"
NO_SPACE_PATTERN = r"^[^\s]+$"
#: A VirtualService host as Istio accepts it (``agent.ValidateWildcardDomain``), narrowed:
#: lowercase, a ``*.`` wildcard only as the whole first label; the label rules (no empty label,
#: at most 63 characters, the last one not all digits) are CEL rules with their own messages.
HOST_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
#: A gateway reference: ``<namespace>/<name>``, or ``<name>`` in the release's namespace, each a
#: DNS label (Istio's ``validateGatewayNames``; dots are refused by a CEL rule with a message).
GATEWAY_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
#: Istio's name for the sidecars as a gateway (``traffic.meshRouting`` says whether it is used).
MESH_GATEWAY = "mesh"
#: Kubernetes' default cluster domain (the operator's ``--cluster-domain``).
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
#: A DNS label, as Istio checks each label of a host (``labels.IsDNS1123Label``).
DNS_LABEL_MAX = 63

_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_DURATION_FULL = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_IMAGE_DIGEST = re.compile(r"@(sha256:[a-f0-9]{64})$")


def parse_duration(s: str) -> float:
    """Convert a duration string (``30s``, ``5m``, ``1h30m``, ``250ms``) to seconds.

    Raises ValueError for anything outside ``^([0-9]+(ms|s|m|h))+$`` so a typo never turns
    into a zero-length pause.
    """
    if not isinstance(s, str) or not _DURATION_FULL.match(s):
        raise ValueError(
            f"invalid duration {s!r}: expected e.g. 30s, 5m, 1h30m, 500ms "
            f"(pattern {DURATION_PATTERN})"
        )
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(s))


def _check_duration(s: str) -> str:
    parse_duration(s)
    return s


def _check_template(s: str) -> str:
    validate_template(s)
    return s


def image_digest(image: str) -> str | None:
    """Return ``sha256:<hex>`` when the image reference is pinned by digest, else None."""
    m = _IMAGE_DIGEST.search(image)
    return m.group(1) if m else None


def workload_name(release: str, revision: int) -> str:
    """Name of the Deployment/Service of one revision (``<release>-r<N>``)."""
    return f"{release}-r{revision}"


def format_value(value: float) -> str:
    """A metric value as status and Events show it: 4 significant digits (``0.1235``,
    ``1.235e+08``), and ``+Inf``, ``-Inf``, ``NaN`` spelled as Prometheus spells them."""
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.4g}"


ELLIPSIS = "\u2026"


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis marking the cut.

    Characters are Unicode code points, as the API server counts them for ``maxLength``.
    """
    if len(text) <= limit:
        return text
    return text[: limit - 1] + ELLIPSIS if limit > 0 else ""


def _clipper(limit: int) -> BeforeValidator:
    """Clip an over-long string on read (an older status), then the bound is checked."""

    def clip_value(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return clip(value, limit)
        return value

    return BeforeValidator(clip_value)


def _cel(
    rule: str, message: str, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def _validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


# --- hosts and gateways, as Istio checks them ------------------------------------------
# Each rule is written as CEL (admission) and as a Python check (pydantic), with one message.

HOST_BAD_LABEL = (
    "each label of a host is a DNS-1123 label (lowercase letters, digits and '-', starting "
    "and ending with a letter or digit: not fraud-.example.com): Istio refuses the VirtualService "
    "(agent.ValidateWildcardDomain)"
)
#: One DNS-1123 label (Istio's ``labels.IsDNS1123Label``, lowercase as HOST_PATTERN).
DNS_LABEL_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A host of DNS-1123 labels, optionally after ``*.``: one regex, because a CEL rule that
#: splits the host and checks each label exceeds the API server's cost budget.
HOST_LABELS_RE = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HOST_EMPTY_LABEL = (
    "a host has no empty DNS label (a..b): Istio refuses the VirtualService "
    "(agent.ValidateWildcardDomain)"
)
HOST_LONG_LABEL = (
    f"each DNS label of a host is at most {DNS_LABEL_MAX} characters: Istio refuses a longer "
    "one (labels.IsDNS1123Label)"
)
HOST_NUMERIC_TLD = (
    "the last label of a host is not all digits: Istio refuses it as a domain (an IP address "
    "is not a host Rewind routes)"
)
HOST_IN_CLUSTER_WILDCARD = (
    "a wildcard host may not cover in-cluster Service names (<service>.<namespace>.svc."
    "<cluster domain>): it takes the release's own in-cluster name, which Rewind adds to the "
    "VirtualService and Istio then refuses as a duplicate host, and the names other "
    "Services' callers use"
)
HOSTS_OVERLAP = (
    "two hosts overlap (equal, or a wildcard covers the other): Istio refuses a VirtualService "
    "with duplicate hosts"
)
GATEWAY_DOTS = (
    "a gateway is <namespace>/<name> (or <name> in the release's namespace) with no dots: "
    "Istio refuses ns/name.with.dots and reads name.namespace as the legacy form "
    "namespace/name"
)
GATEWAY_LONG = (
    f"a gateway's namespace and name are DNS labels of at most {DNS_LABEL_MAX} characters: "
    "Istio refuses longer ones"
)
GATEWAY_MESH = (
    "mesh is not a gateway here: traffic.meshRouting says whether in-mesh callers are routed"
)
MESH_ROUTING_NEEDS_GATEWAY = (
    "meshRouting: false routes only callers that come through a gateway: name at least one "
    "in traffic.gateways"
)


def host_label_error(host: str) -> str | None:
    """What Istio refuses in one host, label by label (None: nothing)."""
    labels = host.split(".")
    if "" in labels:
        return HOST_EMPTY_LABEL
    if any(len(label) > DNS_LABEL_MAX for label in labels):
        return HOST_LONG_LABEL
    wildcard = labels[0] == "*"
    if any(not re.match(DNS_LABEL_RE, label) for label in labels[1 if wildcard else 0:]):
        return HOST_BAD_LABEL
    if labels[-1].isdigit():
        return HOST_NUMERIC_TLD
    return None


def covers_in_cluster_names(host: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> bool:
    """A wildcard host over in-cluster Service names: ``*.svc.<anything>``,
    ``*.<namespace>.svc.<anything>``, or a suffix of ``svc.<cluster_domain>``."""
    if not host.startswith("*."):
        return False
    rest = host[2:]
    labels = rest.split(".")
    return (
        labels[0] == "svc"
        or (len(labels) > 1 and labels[1] == "svc")
        or f".svc.{cluster_domain}".endswith("." + rest)
    )


def hosts_match(a: str, b: str) -> bool:
    """Istio's ``host.Name.Matches`` on two hosts as written: equal, or a wildcard covers
    the other (``*.x.com`` covers ``a.x.com`` and ``*.a.x.com``)."""
    if a.startswith("*") and b.startswith("*"):
        shorter, longer = sorted((a[1:], b[1:]), key=len)
        return longer.endswith(shorter)
    if a.startswith("*"):
        return b.endswith(a[1:])
    if b.startswith("*"):
        return a.endswith(b[1:])
    return a == b


def overlapping_hosts(hosts: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of hosts Istio refuses together in one VirtualService (duplicate hosts)."""
    return [
        (a, b)
        for i, a in enumerate(hosts)
        for b in hosts[i + 1:]
        if hosts_match(a, b)
    ]


def gateway_error(gateway: str) -> str | None:
    """What Istio refuses or misreads in one gateway reference (None: nothing)."""
    if gateway == MESH_GATEWAY:
        return GATEWAY_MESH
    if "." in gateway:
        return GATEWAY_DOTS
    if any(len(part) > DNS_LABEL_MAX for part in gateway.split("/")):
        return GATEWAY_LONG
    return None


def in_cluster_host(release: str, namespace: str, cluster_domain: str) -> str:
    """The in-cluster name Rewind adds to a release's routes: its umbrella Service's FQDN."""
    return f"{release}.{namespace}.svc.{cluster_domain}"


def release_host_errors(
    release: str, namespace: str, hosts: Sequence[str], cluster_domain: str
) -> list[str]:
    """What Istio refuses in a release's hosts beside the in-cluster name Rewind adds, once
    the namespace and the cluster domain are known (admission knows neither: the operator
    checks this before it writes routes)."""
    own = in_cluster_host(release, namespace, cluster_domain)
    errors = []
    for host in hosts:
        if host == release:
            errors.append(short_host_message(release))
        elif host != own and hosts_match(host, own):
            errors.append(
                f"host {host} covers {own}, the in-cluster name Rewind adds for the release: "
                "Istio refuses the VirtualService (duplicate hosts); name the hosts users "
                "call, not a wildcard over the cluster's Services"
            )
    return errors


def short_host_message(release: str) -> str:
    return (
        f"the short host {release} is the release's own in-cluster name "
        f"({release}.<namespace>.svc.<cluster domain>), which Rewind adds to the routes: "
        "Istio reports the two as conflicting hosts (analyzer IST0109); remove it, in-mesh "
        "callers already reach the release by that name"
    )


#: CEL, on the ModelRelease (where metadata.name is known): no short host equal to it.
SHORT_HOST_RULE = _cel(
    "!has(self.spec.traffic) || !self.spec.traffic.hosts.exists(h, h == self.metadata.name)",
    "a short host equal to metadata.name is the release's own in-cluster name "
    "(<name>.<namespace>.svc.<cluster domain>), which Rewind adds to the routes: Istio "
    "reports the two as conflicting hosts (analyzer IST0109); remove it, in-mesh callers "
    "already reach the release by that name",
    field_path=".spec.traffic.hosts",
)


def _host_rules() -> dict[str, Any]:
    return _validations(
        _cel("!self.contains('..')", HOST_EMPTY_LABEL),
        _cel(f"self.split('.').all(l, l.size() <= {DNS_LABEL_MAX})", HOST_LONG_LABEL),
        _cel("self.contains('..') || self.matches(r'" + HOST_LABELS_RE + "')", HOST_BAD_LABEL),
        _cel("!self.matches('(^|[.])[0-9]+$')", HOST_NUMERIC_TLD),
        _cel(
            "!self.startsWith('*.') || !(self.substring(2).matches('^svc([.]|$)') || "
            "self.substring(2).matches('^[^.]+[.]svc([.]|$)') || "
            f"'.svc.{DEFAULT_CLUSTER_DOMAIN}'.endsWith(self.substring(1)))",
            HOST_IN_CLUSTER_WILDCARD,
        ),
    )


def _gateway_rules() -> dict[str, Any]:
    return _validations(
        _cel(f"self != '{MESH_GATEWAY}'", GATEWAY_MESH),
        _cel("!self.contains('.')", GATEWAY_DOTS),
        _cel(f"self.split('/').all(p, p.size() <= {DNS_LABEL_MAX})", GATEWAY_LONG),
    )


def _positive_duration_rule(name: str) -> dict[str, str]:
    """CEL: a duration field is more than 0s (Istio's schema refuses a 0s route timeout)."""
    return _cel(
        "!self.matches('" + DURATION_PATTERN + "') || duration(self) > duration('0s')",
        f"{name} must be more than 0s",
    )


def _positive_duration(value: str | None, name: str) -> str | None:
    if value is not None and parse_duration(value) <= 0:
        raise ValueError(f"{name} must be more than 0s")
    return value


# --------------------------------------------------------------------------------------
# Reusable field types
# --------------------------------------------------------------------------------------

Duration = Annotated[
    str,
    StringConstraints(pattern=DURATION_PATTERN, max_length=32),
    AfterValidator(_check_duration),
]
Digest = Annotated[str, StringConstraints(pattern=DIGEST_PATTERN, max_length=71)]
Quantity = Annotated[str | int, Field(description="A Kubernetes resource quantity.")]

#: Free text in status (messages, reasons): at most MAX_MESSAGE characters.
StatusText = Annotated[str, StringConstraints(max_length=MAX_MESSAGE), _clipper(MAX_MESSAGE)]
#: What a human wrote (an annotation's value, who set it): at most MAX_HUMAN_TEXT characters.
HumanText = Annotated[str, StringConstraints(max_length=MAX_HUMAN_TEXT), _clipper(MAX_HUMAN_TEXT)]
#: An identifier the engine chose (timeline type, condition type or reason).
ShortText = Annotated[str, StringConstraints(max_length=MAX_SHORT_TEXT), _clipper(MAX_SHORT_TEXT)]


# --------------------------------------------------------------------------------------
# Enums
# --------------------------------------------------------------------------------------


class Phase(StrEnum):
    """Where a ModelRelease is in its lifecycle (status.phase)."""

    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    AWAITING_APPROVAL = "AwaitingApproval"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class StrategyType(StrEnum):
    """The release strategy; values are the keys under RolloutPolicy spec.strategy."""

    CANARY = "canary"
    BLUE_GREEN = "blueGreen"
    SHADOW = "shadow"


class Outcome(StrEnum):
    """How a revision in status.history ended (or Progressing while it is being released)."""

    PROGRESSING = "Progressing"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"
    SUPERSEDED = "Superseded"
    RETIRED = "Retired"


class Verdict(StrEnum):
    """Result of one metric measurement."""

    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


class ModelFormat(StrEnum):
    """Serialization format of the model artifact."""

    ONNX = "onnx"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"
    SKLEARN = "sklearn"
    XGBOOST = "xgboost"
    SAFETENSORS = "safetensors"
    GGUF = "gguf"
    OTHER = "other"


class SignatureType(StrEnum):
    """Kind of detached signature over the model artifact."""

    SIGSTORE_BUNDLE = "sigstore-bundle"
    COSIGN = "cosign"
    OTHER = "other"


class FirstRelease(StrEnum):
    """How the first revision of a release (no stable revision yet) is released."""

    GATES = "Gates"
    PROMOTE = "Promote"


class ShadowAction(StrEnum):
    """What follows a successful shadow analysis."""

    STOP = "Stop"
    CANARY = "Canary"
    BLUE_GREEN = "BlueGreen"


class NoDataPolicy(StrEnum):
    """How a query that returns no samples is judged."""

    INCONCLUSIVE = "Inconclusive"
    FAIL = "Fail"
    PASS = "Pass"


class QueryErrorPolicy(StrEnum):
    """How a query that errors (Prometheus down, bad PromQL, timeout) is judged."""

    INCONCLUSIVE = "Inconclusive"
    FAIL = "Fail"


class QueryErrorKind(StrEnum):
    """Why a query gave no answer (``Measurement.errorKind``).

    ``overloaded`` is the operator's own fault, never the model's: every analysis thread was
    busy for longer than the query's timeout, so the query was never sent. It is always
    Inconclusive, whatever ``queryError`` says.
    """

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    BAD_QUERY = "bad_query"
    BAD_RESULT = "bad_result"
    OVERLOADED = "overloaded"


class RollbackMode(StrEnum):
    """Whether a failed analysis rolls back at once or waits for humans."""

    AUTOMATIC = "automatic"
    APPROVAL = "approval"


class ApprovalTimeoutAction(StrEnum):
    """What happens when nobody decides on a pending rollback in time."""

    ROLLBACK = "Rollback"
    RESUME = "Resume"


class BreakerResetMode(StrEnum):
    """How a tripped circuit breaker closes again."""

    AUTOMATIC = "Automatic"
    MANUAL = "Manual"


class BreakerState(StrEnum):
    """Where a release's circuit breaker is (status.breaker.state).

    ``Tripping``: the fallback is asked for, not yet read back; ``Tripped``: the routes read
    back send users to the fallback; ``Resetting``: the model's routes are asked for again,
    not yet read back; ``Closed``: users are on the model (or no trip ever happened).
    """

    CLOSED = "Closed"
    TRIPPING = "Tripping"
    TRIPPED = "Tripped"
    RESETTING = "Resetting"


class DrillPhase(StrEnum):
    """Where a rollback drill in progress is (status.drill.phase)."""

    STARTING = "Starting"  # the target's snapshot is checked, then it is scaled up
    WAITING_READY = "WaitingReady"  # scaled up from its snapshot, not Available yet
    ANALYSING = "Analysing"  # Available; mirrored traffic analysed


class DrillVerdict(StrEnum):
    """How a rollback drill ended."""

    PASSED = "Passed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class DrillFailure(StrEnum):
    """What would have failed in a real rollback (status.lastDrill.failure)."""

    NONE = ""
    NO_TARGET = "NoTarget"  # no known-good revision to roll back to
    SNAPSHOT_MISSING = "SnapshotMissing"  # its snapshot (ControllerRevision) is gone
    SNAPSHOT_CORRUPT = "SnapshotCorrupt"  # its snapshot no longer verifies (integrity)
    ARTIFACT_UNVERIFIABLE = "ArtifactUnverifiable"  # its model artifact fails verification
    PODS_NEVER_READY = "PodsNeverReady"  # not Available within the drill's timeout
    ANALYSIS_FAILING = "AnalysisFailing"  # the policy's analysis fails on mirrored traffic


class DecisionAction(StrEnum):
    """The action a pending decision would take once approved."""

    ROLLBACK = "Rollback"


class NotificationState(StrEnum):
    """Where one notification (status.notifications) is."""

    PENDING = "Pending"
    SENT = "Sent"
    FAILED = "Failed"


class ConditionType(StrEnum):
    """kstatus-compatible condition types the operator maintains."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    #: The MLflow alias of spec.model.registry is on the serving revision's version (only
    #: with a registry; never part of Ready: MLflow down never holds a release).
    REGISTRY_SYNCED = "RegistrySynced"


class ConditionStatus(StrEnum):
    """Status of a condition (Kubernetes convention: strings, not booleans)."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class TimelineType(StrEnum):
    """Well-known status.timeline entry types (the field itself accepts any string).

    ``RollbackStarted`` is appended on every entry into RollingBack, whatever triggered it
    (analysis, approval, approval timeout, break glass), even when the rollback completes in
    the same reconcile: count rollbacks from it. ``ApprovalTimedOut`` alone is not one
    (``onTimeout: Resume`` continues the rollout).
    """

    REVISION_CREATED = "RevisionCreated"
    STEP_STARTED = "StepStarted"
    WEIGHTS_CHANGED = "WeightsChanged"
    ANALYSIS_FAILED = "AnalysisFailed"
    PAUSED = "Paused"
    PROMOTE_REQUESTED = "PromoteRequested"
    PROMOTED = "Promoted"
    ROLLBACK_DECIDED = "RollbackDecided"
    APPROVAL_REQUESTED = "ApprovalRequested"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    APPROVAL_TIMED_OUT = "ApprovalTimedOut"
    ROLLBACK_STARTED = "RollbackStarted"
    ROLLED_BACK = "RolledBack"
    BREAK_GLASS = "BreakGlassRollback"
    ROLLBACK_ABANDONED = "RollbackAbandoned"
    RESTORE_STARTED = "RestoreStarted"
    RESTORED = "Restored"
    RETRY = "Retry"
    FAILED = "Failed"
    ACTION_IGNORED = "ActionIgnored"
    ROUTES_REFUSED = "RoutesRefused"
    ROUTE_CONFLICT = "RouteConflict"
    ROUTE_DRIFT = "RouteDrift"
    STABLE_UNAVAILABLE = "StableUnavailable"
    CANDIDATE_UNAVAILABLE = "CandidateUnavailable"
    BREAKER_TRIPPED = "BreakerTripped"
    FALLBACK_IN_EFFECT = "FallbackInEffect"
    BREAKER_RESET = "BreakerReset"
    BREAKER_CLOSED = "BreakerClosed"
    BREAKER_UNSUPPORTED = "BreakerUnsupported"
    DRILL_STARTED = "DrillStarted"
    DRILL_PASSED = "DrillPassed"
    DRILL_FAILED = "DrillFailed"
    DRILL_CANCELLED = "DrillCancelled"
    QUARANTINED = "Quarantined"
    QUARANTINE_LIFTED = "QuarantineLifted"
    QUARANTINE_REFUSED = "QuarantineRefused"
    QUARANTINE_HOLD = "QuarantineHold"
    UNPINNED = "Unpinned"
    SIDECAR_MISSING = "SidecarMissing"
    ARTIFACT_VERIFIED = "ArtifactVerified"
    ARTIFACT_VERIFICATION_FAILED = "ArtifactVerificationFailed"
    REGISTRY_ALIAS_MOVED = "RegistryAliasMoved"


# --------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------


class SpecModel(BaseModel):
    """Strict base for user-written spec: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        protected_namespaces=(),
        use_enum_values=False,
    )


class StatusModel(BaseModel):
    """Permissive base for status: every field defaults, unknown keys are ignored on read.

    The operator must be able to read a status written by an older or newer version of
    itself (or an empty ``{}``) without crashing.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        protected_namespaces=(),
    )


# --------------------------------------------------------------------------------------
# ModelRelease spec
# --------------------------------------------------------------------------------------


class PolicyRef(SpecModel):
    """Reference to a RolloutPolicy in the ModelRelease's namespace."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Name of the RolloutPolicy (same namespace) that says how to release.",
    )


class SignatureRef(SpecModel):
    """Where the detached signature of the model artifact lives."""

    uri: str = Field(
        min_length=1,
        max_length=1024,
        pattern=URI_PATTERN,
        description="URI of the signature file, e.g. s3://models/fraud/2.1.0/model.sig.",
    )
    type: SignatureType = Field(
        default=SignatureType.SIGSTORE_BUNDLE,
        description="Signature format: sigstore-bundle, cosign or other.",
    )


#: The alias Rewind keeps on the serving revision's MLflow model version by default.
DEFAULT_REGISTRY_ALIAS = "production"


class RegistrySpec(SpecModel):
    """The MLflow registered model version a revision is. Rewind keeps an alias of that
    model on the version of the revision that serves (moved on promotion and rollback once
    the routes are read back) and tags each version it moves the alias to."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.alias) || "
                "!self.alias.matches('^([lL][aA][tT][eE][sS][tT]|[vV][0-9]+)$')",
                "registry.alias: latest and v<N> are reserved by MLflow",
                field_path=".alias",
            )
        )
    )

    tracking_uri: str | None = Field(
        default=None,
        alias="trackingURI",
        max_length=1024,
        pattern=r"^https?://[^\s]+$",
        description="The MLflow tracking server, e.g. http://mlflow.mlops:5000. Omitted: the "
        "operator's MLFLOW_TRACKING_URI. The operator's credentials (MLFLOW_TRACKING_TOKEN, "
        "or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) are sent only to that "
        "default server, never to a URI written here.",
    )
    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[^\s/][^/]*$",
        description="The registered model's name, e.g. fraud-detector.",
    )
    version: str = Field(
        min_length=1,
        max_length=20,
        pattern=r"^[1-9][0-9]*$",
        description='The model version this revision serves, e.g. "3" (quote it in YAML).',
    )
    alias: str = Field(
        default=DEFAULT_REGISTRY_ALIAS,
        min_length=1,
        max_length=63,
        pattern=r"^[-A-Za-z0-9_]+$",
        description="The alias Rewind owns and keeps on the serving revision's version "
        "(default production). Moved by hand, it is moved back.",
    )

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, alias: str) -> str:
        # MLflow refuses these: "latest" means the newest version, v<N> version N.
        if alias.lower() == "latest" or re.fullmatch(r"[vV][0-9]+", alias):
            raise ValueError("registry.alias: latest and v<N> are reserved by MLflow")
        return alias


class ModelSpec(SpecModel):
    """The model artifact being released, identified by an immutable digest."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?$",
        description="Logical model name, e.g. fraud-detector. Shown in history and events.",
    )
    version: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9._+]*$",
        description=(
            'Human-readable model version, e.g. "2.1.0" (quote it in YAML). Informational: '
            "the digest, not the version, identifies the artifact."
        ),
    )
    artifact_uri: str = Field(
        alias="artifactURI",
        min_length=1,
        max_length=1024,
        pattern=URI_PATTERN,
        description=(
            "Where the serving container loads the model from, with a scheme, e.g. "
            "s3://models/fraud/2.1.0/model.onnx. Passed to the container as MODEL_URI."
        ),
    )
    artifact_digest: Digest = Field(
        description=(
            "sha256 digest of the artifact bytes (sha256:<64 lowercase hex>). Required: a "
            "rollback re-deploys exactly this artifact, so a mutable URI alone is not enough."
        ),
    )
    format: ModelFormat = Field(
        default=ModelFormat.OTHER,
        description=(
            "Artifact format: onnx, pytorch, tensorflow, sklearn, xgboost, safetensors, gguf "
            "or other."
        ),
    )
    signature_ref: SignatureRef | None = Field(
        default=None,
        description="Optional detached signature over the artifact, for supply-chain checks.",
    )
    registry: RegistrySpec | None = Field(
        default=None,
        description="Optional MLflow registered model version of the artifact: Rewind moves "
        "its alias (default production) to the version that serves, on promotion and "
        "rollback, after the routes (MLflow never delays a rollback).",
    )


class EnvVar(SpecModel):
    """A literal environment variable for the serving container."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        description="Variable name.",
    )
    value: str = Field(
        default="",
        max_length=4096,
        description=(
            "Literal value. valueFrom is not supported: a revision must be reproducible "
            "from its spec alone."
        ),
    )


class CodeSpec(SpecModel):
    """The serving code: container image, arguments and environment."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.image.matches('" + IMAGE_DIGEST_SUFFIX_PATTERN + "') || "
                "(has(self.allowTagImage) && self.allowTagImage)",
                "image must be pinned by digest (<repo>@sha256:<64 hex>); set "
                "allowTagImage: true (and allowTagImages: true in the RolloutPolicy) to "
                "accept a tag",
                field_path=".image",
                reason="FieldValueInvalid",
            ),
        )
    )

    image: str = Field(
        min_length=1,
        max_length=512,
        pattern=NO_SPACE_PATTERN,
        description=(
            "Serving image pinned by digest, e.g. registry.example.com/fraud-server@sha256:"
            "<64 hex>. A tag-only image is rejected unless allowTagImage is true here AND "
            "the RolloutPolicy sets allowTagImages: true (the operator checks the latter)."
        ),
    )
    allow_tag_image: bool = Field(
        default=False,
        description=(
            "Opt in to a tag-only image (not reproducible: the tag can move, so a rollback "
            "may not restore the same code). Only honoured when the RolloutPolicy also sets "
            "allowTagImages: true; otherwise the release fails with a clear message."
        ),
    )
    args: list[Annotated[str, StringConstraints(max_length=1024)]] = Field(
        default_factory=list,
        max_length=64,
        description='Extra container arguments, e.g. ["--workers=2"].',
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Literal environment variables of the model-server container (name/value "
        "only; a value from a Secret or ConfigMap goes in serving.template, where the "
        "revision's history names it as unpinned).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _pinned_image(self) -> CodeSpec:
        if not self.allow_tag_image and image_digest(self.image) is None:
            raise ValueError(
                "code.image must be pinned by digest (<repo>@sha256:<64 hex>); set "
                "allowTagImage: true (and allowTagImages: true in the RolloutPolicy) to "
                "accept a tag"
            )
        return self


class DataSpec(SpecModel):
    """The training data the model was built from (provenance for audits and rollbacks)."""

    dataset_ref: str = Field(
        min_length=1,
        max_length=1024,
        description="Dataset location or name, e.g. s3://datasets/fraud/transactions.",
    )
    version: str = Field(
        min_length=1,
        max_length=128,
        pattern=NO_SPACE_PATTERN,
        description=(
            "Immutable dataset version: a git/DVC commit, lakeFS commit id or a digest. "
            "Not a branch name."
        ),
    )
    lineage: dict[str, Annotated[str, StringConstraints(max_length=1024)]] = Field(
        default_factory=dict,
        max_length=32,
        description=(
            "Free-form string map linking to the training run, e.g. mlflowRunId, pipeline, "
            "gitCommit."
        ),
    )
    created_at: datetime | None = Field(
        default=None,
        json_schema_extra={"maxLength": 64},
        description=(
            "When this data version was made (RFC 3339), e.g. the lakeFS commit time. "
            "Optional: a Quarantine entry with a datasetRef and suspectAfter judges the "
            "revision by it; without it, a revision first seen before suspectAfter is clean "
            "(its data is older than the revision) and one seen later is suspect."
        ),
    )


class EnvironmentSpec(SpecModel):
    """The runtime environment the model was validated in (recorded, not enforced)."""

    framework: str | None = Field(
        default=None, max_length=64, description="Inference framework, e.g. onnxruntime, vllm."
    )
    framework_version: str | None = Field(
        default=None, max_length=64, description='Framework version, e.g. "1.18.0".'
    )
    runtime: str | None = Field(
        default=None, max_length=64, description="Language runtime, e.g. python3.11."
    )
    accelerator: str | None = Field(
        default=None,
        max_length=64,
        description="Accelerator the model targets, e.g. none, nvidia-l4.",
    )
    dependencies_digest: Digest | None = Field(
        default=None,
        description="sha256 of the locked dependency set (e.g. of requirements.lock).",
    )


class ResourceRequirements(SpecModel):
    """CPU/memory/accelerator requests and limits of the serving container."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=16,
        description="Minimum resources, e.g. {cpu: 500m, memory: 1Gi}.",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=16,
        description="Maximum resources, e.g. {memory: 2Gi, nvidia.com/gpu: 1}.",
    )


# --------------------------------------------------------------------------------------
# The pod template (serving.template): Kubernetes' PodTemplateSpec, partly declared
# --------------------------------------------------------------------------------------

#: The container of a template that runs the model: the one named so, else the first.
MODEL_SERVER_CONTAINER = "model-server"
#: Env vars Rewind sets on the model-server container from spec.model and spec.data: they
#: describe the snapshot the pod was built from, so neither code.env nor a template sets them.
INJECTED_ENV = (
    "REWIND_RELEASE",
    "REWIND_REVISION",
    "MODEL_URI",
    "MODEL_DIGEST",
    "MODEL_VERSION",
    "DATA_VERSION",
)
#: The name of the model server's port (serving.port) in the container and the Services.
SERVING_PORT_NAME = "http"

_OPEN: dict[str, JsonValue] = {"x-kubernetes-preserve-unknown-fields": True}


class PassThroughModel(BaseModel):
    """Part of a Kubernetes object that Rewind passes on as written.

    Only the fields Rewind relies on are declared (and validated, by the CRD schema at
    admission and by these models); every other field is kept as the user wrote it
    (``x-kubernetes-preserve-unknown-fields``) and validated by the API server itself when
    the operator creates the revision's Deployment (a server-side dry run first).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        protected_namespaces=(),
        json_schema_extra=_OPEN,
    )


#: A free-form object kept as written (a probe, a securityContext, resources...).
Opaque = Annotated[dict[str, Any], Field(json_schema_extra=_OPEN)]
_K8S_NAME = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class KeySelector(PassThroughModel):
    """A key of a Secret or ConfigMap (env valueFrom)."""

    name: str | None = Field(
        default=None, max_length=253, description="Name of the Secret or ConfigMap."
    )


class EnvVarSource(PassThroughModel):
    """Where an env var's value comes from (Kubernetes EnvVarSource)."""

    secret_key_ref: KeySelector | None = Field(
        default=None,
        description="A key of a Secret. Its content is not pinned by the revision snapshot: "
        "the revision's history names it as unpinned.",
    )
    config_map_key_ref: KeySelector | None = Field(
        default=None,
        description="A key of a ConfigMap. Its content is not pinned by the revision snapshot: "
        "the revision's history names it as unpinned.",
    )


class TemplateEnvVar(PassThroughModel):
    """An environment variable of a template container (Kubernetes EnvVar)."""

    name: str = Field(min_length=1, max_length=256, description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Read the value from a Secret, ConfigMap or the pod's fields."
    )


class NameReference(PassThroughModel):
    """A Secret or ConfigMap by name (envFrom)."""

    name: str | None = Field(
        default=None, max_length=253, description="Name of the Secret or ConfigMap."
    )


class EnvFromSource(PassThroughModel):
    """Every key of a Secret or ConfigMap as env vars (Kubernetes EnvFromSource)."""

    secret_ref: NameReference | None = Field(
        default=None, description="A Secret (unpinned: its content can change)."
    )
    config_map_ref: NameReference | None = Field(
        default=None, description="A ConfigMap (unpinned: its content can change)."
    )


class ContainerPort(PassThroughModel):
    """A port a template container listens on (Kubernetes ContainerPort)."""

    name: str | None = Field(default=None, max_length=15, description="Port name.")
    container_port: int = Field(ge=1, le=65535, description="Port number.")


class Container(PassThroughModel):
    """A container of the template (Kubernetes Container). The model-server container (named
    model-server, else the first) gets code.image, serving.port as its port named http, the
    env that describes the revision (MODEL_URI, MODEL_DIGEST...) and, unless the template
    sets them, code.args, serving.resources and the probes."""

    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN, description="Container name."
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=NO_SPACE_PATTERN,
        description="Image pinned by digest (<repo>@sha256:<64 hex>). Omitted on the "
        "model-server container: its image is code.image.",
    )
    args: list[Annotated[str, StringConstraints(max_length=4096)]] | None = Field(
        default=None, max_length=128, description="Arguments (or code.args, not both)."
    )
    ports: list[ContainerPort] | None = Field(
        default=None,
        max_length=32,
        description="Ports. On the model-server container, serving.port (named http) is "
        "added by Rewind: list only other ports (e.g. metrics).",
    )
    env: list[TemplateEnvVar] | None = Field(
        default=None,
        max_length=256,
        description="Environment, valueFrom allowed (a Secret or ConfigMap key is named as "
        "unpinned in the revision's history). code.env and the revision's own variables "
        "(MODEL_URI, MODEL_DIGEST, ...) are added to the model-server container's.",
    )
    env_from: list[EnvFromSource] | None = Field(
        default=None,
        max_length=32,
        description="Secrets and ConfigMaps as env vars (named as unpinned).",
    )
    resources: Opaque | None = Field(
        default=None,
        description="Resources (or serving.resources for the model-server container, not both).",
    )
    readiness_probe: Opaque | None = Field(
        default=None,
        description="Readiness probe; on the model-server container it replaces the one "
        "Rewind derives from serving.protocol and serving.readinessPath.",
    )
    liveness_probe: Opaque | None = Field(
        default=None,
        description="Liveness probe (or serving.livenessPath for the model-server container, "
        "not both).",
    )


class SecretVolumeSource(PassThroughModel):
    """A Secret as a volume."""

    secret_name: str | None = Field(default=None, max_length=253, description="The Secret.")


class PersistentVolumeClaimSource(PassThroughModel):
    """A PersistentVolumeClaim as a volume."""

    claim_name: str | None = Field(default=None, max_length=253, description="The claim.")


class ServiceAccountTokenProjection(PassThroughModel):
    """A projected service account token (short-lived, issued at run time)."""

    audience: str | None = Field(default=None, max_length=253, description="Token audience.")


class VolumeProjection(PassThroughModel):
    """One source of a projected volume."""

    secret: NameReference | None = Field(default=None, description="A Secret.")
    config_map: NameReference | None = Field(default=None, description="A ConfigMap.")
    service_account_token: ServiceAccountTokenProjection | None = Field(
        default=None, description="The pod's service account token."
    )


class ProjectedVolumeSource(PassThroughModel):
    """Several sources in one volume."""

    sources: list[VolumeProjection] | None = Field(
        default=None, max_length=32, description="The projected sources."
    )


class Volume(PassThroughModel):
    """A volume of the template (Kubernetes Volume). What a volume reads from a Secret,
    ConfigMap, claim, service account token or the node is not pinned by the snapshot: the
    revision's history names it as unpinned."""

    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN, description="Volume name."
    )
    secret: SecretVolumeSource | None = Field(default=None, description="A Secret.")
    config_map: NameReference | None = Field(default=None, description="A ConfigMap.")
    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(
        default=None, description="A PersistentVolumeClaim (e.g. model weights)."
    )
    projected: ProjectedVolumeSource | None = Field(
        default=None, description="Secrets, ConfigMaps and tokens in one volume."
    )


class PodSpec(PassThroughModel):
    """The pod of each revision (Kubernetes PodSpec): tolerations, nodeSelector, affinity,
    topologySpreadConstraints, securityContext, imagePullSecrets, priorityClassName and the
    rest are passed on as written."""

    containers: list[Container] = Field(
        min_length=1, max_length=16, description="Containers; one is the model server."
    )
    init_containers: list[Container] | None = Field(
        default=None,
        max_length=16,
        description="Init containers (also native sidecars), images pinned by digest.",
    )
    volumes: list[Volume] | None = Field(default=None, max_length=64, description="Volumes.")
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="The pods' service account (e.g. one allowed to read the model bucket). "
        "What it may do is not pinned by the snapshot: the history names it as unpinned.",
    )


class PodTemplateMetadata(PassThroughModel):
    """Labels and annotations of the pods; Rewind's own labels and annotations win."""

    labels: dict[str, Annotated[str, StringConstraints(max_length=63)]] | None = Field(
        default=None, max_length=64, description="Pod labels."
    )
    annotations: dict[str, Annotated[str, StringConstraints(max_length=65536)]] | None = Field(
        default=None, max_length=64, description="Pod annotations."
    )


class PodTemplate(PassThroughModel):
    """A Kubernetes PodTemplateSpec for each revision's pods."""

    metadata: PodTemplateMetadata | None = Field(
        default=None, description="Pod labels and annotations."
    )
    spec: PodSpec = Field(description="The pod spec (containers, volumes, scheduling...).")

    def model_server(self) -> Container:
        """The container that runs the model: named model-server, else the first."""
        return self.spec.containers[model_server_index(self)]


def model_server_index(template: PodTemplate) -> int:
    """Index of the model-server container: the one named model-server, else the first."""
    names = [c.name for c in template.spec.containers]
    return names.index(MODEL_SERVER_CONTAINER) if MODEL_SERVER_CONTAINER in names else 0


class WorkloadRef(SpecModel):
    """An existing Deployment whose pod template each revision copies (a Helm chart's)."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Name of the Deployment, in the ModelRelease's namespace. Its pod template "
        "is read at every reconcile and is part of the revision: a change to it (a helm "
        "upgrade) is a new revision, released by the policy. Rewind never writes it: set its "
        "replicas to 0 in its chart.",
    )


class ServingProtocol(StrEnum):
    """What the model server speaks on serving.port."""

    HTTP = "http"
    HTTP2 = "http2"
    GRPC = "grpc"


def _model_server_cel(template: str) -> str:
    """CEL: ``c`` is the model-server container of ``template`` (named so, else the first)."""
    containers = f"{template}.spec.containers"
    return (
        f"(c.name == '{MODEL_SERVER_CONTAINER}' || (!{containers}.exists(x, x.name == "
        f"'{MODEL_SERVER_CONTAINER}') && c.name == {containers}[0].name))"
    )


def _each_model_server(template: str, check: str) -> str:
    """CEL: ``check`` (about ``c``) holds for the model-server container, when a template
    with containers is set."""
    return (
        f"!has({template}) || !has({template}.spec) || !has({template}.spec.containers) || "
        f"size({template}.spec.containers) == 0 || {template}.spec.containers.all(c, "
        f"!{_model_server_cel(template)} || ({check}))"
    )


_MS = (
    "the model-server container (the one named model-server, else the first) of "
    "serving.template"
)
_TEMPLATE_MESSAGES = {
    "both": "set serving.template or serving.workloadRef, not both",
    "image": f"the model server's image is code.image: remove image from {_MS}",
    "port": "serving.port is the model server's port (named http): remove that port from "
    f"the ports of {_MS} (other ports, e.g. metrics, are fine)",
    "env": "MODEL_URI, MODEL_DIGEST, MODEL_VERSION, DATA_VERSION, REWIND_RELEASE and "
    "REWIND_REVISION are set by Rewind from spec.model and spec.data: remove them from the "
    f"env of {_MS}",
    "resources": "set the model server's resources in serving.resources or as the resources "
    f"of {_MS}, not both",
    "liveness": f"set serving.livenessPath or the livenessProbe of {_MS}, not both",
    "grpc-liveness": "serving.livenessPath is an HTTP path: with protocol grpc, give "
    f"{_MS} a livenessProbe instead (e.g. grpc: {{port: 9000}})",
    "args": f"set the model server's args in code.args or as the args of {_MS}, not both",
    "pinned": "must be pinned by digest (<repo>@sha256:<64 hex>) like code.image; set "
    "code.allowTagImage: true (and allowTagImages: true in the RolloutPolicy) to accept a tag",
}


class ServingSpec(SpecModel):
    """How each revision is run: one Deployment and Service per revision. Small models need
    only the short fields (replicas, port, resources, probes); a model that needs more (a GPU
    node pool, volumes, a service account, Secrets) gives a full pod template, inline or as
    an existing Deployment's, and the short fields fill what the template leaves to them."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.template) || !has(self.workloadRef)",
                _TEMPLATE_MESSAGES["both"],
                field_path=".workloadRef",
                reason="FieldValueForbidden",
            ),
            _cel(
                _each_model_server("self.template", "!has(c.image)"),
                _TEMPLATE_MESSAGES["image"],
                field_path=".template.spec.containers",
                reason="FieldValueForbidden",
            ),
            _cel(
                _each_model_server(
                    "self.template",
                    "!has(c.ports) || c.ports.all(p, (!has(p.name) || p.name != "
                    f"'{SERVING_PORT_NAME}') && (!has(self.port) || p.containerPort != self.port))",
                ),
                _TEMPLATE_MESSAGES["port"],
                field_path=".template.spec.containers",
                reason="FieldValueForbidden",
            ),
            _cel(
                _each_model_server(
                    "self.template",
                    "!has(c.env) || !c.env.exists(e, e.name in "
                    + json.dumps(list(INJECTED_ENV)).replace('"', "'")
                    + ")",
                ),
                _TEMPLATE_MESSAGES["env"],
                field_path=".template.spec.containers",
                reason="FieldValueForbidden",
            ),
            _cel(
                "!has(self.resources) || ((!has(self.resources.requests) || "
                "size(self.resources.requests) == 0) && (!has(self.resources.limits) || "
                "size(self.resources.limits) == 0)) || ("
                + _each_model_server("self.template", "!has(c.resources)")
                + ")",
                _TEMPLATE_MESSAGES["resources"],
                field_path=".resources",
                reason="FieldValueForbidden",
            ),
            _cel(
                "!has(self.livenessPath) || ("
                + _each_model_server("self.template", "!has(c.livenessProbe)")
                + ")",
                _TEMPLATE_MESSAGES["liveness"],
                field_path=".livenessPath",
                reason="FieldValueForbidden",
            ),
            _cel(
                "!has(self.livenessPath) || !has(self.protocol) || self.protocol != 'grpc'",
                _TEMPLATE_MESSAGES["grpc-liveness"],
                field_path=".livenessPath",
                reason="FieldValueForbidden",
            ),
        )
    )

    replicas: int = Field(
        default=1, ge=1, le=100, description="Pods per revision (1..100). Default 1."
    )
    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        description="Container port the model server listens on (named http in the "
        "model-server container and the Services, whatever the protocol). Default 8080.",
    )
    protocol: ServingProtocol = Field(
        default=ServingProtocol.HTTP,
        description="What the model server speaks on port: http (default), http2 or grpc "
        "(Triton, TF Serving, KServe v2). Sets the Services' appProtocol (how Istio routes and "
        "measures it: a grpc port gets gRPC status codes and HTTP/2 end to end) and the "
        "default readiness probe: http: HTTP GET readinessPath; grpc: the gRPC health "
        "service (grpc.health.v1) on port; http2: a TCP connect (the kubelet's HTTP probes "
        "speak HTTP/1.1). A readinessProbe in the template replaces it.",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="The model-server container's resources, same shape as a Pod's "
        "(or in the template, not both).",
    )
    readiness_path: str = Field(
        default="/healthz",
        max_length=256,
        pattern=r"^/[^\s]*$",
        description="HTTP GET path on port used as the readiness probe (protocol http; "
        "unused when the template's model-server container has a readinessProbe). Default "
        "/healthz.",
    )
    liveness_path: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^/[^\s]*$",
        description="HTTP GET path used as the liveness probe. Omit for no liveness probe "
        "(or set one in the template, not both).",
    )
    template: PodTemplate | None = Field(
        default=None,
        description="A full pod template (Kubernetes PodTemplateSpec: containers, init "
        "containers, volumes, nodeSelector, tolerations, affinity, topologySpreadConstraints, "
        "serviceAccountName, securityContext, imagePullSecrets, priorityClassName, env from "
        "Secrets and ConfigMaps...). The model-server container is the one named "
        "model-server, else the first: it runs code.image (leave its image out) on port, "
        "with the revision's env. Every image is pinned by digest. The snapshot of each "
        "revision records the whole template; what it cannot pin (the contents of Secrets, "
        "ConfigMaps, claims, the service account) is listed in status.history[].unpinned. "
        "Fields Rewind does not read are checked by the API server: the operator dry-runs "
        "the Deployment before a revision starts, and a refused one fails the revision.",
    )
    workload_ref: WorkloadRef | None = Field(
        default=None,
        description="Copy the pod template of an existing Deployment (e.g. one a Helm chart "
        "renders) instead of writing it here; the same rules apply, and what the "
        "ModelRelease sets (code.image, code.args, serving.port, resources, probes) wins "
        "over the Deployment's. Each revision snapshots the template it copied.",
    )

    @model_validator(mode="after")
    def _template_rules(self) -> ServingSpec:
        if self.template is not None and self.workload_ref is not None:
            raise ValueError(_TEMPLATE_MESSAGES["both"])
        if self.liveness_path is not None and self.protocol == ServingProtocol.GRPC:
            raise ValueError(_TEMPLATE_MESSAGES["grpc-liveness"])
        if self.template is None:
            return self
        server = self.template.model_server()
        if server.image is not None:
            raise ValueError(_TEMPLATE_MESSAGES["image"])
        for port in server.ports or []:
            if port.name == SERVING_PORT_NAME or port.container_port == self.port:
                raise ValueError(_TEMPLATE_MESSAGES["port"])
        if any(e.name in INJECTED_ENV for e in server.env or []):
            raise ValueError(_TEMPLATE_MESSAGES["env"])
        if (self.resources.requests or self.resources.limits) and server.resources is not None:
            raise ValueError(_TEMPLATE_MESSAGES["resources"])
        if self.liveness_path is not None and server.liveness_probe is not None:
            raise ValueError(_TEMPLATE_MESSAGES["liveness"])
        return self


class RetrySpec(SpecModel):
    """Retries of a failed request, as Istio's HTTPRetry."""

    attempts: int = Field(
        ge=0,
        le=10,
        description=(
            "Retries per request (0..10); 0 turns retries off, as LLM teams do: a retry "
            "re-runs an expensive generation."
        ),
    )
    per_try_timeout: Duration | None = Field(
        default=None,
        description="Timeout of each attempt, e.g. 30s (more than 0s). Omitted: the route "
        "timeout.",
        json_schema_extra=_validations(_positive_duration_rule("retries.perTryTimeout")),
    )
    retry_on: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[a-z0-9-]+(,[a-z0-9-]+)*$",
        description="Envoy retry policies, comma-separated, e.g. connect-failure,reset,503.",
    )

    @field_validator("per_try_timeout")
    @classmethod
    def _positive_per_try_timeout(cls, v: str | None) -> str | None:
        return _positive_duration(v, "retries.perTryTimeout")


class HeaderMatch(SpecModel):
    """One request header condition: exactly one of exact, prefix or regex."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "[has(self.exact), has(self.prefix), has(self.regex)]"
                ".filter(x, x).size() == 1",
                "set exactly one of exact, prefix or regex",
            )
        )
    )

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[a-z0-9][-a-z0-9_.]*$",
        description="Header name, lowercase (Istio matches lowercase names), e.g. x-user-group.",
    )
    exact: str | None = Field(default=None, max_length=1024, description="Value equals this.")
    prefix: str | None = Field(
        default=None, max_length=1024, description="Value starts with this."
    )
    regex: str | None = Field(
        default=None, max_length=1024, description="Value matches this RE2 regular expression."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> HeaderMatch:
        if sum(x is not None for x in (self.exact, self.prefix, self.regex)) != 1:
            raise ValueError("set exactly one of exact, prefix or regex")
        return self


class HeaderRoute(SpecModel):
    """A named group of callers, picked by request headers, sent to the candidate."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.headers.all(h, self.headers.filter(g, g.name == h.name).size() == 1)",
                "header names must be unique within a header route",
                field_path=".headers",
            ),
        )
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the group of callers (lowercase DNS label), e.g. beta-testers.",
    )
    headers: list[HeaderMatch] = Field(
        min_length=1,
        max_length=8,
        description="Conditions that must all hold for a request to take this route.",
    )

    @field_validator("headers")
    @classmethod
    def _unique_headers(cls, headers: list[HeaderMatch]) -> list[HeaderMatch]:
        names = [h.name for h in headers]
        if len(set(names)) != len(names):
            raise ValueError("header names must be unique within a header route")
        return headers


#: Gateway API's hostname (an HTTPRoute's ``hostnames``): stricter than HOST_PATTERN.
GATEWAY_HOSTNAME_PATTERN = (
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
#: Gateway API's duration (GEP-2257): at most four parts of at most five digits each.
GATEWAY_MAX_TIMEOUT = "99999h"
_GROUP_PATTERN = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_KIND_PATTERN = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
_SAME_PARENT = (
    "a.group == b.group && a.kind == b.kind && a.name == b.name && "
    "(has(a.__namespace__) ? a.__namespace__ : '') == "
    "(has(b.__namespace__) ? b.__namespace__ : '')"
)


class GatewayParentRef(SpecModel):
    """A parent of the HTTPRoute: a Gateway, one of its listeners, or a mesh Service."""

    group: str = Field(
        default="gateway.networking.k8s.io",
        max_length=253,
        pattern=_GROUP_PATTERN,
        description='API group of the parent. Default gateway.networking.k8s.io; "" for a '
        "Service.",
    )
    kind: str = Field(
        default="Gateway",
        max_length=63,
        pattern=_KIND_PATTERN,
        description="Kind of the parent. Default Gateway.",
    )
    namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Namespace of the parent. Omitted: the ModelRelease's namespace. A "
        "Gateway in another namespace must allow routes from this one (allowedRoutes).",
    )
    name: str = Field(
        min_length=1, max_length=253, description="Name of the parent, e.g. public."
    )
    section_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="A listener of the Gateway by name (or a port name of a Service). "
        "Omitted: every listener that accepts the route.",
    )
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Attach only to the listener on this port."
    )

    def key(self) -> tuple[str, str, str, str]:
        """Which parent this names (group, kind, namespace or "", name)."""
        return (self.group, self.kind, self.namespace or "", self.name)


class EndpointPickerFailureMode(StrEnum):
    """What the gateway does when the endpoint picker does not answer."""

    FAIL_OPEN = "FailOpen"
    FAIL_CLOSE = "FailClose"


class EndpointPickerRef(SpecModel):
    """The endpoint picker (EPP) of each revision's InferencePool."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.kind != 'Service' || has(self.port)",
                "port is required when kind is Service",
                field_path=".port",
                reason="FieldValueRequired",
            ),
        )
    )

    group: str = Field(
        default="", max_length=253, pattern=_GROUP_PATTERN,
        description='API group of the picker. Default "" (core).',
    )
    kind: str = Field(
        default="Service", max_length=63, pattern=_KIND_PATTERN,
        description="Kind of the picker. Default Service.",
    )
    name: str = Field(
        min_length=1,
        max_length=59,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the picker, e.g. chat-epp. With perRevision, the picker of "
        "revision N is <name>-r<N>.",
    )
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the picker's Service, e.g. 9002."
    )
    failure_mode: EndpointPickerFailureMode = Field(
        default=EndpointPickerFailureMode.FAIL_CLOSE,
        description="FailClose (default): no picker, no request; FailOpen: the gateway "
        "picks an endpoint itself.",
    )
    per_revision: bool = Field(
        default=False,
        description="Each revision's pool has its own picker, <name>-r<N> (a picker serves "
        "one pool). Default false: every pool names the same picker.",
    )

    @model_validator(mode="after")
    def _port_for_service(self) -> EndpointPickerRef:
        if self.kind == "Service" and self.port is None:
            raise ValueError("port is required when kind is Service")
        return self


class InferencePoolBackend(SpecModel):
    """Per-revision InferencePools (Gateway API Inference Extension, v1) as backends."""

    endpoint_picker_ref: EndpointPickerRef = Field(
        description="The endpoint picker each revision's InferencePool names."
    )


class GatewayAPITraffic(SpecModel):
    """Gateway API routing: an HTTPRoute owned by the release, not a VirtualService."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.parentRefs.all(a, self.parentRefs.filter(b, " + _SAME_PARENT
                + ").size() == 1 || (has(a.sectionName) && self.parentRefs.filter(b, "
                + _SAME_PARENT + " && has(b.sectionName) && b.sectionName == "
                "a.sectionName).size() == 1))",
                "parentRefs naming the same parent more than once need distinct sectionNames",
                field_path=".parentRefs",
            ),
        )
    )

    parent_refs: list[GatewayParentRef] = Field(
        min_length=1,
        max_length=32,
        description="Gateways (or listeners, or a Service for mesh routing) the HTTPRoute "
        "attaches to.",
    )
    backend_request_timeout: Duration | None = Field(
        default=None,
        description="Timeout of each request from the gateway to a revision (HTTPRoute "
        "timeouts.backendRequest), e.g. 30s; more than 0s, at most traffic.timeout.",
        json_schema_extra=_validations(
            _positive_duration_rule("gatewayAPI.backendRequestTimeout"),
            _cel(
                "!self.matches('" + DURATION_PATTERN + "') || duration(self) <= duration('"
                + GATEWAY_MAX_TIMEOUT + "')",
                f"gatewayAPI.backendRequestTimeout must be at most {GATEWAY_MAX_TIMEOUT}",
            ),
        ),
    )
    inference_pool: InferencePoolBackend | None = Field(
        default=None,
        description="Send traffic to one InferencePool per revision (<release>-r<N>, "
        "inference.networking.k8s.io/v1) instead of its Service, for LLM serving. "
        "Omitted: the per-revision Services.",
    )

    @field_validator("backend_request_timeout")
    @classmethod
    def _positive_backend_timeout(cls, v: str | None) -> str | None:
        _positive_duration(v, "gatewayAPI.backendRequestTimeout")
        if v is not None and parse_duration(v) > parse_duration(GATEWAY_MAX_TIMEOUT):
            raise ValueError(f"gatewayAPI.backendRequestTimeout must be at most "
                             f"{GATEWAY_MAX_TIMEOUT}")
        return v

    @field_validator("parent_refs")
    @classmethod
    def _distinct_parents(cls, refs: list[GatewayParentRef]) -> list[GatewayParentRef]:
        for ref in refs:
            same = [r for r in refs if r.key() == ref.key()]
            if len(same) > 1 and (
                ref.section_name is None
                or sum(r.section_name == ref.section_name for r in same) > 1
            ):
                raise ValueError(
                    "parentRefs naming the same parent more than once need distinct "
                    "sectionNames"
                )
        return refs


class SidecarMode(StrEnum):
    """Whether a revision's pods must have Istio's proxy (spec.traffic.sidecar)."""

    AUTO = "Auto"
    REQUIRED = "Required"
    IGNORE = "Ignore"


class TrafficSpec(SpecModel):
    """How users reach the model: the hosts, and the Istio gateways or the Gateway API
    parents, of the routes the router manages."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.gatewayAPI) || !has(self.gateways) || size(self.gateways) == 0",
                "gateways are Istio gateways: with gatewayAPI, name the Gateways in "
                "gatewayAPI.parentRefs",
                field_path=".gateways",
            ),
            _cel(
                "!has(self.gatewayAPI) || !has(self.retries)",
                "retries are not part of Gateway API's standard HTTPRoute (experimental "
                "channel only): remove traffic.retries with gatewayAPI and set retries on "
                "the gateway implementation",
                field_path=".retries",
            ),
            _cel(
                "!has(self.gatewayAPI) || self.hosts.all(h, h.matches(r'"
                + GATEWAY_HOSTNAME_PATTERN + "'))",
                "with gatewayAPI, hosts must be Gateway API hostnames: DNS names, with an "
                "optional leading *.",
                field_path=".hosts",
            ),
            _cel(
                "!has(self.gatewayAPI) || !has(self.timeout) || !self.timeout.matches('"
                + DURATION_PATTERN + "') || duration(self.timeout) <= duration('"
                + GATEWAY_MAX_TIMEOUT + "')",
                f"with gatewayAPI, timeout must be at most {GATEWAY_MAX_TIMEOUT}",
                field_path=".timeout",
            ),
            _cel(
                "!has(self.gatewayAPI) || !has(self.gatewayAPI.backendRequestTimeout) || "
                "!has(self.timeout) || !self.timeout.matches('" + DURATION_PATTERN + "') || "
                "!self.gatewayAPI.backendRequestTimeout.matches('" + DURATION_PATTERN
                + "') || duration(self.gatewayAPI.backendRequestTimeout) <= "
                "duration(self.timeout)",
                "gatewayAPI.backendRequestTimeout must be at most timeout",
                field_path=".gatewayAPI.backendRequestTimeout",
            ),
            _cel(
                "!has(self.meshRouting) || self.meshRouting || has(self.gatewayAPI) || "
                "(has(self.gateways) && size(self.gateways) > 0)",
                MESH_ROUTING_NEEDS_GATEWAY,
                field_path=".meshRouting",
            ),
        )
    )

    hosts: list[
        Annotated[
            str,
            StringConstraints(max_length=253, pattern=HOST_PATTERN),
            Field(json_schema_extra=_host_rules()),
        ]
    ] = Field(
        min_length=1,
        max_length=16,
        description=(
            "Hostnames users call, e.g. fraud.example.com (at least one). Used as the "
            "VirtualService hosts, beside the in-cluster name <release>.<namespace>.svc."
            "<cluster domain> that Rewind adds (with gatewayAPI: the HTTPRoute's hostnames, "
            "alone). Istio's rules: DNS labels of at most 63 "
            "characters, none empty, the last not all digits; a wildcard only as the whole "
            "first label (*.example.com), never over in-cluster Service names; no two hosts "
            "overlapping; not the release's own name as a short host."
        ),
        json_schema_extra=_validations(
            _cel(
                "self.all(a, self.exists_one(b, b == a)) && self.all(a, !a.startsWith('*.') "
                "|| self.all(b, b == a || !b.endsWith(a.substring(1))))",
                HOSTS_OVERLAP,
            )
        ),
    )
    gateways: list[
        Annotated[
            str,
            StringConstraints(max_length=127, pattern=GATEWAY_PATTERN),
            Field(json_schema_extra=_gateway_rules()),
        ]
    ] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Istio Gateways as <namespace>/<name> (or <name> in the release's namespace), "
            "each a DNS label of at most 63 characters, e.g. istio-system/public. Empty: "
            "in-mesh callers only (meshRouting must then be true)."
        ),
    )
    mesh_routing: bool = Field(
        default=True,
        description=(
            "Route in-mesh callers too (Istio's mesh gateway): a pod with a sidecar calling "
            "the hosts or the in-cluster name gets the same weights as callers through the "
            "gateways, without passing through them, so the gateways' authentication and "
            "rate limits do not apply to it. false: only callers through the gateways follow "
            "the weights; in-mesh callers of the in-cluster name reach the stable revision "
            "(the Service <release>), and of the hosts go out through the gateway. Needs "
            "gateways when false. Default true (what Rewind always did, so an upgrade "
            "changes no route); set false when the gateway enforces authentication or rate "
            "limits."
        ),
    )
    port: int = Field(
        default=80, ge=1, le=65535, description="Port users call on the hosts. Default 80."
    )
    timeout: Duration | None = Field(
        default=None,
        description=(
            "Request timeout of the route (Istio http[].timeout), e.g. 120s for a long "
            "generation; more than 0s. Omitted: the mesh default."
        ),
        json_schema_extra=_validations(_positive_duration_rule("traffic.timeout")),
    )
    retries: RetrySpec | None = Field(
        default=None,
        description=(
            "Retries of failed requests (Istio http[].retries). Omitted: the mesh default "
            "(Istio retries twice); attempts: 0 turns retries off."
        ),
    )
    header_routes: list[HeaderRoute] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "A/B routing: requests matching one of these routes go to the candidate while one "
            "is being released (canary steps, blue-green preview, switch and post-switch; "
            "never to a shadow candidate, which must not answer users); all other requests "
            "follow the weights."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    gateway_api: GatewayAPITraffic | None = Field(
        default=None,
        alias="gatewayAPI",
        description=(
            "Route through Gateway API instead of Istio: an HTTPRoute <release> attached to "
            "these parents, weighting the per-revision Services (or InferencePools), with "
            "the RequestMirror filter for a shadow. Omitted: Istio's VirtualService."
        ),
    )

    sidecar: SidecarMode = Field(
        default=SidecarMode.AUTO,
        description=(
            "Whether each revision's pods must have Istio's proxy (a sidecar, or ambient "
            "mode's redirection), without which the mesh cannot measure them (no "
            "istio_requests_total from the destination) nor enforce mTLS. A running pod "
            "without it, where one is expected, makes the release Degraded (reason "
            "SidecarMissing) with a Warning Event. Auto (default): expected when the "
            "namespace is labelled for injection (istio-injection=enabled, istio.io/rev) or "
            "ambient mode (istio.io/dataplane-mode=ambient), or the pods are labelled "
            "sidecar.istio.io/inject=true (false opts out), or the release is routed by "
            "Istio (not gatewayAPI) and its policy's metrics or breaker query read Istio's "
            "metrics (istio_* names in the PromQL), which only its proxy reports. Required: "
            "always expected (a mesh whose injection the labels do not show). Ignore: never "
            "checked (the metrics come from elsewhere)."
        ),
    )

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, v: str | None) -> str | None:
        return _positive_duration(v, "traffic.timeout")

    @field_validator("hosts")
    @classmethod
    def _istio_hosts(cls, hosts: list[str]) -> list[str]:
        for index, host in enumerate(hosts):
            error = host_label_error(host)
            if error is None and covers_in_cluster_names(host):
                error = HOST_IN_CLUSTER_WILDCARD
            if error is not None:
                raise ValueError(f"hosts[{index}] {host}: {error}")
        pairs = overlapping_hosts(hosts)
        if pairs:
            a, b = pairs[0]
            raise ValueError(f"{a} and {b}: {HOSTS_OVERLAP}")
        return hosts

    @field_validator("gateways")
    @classmethod
    def _istio_gateways(cls, gateways: list[str]) -> list[str]:
        for index, gateway in enumerate(gateways):
            error = gateway_error(gateway)
            if error is not None:
                raise ValueError(f"gateways[{index}] {gateway}: {error}")
        return gateways

    @model_validator(mode="after")
    def _mesh_or_gateway(self) -> TrafficSpec:
        if not self.mesh_routing and not self.gateways and self.gateway_api is None:
            raise ValueError(MESH_ROUTING_NEEDS_GATEWAY)
        return self

    @model_validator(mode="after")
    def _gateway_api_rules(self) -> TrafficSpec:
        if self.gateway_api is None:
            return self
        if self.gateways:
            raise ValueError("gateways are Istio gateways: with gatewayAPI, name the Gateways "
                             "in gatewayAPI.parentRefs")
        if self.retries is not None:
            raise ValueError(
                "retries are not part of Gateway API's standard HTTPRoute (experimental "
                "channel only): remove traffic.retries with gatewayAPI and set retries on "
                "the gateway implementation"
            )
        bad = [h for h in self.hosts if not re.match(GATEWAY_HOSTNAME_PATTERN, h)]
        if bad:
            raise ValueError(f"with gatewayAPI, hosts must be Gateway API hostnames: DNS "
                             f"names, with an optional leading *. (not {', '.join(bad)})")
        limit = parse_duration(GATEWAY_MAX_TIMEOUT)
        if self.timeout is not None and parse_duration(self.timeout) > limit:
            raise ValueError(f"with gatewayAPI, timeout must be at most {GATEWAY_MAX_TIMEOUT}")
        backend = self.gateway_api.backend_request_timeout
        if (backend is not None and self.timeout is not None
                and parse_duration(backend) > parse_duration(self.timeout)):
            raise ValueError("gatewayAPI.backendRequestTimeout must be at most timeout")
        return self

    @property
    def router(self) -> str:
        """Which router routes this traffic: ``gatewayAPI`` or ``istio``."""
        return "gatewayAPI" if self.gateway_api is not None else "istio"

    @field_validator("header_routes")
    @classmethod
    def _unique_routes(cls, routes: list[HeaderRoute]) -> list[HeaderRoute]:
        names = [r.name for r in routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate header route names: {', '.join(dupes)}")
        return routes


def _template_images_rule(containers: str) -> dict[str, str]:
    """CEL on the spec: every image of the template's ``containers`` list is pinned by
    digest, unless code.allowTagImage opts in (the policy's half is the operator's)."""
    list_path = f"self.serving.template.spec.{containers}"
    return _cel(
        "!has(self.serving) || !has(self.serving.template) || !has(self.serving.template.spec)"
        f" || !has({list_path}) || (has(self.code.allowTagImage) && self.code.allowTagImage)"
        f" || {list_path}.all(c, !has(c.image) || c.image.matches('"
        + IMAGE_DIGEST_SUFFIX_PATTERN
        + "'))",
        f"every image in serving.template.spec.{containers} {_TEMPLATE_MESSAGES['pinned']}",
        field_path=f".serving.template.spec.{containers}",
        reason="FieldValueInvalid",
    )


class ModelReleaseSpec(SpecModel):
    """Desired state: which model, code and data to serve, released by which policy."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _template_images_rule("containers"),
            _template_images_rule("initContainers"),
            _cel(
                "!has(self.code.args) || size(self.code.args) == 0 || !has(self.serving) || ("
                + _each_model_server("self.serving.template", "!has(c.args)")
                + ")",
                _TEMPLATE_MESSAGES["args"],
                field_path=".serving.template.spec.containers",
                reason="FieldValueForbidden",
            ),
        )
    )

    policy_ref: PolicyRef = Field(
        description="The RolloutPolicy (same namespace) that governs how changes are released."
    )
    model: ModelSpec = Field(description="The model artifact, pinned by digest.")
    code: CodeSpec = Field(description="The serving image (pinned by digest), args and env.")
    data: DataSpec | None = Field(
        default=None, description="Training-data provenance recorded with each revision."
    )
    environment: EnvironmentSpec | None = Field(
        default=None, description="Runtime environment provenance recorded with each revision."
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec,
        description="Replicas, port, protocol, resources and probes of each revision's "
        "Deployment, and its pod template (inline, or an existing Deployment's).",
    )
    traffic: TrafficSpec = Field(
        description="Hosts, gateways and port through which users reach the model."
    )

    @field_validator("serving")
    @classmethod
    def _template_rules(cls, serving: ServingSpec, info: ValidationInfo) -> ServingSpec:
        """The rules between code and serving.template (code is validated before serving)."""
        template = serving.template
        code = info.data.get("code")
        if template is None or not isinstance(code, CodeSpec):
            return serving
        if code.args and template.model_server().args is not None:
            raise ValueError(_TEMPLATE_MESSAGES["args"])
        if not code.allow_tag_image:
            for field, containers in (
                ("containers", template.spec.containers),
                ("initContainers", template.spec.init_containers or []),
            ):
                tagged = [
                    c.image for c in containers if c.image is not None and not image_digest(c.image)
                ]
                if tagged:
                    raise ValueError(
                        f"every image in serving.template.spec.{field} "
                        f"{_TEMPLATE_MESSAGES['pinned']} (not pinned: {', '.join(tagged)})"
                    )
        return serving


# --------------------------------------------------------------------------------------
# RolloutPolicy spec
# --------------------------------------------------------------------------------------


class PauseSpec(SpecModel):
    """How long a canary step holds before the next one."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.duration) != (has(self.manual) && self.manual)",
                "set exactly one of pause.duration or pause.manual: true",
            )
        )
    )

    duration: Duration | None = Field(
        default=None,
        description="Hold this long (e.g. 30s, 5m) while analysis runs, then continue.",
    )
    manual: bool = Field(
        default=False,
        description="Hold until a human sets the rewind.dev/promote annotation.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> PauseSpec:
        if (self.duration is not None) == self.manual:
            raise ValueError("set exactly one of pause.duration or pause.manual: true")
        return self


class CanaryStep(SpecModel):
    """One traffic step of a canary."""

    weight: int = Field(
        ge=1, le=100, description="Percent of user traffic sent to the candidate (1..100)."
    )
    pause: PauseSpec | None = Field(
        default=None,
        description="Hold at this weight; omitted: move on after one analysis interval.",
    )


class CanaryStrategy(SpecModel):
    """Shift user traffic to the candidate in increasing steps, analysing at each."""

    steps: list[CanaryStep] = Field(
        min_length=1,
        max_length=20,
        description=(
            "Traffic steps with strictly increasing weights, e.g. 10, 25, 50. After the "
            "last step passes the candidate is promoted to 100%."
        ),
        json_schema_extra=_validations(
            _cel(
                "self.map(s, s.weight).isSorted() && "
                "self.all(a, self.exists_one(b, b.weight == a.weight))",
                "canary step weights must be strictly increasing (e.g. 10, 25, 50)",
            )
        ),
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.weight for s in steps]
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError(
                f"canary step weights must be strictly increasing (e.g. 10, 25, 50), got {weights}"
            )
        return steps

    post_promotion_duration: Duration = Field(
        default="0s",
        description=(
            "Post-promotion watch: after the last step the candidate takes 100% while the "
            "previous stable stays warm, and analysis keeps running this long. A failed "
            "analysis, or the candidate left with no ready pod, switches traffic back to the "
            "previous revision (at once, or after approval, per rollback.mode), as "
            "blue-green's postSwitchDuration does. 0s (default): no watch."
        ),
    )


class BlueGreenStrategy(SpecModel):
    """Run the candidate beside stable, analyse it, then switch all traffic at once."""

    preview_duration: Duration = Field(
        default="1m",
        description=(
            "Analysis window while the candidate is up with 0% user traffic (reachable "
            "for smoke tests). Default 1m."
        ),
    )
    auto_switch: bool = Field(
        default=True,
        description=(
            "Switch to the candidate automatically when preview analysis passes; false: "
            "wait for the rewind.dev/promote annotation."
        ),
    )
    post_switch_duration: Duration = Field(
        default="1m",
        description=(
            "Analysis window after the switch; a failure switches traffic back. Default 1m."
        ),
    )
    keep_old_colour: Duration = Field(
        default="10m",
        description=(
            "How long the old colour stays up after the switch so switching back is "
            "instant. Default 10m."
        ),
    )


class ShadowOnSuccess(SpecModel):
    """What to do once shadow (mirrored traffic) analysis passes."""

    # CEL rules guard with has(): the CRD default {} is validated before nested defaults.
    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.action) || self.action != 'Canary' || has(self.canary)",
                "onSuccess.canary is required when onSuccess.action is Canary",
                field_path=".canary",
                reason="FieldValueRequired",
            ),
            _cel(
                "!has(self.action) || self.action != 'BlueGreen' || has(self.blueGreen)",
                "onSuccess.blueGreen is required when onSuccess.action is BlueGreen",
                field_path=".blueGreen",
                reason="FieldValueRequired",
            ),
            _cel(
                "!has(self.canary) || (has(self.action) && self.action == 'Canary')",
                "onSuccess.canary is only allowed when onSuccess.action is Canary",
                field_path=".canary",
                reason="FieldValueForbidden",
            ),
            _cel(
                "!has(self.blueGreen) || (has(self.action) && self.action == 'BlueGreen')",
                "onSuccess.blueGreen is only allowed when onSuccess.action is BlueGreen",
                field_path=".blueGreen",
                reason="FieldValueForbidden",
            ),
        )
    )

    action: ShadowAction = Field(
        default=ShadowAction.STOP,
        description=(
            "Stop: end after the shadow analysis without shifting user traffic (a "
            "validation run). Canary: continue with the canary below. BlueGreen: continue "
            "with the blue-green below."
        ),
    )
    canary: CanaryStrategy | None = Field(
        default=None, description="Canary to run next; required when action is Canary."
    )
    blue_green: BlueGreenStrategy | None = Field(
        default=None, description="Blue-green to run next; required when action is BlueGreen."
    )

    @model_validator(mode="after")
    def _matching_block(self) -> ShadowOnSuccess:
        if self.action == ShadowAction.CANARY and self.canary is None:
            raise ValueError("onSuccess.canary is required when onSuccess.action is Canary")
        if self.action == ShadowAction.BLUE_GREEN and self.blue_green is None:
            raise ValueError("onSuccess.blueGreen is required when onSuccess.action is BlueGreen")
        if self.canary is not None and self.action != ShadowAction.CANARY:
            raise ValueError("onSuccess.canary is only allowed when onSuccess.action is Canary")
        if self.blue_green is not None and self.action != ShadowAction.BLUE_GREEN:
            raise ValueError(
                "onSuccess.blueGreen is only allowed when onSuccess.action is BlueGreen"
            )
        return self


class ShadowStrategy(SpecModel):
    """Mirror a copy of live traffic to the candidate; users only see stable's answers."""

    mirror_percent: int = Field(
        default=100,
        ge=1,
        le=100,
        description="Percent of requests mirrored to the candidate (1..100). Default 100.",
    )
    duration: Duration = Field(
        default="5m", description="How long to mirror and analyse. Default 5m."
    )
    on_success: ShadowOnSuccess = Field(
        default_factory=ShadowOnSuccess,
        description="What follows a passing shadow analysis. Default: Stop.",
    )


class StrategySpec(SpecModel):
    """Exactly one release strategy."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "(has(self.canary) ? 1 : 0) + (has(self.blueGreen) ? 1 : 0) + "
                "(has(self.shadow) ? 1 : 0) == 1",
                "set exactly one of strategy.canary, strategy.blueGreen or strategy.shadow",
            )
        )
    )

    canary: CanaryStrategy | None = Field(
        default=None, description="Progressive traffic shifting in weighted steps."
    )
    blue_green: BlueGreenStrategy | None = Field(
        default=None, description="Preview at 0%, then switch 100% at once, with switch-back."
    )
    shadow: ShadowStrategy | None = Field(
        default=None,
        description="Mirror live traffic to the candidate, optionally followed by a canary "
        "or blue-green.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> StrategySpec:
        if sum(x is not None for x in (self.canary, self.blue_green, self.shadow)) != 1:
            raise ValueError(
                "set exactly one of strategy.canary, strategy.blueGreen or strategy.shadow"
            )
        return self

    @property
    def kind(self) -> StrategyType:
        """Which strategy is set (validation guarantees exactly one)."""
        if self.canary is not None:
            return StrategyType.CANARY
        if self.blue_green is not None:
            return StrategyType.BLUE_GREEN
        return StrategyType.SHADOW


class Thresholds(SpecModel):
    """Acceptable range of a metric value; outside it the measurement fails."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.min) || has(self.max)",
                "set at least one of thresholds.min or thresholds.max",
                reason="FieldValueRequired",
            ),
            _cel(
                "!has(self.min) || !has(self.max) || self.min <= self.max",
                "thresholds.min must be less than or equal to thresholds.max",
            ),
        )
    )

    min: float | None = Field(
        default=None, description="Fail when the value is below this (inclusive bound)."
    )
    max: float | None = Field(
        default=None, description="Fail when the value is above this (inclusive bound)."
    )

    @model_validator(mode="after")
    def _range(self) -> Thresholds:
        if self.min is None and self.max is None:
            raise ValueError("set at least one of thresholds.min or thresholds.max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("thresholds.min must be less than or equal to thresholds.max")
        return self

    def verdict(self, value: float) -> Verdict:
        """Judge one value against the bounds (both inclusive)."""
        if self.min is not None and value < self.min:
            return Verdict.FAIL
        if self.max is not None and value > self.max:
            return Verdict.FAIL
        return Verdict.PASS


class MetricSpec(SpecModel):
    """A PromQL query whose result must stay within thresholds."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Metric name (lowercase DNS label), e.g. error-rate. Unique per policy.",
    )
    query: Annotated[str, AfterValidator(_check_template)] = Field(
        min_length=1,
        max_length=4096,
        description=(
            "PromQL instant query returning one number. Template variables: {{namespace}}, "
            "{{release}}, {{candidate}}, {{stable}} (revision numbers), {{candidateWorkload}}, "
            "{{stableWorkload}} (<release>-r<N>), {{interval}} (the analysis interval). "
            "Unknown variables are rejected."
        ),
        json_schema_extra=_validations(
            _cel(
                # One linear regex: findAll() over the placeholders is far over the CEL cost
                # budget for 20 metrics of 4096 characters.
                "self.matches('" + TEMPLATE_QUERY_PATTERN.replace("\\", "\\\\") + "')",
                "query uses an unknown template variable (or a malformed {{...}}); known: "
                + ", ".join(f"{{{{{v}}}}}" for v in sorted(TEMPLATE_VARIABLES)),
            )
        ),
    )
    thresholds: Thresholds = Field(
        description="Pass range: min and/or max (inclusive), min <= max."
    )
    timeout: Duration | None = Field(
        default=None,
        description="How long this metric's query may run, e.g. 20s for a long PromQL range "
        "on Thanos; sent to Prometheus as its query timeout too. At most analysis.interval. "
        "Default: the operator's --prometheus-timeout (10s unless set otherwise).",
        json_schema_extra=_validations(
            _cel(
                "!self.matches('" + DURATION_PATTERN + "') || duration(self) > duration('0s')",
                "metrics[].timeout must be more than 0s",
            )
        ),
    )

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, v: str | None) -> str | None:
        if v is not None and parse_duration(v) <= 0:
            raise ValueError("metrics[].timeout must be more than 0s")
        return v


#: CEL: every metric's timeout fits in one analysis interval (the default interval when unset).
_TIMEOUTS_WITHIN_INTERVAL = (
    "!has(self.metrics) || self.metrics.all(m, !has(m.timeout) "
    "|| !m.timeout.matches('" + DURATION_PATTERN + "') "
    "|| (has(self.interval) && !self.interval.matches('" + DURATION_PATTERN + "')) "
    "|| duration(m.timeout) <= duration(has(self.interval) ? self.interval : '30s'))"
)
_TIMEOUT_MESSAGE = (
    "metrics[].timeout must be at most analysis.interval: a query may not outlast its "
    "analysis round; lower the metric's timeout or lengthen analysis.interval"
)


class AnalysisSpec(SpecModel):
    """How the candidate is measured while it is being released."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(_TIMEOUTS_WITHIN_INTERVAL, _TIMEOUT_MESSAGE, field_path=".metrics")
        )
    )

    interval: Duration = Field(
        default="30s",
        description="How often the metrics are queried (>= 1s), also {{interval}}. Default 30s.",
        json_schema_extra=_validations(
            _cel(
                "!self.matches('" + DURATION_PATTERN + "') || duration(self) >= duration('1s')",
                "analysis.interval must be at least 1s",
            )
        ),
    )
    metrics: list[MetricSpec] = Field(
        default_factory=list,
        max_length=20,
        description=(
            "Metrics checked every interval. Empty: steps advance on time (and manual gates) alone."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    failure_limit: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Failed measurements (in total, per revision) that trigger a rollback "
        "decision. Default 1.",
    )
    consecutive_failure_limit: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Consecutive failed measurements that trigger a rollback decision; 0 "
        "turns this off. Default 0.",
    )
    no_data: NoDataPolicy = Field(
        default=NoDataPolicy.INCONCLUSIVE,
        description="Verdict when a query returns no samples: Inconclusive (default), Fail "
        "or Pass.",
    )
    query_error: QueryErrorPolicy = Field(
        default=QueryErrorPolicy.INCONCLUSIVE,
        description="Verdict when a query errors or times out: Inconclusive (default) or Fail.",
    )

    @field_validator("interval")
    @classmethod
    def _at_least_one_second(cls, v: str) -> str:
        if parse_duration(v) < 1.0:
            raise ValueError("analysis.interval must be at least 1s")
        return v

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, metrics: list[MetricSpec]) -> list[MetricSpec]:
        names = [m.name for m in metrics]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate metric names: {', '.join(dupes)}")
        return metrics

    @model_validator(mode="after")
    def _timeouts_within_interval(self) -> AnalysisSpec:
        interval = parse_duration(self.interval)
        for i, m in enumerate(self.metrics):
            if m.timeout is not None and parse_duration(m.timeout) > interval:
                raise ValueError(
                    f"{_TIMEOUT_MESSAGE} (metrics[{i}] {m.name}: timeout {m.timeout}, "
                    f"interval {self.interval})"
                )
        return self


class ApprovalSpec(SpecModel):
    """Human approval of rollback decisions."""

    required_approvers: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Distinct users who must set rewind.dev/approve-rollback (>= 1).",
    )
    timeout: Duration = Field(
        default="15m", description="How long to wait for approvers. Default 15m."
    )
    on_timeout: ApprovalTimeoutAction = Field(
        default=ApprovalTimeoutAction.ROLLBACK,
        description="Rollback (default, fail safe) or Resume the rollout when nobody decides.",
    )


class RollbackSpec(SpecModel):
    """What happens when analysis fails."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.mode) || self.mode != 'approval' || has(self.approval)",
                "rollback.approval is required when rollback.mode is approval",
                field_path=".approval",
                reason="FieldValueRequired",
            )
        )
    )

    mode: RollbackMode = Field(
        default=RollbackMode.AUTOMATIC,
        description="automatic (default): roll back at once. approval: pause at the failing "
        "weight and wait for humans (see approval).",
    )
    approval: ApprovalSpec | None = Field(
        default=None, description="Approval settings; required when mode is approval."
    )
    scale_down_delay: Duration = Field(
        default="30s",
        description="A rolled-back candidate keeps running this long (for debugging and "
        "in-flight requests) before it is scaled to zero. Default 30s.",
    )

    @model_validator(mode="after")
    def _approval_block(self) -> RollbackSpec:
        if self.mode == RollbackMode.APPROVAL and self.approval is None:
            raise ValueError("rollback.approval is required when rollback.mode is approval")
        return self


class RollbackWindowSpec(SpecModel):
    """Which known-good revisions a spec reverted to (git revert) restores at once."""

    revisions: int = Field(
        default=DEFAULT_ROLLBACK_WINDOW,
        ge=0,
        le=MAX_HISTORY,
        description=(
            "A spec equal to the stable revision's, or to one of the N revisions promoted "
            "most recently before it that is still known-good (never rolled back since), is "
            "restored without steps or analysis: its Deployment is scaled up from its "
            "snapshot, then all traffic moves to it once it is Available; same revision "
            f"number. 0 turns this off. Default {DEFAULT_ROLLBACK_WINDOW}, at most "
            f"{MAX_HISTORY}."
        ),
    )


class FallbackServiceSpec(SpecModel):
    """A Service in the release's namespace that answers instead of the model (for example
    a simple rules-based model)."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the Service (same namespace as the ModelRelease).",
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Service port; required when the Service has more than one.",
    )


class DirectResponseSpec(SpecModel):
    """A fixed answer from the mesh itself (Istio HTTPRoute ``directResponse``)."""

    status: int = Field(ge=200, le=599, description="HTTP status, e.g. 503.")
    body: str = Field(
        default="", max_length=4096, description="Response body (text); empty: no body."
    )


class BreakerFallback(SpecModel):
    """Where users go while the breaker is tripped: exactly one of service or
    directResponse."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.service) != has(self.directResponse)",
                "set exactly one of fallback.service or fallback.directResponse",
            )
        )
    )

    service: FallbackServiceSpec | None = Field(
        default=None, description="Send users to this Service."
    )
    direct_response: DirectResponseSpec | None = Field(
        default=None, description="Answer every request with this status and body."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> BreakerFallback:
        if (self.service is None) == (self.direct_response is None):
            raise ValueError("set exactly one of fallback.service or fallback.directResponse")
        return self


class BreakerReset(SpecModel):
    """How a tripped breaker closes again."""

    mode: BreakerResetMode = Field(
        default=BreakerResetMode.AUTOMATIC,
        description="Automatic (default): once the signal has been healthy for healthyFor. "
        "Manual: only when a human sets rewind.dev/reset-breaker=true.",
    )
    healthy_for: Duration = Field(
        default="30s",
        description="Automatic reset: how long every reading must pass before users go "
        "back to the model. Default 30s.",
    )


class BreakerSpec(SpecModel):
    """A circuit breaker: a fast signal that, held beyond its threshold, sends users to a
    fallback with one route write, in any phase. It never rolls back and never changes
    revisions."""

    query: Annotated[str, AfterValidator(_check_template)] = Field(
        min_length=1,
        max_length=4096,
        description="PromQL instant query returning one number, e.g. the release's error "
        "ratio over the last few seconds. Same template variables as analysis metrics; "
        "{{candidate}} is the stable revision when nothing is in flight, {{interval}} the "
        "breaker's interval.",
    )
    thresholds: Thresholds = Field(description="Healthy range: min and/or max (inclusive).")
    interval: Duration = Field(
        default="5s",
        description="How often the signal is read (>= 1s), independent of analysis. "
        "Default 5s.",
        json_schema_extra=_validations(
            _cel(
                "!self.matches('" + DURATION_PATTERN + "') || duration(self) >= duration('1s')",
                "breaker.interval must be at least 1s",
            )
        ),
    )
    hold_for: Duration = Field(
        default="0s",
        description="The signal must breach for this long (consecutive readings) before the "
        "breaker trips; 0s (default): the first breaching reading trips it.",
    )
    timeout: Duration | None = Field(
        default=None,
        description="Query timeout; default: the interval.",
    )
    fallback: BreakerFallback = Field(description="Where users go while it is tripped.")
    reset: BreakerReset = Field(
        default_factory=BreakerReset, description="How it closes again."
    )

    @field_validator("interval")
    @classmethod
    def _breaker_interval(cls, v: str) -> str:
        if parse_duration(v) < 1.0:
            raise ValueError("breaker.interval must be at least 1s")
        return v

    @field_validator("timeout")
    @classmethod
    def _breaker_timeout(cls, v: str | None) -> str | None:
        return _positive_duration(v, "breaker.timeout")

    def metric(self) -> MetricSpec:
        """The signal as a metric, for the metric provider."""
        return MetricSpec(
            name="breaker",
            query=self.query,
            thresholds=self.thresholds,
            timeout=self.timeout or self.interval,
        )


class DrillSpec(SpecModel):
    """Rollback drills: exercise the rollback path without touching user traffic."""

    every: Duration | None = Field(
        default=None,
        description="Run a drill this long after the last one (or after the stable "
        "revision was promoted), e.g. 24h. Omitted: on demand only (rewind.dev/drill=true).",
    )
    timeout: Duration = Field(
        default="10m",
        description="The rollback target must become Available (and, with a mirror, pass "
        "the analysis) within this. Default 10m.",
    )
    mirror_percent: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Mirror this percent of live traffic to the target and run the policy's "
        "analysis against it (responses are discarded: users are never affected). 0 "
        "(default): only bring it to Available.",
    )
    passing_rounds: int = Field(
        default=1,
        ge=1,
        le=100,
        description="With a mirror: consecutive passing analysis rounds needed. Default 1.",
    )

    @field_validator("every")
    @classmethod
    def _positive_every(cls, v: str | None) -> str | None:
        return _positive_duration(v, "drill.every")


class KeyRef(SpecModel):
    """One key of a Secret or a ConfigMap in the release's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Its name."
    )
    key: str = Field(
        min_length=1, max_length=253, description="The key whose value is used, e.g. key.pub."
    )


class KeySource(SpecModel):
    """Where trusted key material lives: exactly one of secretKeyRef or configMapKeyRef."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                "set exactly one of secretKeyRef or configMapKeyRef",
            )
        )
    )

    secret_key_ref: KeyRef | None = Field(default=None, description="A Secret's key.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A ConfigMap's key.")

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("set exactly one of secretKeyRef or configMapKeyRef")
        return self


class SignaturePolicy(SpecModel):
    """Offline verification of model.signatureRef with the OpenSSF model-signing library."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.publicKey) != has(self.certificateChain)",
                "integrity.signature: set exactly one of publicKey or certificateChain",
            )
        )
    )

    required: bool = Field(
        default=True,
        description="A revision without model.signatureRef is refused (default true). "
        "false: a signature is verified when the revision names one.",
    )
    public_key: KeySource | None = Field(
        default=None,
        description="The PEM public key the model was signed with (model-signing's key "
        "method). Exactly one of publicKey or certificateChain.",
    )
    certificate_chain: KeySource | None = Field(
        default=None,
        description="PEM certificates the signing certificate must chain to (model-signing's "
        "certificate method).",
    )

    @model_validator(mode="after")
    def _one_trust_root(self) -> SignaturePolicy:
        if (self.public_key is None) == (self.certificate_chain is None):
            raise ValueError(
                "integrity.signature: set exactly one of publicKey or certificateChain"
            )
        return self


class SecretName(SpecModel):
    """A Secret in the release's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Its name."
    )


class S3Access(SpecModel):
    """How the operator reads s3:// artifacts."""

    endpoint: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^https?://[^\s]+$",
        description="An S3-compatible server (path-style requests), e.g. "
        "https://minio.storage:9000. Omitted: AWS.",
    )
    region: str | None = Field(
        default=None, max_length=64, description="Region; omitted: the default chain's."
    )
    credentials_secret_ref: SecretName | None = Field(
        default=None,
        description="A Secret in the release's namespace with AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN optional). Omitted: the operator's own "
        "identity through the AWS default chain (workload identity such as IRSA or EKS Pod "
        "Identity, then the instance's role); nothing found: anonymous requests.",
    )


class IntegritySpec(SpecModel):
    """Verify the model artifact (and, when asked, its signature) before a revision gets
    any traffic, as a candidate and again as a rollback target."""

    reverify_after: Duration = Field(
        default="1h",
        description="A verdict older than this is redone before the revision gets traffic "
        "again. The revision a rollback would go to is re-verified in the background this "
        "often, so a rollback to a warm, verified revision never waits. Default 1h.",
    )
    timeout: Duration = Field(
        default="10m",
        description="One verification (reading and hashing every file); longer: it fails "
        "(timeout). Default 10m.",
    )
    signature: SignaturePolicy | None = Field(
        default=None,
        description="Also verify model.signatureRef (omitted: the digest only).",
    )
    s3: S3Access | None = Field(
        default=None, description="How to read s3:// artifacts (omitted: AWS, default chain)."
    )

    @field_validator("reverify_after")
    @classmethod
    def _positive_reverify(cls, v: str) -> str:
        _positive_duration(v, "integrity.reverifyAfter")
        return v

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, v: str) -> str:
        _positive_duration(v, "integrity.timeout")
        return v


class NotificationsSpec(SpecModel):
    """Where the operator sends messages about releases under this policy (approval
    requested, rolled back, failed, promoted), beside the Kubernetes Events it always posts."""

    targets: list[
        Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
    ] = Field(
        default_factory=list,
        max_length=MAX_NOTIFICATION_TARGETS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Names of notifier targets configured in the operator (chart values "
        "notifications.targets: a generic JSON webhook or a Slack-compatible incoming "
        "webhook, URL from a Secret). Empty: no messages for these releases. Without "
        "spec.notifications the operator's default targets are used.",
    )

    @field_validator("targets")
    @classmethod
    def _distinct(cls, targets: list[str]) -> list[str]:
        if len(set(targets)) != len(targets):
            raise ValueError("notifications.targets must not name a target twice")
        return targets


class RolloutPolicySpec(SpecModel):
    """How ModelReleases that reference this policy are released and rolled back."""

    strategy: StrategySpec = Field(description="Exactly one of canary, blueGreen or shadow.")
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec,
        description="Metrics, interval and failure limits that judge the candidate.",
    )
    rollback: RollbackSpec = Field(
        default_factory=RollbackSpec,
        description="Automatic or human-approved rollback when analysis fails.",
    )
    progress_deadline: Duration = Field(
        default="10m",
        description="A revision's Deployment must become Available within this, else the "
        "release fails (and rolls back). Default 10m.",
    )
    keep_previous_warm: Duration = Field(
        default="10m",
        description="After a promotion the previous stable revision keeps running this long "
        "for a fast rollback. Default 10m.",
    )
    allow_tag_images: bool = Field(
        default=False,
        description="Allow ModelReleases that opt in with code.allowTagImage to use a "
        "tag-only image (not reproducible). Default false.",
    )
    rollback_window: RollbackWindowSpec = Field(
        default_factory=RollbackWindowSpec,
        description="Reverting the spec to a recently promoted revision restores it at "
        "once (no steps, no analysis) instead of releasing it as a new revision.",
    )
    first_release: FirstRelease = Field(
        default=FirstRelease.GATES,
        description="How a release's first revision (no stable revision yet) goes out. "
        "Gates (default): before it takes any traffic it runs at 0% (reachable only at its "
        "own Service <release>-r<N>, for smoke tests) for the strategy's first verification "
        "window (canary: the first step's pause; blue-green: previewDuration; shadow: "
        "duration), analysed with the metrics that do not use {{stable}} (no data holds it, "
        "as anywhere: rewind.dev/promote vouches for it), then waits at a manual gate if the "
        "strategy has one. Promote: all traffic as soon as it is Available.",
    )
    drill: DrillSpec | None = Field(
        default=None,
        description="Rollback drills on a schedule (every) and on demand: the revision a "
        "rollback would go to now is brought to Available from its snapshot (optionally "
        "analysed on mirrored traffic), timed and scaled back; users are never affected.",
    )
    breaker: BreakerSpec | None = Field(
        default=None,
        description="Circuit breaker: a fast signal and a fallback (a Service or a direct "
        "response). Works in every phase, including Promoted; a trip is one route write, "
        "never a rollback.",
    )
    integrity: IntegritySpec | None = Field(
        default=None,
        description="Verify model.artifactDigest against the artifact (and, with "
        "integrity.signature, model.signatureRef) before a revision gets any traffic, as a "
        "candidate and as a rollback target; a failure refuses the candidate, or makes a "
        "rollback pick the next target. Omitted: artifacts are not checked (the history "
        "says unverified).",
    )
    notifications: NotificationsSpec | None = Field(
        default=None,
        description="Notifier targets for this policy's releases (webhook, Slack). Absent: "
        "the operator's default targets; targets: [] sends none. Events are always posted.",
    )


# --------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------


class Weights(StatusModel):
    """Percent of user traffic per revision."""

    stable: int = Field(default=0, ge=0, le=100, description="Percent to the stable revision.")
    candidate: int = Field(
        default=0, ge=0, le=100, description="Percent to the candidate revision."
    )


class RouteWeight(StatusModel):
    """Percent of user traffic the routes send to one revision."""

    revision: int = Field(default=0, description="Revision number.")
    weight: int = Field(default=0, ge=0, le=100, description="Percent of user traffic.")


class RoutesStatus(StatusModel):
    """The routes in effect, as read back from the router (never as intended)."""

    in_effect: bool = Field(
        default=False,
        description=(
            "True when the routes the current phase and step need are what the router "
            "reports (weights, mirror, header routes), with no refusal, conflict or drift."
        ),
    )
    since: datetime | None = Field(
        default=None, description="When inEffect last changed (RFC 3339)."
    )
    weights: list[RouteWeight] = Field(
        default_factory=list,
        max_length=16,
        description="User traffic per revision as the router reports it (weights > 0).",
    )
    mirror_revision: int = Field(
        default=0, description="Revision receiving mirrored traffic (0 = none)."
    )
    mirror_percent: int = Field(
        default=0, ge=0, le=100, description="Percent of requests mirrored."
    )
    header_revision: int = Field(
        default=0, description="Revision the header routes send their callers to (0 = none)."
    )
    primary_revision: int = Field(
        default=0,
        description=(
            "Revision the in-cluster name's Service <release> selects, where callers that "
            "bypass the routes go (no sidecar, a NodePort, a route of their own): the "
            "stable revision, moved on promotion and rollback (0 = none)."
        ),
    )
    fallback: StatusText = Field(
        default="",
        description="The circuit breaker's fallback the routes send every user to, as read "
        "back (empty: none).",
    )
    wanted: list[RouteWeight] = Field(
        default_factory=list,
        max_length=16,
        description="The weights the current phase and step need (what the operator asks for).",
    )
    message: StatusText = Field(
        default="",
        description="Why the routes are not in effect: a refused write, a conflicting route, "
        "an edit outside Rewind, or a write not seen yet.",
    )


class Measurement(StatusModel):
    """One metric query result and its verdict."""

    metric: str = Field(default="", description="Metric name from the policy.")
    value: float | None = Field(
        default=None,
        description="Query result when it is a finite number; null for no data, a query error "
        "or an infinite result (JSON has no infinity: see valueText).",
    )
    value_text: ShortText = Field(
        default="",
        description="The query result as shown: 4 significant digits (0.1235), or +Inf / -Inf "
        "(e.g. a ratio whose stable denominator is 0; judged against the thresholds like any "
        "number). Empty for no data or a query error.",
    )
    min: float | None = Field(default=None, description="Lower threshold in effect.")
    max: float | None = Field(default=None, description="Upper threshold in effect.")
    verdict: Verdict = Field(
        default=Verdict.INCONCLUSIVE, description="Pass, Fail or Inconclusive."
    )
    at: datetime | None = Field(default=None, description="When the query ran (RFC 3339).")
    revision: int = Field(default=0, description="Revision that was measured.")
    message: StatusText = Field(default="", description="Why: no data, query error, out of range.")
    error_kind: ShortText = Field(
        default="",
        description="Why the query gave no answer: unreachable, timeout, bad_query, bad_result, "
        "or overloaded (the operator had no free analysis thread within the query's timeout: "
        "the operator's fault, not the model's, so always Inconclusive). Empty when the query "
        "answered (a value or no data).",
    )

    @model_validator(mode="after")
    def _finite_value(self) -> Measurement:
        """Keep ``value`` JSON- and schema-safe: an infinite value moves to ``valueText``
        (NaN is no data); a finite one gets its ``valueText`` when it has none."""
        if self.value is not None and not math.isfinite(self.value):
            self.value_text = "" if math.isnan(self.value) else format_value(self.value)
            self.value = None
        elif self.value is not None and not self.value_text:
            self.value_text = format_value(self.value)
        return self

    @property
    def shown(self) -> str:
        """The result for humans: valueText, else the value, else ``no data``."""
        if self.value_text:
            return self.value_text
        return "no data" if self.value is None else format_value(self.value)


class AnalysisStatus(StatusModel):
    """Running analysis counters of the current candidate."""

    last_run_at: datetime | None = Field(default=None, description="Last analysis run.")
    failures: int = Field(default=0, description="Failed measurements so far.")
    consecutive_failures: int = Field(default=0, description="Failed measurements in a row.")
    inconclusive: int = Field(default=0, description="Inconclusive measurements so far.")
    measurements: list[Measurement] = Field(
        default_factory=list,
        max_length=MAX_MEASUREMENTS,
        description=f"Recent measurements, newest last (at most {MAX_MEASUREMENTS}).",
    )


class ApprovalRecord(StatusModel):
    """One user's approval of a pending decision."""

    user: HumanText = Field(default="", description="Who approved (from the annotation's author).")
    at: datetime | None = Field(default=None, description="When.")


class PendingDecision(StatusModel):
    """A decision waiting for humans (rollback.mode: approval)."""

    action: DecisionAction = Field(
        default=DecisionAction.ROLLBACK, description="What approval would do: Rollback."
    )
    reason: StatusText = Field(default="", description="Why the operator proposes it.")
    decided_at: datetime | None = Field(default=None, description="When it was proposed.")
    expires_at: datetime | None = Field(
        default=None, description="When approval.onTimeout applies."
    )
    required_approvers: int = Field(default=1, description="Distinct approvals needed.")
    approvals: list[ApprovalRecord] = Field(
        default_factory=list, max_length=10, description="Approvals received so far."
    )
    evidence: list[Measurement] = Field(
        default_factory=list,
        max_length=MAX_MEASUREMENTS,
        description="The measurements behind the decision.",
    )
    target: int = Field(
        default=0,
        description="The revision approval rolls back to, when it is not the stable one "
        "(a quarantined serving revision: the newest clean known-good revision); 0: the "
        "stable revision.",
    )
    quarantine: ShortText = Field(
        default="",
        description="The Quarantine entry behind the decision (namespace/name#entry), if any.",
    )


class QuarantineMark(StatusModel):
    """A revision's lineage matches a Quarantine entry (what is known to be bad)."""

    entry: ShortText = Field(
        default="", description="The matching entry: <namespace>/<quarantine>#<entry name>."
    )
    what: StatusText = Field(
        default="", description="What matched, e.g. data version 3f9c2d1 of s3://datasets/x."
    )
    reason: StatusText = Field(default="", description="The entry's reason.")
    added_by: HumanText = Field(default="", description="Who added the entry.")
    since: datetime | None = Field(
        default=None, description="When the operator first saw the revision quarantined."
    )
    accepted_by: HumanText = Field(
        default="",
        description="Who chose to keep serving it (rejected the rollback it proposed, or "
        "approval.onTimeout Resume); empty: nobody.",
    )


class IntegrityVerdict(StrEnum):
    """How a revision's last artifact verification ended (policy integrity)."""

    VERIFIED = "Verified"
    FAILED = "Failed"


class IntegrityRecord(StatusModel):
    """The last verification of a revision's artifact (and signature) against the store."""

    verdict: IntegrityVerdict = Field(
        default=IntegrityVerdict.FAILED, description="Verified or Failed."
    )
    at: datetime | None = Field(default=None, description="When it was reached.")
    digest: ShortText = Field(
        default="", description="The digest computed from the store (empty: nothing read)."
    )
    message: StatusText = Field(
        default="",
        description="Verified: what was checked (files, signature); Failed: which file, "
        "object or signature failed, and why.",
    )


class RegistryVersion(StatusModel):
    """The MLflow model version a revision is (its spec's model.registry)."""

    name: ShortText = Field(default="", description="Registered model name.")
    version: ShortText = Field(default="", description="Model version.")


class RegistryStatus(StatusModel):
    """The MLflow alias Rewind keeps on the serving revision's model version, as last read
    back from the tracking server (never as asked for)."""

    tracking_uri: StatusText = Field(
        default="", alias="trackingURI", description="The tracking server."
    )
    name: ShortText = Field(default="", description="Registered model name.")
    alias: ShortText = Field(default="", description="The alias Rewind keeps.")
    version: ShortText = Field(
        default="", description="The version the alias points at, as last read (empty: unset)."
    )
    wanted_version: ShortText = Field(
        default="", description="The version it should point at (the serving revision's)."
    )
    wanted_revision: int = Field(
        default=0, description="The revision whose version that is (0: none yet)."
    )
    observed_at: datetime | None = Field(
        default=None, description="When the alias was last read (null: never)."
    )
    moved_at: datetime | None = Field(
        default=None, description="When Rewind last moved the alias (read back)."
    )
    moved_to: ShortText = Field(
        default="", description="The version Rewind last moved the alias to."
    )
    error: StatusText = Field(
        default="", description="Why the last read or move failed (empty: it worked)."
    )


class HistoryEntry(StatusModel):
    """One revision of the release and how it ended."""

    revision: int = Field(default=0, description="Revision number (1, 2, ...).")
    spec_hash: str = Field(default="", description="First 16 hex of sha256 of the spec.")
    model_version: str = Field(default="", description="spec.model.version of the revision.")
    model_digest: str = Field(default="", description="spec.model.artifactDigest.")
    image_digest: str = Field(default="", description="Digest of spec.code.image, if pinned.")
    data_version: str = Field(default="", description="spec.data.version, if set.")
    dataset_ref: str | None = Field(default=None, description="spec.data.datasetRef, if set.")
    data_created_at: datetime | None = Field(
        default=None, description="spec.data.createdAt, if set."
    )
    quarantine: QuarantineMark | None = Field(
        default=None,
        description="Set while a Quarantine entry matches the revision's lineage: it is "
        "never given traffic again (candidate, restore or rollback target).",
    )
    integrity: IntegrityRecord | None = Field(
        default=None,
        description="The last verification of its artifact (policy integrity); absent: "
        "never verified.",
    )
    scaled_up_at: datetime | None = Field(
        default=None,
        description="When Rewind last brought it back from zero replicas (a rollback, "
        "restore or drill to a cold revision): its new pods read the artifact from the store "
        "again, so only a verification since then lets it take traffic.",
    )
    registry: RegistryVersion | None = Field(
        default=None,
        description="The MLflow model version it is (spec.model.registry), if any.",
    )
    outcome: Outcome = Field(
        default=Outcome.PROGRESSING,
        description="Progressing, Promoted, RolledBack, Failed, Superseded or Retired.",
    )
    created_at: datetime | None = Field(default=None, description="When it was first seen.")
    promoted_at: datetime | None = Field(default=None, description="When it became stable.")
    finished_at: datetime | None = Field(default=None, description="When it stopped serving.")
    reason: StatusText = Field(default="", description="Why it ended this way.")
    unpinned: list[HumanText] = Field(
        default_factory=list,
        max_length=MAX_UNPINNED,
        description="What the revision's snapshot cannot pin: the Secrets, ConfigMaps, "
        "claims and service account its pod template reads at run time (e.g. Secret "
        "hf-token, ConfigMap vllm-config). A rollback re-creates the template exactly but "
        "uses their contents as they are then. Empty: everything it runs is pinned.",
        # Left out when empty, in the status as in the revision's record (archive), so the
        # two stay equal and most revisions carry no empty list.
        exclude_if=lambda unpinned: not unpinned,
    )


class TimelineEntry(StatusModel):
    """Something that happened, and why."""

    at: datetime | None = Field(default=None, description="When.")
    type: ShortText = Field(
        default="",
        description="What, e.g. RollbackDecided, RollbackStarted (every rollback that "
        "begins, whatever triggered it), RolledBack, Promoted, ActionIgnored.",
    )
    revision: int = Field(default=0, description="Revision concerned.")
    message: StatusText = Field(default="", description="Why, in words.")
    user: HumanText = Field(default="", description="Who, when a human acted.")


class ConsumedAction(StatusModel):
    """An action annotation the operator acted on (or ignored), and what it acted on."""

    key: ShortText = Field(default="", description="Annotation key, e.g. rewind.dev/promote.")
    value: HumanText = Field(
        default="",
        description=f"Its value (at most {MAX_HUMAN_TEXT} characters: longer ones are cut).",
    )
    user: HumanText = Field(default="", description="Who set it (empty: unknown).")
    at: datetime | None = Field(default=None, description="When the operator consumed it.")
    target: ShortText = Field(
        default="",
        description="What it acted on (e.g. r2, or the rollback decision of r3 it approved); "
        "empty when it was ignored. The same value never acts on this again.",
    )
    revision: int = Field(
        default=0, description="The revision being released or serving when it was judged."
    )
    keep: bool = Field(
        default=False,
        description="Left on the object, not removed: the same value came back after it "
        "was consumed (a GitOps tool re-applying it), so removing it would only make it "
        "come back again. It never acts.",
    )
    gone_at: datetime | None = Field(
        default=None,
        description="When the annotation was seen gone or changed (null: still there).",
    )


class Condition(StatusModel):
    """kstatus-compatible condition (Ready, Reconciling, Stalled; also Progressing, Degraded)."""

    type: ShortText = Field(
        default="", description="Ready, Reconciling, Stalled, Progressing or Degraded."
    )
    status: ConditionStatus = Field(
        default=ConditionStatus.UNKNOWN, description='"True", "False" or "Unknown".'
    )
    reason: ShortText = Field(default="", description="CamelCase reason.")
    message: StatusText = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed."
    )
    observed_generation: int = Field(
        default=0, description="metadata.generation the condition was computed for."
    )


class BreakerStatus(StatusModel):
    """The circuit breaker as last decided and read back."""

    state: BreakerState = Field(
        default=BreakerState.CLOSED,
        description="Closed, Tripping (fallback asked for), Tripped (fallback read back in "
        "effect), Resetting (model routes asked for again).",
    )
    since: datetime | None = Field(default=None, description="When state last changed.")
    breaching_since: datetime | None = Field(
        default=None, description="First reading of the current run of breaching readings."
    )
    healthy_since: datetime | None = Field(
        default=None, description="First reading of the current healthy run while tripped."
    )
    tripped_at: datetime | None = Field(default=None, description="Last trip decision.")
    reset_at: datetime | None = Field(default=None, description="Last reset decision.")
    trips: int = Field(default=0, ge=0, description="Trips so far.")
    fallback: StatusText = Field(default="", description="The fallback, in words.")
    reason: StatusText = Field(default="", description="Why it last tripped or reset.")


class DrillStatus(StatusModel):
    """A rollback drill in progress."""

    phase: DrillPhase = Field(default=DrillPhase.STARTING, description="Where it is.")
    target: int = Field(default=0, description="The revision a rollback would go to.")
    started_at: datetime | None = Field(default=None, description="When it started.")
    ready_at: datetime | None = Field(default=None, description="When the target was Available.")
    replicas_before: int = Field(
        default=0, ge=0, description="The target's replicas before the drill (restored after)."
    )
    trigger: ShortText = Field(default="", description="schedule, or who asked (annotation).")
    passing_rounds: int = Field(default=0, ge=0, description="Consecutive passing rounds.")
    last_round_at: datetime | None = Field(default=None, description="Last analysis round.")


class DrillResult(StatusModel):
    """How the last rollback drill ended."""

    started_at: datetime | None = Field(default=None, description="When it started.")
    finished_at: datetime | None = Field(default=None, description="When it ended.")
    target: int = Field(default=0, description="The revision a rollback would have gone to.")
    trigger: ShortText = Field(default="", description="schedule, or who asked.")
    verdict: DrillVerdict | None = Field(default=None, description="Passed, Failed, Cancelled.")
    failure: DrillFailure = Field(
        default=DrillFailure.NONE,
        description="What would have failed in a real rollback: NoTarget, SnapshotMissing, "
        "SnapshotCorrupt, PodsNeverReady or AnalysisFailing (empty when it passed).",
    )
    time_to_ready_seconds: float | None = Field(
        default=None, description="From the start to the target Available."
    )
    time_to_passing_analysis_seconds: float | None = Field(
        default=None, description="From the start to a passing analysis (with a mirror)."
    )
    message: StatusText = Field(default="", description="What happened, in words.")


class NotificationRecord(StatusModel):
    """One message to a notifier target, derived from a timeline entry (the outbox)."""

    id: ShortText = Field(
        default="",
        description="Stable id of the message (sent as its idempotency key): the same "
        "message re-sent after a restart carries the same id.",
    )
    target: ShortText = Field(default="", description="Notifier target name.")
    type: ShortText = Field(
        default="", description="Timeline entry type it reports, e.g. ApprovalRequested."
    )
    revision: int = Field(default=0, description="Revision concerned.")
    at: datetime | None = Field(default=None, description="When the reported entry happened.")
    message: StatusText = Field(default="", description="The timeline entry's message.")
    state: NotificationState = Field(
        default=NotificationState.PENDING,
        description="Pending (not delivered yet: retried with backoff), Sent, or Failed "
        "(refused by the receiver, or undeliverable for too long).",
    )
    finished_at: datetime | None = Field(
        default=None, description="When it was delivered or given up."
    )
    error: StatusText = Field(default="", description="Why it failed (Failed only).")


class ModelReleaseStatus(StatusModel):
    """Observed state of a ModelRelease, written by the operator."""

    observed_generation: int = Field(default=0, description="metadata.generation last acted on.")
    phase: Phase = Field(
        default=Phase.PENDING,
        description="Pending, Progressing, Paused, AwaitingApproval, Promoting, Promoted, "
        "RollingBack, RolledBack or Failed.",
    )
    message: StatusText = Field(default="", description="What is happening, in words.")
    strategy: StrategyType | None = Field(
        default=None, description="Active strategy: canary, blueGreen or shadow."
    )
    stable_revision: int = Field(
        default=0, description="Last known-good revision serving users (0 = none yet)."
    )
    candidate_revision: int = Field(default=0, description="Revision being released (0 = none).")
    current_revision: int = Field(default=0, description="Revision the current spec describes.")
    weights: Weights = Field(
        default_factory=Weights,
        description="User traffic split in effect, as the router reports it (see routes).",
    )
    mirror_percent: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Percent mirrored to the candidate in effect (shadow), as reported.",
    )
    routes: RoutesStatus = Field(
        default_factory=RoutesStatus,
        description="The routes in effect, read back from the router, and whether they are "
        "the ones the current step needs.",
    )
    current_step: int = Field(default=0, description="Index into the active step list.")
    step_started_at: datetime | None = Field(
        default=None,
        description="When the current step began: when its routes were seen in effect "
        "(its pause and analysis count from then; null while they are not).",
    )
    analysis: AnalysisStatus = Field(
        default_factory=AnalysisStatus, description="Analysis counters and measurements."
    )
    pending_decision: PendingDecision | None = Field(
        default=None, description="Present while a human must decide."
    )
    restoring: bool = Field(
        default=False,
        description="True while the candidate is a known-good revision being restored "
        "because the spec was reverted to it (RolloutPolicy rollbackWindow): no steps, no "
        "analysis; it takes all traffic once Available.",
    )
    breaker: BreakerStatus | None = Field(
        default=None,
        description="The circuit breaker (absent when the policy defines none).",
    )
    drill: DrillStatus | None = Field(
        default=None, description="The rollback drill in progress (absent: none)."
    )
    last_drill: DrillResult | None = Field(
        default=None, description="How the last rollback drill ended."
    )
    last_successful_drill_at: datetime | None = Field(
        default=None, description="When the last drill that passed ended."
    )
    history: list[HistoryEntry] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description=f"Revisions, newest last (at most {MAX_HISTORY}).",
    )
    timeline: list[TimelineEntry] = Field(
        default_factory=list,
        max_length=MAX_TIMELINE,
        description=f"What happened and why, newest last (at most {MAX_TIMELINE}).",
    )
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, description="kstatus conditions."
    )
    registry: RegistryStatus | None = Field(
        default=None,
        description="The MLflow alias of spec.model.registry (absent: no registry).",
    )
    quarantined: ShortText = Field(
        default="",
        description="Revisions whose lineage a Quarantine entry matches, newest first "
        "(e.g. r3,r2), for kubectl get; history[].quarantine says which entry.",
    )
    consumed_actions: list[ConsumedAction] = Field(
        default_factory=list,
        max_length=MAX_CONSUMED_ACTIONS,
        description="Action annotations (rewind.dev/promote, ...) the operator has acted on "
        "or ignored, and what each acted on: an annotation still present with the same "
        "value and author is never acted on twice; the same value coming back later never "
        "acts on the same thing again (a reason never acts twice). The newest "
        f"{MAX_CONSUMED_ACTIONS} are remembered.",
    )
    notifications: list[NotificationRecord] = Field(
        default_factory=list,
        max_length=MAX_NOTIFICATIONS,
        description="The notification outbox: a message per notifier target for each "
        "timeline entry worth one (ApprovalRequested, RolledBack, Failed, Promoted), stored "
        "with the status that holds the entry and marked Sent once delivered, so a restart "
        "neither loses nor repeats one. Every Pending message and the newest others are kept "
        f"(at most {MAX_NOTIFICATIONS}).",
    )


class RolloutPolicyStatus(StatusModel):
    """Observed state of a RolloutPolicy (lets kubectl show the strategy as a column)."""

    observed_generation: int = Field(default=0, description="metadata.generation last validated.")
    strategy: StrategyType | None = Field(
        default=None, description="The strategy set in spec: canary, blueGreen or shadow."
    )
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, description="Conditions, e.g. Ready."
    )


# --------------------------------------------------------------------------------------
# Quarantine
# --------------------------------------------------------------------------------------

#: The kinds of match a Quarantine entry makes (exactly one per entry).
_QUARANTINE_KEYS = ("dataVersion", "suspectAfter", "modelDigest", "imageDigest")


class QuarantineEntry(SpecModel):
    """One thing known to be bad: a training data version (exact, or every version of a
    dataset made after a time), a model artifact digest or a serving image digest."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "[" + ", ".join(f"has(self.{k})" for k in _QUARANTINE_KEYS)
                + "].filter(x, x).size() == 1",
                "set exactly one of dataVersion, suspectAfter, modelDigest, imageDigest",
                reason="FieldValueInvalid",
            ),
            _cel(
                "!has(self.suspectAfter) || has(self.datasetRef)",
                "suspectAfter needs datasetRef: the dataset whose versions are suspect",
                field_path=".datasetRef",
                reason="FieldValueRequired",
            ),
            _cel(
                "!has(self.datasetRef) || has(self.dataVersion) || has(self.suspectAfter)",
                "datasetRef only qualifies dataVersion or suspectAfter",
                field_path=".datasetRef",
                reason="FieldValueInvalid",
            ),
        )
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Names the entry in decisions and status (unique in the Quarantine).",
    )
    data_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=NO_SPACE_PATTERN,
        description="A training data version (spec.data.version) known to be bad; with "
        "datasetRef, only that dataset's.",
    )
    dataset_ref: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="The dataset (spec.data.datasetRef) dataVersion or suspectAfter is about.",
    )
    suspect_after: datetime | None = Field(
        default=None,
        json_schema_extra={"maxLength": 64},
        description="Every version of datasetRef made at or after this time (RFC 3339) is "
        "suspect: spec.data.createdAt when set, else a revision first seen before it is "
        "clean and one seen later is suspect.",
    )
    model_digest: Digest | None = Field(
        default=None, description="A model artifact digest (spec.model.artifactDigest)."
    )
    image_digest: Digest | None = Field(
        default=None, description="A serving image digest (the @sha256: of spec.code.image)."
    )
    reason: str = Field(
        min_length=1, max_length=MAX_MESSAGE, description="Why it is bad (shown in decisions)."
    )
    added_by: str = Field(
        min_length=1, max_length=MAX_HUMAN_TEXT, description="Who added the entry."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> QuarantineEntry:
        kinds = [self.data_version, self.suspect_after, self.model_digest, self.image_digest]
        if sum(k is not None for k in kinds) != 1:
            raise ValueError(
                "set exactly one of dataVersion, suspectAfter, modelDigest, imageDigest"
            )
        if self.suspect_after is not None and self.dataset_ref is None:
            raise ValueError("suspectAfter needs datasetRef: the dataset whose versions are "
                             "suspect")
        if self.dataset_ref is not None and self.data_version is None and (
            self.suspect_after is None
        ):
            raise ValueError("datasetRef only qualifies dataVersion or suspectAfter")
        return self

    def describe(self) -> str:
        """What the entry matches, in words."""
        if self.data_version is not None:
            of = f" of {self.dataset_ref}" if self.dataset_ref else ""
            return f"data version {self.data_version}{of}"
        if self.suspect_after is not None:
            return (
                f"data of {self.dataset_ref} made at or after "
                f"{self.suspect_after.isoformat().replace('+00:00', 'Z')}"
            )
        if self.model_digest is not None:
            return f"model artifact {self.model_digest}"
        return f"serving image {self.image_digest}"


class QuarantineSpec(SpecModel):
    """What is known to be bad in this namespace."""

    entries: list[QuarantineEntry] = Field(
        min_length=1,
        max_length=MAX_QUARANTINE_ENTRIES,
        description="Entries; any match quarantines a revision of every ModelRelease of the "
        "namespace.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _unique(self) -> QuarantineSpec:
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError("entry names must be unique")
        return self


class QuarantineStatus(StatusModel):
    """Observed state of a Quarantine (none yet: the releases' status says what matched)."""

    observed_generation: int = Field(default=0, description="metadata.generation last read.")


# --------------------------------------------------------------------------------------
# Whole objects
# --------------------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The subset of metadata the operator reads; everything else is kept as-is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str = ""
    namespace: str = ""
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ModelRelease(BaseModel):
    """A ModelRelease serves one ML model (artifact, serving image, data provenance) and
    releases every change to it progressively under a RolloutPolicy (canary, blue-green or
    shadow over Istio), rolling back to the last known-good revision when analysis fails.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: str = f"{API_GROUP}/{API_VERSION}"
    kind: str = MODELRELEASE_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ModelReleaseSpec
    status: ModelReleaseStatus = Field(default_factory=ModelReleaseStatus)

    @model_validator(mode="after")
    def _no_short_host_of_its_own_name(self) -> ModelRelease:
        name = self.metadata.name
        if name and name in self.spec.traffic.hosts:
            raise ValueError(f"spec.traffic.hosts: {short_host_message(name)}")
        return self


class RolloutPolicy(BaseModel):
    """A RolloutPolicy says how ModelReleases that reference it are released (strategy),
    judged (analysis metrics) and rolled back (automatically or after human approval).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: str = f"{API_GROUP}/{API_VERSION}"
    kind: str = ROLLOUTPOLICY_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: RolloutPolicySpec
    status: RolloutPolicyStatus = Field(default_factory=RolloutPolicyStatus)


class Quarantine(BaseModel):
    """A Quarantine lists training data versions, model artifacts and serving images known
    to be bad. A ModelRelease never gives traffic to a revision whose lineage matches an
    entry, and rolls a serving one back to the newest known-good revision that is clean.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: str = f"{API_GROUP}/{API_VERSION}"
    kind: str = QUARANTINE_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: QuarantineSpec
    status: QuarantineStatus = Field(default_factory=QuarantineStatus)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def spec_hash(spec: BaseModel | Mapping[str, Any]) -> str:
    """First 16 hex of sha256 over the canonical JSON of a ModelRelease spec.

    A mapping is validated as a ModelReleaseSpec first, so the hash does not depend on how
    the spec was written. Canonical = dumped by alias, fields equal to their default left
    out, keys sorted, no whitespace. Leaving defaults out makes an object defaulted by the
    API server hash the same as the one the user wrote, and lets a new defaulted field be
    added to the API without giving every existing release a new revision.
    """
    model = spec if isinstance(spec, BaseModel) else ModelReleaseSpec.model_validate(spec)
    data = model.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_images(release: ModelReleaseSpec) -> list[tuple[str, str]]:
    """Every image a revision runs, with where it is set: code.image, then the template's
    containers and init containers (the model-server container runs code.image)."""
    out = [("code.image", release.code.image)]
    template = release.serving.template
    if template is not None:
        server = model_server_index(template)
        for field, containers in (
            ("containers", template.spec.containers),
            ("initContainers", template.spec.init_containers or []),
        ):
            for i, c in enumerate(containers):
                if c.image is not None and not (field == "containers" and i == server):
                    out.append((f"serving.template.spec.{field}[{c.name}].image", c.image))
    return out


def tag_image_error(release: ModelReleaseSpec, policy: RolloutPolicySpec) -> str | None:
    """Runtime half of the pinned-image rule (CEL cannot see the policy), over every image
    the revision runs (code.image and the pod template's, init containers too).

    Returns a message when the release uses a tag-only image that the policy does not
    allow, None when every image is acceptable.
    """
    tagged = [(where, image) for where, image in spec_images(release) if not image_digest(image)]
    if not tagged:
        return None
    where, image = tagged[0]
    if not release.code.allow_tag_image:
        if where == "code.image":
            return "code.image must be pinned by digest (<repo>@sha256:<64 hex>)"
        return (
            f"{where} {image!r} must be pinned by digest (<repo>@sha256:<64 hex>); set "
            "code.allowTagImage: true (and allowTagImages: true in the RolloutPolicy) to "
            "accept a tag"
        )
    if not policy.allow_tag_images:
        return (
            f"{where} {image!r} is not pinned by digest and the RolloutPolicy "
            f"{release.policy_ref.name!r} does not set allowTagImages: true"
        )
    return None


T = TypeVar("T")


def append_bounded(items: Sequence[T], item: T, limit: int) -> list[T]:
    """Append and drop the oldest entries so the list fits the status schema's maxItems."""
    out = [*items, item]
    return out[-limit:] if limit > 0 else []
