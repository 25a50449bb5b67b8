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
from tests.sandbox.operator_helpers import (
    METRIC,
    canary,
    policy_manifest,
    release_manifest,
    revision_of,
)

# The operator watches every namespace: nothing else may run meanwhile.
pytestmark = [pytest.mark.sandbox, pytest.mark.exclusive]

POLICY = "quick-canary"


@pytest.fixture()
def release_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"t-chart-rel-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


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
        return [(f"r{revision_of(r['destination'])}", r.get("weight", 100))
                for r in vs["spec"]["http"][0]["route"]]

    # The chart's default: all namespaces, standalone, with the chart's identity only.
    operator = OperatorProcess(sandbox, [], tmp_path / "operator.log",
                               kubeconfig=str(rewind_chart.kubeconfig))
    operator.start()
    try:
        apply(policy_manifest(POLICY, canary((20, "2s"), (60, "2s")),
                              scale_down_delay="1s", keep_previous_warm="1m"))
        apply(release_manifest("scorer", POLICY, version=1))
        wait_for("r1 promoted", lambda: status().get("stableRevision") == 1, 60)

        metrics_endpoint.set(METRIC, 0.0, namespace=ns, workload="scorer-r2")
        apply(release_manifest("scorer", POLICY, version=2))
        wait_for("r2 promoted", lambda: status().get("stableRevision") == 2, 90)
        # The status is written before the routes it decided (docs/design.md), so wait.
        wait_for("all traffic on r2", lambda: routes() == [("r2", 100)], 10)
        history = {h["revision"]: h["outcome"] for h in status()["history"]}
        assert history[2] == "Promoted"

        metrics_endpoint.set(METRIC, 0.5, namespace=ns, workload="scorer-r3")
        apply(release_manifest("scorer", POLICY, version=3))
        wait_for("r3 rolled back", lambda: status().get("phase") == "RolledBack", 90)
        wait_for("all traffic back on r2", lambda: routes() == [("r2", 100)], 10)

        def reasons() -> set[str]:
            events = kubectl("get", "events", "-n", ns, "--field-selector",
                             "involvedObject.name=scorer", "-o", "json").stdout
            return {e["reason"] for e in json.loads(events)["items"]}

        # Events go out after the status (and the records) of the reconcile that decided
        # them: RolledBack seen in the status does not mean its Event is posted yet.
        wait_for("a RolledBack Event on scorer", lambda: "RolledBack" in reasons(), 20)

        # The history records are patched onto the snapshots (patch on controllerrevisions).
        def recorded() -> str | None:
            cr = json.loads(kubectl("get", "controllerrevision/scorer-r3", "-n", ns, "-o",
                                    "json").stdout)
            record = (cr["metadata"].get("annotations") or {}).get("rewind.dev/record")
            return json.loads(record)["outcome"] if record else None

        wait_for("r3's record to say RolledBack", lambda: recorded() == "RolledBack", 10)
        forbidden = [line for line in operator.logs().splitlines() if "forbidden" in line.lower()]
        assert not forbidden, forbidden[:5]
    except BaseException:
        print(f"--- operator log ---\n{operator.logs()[-20000:]}")
        raise
    finally:
        operator.stop()
