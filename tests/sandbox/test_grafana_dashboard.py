"""Every PromQL expression of the chart's Grafana dashboard parses in the sandbox's real
Prometheus, and, with the operator scraped there, the panels find its series."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.conftest import RegisterTarget, wait_for
from tests.sandbox.operator_helpers import Rewind, canary, policy_manifest, release_manifest
from tests.unit.test_grafana_dashboard import generator

pytestmark = pytest.mark.sandbox

#: What Grafana substitutes before a query reaches Prometheus.
GRAFANA = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def as_promql(expr: str, namespace: str = ".*") -> str:
    """The expression as Grafana sends it; a ``label_values(selector, label)`` variable
    query is Grafana's, so its selector is what Prometheus is asked."""
    m = re.fullmatch(r"label_values\((.*), *[a-z_]+\)", expr)
    if m:
        expr = m.group(1)
    for variable, value in GRAFANA.items():
        expr = expr.replace(variable, value)
    return expr.replace("$namespace", namespace).replace("$release", ".*")


def ask(prometheus_url: str, promql: str) -> dict[str, object]:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answer: dict[str, object] = json.load(response)
    except urllib.error.HTTPError as err:
        answer = json.load(err)
    return answer


def test_prometheus_parses_every_expression(prometheus_url: str) -> None:
    expressions = generator().expressions()
    assert len(expressions) >= 20
    refused = {}
    for expr in expressions:
        answer = ask(prometheus_url, as_promql(expr))
        if answer.get("status") != "success":
            refused[expr] = answer.get("error")
    assert not refused, refused


def test_the_panels_find_the_operators_series(
    rw: Rewind, register_target: RegisterTarget, prometheus_url: str
) -> None:
    port = rw.restart_operator_with_metrics()
    register_target(f"rewind-operator-{port}", port)
    rw.apply(policy_manifest("dash", canary((40, None))))
    rw.apply(release_manifest("chatbot", "dash", version=1))
    rw.wait_phase("chatbot", "Promoted", stable=1, timeout=60)
    rw.apply(release_manifest("chatbot", "dash", version=2))
    rw.wait_phase("chatbot", "Paused", candidate=2, timeout=60)
    ns = rw.namespace  # a DNS label: nothing to escape in a regex
    panels = {t["expr"]: p["title"] for p in generator().dashboard()["panels"]
              for t in p.get("targets", [])}

    def found(title: str) -> list[object]:
        expr = next(e for e, t in panels.items() if t == title)
        result = ask(prometheus_url, as_promql(expr, ns))
        data = result.get("data") or {}
        return list(data.get("result") or []) if isinstance(data, dict) else []

    wait_for("the candidate's weight on the dashboard", lambda: any(
        r["value"][1] == "40" for r in found("Candidate weight")), 30)  # type: ignore[index]
    phases = {r["metric"]["phase"]: r["value"][1]  # type: ignore[index]
              for r in found("Releases by phase")}
    assert phases["Paused"] == "1" and phases["Promoted"] == "0"
    assert found("Active operator replicas")
