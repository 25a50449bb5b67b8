"""The chart's RBAC is sufficient: the operator, running as the chart's ServiceAccount,
takes a canary through to promotion and rolls the next one back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    Kubectl,
    MetricsEndpoint,
    OperatorProcess,
    Sandbox,
    wait_for,
)
from tests.sandbox.chart_helpers import ChartRelease, rewind_chart_fixture  # noqa: F401

pytestmark = pytest.mark.sandbox

DIGEST = "sha256:" + "3c" * 32
IMAGE = "registry.example.com/scorer@sha256:" + "4d" * 32


@pytest.fixture()
def release_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"t-chart-rel-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _policy() -> dict[str, Any]:
    return {
        "apiVersion": "rewind.dev/v1alpha1",
        "kind": "RolloutPolicy",
        "metadata": {"name": "quick-canary"},
        "spec": {
            "strategy": {"canary": {"steps": [
                {"weight": 20, "pause": {"duration": "2s"}},
                {"weight": 60, "pause": {"duration": "2s"}},
            ]}},
            "analysis": {
                "interval": "1s",
                "failureLimit": 1,
                "metrics": [{
                    "name": "error-rate",
                    "query": 'max(rewind_test_error_rate{workload="{{candidateWorkload}}"})',
                    "thresholds": {"max": 0.05},
                }],
            },
            "rollback": {"mode": "automatic", "scaleDownDelay": "1s"},
            "keepPreviousWarm": "1m",
        },
    }


def _release(version: int) -> dict[str, Any]:
    return {
        "apiVersion": "rewind.dev/v1alpha1",
        "kind": "ModelRelease",
        "metadata": {"name": "scorer"},
        "spec": {
            "policyRef": {"name": "quick-canary"},
            "model": {"name": "scorer", "version": f"3.0.{version}",
                      "artifactURI": f"s3://models/scorer/{version}/model.onnx",
                      "artifactDigest": DIGEST, "format": "onnx"},
            "code": {"image": IMAGE},
            "serving": {"replicas": 2},
            "traffic": {"hosts": ["scorer.example.com"]},
        },
    }


def test_operator_as_the_chart_service_account_promotes_and_rolls_back(
    sandbox: Sandbox,
    kubectl: Kubectl,
    rewind_chart: ChartRelease,
    release_namespace: str,
    metrics_endpoint: MetricsEndpoint,
    istio_crds: None,
    tmp_path: Path,
) -> None:
    who = json.loads(kubectl("auth", "whoami", "-o", "json",
                             f"--kubeconfig={rewind_chart.kubeconfig}").stdout)
    assert who["status"]["userInfo"]["username"] == rewind_chart.username

    ns = release_namespace

    def apply(obj: dict[str, Any]) -> None:
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))

    def status() -> dict[str, Any]:
        out = kubectl("get", "modelrelease/scorer", "-n", ns, "-o", "json").stdout
        return dict(json.loads(out).get("status") or {})

    def routes() -> list[tuple[str, int]]:
        vs = json.loads(kubectl("get", "virtualservice/scorer", "-n", ns, "-o", "json").stdout)
        return [(r["destination"]["subset"], r.get("weight", 100))
                for r in vs["spec"]["http"][0]["route"]]

    # The chart's default: all namespaces, standalone, with the chart's identity only.
    operator = OperatorProcess(sandbox, [], tmp_path / "operator.log",
                               kubeconfig=str(rewind_chart.kubeconfig))
    operator.start()
    try:
        apply(_policy())
        apply(_release(1))
        wait_for("r1 promoted", lambda: status().get("stableRevision") == 1, 60)

        metrics_endpoint.set("rewind_test_error_rate", 0.0, workload="scorer-r2")
        apply(_release(2))
        wait_for("r2 promoted", lambda: status().get("stableRevision") == 2, 90)
        assert routes() == [("r2", 100)]
        history = {h["revision"]: h["outcome"] for h in status()["history"]}
        assert history[2] == "Promoted"

        metrics_endpoint.set("rewind_test_error_rate", 0.5, workload="scorer-r3")
        apply(_release(3))
        wait_for("r3 rolled back", lambda: status().get("phase") == "RolledBack", 90)
        assert routes() == [("r2", 100)]
        events = kubectl("get", "events", "-n", ns, "--field-selector",
                         "involvedObject.name=scorer", "-o", "json").stdout
        reasons = {e["reason"] for e in json.loads(events)["items"]}
        assert "RolledBack" in reasons
        forbidden = [line for line in operator.logs().splitlines() if "forbidden" in line.lower()]
        assert not forbidden, forbidden[:5]
    except BaseException:
        print(f"--- operator log ---\n{operator.logs()[-20000:]}")
        raise
    finally:
        operator.stop()
