"""Builders and a small simulated cluster for the engine tests.

``World`` plays the Kopf handler and the cluster: it asks ``analysis_due``, feeds a round of
measurements when due, hands pending annotations to ``decide``, applies the returned actions
to fake Deployments / routes / snapshots (checking their preconditions), and stores the
returned status. Tests then assert on what users would see (routes) and on the status.
``lose_removals`` makes annotation removals fail (the API call failed, or something put the
annotation back at once), so an annotation is delivered again; ``unsent_removals`` makes the
controller die before sending them (after the status write), and ``restart()`` forgets what
the controller keeps in memory (the removals it sent).

The few tests at the bottom check the kit itself, so a broken fake cannot hide an engine bug.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rewind.adapters.base import RegistryMove, RegistryObservation, RouteState
from rewind.api import (
    ANNOTATION_PROMOTE,
    MAX_CONSUMED_ACTIONS,
    MAX_HUMAN_TEXT,
    MAX_MESSAGE,
    Measurement,
    ModelReleaseSpec,
    ModelReleaseStatus,
    Phase,
    RolloutPolicySpec,
    TimelineEntry,
    Verdict,
    clip,
    spec_hash,
)
from rewind.engine import (
    ANNOTATION_OF,
    Action,
    ActionKind,
    ActorStamp,
    Archive,
    Decision,
    EmitEvent,
    EnsureRevision,
    HumanAction,
    Inputs,
    IntegrityResult,
    QuarantineRule,
    RemoveAnnotation,
    RevisionState,
    RouteObservation,
    RouteProblem,
    ScaleRevision,
    SetRoutes,
    SnapshotCheck,
    SnapshotRevision,
    SyncRegistryAlias,
    VerifyArtifact,
    analysis_due,
    analysis_metrics,
    analysis_targets,
    breaker_due,
    decide,
    drill_analysis_due,
    drill_snapshot_due,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NAME, NAMESPACE = "fraud", "risk"


def digest(ch: str) -> str:
    return "sha256:" + ch * 64


def make_spec(
    version: str = "1.0.0",
    *,
    replicas: int = 2,
    image: str | None = None,
    allow_tag_image: bool = False,
    policy: str = "p",
) -> ModelReleaseSpec:
    """A valid ModelReleaseSpec; the version also changes the artifact digest."""
    ch = "0123456789abcdef"[sum(map(ord, version)) % 16]
    return ModelReleaseSpec.model_validate(
        {
            "policyRef": {"name": policy},
            "model": {
                "name": "fraud-detector",
                "version": version,
                "artifactURI": f"s3://models/fraud/{version}/model.onnx",
                "artifactDigest": digest(ch),
                "format": "onnx",
            },
            "code": {
                "image": image or f"registry.example.com/fraud@{digest('c')}",
                "allowTagImage": allow_tag_image,
            },
            "data": {"datasetRef": "s3://datasets/fraud", "version": f"data-{version}"},
            "serving": {"replicas": replicas},
            "traffic": {"hosts": ["fraud.example.com"]},
        }
    )


CANARY: dict[str, Any] = {
    "canary": {
        "steps": [
            {"weight": 10, "pause": {"duration": "1m"}},
            {"weight": 50, "pause": {"duration": "1m"}},
        ]
    }
}
CANARY_MANUAL: dict[str, Any] = {
    "canary": {
        "steps": [
            {"weight": 10, "pause": {"duration": "1m"}},
            {"weight": 50, "pause": {"manual": True}},
        ]
    }
}
BLUE_GREEN: dict[str, Any] = {
    "blueGreen": {
        "previewDuration": "1m",
        "autoSwitch": True,
        "postSwitchDuration": "1m",
        "keepOldColour": "5m",
    }
}
BLUE_GREEN_MANUAL: dict[str, Any] = {
    "blueGreen": {
        "previewDuration": "1m",
        "autoSwitch": False,
        "postSwitchDuration": "1m",
        "keepOldColour": "5m",
    }
}
SHADOW_STOP: dict[str, Any] = {"shadow": {"mirrorPercent": 50, "duration": "2m"}}
SHADOW_CANARY: dict[str, Any] = {
    "shadow": {
        "mirrorPercent": 100,
        "duration": "2m",
        "onSuccess": {"action": "Canary", "canary": {"steps": [{"weight": 20}]}},
    }
}
SHADOW_BLUE_GREEN: dict[str, Any] = {
    "shadow": {
        "mirrorPercent": 100,
        "duration": "2m",
        "onSuccess": {
            "action": "BlueGreen",
            "blueGreen": {"previewDuration": "30s", "postSwitchDuration": "30s"},
        },
    }
}
STRATEGIES: dict[str, dict[str, Any]] = {
    "canary": CANARY,
    "canary-manual": CANARY_MANUAL,
    "blue-green": BLUE_GREEN,
    "blue-green-manual": BLUE_GREEN_MANUAL,
    "shadow-stop": SHADOW_STOP,
    "shadow-canary": SHADOW_CANARY,
    "shadow-blue-green": SHADOW_BLUE_GREEN,
}


def make_policy(
    strategy: Mapping[str, Any] | None = None,
    *,
    metrics: Sequence[str] = ("error-rate",),
    interval: str = "10s",
    failure_limit: int = 1,
    consecutive_failure_limit: int = 0,
    approval: Mapping[str, Any] | None = None,
    scale_down_delay: str = "30s",
    progress_deadline: str = "5m",
    keep_previous_warm: str = "10m",
    allow_tag_images: bool = False,
    rollback_window: int | None = None,
    first_release: str | None = "Promote",
    integrity: Mapping[str, Any] | None = None,
) -> RolloutPolicySpec:
    """A valid RolloutPolicySpec; None leaves a field to the API's default. The first
    release is promoted once Available unless asked (``first_release=None``: the API's
    default, Gates): most tests are about the releases after it, and start from a promoted
    one; tests/unit/test_engine_first_release.py tests the first release's gates."""
    rollback: dict[str, Any] = {
        "mode": "automatic" if approval is None else "approval",
        "scaleDownDelay": scale_down_delay,
    }
    if approval is not None:
        rollback["approval"] = dict(approval)
    extra: dict[str, Any] = {}
    if rollback_window is not None:
        extra["rollbackWindow"] = {"revisions": rollback_window}
    if first_release is not None:
        extra["firstRelease"] = first_release
    if integrity is not None:
        extra["integrity"] = dict(integrity)
    return RolloutPolicySpec.model_validate(
        {
            **extra,
            "strategy": dict(strategy or CANARY),
            "analysis": {
                "interval": interval,
                "metrics": [
                    {
                        "name": name,
                        "query": "sum(rate(x{w='{{candidateWorkload}}'}[{{interval}}]))",
                        "thresholds": {"max": 0.05},
                    }
                    for name in metrics
                ],
                "failureLimit": failure_limit,
                "consecutiveFailureLimit": consecutive_failure_limit,
            },
            "rollback": rollback,
            "progressDeadline": progress_deadline,
            "keepPreviousWarm": keep_previous_warm,
            "allowTagImages": allow_tag_images,
        }
    )


def meas(verdict: Verdict, metric: str = "error-rate", value: float | None = None) -> Measurement:
    """A measurement as the Prometheus adapter would judge it."""
    if value is None and verdict != Verdict.INCONCLUSIVE:
        value = 0.01 if verdict == Verdict.PASS else 0.12
    if verdict == Verdict.INCONCLUSIVE:
        message = f"{metric}: no data (noData: Inconclusive)"
    elif verdict == Verdict.FAIL:
        message = f"{metric} {value:g} > max 0.05"
    else:
        message = f"{metric} {value:g} <= max 0.05"
    return Measurement(metric=metric, value=value, max=0.05, verdict=verdict, message=message)


PASS, FAIL, INCONCLUSIVE = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE


@dataclass
class FakeRegistry:
    """An MLflow alias as the registry adapter reads and moves it (the adapter is tested
    against a real MLflow server in the sandbox tests)."""

    alias: str = ""  # the version the alias names ("" unset)
    #: While set, MLflow is unreachable: every read or move fails with this.
    down: str = ""
    #: While set, tag writes fail with this (the alias still moves).
    tag_down: str = ""
    #: The tags written: (version, why), in order.
    tags: list[tuple[str, str]] = field(default_factory=list)
    observation: RegistryObservation | None = None

    def sync(self, a: SyncRegistryAlias, now: datetime) -> None:
        previous = self.observation or RegistryObservation(tracking_uri=a.tracking_uri)
        if self.down:
            self.observation = replace(previous, error=self.down)
            return
        moved, error = previous.moved, ""
        if a.version and self.alias != a.version:
            moved = RegistryMove(self.alias, a.version, a.revision, a.why, now, self.tag_down)
            if self.tag_down:
                error = f"could not tag version {a.version} with the move: {self.tag_down}"
            else:
                self.tags.append((a.version, a.why))
            self.alias = a.version
        self.observation = RegistryObservation(a.tracking_uri, self.alias, now, error, moved)


@dataclass
class Deployment:
    replicas: int
    ready_at: datetime  # Available from this moment (when healthy)


Verdicts = Callable[[int, datetime], Verdict | Sequence[Verdict]]


@dataclass
class World:
    """The handler plus a fake cluster around ``decide``."""

    policy: RolloutPolicySpec | None
    spec: ModelReleaseSpec = field(default_factory=make_spec)
    now: datetime = T0
    status: ModelReleaseStatus = field(default_factory=ModelReleaseStatus)
    policy_error: str | None = None
    generation: int = 1
    ready_after: float = 0.0  # seconds a scaled-up Deployment needs to become Available
    broken: set[int] = field(default_factory=set)  # revisions that never become Available
    #: Revisions that lost some pods: not Available, but some pods answer (min available).
    degraded: set[int] = field(default_factory=set)
    deployments: dict[int, Deployment] = field(default_factory=dict)
    snapshots: dict[int, str] = field(default_factory=dict)
    routes: SetRoutes | None = None
    annotations: dict[str, HumanAction] = field(default_factory=dict)
    events: list[EmitEvent] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    decided_at: list[datetime] = field(default_factory=list)  # the clock of each decision
    verdicts: Verdicts = field(default=lambda _rev, _now: Verdict.PASS)
    check_idempotent: bool = True
    lose_removals: bool = False  # RemoveAnnotation is sent and not applied (API error)
    #: RemoveAnnotation is never sent (the operator dies after storing the status); with
    #: ``lose_removals`` False and this False, a removal is sent (and lost or applied).
    unsent_removals: bool = False
    #: The handler's memory (Inputs.removals_sent): key -> (the annotation, first sent).
    removals_sent: dict[str, tuple[HumanAction, datetime]] = field(default_factory=dict)
    #: The API server refuses route writes with this message (None: it accepts them).
    refuse_routes: str | None = None
    refused: tuple[SetRoutes, str] | None = None  # the last refused write, as the handler
    route_problems: tuple[RouteProblem, ...] = ()  # conflicts, drift... the router reports
    #: Reconcile again at once after a route write, as the handler does (ROUTE_RECHECK).
    follow_route_writes: bool = True
    #: Recorded revisions the handler read (it reads them while the status has no history).
    archive: Archive = field(default_factory=Archive)
    #: The circuit breaker's signal at a moment (read whenever the breaker is armed).
    signal: Callable[[datetime], Verdict] = field(default=lambda _now: Verdict.PASS)
    #: Snapshots whose data no longer verifies (a drill's snapshot check says corrupt).
    corrupt: set[int] = field(default_factory=set)
    #: The Quarantine entries of the namespace, as the handler read them.
    quarantine: tuple[QuarantineRule, ...] = ()
    #: What the handler's dry run of a new revision's Deployment says (None: accepted).
    template_error: str | None = None
    #: Why the spec cannot be a revision now (a missing serving.workloadRef Deployment).
    spec_error: str | None = None
    #: Why Istio's proxy is expected on the pods ("": not expected, pods not looked at).
    proxy_expected: str = ""
    #: Revisions whose running pods lack the proxy: their names (observed only if expected).
    unmeshed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: Who writes rewind.dev/<action>-by (the operator's --actor-stamp).
    actor_stamp: ActorStamp = "server"
    #: Artifact verification (policy integrity), as the controller runs it: seconds one
    #: takes, the revisions whose store fails it (revision -> why), the ones running
    #: (revision -> when it finishes), their results, and every VerifyArtifact received.
    verify_seconds: float = 0.0
    tampered: dict[int, str] = field(default_factory=dict)
    verifying: dict[int, datetime] = field(default_factory=dict)
    verified: dict[int, IntegrityResult] = field(default_factory=dict)
    verify_requests: list[tuple[int, datetime]] = field(default_factory=list)
    #: The MLflow alias of spec.model.registry (None: nothing reads it).
    registry: FakeRegistry | None = None

    # ---- observation ------------------------------------------------------------------

    def observe(self) -> dict[int, RevisionState]:
        out = self._observe()
        if self.proxy_expected:
            for rev, pods in self.unmeshed.items():
                if rev in out and out[rev].replicas > 0:
                    out[rev] = replace(out[rev], running_pods=out[rev].replicas,
                                       unmeshed_pods=pods[: out[rev].replicas])
        return out

    def _observe(self) -> dict[int, RevisionState]:
        out = {}
        for rev, d in self.deployments.items():
            available = d.replicas > 0 and rev not in self.broken and self.now >= d.ready_at
            name = f"{NAMESPACE}/{NAME}-r{rev}"
            if available and rev in self.degraded:
                out[rev] = RevisionState(
                    rev, available=False, replicas=d.replicas, exists=True,
                    min_available=True, ready_replicas=max(1, d.replicas - 1), name=name,
                )
                continue
            out[rev] = RevisionState(
                rev, available=available, replicas=d.replicas, exists=True, name=name
            )
        return out

    def observe_routes(self) -> RouteObservation:
        problems = list(self.route_problems)
        if self.refused is not None:
            wanted, message = self.refused
            problems.append(
                RouteProblem(
                    "Refused",
                    message,
                    RouteState(
                        dict(wanted.weights), wanted.mirror_revision, wanted.mirror_percent,
                        wanted.header_revision, wanted.primary_revision, wanted.fallback,
                    ),
                )
            )
        r = self.routes
        if r is None:
            return RouteObservation(exists=False, problems=tuple(problems), source="VS")
        return RouteObservation(
            exists=True,
            weights=dict(r.weights),
            mirror_revision=r.mirror_revision,
            mirror_percent=r.mirror_percent,
            header_revision=r.header_revision,
            primary_revision=r.primary_revision,
            fallback=r.fallback,
            problems=tuple(problems),
            source="VS",
        )

    def snapshot_check(self) -> SnapshotCheck | None:
        target = drill_snapshot_due(self.status)
        if target is None:
            return None
        if target not in self.snapshots:
            missing = f"ControllerRevision {NAME}-r{target} not found"
            return SnapshotCheck(target, "missing", missing)
        if target in self.corrupt:
            return SnapshotCheck(target, "corrupt", f"snapshot {NAME}-r{target} does not verify")
        return SnapshotCheck(target)

    def round(self) -> list[Measurement] | None:
        drill = drill_analysis_due(self.status, self.policy, self.now)
        if drill is not None and self.policy is not None:
            got = self.verdicts(drill[0], self.now)
            verdicts = [got] if isinstance(got, Verdict) else list(got)
            names = [m.name for m in self.policy.analysis.metrics]
            return [meas(v, metric=names[i % len(names)]) for i, v in enumerate(verdicts)]
        if self.policy is None or not analysis_due(self.status, self.policy, self.now):
            return None
        targets = analysis_targets(self.status)
        assert targets is not None, "analysis due but no targets"
        got = self.verdicts(targets[0], self.now)
        verdicts = [got] if isinstance(got, Verdict) else list(got)
        names = [m.name for m in analysis_metrics(self.status, self.policy)]
        return [meas(v, metric=names[i % len(names)]) for i, v in enumerate(verdicts)]

    def inputs(
        self,
        measurements: Sequence[Measurement] | None = None,
        actions: Sequence[HumanAction] = (),
    ) -> Inputs:
        return Inputs(
            spec=self.spec,
            spec_hash=spec_hash(self.spec),
            generation=self.generation,
            policy=self.policy,
            policy_error=self.policy_error,
            status=self.status,
            revisions=self.observe(),
            measurements=measurements,
            actions=tuple(actions),
            now=self.now,
            name=NAME,
            namespace=NAMESPACE,
            actor_stamp=self.actor_stamp,
            routes=self.observe_routes(),
            archive=self.archive if not self.status.history else Archive(),
            breaker_reading=(
                meas(self.signal(self.now), metric="breaker")
                if breaker_due(self.status, self.policy, self.spec) else None
            ),
            drill_snapshot=self.snapshot_check(),
            quarantine=self.quarantine,
            template_error=self.template_error,
            spec_error=self.spec_error,
            proxy_expected=self.proxy_expected,
            removals_sent=self.sent_removals(),
            integrity=self.finish_verifications(),
            verifying=frozenset(self.verifying),
            registry=self.registry.observation if self.registry is not None else None,
        )

    def finish_verifications(self) -> dict[int, IntegrityResult]:
        """Verifications done by now become results (against the revision's digest)."""
        for rev, done in sorted(self.verifying.items()):
            if self.now < done:
                continue
            del self.verifying[rev]
            want = next((e.model_digest for e in self.status.history if e.revision == rev), "")
            bad = self.tampered.get(rev)
            self.verified[rev] = IntegrityResult(
                rev, bad is None, done, want, digest=want if bad is None else digest("f"),
                message=f"model.onnx: {want}" if bad is None else bad,
            )
        return dict(self.verified)

    def sent_removals(self) -> dict[str, datetime]:
        """As the controller: first sends of removals whose annotation is still there."""
        for key, (action, _) in list(self.removals_sent.items()):
            if self.annotations.get(key) != action:
                del self.removals_sent[key]
        return {key: at for key, (_, at) in self.removals_sent.items()}

    def restart(self) -> None:
        """The operator restarts: what it remembered in memory is gone."""
        self.removals_sent.clear()

    # ---- one reconcile ------------------------------------------------------------------

    def step(
        self,
        advance: float = 0.0,
        *,
        measurements: Sequence[Measurement] | str | None = "auto",
    ) -> Decision:
        """Advance the clock, then one handler call: analyse if due, decide, apply. When
        the call wrote routes, the handler looks again at once (as ROUTE_RECHECK): that
        reconcile follows here, and the returned decision merges both (the second one's
        status, every action and event)."""
        self.now += timedelta(seconds=advance)
        ms = self.round() if isinstance(measurements, str) else measurements
        first = self._reconcile(ms)
        if not (self.follow_route_writes and self._wrote_routes):
            return first
        second = self._reconcile(None)
        return Decision(second.status, first.actions + second.actions, second.requeue_after)

    def _reconcile(self, ms: Sequence[Measurement] | None) -> Decision:
        inp = self.inputs(ms, list(self.annotations.values()))
        decision = decide(inp)
        check_invariants(inp, decision)
        if self.check_idempotent:
            check_idempotent(inp, decision)
        self._wrote_routes = False
        self.apply(decision)
        self.status = decision.status
        self.decisions.append(decision)
        self.decided_at.append(self.now)
        return decision

    def annotate(self, kind: ActionKind, value: str = "true", user: str = "") -> None:
        self.annotations[ANNOTATION_OF[kind]] = HumanAction(kind=kind, value=value, user=user)

    def act(
        self, kind: ActionKind, value: str = "true", user: str = "", advance: float = 0.0
    ) -> Decision:
        """A human sets an annotation, then one reconcile. The operator looks again soon
        after consuming an annotation (``requeue_after``); that reconcile, which sees the
        removal and drops the ledger entry, comes before this human acts."""
        if any(c.gone_at is None and not c.keep for c in self.status.consumed_actions):
            self.step()
        self.annotate(kind, value, user)
        return self.step(advance)

    def apply(self, decision: Decision) -> None:
        for action in decision.actions:
            self._apply(action)

    def _apply(self, action: Action) -> None:
        if isinstance(action, SnapshotRevision):
            known = self.snapshots.get(action.revision)
            assert known in (None, action.spec_hash), "snapshot conflict: revisions are immutable"
            self.snapshots[action.revision] = action.spec_hash
        elif isinstance(action, EnsureRevision):
            assert action.revision in self.snapshots, f"r{action.revision} has no snapshot"
            assert action.replicas > 0
            d = self.deployments.get(action.revision)
            if d is None or d.replicas == 0:
                ready = self.now + timedelta(seconds=self.ready_after)
                self.deployments[action.revision] = Deployment(action.replicas, ready)
            else:
                d.replicas = action.replicas
        elif isinstance(action, ScaleRevision):
            d = self.deployments.get(action.revision)
            if d is not None:
                if action.replicas > 0 and d.replicas == 0:
                    d.ready_at = self.now + timedelta(seconds=self.ready_after)
                d.replicas = action.replicas
        elif isinstance(action, SetRoutes):
            for rev in action.weights:
                d = self.deployments.get(rev)
                assert d is not None and d.replicas > 0, f"route to r{rev} which is not running"
            if self.refuse_routes is not None:
                if action != self.routes:
                    self.refused = (action, self.refuse_routes)
                return
            self.refused = None
            if action != self.routes or self.route_problems:
                self._wrote_routes = True
            self.routes = action
            # A write restores an edit outside Rewind; a gateway that does not accept the
            # route (NotAccepted) or a conflicting route stays until the test lifts it.
            self.route_problems = tuple(p for p in self.route_problems if p.kind != "Drift")
        elif isinstance(action, RemoveAnnotation):
            if self.unsent_removals:
                return
            present = self.annotations.get(action.key)
            if present is not None and self.removals_sent.get(action.key, (None,))[0] != present:
                self.removals_sent[action.key] = (present, self.now)
            if not self.lose_removals:
                self.annotations.pop(action.key, None)
        elif isinstance(action, EmitEvent):
            self.events.append(action)
        elif isinstance(action, VerifyArtifact):
            self.verify_requests.append((action.revision, self.now))
            if action.revision not in self.verifying:
                self.verifying[action.revision] = self.now + timedelta(
                    seconds=self.verify_seconds
                )
        elif isinstance(action, SyncRegistryAlias) and self.registry is not None:
            self.registry.sync(action, self.now)

    # ---- driving ------------------------------------------------------------------------

    def run(self, seconds: float, dt: float = 10.0) -> None:
        """Reconcile every ``dt`` seconds for ``seconds``."""
        for _ in range(round(seconds / dt)):
            self.step(dt)

    def run_until(
        self, done: Callable[[World], bool], *, dt: float = 10.0, limit: int = 500
    ) -> None:
        for _ in range(limit):
            if done(self):
                return
            self.step(dt)
        raise AssertionError(
            f"not reached after {limit} steps: {self.status.phase} {self.status.message}"
        )

    def settle(self) -> None:
        """Reconcile until the release is no longer in flight."""
        self.run_until(lambda w: w.status.phase not in IN_FLIGHT_OR_BACK)

    def release(self, spec: ModelReleaseSpec) -> Decision:
        """The user applies a new spec (generation bumps)."""
        self.spec = spec
        self.generation += 1
        return self.step()

    # ---- reading ------------------------------------------------------------------------

    def phase(self) -> Phase:
        """The current phase (a call, so mypy does not narrow it across steps)."""
        return self.status.phase

    _wrote_routes: bool = False

    def weights(self) -> dict[int, int]:
        return dict(self.routes.weights) if self.routes else {}

    def mirror(self) -> tuple[int | None, int]:
        if self.routes is None:
            return None, 0
        return self.routes.mirror_revision, self.routes.mirror_percent

    def replicas(self, revision: int) -> int:
        d = self.deployments.get(revision)
        return d.replicas if d else 0

    def outcome(self, revision: int) -> str:
        for e in self.status.history:
            if e.revision == revision:
                return e.outcome.value
        raise KeyError(revision)

    def timeline_types(self) -> list[str]:
        return [e.type for e in self.status.timeline]

    def condition(self, type_: str) -> tuple[str, str, str]:
        for c in self.status.conditions:
            if c.type == type_:
                return c.status.value, c.reason, c.message
        raise KeyError(type_)


IN_FLIGHT_OR_BACK = {
    Phase.PENDING,
    Phase.PROGRESSING,
    Phase.PROMOTING,
    Phase.PAUSED,
    Phase.AWAITING_APPROVAL,
    Phase.ROLLING_BACK,
}


def promoted_world(
    policy: RolloutPolicySpec | None = None, *, releases: int = 1, **kwargs: Any
) -> World:
    """A world where ``releases`` revisions were promoted one after the other."""
    w = World(policy or make_policy(), **kwargs)
    w.step()
    w.settle()
    assert w.status.phase == Phase.PROMOTED
    for n in range(2, releases + 1):
        w.release(make_spec(f"{n}.0.0"))
        w.settle()
        assert w.status.phase == Phase.PROMOTED, w.status.message
    return w


def at_step(w: World, step: int) -> None:
    """Run until the rollout enters stage ``step`` (index into the engine plan)."""
    w.run_until(
        lambda x: (
            x.status.phase in (Phase.PROGRESSING, Phase.PAUSED) and x.status.current_step >= step
        )
    )


# --------------------------------------------------------------------------------------
# Invariants every decision must satisfy
# --------------------------------------------------------------------------------------

SAFE_TO_REPEAT = (EnsureRevision, SetRoutes, ScaleRevision, VerifyArtifact, SyncRegistryAlias)


def check_invariants(inp: Inputs, d: Decision) -> None:
    s = d.status
    routes = [a for a in d.actions if isinstance(a, SetRoutes)]
    assert len(routes) <= 1, "one router write per decision"
    for r in routes:
        if r.fallback is not None:  # a tripped breaker: everyone to the fallback
            assert not r.weights and not r.mirror_percent and r.header_revision is None, r
            continue
        assert sum(r.weights.values()) == 100, r
        assert all(w > 0 for w in r.weights.values()), r
        assert 0 <= r.mirror_percent <= 100
        assert (r.mirror_revision is None) == (r.mirror_percent == 0)
        assert r.mirror_revision not in r.weights, "never mirror to a revision with live weight"
    # Weights are what the router reports, by role; never more than all the traffic.
    total = s.weights.stable + s.weights.candidate
    assert total <= 100, s.weights
    assert s.weights.stable == inp.routes.weights.get(s.stable_revision, 0) or (
        not s.stable_revision
    )
    # Bounded lists, and a status the API server accepts (round-trips through the schema).
    assert len(s.history) <= 20 and len(s.timeline) <= 50
    assert len(s.analysis.measurements) <= 20
    again = ModelReleaseStatus.model_validate(s.model_dump(mode="json", by_alias=True))
    assert again.model_dump() == s.model_dump()
    # kstatus: one condition of each type, all for this generation, and exactly one of
    # Ready, Reconciling and Stalled true (kstatus and Argo CD's health then agree).
    types = [c.type for c in s.conditions]
    registry = ["RegistrySynced"] if inp.spec.model.registry is not None else []
    assert sorted(types) == sorted(
        ["Degraded", "Progressing", "Ready", "Reconciling", "Stalled", *registry]
    ), types
    assert all(c.observed_generation == inp.generation for c in s.conditions)
    assert s.observed_generation == inp.generation
    state = {c.type: c.status.value == "True" for c in s.conditions}
    assert [state["Ready"], state["Reconciling"], state["Stalled"]].count(True) == 1, state
    if state["Ready"]:
        assert s.phase == Phase.PROMOTED and s.routes.in_effect
    # Promoted, a finished rollback and a started step only with their routes in effect.
    if s.phase == Phase.PROMOTED and inp.status.phase != Phase.PROMOTED:
        assert s.routes.in_effect, s.routes
    if s.phase == Phase.ROLLED_BACK and inp.status.phase != Phase.ROLLED_BACK:
        assert s.routes.in_effect, s.routes
    running = s.phase in (Phase.PROGRESSING, Phase.PAUSED) and s.step_started_at is not None
    if running and s.current_step > 0 and s.stable_revision:
        assert s.routes.in_effect or inp.status.step_started_at is not None, s.routes
    # Ordering: snapshots first, then workloads, routes, scale-downs, annotations, events.
    order = [
        SnapshotRevision,
        VerifyArtifact,
        EnsureRevision,
        SetRoutes,
        SyncRegistryAlias,  # after the routes it follows
        ScaleRevision,
        RemoveAnnotation,
        EmitEvent,
    ]
    ranks = [order.index(type(a)) for a in d.actions]
    assert ranks == sorted(ranks), [type(a).__name__ for a in d.actions]
    # A revision is snapshotted before the status first records it as started (adopted
    # records were snapshotted by the object that recorded them).
    before = {e.revision for e in inp.status.history} | {e.revision for e in inp.archive.entries}
    for e in s.history:
        if e.revision not in before and e.outcome.value != "Failed":
            assert SnapshotRevision(e.revision, inp.spec_hash) in d.actions
    # Never scale down what still serves or is being released.
    scaled = {a.revision for a in d.actions if isinstance(a, ScaleRevision) and a.replicas == 0}
    live = {rev for r in routes for rev in r.weights}
    assert not scaled & live, (scaled, live)
    assert s.stable_revision not in scaled
    ensured = {a.revision for a in d.actions if isinstance(a, EnsureRevision)}
    assert not scaled & ensured
    # Every consumed annotation is removed at most once.
    removals = [a.key for a in d.actions if isinstance(a, RemoveAnnotation)]
    assert len(removals) == len(set(removals))
    # The ledger's entries not seen gone name exactly the annotations consumed (acted on or
    # ignored, now or in an earlier call): they are removed, but for those left on the
    # object on purpose (keep: a value that came back); the others stay for a later call.
    ledger = {(c.key, c.value, c.user) for c in s.consumed_actions if c.gone_at is None}
    present = {
        (ANNOTATION_OF[a.kind], clip(a.value, MAX_HUMAN_TEXT), clip(a.user, MAX_HUMAN_TEXT))
        for a in inp.actions
    }
    assert len(s.consumed_actions) <= MAX_CONSUMED_ACTIONS
    assert ledger <= present, "an entry whose annotation is gone is marked gone"
    removed = {c.key for c in s.consumed_actions if c.gone_at is None and not c.keep}
    assert set(removals) == removed
    # Every way into RollingBack (or straight through it) appends exactly one RollbackStarted.
    started = [e for e in new_timeline(inp.status, s) if e.type == "RollbackStarted"]
    was, now = inp.status.phase, s.phase
    # Restoring adopted history (Pending -> the recorded RolledBack) is not a rollback.
    restored = any(e.type == "Restored" for e in new_timeline(inp.status, s))
    began = (now == Phase.ROLLING_BACK and was != Phase.ROLLING_BACK) or (
        now == Phase.ROLLED_BACK
        and was not in (Phase.ROLLING_BACK, Phase.ROLLED_BACK)
        and not restored
    )
    assert len(started) == (1 if began else len(started)) and len(started) <= 1, started
    if any(e.type == "RolledBack" for e in new_timeline(inp.status, s)):
        assert len(started) == 1 or was == Phase.ROLLING_BACK  # begun now, or in a past call
    # Every string within its schema bound (clipped, never refused by the API server).
    for path, text in status_strings(s.model_dump(mode="json", by_alias=True)):
        assert len(text) <= MAX_MESSAGE, path
    if d.requeue_after is not None:
        assert d.requeue_after >= 1.0


def check_idempotent(inp: Inputs, d: Decision) -> None:
    """Deciding again on the produced status with the same observations changes nothing,
    whether the consumed annotations were removed meanwhile or are still there (their
    removal was lost): then they are only removed again, never acted on twice."""
    routes = [a for a in d.actions if isinstance(a, SetRoutes)]
    # The same annotations still present.
    again = decide(replace(inp, status=d.status))
    assert again.status == d.status, _diff(d.status, again.status)
    for a in again.actions:
        assert isinstance(a, (*SAFE_TO_REPEAT, RemoveAnnotation)), f"repeat produced {a}"
    assert actions_of(again, RemoveAnnotation) == actions_of(d, RemoveAnnotation)
    assert actions_of(again, SetRoutes) == routes
    # The annotations removed: only the ledger changes, marking them gone (a value left on
    # the object stays pinned to the revision in play).
    gone = decide(replace(inp, status=d.status, actions=()))
    scope = d.status.candidate_revision or d.status.current_revision
    seen_gone = [
        c.model_copy(update={"gone_at": inp.now, **({"revision": scope} if c.keep else {})})
        if c.gone_at is None else c
        for c in d.status.consumed_actions
    ]
    forgot = d.status.model_copy(update={"consumed_actions": seen_gone})
    assert gone.status == forgot, _diff(forgot, gone.status)
    for a in gone.actions:
        assert isinstance(a, SAFE_TO_REPEAT), f"repeat produced {a}"
    assert actions_of(gone, SetRoutes) == routes


def new_timeline(old: ModelReleaseStatus, new: ModelReleaseStatus) -> list[TimelineEntry]:
    """Entries a decision appended (the timeline only grows at its end, then is trimmed)."""
    seen = {(e.at, e.type, e.revision, e.message, e.user) for e in old.timeline}
    return [e for e in new.timeline if (e.at, e.type, e.revision, e.message, e.user) not in seen]


def status_strings(node: Any, path: str = "status") -> list[tuple[str, str]]:
    """Every string in a status document, with its path."""
    if isinstance(node, str):
        return [(path, node)]
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in status_strings(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [x for i, v in enumerate(node) for x in status_strings(v, f"{path}[{i}]")]
    return []


def _diff(a: ModelReleaseStatus, b: ModelReleaseStatus) -> str:
    da, db = a.model_dump(), b.model_dump()
    return "; ".join(f"{k}: {da[k]!r} != {db[k]!r}" for k in da if da[k] != db[k])


def events(d: Decision | Iterable[Decision], kind: str | None = None) -> list[EmitEvent]:
    ds = [d] if isinstance(d, Decision) else list(d)
    return [
        a
        for x in ds
        for a in x.actions
        if isinstance(a, EmitEvent) and (kind is None or a.type == kind)
    ]


def actions_of(d: Decision, cls: type[Any]) -> list[Any]:
    return [a for a in d.actions if isinstance(a, cls)]


def routes_of(d: Decision) -> list[SetRoutes]:
    """The distinct route writes of a (merged) decision, in order."""
    out: list[SetRoutes] = []
    for a in actions_of(d, SetRoutes):
        if a not in out:
            out.append(a)
    return out


# --------------------------------------------------------------------------------------
# The kit's own tests
# --------------------------------------------------------------------------------------


def test_kit_specs_hash_differently_per_version_and_policies_validate() -> None:
    assert spec_hash(make_spec("1.0.0")) != spec_hash(make_spec("2.0.0"))
    assert spec_hash(make_spec("1.0.0")) == spec_hash(make_spec("1.0.0"))
    for strategy in STRATEGIES.values():
        make_policy(strategy)


def test_kit_world_refuses_routes_to_a_revision_that_is_not_running() -> None:
    w = World(make_policy())
    with pytest.raises(AssertionError, match="not running"):
        w.apply(Decision(ModelReleaseStatus(), (SetRoutes({7: 100}, None, 0),), None))


def test_kit_world_refuses_ensure_without_snapshot() -> None:
    w = World(make_policy())
    with pytest.raises(AssertionError, match="no snapshot"):
        w.apply(Decision(ModelReleaseStatus(), (EnsureRevision(3, 1),), None))


def test_kit_promote_annotation_key() -> None:
    w = World(make_policy())
    w.annotate("promote")
    assert ANNOTATION_PROMOTE in w.annotations
