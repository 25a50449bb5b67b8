"""`make demo`: the 3 AM incident, played on the local sandbox in one command.

What runs (all on 127.0.0.1, all stopped when the demo ends, also on Ctrl-C or an error):

* the operator (``python -m rewind.main --namespace rewind-demo``), as a child process;
* the revision runner (:mod:`rewind_demo.runner`): kwok pods run no containers, so one local
  model-server process per live revision Deployment, configured from the revision's
  ``SIM_*`` env (``spec.code.env``), scraped by the sandbox Prometheus;
* one traffic generator per release (:mod:`rewind_demo.trafficgen`): it stands in for
  Istio's data plane **in the demo only**, routing a steady request stream by the weights and
  mirror of the live VirtualService and exporting ``istio_requests_total`` and
  ``istio_request_duration_milliseconds_bucket``, so the policies below are the PromQL a
  user runs on a real mesh. The recommender runs on Gateway API instead: its routes are an
  HTTPRoute (the shadow is its ``RequestMirror`` filter), which its generator follows and,
  standing in for the gateway too, accepts in ``status.parents``;

The story (``--quick`` plays only the rollback and the approval):

1. v1 of fraud-detector serves users (so do chatbot and recommender v1);
2. fraud v2 goes out on a canary (20% -> 50%), passes every step, is promoted;
   then "have you ever pushed it?": fraud's scheduled rollback drill re-creates v1 (the
   revision a rollback would go to) from its snapshot, analyses it on mirrored traffic and
   passes; its snapshot is deleted and the next drill fails (``SnapshotMissing``); and the
   feature store behind v2 goes down: the circuit breaker sends users to a rules-based
   fallback Service (:mod:`rewind_demo.modelserver` in this process) and, once the signal is
   healthy again, back to v2 by itself;
3. fraud v3 goes out; its model server is bad from birth (``SIM_ERROR_RATE=0.3``,
   ``SIM_LATENCY_MS=450``), so at 20% error rate and latency jump and Rewind rolls back to
   v2 on its own within seconds;
4. chatbot v2 goes out under an approval policy that needs two approvers; its score
   distribution drifts (a PSI computed in PromQL against the stable revision); Rewind waits
   for humans. The people are real users of the sandbox API server (client certificates,
   :mod:`rewind_demo.people`) under the chart's admission policies, which the demo installs:
   dana, who may edit the release but not approve, is refused; alice and bob approve with
   ``kubectl rewind approve``; rollback, and ``kubectl rewind report`` writes it up at the end;
5. recommender v2 is shadowed on Gateway API (an HTTPRoute mirroring 100%, never answers
   users), compared with stable and rejected.

Every outcome is then checked against the API server; the exit code is 0 only if the story
played as expected. Objects are left in the namespace for ``kubectl get mr -n rewind-demo``;
``python -m rewind_demo.demo --down`` (``make demo-down``) removes them and any leftover process.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from prometheus_client.utils import floatToGoString

from rewind import API_GROUP, API_VERSION
from rewind.adapters.gateway_api import (
    GATEWAY_GROUP,
    GATEWAY_VERSION,
    HTTPROUTES,
    parse_http_route,
)
from rewind.adapters.router import ISTIO_GROUP, ISTIO_VERSION, parse_routes
from rewind.api import (
    MODELRELEASE_KIND,
    MODELRELEASE_PLURAL,
    QUARANTINE_PLURAL,
    ROLLOUTPOLICY_KIND,
    ROLLOUTPOLICY_PLURAL,
    ModelReleaseSpec,
    RolloutPolicySpec,
)
from rewind_demo import people, poison, targets
from rewind_demo._http import request
from rewind_demo.mlflow_server import MLflowServer
from rewind_demo.modelserver import (
    SCORE_BUCKETS,
    ModelServerConfig,
    RunningModelServer,
    start_modelserver,
)
from rewind_demo.runner import RevisionRunner, kube_deployment_lister
from rewind_demo.trafficgen import (
    Backend,
    BackendSource,
    TrafficGenerator,
    backends_file_source,
    kube_route_source,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NAMESPACE = "rewind-demo"
FIELD_MANAGER = "rewind-demo"
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=rewind"
#: Labels on the demo's own objects, so a re-run can find and delete them.
DEMO_LABEL = "rewind.dev/demo"
#: The Gateway the Gateway API act's HTTPRoute attaches to (no Gateway object is needed:
#: the traffic generator stands in for it, and accepts the route).
DEMO_GATEWAY = "demo-gateway"
ROUTE_API = (GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES)
API_TIMEOUT = 10.0
EXIT_OK, EXIT_STORY, EXIT_SETUP, EXIT_INTERRUPTED = 0, 1, 2, 130

# --------------------------------------------------------------------------------------
# PromQL: what users run on a real mesh (reporter="source": the caller's sidecar)
# --------------------------------------------------------------------------------------

#: How prometheus_client writes ``le`` (typed alias: the library has no annotations).
_go_float: Callable[[float], str] = floatToGoString
NS_VAR = "{{namespace}}"
CANDIDATE = "{{candidateWorkload}}"
STABLE = "{{stableWorkload}}"
#: Rate windows: a few 1 s scrapes (the analysis interval, 2 s, is too short a window).
WINDOW = "10s"
PSI_WINDOW = "30s"
#: The circuit breaker's window: short, it must trip within seconds.
BREAKER_WINDOW = "5s"
RELEASE_VAR = "{{release}}"
#: fraud's circuit-breaker fallback: a rules-based model behind its own Service.
FALLBACK_SERVICE = "fraud-rules"
FALLBACK_PORT = 8080
#: How often fraud's policy drills its rollback path (the demo shortens it for one act).
DRILL_EVERY = "24h"


def _istio(metric: str, workload: str, extra: str = "") -> str:
    return (
        f'{metric}{{reporter="source",destination_workload_namespace="{NS_VAR}",'
        f'destination_workload="{workload}"{extra}}}'
    )


#: Judge a revision only on at least this many requests in the window: fewer is no data
#: (Inconclusive). It also hides a PromQL artefact of a revision's very first seconds: the
#: per-response-code series appear one by one, and rate() ignores a series until it has two
#: samples, so an early ratio can be built from the 5xx series alone.
MIN_REQUESTS = 20


def requests_in_window(workload: str = CANDIDATE, window: str = WINDOW) -> str:
    total = _istio("istio_requests_total", workload)
    return f"sum(increase({total}[{window}]))"


def _guarded(expr: str, workloads: Sequence[str], window: str, min_requests: int) -> str:
    guards = "".join(
        f" and on() ({requests_in_window(w, window)} >= {min_requests})" for w in workloads
    )
    return f"({expr}){guards}"


def error_rate_query(
    workload: str = CANDIDATE, window: str = WINDOW, min_requests: int = MIN_REQUESTS
) -> str:
    """5xx share of the workload's requests; ``or vector(0)``: no errors is 0, not no data."""
    errors = _istio("istio_requests_total", workload, ',response_code=~"5.."')
    total = _istio("istio_requests_total", workload)
    ratio = f"(sum(rate({errors}[{window}])) or vector(0)) / sum(rate({total}[{window}]))"
    return _guarded(ratio, [workload], window, min_requests)


def p95_latency_query(
    workload: str = CANDIDATE, window: str = WINDOW, min_requests: int = MIN_REQUESTS
) -> str:
    """95th percentile request duration in milliseconds, as the caller sees it."""
    buckets = _istio("istio_request_duration_milliseconds_bucket", workload)
    quantile = f"histogram_quantile(0.95, sum by (le) (rate({buckets}[{window}])))"
    return _guarded(quantile, [workload], window, min_requests)


def psi_query(
    window: str = PSI_WINDOW,
    *,
    min_samples: int = 100,
    floor: float = 0.005,
    candidate: str = CANDIDATE,
    stable: str = STABLE,
) -> str:
    """Population Stability Index of the prediction scores, candidate vs stable, in PromQL.

    ``PSI = sum over bins of (c - s) * ln(c / s)`` where c and s are the shares of each
    revision's scores per bin over ``window``. The model servers export a classic histogram
    ``model_prediction_score`` with fixed edges 0.1 .. 1.0 (scores are clamped to [0, 1], so
    the ``+Inf`` bucket adds nothing). A bin's count is the difference of two adjacent
    cumulative buckets: PromQL only subtracts series with equal labels, so the cumulative
    counts are relabelled one edge up (``le="0.1"`` becomes ``"0.2"`` ...) with one
    ``label_replace`` per edge, highest first so no two series ever share a label set, and
    subtracted from the unshifted ones; the first bin (``le="0.1"``) has nothing below it and
    is kept as is (``or``). Empty bins are floored at ``floor`` so ``ln`` stays finite, and
    the result is no data (Inconclusive) until each side has ``min_samples`` scores, which
    keeps the small-sample noise of the estimate (about ``(bins-1)*(1/n_c+1/n_s)``) well
    under the usual 0.25 "significant shift" threshold.
    """
    edges = [_go_float(b) for b in SCORE_BUCKETS]

    def sel(metric: str, workload: str, extra: str = "") -> str:
        return f'{metric}{{namespace="{NS_VAR}",revision="{workload}"{extra}}}'

    def cumulative(workload: str, extra: str) -> str:
        bucket = sel("model_prediction_score_bucket", workload, extra)
        return f"sum by (le) (increase({bucket}[{window}]))"

    def bins(workload: str) -> str:
        shifted = cumulative(workload, f',le!~"{edges[-1]}|\\\\+Inf"')
        for lower, upper in reversed(list(itertools.pairwise(edges))):
            shifted = f'label_replace({shifted},"le","{upper}","le","{lower}")'
        full = cumulative(workload, ',le!="+Inf"')
        return f"({full} - {shifted} or {full})"

    def total(workload: str) -> str:
        count = sel("model_prediction_score_count", workload)
        return f"sum(increase({count}[{window}]))"

    def share(workload: str) -> str:
        return f"clamp_min({bins(workload)} / ignoring(le) group_left {total(workload)}, {floor})"

    c, s = share(candidate), share(stable)
    return (
        f"sum(({c} - {s}) * ln({c} / {s}))"
        f" and on() ({total(candidate)} >= {min_samples})"
        f" and on() ({total(stable)} >= {min_samples})"
    )


def breaker_query(window: str = BREAKER_WINDOW) -> str:
    """fraud's circuit-breaker signal: what its users get from the model, the 5xx share of
    the requests to any of its revisions over ``window``. While none of them gets a request
    (the breaker keeps every user on the fallback) that share is no data, which never
    counts as healthy; then the stable revision's feature store speaks instead
    (``1 - model_dependency_up``: 1 while it is down), so an automatic reset means the model
    can answer again, not merely that nobody asked it."""
    model = (f'reporter="source",destination_workload_namespace="{NS_VAR}",'
             f'destination_workload=~"{RELEASE_VAR}-r[0-9]+"')
    errors = f'sum(rate(istio_requests_total{{{model},response_code=~"5.."}}[{window}]))'
    total = f"sum(rate(istio_requests_total{{{model}}}[{window}]))"
    dependency = f'model_dependency_up{{namespace="{NS_VAR}",revision="{STABLE}"}}'
    return f"((({errors}) or vector(0)) / ({total} > 0)) or on() (1 - min({dependency}))"


# --------------------------------------------------------------------------------------
# The demo's objects, built with the API models so they are always valid
# --------------------------------------------------------------------------------------


def fake_digest(*parts: str) -> str:
    """A stable, valid-looking sha256 digest for a demo artifact or image."""
    return "sha256:" + hashlib.sha256("/".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Version:
    """One version of a model: what changes between revisions, incl. the simulator's env."""

    label: str  # "v3" in the story
    version: str  # spec.model.version
    sim: Mapping[str, str]  # SIM_* env: how the local model server behaves
    data_version: str
    note: str  # one line for the narrative


@dataclass(frozen=True)
class Model:
    """One ModelRelease of the demo and its RolloutPolicy."""

    release: str
    model_name: str
    policy_name: str
    host: str
    image_repo: str
    dataset: str
    format: str
    rate: float  # requests per second its traffic generator sends
    versions: Mapping[str, Version]
    #: Routed on Gateway API (an HTTPRoute on DEMO_GATEWAY) instead of Istio.
    gateway_api: bool = False

    @property
    def route_kind(self) -> str:
        return "HTTPRoute" if self.gateway_api else "VirtualService"


def _policy(model: Model, drill_every: str = DRILL_EVERY) -> RolloutPolicySpec:
    common_metrics = [
        {"name": "error-rate", "query": error_rate_query(), "thresholds": {"max": 0.05}},
    ]
    if model.release == "fraud":
        return RolloutPolicySpec.model_validate(
            {
                "strategy": {
                    "canary": {
                        "steps": [
                            {"weight": 20, "pause": {"duration": "8s"}},
                            {"weight": 50, "pause": {"duration": "8s"}},
                        ]
                    }
                },
                "analysis": {
                    "interval": "2s",
                    "failureLimit": 2,
                    "noData": "Inconclusive",
                    "queryError": "Inconclusive",
                    "metrics": [
                        *common_metrics,
                        {
                            "name": "p95-latency",
                            "query": p95_latency_query(),
                            "thresholds": {"max": 300},
                        },
                    ],
                },
                "rollback": {"mode": "automatic", "scaleDownDelay": "10s"},
                "progressDeadline": "2m",
                # The story starts with v1 serving: it takes traffic once Available.
                "firstRelease": "Promote",
                # Short, so the drill re-creates v1 from its snapshot (not a warm v1).
                "keepPreviousWarm": "5s",
                "drill": {"every": drill_every, "timeout": "1m", "mirrorPercent": 50},
                "breaker": {
                    "query": breaker_query(),
                    "thresholds": {"max": 0.2},
                    "interval": "1s",
                    "holdFor": "2s",
                    "fallback": {"service": {"name": FALLBACK_SERVICE, "port": FALLBACK_PORT}},
                    "reset": {"mode": "Automatic", "healthyFor": "5s"},
                },
            }
        )
    if model.release == "chatbot":
        return RolloutPolicySpec.model_validate(
            {
                "strategy": {
                    "canary": {
                        "steps": [
                            {"weight": 40, "pause": {"duration": "30s"}},
                            {"weight": 80, "pause": {"duration": "30s"}},
                        ]
                    }
                },
                "analysis": {
                    "interval": "2s",
                    "failureLimit": 2,
                    "metrics": [
                        *common_metrics,
                        {"name": "score-psi", "query": psi_query(), "thresholds": {"max": 0.25}},
                    ],
                },
                "rollback": {
                    "mode": "approval",
                    # Two people must agree (alice and bob in the story).
                    "approval": {"requiredApprovers": 2, "timeout": "5m", "onTimeout": "Rollback"},
                    "scaleDownDelay": "10s",
                },
                "progressDeadline": "2m",
                # The story starts with v1 serving: it takes traffic once Available.
                "firstRelease": "Promote",
                "keepPreviousWarm": "1m",
            }
        )
    return RolloutPolicySpec.model_validate(
        {
            "strategy": {
                "shadow": {"mirrorPercent": 100, "duration": "30s", "onSuccess": {"action": "Stop"}}
            },
            "analysis": {
                "interval": "2s",
                "failureLimit": 2,
                "metrics": [
                    {
                        "name": "error-rate-vs-stable",
                        "query": f"({error_rate_query()}) - ({error_rate_query(STABLE)})",
                        "thresholds": {"max": 0.02},
                    },
                    {
                        "name": "p95-latency-ratio",
                        "query": f"({p95_latency_query()}) / ({p95_latency_query(STABLE)})",
                        "thresholds": {"max": 1.5},
                    },
                ],
            },
            "rollback": {"mode": "automatic", "scaleDownDelay": "10s"},
            "progressDeadline": "2m",
            "keepPreviousWarm": "1m",
            "firstRelease": "Promote",
        }
    )


def _release(model: Model, version: Version) -> ModelReleaseSpec:
    env = [{"name": "LOG_LEVEL", "value": "info"}]
    env += [{"name": k, "value": v} for k, v in sorted(version.sim.items())]
    return ModelReleaseSpec.model_validate(
        {
            "policyRef": {"name": model.policy_name},
            "model": {
                "name": model.model_name,
                "version": version.version,
                "artifactURI": f"s3://models/{model.model_name}/{version.version}/model",
                "artifactDigest": fake_digest(model.model_name, version.version),
                "format": model.format,
            },
            "code": {
                "image": f"{model.image_repo}@{fake_digest(model.image_repo, version.version)}",
                "env": env,
            },
            "data": {"datasetRef": model.dataset, "version": version.data_version},
            "environment": {"runtime": "python3.11", "accelerator": "none"},
            "serving": {"replicas": 1, "port": 8080},
            # The sandbox has no mesh data plane (no injector, no proxies): the traffic
            # generator reports the proxies' istio_* metrics itself, so the policies' Istio
            # metrics need no proxy on the pods (Auto would report them SidecarMissing).
            "traffic": {"hosts": [model.host], "sidecar": "Ignore", **(
                {"gatewayAPI": {"parentRefs": [{"name": DEMO_GATEWAY}]}}
                if model.gateway_api else {})},
        }
    )


def _sim(error: float, latency: float, jitter: float, mean: float, sd: float, seed: int) -> dict[
    str, str
]:
    return {
        "SIM_ERROR_RATE": str(error),
        "SIM_LATENCY_MS": str(latency),
        "SIM_LATENCY_JITTER_MS": str(jitter),
        "SIM_SCORE_MEAN": str(mean),
        "SIM_SCORE_STDDEV": str(sd),
        "SIM_SEED": str(seed),
    }


FRAUD = Model(
    release="fraud",
    model_name="fraud-detector",
    policy_name="fraud-canary",
    host="fraud.example.com",
    image_repo="registry.example.com/fraud-server",
    dataset="s3://datasets/fraud/transactions",
    format="onnx",
    rate=20.0,
    versions={
        "v1": Version("v1", "1.0.0", _sim(0, 25, 10, 0.2, 0.1, 11), "3f9c2d1",
                      "v1 of fraud-detector: healthy, ~25 ms"),
        "v2": Version("v2", "1.1.0", _sim(0, 20, 10, 0.2, 0.1, 12), "5b0e7c2",
                      "v2: retrained, a little faster"),
        "v3": Version("v3", "2.0.0", _sim(0.3, 450, 50, 0.2, 0.1, 13), "8d41aa0",
                      "v3: broken from birth (SIM_ERROR_RATE=0.3, SIM_LATENCY_MS=450)"),
    },
)
CHATBOT = Model(
    release="chatbot",
    model_name="support-intent",
    policy_name="chatbot-approval",
    host="chat.example.com",
    image_repo="registry.example.com/chatbot-server",
    dataset="lakefs://support-conversations/main",
    format="safetensors",
    rate=20.0,
    versions={
        "v1": Version("v1", "3.1.0", _sim(0, 60, 20, 0.30, 0.12, 21), "c0ffee4",
                      "v1 of the chatbot: scores around 0.30"),
        "v2": Version("v2", "3.2.0", _sim(0, 55, 20, 0.70, 0.12, 22), "d1ce5e7",
                      "v2: healthy, but its scores drift to around 0.70 (SIM_SCORE_MEAN=0.7)"),
    },
)
RECOMMENDER = Model(
    release="recommender",
    model_name="two-tower-ranker",
    policy_name="recommender-shadow",
    host="recommender.shop.svc.cluster.local",
    image_repo="registry.example.com/ranker-server",
    dataset="s3://datasets/recsys/interactions",
    format="pytorch",
    rate=10.0,
    gateway_api=True,
    versions={
        "v1": Version("v1", "2024.11.1", _sim(0, 30, 10, 0.5, 0.15, 31), "fs-2024-11-01",
                      "v1 of the recommender: healthy, ~30 ms"),
        "v2": Version("v2", "2024.11.3", _sim(0.25, 90, 20, 0.5, 0.15, 32), "fs-2024-11-28",
                      "v2: 25% errors and 3x slower (SIM_ERROR_RATE=0.25, SIM_LATENCY_MS=90)"),
    },
)
MODELS: tuple[Model, ...] = (FRAUD, CHATBOT, RECOMMENDER)


def _model(release: str) -> Model:
    return next(m for m in MODELS if m.release == release)


def policy_body(model: Model, namespace: str, drill_every: str = DRILL_EVERY) -> dict[str, Any]:
    spec = _policy(model, drill_every)
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": ROLLOUTPOLICY_KIND,
        "metadata": {"name": model.policy_name, "namespace": namespace,
                     "labels": {DEMO_LABEL: "true"}},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_defaults=True),
    }


def fallback_service_body(namespace: str) -> dict[str, Any]:
    """The Service fraud's breaker sends users to (its pods are the demo's own process)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": FALLBACK_SERVICE, "namespace": namespace,
                     "labels": {DEMO_LABEL: "true"}},
        "spec": {"selector": {"app": FALLBACK_SERVICE},
                 "ports": [{"name": "http", "port": FALLBACK_PORT}]},
    }


def release_body(model: Model, version: str, namespace: str) -> dict[str, Any]:
    spec = _release(model, model.versions[version])
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": MODELRELEASE_KIND,
        "metadata": {"name": model.release, "namespace": namespace,
                     "labels": {DEMO_LABEL: "true", "team": "demo"}},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_defaults=True),
    }


def manifests_yaml(namespace: str) -> str:
    """Every object the demo applies, as YAML (``--print-manifests``)."""
    import yaml

    docs: list[dict[str, Any]] = [fallback_service_body(namespace)]
    for model in MODELS:
        docs.append(policy_body(model, namespace))
        for version in model.versions:
            docs.append(release_body(model, version, namespace))
    return yaml.safe_dump_all(docs, sort_keys=False, width=120)


# --------------------------------------------------------------------------------------
# Sandbox, processes, Kubernetes
# --------------------------------------------------------------------------------------


class SetupError(RuntimeError):
    """The sandbox or a component could not be set up (exit 2)."""


class StoryError(RuntimeError):
    """The story did not play as expected (exit 1)."""


def sandbox_env(root: Path = ROOT) -> dict[str, str]:
    """The sandbox's variables: the process env first, then ``.sandbox/env``."""
    env: dict[str, str] = {}
    env_file = Path(os.environ.get("SANDBOX_DIR", root / ".sandbox")) / "env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            m = re.match(r"^export (\w+)=(.*)$", line)
            if m and not m.group(2).startswith('"'):
                env[m.group(1)] = m.group(2)
    for key in ("KUBECONFIG", "PROMETHEUS_URL", "SANDBOX_TARGETS_DIR", "KUBECTL", "SANDBOX_DIR"):
        if os.environ.get(key) and key not in env:
            env[key] = os.environ[key]
    env.setdefault("SANDBOX_DIR", str(env_file.parent))
    return env


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace"
        )
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_pid(pid: int, marker: str, timeout: float = 5.0) -> bool:
    """SIGTERM (then SIGKILL) pid if it is still the process we started (cmdline has marker)."""
    if pid <= 1 or pid == os.getpid() or marker not in _proc_cmdline(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid) and marker in _proc_cmdline(pid):
        time.sleep(0.1)
    if _alive(pid) and marker in _proc_cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


class Kube:
    """The few API calls the demo makes, synchronous, each with a timeout."""

    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client, config

        new_client: Callable[..., Any] = config.new_client_from_config
        self.api_client: Any = new_client(config_file=kubeconfig)
        self.custom: Any = client.CustomObjectsApi(self.api_client)
        self.apps: Any = client.AppsV1Api(self.api_client)
        self.core: Any = client.CoreV1Api(self.api_client)
        self._client = client

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api_client.close()

    def ensure_namespace(self, namespace: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        try:
            self.core.create_namespace(body, _request_timeout=API_TIMEOUT)
        except self._client.ApiException as exc:
            if exc.status != 409:
                raise

    def ensure_service(self, body: Mapping[str, Any]) -> None:
        try:
            self.core.create_namespaced_service(body["metadata"]["namespace"], body,
                                                _request_timeout=API_TIMEOUT)
        except self._client.ApiException as exc:
            if exc.status != 409:
                raise

    def deployment_replicas(self, namespace: str, name: str) -> int | None:
        """spec.replicas of a Deployment (None: no such Deployment)."""
        try:
            d = self.apps.read_namespaced_deployment(name, namespace,
                                                     _request_timeout=API_TIMEOUT)
        except self._client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return int(d.spec.replicas or 0)

    def apply(self, plural: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        self.custom.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, meta["namespace"], plural, meta["name"], body,
            field_manager=FIELD_MANAGER, force=True,
            _content_type="application/apply-patch+yaml", _request_timeout=API_TIMEOUT,
        )

    def dry_run_create(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """What the API server would store (admission included); None: it refused."""
        meta = body["metadata"]
        try:
            obj: dict[str, Any] = self.custom.create_namespaced_custom_object(
                API_GROUP, API_VERSION, meta["namespace"], plural, body, dry_run="All",
                _request_timeout=API_TIMEOUT,
            )
        except self._client.ApiException as exc:
            if exc.status in (403, 422):  # an admission policy refused
                return None
            raise
        return obj

    def get_release(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, MODELRELEASE_PLURAL, name,
                _request_timeout=API_TIMEOUT,
            )
        except self._client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def get_virtual_service(
        self, namespace: str, name: str, kind: str = "VirtualService"
    ) -> dict[str, Any] | None:
        """The release's VirtualService, or with ``kind="HTTPRoute"`` its HTTPRoute."""
        group, version, plural = ((ISTIO_GROUP, ISTIO_VERSION, "virtualservices")
                                  if kind == "VirtualService" else ROUTE_API)
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                group, version, namespace, plural, name,
                _request_timeout=API_TIMEOUT,
            )
        except self._client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def _names(self, group: str, version: str, namespace: str, plural: str) -> list[str]:
        listing = self.custom.list_namespaced_custom_object(
            group, version, namespace, plural, _request_timeout=API_TIMEOUT
        )
        return [str(i["metadata"]["name"]) for i in listing.get("items") or []]

    def remaining(self, namespace: str) -> list[str]:
        """Demo leftovers still in the namespace (Rewind objects and what they own)."""
        left = [f"mr/{n}" for n in self._names(API_GROUP, API_VERSION, namespace,
                                               MODELRELEASE_PLURAL)]
        left += [f"rp/{n}" for n in self._names(API_GROUP, API_VERSION, namespace,
                                                ROLLOUTPOLICY_PLURAL)]
        for kind, fn in (
            ("deployment", self.apps.list_namespaced_deployment),
            ("controllerrevision", self.apps.list_namespaced_controller_revision),
            ("service", self.core.list_namespaced_service),
        ):
            items = fn(namespace, label_selector=MANAGED_SELECTOR,
                       _request_timeout=API_TIMEOUT).items
            left += [f"{kind}/{i.metadata.name}" for i in items]
        fallbacks = self.core.list_namespaced_service(  # the breaker's, the demo's own
            namespace, label_selector=f"{DEMO_LABEL}=true", _request_timeout=API_TIMEOUT).items
        left += [f"service/{i.metadata.name}" for i in fallbacks]
        for group, version, plural in ((ISTIO_GROUP, ISTIO_VERSION, "virtualservices"),
                                       (ISTIO_GROUP, ISTIO_VERSION, "destinationrules"),
                                       ROUTE_API):
            listing = self.custom.list_namespaced_custom_object(
                group, version, namespace, plural,
                label_selector=MANAGED_SELECTOR, _request_timeout=API_TIMEOUT,
            )
            left += [f"{plural[:-1]}/{i['metadata']['name']}" for i in listing.get("items") or []]
        return left

    def delete_demo_objects(self, namespace: str, timeout: float = 60.0) -> None:
        """Delete every ModelRelease, RolloutPolicy and Rewind-owned object; wait (bounded).

        The operator may not be running, so a ModelRelease whose finalizer is still there
        after a few seconds has it removed: nothing else would.
        """
        ns, timeout_kw = namespace, {"_request_timeout": API_TIMEOUT}
        for plural in (MODELRELEASE_PLURAL, ROLLOUTPOLICY_PLURAL, QUARANTINE_PLURAL):
            for name in self._names(API_GROUP, API_VERSION, ns, plural):
                with contextlib.suppress(self._client.ApiException):
                    self.custom.delete_namespaced_custom_object(
                        API_GROUP, API_VERSION, ns, plural, name, **timeout_kw
                    )
        sel = {"label_selector": MANAGED_SELECTOR, **timeout_kw}
        for fn in (
            self.apps.delete_collection_namespaced_deployment,
            self.apps.delete_collection_namespaced_controller_revision,
            self.core.delete_collection_namespaced_service,
        ):
            with contextlib.suppress(self._client.ApiException):
                fn(ns, **sel)
        with contextlib.suppress(self._client.ApiException):  # the breaker's fallback
            self.core.delete_collection_namespaced_service(
                ns, label_selector=f"{DEMO_LABEL}=true", **timeout_kw)
        for group, version, plural in ((ISTIO_GROUP, ISTIO_VERSION, "virtualservices"),
                                       (ISTIO_GROUP, ISTIO_VERSION, "destinationrules"),
                                       ROUTE_API):
            with contextlib.suppress(self._client.ApiException):
                self.custom.delete_collection_namespaced_custom_object(
                    group, version, ns, plural, **sel
                )
        started = time.monotonic()
        deadline = started + timeout
        stripped = False
        while True:
            left = self.remaining(ns)
            if not left:
                return
            now = time.monotonic()
            if now >= deadline:
                raise SetupError(
                    f"demo objects in namespace {ns} still there after {timeout:.0f}s: "
                    + ", ".join(left[:8])
                )
            if not stripped and now - started > 3.0:
                stripped = True
                for name in self._names(API_GROUP, API_VERSION, ns, MODELRELEASE_PLURAL):
                    with contextlib.suppress(self._client.ApiException):
                        self.custom.patch_namespaced_custom_object(
                            API_GROUP, API_VERSION, ns, MODELRELEASE_PLURAL, name,
                            {"metadata": {"finalizers": None}},
                            _content_type="application/merge-patch+json", **timeout_kw,
                        )
            time.sleep(0.5)


def _kubectl(env: Mapping[str, str], *args: str, timeout: float = 60.0,
             input: str | None = None) -> str:
    kubectl = env.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
    cmd = [kubectl, f"--kubeconfig={env['KUBECONFIG']}", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              input=input)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{' '.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        raise SetupError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def install_crds(env: Mapping[str, str]) -> None:
    """Apply crds/ as a user would and wait until the API server serves them."""
    _kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    _kubectl(env, "wait", "--for=condition=Established", "--timeout=60s",
             "crd/modelreleases.rewind.dev", "crd/rolloutpolicies.rewind.dev")


HUMAN_ACTIONS = ROOT / "charts" / "rewind" / "files" / "human-actions.yaml"
#: The MutatingAdmissionPolicy that stamps who acted (the sandbox's API server has it, v1).
HUMAN_ACTIONS_STAMP = ROOT / "charts" / "rewind" / "files" / "human-actions-stamp.yaml"


def install_admission(env: Mapping[str, str], kube: Kube, namespace: str,
                      timeout: float = 60.0) -> None:
    """Apply the chart's admission policies (who acted is stamped by the API server, each
    action is an RBAC verb) and wait until both are enforced: a new policy takes a moment.
    Probed with server-side dry-run creates, which store nothing."""
    for policies in (HUMAN_ACTIONS, HUMAN_ACTIONS_STAMP):
        _kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(policies))
    probe = release_body(CHATBOT, "v1", namespace)
    probe["metadata"] = {"name": "admission-probe", "namespace": namespace}
    deadline = time.monotonic() + timeout
    while True:
        stamped = kube.dry_run_create(MODELRELEASE_PLURAL, {
            **probe, "metadata": {**probe["metadata"],
                                  "annotations": {"rewind.dev/promote": "probe"}}})
        forged = kube.dry_run_create(MODELRELEASE_PLURAL, {
            **probe, "metadata": {**probe["metadata"],
                                  "annotations": {"rewind.dev/promote-by": "someone-else"}}})
        annotations = ((stamped or {}).get("metadata") or {}).get("annotations") or {}
        if annotations.get("rewind.dev/promote-by") and forged is None:
            return
        if time.monotonic() >= deadline:
            raise SetupError(f"the admission policies of {HUMAN_ACTIONS.name} and "
                             f"{HUMAN_ACTIONS_STAMP.name} are not enforced after {timeout:.0f}s")
        time.sleep(0.5)


# --------------------------------------------------------------------------------------
# Console: narrative on stdout, one live progress line on stderr
# --------------------------------------------------------------------------------------


class Console:
    """Prints the story; keeps one progress line at the bottom (\\r on a TTY)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = self.err.isatty()
        self._line = ""
        self._key: object = None
        self._lock = threading.RLock()

    @property
    def width(self) -> int:
        return max(80, shutil.get_terminal_size((120, 24)).columns)

    def _clear(self) -> None:
        if self.tty and self._line:
            self.err.write("\r\033[K")
            self.err.flush()

    def _draw(self) -> None:
        if self.tty and self._line:
            self.err.write("\r\033[K" + self._line[: self.width - 1])
            self.err.flush()

    def say(self, text: str = "") -> None:
        with self._lock:
            self._clear()
            self.out.write(text + "\n")
            self.out.flush()
            self._draw()

    def progress(self, text: str, key: object) -> None:
        with self._lock:
            if self.tty:
                self._line = text
                self._draw()
            elif key != self._key:
                self.err.write(text + "\n")
                self.err.flush()
            self._key = key

    def done(self) -> None:
        with self._lock:
            self._clear()
            self._line = ""
            self._key = None


def _num(value: Any) -> str:
    if value is None:
        return "no data"
    v = float(value)
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _shown(m: Mapping[str, Any]) -> str:
    """A stored measurement's value: +Inf/-Inf are kept in valueText (value is null)."""
    if m.get("value") is None and m.get("valueText"):
        return str(m["valueText"])
    return _num(m.get("value"))


def _bound(m: Mapping[str, Any]) -> str:
    parts = [f"{k} {_num(m[k])}" for k in ("min", "max") if m.get(k) is not None]
    return ", ".join(parts)


def latest_round(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    analysis = status.get("analysis") or {}
    last = analysis.get("lastRunAt")
    return [m for m in analysis.get("measurements") or [] if last and m.get("at") == last]


def progress_line(name: str, body: Mapping[str, Any] | None, elapsed: float,
                  extra: str = "") -> tuple[str, object]:
    """``fraud | Progressing r3: canary step 1/2 at 20% | r2 80% / r3 20% | last: ...``."""
    if body is None:
        return f"{name}: not created yet", ("absent",)
    st: Mapping[str, Any] = body.get("status") or {}
    phase = st.get("phase") or "Pending"
    stable, cand = int(st.get("stableRevision") or 0), int(st.get("candidateRevision") or 0)
    weights = st.get("weights") or {}
    if cand and stable:
        traffic = f"r{stable} {weights.get('stable', 0)}% / r{cand} {weights.get('candidate', 0)}%"
    elif stable:
        traffic = f"r{stable} 100%"
    else:
        traffic = "no user traffic yet"
    mirror = int(st.get("mirrorPercent") or 0)
    if mirror and cand:
        traffic += f", mirror {mirror}% -> r{cand}"
    stage = str(st.get("message") or "").split(";")[0]
    round_ = latest_round(st)
    last = ", ".join(
        f"{m.get('metric')} {_shown(m)} ({_bound(m)}) {m.get('verdict')}"
        for m in round_
    ) or "-"
    parts = [f"[{elapsed:5.0f}s] {name}", f"{phase}: {stage}" if stage else phase, traffic,
             f"last analysis: {last}"]
    if extra:
        parts.append(extra)
    key = (name, phase, stable, cand, json.dumps(weights, sort_keys=True), mirror,
           (st.get("analysis") or {}).get("lastRunAt"))
    return " | ".join(parts), key


_DIGEST = re.compile(r"sha256:([0-9a-f]{12})[0-9a-f]{52}")
_RFC3339 = re.compile(r"\b\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d)(?:\.\d+)?Z\b")


def tidy(message: str) -> str:
    """Shorter digests and clock times, for tables a human reads."""
    return _RFC3339.sub(r"\1", _DIGEST.sub(r"sha256:\1...", message))


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def timeline_table(name: str, body: Mapping[str, Any], start: datetime, width: int) -> str:
    """The release's status.timeline as a table: time, +seconds, type, revision, message."""
    st: Mapping[str, Any] = body.get("status") or {}
    spec = body.get("spec") or {}
    head = (
        f"== {name} ({(spec.get('model') or {}).get('name', '?')}, policy "
        f"{(spec.get('policyRef') or {}).get('name', '?')}): phase {st.get('phase')}, "
        f"stable r{st.get('stableRevision', 0)} =="
    )
    lines = [head, f"{'TIME(UTC)':<9} {'+SEC':>6}  {'EVENT':<21} {'REV':<4} MESSAGE"]
    indent = 9 + 1 + 6 + 2 + 21 + 1 + 4 + 1
    wrap = max(40, width - indent)
    for entry in st.get("timeline") or []:
        at = parse_time(entry.get("at"))
        clock = at.strftime("%H:%M:%S") if at else "?"
        offset = f"{(at - start).total_seconds():6.1f}" if at else "     ?"
        message = tidy(str(entry.get("message", "")))
        if entry.get("user") and str(entry["user"]) not in message:
            message += f" (by {entry['user']})"
        chunks = textwrap.wrap(message, wrap) or [""]
        rev = f"r{entry.get('revision', 0)}"
        lines.append(f"{clock:<9} {offset}  {entry.get('type', ''):<21} {rev:<4} {chunks[0]}")
        lines.extend(" " * indent + c for c in chunks[1:])
    return "\n".join(lines)


def entries(body: Mapping[str, Any], type_: str, revision: int) -> list[Mapping[str, Any]]:
    timeline = (body.get("status") or {}).get("timeline") or []
    return [e for e in timeline if e.get("type") == type_ and e.get("revision") == revision]


def history_outcome(body: Mapping[str, Any], revision: int) -> str | None:
    for h in (body.get("status") or {}).get("history") or []:
        if h.get("revision") == revision:
            return str(h.get("outcome"))
    return None


# --------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Traffic:
    """One traffic generator in a thread of this process, plus its scrape target."""

    release: str
    gen: TrafficGenerator
    thread: threading.Thread
    target: str
    server: Any


@dataclass
class DemoOptions:
    namespace: str = DEFAULT_NAMESPACE
    quick: bool = False
    timeout: float = 600.0
    approve_delay: float = 5.0
    act_pause: float = 3.0


@dataclass
class Revs:
    """Revision numbers the story expects (assigned by the operator, checked here)."""

    fraud_good: int = 0
    fraud_bad: int = 0
    chatbot_bad: int = 0
    recommender_bad: int = 0
    #: The revision fraud's drills went to (0: the drill acts did not play).
    drill_target: int = 0
    #: The act that deleted the drill target's snapshot played.
    snapshot_deleted: bool = False
    #: The circuit-breaker act played on this (stable) revision.
    breaker_on: int = 0


class Demo:
    """Sets everything up, plays the story, verifies it, and always cleans up its processes."""

    def __init__(self, options: DemoOptions, env: Mapping[str, str], console: Console) -> None:
        self.o = options
        self.env = dict(env)
        self.c = console
        self.ns = options.namespace
        self.state = Path(self.env["SANDBOX_DIR"]) / "demo" / self.ns
        self.targets_dir = Path(self.env["SANDBOX_TARGETS_DIR"])
        self.prometheus = self.env["PROMETHEUS_URL"]
        self.kube: Kube | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.runner: RevisionRunner | None = None
        self.traffic: dict[str, Traffic] = {}
        #: fraud's circuit-breaker fallback (a rules-based model), served from this process.
        self.fallback: RunningModelServer | None = None
        self.started_mono = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.deadline = self.started_mono + options.timeout
        self.revs = Revs()
        self._seen: set[tuple[str, str, str, str]] = set()
        self.quiet = False  # no more runner chatter once the report is out
        self.people = Path()  # the people's kubeconfig, once set up
        self.refused: subprocess.CompletedProcess[str] | None = None
        self._acts = 0
        #: Releases an act created beside the models' (polled and reported like them).
        self.extra_releases: list[str] = []
        self.poisoned = False  # the poisoning act ran
        self.mlflow: MLflowServer | None = None  # its MLflow server, stopped at cleanup

    # -- set-up ---------------------------------------------------------------------------

    @property
    def k(self) -> Kube:
        assert self.kube is not None
        return self.kube

    def _pidfile(self) -> Path:
        return self.state / "pids.json"

    def _write_pids(self) -> None:
        pids = {"demo": os.getpid()}
        if self.operator is not None:
            pids["operator"] = self.operator.pid
        self.state.mkdir(parents=True, exist_ok=True)
        self._pidfile().write_text(json.dumps(pids) + "\n")

    def kill_leftovers(self, *, including_demo: bool) -> list[str]:
        """Stop processes a previous run of this namespace left behind (by recorded pid)."""
        stopped: list[str] = []
        pidfile = self._pidfile()
        if pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                recorded: dict[str, int] = json.loads(pidfile.read_text())
                demo_pid = int(recorded.get("demo", 0))
                if demo_pid and demo_pid != os.getpid() and _alive(demo_pid) \
                        and "rewind_demo.demo" in _proc_cmdline(demo_pid):
                    if not including_demo:
                        raise SetupError(
                            f"another demo (pid {demo_pid}) is running in namespace {self.ns}; "
                            "stop it (Ctrl-C) or run `make demo-down`"
                        )
                    if terminate_pid(demo_pid, "rewind_demo.demo", timeout=30.0):
                        stopped.append(f"demo pid {demo_pid}")
                op = int(recorded.get("operator", 0))
                if op and terminate_pid(op, "rewind.main"):
                    stopped.append(f"operator pid {op}")
        runner_pids = self.state / "runner-pids.json"
        if runner_pids.exists():
            with contextlib.suppress(ValueError, OSError):
                for workload, pid in json.loads(runner_pids.read_text()).items():
                    if terminate_pid(int(pid), "rewind_demo.modelserver"):
                        stopped.append(f"model server {workload} pid {pid}")
            runner_pids.unlink(missing_ok=True)
        return stopped

    def remove_stale_targets(self) -> None:
        prefix = f"rewind-demo-{self.ns}-"
        with contextlib.suppress(RuntimeError, FileNotFoundError):
            for name in targets.list_targets(self.targets_dir):
                if name.startswith(prefix):
                    targets.unregister_target(name, directory=self.targets_dir)

    def setup(self) -> None:
        c = self.c
        c.say(f"Rewind demo: the 3 AM incident, in namespace {self.ns} "
              f"({'quick' if self.o.quick else 'full'} story)")
        c.say(f"  sandbox: {self.env['KUBECONFIG']}, Prometheus {self.prometheus}")
        c.say("  The RolloutPolicies and ModelReleases are built in code with the API models "
              "(python -m rewind_demo.demo --print-manifests shows them);")
        c.say("  the same kinds of objects as YAML for a real cluster: examples/"
              "fraud-detection-canary.yaml, examples/chatbot-bluegreen-approval.yaml, "
              "examples/recommender-shadow.yaml")
        for stopped in self.kill_leftovers(including_demo=False):
            c.say(f"  stopped a leftover from an earlier run: {stopped}")
        self.kube = Kube(self.env["KUBECONFIG"])
        install_crds(self.env)
        self.k.ensure_namespace(self.ns)
        if self.k.remaining(self.ns):
            c.say(f"  deleting the previous demo's objects in {self.ns} ...")
        self.k.delete_demo_objects(self.ns)
        self.remove_stale_targets()
        self.state.mkdir(parents=True, exist_ok=True)
        self._setup_people()
        self._start_operator()
        self._start_runner()
        self._start_fallback()
        for model in self._models():
            self._start_traffic(model)
        for t in self.traffic.values():
            try:
                targets.wait_scraped(self.prometheus, {"instance": f"127.0.0.1:{t.server.port}"},
                                     timeout=30)
            except TimeoutError as exc:
                raise SetupError(f"Prometheus does not scrape the traffic generator: {exc}") \
                    from exc
        c.say(f"  operator pid {self.operator.pid if self.operator else '?'} "
              f"(log: {self.state / 'operator.log'}); revision runner and "
              f"{len(self.traffic)} traffic generators up")
        c.say("  Istio's data plane is replaced, in this demo only, by a local traffic "
              "generator that follows each release's VirtualService (the recommender's "
              "HTTPRoute: it runs on Gateway API, and the generator accepts it as its gateway).")

    def _setup_people(self) -> None:
        """The admission policies, then alice and bob (approvers) and dana (may edit, not
        approve) as real client-certificate users with their RBAC in this namespace."""
        c = self.c
        install_admission(self.env, self.k, self.ns)
        try:
            self.people = people.write_people_kubeconfig(
                Path(self.env["KUBECONFIG"]), Path(self.env["SANDBOX_DIR"]) / "pki",
                self.state / "people")
        except people.IdentityError as exc:
            raise SetupError(str(exc)) from exc
        manifests = people.rbac_manifests(self.ns, {DEMO_LABEL: "true"})
        _kubectl(self.env, "apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": manifests}))
        verb = "approve-rollback"
        want = {p.name: p in people.APPROVERS for p in people.PEOPLE}
        deadline = time.monotonic() + 60
        while (got := {name: self._can_i(name, verb) for name in want}) != want:
            if time.monotonic() >= deadline:
                raise SetupError(f"RBAC not in force after 60s: may {verb}: {got}")
            time.sleep(0.5)
        c.say(f"  admission policies installed ({HUMAN_ACTIONS.relative_to(ROOT)}, "
              f"{HUMAN_ACTIONS_STAMP.name}): the API server stamps who set each rewind.dev/ "
              "action, RBAC verbs say who may")
        c.say("  people (client certificates from the sandbox CA, contexts of "
              f"{self.people}):")
        for p in people.PEOPLE:
            c.say(f"    {p.name:<6} {p.role}")

    def _can_i(self, user: str, verb: str) -> bool:
        kubectl = self.env.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
        done = subprocess.run(
            [kubectl, f"--kubeconfig={self.people}", f"--context={user}", "auth", "can-i",
             verb, "modelreleases.rewind.dev", "-n", self.ns],
            capture_output=True, text=True, timeout=30)
        return done.stdout.strip() == "yes"

    def _models(self) -> list[Model]:
        return [FRAUD, CHATBOT] if self.o.quick else list(MODELS)

    def _start_operator(self) -> None:
        log = (self.state / "operator.log").open("wb")  # this run's log only
        cmd = [sys.executable, "-m", "rewind.main", "--namespace", self.ns,
               "--prometheus-url", self.prometheus, "--metrics-port", "0",
               "--log-format", "plain",
               # The admission policies are installed: the -by annotations name real users.
               "--trust-actor-annotations"]
        env = {**os.environ, "KUBECONFIG": self.env["KUBECONFIG"]}
        try:
            self.operator = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True)
        except OSError as exc:
            raise SetupError(f"could not start the operator: {exc}") from exc
        finally:
            log.close()
        self._write_pids()

    def _start_runner(self) -> None:
        self.runner = RevisionRunner(
            self.ns,
            backends_dir=self.state / "backends",
            lister=kube_deployment_lister(self.ns, self.k.api_client),
            targets_dir=self.targets_dir,
            target_prefix="rewind-sim-",
            log_dir=self.state / "logs",
            pidfile=self.state / "runner-pids.json",
            poll_interval=0.5,
            log=self._runner_log,
        )
        self.runner.clean_stale()
        self.runner.start(self.o.timeout + 60)

    def _start_fallback(self) -> None:
        """fraud's breaker fallback: a Service, and a rules-based model behind it (a model
        server in this process: low scores, fast, no dependency outage), which the traffic
        generator answers the Service's requests with."""
        self.k.ensure_service(fallback_service_body(self.ns))
        self.fallback = start_modelserver(ModelServerConfig(
            revision=FALLBACK_SERVICE, namespace=self.ns, model_version="rules-7",
            latency_ms=5, latency_jitter_ms=2, score_mean=0.1, score_stddev=0.05, seed=71))

    def _backends(self, model: Model) -> BackendSource:
        assert self.runner is not None
        revisions = backends_file_source(self.runner.backends_file(model.release), self.ns)
        if model is not FRAUD or self.fallback is None:
            return revisions
        rules = Backend(url=self.fallback.url, workload=FALLBACK_SERVICE, namespace=self.ns,
                        app=FALLBACK_SERVICE)

        def with_fallback() -> Mapping[str, Backend]:
            return {**revisions(), FALLBACK_SERVICE: rules}

        return with_fallback

    def _runner_log(self, message: str) -> None:
        if not self.quiet:
            self.c.say(f"  . {message}")

    def _start_traffic(self, model: Model) -> None:
        from kubernetes import client

        assert self.runner is not None
        api = client.CustomObjectsApi(self.k.api_client)
        gen = TrafficGenerator(
            kube_route_source(self.ns, name=model.release, api=api, kind=model.route_kind),
            self._backends(model),
            rate=model.rate,
            seed=len(model.release),
            poll_interval=0.5,
            timeout=5.0,
            max_inflight=32,
            namespace=self.ns,
            source_workload="demo-users",
        )
        server = gen.serve_metrics(0)
        name = f"rewind-demo-{self.ns}-trafficgen-{model.release}"
        targets.register_target(name, server.port, {"rewind_sim": "trafficgen"},
                                directory=self.targets_dir)
        thread = threading.Thread(target=gen.run, args=(self.o.timeout + 60,),
                                  name=f"traffic-{model.release}", daemon=True)
        thread.start()
        self.traffic[model.release] = Traffic(model.release, gen, thread, name, server)

    def cleanup(self) -> None:
        """Stop everything this run started; never raises."""
        self.c.done()
        self.quiet = True
        if self.runner is not None:
            self.runner.request_stop()  # no restarts of servers a Ctrl-C already stopped
        for t in self.traffic.values():
            with contextlib.suppress(Exception):
                t.gen.stop()
        for t in self.traffic.values():
            with contextlib.suppress(Exception):
                t.thread.join(10)
                t.gen.close()
                t.server.stop()
            with contextlib.suppress(Exception):
                targets.unregister_target(t.target, directory=self.targets_dir)
        if self.runner is not None:
            with contextlib.suppress(Exception):
                self.runner.stop()
        if self.fallback is not None:
            with contextlib.suppress(Exception):
                self.fallback.stop()
        if self.mlflow is not None:
            with contextlib.suppress(Exception):
                self.mlflow.stop()
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.operator.wait(5)
        with contextlib.suppress(OSError):
            self._pidfile().unlink(missing_ok=True)
        if self.kube is not None:
            self.kube.close()

    # -- waiting ----------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started_mono

    def _announce(self, bodies: Mapping[str, Mapping[str, Any]]) -> None:
        """Print new timeline entries of every release as they happen, oldest first (the
        tables at the end have them all, in full)."""
        new: list[tuple[str, str, Mapping[str, Any]]] = []
        for name, body in bodies.items():
            for e in (body.get("status") or {}).get("timeline") or []:
                key = (name, str(e.get("at")), str(e.get("type")), str(e.get("message")))
                if key not in self._seen:
                    self._seen.add(key)
                    new.append((str(e.get("at")), name, e))
        for _, name, e in sorted(new, key=lambda item: item[0]):
            if e.get("type") == "AnalysisInconclusive":
                continue
            at = parse_time(e.get("at"))
            clock = at.strftime("%H:%M:%S") if at else "?"
            text = tidy(f"{clock} {name} {e.get('type')} r{e.get('revision')}: {e.get('message')}")
            width = self.c.width
            self.c.say("    " + (text if len(text) <= width - 4 else text[: width - 7] + "..."))

    def _poll(self, focus: str) -> dict[str, Any] | None:
        """Read every release (announcing their news); return the focus release."""
        bodies: dict[str, dict[str, Any]] = {}
        for release in [m.release for m in self._models()] + self.extra_releases:
            try:
                body = self.k.get_release(self.ns, release)
            except Exception as exc:  # a blip of the API server: keep polling
                self.c.progress(f"{release}: API error {exc!r}", ("error", release))
                continue
            if body is not None:
                bodies[release] = body
        self._announce(bodies)
        return bodies.get(focus)

    def wait_release(
        self,
        name: str,
        what: str,
        done: Callable[[Mapping[str, Any]], bool],
        *,
        timeout: float,
        bad: Callable[[Mapping[str, Any]], str | None] | None = None,
        extra: Callable[[], str] | None = None,
    ) -> dict[str, Any]:
        """Poll the release (bounded) until done(body); raise StoryError on bad() or timeout."""
        deadline = min(time.monotonic() + timeout, self.deadline)
        last: dict[str, Any] | None = None
        while True:
            if self.operator is not None and self.operator.poll() is not None:
                self.c.done()
                raise StoryError(
                    f"the operator exited (code {self.operator.returncode}) while waiting for "
                    f"{what}; see {self.state / 'operator.log'}"
                )
            last = self._poll(name)
            if last is not None:
                text, key = progress_line(name, last, self.elapsed(), extra() if extra else "")
                self.c.progress(text, key)
                if done(last):
                    self.c.done()
                    return last
                why = bad(last) if bad else None
                if why:
                    self.c.done()
                    raise StoryError(f"{name}: {why}")
            if time.monotonic() >= deadline:
                self.c.done()
                st = (last or {}).get("status") or {}
                raise StoryError(
                    f"timed out after {timeout:.0f}s waiting for {what}; {name} is "
                    f"{st.get('phase', 'absent')}: {st.get('message', '')}"
                )
            time.sleep(0.5)

    def pause(self, seconds: float) -> None:
        end = min(time.monotonic() + seconds, self.deadline)
        while time.monotonic() < end:
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))

    # -- the story --------------------------------------------------------------------------

    def _apply_version(self, model: Model, version: str) -> int:
        """Apply a version of the release; returns the revision number it should become."""
        body = self.k.get_release(self.ns, model.release)
        current = int(((body or {}).get("status") or {}).get("currentRevision") or 0)
        self.k.apply(MODELRELEASE_PLURAL, release_body(model, version, self.ns))
        return current + 1

    @staticmethod
    def _phase_is(phase: str, stable: int) -> Callable[[Mapping[str, Any]], bool]:
        def check(body: Mapping[str, Any]) -> bool:
            st = body.get("status") or {}
            return st.get("phase") == phase and int(st.get("stableRevision") or 0) == stable

        return check

    @staticmethod
    def _unexpected(revision: int, *phases: str) -> Callable[[Mapping[str, Any]], str | None]:
        """A phase that must not happen once the operator works on ``revision``."""

        def check(body: Mapping[str, Any]) -> str | None:
            st = body.get("status") or {}
            if int(st.get("currentRevision") or 0) < revision:
                return None  # the operator has not seen the new spec yet
            if st.get("phase") in phases:
                return f"unexpected phase {st.get('phase')}: {st.get('message', '')}"
            return None

        return check

    def _act(self, title: str) -> None:
        self._acts += 1
        self.c.say(f"Act {self._acts}. {title}")

    def act_v1(self) -> None:
        c = self.c
        c.say("")
        self._act("v1 of each model is serving.")
        for model in self._models():
            self.k.apply(ROLLOUTPOLICY_PLURAL, policy_body(model, self.ns))
        for model in self._models():
            c.say(f"  kubectl apply: ModelRelease {model.release}, {model.versions['v1'].note}")
            self.k.apply(MODELRELEASE_PLURAL, release_body(model, "v1", self.ns))
        for model in self._models():
            self.wait_release(model.release, f"{model.release} v1 to be promoted",
                              self._phase_is("Promoted", 1), timeout=120,
                              bad=self._unexpected(1, "Failed"))
        # Users are being answered by v1 before anything else happens.
        for model in self._models():
            self._wait_answers(model.release, f"{model.release}-r1")
        c.say("  v1 serves 100% of users for fraud, " + ", ".join(
            m.release for m in self._models()[1:]) + ".")

    def _wait_answers(self, release: str, workload: str, at_least: int = 10) -> None:
        gen = self.traffic[release].gen

        def answered(_body: Mapping[str, Any]) -> bool:
            return gen.stats.user_total(workload) >= at_least

        def count() -> str:
            return f"user answers from {workload}: {gen.stats.user_total(workload)}"

        self.wait_release(release, f"users to get answers from {workload}", answered,
                          timeout=60, extra=count)

    def act_fraud_good(self) -> None:
        c = self.c
        c.say("")
        self._act("fraud v2 goes out on a canary: 20% -> 50% -> 100%, analysed every 2s.")
        c.say(f"  {FRAUD.versions['v2'].note}")
        rev = self._apply_version(FRAUD, "v2")
        self.revs.fraud_good = rev
        self.wait_release("fraud", f"fraud v2 (r{rev}) to be promoted",
                          self._phase_is("Promoted", rev), timeout=120,
                          bad=self._unexpected(rev, "RolledBack", "Failed", "AwaitingApproval",
                                               "RollingBack"))
        c.say(f"  fraud v2 (r{rev}) passed every step and was promoted.")

    def kubectl_shown(self, *args: str, pretty: bool = False) -> str:
        """Run ``kubectl ARGS -n NS`` as the sandbox admin, printing the command and its
        output, indented, as a user would see them (``pretty``: a JSON output indented, as
        ``| jq`` would); returns the output."""
        self.c.say(f"  $ kubectl {' '.join(args)} -n {self.ns}" + (" | jq" if pretty else ""))
        try:
            out = _kubectl(self.env, *args, "-n", self.ns)
        except SetupError as exc:
            raise StoryError(str(exc)) from exc
        shown = out
        if pretty:
            with contextlib.suppress(ValueError):
                shown = json.dumps(json.loads(out), indent=2)
        for line in shown.rstrip().splitlines():
            self.c.say(f"    {line}".rstrip())
        return out

    @staticmethod
    def _status(body: Mapping[str, Any]) -> Mapping[str, Any]:
        status: Mapping[str, Any] = body.get("status") or {}
        return status

    def _drill_ended(self, after: str | None) -> Callable[[Mapping[str, Any]], bool]:
        """A drill started after ``after`` (an RFC 3339 time; None: any) has a verdict."""
        def check(body: Mapping[str, Any]) -> bool:
            st = self._status(body)
            last = st.get("lastDrill") or {}
            return not st.get("drill") and bool(last.get("verdict")) and (
                after is None or str(last.get("startedAt")) > after)

        return check

    def act_drill(self) -> None:
        c = self.c
        c.say("")
        self._act("Have you ever pushed it? fraud's scheduled rollback drill.")
        stable = self.revs.fraud_good
        target = stable - 1
        workload = f"fraud-r{target}"
        c.say("  fraud's policy drills its rollback path every 24h (spec.drill: every 24h, "
              "mirrorPercent 50, timeout 1m): the revision a rollback would go to now is "
              "re-created from its snapshot, timed to Available, analysed on half of the live "
              "traffic, mirrored (users never get its answers), and scaled back.")
        self.wait_release(
            "fraud", f"{workload} to be retired to zero replicas (keepPreviousWarm 5s)",
            lambda _b: self.k.deployment_replicas(self.ns, workload) == 0, timeout=60,
            bad=self._unexpected(stable, "RollingBack", "RolledBack", "Failed"))
        c.say(f"  v1 ({workload}) runs no pods: a rollback now would have to re-create it from "
              f"its snapshot (ControllerRevision {workload}).")
        c.say(f"  The demo cannot wait a night: it sets drill.every to 5s, and back to "
              f"{DRILL_EVERY} once the drill has started.")
        gen = self.traffic["fraud"].gen
        users_before = gen.stats.user_total(workload)
        mirrored_before = gen.stats.mirror_total(workload)
        self.k.apply(ROLLOUTPOLICY_PLURAL, policy_body(FRAUD, self.ns, drill_every="5s"))
        unexpected = self._unexpected(stable, "Progressing", "RollingBack", "RolledBack",
                                      "Failed")
        self.wait_release("fraud", "the scheduled drill to start",
                          lambda b: bool(self._status(b).get("drill")
                                         or self._status(b).get("lastDrill")),
                          timeout=60, bad=unexpected)
        self.k.apply(ROLLOUTPOLICY_PLURAL, policy_body(FRAUD, self.ns))
        self.revs.drill_target = target

        def counts() -> str:
            return (f"{workload}: {gen.stats.mirror_total(workload) - mirrored_before} "
                    f"mirrored, {gen.stats.user_total(workload) - users_before} user answers")

        body = self.wait_release("fraud", "the drill's verdict", self._drill_ended(None),
                                 timeout=90, bad=unexpected, extra=counts)
        last = self._status(body).get("lastDrill") or {}
        if last.get("verdict") != "Passed":
            raise StoryError(f"the scheduled drill did not pass: {last}")
        ready = last.get("timeToReadySeconds")
        passing = last.get("timeToPassingAnalysisSeconds")
        c.say(f"  Passed ({last.get('trigger')}): r{last.get('target')} was Available "
              f"{_num(ready)}s after the drill started and passed the analysis "
              f"{_num(passing)}s after; scaled back to zero. Users stayed on r{stable} "
              f"({counts()}).")

    def act_drill_fails(self) -> None:
        c = self.c
        c.say("")
        self._act("r1's snapshot is deleted; the next drill fails and says what a rollback "
                  "would hit.")
        target = self.revs.drill_target or self.revs.fraud_good - 1
        workload = f"fraud-r{target}"
        before = self.k.get_release(self.ns, "fraud") or {}
        previous = str((self._status(before).get("lastDrill") or {}).get("startedAt") or "")
        c.say(f"  A clean-up job deletes the ControllerRevision {workload} (the snapshot "
              f"Rewind re-creates r{target} from); then someone asks for a drill now:")
        self.kubectl_shown("delete", "controllerrevision", workload)
        self.kubectl_shown("annotate", "--overwrite", "modelrelease", "fraud",
                           "rewind.dev/drill=true")
        self.revs.snapshot_deleted = True
        self.wait_release(
            "fraud", "the on-demand drill's verdict", self._drill_ended(previous or None),
            timeout=60, bad=self._unexpected(self.revs.fraud_good, "Progressing", "RollingBack",
                                             "RolledBack", "Failed"))
        self.kubectl_shown("get", "modelrelease", "fraud", "-o", "jsonpath={.status.lastDrill}",
                           pretty=True)
        c.say(f"  A rollback to r{target} (break glass, or an automatic one with r{target} as "
              f"the target) would fail the same way: Rewind could not re-create r{target}. The "
              "drill says so now, not at 3 AM; the chart's RewindLastDrillFailed alert fires on "
              "rewind_drill_last_failed.")

    def _fault(self, workload: str, up: bool) -> None:
        """Start or end the simulated outage of the feature store behind ``workload``."""
        assert self.runner is not None
        url = self.runner.url_of(workload)
        if url is None:
            raise StoryError(f"no model server runs for {workload}")
        payload = json.dumps({"up": up, **({} if up else {"seconds": 120})}).encode()
        try:
            status, body = request("POST", url.rstrip("/") + "/admin/dependency", payload,
                                   timeout=API_TIMEOUT)
        except OSError as exc:
            raise StoryError(f"{workload}: could not set its feature store: {exc}") from exc
        if status != 200:
            raise StoryError(f"{workload}: /admin/dependency answered {status}: {body!r}")

    def act_breaker(self) -> None:
        c = self.c
        c.say("")
        self._act("The feature store behind fraud v2 goes down: the circuit breaker.")
        stable = self.revs.fraud_good
        workload = f"fraud-r{stable}"
        gen = self.traffic["fraud"].gen
        c.say("  fraud's policy has a breaker (spec.breaker), read every 1s in any phase: the "
              f"5xx share of fraud's model traffic over {BREAKER_WINDOW} (while no user "
              "reaches the model: its feature store's health); above 0.2 for 2s it trips: one "
              f"route write sends every user to the Service {FALLBACK_SERVICE} (a rules-based "
              "model); healthy for 5s, it resets by itself. Not a rollback: no revision changes.")
        self.kubectl_shown("get", "modelrelease", "fraud")
        fallback_before = gen.stats.user_total(FALLBACK_SERVICE)

        def counts() -> str:
            return (f"user answers from {FALLBACK_SERVICE}: "
                    f"{gen.stats.user_total(FALLBACK_SERVICE) - fallback_before}, "
                    f"from {workload}: {gen.stats.user_total(workload)}")

        def breaker(state: str) -> Callable[[Mapping[str, Any]], bool]:
            return lambda b: (self._status(b).get("breaker") or {}).get("state") == state

        unexpected = self._unexpected(stable, "Progressing", "RollingBack", "RolledBack",
                                      "Failed")
        c.say(f"  The feature store goes down: every prediction of {workload} fails (500).")
        outage = datetime.now(UTC)
        self._fault(workload, up=False)
        self.revs.breaker_on = stable
        self.wait_release("fraud", "the breaker to trip", breaker("Tripped"), timeout=60,
                          bad=unexpected, extra=counts)
        self.kubectl_shown("get", "modelrelease", "fraud")
        self.wait_release(
            "fraud", f"users to get answers from {FALLBACK_SERVICE}",
            lambda _b: gen.stats.user_total(FALLBACK_SERVICE) - fallback_before >= 20,
            timeout=30, extra=counts)
        c.say(f"  Users get the fallback's answers ({counts()}); r{stable} is still the stable "
              "revision. The feature store comes back:")
        self._fault(workload, up=True)
        model_before = gen.stats.user_total(workload)
        closed = self.wait_release("fraud", "the breaker to reset by itself", breaker("Closed"),
                                   timeout=60, bad=unexpected, extra=counts)
        self.wait_release(
            "fraud", f"users to get answers from {workload} again",
            lambda _b: gen.stats.user_total(workload) - model_before >= 20, timeout=30,
            extra=counts)
        self.kubectl_shown("get", "modelrelease", "fraud")
        times = {t: parse_time(e.get("at")) for t in ("BreakerTripped", "FallbackInEffect",
                                                       "BreakerReset", "BreakerClosed")
                 for e in (self._status(closed).get("timeline") or [])[-12:]
                 if e.get("type") == t}
        trip, on_fallback = times.get("BreakerTripped"), times.get("FallbackInEffect")
        reset, back = times.get("BreakerReset"), times.get("BreakerClosed")
        if trip and on_fallback and reset and back:
            c.say(f"  The outage began at {outage:%H:%M:%S}; the breaker tripped "
                  f"{(trip - outage).total_seconds():.1f}s later (the {BREAKER_WINDOW} error "
                  f"share crossing 0.2, then held 2s); every user on the fallback (read back) "
                  f"{(on_fallback - trip).total_seconds():.1f}s after that; users were on the "
                  f"fallback for "
                  f"{(back - on_fallback).total_seconds():.0f}s; reset -> back on r{stable} "
                  f"(read back) in {(back - reset).total_seconds():.1f}s.")

    def act_fraud_bad(self) -> None:
        c = self.c
        c.say("")
        self._act("03:00. fraud v3 goes out on the same canary.")
        c.say(f"  {FRAUD.versions['v3'].note}")
        body = self.k.get_release(self.ns, "fraud") or {}
        stable = int((body.get("status") or {}).get("stableRevision") or 1)
        rev = self._apply_version(FRAUD, "v3")
        self.revs.fraud_bad = rev
        final = self.wait_release(
            "fraud", f"fraud v3 (r{rev}) to be rolled back to r{stable}",
            self._phase_is("RolledBack", stable), timeout=120,
            bad=self._unexpected(rev, "Promoted", "Failed", "AwaitingApproval"),
        )
        first_traffic = next(iter(entries(final, "StepStarted", rev)), None)
        decided = next(iter(entries(final, "RollbackDecided", rev)), None)
        back = next(iter(entries(final, "RolledBack", rev)), None)
        t0 = parse_time(first_traffic.get("at")) if first_traffic else None
        t1 = parse_time(back.get("at")) if back else None
        if decided is not None:
            c.say(f"  Rewind decided on its own: {tidy(str(decided.get('message')))}")
        if t0 and t1:
            good = "v2" if self.revs.fraud_good else "v1"
            c.say(f"  {good} (r{stable}) serves 100% again, {(t1 - t0).total_seconds():.1f}s "
                  "after v3 first got users; nobody was paged.")

    def kubectl_rewind(self, *args: str, who: str | None = None,
                       timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl rewind ARGS -n NS`` as ``who`` (a context of the people's
        kubeconfig; None: the sandbox admin) the way a user does: kubectl finds the
        kubectl-rewind plugin on PATH. Prints the command and its output, indented."""
        kubectl = self.env.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
        argv = ["rewind", *args, "-n", self.ns, *(["--context", who] if who else [])]
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": str(min(self.c.width, 120)),
               "KUBECONFIG": str(self.people if who else self.env["KUBECONFIG"]),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.c.say(f"  $ kubectl {' '.join(argv)}")
        try:
            done = subprocess.run([kubectl, *argv], capture_output=True, text=True, env=env,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StoryError(f"kubectl {' '.join(argv)}: {exc}") from exc
        for line in (done.stdout + done.stderr).rstrip().splitlines():
            self.c.say(f"    {line}".rstrip())
        if done.returncode != 0:
            self.c.say(f"    [exit {done.returncode}]")
        return done

    def act_chatbot(self) -> None:
        c = self.c
        c.say("")
        self._act("chatbot v2 goes out under an approval policy: two people must agree to a "
                  "rollback.")
        c.say(f"  {CHATBOT.versions['v2'].note}")
        c.say("  drift metric: PSI of the score histogram, candidate vs stable, in PromQL "
              "(max 0.25)")
        rev = self._apply_version(CHATBOT, "v2")
        self.revs.chatbot_bad = rev
        body = self.wait_release(
            "chatbot", f"chatbot v2 (r{rev}) to await approval",
            lambda b: (b.get("status") or {}).get("phase") == "AwaitingApproval",
            timeout=150, bad=self._unexpected(rev, "Promoted", "RolledBack", "Failed"),
        )
        pending = (body.get("status") or {}).get("pendingDecision") or {}
        alice, bob = (p.name for p in people.APPROVERS)
        editor = people.EDITOR.name
        c.say(f"  Rewind holds the traffic and asks two humans: {tidy(str(pending.get('reason')))}")
        c.say(f"  {alice} is paged and looks at the evidence:")
        self.kubectl_rewind("get", "chatbot", who=alice)
        c.say(f"  {editor} (ML team) may edit the release but holds no approval verb; "
              "she tries anyway:")
        self.refused = self.kubectl_rewind("approve", "chatbot", who=editor)
        if self.refused.returncode == 0:
            raise StoryError(f"{editor}'s approval was accepted; she holds no approval verb")
        c.say(f"  The demo plays the on-call engineers: {alice} approves in "
              f"{self.o.approve_delay:.0f}s, then {bob}.")
        self.pause(self.o.approve_delay)
        first = self.kubectl_rewind("approve", "chatbot", who=alice)
        if first.returncode != 0:
            raise StoryError(f"{alice}'s approval failed (exit {first.returncode})")
        second = self.kubectl_rewind("approve", "chatbot", "--timeout", "90", who=bob)
        if second.returncode != 0:
            raise StoryError(f"{bob}'s approval failed (exit {second.returncode})")
        self.wait_release("chatbot", f"chatbot v2 (r{rev}) to be rolled back",
                          self._phase_is("RolledBack", 1), timeout=60,
                          bad=self._unexpected(rev, "Promoted", "Failed"))
        c.say(f"  Approved by {alice} and {bob}, rolled back: chatbot v1 serves 100% again.")

    def act_shadow(self) -> None:
        c = self.c
        c.say("")
        self._act("recommender v2 is shadowed on Gateway API: its HTTPRoute mirrors 100% of "
              "requests to it (RequestMirror), users only ever get v1's answers.")
        c.say(f"  {RECOMMENDER.versions['v2'].note}")
        rev = self._apply_version(RECOMMENDER, "v2")
        self.revs.recommender_bad = rev
        gen = self.traffic["recommender"].gen
        workload = f"recommender-r{rev}"

        def counts() -> str:
            return (f"{workload}: {gen.stats.mirror_total(workload)} mirrored, "
                    f"{gen.stats.user_total(workload)} user answers")

        self.wait_release("recommender", f"recommender v2 (r{rev}) to be rejected",
                          self._phase_is("Failed", 1), timeout=120,
                          bad=self._unexpected(rev, "Promoted", "RolledBack", "AwaitingApproval"),
                          extra=counts)
        c.say(f"  Rejected before any user saw it ({counts()}).")

    def play(self) -> None:
        self.act_v1()
        self.pause(self.o.act_pause)
        if not self.o.quick:
            self.act_fraud_good()
            self.pause(self.o.act_pause)
            self.act_drill()
            self.pause(self.o.act_pause)
            self.act_drill_fails()
            self.pause(self.o.act_pause)
            self.act_breaker()
            self.pause(self.o.act_pause)
        self.act_fraud_bad()
        self.pause(self.o.act_pause)
        self.act_chatbot()
        if not self.o.quick:
            self.pause(self.o.act_pause)
            self.act_shadow()
        self.pause(self.o.act_pause)
        poison.act(self)
        self.poisoned = True

    # -- the outcome, from the API server ---------------------------------------------------

    def _routes(self, name: str) -> tuple[dict[int, int], int | None, int]:
        return self._routes_of(name, _model(name).route_kind)

    def _routes_of(self, name: str, kind: str) -> tuple[dict[int, int], int | None, int]:
        vs = self.k.get_virtual_service(self.ns, name, kind)
        if vs is None:
            return {}, None, 0
        routes = parse_routes(vs) if kind == "VirtualService" else parse_http_route(name, vs)
        return (
            {r: w for r, w in routes.weights.items() if w > 0},
            routes.mirror_revision,
            routes.mirror_percent,
        )

    def verify(self) -> list[Check]:
        checks: list[Check] = []

        def check(what: str, ok: bool, detail: str = "") -> None:
            checks.append(Check(what, ok, detail))

        def release_checks(name: str, phase: str, stable: int, outcomes: Mapping[int, str]) -> (
            Mapping[str, Any]
        ):
            body = self.k.get_release(self.ns, name) or {}
            st = body.get("status") or {}
            check(f"{name}: phase {phase}", st.get("phase") == phase, str(st.get("phase")))
            check(f"{name}: stableRevision {stable}", st.get("stableRevision") == stable,
                  str(st.get("stableRevision")))
            for rev, outcome in outcomes.items():
                got = history_outcome(body, rev)
                check(f"{name}: r{rev} outcome {outcome}", got == outcome, str(got))
            routes = self._routes(name)
            check(f"{name}: {_model(name).route_kind} sends 100% to r{stable}, no mirror",
                  routes == ({stable: 100}, None, 0), str(routes))
            return body

        r = self.revs
        if r.fraud_bad:
            stable = r.fraud_good or 1
            outcomes = {r.fraud_bad: "RolledBack"}
            if r.fraud_good:
                outcomes[r.fraud_good] = "Promoted"
            body = release_checks("fraud", "RolledBack", stable, outcomes)
            if r.fraud_good:
                good_fail = entries(body, "AnalysisFailed", r.fraud_good)
                steps = entries(body, "StepStarted", r.fraud_good)
                check(f"fraud: v2 (r{r.fraud_good}) passed both canary steps",
                      len(steps) == 2 and not good_fail and bool(
                          entries(body, "Promoted", r.fraud_good)),
                      f"{len(steps)} steps, {len(good_fail)} failed analyses")
            decided = entries(body, "RollbackDecided", r.fraud_bad)
            check(f"fraud: rollback of r{r.fraud_bad} decided from a metric breach",
                  any(re.search(r"(error-rate|p95-latency) \S+ > max", str(e.get("message")))
                      for e in decided), tidy(str(decided[0].get("message"))) if decided else "-")
            start = next(iter(entries(body, "StepStarted", r.fraud_bad)), None)
            end = next(iter(entries(body, "RolledBack", r.fraud_bad)), None)
            t0 = parse_time(start.get("at")) if start else None
            t1 = parse_time(end.get("at")) if end else None
            seconds = (t1 - t0).total_seconds() if t0 and t1 else None
            check(f"fraud: r{r.fraud_bad} rolled back within 30s of first user traffic",
                  seconds is not None and seconds <= 30.0,
                  f"{seconds:.1f}s" if seconds is not None else "-")
        if r.drill_target or r.breaker_on:
            self._verify_drills_and_breaker(check)
        if r.chatbot_bad:
            body = release_checks("chatbot", "RolledBack", 1, {r.chatbot_bad: "RolledBack"})
            asked = entries(body, "ApprovalRequested", r.chatbot_bad)
            check("chatbot: rollback waited for approval on the drift metric",
                  any("score-psi" in str(e.get("message")) for e in asked),
                  tidy(str(asked[0].get("message")))[:160] if asked else "-")
            approvers = [str(e.get("user")) for e in entries(body, "Approved", r.chatbot_bad)]
            want = [p.name for p in people.APPROVERS]
            check(f"chatbot: the rollback was approved by {' and '.join(want)}",
                  approvers == want, str(approvers))
            refused = self.refused
            check(f"chatbot: {people.EDITOR.name}'s approval was refused by the admission policy",
                  refused is not None and refused.returncode == 4
                  and f"user {people.EDITOR.name} may not approve-rollback" in refused.stderr,
                  f"exit {refused.returncode}" if refused is not None else "not tried")
        if r.recommender_bad:
            release_checks("recommender", "Failed", 1, {r.recommender_bad: "Failed"})
            gen = self.traffic["recommender"].gen
            workload = f"recommender-r{r.recommender_bad}"
            users, mirrored = gen.stats.user_total(workload), gen.stats.mirror_total(workload)
            check(f"recommender: {workload} never answered a user", users == 0, f"{users}")
            check(f"recommender: {workload} received mirrored traffic", mirrored > 0,
                  f"{mirrored}")
        if self.poisoned:
            for what, ok, detail in poison.checks(self):
                check(what, ok, detail)
        return checks

    def _verify_drills_and_breaker(self, check: Callable[..., None]) -> None:
        """The drill and breaker acts, from fraud's status (its timeline and lastDrill)."""
        r = self.revs
        body = self.k.get_release(self.ns, "fraud") or {}
        st = self._status(body)
        if r.drill_target:
            target = r.drill_target
            started = entries(body, "DrillStarted", target)
            passed = entries(body, "DrillPassed", target)
            check(f"fraud: a scheduled drill re-created r{target} from its snapshot and passed",
                  any("(schedule)" in str(e.get("message")) for e in started) and bool(passed)
                  and bool(st.get("lastSuccessfulDrillAt")),
                  f"{len(started)} started, {len(passed)} passed")
        if r.snapshot_deleted:
            last = st.get("lastDrill") or {}
            check(f"fraud: with r{r.drill_target}'s snapshot deleted, the last drill failed: "
                  "SnapshotMissing",
                  last.get("verdict") == "Failed" and last.get("failure") == "SnapshotMissing"
                  and last.get("target") == r.drill_target, str(last)[:200])
        if r.breaker_on:
            b = st.get("breaker") or {}
            kinds = [str(e.get("type")) for e in st.get("timeline") or []
                     if str(e.get("type")).startswith(("Breaker", "FallbackInEffect"))]
            check("fraud: the breaker tripped once, users were on the fallback (read back), it "
                  "reset by itself and is Closed",
                  b.get("state") == "Closed" and b.get("trips") == 1 and kinds == [
                      "BreakerTripped", "FallbackInEffect", "BreakerReset", "BreakerClosed"]
                  and any("the signal passed" in str(e.get("message"))
                          for e in entries(body, "BreakerReset", 0)
                          + entries(body, "BreakerReset", r.breaker_on)),
                  f"state {b.get('state')}, trips {b.get('trips')}, {kinds}")
            check(f"fraud: the breaker rolled nothing back (r{r.breaker_on} stayed stable)",
                  not entries(body, "RollbackStarted", r.breaker_on)
                  and history_outcome(body, r.breaker_on) == "Promoted",
                  str(history_outcome(body, r.breaker_on)))
            users = self.traffic["fraud"].gen.stats.user_total(FALLBACK_SERVICE)
            check(f"fraud: the fallback ({FALLBACK_SERVICE}) answered users", users > 0,
                  str(users))

    def report(self, checks: Sequence[Check]) -> None:
        c = self.c
        width = max(c.width, 120)
        c.say("")
        c.say("Timelines (status.timeline of each ModelRelease; +SEC from the demo's start):")
        for release in [m.release for m in self._models()] + self.extra_releases:
            body = self.k.get_release(self.ns, release)
            if body is not None:
                c.say("")
                c.say(timeline_table(release, body, self.started_at, width))
        c.say("")
        c.say("Checks against the API server:")
        for ch in checks:
            c.say(f"  [{'ok' if ch.ok else 'FAIL'}] {ch.what}"
                  + (f" ({ch.detail})" if ch.detail and not ch.ok else ""))
        if self.revs.chatbot_bad:
            self.quiet = True  # the runner's chatter would land inside the report
            c.say("")
            c.say("The post-mortem of the approved rollback, as Rewind writes it:")
            self.kubectl_rewind("report", "chatbot")
        stats = []
        for name, t in self.traffic.items():
            snap = t.gen.stats.snapshot()
            stats.append(f"{name} {snap['userTotal']} user + {snap['mirrorTotal']} mirrored")
        c.say("")
        c.say("Requests sent: " + "; ".join(stats))
        c.say(f"Objects stay in namespace {self.ns}: kubectl get mr,rp -n {self.ns} ; "
              "clean up with: make demo-down")


def down(env: Mapping[str, str], namespace: str, console: Console) -> int:
    """``--down``: stop leftover processes, delete the demo's objects and scrape targets."""
    demo = Demo(DemoOptions(namespace=namespace), env, console)
    for stopped in demo.kill_leftovers(including_demo=True):
        console.say(f"stopped {stopped}")
    demo.remove_stale_targets()
    with contextlib.suppress(FileNotFoundError, RuntimeError):
        for name in targets.list_targets(demo.targets_dir):
            if name.startswith(f"rewind-sim-{namespace}-"):
                targets.unregister_target(name, directory=demo.targets_dir)
    kubeconfig = env.get("KUBECONFIG", "")
    if kubeconfig and Path(kubeconfig).exists():
        kube = Kube(kubeconfig)
        try:
            kube.delete_demo_objects(namespace, timeout=60)
            console.say(f"deleted the demo's objects in namespace {namespace}")
        except Exception as exc:
            console.say(f"could not delete the demo's objects (is the sandbox up?): {exc}")
        finally:
            kube.close()
    shutil.rmtree(demo.state, ignore_errors=True)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rewind_demo.demo",
        description="The 3 AM incident on the local sandbox: canary, rollback drills, circuit "
        "breaker, automatic rollback, approval, shadow. Exit 0 when the story played as "
        "expected.",
    )
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    p.add_argument("--quick", action="store_true",
                   help="only the automatic rollback and the approval (about a minute)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    p.add_argument("--down", action="store_true",
                   help="stop leftover demo processes and delete the demo's objects")
    p.add_argument("--print-manifests", action="store_true",
                   help="print the demo's RolloutPolicies and ModelReleases as YAML and exit")
    return p


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if args.print_manifests:
        console.say(manifests_yaml(args.namespace))
        return EXIT_OK
    env = sandbox_env()
    if args.down:
        return down(env, args.namespace, console)
    missing = [k for k in ("KUBECONFIG", "PROMETHEUS_URL", "SANDBOX_TARGETS_DIR") if not env.get(k)]
    if missing:
        console.say(f"the sandbox is not up ({', '.join(missing)} unknown): run `make sandbox-up`"
                    " or `hack/sandbox up` first")
        return EXIT_SETUP
    options = DemoOptions(namespace=args.namespace, quick=args.quick, timeout=args.timeout)
    demo = Demo(options, env, console)
    code = EXIT_OK
    with _signals():
        try:
            demo.setup()
            try:
                demo.play()
            except StoryError as exc:
                console.say("")
                console.say(f"The story did not play as expected: {exc}")
                code = EXIT_STORY
            checks = demo.verify()
            demo.report(checks)
            if not all(ch.ok for ch in checks):
                code = EXIT_STORY
            minutes, seconds = divmod(int(demo.elapsed()), 60)
            console.say("")
            if code == EXIT_OK:
                console.say(f"The story played as expected in {minutes}m{seconds:02d}s.")
            else:
                console.say(f"FAILED after {minutes}m{seconds:02d}s; operator log: "
                            f"{demo.state / 'operator.log'}")
        except SetupError as exc:
            console.say(f"set-up failed: {exc}")
            code = EXIT_SETUP
        except KeyboardInterrupt:
            console.say("")
            console.say("interrupted: stopping the demo's processes")
            code = EXIT_INTERRUPTED
        except Exception as exc:  # report, clean up, exit non-zero: never leave processes
            import traceback

            console.say("".join(traceback.format_exception(exc)))
            console.say(f"the demo failed unexpectedly: {exc!r}")
            code = EXIT_STORY
        finally:
            demo.cleanup()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
