"""The pydantic API models: examples parse, invalid variants fail, helpers behave."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from rewind import api, crdgen
from rewind.templates import istio_metric_names
from tests.api_cases import (
    DELETE,
    EXAMPLES,
    FRAUD_MR,
    INVALID,
    LLM_MR,
    LLM_RP,
    VALID_VARIANTS,
    Case,
    example,
    load_examples,
    mutate,
)

KINDS: dict[str, type[BaseModel]] = {
    "ModelRelease": api.ModelRelease,
    "RolloutPolicy": api.RolloutPolicy,
}

# Reasons that come from our own rules (CEL in the CRD, validators in the models), so both
# layers must say the same thing. The others are the API server's generic wording.
CUSTOM_REASONS = {
    "at most 63 characters",
    "no empty DNS label",
    "not all digits",
    "may not cover in-cluster Service names",
    "two hosts overlap",
    "IST0109",
    "with no dots",
    "traffic.meshRouting",
    "name at least one",
    "pinned by digest",
    "exactly one of",
    "strictly increasing",
    "exactly one of pause.duration",
    "at least 1s",
    "must be at most analysis.interval",
    "more than 0s",
    "less than or equal to thresholds.max",
    "at least one of thresholds.min",
    "unknown template variable",
    "required when rollback.mode is approval",
    "required when onSuccess.action is Canary",
    "required when onSuccess.action is BlueGreen",
    "only allowed when onSuccess.action is Canary",
    "with gatewayAPI, name the Gateways in gatewayAPI.parentRefs",
    "retries are not part of Gateway API's standard HTTPRoute",
    "must be Gateway API hostnames",
    "timeout must be at most 99999h",
    "backendRequestTimeout must be at most timeout",
    "need distinct sectionNames",
    "port is required when kind is Service",
    "header names must be unique within a header route",
    "not both",
    "remove image",
    "remove that port",
    "set by Rewind",
    "is an HTTP path",
}


def parse(doc: dict[str, Any]) -> BaseModel:
    return KINDS[doc["kind"]].model_validate(doc)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- examples ------------------------------------------------------------------------------


def test_examples_exist() -> None:
    assert set(load_examples()) == {
        "fraud-detection-canary.yaml",
        "chatbot-bluegreen-approval.yaml",
        "recommender-shadow.yaml",
        "llm-gateway-api-canary.yaml",
        "llm-gpu-grpc.yaml",
    }


@pytest.mark.parametrize(
    ("file", "strategy"),
    [
        ("fraud-detection-canary.yaml", api.StrategyType.CANARY),
        ("chatbot-bluegreen-approval.yaml", api.StrategyType.BLUE_GREEN),
        ("recommender-shadow.yaml", api.StrategyType.SHADOW),
        ("llm-gateway-api-canary.yaml", api.StrategyType.CANARY),
        ("llm-gpu-grpc.yaml", api.StrategyType.CANARY),
    ],
)
def test_example_parses(file: str, strategy: api.StrategyType) -> None:
    docs = [parse(d) for d in load_examples()[file]]
    policies = [d for d in docs if isinstance(d, api.RolloutPolicy)]
    releases = [d for d in docs if isinstance(d, api.ModelRelease)]
    assert len(policies) == 1
    assert len(releases) == 1
    assert policies[0].spec.strategy.kind is strategy
    assert releases[0].spec.policy_ref.name == policies[0].metadata.name
    assert api.tag_image_error(releases[0].spec, policies[0].spec) is None
    assert releases[0].status == api.ModelReleaseStatus()


def test_example_details() -> None:
    fraud = api.ModelRelease.model_validate(example(*FRAUD_MR))
    assert fraud.spec.model.artifact_uri == "s3://models/fraud/2.1.0/model.onnx"
    assert fraud.spec.model.format is api.ModelFormat.ONNX
    assert fraud.spec.serving.resources.requests == {"cpu": "500m", "memory": "1Gi"}
    chat = api.RolloutPolicy.model_validate(
        example("chatbot-bluegreen-approval.yaml", "RolloutPolicy")
    )
    assert chat.spec.rollback.mode is api.RollbackMode.APPROVAL
    assert chat.spec.rollback.approval is not None
    assert chat.spec.rollback.approval.required_approvers == 2
    assert any("{{stableWorkload}}" in m.query for m in chat.spec.analysis.metrics)
    shadow = api.RolloutPolicy.model_validate(example("recommender-shadow.yaml", "RolloutPolicy"))
    assert shadow.spec.strategy.shadow is not None
    assert shadow.spec.strategy.shadow.on_success.action is api.ShadowAction.CANARY


def test_round_trip_by_alias() -> None:
    doc = example(*FRAUD_MR)
    spec = api.ModelReleaseSpec.model_validate(doc["spec"])
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    assert dumped["model"]["artifactURI"] == doc["spec"]["model"]["artifactURI"]
    assert "policyRef" in dumped
    assert api.ModelReleaseSpec.model_validate(dumped) == spec


def test_snake_case_construction() -> None:
    ref = api.PolicyRef(name="p")
    assert (
        api.ModelSpec(
            name="m",
            version="1",
            artifact_uri="s3://b/m",
            artifact_digest="sha256:" + "a" * 64,
        ).artifact_uri
        == "s3://b/m"
    )
    assert ref.model_dump(by_alias=True) == {"name": "p"}


# --- invalid variants (same table as the admission test) -----------------------------------


@pytest.mark.parametrize("case", [c for c in INVALID if c.pydantic], ids=lambda c: c.id)
def test_invalid_rejected_by_models(case: Case) -> None:
    with pytest.raises(ValidationError) as info:
        parse(case.manifest())
    # A rule on the whole object (it needs metadata.name) names its field in the message.
    locations = [
        _loc(e["loc"]) or e["msg"].removeprefix("Value error, ").split(":", 1)[0]
        for e in info.value.errors()
    ]
    assert any(
        case.path == loc or case.path.startswith(loc + ".") or case.path.startswith(loc + "[")
        for loc in locations
        if loc != "spec"
    ), f"{case.id}: errors at {locations}, expected at {case.path}"
    if case.reason in CUSTOM_REASONS:
        assert case.reason in str(info.value)


@pytest.mark.parametrize(
    ("name", "base", "changes"), VALID_VARIANTS, ids=[v[0] for v in VALID_VARIANTS]
)
def test_valid_variants_accepted(
    name: str, base: tuple[str, str], changes: tuple[tuple[str, Any], ...]
) -> None:
    doc = example(*base)
    for path, value in changes:
        doc = mutate(doc, path, value)
    parse(doc)


def test_invalid_table_is_big_enough() -> None:
    assert len(INVALID) >= 30
    assert len({c.id for c in INVALID}) == len(INVALID)


def test_status_parses_empty_and_ignores_unknown() -> None:
    assert api.ModelReleaseStatus.model_validate({}).phase is api.Phase.PENDING
    status = api.ModelReleaseStatus.model_validate(
        {
            "phase": "AwaitingApproval",
            "weights": {"stable": 90, "candidate": 10},
            "pendingDecision": {"reason": "error-rate 0.12 > max 0.05", "requiredApprovers": 2},
            "someFutureField": {"x": 1},
            "analysis": {"measurements": [{"metric": "error-rate", "value": 0.12, "min": None}]},
        }
    )
    assert status.phase is api.Phase.AWAITING_APPROVAL
    assert status.weights.candidate == 10
    assert status.pending_decision is not None
    assert status.pending_decision.action is api.DecisionAction.ROLLBACK
    assert status.analysis.measurements[0].verdict is api.Verdict.INCONCLUSIVE
    assert api.RolloutPolicyStatus.model_validate({}).strategy is None


@pytest.mark.parametrize(("value", "text"), [(math.inf, "+Inf"), (-math.inf, "-Inf")])
def test_an_infinite_measurement_is_stored_as_text_the_schema_and_json_accept(
    value: float, text: str
) -> None:
    """JSON has no infinity and the CRD's `value` is a number: the value moves to valueText."""
    m = api.Measurement(metric="error-ratio", value=value, max=2.0, verdict=api.Verdict.FAIL)
    assert (m.value, m.value_text, m.shown) == (None, text, text)
    status = api.ModelReleaseStatus(analysis=api.AnalysisStatus(measurements=[m]))
    doc = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    stored = json.loads(json.dumps(doc, allow_nan=False))  # what the API server gets
    assert stored["analysis"]["measurements"][0] == {
        "metric": "error-ratio", "valueText": text, "max": 2.0, "verdict": "Fail",
        "revision": 0, "message": "", "errorKind": "",
    }
    again = api.ModelReleaseStatus.model_validate(stored).analysis.measurements[0]
    assert (again.value, again.shown) == (None, text)


def test_measurement_value_text_defaults_to_the_formatted_value_and_nan_is_no_data() -> None:
    assert api.Measurement(value=0.123456).value_text == "0.1235"
    assert api.Measurement(value=0.12, value_text="0.12").shown == "0.12"
    nan = api.Measurement(value=math.nan)
    assert (nan.value, nan.value_text, nan.shown) == (None, "", "no data")
    assert api.Measurement().shown == "no data"


def test_clip_cuts_with_an_ellipsis_within_the_limit() -> None:
    assert api.clip("abc", 3) == "abc"
    assert api.clip("abcd", 3) == "ab\u2026"
    assert len(api.clip("x" * 10_000, api.MAX_MESSAGE)) == api.MAX_MESSAGE
    assert api.clip("abc", 0) == ""


def test_over_long_status_strings_are_clipped_on_read_not_refused() -> None:
    """A status written before the bounds existed must still be read (and rewritten)."""
    long = "z" * 5_000
    status = api.ModelReleaseStatus.model_validate(
        {
            "message": long,
            "timeline": [{"type": "BreakGlassRollback", "message": long, "user": long}],
            "history": [{"revision": 1, "reason": long}],
            "pendingDecision": {"reason": long, "approvals": [{"user": long}]},
            "conditions": [{"type": "Ready", "message": long}],
            "consumedActions": [{"key": "rewind.dev/rollback", "value": long, "user": long}],
        }
    )
    assert len(status.message) == len(status.timeline[0].message) == api.MAX_MESSAGE
    assert len(status.timeline[0].user) == api.MAX_HUMAN_TEXT
    assert status.timeline[0].user.endswith("\u2026")
    assert len(status.history[0].reason) == api.MAX_MESSAGE
    assert status.pending_decision is not None
    assert len(status.pending_decision.reason) == api.MAX_MESSAGE
    assert len(status.pending_decision.approvals[0].user) == api.MAX_HUMAN_TEXT
    assert len(status.conditions[0].message) == api.MAX_MESSAGE
    ledger = status.consumed_actions[0]
    assert len(ledger.value) == len(ledger.user) == api.MAX_HUMAN_TEXT


def test_tag_image_needs_both_opt_ins() -> None:
    release = api.ModelRelease.model_validate(
        mutate(
            mutate(example(*FRAUD_MR), "spec.code.image", "reg/x:1"),
            "spec.code.allowTagImage",
            True,
        )
    ).spec
    policy = api.RolloutPolicy.model_validate(
        example("fraud-detection-canary.yaml", "RolloutPolicy")
    ).spec
    error = api.tag_image_error(release, policy)
    assert error is not None
    assert "allowTagImages" in error
    allowing = policy.model_copy(update={"allow_tag_images": True})
    assert api.tag_image_error(release, allowing) is None


def test_tag_images_in_the_template_need_both_opt_ins_too() -> None:
    doc = mutate(example(*LLM_MR), "spec.serving.template.spec.initContainers[0].image",
                 "registry.example.com/ml/weights-check:v2")
    with pytest.raises(ValidationError, match="initContainers must be pinned by digest"):
        api.ModelRelease.model_validate(doc)
    release = api.ModelRelease.model_validate(mutate(doc, "spec.code.allowTagImage", True)).spec
    policy = api.RolloutPolicy.model_validate(example(*LLM_RP)).spec
    error = api.tag_image_error(release, policy)
    assert error == (
        "serving.template.spec.initContainers[check-weights].image "
        "'registry.example.com/ml/weights-check:v2' is not pinned by digest and the "
        "RolloutPolicy 'llm-canary' does not set allowTagImages: true"
    )
    allowing = policy.model_copy(update={"allow_tag_images": True})
    assert api.tag_image_error(release, allowing) is None
    # The model-server container runs code.image: its own (absent) image is never checked.
    assert [where for where, _ in api.spec_images(release)] == [
        "code.image", "serving.template.spec.initContainers[check-weights].image"]


def test_image_digest() -> None:
    digest = "sha256:" + "c" * 64
    assert api.image_digest(f"reg.example.com:5000/x/y:1.2@{digest}") == digest
    assert api.image_digest("reg.example.com:5000/x/y:1.2") is None
    assert api.image_digest("x@sha256:" + "c" * 63) is None


def test_thresholds_verdict_is_inclusive() -> None:
    t = api.Thresholds(min=0.1, max=0.5)
    assert t.verdict(0.1) is api.Verdict.PASS
    assert t.verdict(0.5) is api.Verdict.PASS
    assert t.verdict(0.51) is api.Verdict.FAIL
    assert t.verdict(0.09) is api.Verdict.FAIL
    assert api.Thresholds(max=1).verdict(-100) is api.Verdict.PASS


def test_append_bounded_keeps_newest() -> None:
    items = list(range(api.MAX_TIMELINE))
    out = api.append_bounded(items, 999, api.MAX_TIMELINE)
    assert len(out) == api.MAX_TIMELINE
    assert out[-1] == 999
    assert out[0] == 1
    assert items[-1] == api.MAX_TIMELINE - 1  # input untouched


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("0s", 0.0),
        ("2h", 7200.0),
        ("1h1m1s500ms", 3661.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert api.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "m", "-1s", "1.5s", " 5s", "5 s", "5S", "s5"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        api.parse_duration(text)


def test_duration_pattern_matches_parser() -> None:
    for text in ["30s", "1h30m", "250ms", "5 minutes", "1d", ""]:
        ok = re.fullmatch(api.DURATION_PATTERN.strip("^$"), text) is not None
        try:
            api.parse_duration(text)
            parsed = True
        except ValueError:
            parsed = False
        assert ok == parsed, text


# --- spec hash -----------------------------------------------------------------------------


def test_spec_hash_format_and_golden_value() -> None:
    spec = {
        "policyRef": {"name": "p"},
        "model": {
            "name": "m",
            "version": "1",
            "artifactURI": "s3://b/m",
            "artifactDigest": "sha256:" + "a" * 64,
        },
        "code": {"image": "r/x@sha256:" + "b" * 64},
        "traffic": {"hosts": ["m.example.com"]},
    }
    h = api.spec_hash(spec)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    # Pinned canonical form (sorted keys, no whitespace, defaults left out): changing it
    # would give every existing release a new revision on upgrade.
    canonical = (
        '{"code":{"image":"r/x@sha256:' + "b" * 64 + '"},'
        '"model":{"artifactDigest":"sha256:' + "a" * 64 + '","artifactURI":"s3://b/m",'
        '"name":"m","version":"1"},"policyRef":{"name":"p"},'
        '"traffic":{"hosts":["m.example.com"]}}'
    )
    assert h == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_spec_hash_stable_under_key_order_defaults_and_input_type() -> None:
    doc = example(*FRAUD_MR)["spec"]
    reordered = dict(reversed(list(copy.deepcopy(doc).items())))
    reordered["model"] = dict(reversed(list(reordered["model"].items())))
    spec = api.ModelReleaseSpec.model_validate(doc)
    assert api.spec_hash(doc) == api.spec_hash(reordered) == api.spec_hash(spec)
    # What the API server stores after applying the CRD defaults hashes the same.
    minimal = mutate(doc, "serving", DELETE)
    defaulted = mutate(
        minimal,
        "serving",
        {"replicas": 1, "port": 8080, "resources": {}, "readinessPath": "/healthz"},
    )
    defaulted = mutate(defaulted, "code.allowTagImage", False)
    assert api.spec_hash(minimal) == api.spec_hash(defaulted)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("model.artifactDigest", "sha256:" + "f" * 64),
        ("code.image", "r/x@sha256:" + "e" * 64),
        ("data.version", "abc1234"),
        ("serving.replicas", 5),
        ("code.env[0].value", "debug"),
        ("traffic.hosts", ["other.example.com"]),
    ],
)
def test_spec_hash_changes_with_content(path: str, value: Any) -> None:
    doc = example(*FRAUD_MR)["spec"]
    assert api.spec_hash(doc) != api.spec_hash(mutate(doc, path, value))


def test_spec_hash_rejects_invalid_mapping() -> None:
    with pytest.raises(ValidationError):
        api.spec_hash({"model": {}})


# --- query templates -----------------------------------------------------------------------

VARS = api.query_variables(namespace="ns", release="fraud", candidate=3, stable=2, interval="1m")


def test_query_variables_cover_the_documented_set() -> None:
    assert set(VARS) == api.TEMPLATE_VARIABLES
    assert VARS["candidateWorkload"] == "fraud-r3"
    assert VARS["stableWorkload"] == "fraud-r2"


def test_render_query() -> None:
    out = api.render_query(
        'rate(x{w="{{candidateWorkload}}",ns="{{ namespace }}"}[{{interval}}]) / {{stable}}', VARS
    )
    assert out == 'rate(x{w="fraud-r3",ns="ns"}[1m]) / 2'


def test_render_query_leaves_promql_braces_alone() -> None:
    q = 'sum by (le) (rate(h{a="b"}[5m])) and on() vector(1) {}'
    assert api.render_query(q, VARS) == q


@pytest.mark.parametrize(
    ("promql", "names"),
    [
        ('sum(rate(istio_requests_total{reporter="destination",response_code=~"5.."}[1m]))'
         " / sum(rate(istio_requests_total[1m]))", ["istio_requests_total"]),
        ("histogram_quantile(0.95, sum by (le) (rate("
         'istio_request_duration_milliseconds_bucket{destination_workload="fraud-r3"}[1m])))',
         ["istio_request_duration_milliseconds_bucket"]),
        ("sum(istio_tcp_sent_bytes_total offset 5m) + istio_requests_total",
         ["istio_tcp_sent_bytes_total", "istio_requests_total"]),
        ('{__name__=~"istio_request.*", reporter="source"}', ["istio_request.*"]),
        # Not metric names: label values, label names, grouping lists, comments.
        ('max(rewind_test_error_rate{workload="istio_requests_total"})', []),
        ("sum by (istio_thing) (up{istio_label!=''})  # istio_requests_total", []),
        ("sum(x) without (istio_a) + on (istio_b) group_left (istio_c) y", []),
        ("vector(1)", []),
        # A quote inside a comment is the comment's; a # inside a string is the string's.
        ("up # don't\n+ istio_requests_total", ["istio_requests_total"]),
        ('up{a="#"} + istio_requests_total', ["istio_requests_total"]),
    ],
)
def test_istio_metric_names_are_the_metrics_a_query_reads(promql: str, names: list[str]) -> None:
    assert istio_metric_names(promql) == names


def test_render_query_unknown_variable_names_it() -> None:
    with pytest.raises(ValueError, match=r"unknown template variable \{\{canidate\}\}"):
        api.render_query('x{w="{{canidate}}"}', VARS)


def test_render_query_requires_a_value_for_every_variable() -> None:
    with pytest.raises(ValueError, match=r"\{\{stable\}\}"):
        api.render_query("{{stable}}", {"candidate": "1"})


@pytest.mark.parametrize("bad", ["{{}}", "{{a b}}", "{{ release-name }}"])
def test_render_query_malformed_placeholder(bad: str) -> None:
    with pytest.raises(ValueError, match="malformed template placeholder"):
        api.render_query(f"x{bad}", VARS)


@pytest.mark.parametrize(
    "query",
    [
        "{{release}}-r{{ candidate }}",
        'sum(x{a="{{stableWorkload}}"}) / on() vector(1)',
        "x{a='b'}{",
        "{}",
        "{{canidate}}",
        "{{release}",
        "{{{release}}",
        "{{}}",
        "a\n{{interval}}\n{{ model }}",
    ],
)
def test_cel_template_pattern_agrees_with_validator(query: str) -> None:
    """The CRD's regex and the operator's validator must accept exactly the same queries."""
    by_pattern = re.match(api.TEMPLATE_QUERY_PATTERN, query) is not None
    try:
        api.validate_template(query)
        by_validator = True
    except ValueError:
        by_validator = False
    assert by_pattern == by_validator


def test_metric_query_validated_at_parse() -> None:
    with pytest.raises(ValidationError, match="unknown template variable"):
        api.MetricSpec.model_validate({"name": "m", "query": "{{model}}", "thresholds": {"max": 1}})


def test_every_example_query_renders() -> None:
    for docs in load_examples().values():
        for doc in docs:
            if doc["kind"] != "RolloutPolicy":
                continue
            for metric in api.RolloutPolicy.model_validate(doc).spec.analysis.metrics:
                rendered = api.render_query(metric.query, VARS)
                assert "{{" not in rendered
                assert rendered.count("(") == rendered.count(")"), metric.name


# --- generated schema invariants -------------------------------------------------------------


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, child in node.get("properties", {}).items():
        out += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}.*")
    return out


@pytest.mark.parametrize(
    "crd",
    [crdgen.modelrelease_crd(), crdgen.rolloutpolicy_crd(), crdgen.quarantine_crd()],
    ids=["mr", "rp", "qr"],
)
def test_crd_schema_is_structural_and_bounded(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema, "root"):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "const"} & set(node), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        for name, child in node.get("properties", {}).items():
            if not f"{path}.{name}".startswith("root.metadata"):  # forbidden there
                assert child.get("description"), f"{path}.{name} has no description"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: unbounded list (CEL cost)"
        if node.get("type") == "string" and not path.startswith("root.status"):
            bounded = "maxLength" in node or "enum" in node
            assert bounded or path in {"root.apiVersion", "root.kind"}, f"{path}: unbounded"
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path


def test_crd_carries_cel_rules() -> None:
    text = json.dumps([crdgen.modelrelease_crd(), crdgen.rolloutpolicy_crd()])
    for fragment in [
        "has(self.canary) ? 1 : 0",
        "isSorted()",
        "self.min <= self.max",
        "self.mode != 'approval' || has(self.approval)",
        "self.action != 'Canary' || has(self.canary)",
        "self.metadata.name.size() <= 50",
        "@sha256:[a-f0-9]{64}$",
        "^sha256:[a-f0-9]{64}$",
        api.DURATION_PATTERN,
    ]:
        assert fragment in text, fragment


def test_status_schema_declares_every_status_field() -> None:
    schema = crdgen.modelrelease_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status = schema["properties"]["status"]
    for name, field in api.ModelReleaseStatus.model_fields.items():
        assert (field.alias or name) in status["properties"]
    measurement = status["properties"]["analysis"]["properties"]["measurements"]
    assert measurement["maxItems"] == api.MAX_MEASUREMENTS
    assert status["properties"]["history"]["maxItems"] == api.MAX_HISTORY
    assert status["properties"]["timeline"]["maxItems"] == api.MAX_TIMELINE
    assert measurement["items"]["properties"]["min"]["nullable"] is True
    ledger = status["properties"]["consumedActions"]
    assert ledger["maxItems"] == api.MAX_CONSUMED_ACTIONS and ledger["description"]
    assert sorted(ledger["items"]["properties"]) == [
        "at", "goneAt", "keep", "key", "revision", "target", "user", "value"]
    assert ledger["items"]["properties"]["value"]["maxLength"] == api.MAX_HUMAN_TEXT
    assert ledger["items"]["properties"]["target"]["maxLength"] == api.MAX_SHORT_TEXT


def test_status_free_text_is_bounded() -> None:
    """Messages, reasons and what humans wrote carry maxLength: the engine clips to them."""
    schema = crdgen.modelrelease_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    bounds = {
        path: node.get("maxLength")
        for path, node in _walk(schema["properties"]["status"], "status")
        if node.get("type") == "string"
        and path.rsplit(".", 1)[-1] in {"message", "reason", "user", "value", "type"}
    }
    assert bounds == {
        "status.message": api.MAX_MESSAGE,
        "status.analysis.measurements[].message": api.MAX_MESSAGE,
        "status.pendingDecision.reason": api.MAX_MESSAGE,
        "status.pendingDecision.approvals[].user": api.MAX_HUMAN_TEXT,
        "status.pendingDecision.evidence[].message": api.MAX_MESSAGE,
        "status.history[].reason": api.MAX_MESSAGE,
        "status.history[].quarantine.reason": api.MAX_MESSAGE,
        "status.history[].integrity.message": api.MAX_MESSAGE,
        "status.routes.message": api.MAX_MESSAGE,
        "status.timeline[].type": api.MAX_SHORT_TEXT,
        "status.timeline[].message": api.MAX_MESSAGE,
        "status.timeline[].user": api.MAX_HUMAN_TEXT,
        "status.conditions[].type": api.MAX_SHORT_TEXT,
        "status.conditions[].reason": api.MAX_SHORT_TEXT,
        "status.conditions[].message": api.MAX_MESSAGE,
        "status.consumedActions[].value": api.MAX_HUMAN_TEXT,
        "status.consumedActions[].user": api.MAX_HUMAN_TEXT,
        "status.breaker.reason": api.MAX_MESSAGE,
        "status.lastDrill.message": api.MAX_MESSAGE,
        "status.notifications[].type": api.MAX_SHORT_TEXT,
        "status.notifications[].message": api.MAX_MESSAGE,
    }


def test_printer_columns() -> None:
    mr = crdgen.modelrelease_crd()["spec"]
    cols = [c["name"] for c in mr["versions"][0]["additionalPrinterColumns"] if "priority" not in c]
    assert cols == ["Phase", "Strategy", "Stable", "Candidate", "Weight", "Breaker", "Quarantined",
                    "Age"]
    assert mr["names"]["shortNames"] == ["mr"]
    assert mr["names"]["categories"] == ["rewind"]
    assert mr["versions"][0]["subresources"] == {"status": {}}
    rp = crdgen.rolloutpolicy_crd()["spec"]
    assert [c["name"] for c in rp["versions"][0]["additionalPrinterColumns"]] == [
        "Strategy",
        "Mode",
        "Age",
    ]
    assert rp["names"]["shortNames"] == ["rp"]


def test_every_gateway_the_examples_name_is_created_by_the_docs_and_the_kind_path() -> None:
    """Issue 12: the examples referenced a Gateway that nothing created."""
    gateways = {
        doc["metadata"]["namespace"] + "/" + doc["metadata"]["name"]: doc
        for path in sorted((EXAMPLES / "istio").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "Gateway"
    }
    named = {
        g
        for docs in load_examples().values()
        for doc in docs
        if doc["kind"] == "ModelRelease"
        for g in doc["spec"]["traffic"].get("gateways", [])
    }
    assert named and named <= set(gateways)
    for name in named:
        servers = gateways[name]["spec"]["servers"]
        hosts = {h for server in servers for h in server["hosts"]}
        for docs in load_examples().values():
            for doc in docs:
                if doc["kind"] == "ModelRelease" and name in doc["spec"]["traffic"].get(
                    "gateways", []
                ):
                    assert set(doc["spec"]["traffic"]["hosts"]) <= hosts
    root = EXAMPLES.parent
    assert "examples/istio/public-gateway.yaml" in (root / "hack" / "kind-up.sh").read_text()
    assert "examples/istio/public-gateway.yaml" in (root / "README.md").read_text()
