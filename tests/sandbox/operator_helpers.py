"""Shared helpers for the end-to-end operator tests (tests/sandbox/test_operator_*.py).

Everything here reads the API server (kubectl json, or a watch for "never" assertions)
and Prometheus as they are; nothing is mocked. Durations are short (1 s analysis interval,
2 s pauses) so each test finishes in well under a minute.

Analysis queries read a gauge the test sets on its ``metrics_endpoint``::

    max(rewind_test_error_rate{namespace="{{namespace}}", workload="{{candidateWorkload}}"})

The namespace label keeps concurrent runs (same release names, other namespaces) apart in
the shared Prometheus.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pytest
from kubernetes import client, config, watch
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    Kubectl,
    MetricsEndpoint,
    OperatorProcess,
    Sandbox,
    prometheus_query,
    wait_for,
)

GROUP = "rewind.dev"
VERSION = "v1alpha1"
METRIC = "rewind_test_error_rate"
HEALTHY = 0.0
BROKEN = 0.5
THRESHOLD = 0.05
IMAGE = "registry.example.com/model-server@sha256:" + "c" * 64

ANNOTATION_APPROVE = f"{GROUP}/approve-rollback"
ANNOTATION_REJECT = f"{GROUP}/reject-rollback"
ANNOTATION_ROLLBACK = f"{GROUP}/rollback"

ERROR_RATE_QUERY = (
    f'max({METRIC}{{namespace="{{{{namespace}}}}", workload="{{{{candidateWorkload}}}}"}})'
)


def digest(n: int) -> str:
    """A distinct, valid sha256 digest per model version number."""
    return f"sha256:{n:064x}"


def workload(release: str, revision: int) -> str:
    return f"{release}-r{revision}"


# -- manifests ----------------------------------------------------------------------------


def canary(*steps: tuple[int, str | None]) -> dict[str, Any]:
    """``canary((20, "2s"), (50, "2s"))``; a None pause is a manual gate."""
    return {
        "canary": {
            "steps": [
                {"weight": w, "pause": {"duration": p} if p else {"manual": True}}
                for w, p in steps
            ]
        }
    }


def blue_green(
    preview: str = "2s", post_switch: str = "30s", keep_old_colour: str = "30s"
) -> dict[str, Any]:
    return {
        "blueGreen": {
            "previewDuration": preview,
            "autoSwitch": True,
            "postSwitchDuration": post_switch,
            "keepOldColour": keep_old_colour,
        }
    }


def shadow(mirror_percent: int = 30, duration: str = "3s") -> dict[str, Any]:
    return {
        "shadow": {
            "mirrorPercent": mirror_percent,
            "duration": duration,
            "onSuccess": {"action": "Stop"},
        }
    }


def policy_manifest(
    name: str,
    strategy: Mapping[str, Any] | None = None,
    *,
    query: str = ERROR_RATE_QUERY,
    interval: str = "1s",
    failure_limit: int = 1,
    mode: str = "automatic",
    approval_timeout: str = "10m",
    scale_down_delay: str = "3s",
    keep_previous_warm: str = "30s",
    progress_deadline: str = "60s",
    query_error: str = "Inconclusive",
    required_approvers: int = 1,
    first_release: str | None = "Promote",
    rollback_window: int | None = None,
) -> dict[str, Any]:
    """A RolloutPolicy with short durations, analysing the test's error-rate gauge. The
    first revision is promoted once Available (most tests are about what comes after it);
    ``first_release=None`` leaves the API's default (Gates)."""
    rollback: dict[str, Any] = {"mode": mode, "scaleDownDelay": scale_down_delay}
    if mode == "approval":
        rollback["approval"] = {
            "requiredApprovers": required_approvers,
            "timeout": approval_timeout,
            "onTimeout": "Rollback",
        }
    extra: dict[str, Any] = {}
    if first_release is not None:
        extra["firstRelease"] = first_release
    if rollback_window is not None:
        extra["rollbackWindow"] = {"revisions": rollback_window}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RolloutPolicy",
        "metadata": {"name": name},
        "spec": {
            **extra,
            "strategy": dict(strategy or canary((20, "2s"), (50, "2s"))),
            "analysis": {
                "interval": interval,
                "failureLimit": failure_limit,
                "noData": "Inconclusive",
                "queryError": query_error,
                "metrics": [
                    {"name": "error-rate", "query": query, "thresholds": {"max": THRESHOLD}}
                ],
            },
            "rollback": rollback,
            "progressDeadline": progress_deadline,
            "keepPreviousWarm": keep_previous_warm,
        },
    }


def release_manifest(name: str, policy: str, *, version: int = 1) -> dict[str, Any]:
    """A ModelRelease; each ``version`` has its own model version and digest (a new revision)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelRelease",
        "metadata": {"name": name},
        "spec": {
            "policyRef": {"name": policy},
            "model": {
                "name": name,
                "version": f"{version}.0.0",
                "artifactURI": f"s3://models/{name}/{version}.0.0/model.onnx",
                "artifactDigest": digest(version),
                "format": "onnx",
            },
            "code": {"image": IMAGE},
            "data": {"datasetRef": f"s3://datasets/{name}", "version": f"d{version}"},
            "serving": {"replicas": 1},
            "traffic": {"hosts": [f"{name}.example.com"]},
        },
    }


# -- reading what the API server says -----------------------------------------------------


@dataclass(frozen=True)
class Routes:
    """What the VirtualService routes: weights per revision (>0 only) and the mirror."""

    weights: dict[int, int]
    mirror: int | None = None
    mirror_percent: float = 0.0


#: A revision's own Service, where Rewind routes: ``<release>-r<N>.<namespace>.svc.<domain>``.
_REVISION_HOST = re.compile(r"^[a-z0-9-]+-r([0-9]+)\.[a-z0-9-]+\.svc\.cluster\.local$")


def revision_of(destination: Mapping[str, Any]) -> int:
    """The revision a route destination reaches: its host is the revision's own Service
    (never a subset of the umbrella Service, which selects the stable revision only)."""
    assert "subset" not in destination, f"a route to a subset: {destination!r}"
    found = _REVISION_HOST.match(str(destination.get("host", "")))
    assert found, f"not a revision's Service: {destination!r}"
    return int(found.group(1))



def parse_virtual_service(vs: Mapping[str, Any]) -> Routes:
    """Independent of the operator's own parser: read the catch-all route (the last one,
    without a match) as Istio would. Routes before it must match something (the header
    routes of A/B testing); they take only the requests they match."""
    http = vs["spec"]["http"]
    assert http and "match" not in http[-1], http
    assert all(r.get("match") for r in http[:-1]), http
    route = http[-1]
    weights: dict[int, int] = {}
    for entry in route.get("route") or []:
        weight = int(entry.get("weight", 100 if len(route["route"]) == 1 else 0))
        if weight > 0:
            weights[revision_of(entry["destination"])] = weight
    mirror = route.get("mirror")
    if mirror:
        percent = float((route.get("mirrorPercentage") or {}).get("value", 100.0))
        return Routes(weights, revision_of(mirror), percent)
    return Routes(weights)


class Rewind:
    """kubectl-level access to one test namespace's ModelReleases and what they own."""

    def __init__(
        self,
        kubectl: Kubectl,
        namespace: str,
        operator: OperatorProcess,
        endpoint: MetricsEndpoint,
        sandbox: Sandbox,
    ) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.operator = operator
        self.endpoint = endpoint  # the gauges analysis queries read
        self.sandbox = sandbox

    # -- writes --------------------------------------------------------------------------

    def apply(self, *manifests: Mapping[str, Any]) -> None:
        doc = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
        self.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(doc))

    def annotate(self, release: str, key: str, value: str) -> None:
        self.kubectl(
            "annotate", "-n", self.namespace, f"modelrelease/{release}", f"{key}={value}",
            "--overwrite",
        )

    def set_error_rate(self, release: str, revision: int, value: float) -> None:
        """Set the candidate's gauge and wait until Prometheus answers with it."""
        labels = {"namespace": self.namespace, "workload": workload(release, revision)}
        self.endpoint.set(METRIC, value, **labels)
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        promql = f"max({METRIC}{{{selector}}})"
        wait_for(
            f"Prometheus to scrape {promql} == {value}",
            lambda: self.prometheus_value(promql) == value,
            timeout=20,
        )

    def prometheus_value(self, promql: str) -> float | None:
        result = prometheus_query(self.sandbox.prometheus_url, promql)
        return float(result[0]["value"][1]) if result else None

    # -- reads ---------------------------------------------------------------------------

    def get(self, *what: str) -> dict[str, Any]:
        out = self.kubectl("get", *what, "-n", self.namespace, "-o", "json").stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def release(self, name: str) -> dict[str, Any]:
        return self.get("modelrelease", name)

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.release(name).get("status") or {}
        return status

    def routes(self, name: str) -> Routes | None:
        result = self.kubectl(
            "get", "virtualservice", name, "-n", self.namespace, "-o", "json", check=False
        )
        if result.returncode != 0:
            assert "NotFound" in result.stderr, result.stderr
            return None
        return parse_virtual_service(json.loads(result.stdout))

    def in_cluster_revision(self, name: str) -> int | None:
        """The revision the umbrella Service ``<name>`` (the in-cluster name, where callers
        that bypass the routes go) selects; None: no such Service, or it selects none."""
        result = self.kubectl(
            "get", "service", name, "-n", self.namespace, "-o", "json", check=False
        )
        if result.returncode != 0:
            return None
        selector = json.loads(result.stdout)["spec"].get("selector") or {}
        assert selector.get("rewind.dev/release") == name, selector
        value = selector.get("rewind.dev/revision", "")
        return int(value) if value.isdigit() else None

    def behind(self, name: str, service: str | None = None) -> set[int]:
        """The revisions of release ``name``'s pods that the EndpointSlices of ``service``
        list (default: the umbrella Service ``<name>``, what a caller that bypasses the
        routes reaches), read from the pods' own labels."""
        slices = json.loads(self.kubectl(
            "get", "endpointslices", "-n", self.namespace, "-o", "json",
            "-l", f"kubernetes.io/service-name={service or name}",
        ).stdout)["items"]
        pods = {
            e["targetRef"]["name"]
            for s in slices for e in s.get("endpoints") or [] if e.get("targetRef")
        }
        listed = self.get("pods", "-l", f"rewind.dev/release={name}")["items"]
        return {
            int(p["metadata"]["labels"]["rewind.dev/revision"])
            for p in listed if p["metadata"]["name"] in pods
        }

    def destination_rules(self) -> list[str]:
        """Names of the DestinationRules in the namespace (Rewind writes none)."""
        out = self.kubectl("get", "destinationrules", "-n", self.namespace, "-o", "name")
        return out.stdout.split()

    def replicas(self, release: str, revision: int) -> int | None:
        """spec.replicas of the revision's Deployment (None: no Deployment)."""
        result = self.kubectl(
            "get", "deployment", workload(release, revision), "-n", self.namespace, "-o",
            "json", check=False,
        )
        if result.returncode != 0:
            return None
        return int(json.loads(result.stdout)["spec"].get("replicas", 1))

    def restart_operator_with_metrics(self) -> int:
        """Restart the operator with its own /metrics on a free port; returns the port."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        self.operator.stop()
        self.operator.start("--metrics-port", str(port))
        wait_for(f"operator /metrics on :{port}", lambda: self.operator_metrics(port), 20)
        return port

    def operator_metrics(self, port: int) -> dict[str, float]:
        """The operator's samples for this namespace, keyed ``name{label="v",...}`` with the
        namespace label left out (an empty dict until it answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        samples: dict[str, float] = {"up": 1.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = dict(sample.labels)
                if labels.pop("namespace", None) != self.namespace:
                    continue
                rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                samples[f"{sample.name}{{{rendered}}}"] = sample.value
        return samples

    def kill_operator_when(
        self,
        name: str,
        what: str,
        check: Callable[[dict[str, Any]], bool],
        *,
        after: Callable[[], object] = lambda: None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Run ``after``, then SIGKILL the operator the moment ``name`` is stored with a
        status for which ``check`` holds; returns that status. The watch starts from a
        resourceVersion taken before ``after``, so no version in between is missed, and
        reacts within milliseconds (polling could leave the operator up half a second more).
        """
        api = config.new_client_from_config(config_file=self.sandbox.kubeconfig)
        custom = client.CustomObjectsApi(api)
        selector = f"metadata.name={name}"
        listing = cast(dict[str, Any], custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "modelreleases", field_selector=selector
        ))
        version = str(listing["metadata"]["resourceVersion"])
        after()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                w = watch.Watch()
                try:
                    for event in w.stream(
                        custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                        "modelreleases", field_selector=selector, resource_version=version,
                        timeout_seconds=max(1, int(deadline - time.monotonic())),
                    ):
                        obj = event["object"]
                        version = obj["metadata"]["resourceVersion"]
                        status = obj.get("status") or {}
                        if check(status):
                            self.operator.kill()
                            return dict(status)
                finally:
                    w.stop()
        finally:
            api.close()
        pytest.fail(f"timed out after {timeout:g}s waiting for {name}: {what}")

    def current_rv(self) -> int:
        """The API server's current resourceVersion (a list's), to order a test's own moments
        against the writes a Recorder saw."""
        raw = self.kubectl("get", "--raw", f"/api/v1/namespaces/{self.namespace}/configmaps")
        return int(json.loads(raw.stdout)["metadata"]["resourceVersion"])

    def scaled_to_zero_at(self, release: str, revision: int) -> datetime:
        """When the Deployment controller scaled the revision to zero (its Event's time,
        second precision): a server-side clock, unlike when a test happened to look."""
        name = workload(release, revision)

        def find() -> datetime | None:
            for e in self.events(name):
                if e["reason"] == "ScalingReplicaSet" and e["message"].endswith(" to 0"):
                    return parse_time(e["lastTimestamp"])
            return None

        found: datetime = wait_for(f"{name}'s scale-down Event", find, timeout=20)
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(
            "events", "--field-selector", f"involvedObject.name={name}"
        )["items"]
        return items

    def event(self, name: str, *, type: str, reason: str, contains: str = "") -> dict[str, Any]:
        """Wait for an Event on the release and return it."""

        def find() -> dict[str, Any] | None:
            for e in self.events(name):
                if e["type"] == type and e["reason"] == reason and contains in e["message"]:
                    return e
            return None

        found: dict[str, Any] = wait_for(
            f"a {type} Event {reason} containing {contains!r} on {name}", find, timeout=20
        )
        return found

    def wait_status(
        self,
        name: str,
        what: str,
        check: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait until ``check(status)`` holds; returns that status."""

        def probe() -> dict[str, Any] | None:
            status = self.status(name)
            return status if check(status) else None

        found: dict[str, Any] = wait_for(f"{name}: {what}", probe, timeout=timeout)
        return found

    def wait_phase(
        self,
        name: str,
        phase: str,
        *,
        stable: int | None = None,
        candidate: int | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait for ``status.phase`` (and, if given, the stable / candidate revision)."""

        def ok(s: dict[str, Any]) -> bool:
            return (
                s.get("phase") == phase
                and (stable is None or s.get("stableRevision") == stable)
                and (candidate is None or s.get("candidateRevision") == candidate)
            )

        detail = f" stable={stable}" if stable is not None else ""
        detail += f" candidate={candidate}" if candidate is not None else ""
        return self.wait_status(name, f"phase {phase}{detail}", ok, timeout)

    def wait_routes(
        self, name: str, weights: Mapping[int, int], timeout: float = 30.0
    ) -> Routes:
        def probe() -> Routes | None:
            routes = self.routes(name)
            return routes if routes is not None and routes.weights == dict(weights) else None

        found: Routes = wait_for(f"VirtualService {name} to route {dict(weights)}", probe,
                                 timeout=timeout)
        return found

    def wait_replicas(
        self, release: str, revision: int, replicas: int, timeout: float = 30.0
    ) -> None:
        wait_for(
            f"Deployment {workload(release, revision)} at {replicas} replicas",
            lambda: self.replicas(release, revision) == replicas,
            timeout=timeout,
        )

    def promote_first_revision(self, name: str, policy: str) -> dict[str, Any]:
        """Create the release at version 1: with no stable yet it is promoted once up."""
        self.apply(release_manifest(name, policy, version=1))
        status = self.wait_phase(name, "Promoted", stable=1, timeout=40)
        self.wait_routes(name, {1: 100})
        return status


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def history(status: Mapping[str, Any], revision: int) -> dict[str, Any]:
    entry: dict[str, Any] = next(h for h in status.get("history", []) if h["revision"] == revision)
    return entry


def outcomes(status: Mapping[str, Any]) -> dict[int, str]:
    return {h["revision"]: h["outcome"] for h in status.get("history", [])}


def timeline(status: Mapping[str, Any], type: str | None = None) -> list[dict[str, Any]]:
    return [e for e in status.get("timeline", []) if type is None or e["type"] == type]


def condition(status: Mapping[str, Any], type: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        (c for c in status.get("conditions", []) if c["type"] == type), {}
    )
    return found


def has_annotation(release: Mapping[str, Any], key: str) -> bool:
    return key in (release["metadata"].get("annotations") or {})


# -- watching: every version the API server stored, for "never" assertions ----------------


@dataclass
class Seen:
    """One stored version of an object. ``rv`` is its resourceVersion: the etcd revision of
    the write, so it orders writes across kinds too (the watches' delivery order does not).
    """

    rv: int
    kind: str
    name: str
    obj: dict[str, Any]


@dataclass
class Recorder:
    """Watches some kinds in one namespace from a background thread and keeps every object
    version delivered, so a test can assert that something never happened in between two
    polls (a live weight on a shadow, a weight increase while Prometheus is down)."""

    sandbox: Sandbox
    namespace: str
    kinds: Sequence[str] = ("virtualservices", "deployments", "modelreleases", "services")
    seen: list[Seen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ready: dict[str, threading.Event] = field(default_factory=dict)

    def _lister(self, api: client.ApiClient, kind: str) -> Callable[..., Any]:
        if kind == "deployments":
            apps = client.AppsV1Api(api)
            return lambda **kw: apps.list_namespaced_deployment(self.namespace, **kw)
        if kind == "services":
            core = client.CoreV1Api(api)
            return lambda **kw: core.list_namespaced_service(self.namespace, **kw)
        custom = client.CustomObjectsApi(api)
        group, version = (
            ("networking.istio.io", "v1") if kind == "virtualservices" else (GROUP, VERSION)
        )
        return lambda **kw: custom.list_namespaced_custom_object(
            group, version, self.namespace, kind, **kw
        )

    def _run(self, kind: str) -> None:
        api = config.new_client_from_config(config_file=self.sandbox.kubeconfig)
        lister = self._lister(api, kind)
        version = ""
        try:
            while not self._stop.is_set():
                if not version:
                    listing = lister()
                    if not isinstance(listing, dict):
                        listing = api.sanitize_for_serialization(listing)
                    for item in listing.get("items", []):
                        self._keep(kind, item)
                    version = listing["metadata"]["resourceVersion"]
                    self._ready[kind].set()
                w = watch.Watch()
                try:
                    # Bookmarks keep a quiet kind's version recent (a Service may not change
                    # for minutes while other namespaces' changes age its version out).
                    for event in w.stream(lister, resource_version=version, timeout_seconds=1,
                                          allow_watch_bookmarks=True):
                        obj = event["object"]
                        if not isinstance(obj, dict):
                            obj = api.sanitize_for_serialization(obj)
                        if event["type"] == "ERROR":
                            version = ""  # 410 Gone: list again
                            break
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] not in ("DELETED", "BOOKMARK"):
                            self._keep(kind, obj)
                        if self._stop.is_set():
                            break
                except client.ApiException as err:
                    if err.status != 410:
                        raise
                    version = ""  # the client raises 410 Gone itself: list again
                finally:
                    w.stop()
        finally:
            api.close()

    def _keep(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        with self._lock:
            self.seen.append(Seen(int(meta["resourceVersion"]), kind, meta["name"], obj))

    def __enter__(self) -> Recorder:
        for kind in self.kinds:
            self._ready[kind] = threading.Event()
            thread = threading.Thread(target=self._run, args=(kind,), daemon=True)
            thread.start()
            self._threads.append(thread)
        for kind in self.kinds:
            assert self._ready[kind].wait(30), f"watch of {kind} did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def versions(self, kind: str, name: str) -> list[Seen]:
        with self._lock:
            found = {s.rv: s for s in self.seen if s.kind == kind and s.name == name}
        return [found[rv] for rv in sorted(found)]

    def in_cluster_revisions(self, name: str) -> list[int | None]:
        """Each revision the umbrella Service ``<name>`` selected, in order, repeats
        collapsed (None: a selector naming no single revision, e.g. every revision's pods)."""
        seen: list[int | None] = []
        for version in self.versions("services", name):
            selector = version.obj["spec"].get("selector") or {}
            value = str(selector.get("rewind.dev/revision", ""))
            revision = int(value) if value.isdigit() else None
            if not seen or seen[-1] != revision:
                seen.append(revision)
        return seen

    def routes(self, name: str) -> list[tuple[int, Routes]]:
        """Every distinct routing the VirtualService had, in order, with the write's rv."""
        out: list[tuple[int, Routes]] = []
        for s in self.versions("virtualservices", name):
            routes = parse_virtual_service(s.obj)
            if not out or out[-1][1] != routes:
                out.append((s.rv, routes))
        return out

    def statuses(self, name: str) -> list[tuple[int, dict[str, Any]]]:
        return [(s.rv, s.obj.get("status") or {}) for s in self.versions("modelreleases", name)]

    def phases(self, name: str) -> list[str]:
        """Distinct consecutive phases the release went through."""
        out: list[str] = []
        for _, status in self.statuses(name):
            phase = status.get("phase")
            if phase and (not out or out[-1] != phase):
                out.append(phase)
        return out

    def first_available(self, release: str, revision: int) -> int | None:
        """The rv of the first version of the revision's Deployment with a ready replica."""
        for s in self.versions("deployments", workload(release, revision)):
            status = s.obj.get("status") or {}
            if (s.obj["spec"].get("replicas") or 0) > 0 and (status.get("readyReplicas") or 0) > 0:
                return s.rv
        return None


def assert_holds(what: str, check: Callable[[], bool], seconds: float) -> None:
    """The opposite of wait_for: ``check`` must stay true for the whole window (polled)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            pytest.fail(f"expected {what} to hold for {seconds:g}s, but it stopped holding")
        time.sleep(0.2)


class Replica:
    """One operator process of a Kopf peering, with its own /metrics port."""

    def __init__(self, process: OperatorProcess, peering: str, *, priority: int,
                 lifetime: int = 10) -> None:
        self.process = process
        self.peering = peering
        self.priority = priority
        self.lifetime = lifetime
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])

    def start(self) -> None:
        self.process.start("--peering", self.peering, "--priority", str(self.priority),
                           "--peering-lifetime", str(self.lifetime),
                           "--metrics-port", str(self.port))

    def active(self) -> float | None:
        """rewind_operator_active: 1 active, 0 standby (None until /metrics answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "rewind_operator_active":
                    return float(sample.value)
        return None
