"""Crash anywhere: SIGKILL the operator at random moments while releases run every flow, and
check on every stored version of the objects that nothing unsafe ever happened.

Several ModelReleases (`--releases`, default 5) in their own namespace each cycle through
flows, picked so that every flow runs about as often:

  canary            three steps, analysis passing: Promoted
  canary-fail       analysis fails (from birth or at step 1): automatic rollback, RolledBack
  blue-green        preview, switch, post-switch: Promoted
  blue-green-fail   fails in preview (Failed: it never served users) or after the switch
                    (switched back: RolledBack)
  shadow-stop       mirrored traffic, then onSuccess Stop: the candidate is Retired
  shadow-canary     mirrored traffic, then a canary step shorter than the analysis
                    interval (it waits for its first round): Promoted
  approval-approve  a failed analysis waits for two approvers; the soak approves (and now
                    and then approves twice as the same user, which counts once): RolledBack
  approval-reject   a failed analysis waits; the metric recovers and the soak rejects:
                    Promoted
  approval-timeout  a failed analysis waits; nobody decides within 4 s: onTimeout
                    Rollback, RolledBack
  break-glass       `rewind.dev/rollback` while the candidate is in flight: RolledBack, or
                    Failed when it had not served users yet
  break-glass-promoted  `rewind.dev/rollback` on a promoted release: back to the previous
                    known-good revision, still warm or (half the time) once it was retired:
                    scaled up again, traffic moves once it is Available; RolledBack
  retry             a failed revision, then its metric recovers and `rewind.dev/retry=true`:
                    Promoted
  manual-gate       a canary's last step waits for `rewind.dev/promote=true`: Promoted

Analysis reads gauges the soak sets (`rewind_bench_error_rate{workload=...}`, scraped by the
sandbox Prometheus every second). Annotations are set with `kubectl annotate` together with
`<annotation>-by: soak-<n>` (the operator runs with --trust-actor-annotations, as with the
chart's admission policies), so each action has its own user; some are set while the
operator is down (the restart waits until they are written).

The operator (a real `rewind-operator` process) is killed with SIGKILL at random moments,
drawn from when its start-up handler ran (its /metrics answers: Kopf then starts watching
and reconciling; the seconds of Python imports before it write nothing): uniformly over the
next 15 s, or right after a status write, a status write that records a decision (a timeline
entry or a consumed annotation), or a route write (a watch sees the write and kills within
milliseconds); then it is restarted after a random 0.2-3 s. This goes on until `--kills`
kills, and until every flow had at least `--min-hits` kills land in it. No new flows start
after that; the ones in flight must reach their expected end within 240 s. Every wait is
bounded.

A watch records every stored version of the VirtualServices, Services, Deployments
and ModelReleases, and the invariants of `_soak_checks.py` are judged on them continuously
(findings printed as they come), and once more at the end on everything (the verdict):

  (1) every VirtualService version routes weights summing to 100, to existing revisions;
  (2) traffic never goes to a revision with no available pods;
  (3) no revision is promoted without its analysis;
  (4) no decision is lost or taken twice; every flow reaches its expected end; after each
      restart the operator reconciles every release again.

It prints kills (by moment, by flow, by phase), restarts and the time from a restart to the
first completed reconcile (the operator's /metrics shows a release's phase), flows completed,
each invariant's violations (all must be 0) and the wall time; it exits non-zero when an
invariant was violated or something did not finish.

    .venv/bin/python bench/bench_soak.py                 # 20 kills, about 5 minutes
    .venv/bin/python bench/bench_soak.py --kills 200     # the full soak, about 45 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    IMAGE,
    Gauges,
    Operator,
    Recorder,
    apply,
    custom_api,
    drop_namespace,
    free_port,
    fresh_namespace,
    kubectl,
    operator_metrics_text,
    percentile,
    sandbox_env,
    table,
    wait_for,
)
from _soak_checks import (
    DeploymentVersion,
    EntryCache,
    ReleaseVersion,
    RouteVersion,
    ServiceVersion,
    SoakAction,
    Violation,
    check_decisions,
    check_promotions,
    check_routes,
    check_traffic,
    deployment_version,
    release_version,
    route_version,
    service_version,
)

from rewind_demo import targets

NAMESPACE = "rewind-bench-soak"
HEALTHY, BROKEN = 0.0, 0.5
#: Seconds one flow may take, kills and restarts included.
FLOW_BOUND = 300.0
#: After the last kill, every flow in flight must end within this.
FINISH_BOUND = 240.0
#: A restart that lived this long after its start-up handler ran (its /metrics answers) must
#: have reconciled every release. Counted from there, as kill moments are: the Python
#: imports before it read and write nothing, and take from 3 s on a quiet machine to over
#: 30 s on a loaded one.
RESUME_BOUND = 30.0
#: Records younger than this are left to the next continuous check (a record of another
#: kind with a lower resourceVersion may still be on its way).
CHECK_MARGIN = 10.0
SETTLED = ("Promoted", "RolledBack", "Failed")
INVARIANTS = {
    1: "(1) weights sum to 100, only to existing revisions",
    2: "(2) traffic only to revisions with available pods",
    3: "(3) no promotion without its analysis",
    4: "(4) no decision lost or taken twice, flows end, operator resumes",
}


# -- policies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    name: str
    strategy: dict[str, Any]
    #: The final stage as status.currentStep counts it (stage 0 waits for Available),
    #: written out here rather than taken from the operator's own plan builder.
    final: int
    manual: bool = False
    approvers: int = 0
    interval: str = "1s"
    timeout: str = "1h"  # of an approval (then onTimeout: Rollback)


def _steps(*steps: tuple[int, str | None]) -> list[dict[str, Any]]:
    return [{"weight": w, "pause": {"duration": p} if p else {"manual": True}} for w, p in steps]


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("soak-canary", {"canary": {"steps": _steps((20, "2s"), (50, "2s"), (80, "2s"))}}, 3),
    Policy("soak-canary-long", {"canary": {"steps": _steps((20, "4s"), (50, "4s"))}}, 2),
    Policy("soak-manual", {"canary": {"steps": _steps((30, "2s"), (60, None))}}, 2, manual=True),
    Policy("soak-bluegreen", {"blueGreen": {"previewDuration": "2s", "autoSwitch": True,
                                            "postSwitchDuration": "6s",
                                            "keepOldColour": "3s"}}, 2),
    Policy("soak-shadow", {"shadow": {"mirrorPercent": 50, "duration": "3s",
                                      "onSuccess": {"action": "Stop"}}}, 1),
    # A step shorter than the analysis interval: it must still wait for its first round.
    Policy("soak-shadow-canary", {"shadow": {
        "mirrorPercent": 100, "duration": "2s",
        "onSuccess": {"action": "Canary", "canary": {"steps": _steps((50, "1s"))}}}}, 2,
        interval="2s"),
    Policy("soak-approval", {"canary": {"steps": _steps((30, "2s"), (60, "2s"))}}, 2,
           approvers=2),
    Policy("soak-approval-timeout", {"canary": {"steps": _steps((30, "2s"), (60, "2s"))}}, 2,
           approvers=1, timeout="4s"),
)}


def policy_manifest(p: Policy) -> dict[str, Any]:
    rollback: dict[str, Any] = {"mode": "approval" if p.approvers else "automatic",
                                "scaleDownDelay": "1s"}
    if p.approvers:
        rollback["approval"] = {"requiredApprovers": p.approvers, "timeout": p.timeout,
                                "onTimeout": "Rollback"}
    return {
        "apiVersion": "rewind.dev/v1alpha1",
        "kind": "RolloutPolicy",
        "metadata": {"name": p.name},
        "spec": {
            "strategy": p.strategy,
            "analysis": {
                "interval": p.interval,
                "failureLimit": 1,
                "noData": "Inconclusive",
                "metrics": [{
                    "name": "error-rate",
                    "query": 'max(rewind_bench_error_rate{workload="{{candidateWorkload}}"})',
                    "thresholds": {"max": 0.05},
                }],
            },
            "rollback": rollback,
            "progressDeadline": "5m",
            "keepPreviousWarm": "3s",
        },
    }


def model_spec(name: str, policy: str, seq: int) -> dict[str, Any]:
    """The parts of a ModelRelease spec one flow changes: a new model version per flow (its
    number ties the revision to the flow and its policy)."""
    return {
        "policyRef": {"name": policy},
        "model": {"name": name, "version": f"{seq}.0.0",
                  "artifactURI": f"s3://models/{name}/{seq}/model.onnx",
                  "artifactDigest": f"sha256:{seq:064x}", "format": "onnx"},
        "data": {"datasetRef": "s3://datasets/soak", "version": f"v{seq}"},
    }


def release_manifest(name: str, policy: str, seq: int) -> dict[str, Any]:
    spec = model_spec(name, policy, seq)
    spec.update(code={"image": IMAGE}, serving={"replicas": 1},
                traffic={"hosts": [f"{name}.example.com"]})
    return {"apiVersion": "rewind.dev/v1alpha1", "kind": "ModelRelease",
            "metadata": {"name": name}, "spec": spec}


def workload(release: str, revision: int) -> str:
    return f"{release}-r{revision}"


# -- what the watches saw -------------------------------------------------------------------


class Store:
    """Every stored version, compacted; wakes the lanes at each ModelRelease version and
    tells the killer about status and route writes."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.routes: list[RouteVersion] = []
        self.services: list[ServiceVersion] = []
        self.deployments: list[DeploymentVersion] = []
        self.releases: list[ReleaseVersion] = []
        self.arrived: dict[str, list[float]] = {k: [] for k in (
            "routes", "services", "deployments", "releases")}
        self.latest: dict[str, ReleaseVersion] = {}
        self.cache = EntryCache()
        self.on_write: Callable[[str], None] = lambda _what: None
        self.status_writes = 0
        self.route_writes = 0

    def hook(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        write: str | None = None
        with self.cond:
            if kind == "modelreleases":
                if event == "DELETED":
                    return
                record = release_version(obj, self.cache)
                before = self.latest.get(record.release)
                if before is not None and record.rv <= before.rv:
                    return  # a re-list delivers what we have
                if before is not None and before.status_hash != record.status_hash:
                    self.status_writes += 1
                    # A transition: the write records a decision (a new timeline entry or
                    # a consumed annotation), not only an analysis round.
                    moved = (record.timeline[-1:] != before.timeline[-1:]
                             or record.last_consumed != before.last_consumed)
                    write = "transition" if moved else "status"
                self.latest[record.release] = record
                self.releases.append(record)
                self.arrived["releases"].append(now)
                self.cond.notify_all()
            elif kind == "virtualservices":
                if event == "DELETED":
                    return
                route = route_version(obj)
                if event != "ADDED" or self.routes:
                    self.route_writes += 1
                    write = "route"
                self.routes.append(route)
                self.arrived["routes"].append(now)
            elif kind == "services":
                service = service_version(obj, deleted=event == "DELETED")
                if service is not None:
                    self.services.append(service)
                    self.arrived["services"].append(now)
            else:
                deployment = deployment_version(obj, deleted=event == "DELETED")
                if deployment is not None:
                    self.deployments.append(deployment)
                    self.arrived["deployments"].append(now)
        if write is not None:
            self.on_write(write)

    def snapshot(self, before: float | None = None) -> tuple[list[RouteVersion],
                                                             list[ServiceVersion],
                                                             list[DeploymentVersion],
                                                             list[ReleaseVersion]]:
        """The records that arrived before ``before`` (None: all of them)."""
        with self.cond:
            def cut(name: str, records: list[Any]) -> list[Any]:
                if before is None:
                    return list(records)
                arrived = self.arrived[name]
                n = len(arrived)
                while n and arrived[n - 1] > before:
                    n -= 1
                return records[:n]

            return (cut("routes", self.routes), cut("services", self.services),
                    cut("deployments", self.deployments), cut("releases", self.releases))


# -- the operator and its killer ------------------------------------------------------------


@dataclass
class Kill:
    at: float
    how: str  # "uniform", "status write", "route write", "timer" (the write never came)
    uptime: float
    flows: tuple[str, ...]
    phases: tuple[str, ...]


class Killer:
    """Runs the operator, kills it (also from a watch thread, right after a write), and
    holds it down while a lane writes an annotation that must land while it is down."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.lock = threading.Condition()
        self.operator: Operator | None = None
        self.port = 0
        self.started = 0.0
        self.armed: str | None = None
        self.arm_at = 0.0
        self.fired = threading.Event()
        self.fired_by = ""
        self.holders = 0
        self.down = threading.Event()
        self.down.set()
        #: No more kills: nobody waits for the operator to go down.
        self.final = False

    def start(self) -> None:
        with self.lock:
            while self.holders:
                if not self.lock.wait(20):
                    break  # never hold the operator down for good
            self.port = free_port()
            self.operator = Operator(self.env, NAMESPACE, self.log, extra=[
                "--metrics-port", str(self.port), "--trust-actor-annotations"])
            self.started = time.monotonic()
            self.fired.clear()
            self.armed = None
            self.down.clear()

    def arm(self, what: str, at: float) -> None:
        with self.lock:
            self.armed, self.arm_at = what, at

    def on_write(self, what: str) -> None:
        """From a watch thread: kill now if armed for this kind of write ("route",
        "status", or "transition": a status write that records a decision; one armed for
        "status" takes any status write)."""
        with self.lock:
            wanted = self.armed == what or (self.armed == "status" and what == "transition")
            if (not wanted or time.monotonic() < self.arm_at or self.operator is None
                    or self.fired.is_set()):
                return
            self.operator.proc.kill()
            self.fired_by = f"{what} write"
            self.armed = None
            self.fired.set()

    def kill(self) -> None:
        with self.lock:
            operator, self.operator = self.operator, None
            self.armed = None
            self.down.set()
        if operator is not None:
            operator.kill()

    def stop(self) -> None:
        with self.lock:
            operator, self.operator = self.operator, None
            self.down.set()
        if operator is not None:
            operator.stop()

    @contextlib.contextmanager
    def held_down(self, timeout: float) -> Iterator[bool]:
        """Wait (bounded) until the operator is down and keep it down inside the block;
        yields False when it did not go down in time (the block then runs anyway)."""
        deadline = time.monotonic() + timeout
        held = False
        with self.lock:
            while True:
                if self.operator is None:
                    self.holders += 1
                    held = True
                    break
                left = deadline - time.monotonic()
                if left <= 0 or self.final:
                    break
                self.lock.wait(min(left, 0.5))
        try:
            yield held
        finally:
            if held:
                with self.lock:
                    self.holders -= 1
                    self.lock.notify_all()


# -- flows ------------------------------------------------------------------------------------


class FlowStuckError(Exception):
    """A bounded wait ran out: the message says what did not happen."""


class Soak:
    def __init__(self, env: dict[str, str], gauges: Gauges, store: Store, killer: Killer,
                 rng: random.Random) -> None:
        self.env = env
        self.api = custom_api()
        self.gauges = gauges
        self.store = store
        self.killer = killer
        self.rng = rng
        self.lock = threading.Lock()
        self.seq = itertools.count(100)
        self.models: dict[str, str] = {}  # modelVersion -> policy name
        self.actions: list[SoakAction] = []
        self.set_while_down = 0
        self.completed: Counter[str] = Counter()
        self.started: Counter[str] = Counter()
        self.failures: list[Violation] = []
        self.no_new_flows = threading.Event()
        self.killing_over = threading.Event()

    def next_seq(self) -> int:
        with self.lock:
            return next(self.seq)

    def policy_of(self, model_version: str) -> Policy | None:
        name = self.models.get(model_version)
        return POLICIES.get(name) if name else None

    def final_stage(self, _release: str, model_version: str) -> tuple[int, bool] | None:
        policy = self.policy_of(model_version)
        return None if policy is None else (policy.final, policy.manual)

    def required_approvers(self, _release: str, model_version: str) -> int:
        policy = self.policy_of(model_version)
        return 0 if policy is None else policy.approvers

    def fail(self, message: str) -> None:
        print(f"[soak] FAILED: {message}", file=sys.stderr, flush=True)
        with self.lock:
            self.failures.append(Violation(4, f"flow:{len(self.failures)}", message))


def previous_known_good(v: ReleaseVersion) -> int | None:
    """As the operator picks a break-glass target in Promoted (docs/design.md)."""
    good = [r for r, outcome, _, promoted in v.history
            if promoted and outcome in ("Promoted", "Retired") and r != v.stable]
    return max(good) if good else None


class Lane(threading.Thread):
    """One ModelRelease running one flow after another."""

    def __init__(self, soak: Soak, name: str) -> None:
        super().__init__(daemon=True, name=f"lane-{name}")
        self.soak = soak
        self.release = name
        self.flow: str | None = None
        self.deadline = 0.0
        self.done = threading.Event()

    # -- reading ------------------------------------------------------------------------

    def latest(self) -> ReleaseVersion:
        with self.soak.store.cond:
            return self.soak.store.latest[self.release]

    def wait(self, what: str, check: Callable[[ReleaseVersion], bool]) -> ReleaseVersion:
        store = self.soak.store
        with store.cond:
            while True:
                v = store.latest.get(self.release)
                if v is not None and check(v):
                    return v
                left = self.deadline - time.monotonic()
                if left <= 0:
                    state = f"phase {v.phase}: {v.message[:300]}" if v else "never seen"
                    raise FlowStuckError(f"{self.release} ({self.flow}): {what} not reached within "
                                    f"{FLOW_BOUND:.0f}s of the flow's start ({state})")
                store.cond.wait(min(left, 1.0))

    # -- writing ------------------------------------------------------------------------

    def start_revision(self, policy: str, value: float) -> int:
        """A new spec (a new model version): its revision, once the status names it."""
        before = self.latest()
        predicted = 1 + max([before.current, before.candidate, before.stable,
                             *(r for r, _, _, _ in before.history)])
        seq = self.soak.next_seq()
        version = f"{seq}.0.0"
        self.soak.models[version] = policy
        self.soak.gauges.set(workload(self.release, predicted), value)
        self.soak.api.patch_namespaced_custom_object(
            "rewind.dev", "v1alpha1", NAMESPACE, "modelreleases", self.release,
            {"spec": model_spec(self.release, policy, seq)},
            _content_type="application/merge-patch+json", _request_timeout=30)
        v = self.wait(f"a revision for model {version}",
                      lambda v: any(m == version for _, _, m, _ in v.history))
        revision = next(r for r, _, m, _ in v.history if m == version)
        if revision != predicted:
            self.soak.gauges.set(workload(self.release, revision), value)
        return revision

    def set_metric(self, revision: int, value: float) -> None:
        """Set the gauge and wait until Prometheus answers with it (bounded)."""
        name = workload(self.release, revision)
        self.soak.gauges.set(name, value)
        promql = f'max(rewind_bench_error_rate{{workload="{name}"}})'

        def visible() -> bool:
            with contextlib.suppress(Exception):
                result = targets.query(self.soak.env["PROMETHEUS_URL"], promql)
                return bool(result) and float(result[0]["value"][1]) == value
            return False

        try:
            wait_for(f"Prometheus to show {name} = {value}", visible, 30)
        except TimeoutError as err:
            raise FlowStuckError(str(err)) from err

    def annotate(self, action: str, value: str, types: set[str], *, down: float = 0.0,
                 user: str | None = None) -> str:
        """``kubectl annotate`` one action with its own user; with probability ``down`` it is
        written while the operator is down. Waits first until the previous action
        annotation is gone (consumed), so none overwrites another."""
        self.wait("previous action annotations removed", lambda v: not v.annotations)
        user = user or f"soak-{self.soak.next_seq()}"
        key = f"rewind.dev/{action}"
        args = ["annotate", "--request-timeout=30s", "-n", NAMESPACE,
                f"modelrelease/{self.release}", "--overwrite",
                f"{key}={value}", f"{key}-by={user}"]
        with self.soak.lock:
            self.soak.actions.append(SoakAction(self.release, user, key, frozenset(types)))
        wanted_down = not self.soak.killing_over.is_set() and self.soak.rng.random() < down
        if wanted_down:
            with self.soak.killer.held_down(60) as held:
                kubectl(self.soak.env, *args)
            if held:
                with self.soak.lock:
                    self.soak.set_while_down += 1
        else:
            kubectl(self.soak.env, *args)
        return user

    def acted(self, user: str, what: str) -> ReleaseVersion:
        return self.wait(f"{what} by {user} recorded",
                         lambda v: any(e.user == user for e in v.timeline))

    # -- expected ends --------------------------------------------------------------------

    def promoted(self, n: int) -> None:
        self.wait(f"r{n} Promoted", lambda v: v.phase == "Promoted" and v.stable == n
                  and v.outcome(n) == "Promoted")

    def rolled_back(self, n: int, stable: int) -> None:
        self.wait(f"r{n} RolledBack to r{stable}", lambda v: v.phase == "RolledBack"
                  and v.stable == stable and v.outcome(n) == "RolledBack")

    def ended(self, n: int, stable: int, phases: tuple[str, ...]) -> None:
        self.wait(f"r{n} {' or '.join(phases)} with r{stable} stable",
                  lambda v: v.phase in phases and v.stable == stable
                  and v.outcome(n) in phases)

    def at_step(self, n: int, step: int) -> ReleaseVersion:
        return self.wait(f"r{n} at stage {step}", lambda v: (
            v.candidate == n and v.step >= step and v.phase in ("Progressing", "Paused")
            and v.step_started is not None) or v.phase in SETTLED)

    # -- the flows ------------------------------------------------------------------------

    def flow_canary(self) -> None:
        self.promoted(self.start_revision("soak-canary", HEALTHY))

    def flow_canary_fail(self) -> None:
        stable = self.latest().stable
        birth = self.soak.rng.random() < 0.5
        n = self.start_revision("soak-canary", BROKEN if birth else HEALTHY)
        if not birth:
            self.at_step(n, 1)
            self.soak.gauges.set(workload(self.release, n), BROKEN)
        self.rolled_back(n, stable)

    def flow_blue_green(self) -> None:
        self.promoted(self.start_revision("soak-bluegreen", HEALTHY))

    def flow_blue_green_fail(self) -> None:
        stable = self.latest().stable
        if self.soak.rng.random() < 0.5:  # fails in preview: never served users
            n = self.start_revision("soak-bluegreen", BROKEN)
            self.ended(n, stable, ("Failed",))
            return
        n = self.start_revision("soak-bluegreen", HEALTHY)
        self.at_step(n, 2)  # switched: 100% on the candidate, the old colour warm
        self.soak.gauges.set(workload(self.release, n), BROKEN)
        self.rolled_back(n, stable)

    def flow_shadow_stop(self) -> None:
        stable = self.latest().stable
        n = self.start_revision("soak-shadow", HEALTHY)
        self.wait(f"r{n} Retired after its shadow", lambda v: v.phase == "Promoted"
                  and v.stable == stable and v.outcome(n) == "Retired")

    def flow_shadow_canary(self) -> None:
        self.promoted(self.start_revision("soak-shadow-canary", HEALTHY))

    def flow_approval_approve(self) -> None:
        stable = self.latest().stable
        n = self.start_revision("soak-approval", BROKEN)
        self.wait(f"r{n} AwaitingApproval", lambda v: v.phase == "AwaitingApproval"
                  and v.candidate == n)
        first = self.annotate("approve-rollback", "true", {"Approved"}, down=0.5)
        self.acted(first, "the first approval")
        if self.soak.rng.random() < 0.5:  # the same person again: counts once
            self.annotate("approve-rollback", "True", {"ActionIgnored"}, down=0.3, user=first)
            self.wait(f"the second approval by {first} recorded", lambda v: sum(
                1 for e in v.timeline if e.user == first) >= 2)
        self.annotate("approve-rollback", "true", {"Approved"}, down=0.5)
        self.rolled_back(n, stable)

    def flow_approval_timeout(self) -> None:
        stable = self.latest().stable
        n = self.start_revision("soak-approval-timeout", BROKEN)
        self.rolled_back(n, stable)

    def flow_approval_reject(self) -> None:
        n = self.start_revision("soak-approval", BROKEN)
        for _ in range(3):
            v = self.wait(f"r{n} AwaitingApproval (or Promoted)", lambda v: (
                v.phase == "AwaitingApproval" and v.candidate == n) or (
                v.phase == "Promoted" and v.stable == n))
            if v.phase == "Promoted":
                break
            self.set_metric(n, HEALTHY)
            user = self.annotate("reject-rollback", f"false alarm {n}", {"Rejected"}, down=0.3)
            self.acted(user, "the rejection")
            # Promoted, or (if a round failed before the metric recovered) asked again.
            self.wait(f"r{n} resumed after the rejection", lambda v: v.phase != (
                "AwaitingApproval") or (bool(v.timeline) and v.timeline[-1].type == (
                    "ApprovalRequested") and v.timeline[-1].revision == n))
        self.promoted(n)

    def flow_break_glass(self) -> None:
        stable = self.latest().stable
        n = self.start_revision("soak-canary-long", HEALTHY)
        step = self.soak.rng.choice((0, 1, 2))
        if step:
            self.at_step(n, step)
        self.annotate("rollback", f"soak: break glass on r{n}", {"BreakGlassRollback"},
                      down=0.25)
        self.ended(n, stable, ("RolledBack", "Failed"))

    def flow_break_glass_promoted(self) -> None:
        v = self.latest()
        target = previous_known_good(v)
        assert target is not None and v.phase == "Promoted"
        if self.soak.rng.random() < 0.5:
            # Once the target is retired (scaled to zero): it is re-created, and traffic
            # must wait for it to be Available.
            v = self.wait(f"r{target} retired", lambda v: v.outcome(target) == "Retired")
        self.annotate("rollback", f"soak: undo r{v.stable}", {"BreakGlassRollback"}, down=0.25)
        self.rolled_back(v.stable, target)

    def flow_retry(self) -> None:
        stable = self.latest().stable
        n = self.start_revision("soak-canary", BROKEN)
        self.rolled_back(n, stable)
        self.set_metric(n, HEALTHY)
        self.annotate("retry", "true", {"Retry"}, down=0.25)
        self.promoted(n)

    def flow_manual_gate(self) -> None:
        n = self.start_revision("soak-manual", HEALTHY)
        self.wait(f"r{n} paused at its manual gate", lambda v: v.phase == "Paused"
                  and v.candidate == n and v.step == 2 and v.step_started is not None)
        self.annotate("promote", "true", {"PromoteRequested"}, down=0.25)
        self.promoted(n)

    # -- the loop -------------------------------------------------------------------------

    def eligible(self) -> list[str]:
        v = self.latest()
        out = [f for f in FLOWS if f != "break-glass-promoted"]
        if v.phase == "Promoted" and previous_known_good(v) is not None:
            out.append("break-glass-promoted")
        return out

    def run(self) -> None:
        try:
            while not self.soak.no_new_flows.is_set():
                with self.soak.lock:
                    choices = self.eligible()
                    fewest = min(self.soak.started[f] for f in choices)
                    flow = self.soak.rng.choice(
                        [f for f in choices if self.soak.started[f] == fewest])
                    self.soak.started[flow] += 1
                self.flow = flow
                self.deadline = time.monotonic() + FLOW_BOUND
                try:
                    getattr(self, "flow_" + flow.replace("-", "_"))()
                except FlowStuckError as err:
                    self.soak.fail(str(err))
                    return  # this release may be stuck: stop using it
                except Exception as err:
                    self.soak.fail(f"{self.release} ({flow}): {type(err).__name__}: {err}")
                    return
                with self.soak.lock:
                    self.soak.completed[flow] += 1
                self.flow = None
        finally:
            self.flow = None
            self.done.set()


FLOWS = ("canary", "canary-fail", "blue-green", "blue-green-fail", "shadow-stop",
         "shadow-canary", "approval-approve", "approval-reject", "approval-timeout",
         "break-glass", "break-glass-promoted", "retry", "manual-gate")


# -- checks -----------------------------------------------------------------------------------


class Checker(threading.Thread):
    """Judges the invariants on what the watches saw so far, every 20 s and after each
    restart; prints new findings at once (the verdict is the final check on everything)."""

    def __init__(self, soak: Soak) -> None:
        super().__init__(daemon=True, name="checker")
        self.soak = soak
        self.found: dict[str, Violation] = {}
        self.poke = threading.Event()
        self.stopping = threading.Event()
        self.runs = 0
        self.exemptions = 0

    def judge(self, before: float | None) -> dict[str, Violation]:
        routes, services, deployments, releases = self.soak.store.snapshot(before)
        with self.soak.lock:
            actions = list(self.soak.actions)
        found: list[Violation] = []
        found += check_routes(routes, services, deployments, releases)
        traffic = check_traffic(routes, deployments, releases)
        self.exemptions = traffic.exemptions
        found += traffic.violations
        found += check_promotions(releases, self.soak.final_stage)
        if before is not None:
            # Only actions old enough to have been acted on are judged before the end.
            actions = []
        found += check_decisions(releases, actions, self.soak.required_approvers)
        return {v.key: v for v in found}

    def run(self) -> None:
        while not self.stopping.is_set():
            self.poke.wait(20)
            self.poke.clear()
            if self.stopping.is_set():
                return
            for key, violation in self.judge(time.monotonic() - CHECK_MARGIN).items():
                if key not in self.found:
                    self.found[key] = violation
                    print(f"[soak] violation {violation.invariant}: {violation.message}",
                          file=sys.stderr, flush=True)
            self.runs += 1


# -- the kill loop ------------------------------------------------------------------------------

RELEASE_RE = re.compile(r'^rewind_release_phase\{[^}]*release="([^"]+)"', re.M)


@dataclass
class Restart:
    started: float
    metrics_up: float | None = None  # seconds after the start: imports and Kopf's start-up
    first_reconcile: float | None = None
    all_reconciled: float | None = None
    uptime: float = 0.0


#: The operator's start-up handler must have run (its /metrics answers) within this.
STARTUP_BOUND = 60.0


def run_operator_once(killer: Killer, names: list[str], rng: random.Random,
                      restart: Restart) -> str:
    """Let the operator run until the kill this round chose; returns how it was killed.

    The moment is drawn from when the operator's start-up handler has run (its /metrics
    answers; Kopf then starts its watches and the first reconciles): the seconds of Python
    imports before it write nothing. Uniformly over the next 15 s; or, armed 0-8 s in, right
    after the next status write, status write recording a decision, or route write (a
    "timer" kill 30 s after arming if that write never comes)."""
    roll = rng.random()
    how = ("uniform" if roll < 0.35 else "status" if roll < 0.55
           else "transition" if roll < 0.75 else "route")
    kill_at: float | None = None
    fallback = restart.started + STARTUP_BOUND
    seen: set[str] = set()
    next_poll = 0.0
    while True:
        t = time.monotonic()
        if killer.fired.is_set():
            return killer.fired_by
        if kill_at is not None and t >= kill_at:
            return "uniform"
        if t >= fallback:
            return "timer" if restart.metrics_up is not None else "start-up timeout"
        if restart.all_reconciled is None and t >= next_poll:
            next_poll = t + 0.1
            text = operator_metrics_text(killer.port, timeout=0.5)
            if text and restart.metrics_up is None:
                t = time.monotonic()
                restart.metrics_up = t - restart.started
                if how == "uniform":
                    kill_at = t + rng.uniform(0.0, 15.0)
                    fallback = kill_at + 1.0
                else:
                    arm_at = t + rng.uniform(0.0, 8.0)
                    killer.arm(how, arm_at)
                    fallback = arm_at + 30.0
            if text:
                seen.update(RELEASE_RE.findall(text))
                if seen and restart.first_reconcile is None:
                    restart.first_reconcile = time.monotonic() - restart.started
                if set(names) <= seen:
                    restart.all_reconciled = time.monotonic() - restart.started
        killer.fired.wait(0.02)


def kill_loop(args: argparse.Namespace, soak: Soak, killer: Killer, lanes: list[Lane],
              checker: Checker, kills: list[Kill], restarts: list[Restart],
              deadline: float) -> str | None:
    """Kill and restart until the targets are met; returns why it could not finish, if so."""
    rng = soak.rng
    names = [lane.release for lane in lanes]
    while True:
        hits = Counter(f for k in kills for f in k.flows)
        enough = len(kills) >= args.kills and all(hits[f] >= args.min_hits for f in FLOWS)
        if enough:
            return None
        if time.monotonic() > deadline:
            short = [f"{f} ({hits[f]})" for f in FLOWS if hits[f] < args.min_hits]
            return (f"only {len(kills)} kills (of {args.kills}) in {args.max_minutes:g} min"
                    + (f"; flows with fewer than {args.min_hits} kills: {', '.join(short)}"
                       if short else ""))
        if all(lane.done.is_set() for lane in lanes):
            return "every release stopped (see the failures above)"
        restart = Restart(started=time.monotonic())
        killer.start()
        restarts.append(restart)
        checker.poke.set()
        how = run_operator_once(killer, names, rng, restart)
        restart.uptime = time.monotonic() - restart.started
        flows = tuple(lane.flow for lane in lanes if lane.flow)
        with soak.store.cond:
            phases = tuple(v.phase for v in soak.store.latest.values())
        killer.kill()
        kills.append(Kill(time.monotonic(), how, restart.uptime, flows, phases))
        if len(kills) % 10 == 0:
            print(f"[soak] {len(kills)} kills, flows completed "
                  f"{sum(soak.completed.values())}", file=sys.stderr, flush=True)
        if how == "start-up timeout":
            soak.fail(f"the operator started at kill {len(kills)} did not answer on /metrics "
                      f"within {STARTUP_BOUND:.0f}s")
        serving = restart.uptime - (restart.metrics_up or 0.0)
        if (restart.metrics_up is not None and serving >= RESUME_BOUND
                and restart.all_reconciled is None):
            soak.fail(f"the operator started at kill {len(kills)} ran {serving:.0f}s after its "
                      f"start-up handler ({restart.uptime:.0f}s in all) without reconciling "
                      "every release")
        delay = rng.uniform(0.2, 3.0)
        time.sleep(delay)


# -- main ---------------------------------------------------------------------------------------


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (f"n={len(values)} median {statistics.median(values):.2f}s, "
            f"p90 {percentile(values, 90):.2f}s, p99 {percentile(values, 99):.2f}s, "
            f"max {max(values):.2f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs at least (default 20)")
    parser.add_argument("--releases", type=int, default=5, help="releases at once (default 5)")
    parser.add_argument("--min-hits", type=int, default=None,
                        help="kills that must land in every flow (default: kills / 20, >= 1)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="give up after this long (default: 15 + kills / 3)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if args.min_hits is None:
        args.min_hits = max(1, args.kills // 20)
    if args.max_minutes is None:
        args.max_minutes = 15 + args.kills / 3
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    began = time.monotonic()
    env = sandbox_env()
    fresh_namespace(env, NAMESPACE)
    log = Path(tempfile.gettempdir()) / "rewind-bench-soak-operator.log"
    log.unlink(missing_ok=True)
    gauges = Gauges(env, "bench-soak")
    store = Store()
    killer = Killer(env, log)
    store.on_write = killer.on_write
    soak = Soak(env, gauges, store, killer, rng)
    names = [f"soak-{i}" for i in range(args.releases)]
    kills: list[Kill] = []
    restarts: list[Restart] = []
    unfinished: list[str] = []
    checker = Checker(soak)
    recorder = Recorder(NAMESPACE, store.hook, kinds=(
        "virtualservices", "services", "deployments", "modelreleases"))
    lanes: list[Lane] = []
    try:
        apply(env, NAMESPACE, *(policy_manifest(p) for p in POLICIES.values()))
        with recorder:
            killer.start()
            for name in names:
                seq = soak.next_seq()
                soak.models[f"{seq}.0.0"] = "soak-canary"
                gauges.set(workload(name, 1), HEALTHY)
                soak.api.create_namespaced_custom_object(
                    "rewind.dev", "v1alpha1", NAMESPACE, "modelreleases",
                    release_manifest(name, "soak-canary", seq), _request_timeout=30)
            wait_for("every release's r1 promoted", lambda: all(
                (v := store.latest.get(n)) is not None and v.phase == "Promoted"
                and v.stable == 1 for n in names), 180)
            killer.kill()  # the set-up's operator; kills are counted from here
            print(f"[soak] seed {seed}: {len(names)} releases promoted r1; killing the operator "
                  f"at least {args.kills} times", file=sys.stderr, flush=True)
            lanes = [Lane(soak, name) for name in names]
            for lane in lanes:
                lane.start()
            checker.start()
            deadline = began + args.max_minutes * 60
            why = kill_loop(args, soak, killer, lanes, checker, kills, restarts, deadline)
            if why:
                unfinished.append(why)
            soak.no_new_flows.set()
            soak.killing_over.set()
            with killer.lock:
                killer.final = True
                killer.lock.notify_all()
            last_kill = time.monotonic()
            restart = Restart(started=last_kill)
            killer.start()
            restarts.append(restart)
            end = last_kill + FINISH_BOUND
            for lane in lanes:
                if not lane.done.wait(max(0.0, end - time.monotonic())):
                    unfinished.append(f"{lane.release} ({lane.flow}) did not end within "
                                      f"{FINISH_BOUND:.0f}s after the last kill")
            finished_in = time.monotonic() - last_kill
            # Every consumed annotation removed, and its removal seen (the ledger keeps the
            # entries seen gone, bounded: that is how a value that comes back is known).
            try:
                wait_for("annotations removed and seen gone", lambda: all(
                    not store.latest[n].annotations and not store.latest[n].pending
                    for n in names), 30)
            except TimeoutError:
                left = {n: (store.latest[n].annotations, store.latest[n].pending)
                        for n in names}
                soak.fail(f"action annotations or ledger entries not seen gone at the end: {left}")
            checker.stopping.set()
            checker.poke.set()
            time.sleep(2)  # the last versions reach the watches
        killer.stop()
        judged = checker.judge(None)
    finally:
        killer.stop()
        gauges.close()
        drop_namespace(env, NAMESPACE)
    wall = time.monotonic() - began

    violations: dict[int, list[Violation]] = {i: [] for i in INVARIANTS}
    for v in [*judged.values(), *soak.failures]:
        violations[v.invariant].append(v)
    for v in [*judged.values(), *soak.failures]:
        print(f"[soak] violation {v.invariant}: {v.message}", file=sys.stderr)
    for why in unfinished:
        print(f"[soak] did not finish: {why}", file=sys.stderr)

    hits = Counter(f for k in kills for f in k.flows)
    by_how = Counter(k.how for k in kills)
    by_phase = Counter(p for k in kills for p in k.phases)
    up = [r.metrics_up for r in restarts if r.metrics_up is not None]
    first = [r.first_reconcile for r in restarts if r.first_reconcile is not None]
    every = [r.all_reconciled for r in restarts if r.all_reconciled is not None]
    early = [r.uptime for r in restarts[:len(kills)] if r.all_reconciled is None]
    rows: list[tuple[str, str]] = [
        ("seed", str(seed)),
        ("kills (SIGKILL)", f"{len(kills)}: uniform over 15 s of uptime {by_how['uniform']}, "
         "right after "
         f"a status write {by_how['status write'] + by_how['transition write']} (recording a "
         f"decision: {by_how['transition write']}), right after a route write "
         f"{by_how['route write']}, timer (the awaited write never came) {by_how['timer']}"),
        ("kills before the first reconcile", str(sum(
            1 for r in restarts[:len(kills)] if r.first_reconcile is None))),
        ("restarts", str(len(kills))),
        ("restart to the operator's /metrics up (imports, Kopf start-up)", summary(up)),
        ("restart to first reconcile", summary(first)),
        ("restart to every release reconciled", summary(every)),
        ("restarts killed before reconciling every release", f"{len(early)}" + (
            f" (they had run at most {max(early):.1f}s)" if early else "")),
        ("uptime between kills", summary([k.uptime for k in kills])),
        ("releases at once", str(len(names))),
        ("flows completed", f"{sum(soak.completed.values())} of {sum(soak.started.values())} "
         "started"),
    ]
    for flow in FLOWS:
        rows.append((f"  {flow}", f"completed {soak.completed[flow]}, kills landed in it "
                     f"{hits[flow]}"))
    rows.append(("kills by phase (per release)", ", ".join(
        f"{p} {n}" for p, n in by_phase.most_common())))
    rows.append(("annotations set (kubectl)", f"{len(soak.actions)}, of which "
                 f"{soak.set_while_down} while the operator was down"))
    rows.append(("versions recorded", f"VirtualService {len(store.routes)}, Service "
                 f"{len(store.services)}, Deployment {len(store.deployments)}, ModelRelease "
                 f"{len(store.releases)} (status writes {store.status_writes}, route writes "
                 f"{store.route_writes}); watch re-lists {recorder.relists}"))
    for i, title in INVARIANTS.items():
        rows.append((f"violations {title}", str(len(violations[i]))))
    rows.append(("  stable kept its traffic without pods (exempt)", str(checker.exemptions)))
    rows.append(("continuous checks run", str(checker.runs)))
    rows.append(("after the last kill, flows ended in", f"{finished_in:.1f}s (bound "
                 f"{FINISH_BOUND:.0f}s)"))
    rows.append(("wall time", f"{wall / 60:.1f} min"))
    rows.append(("operator log", str(log)))
    table("Crash soak: SIGKILL anywhere (sandbox, operator as a local process)", rows)
    failed = any(violations.values()) or unfinished or recorder.relists
    if recorder.relists:
        print("[soak] a watch had to re-list: versions in between were not judged",
              file=sys.stderr)
    print(json.dumps({"ok": not failed}), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
