"""The demo's objects: valid API objects, and fraud's drill and breaker as the acts need."""

from __future__ import annotations

import yaml

from rewind.api import RolloutPolicySpec
from rewind.templates import query_variables, render_query
from rewind_demo.demo import (
    BREAKER_WINDOW,
    DRILL_EVERY,
    FALLBACK_PORT,
    FALLBACK_SERVICE,
    FRAUD,
    breaker_query,
    manifests_yaml,
    policy_body,
)


def test_every_manifest_is_printed_and_fraud_has_its_fallback_service() -> None:
    docs = list(yaml.safe_load_all(manifests_yaml("demo")))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("RolloutPolicy") == 3 and kinds.count("ModelRelease") == 7
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert service["metadata"]["name"] == FALLBACK_SERVICE
    assert service["spec"]["ports"][0]["port"] == FALLBACK_PORT


def test_fraud_drills_nightly_unless_the_act_shortens_it_and_has_a_breaker() -> None:
    spec = RolloutPolicySpec.model_validate(policy_body(FRAUD, "demo")["spec"])
    assert spec.drill is not None and spec.drill.every == DRILL_EVERY == "24h"
    assert spec.drill.mirror_percent == 50
    shortened = RolloutPolicySpec.model_validate(
        policy_body(FRAUD, "demo", drill_every="5s")["spec"])
    assert shortened.drill is not None and shortened.drill.every == "5s"
    assert spec.breaker is not None and spec.breaker.fallback.service is not None
    assert spec.breaker.fallback.service.name == FALLBACK_SERVICE
    assert spec.breaker.reset.mode == "Automatic"


def test_breaker_query_reads_every_revision_then_the_stable_feature_store() -> None:
    promql = render_query(breaker_query(), query_variables(
        namespace="demo", release="fraud", candidate=2, stable=2, interval="1s"))
    assert "{{" not in promql
    assert 'destination_workload=~"fraud-r[0-9]+"' in promql
    assert f"[{BREAKER_WINDOW}]" in promql
    # No model traffic at all (every user on the fallback): the feature store speaks.
    assert promql.endswith(
        'or on() (1 - min(model_dependency_up{namespace="demo",revision="fraud-r2"}))')
