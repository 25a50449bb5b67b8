"""The sandbox is real: CEL admission, RBAC, kwok Deployments, Istio schema, Prometheus."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    ROOT,
    SANDBOX_CLI,
    Kubectl,
    RegisterTarget,
    Sandbox,
    prometheus_query,
    wait_for,
)

pytestmark = pytest.mark.sandbox


def _widget_crd(group: str) -> dict[str, object]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "min": {"type": "integer"},
                                        "max": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {"rule": "self.min <= self.max",
                                         "message": "min must not exceed max"}
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_cel_rule_is_enforced_by_the_api_server(kubectl: Kubectl, namespace: str) -> None:
    group = f"g{uuid.uuid4().hex[:8]}.sandbox.rewind.dev"
    kubectl("apply", "-f", "-", input=json.dumps(_widget_crd(group)))
    try:
        kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/widgets.{group}")

        def widget(name: str, low: int, high: int) -> str:
            return json.dumps({"apiVersion": f"{group}/v1", "kind": "Widget",
                               "metadata": {"name": name, "namespace": namespace},
                               "spec": {"min": low, "max": high}})

        # A new CRD's REST endpoint can lag "Established" by a moment: retry only "not found".
        def create_valid() -> bool:
            result = kubectl("create", "-f", "-", input=widget("ok", 1, 2), check=False)
            if result.returncode != 0 and "the server could not find" not in result.stderr:
                raise AssertionError(result.stderr)
            return result.returncode == 0

        wait_for("the valid widget to be accepted", create_valid)
        rejected = kubectl("create", "-f", "-", input=widget("bad", 5, 2), check=False)
        assert rejected.returncode != 0
        assert "min must not exceed max" in rejected.stderr
    finally:
        kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_deployment_becomes_available_through_kwok(kubectl: Kubectl, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(deployment))
    kubectl("wait", "--for=condition=Available", "--timeout=60s", "-n", namespace,
            "deployment/web")
    status = json.loads(kubectl("get", "deployment/web", "-n", namespace, "-o", "json").stdout)
    assert status["status"]["readyReplicas"] == 2
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert {p["spec"]["nodeName"] for p in pods} <= {"kwok-node-0", "kwok-node-1"}
    assert all(p["status"]["phase"] == "Running" for p in pods)


def test_gpu_pods_land_on_the_tainted_gpu_node_and_only_tolerating_ones(
    kubectl: Kubectl, namespace: str
) -> None:
    """The GPU node pool: a pod that tolerates its taint and asks for a GPU runs there; one
    that asks for a GPU without the toleration is unschedulable (no other node has GPUs)."""

    def gpu_deployment(name: str, tolerate: bool) -> dict[str, Any]:
        tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "tolerations": tolerations if tolerate else [],
                        "containers": [{"name": "llm", "image": "example.invalid/llm:1",
                                        "resources": {"limits": {"nvidia.com/gpu": 1}}}],
                    },
                },
            },
        }

    kubectl("apply", "-f", "-", input=json.dumps(gpu_deployment("tolerating", True)))
    kubectl("apply", "-f", "-", input=json.dumps(gpu_deployment("intolerant", False)))

    def pod_of(app: str) -> dict[str, Any] | None:
        pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o",
                                  "json").stdout)["items"]
        return pods[0] if pods else None

    def running() -> dict[str, Any] | None:
        pod = pod_of("tolerating")
        return pod if pod and pod["status"].get("phase") == "Running" else None

    def unschedulable() -> str | None:
        pod = pod_of("intolerant")
        for c in (pod or {}).get("status", {}).get("conditions") or []:
            if c.get("reason") == "Unschedulable":
                return str(c.get("message", ""))
        return None

    assert wait_for("the GPU pod running", running, timeout=60)["spec"]["nodeName"] == (
        "kwok-gpu-node-0")
    message = wait_for("the intolerant GPU pod unschedulable", unschedulable, timeout=60)
    assert "untolerated taint" in message and "nvidia.com/gpu" in message


def test_rbac_forbids_the_developer_what_the_admin_may_do(
    kubectl: Kubectl, namespace: str, sandbox: Sandbox
) -> None:
    configmap = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "cm", "namespace": namespace}})
    denied = kubectl("create", "-f", "-", input=configmap, dev=True, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert sandbox.env["SANDBOX_DEV_USER"] in denied.stderr
    # The developer may read (ClusterRole view), and the admin may write.
    assert kubectl("get", "pods", "-n", namespace, dev=True).returncode == 0
    kubectl("create", "-f", "-", input=configmap)
    who = kubectl("auth", "whoami", "-o", "json", dev=True)
    user_info = json.loads(who.stdout)["status"]["userInfo"]
    assert user_info["username"] == sandbox.env["SANDBOX_DEV_USER"]
    assert sandbox.env["SANDBOX_DEV_GROUP"] in user_info["groups"]


def _virtual_service(namespace: str, route: list[dict[str, object]]) -> str:
    return json.dumps({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "model", "namespace": namespace},
        "spec": {"hosts": ["model.example.com"], "http": [{"route": route}]},
    })


def test_istio_schema_accepts_weights_and_rejects_malformed(
    kubectl: Kubectl, namespace: str, istio_crds: None
) -> None:
    good: list[dict[str, object]] = [
        {"destination": {"host": "model", "subset": "r1"}, "weight": 80},
        {"destination": {"host": "model", "subset": "r2"}, "weight": 20},
    ]
    kubectl("apply", "-f", "-", input=_virtual_service(namespace, good))
    stored = json.loads(kubectl("get", "virtualservice/model", "-n", namespace, "-o",
                                "json").stdout)
    assert [r["weight"] for r in stored["spec"]["http"][0]["route"]] == [80, 20]

    malformed: list[dict[str, object]] = [
        {"destination": {"host": "model", "subset": "r1"}, "weight": "heavy"}
    ]
    rejected = kubectl("apply", "-f", "-", input=_virtual_service(namespace, malformed),
                       check=False)
    assert rejected.returncode != 0
    assert "weight" in rejected.stderr


class _GaugeHandler(BaseHTTPRequestHandler):
    value = "0"

    def do_GET(self) -> None:
        body = f"# TYPE sandbox_test_gauge gauge\nsandbox_test_gauge {self.value}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def gauge_server() -> Iterator[ThreadingHTTPServer]:
    handler = type("Handler", (_GaugeHandler,), {"value": "42.5"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_prometheus_scrapes_an_endpoint_registered_at_run_time(
    gauge_server: ThreadingHTTPServer, register_target: RegisterTarget, sandbox: Sandbox
) -> None:
    port = gauge_server.server_address[1]
    instance = register_target(f"gauge-{port}", int(port), {"suite": "sandbox"})
    result = wait_for(
        "the gauge's value in Prometheus",
        lambda: prometheus_query(sandbox.prometheus_url,
                                 f'sandbox_test_gauge{{instance="{instance}"}}'),
    )
    assert float(result[0]["value"][1]) == 42.5
    assert result[0]["metric"]["suite"] == "sandbox"


def test_version_is_stamped(kubectl: Kubectl) -> None:
    versions = (Path(ROOT) / "hack" / "versions.env").read_text()
    pinned = next(line.split("=", 1)[1] for line in versions.splitlines()
                  if line.startswith("KUBERNETES_VERSION="))
    reported = json.loads(kubectl("version", "-o", "json").stdout)
    assert reported["serverVersion"]["gitVersion"] == pinned
    assert reported["clientVersion"]["gitVersion"] == pinned


@pytest.mark.exclusive  # stops the Prometheus every other test queries
def test_up_is_idempotent_and_repairs_a_stopped_component(sandbox: Sandbox) -> None:
    subprocess.run([str(SANDBOX_CLI), "stop", "prometheus"], check=True)
    assert subprocess.run([str(SANDBOX_CLI), "status"], capture_output=True).returncode == 1
    up = subprocess.run([str(SANDBOX_CLI), "up"], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert "prometheus" in up.stderr and "started" in up.stderr
    assert "kube-apiserver           reused" in up.stderr
    status = subprocess.run([str(SANDBOX_CLI), "status"], capture_output=True, text=True)
    assert status.returncode == 0, status.stdout
    env = subprocess.run([str(SANDBOX_CLI), "env"], capture_output=True, text=True, check=True)
    assert f"export PROMETHEUS_URL={sandbox.prometheus_url}" in env.stdout
