"""Istio's own tools on what Rewind writes (issue 12): `istioctl validate` and `istioctl analyze`.

istioctl is built by hack/build-tools.sh from the istio.io/istio module at the pseudo-version
in hack/istioctl.env (`make tools`, or `hack/build-tools.sh --istioctl`), cached under its own
key; a missing binary fails the test, naming how to build it. `validate` is the check Istio's
validating webhook runs on every write. `analyze` runs live against the sandbox
(`--use-kube`): in file mode it skips the analyzers that need the cluster's Services, pods and
Gateways (destination hosts, gateway references, conflicting mesh hosts, subsets).

For each strategy (canary, blue-green, shadow, header routes) the real adapters write the
routes and workloads of a release into a namespace of the sandbox, beside the example Gateway
(examples/istio/public-gateway.yaml, in that namespace) and stand-in pods for its ingress
gateway; analyze must report no error and no warning for them. For each input of issue 12
that admission now refuses, the routes Rewind would have written from it are given to istioctl
(bypassing the API's validation) to show that Istio itself refuses them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client

from rewind.adapters.base import OwnerRef
from rewind.adapters.router import IstioRouter, build_virtual_service
from rewind.adapters.workloads import KubeWorkloads
from rewind.api import ModelReleaseSpec, TrafficSpec
from tests.conftest import ROOT, Kubectl, Sandbox, wait_for

pytestmark = pytest.mark.sandbox

T = TypeVar("T")
RELEASE = "fraud"
IMAGE = "registry.example.com/fraud-server@sha256:" + "c" * 64
GATEWAY_FILE = ROOT / "examples" / "istio" / "public-gateway.yaml"
#: The analyzers that need istiod or a data plane, or report on the sandbox rather than on
#: Rewind's objects, are listed in the report (see test_which_analyzers_run).
SEVERE = ("Error", "Warning")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def build(*args: str) -> str:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), *args], capture_output=True, text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="session")
def istioctl() -> Path:
    path = Path(os.environ.get("REWIND_ISTIOCTL") or Path(build("--istioctl-dir")) / "istioctl")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"istioctl is not built ({path} is missing): run `make tools` "
            "(or hack/build-tools.sh --istioctl)",
            pytrace=False,
        )
    return path


def istioctl_run(istioctl: Path, sandbox: Sandbox, *args: str, input: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(istioctl), f"--kubeconfig={sandbox.kubeconfig}", *args], input=input,
        capture_output=True, text=True, timeout=300, check=False,
    )


def validate(istioctl: Path, sandbox: Sandbox, tmp_path: Path, *objs: dict[str, Any]
             ) -> subprocess.CompletedProcess[str]:
    """`istioctl validate -f` over the objects (what Istio's webhook would say)."""
    path = tmp_path / f"objects-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump_all(list(objs)))
    return istioctl_run(istioctl, sandbox, "validate", "-f", str(path))


def analyze(istioctl: Path, sandbox: Sandbox, namespace: str) -> list[dict[str, Any]]:
    """`istioctl analyze` live against the sandbox, in ``namespace``: its messages."""
    result = istioctl_run(istioctl, sandbox, "analyze", "--use-kube=true", "-n", namespace,
                          "-o", "json", "--timeout=120s")
    assert result.returncode == 0, f"istioctl analyze failed:\n{result.stderr}"
    messages: list[dict[str, Any]] = json.loads(result.stdout or "[]") or []
    return messages


def severe(messages: list[dict[str, Any]]) -> list[str]:
    return [f"{m['code']} {m['level']}: {m['message']} ({m.get('origin')})"
            for m in messages if m.get("level") in SEVERE]


def make_spec(traffic: TrafficSpec) -> ModelReleaseSpec:
    return ModelReleaseSpec.model_validate({
        "policyRef": {"name": "fraud-canary"},
        "model": {"name": "fraud-detector", "version": "2.1.0",
                  "artifactURI": "s3://models/fraud/2.1.0/model.onnx",
                  "artifactDigest": "sha256:" + "a" * 64},
        "code": {"image": IMAGE},
        "serving": {"replicas": 1, "port": 8080},
        "traffic": traffic.model_dump(by_alias=True),
    })


@pytest.fixture()
def owner(kubectl: Kubectl, namespace: str) -> OwnerRef:
    kubectl("create", "configmap", RELEASE, "-n", namespace)
    uid = json.loads(kubectl("get", "configmap", RELEASE, "-n", namespace, "-o", "json").stdout)
    return OwnerRef(name=RELEASE, uid=uid["metadata"]["uid"], api_version="v1",
                    kind="ConfigMap")


def host_of(namespace: str) -> str:
    """The test's public host: analyze compares hosts and Gateways across namespaces (as
    istiod does), so each test has its own, never a conflict with another test's."""
    return f"{namespace}.example.com"


def gateway_in(namespace: str) -> dict[str, Any]:
    """The examples' Gateway, in ``namespace`` (the sandbox's tests never touch
    istio-system), for the test's host."""
    [gateway] = [d for d in yaml.safe_load_all(GATEWAY_FILE.read_text()) if d]
    gateway["metadata"]["namespace"] = namespace
    gateway["spec"]["servers"][0]["hosts"] = [host_of(namespace)]
    return dict(gateway)


def install_gateway(kubectl: Kubectl, namespace: str) -> None:
    """The Gateway and stand-in pods (kwok) of its ingress gateway, with their Service."""
    labels = {"istio": "ingressgateway", "rewind-test": namespace}
    objs: list[dict[str, Any]] = [
        {**gateway_in(namespace), "spec": {**gateway_in(namespace)["spec"], "selector": labels}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "ingressgateway", "namespace": namespace},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [{
                                   "name": "istio-proxy", "image": "istio/proxyv2",
                                   "ports": [{"containerPort": 8080, "name": "http2"}]}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "ingressgateway", "namespace": namespace},
         "spec": {"selector": labels,
                  "ports": [{"name": "http2", "port": 80, "targetPort": 8080}]}},
    ]
    kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))


TRAFFIC = {"hosts": ["fraud.example.com"], "gateways": ["public"]}
HEADERS = [{"name": "beta", "headers": [{"name": "x-group", "exact": "beta"}]}]

#: (id, traffic, weights, mirror revision, mirror percent, header revision, primary)
SCENARIOS = [
    ("canary", TRAFFIC, {1: 90, 2: 10}, None, 0, None, 1),
    ("blue-green-preview", TRAFFIC, {1: 100}, None, 0, None, 1),
    ("blue-green-switched", TRAFFIC, {2: 100}, None, 0, None, 1),
    ("shadow", TRAFFIC, {1: 100}, 2, 50, None, 1),
    ("header-routes", {**TRAFFIC, "headerRoutes": HEADERS}, {1: 80, 2: 20}, None, 0, 2, 1),
    ("promoted", TRAFFIC, {2: 100}, None, 0, None, 2),
    ("gateway-only", {**TRAFFIC, "meshRouting": False}, {1: 90, 2: 10}, None, 0, None, 1),
    ("mesh-only", {"hosts": ["fraud.example.com"]}, {1: 90, 2: 10}, None, 0, None, 1),
]


@pytest.mark.parametrize(
    ("traffic_doc", "weights", "mirror", "percent", "header", "primary"),
    [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS],
)
def test_what_rewind_writes_passes_istioctl_validate_and_analyze(
    istioctl: Path, sandbox: Sandbox, kubectl: Kubectl, api_client: client.ApiClient,
    namespace: str, owner: OwnerRef, tmp_path: Path, istio_crds: None,
    traffic_doc: dict[str, Any], weights: dict[int, int], mirror: int | None, percent: int,
    header: int | None, primary: int,
) -> None:
    traffic = TrafficSpec.model_validate({**traffic_doc, "hosts": [host_of(namespace)]})
    workloads, router = KubeWorkloads(api_client), IstioRouter(api_client)
    install_gateway(kubectl, namespace)
    for revision in (1, 2):
        run(workloads.save_snapshot(RELEASE, namespace, owner, revision, make_spec(traffic)))
        run(workloads.ensure_revision(RELEASE, namespace, owner, revision, 1))
    run(router.set_routes(RELEASE, namespace, owner, traffic, weights, mirror, percent, header,
                          primary))
    wait_for("the pods of both revisions and the gateway", lambda: len(json.loads(kubectl(
        "get", "pods", "-n", namespace, "--field-selector=status.phase=Running", "-o", "json"
    ).stdout)["items"]) == 3, timeout=60)

    written = json.loads(kubectl("get", "virtualservice,service", "-n", namespace,
                                 "-l", "rewind.dev/release=fraud", "-o", "json").stdout)["items"]
    checked = validate(istioctl, sandbox, tmp_path, *written)
    assert checked.returncode == 0, checked.stderr
    assert "has warnings" not in checked.stdout + checked.stderr

    messages = analyze(istioctl, sandbox, namespace)
    assert severe(messages) == [], json.dumps(messages, indent=1)


# -- what Istio refuses: the inputs admission now stops (tests/api_cases.py) -------------------


def would_write(traffic: dict[str, Any], namespace: str, release: str = RELEASE) -> dict[str, Any]:
    """The VirtualService Rewind would write from ``traffic``, the API's checks bypassed (as
    before issue 12, when admission accepted these inputs)."""
    spec = TrafficSpec.model_construct(
        hosts=traffic["hosts"], gateways=traffic.get("gateways", []), port=80, timeout=None,
        retries=None, header_routes=[], mesh_routing=True,
    )
    owner = OwnerRef(name=release, uid="0b7c6a2e-1111-2222-3333-444455556666")
    return build_virtual_service(release, namespace, owner, spec, {1: 100})


REFUSED = [
    ("host-label-over-63", {"hosts": ["x" * 64 + ".example.com"]}, "invalid"),
    ("host-empty-label", {"hosts": ["fraud..example.com"]}, "invalid"),
    ("host-label-ending-in-a-dash", {"hosts": ["fraud-.example.com"]}, "invalid"),
    ("host-numeric-last-label", {"hosts": ["fraud.example.123"]}, "all-numeric"),
    ("hosts-wildcard-overlap", {"hosts": ["*.example.com", "fraud.example.com"]},
     "duplicate hosts"),
    ("host-wildcard-over-the-in-cluster-name", {"hosts": ["*.svc.cluster.local"]},
     "duplicate hosts"),
    ("gateway-name-with-dots", {"hosts": ["fraud.example.com"],
                                "gateways": ["istio-system/public.gateway"]},
     "invalid value for gateway name"),
    ("gateway-name-over-63", {"hosts": ["fraud.example.com"],
                              "gateways": ["istio-system/" + "g" * 64]},
     "invalid value for gateway name"),
]


@pytest.mark.parametrize(("traffic", "refusal"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_istioctl_validate_refuses_what_admission_now_stops(
    istioctl: Path, sandbox: Sandbox, tmp_path: Path, traffic: dict[str, Any], refusal: str
) -> None:
    checked = validate(istioctl, sandbox, tmp_path, would_write(traffic, "shop"))
    assert checked.returncode != 0, checked.stdout + checked.stderr
    assert refusal in checked.stderr, checked.stderr


def test_a_gateway_written_name_dot_namespace_is_read_as_another_gateway(
    istioctl: Path, sandbox: Sandbox, tmp_path: Path
) -> None:
    """`public.istio-system` is valid to Istio, as its legacy form `istio-system/public`: a
    gateway named `public.istio-system` in the release's namespace is never the one used."""
    traffic = {"hosts": ["fraud.example.com"], "gateways": ["public.istio-system"]}
    checked = validate(istioctl, sandbox, tmp_path, would_write(traffic, "shop"))
    assert "legacy gatewayName format" in checked.stdout + checked.stderr
    assert '"istio-system/public"' in checked.stdout + checked.stderr


def test_a_short_host_equal_to_the_release_name_is_ist0109(
    istioctl: Path, sandbox: Sandbox, kubectl: Kubectl, namespace: str, istio_crds: None
) -> None:
    """The short host `fraud` and the in-cluster name Rewind adds are one host to Istio:
    analyze reports the VirtualService's hosts as conflicting (IST0109)."""
    vs = would_write({"hosts": ["fraud"]}, namespace)
    vs["metadata"].pop("ownerReferences")
    kubectl("apply", "-f", "-", input=json.dumps(vs))
    kubectl("create", "service", "clusterip", RELEASE, "--tcp=80:8080", "-n", namespace)
    codes = {m["code"] for m in analyze(istioctl, sandbox, namespace)}
    assert "IST0109" in codes, codes


def test_the_istio_crds_of_istioctl_are_the_sandboxs(sandbox: Sandbox) -> None:
    """hack/istioctl.env pins an istio.io/istio whose CRDs are those of istio.io/api at
    ISTIO_API_VERSION (hack/versions.env), which the sandbox installs: istioctl judges
    objects by the schema the API server stores them with."""
    mine = Path(build("--istioctl-dir")).parent / "istio-crds.yaml"
    assert mine.is_file(), f"{mine} is missing: run hack/build-tools.sh --istioctl"
    assert mine.read_bytes() == (sandbox.bin_dir.parent / "istio-crds.yaml").read_bytes()


def test_which_analyzers_run(istioctl: Path, sandbox: Sandbox, namespace: str) -> None:
    """`istioctl analyze` needs only the kubeconfig and Istio's CRDs (no istiod, no
    istio-system namespace or mesh ConfigMap: it uses the default mesh config) and runs
    every analyzer, none skipped; those that check Rewind's objects are among them."""
    result = istioctl_run(istioctl, sandbox, "analyze", "--use-kube=true", "-n", namespace,
                          "-v", "-o", "json")
    assert result.returncode == 0, result.stderr
    assert "Skipped analyzers" not in result.stderr, result.stderr
    executed = result.stderr.split("Executed analyzers:", 1)[-1]
    for name in ("virtualservice.DestinationHostAnalyzer", "virtualservice.GatewayAnalyzer",
                 "virtualservice.ConflictingMeshGatewayHostsAnalyzer",
                 "virtualservice.DestinationRuleAnalyzer", "schema.ValidationAnalyzer"):
        assert name in executed, result.stderr
