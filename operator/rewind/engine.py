"""The pure decision engine: ``decide(inputs) -> Decision``.

No I/O, no clock reads, no Kubernetes imports, deterministic. The Kopf handler observes the
world (status, Deployments, annotations, fresh analysis results), calls :func:`decide`,
applies the returned actions **in order**, then writes the returned status.

One explicit state machine
--------------------------
``decide`` runs a fixed pipeline (see ``_PIPELINE``)::

    adopt recorded history -> record analysis -> expire a pending decision -> human actions
        -> spec change + phase machine (to a fixpoint) -> actions left for later judged
        again -> housekeeping -> desired state + conditions -> status clipped to its bounds

The phase machine is a dispatch table from ``status.phase`` to one small function
(``_PHASES``); the rollout phases (Progressing/Paused) dispatch again on the kind of the
current stage of the release plan (``_STAGES``, see :mod:`rewind.engine_plan`). Human
actions dispatch on their kind (``_ACTIONS``). Every transition appends a timeline entry and
emits an Event through ``_Ctx.record``.

==================  ======================================  ===============================
from                on                                      to
==================  ======================================  ===============================
(no history)        recorded revisions (``Inputs.archive``: Pending, restoring: history
                    the object was deleted and created      adopted, stable = last
                    again)                                  known-good, current = the newest
                                                            record if the spec hashes to it
Pending/restoring   stable Available, routes read back      the current revision's recorded
                    (at once when there is no stable)       phase (Promoted / RolledBack /
                                                            Failed)
Pending/restoring   the current revision never finished     Progressing (same revision,
                    its rollout (in flight, Superseded)     from stage 0)
(any) / Pending     spec hash differs from the current      Progressing (new revision N+1,
                    revision's                              stage Ready); in-flight candidate
                                                            Superseded; Failed if the image
                                                            is tag-only and not allowed
(any)               spec hash equals a known-good revision  restore (``status.restoring``,
                    in the rollbackWindow                   same revision number): the
                                                            stable in place -> Promoting;
                                                            another -> Progressing/Ready
                                                            (scaled up from its snapshot);
                                                            in-flight candidate Superseded
Promoting, restore  100% read back on the restored one      Promoted (``Restored``)
Progressing/Ready,  progressDeadline passed                 Failed (could not be restored);
 restore                                                    the stable keeps serving
Progressing/Ready   candidate Available                     next stage (a first release
                                                            with firstRelease: Promote:
                                                            Promoting)
Progressing/        duration elapsed + last analysis Pass,  next stage / Promoting; a
 FirstPreview       or rewind.dev/promote (a human vouches) failed round at the limit:
                                                            Failed (never served users)
Progressing/Ready   progressDeadline passed                 Failed (candidate scaled to 0)
Progressing/stage   duration elapsed + last analysis Pass   next stage; after the last one:
                                                            Promoted (or Promoted/shadow Stop)
Paused/manual gate  rewind.dev/promote=true                 next stage
Progressing/Paused  failures >= failureLimit (or            automatic: RollingBack;
                    consecutive >= consecutiveFailureLimit) approval: AwaitingApproval
AwaitingApproval    N distinct approvals / timeout+Rollback RollingBack
AwaitingApproval    reject / timeout+Resume                 Progressing/Paused (same stage,
                                                            counters reset)
in flight           rewind.dev/rollback (break glass)       RollingBack (target = stable);
                                                            no stable yet: Failed
Promoted            rewind.dev/rollback (break glass)       RollingBack (target = previous
                                                            known-good revision)
RolledBack/Failed   rewind.dev/rollback, the stable not     RollingBack (target = the most
 on a base that is  known-good (a roll-forward from a       recent known-good revision)
 not known-good     stalled rollback was rolled back)
RollingBack         target Available (at once when warm:    RolledBack (or Failed when the
                    same call)                              candidate never had live traffic)
RollingBack         progressDeadline passed                 (stays) + condition Stalled,
                                                            naming the ways out
RollingBack,        spec hash differs (a new spec)          Progressing: a new revision
 stalled                                                    against what serves users now
                                                            (RollbackAbandoned; the target
                                                            is retired again)
RollingBack,        rewind.dev/rollback (break glass)       RollingBack to the known-good
 stalled                                                    revision promoted before the
                                                            target (none: a note)
Failed/RolledBack   rewind.dev/retry=true                   Progressing (same revision)
Promoted            keepPreviousWarm / keepOldColour over   previous stable Retired (scaled 0)
RolledBack/Failed   rollback.scaleDownDelay over            failed candidate scaled to 0
==================  ======================================  ===============================

Every way into RollingBack (analysis, approval, approval timeout with ``onTimeout: Rollback``,
break glass, blue-green switch-back) goes through ``_start_rollback``, which appends exactly
one ``RollbackStarted`` timeline entry, also when the rollback completes in the same call
(``RolledBack``, or ``Failed`` for a candidate that never had live traffic, follows it).
Consumers (metrics) count rollbacks from it; ``ApprovalTimedOut`` alone is not a rollback,
nor is failing a candidate with nothing to go back to (a first release).

Human actions (annotations)
---------------------------
``_ACTIONS`` maps each kind to its handler, its value rule and what it acts on (its
target). ``approve-rollback``, ``promote`` and ``retry`` act only when the value is ``true``
or ``true`` followed by one of ``-_.:`` and anything (``true-2``, ``true-1718000000``: a
unique value; case-insensitive, stripped); ``reject-rollback`` and ``rollback`` take a reason
(any non-empty text). Another value is ignored: an ``ActionIgnored`` note says why and how
to do it, and the annotation is removed.

Each annotation is acted on at most once, even if its removal never happens, and a value
that acted never acts on the same thing again when it comes back (an action annotation kept
in Git, put back by Argo CD's self-heal each time the operator removes it).
``status.consumedActions`` is the ledger (at most ``MAX_CONSUMED_ACTIONS``): every
annotation acted on or deliberately ignored gets an entry (key, value, user, at, the
``target`` it acted on, the ``revision`` in play) when first seen.

* The same annotation (key, value, user of an entry not seen gone) is only removed again
  (no event, no timeline entry): its removal failed, or is not seen yet. While such a
  removal is pending the decision requeues after ``CONSUMED_RECHECK`` seconds (and the
  handler wakes the release when it sees the removal), so the removal is seen promptly.
  One still there ``REMOVAL_PATIENCE`` seconds after this operator process first sent its
  removal (``Inputs.removals_sent``: a removal it sent and got an answer to, not one it only
  decided) is left on the object (``keep``): something puts it back at once. An operator
  that was down (killed after storing the decision, before removing the annotation) does
  not count the time it was down: it removes the annotation when it is back.
* An entry whose annotation is gone (or changed) is kept, marked ``goneAt`` (the oldest
  such are forgotten first; one still on the object never is). The same value set again
  later is a new annotation, judged against what the value did before
  (``_returning_blocked``): a **reason never acts twice** (a break glass belongs to the
  revision it rolled back, a rejection to its decision: a re-applied manifest cannot roll
  back the next release); ``true`` never acts again on the **target** it acted on (a
  promote on the gate it passed, a retry on the failure it retried, an approval on its
  decision by the same approver: the decision's list of approvers counts each user once,
  so ``-by`` stamps still count distinct users); and a value its author left on the object
  in this revision never acts again in it. Otherwise it acts: ``approve-rollback=true`` set
  afresh by a human approves the next decision.
* A value that comes back and does not act is **left on the object** (``keep``): never
  removed, never judged again while it stays, with one ``ActionIgnored`` note saying how to
  act for real (a new value: ``true-<anything>``, or a new reason). Removing it would only
  make a GitOps tool put it back, forever; left in place, the object matches Git and
  nothing loops. For an approval only the same approver's value comes back (a GitOps tool
  puts back its own copy, under its own user): another approver's is their own action,
  noted once and removed like any other, even when it does not act. At most one removal
  per value and target (plus ``REMOVAL_PATIENCE``'s worth when the removal is never seen)
  ever happens.

Left on the object, with no entry and no removal, are everything but break glass while the
policy is unusable, and a promote at a gate whose candidate is not Available; those are
judged again once the machine settled (``_reconsider_kept``), so deciding again on the
produced status with the same annotations is a no-op besides ``RemoveAnnotation`` (with the
annotations gone, only the ledger changes: its entries are marked gone).

What humans write is bounded at the engine boundary (``_bounded_actions``): values and users
are clipped to ``api.MAX_HUMAN_TEXT`` characters (an ellipsis marks the cut), and the status
is re-validated before it is returned, which clips every bounded string (messages and
reasons: ``api.MAX_MESSAGE``): a 200 KB break-glass reason never makes a status etcd or the
schema refuses.

Actions are level-based: every call re-emits ``EnsureRevision`` for the stable, the in-flight
candidate and anything that still has live weight, and one ``SetRoutes`` for the current
weights, so a lost write converges on the next call. Edge actions (``SnapshotRevision``,
``EmitEvent``, ``RemoveAnnotation``) only come with a transition or a consumed annotation.
Order: snapshots, workloads, routes, scale-downs, annotation removals, events.

Choices worth knowing (documented in the tests too):

* Records outlive the object: a status without history adopts ``Inputs.archive`` (the
  controller reads it only then), so a ModelRelease deleted and applied again from Git
  comes back in its recorded phase with its last known-good revision restored, instead of
  releasing the spec as a first release without analysis. Revision numbers continue from
  the records. Restoring is not a rollback (no ``RollbackStarted``): the timeline says
  ``HistoryAdopted``, then ``Restored``.
* Revision numbers only grow, and a revision is never renumbered. A spec whose hash equals
  a revision's in the policy's ``rollbackWindow`` (the stable, or one of the
  ``revisions`` promoted most recently before it, by promotion time) that is still
  known-good is a **restore** of that revision (the user reverted Git): no new number, no
  steps, no analysis (it was verified when first promoted). ``RestoreStarted`` names it
  and why; its Deployment is scaled up from its snapshot (``EnsureRevision``), and stage
  Ready holds traffic where it is until it is Available (``progressDeadline``, else Failed:
  "could not be restored", and a retry releases it through the plan); then one route
  write, phase Promoting, and ``Restored`` once 100% is read back. Its history entry is
  updated (outcome Promoted, ``promotedAt`` now: the most recent promotion); the replaced
  stable is kept warm as after a promotion. The stable itself is restored in place (an
  in-flight candidate is superseded, a RolledBack/Failed release is Promoted again: Git and
  cluster agree). A revert to the target of a rollback in progress waits for it (the
  rollback restores it). Anything else, outside the window, or with
  ``rollbackWindow.revisions: 0``, is a new revision N+1: history stays immutable and
  ordered.
* ``status.currentStep`` indexes the engine's plan, whose stage 0 is "wait for Available".
* A first release (no stable revision) runs the policy's gates unless the policy says
  ``firstRelease: Promote`` (then: all traffic once Available). It has no stable to share
  traffic with, to compare with or to mirror from, so its gates run at 0% of user traffic,
  with no routes to it at all (:mod:`rewind.engine_plan`): a FirstPreview for the
  strategy's first verification window, reachable only at its own Service
  ``<release>-r<N>`` (smoke tests), analysed with the metrics that need no ``{{stable}}``
  (``analysis_metrics``; ``analysis_targets`` gives stable 0), then a FirstGate (manual)
  if the strategy has a manual gate anywhere; then Promoting. Its analysis is judged like
  any other: a failed round at the limit fails it (no users ever saw it: Failed, scaled
  down, nothing to roll back to); Inconclusive holds, since with no smoke tests nothing
  reaches it and ``noData: Inconclusive`` means "hold, never decide on no data". That is
  a choice: a first release promoted on no evidence would make the gates decorative. So
  the hold says how to move on (the stage message and the Degraded condition): send smoke
  tests to its Service, vouch for it with ``rewind.dev/promote`` (which passes a
  FirstPreview as it passes a manual gate, recorded with who), or set ``firstRelease:
  Promote``. Canary weights, the mirror and post-switch/post-promotion watches need a
  stable and do not apply; a shadow with ``onSuccess: Stop`` still ends Promoted (nothing
  else would serve). It is never routed before it is Available (Promoting's write waits).
* Rollback target not warm (Deployment missing, 0 replicas or not Available): phase
  RollingBack, ``EnsureRevision(target)``, traffic stays where it is until it is Available.
  While RollingBack, ``stableRevision`` already names the target and ``candidateRevision``
  the revision being left (its weight shows where traffic still goes).
* A candidate that never received live user traffic (shadow, blue-green preview, stage
  Ready) and is stopped by analysis or break glass ends with outcome Failed and phase
  Failed, not RolledBack: users never saw its answers. Otherwise outcome/phase RolledBack.
* Shadow ``onSuccess: Stop``: the candidate's outcome is Retired (reason says the shadow
  passed), it is scaled down, the mirror removed, and the phase is Promoted (Ready=True:
  the validation run the spec asked for is complete) while stable keeps serving.
* Break glass in RolledBack/Failed/RollingBack is a no-op (a note): the last known-good is
  already serving or being restored, and a re-delivered annotation must never roll back
  twice. In Promoted it undoes the latest promotion. Two exceptions: a stalled rollback
  (below), and a release settled on a revision that is not known-good (a roll-forward from
  a stalled rollback that was itself rolled back), where it goes on to the known-good
  revision promoted most recently. "Known-good": promoted once and never rolled back
  since (outcome Promoted or Retired); "most recently" is by promotion time.
* A rollback that cannot finish (its target is not Available after ``progressDeadline``:
  a ResourceQuota, a lost node pool) stays RollingBack with Stalled=True and never blocks a
  roll-forward. Its message and the Stalled condition name the ways out: fix what keeps the
  target down (the rollback then completes by itself); apply a new spec; or break glass
  again, which rolls back to the known-good revision promoted before the target instead.
  A new spec seen while the rollback can still finish waits for it (the message says
  until when); once the rollback is stalled, the new spec supersedes it at once
  (``RollbackAbandoned``): the target goes back to Retired (still known-good) and is
  scaled down, and the new revision is released **against the revision that serves users
  now**: the one being rolled back away from, when it still answers and the target does
  not. Traffic stays on it until the new revision is ready; the new revision's analysis
  compares with it (``{{stable}}``), because it is what users would otherwise keep
  getting, and a failed analysis returns users to it, never to a target that cannot run.
  That base keeps its RolledBack outcome: it is never a rollback target, and the timeline
  says the new revision goes "against r2, which serves users but is not known-good". A
  metric relative to ``{{stable}}`` is therefore only as strict as that base; the absolute
  thresholds are what protect users then.
* Timers (approval expiry) that fell due before this call are applied before the human
  actions seen in this call: an approval seen after ``expiresAt`` is late.
* Analysis rounds: one call = one round stamped ``now``; a round is Fail if any measurement
  fails, Inconclusive if none fails and one is inconclusive, else Pass. ``failures`` counts
  failed measurements; ``consecutiveFailures`` adds a failing round's failed measurements and
  is reset by a passing round (an inconclusive round leaves it). A stage advances only when
  its latest round (after the stage began) passed. Measurements for a round already recorded
  (``now <= analysis.lastRunAt``) are ignored, so a repeated call never double counts.
* Without a usable policy only break glass is acted on (other annotations stay for later,
  unless their value is refused: that needs no policy) and a RollingBack completes;
  everything else holds with condition Stalled.
* ``rewind.dev/promote`` at a manual gate while the candidate is not Available is left on
  the object (not removed) and passes the gate once the candidate is Available again; if
  the same call moves on (a new revision), it is ignored at once.
* A spec change while RollingBack waits until the rollback completes (same call if it does)
  or stalls (see above).
* Workload replicas: the revision the spec describes gets ``spec.serving.replicas``; any
  other revision keeps its observed replica count, or the spec's when it is scaled to zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import ValidationError

from rewind.adapters.base import (
    DEFAULT_CLUSTER_DOMAIN,
    Fallback,
    RegistryObservation,
    RouteObservation,
    RouteProblem,
    registry_tag,
)
from rewind.api import (
    ANNOTATION_APPROVE_ROLLBACK,
    ANNOTATION_DRILL,
    ANNOTATION_PROMOTE,
    ANNOTATION_REJECT_ROLLBACK,
    ANNOTATION_RESET_BREAKER,
    ANNOTATION_RETRY,
    ANNOTATION_ROLLBACK,
    MAX_CONSUMED_ACTIONS,
    MAX_HISTORY,
    MAX_HUMAN_TEXT,
    MAX_MEASUREMENTS,
    MAX_TIMELINE,
    AnalysisStatus,
    ApprovalRecord,
    ApprovalTimeoutAction,
    BreakerResetMode,
    BreakerSpec,
    BreakerState,
    BreakerStatus,
    Condition,
    ConditionStatus,
    ConditionType,
    ConsumedAction,
    DecisionAction,
    DrillFailure,
    DrillPhase,
    DrillResult,
    DrillSpec,
    DrillStatus,
    DrillVerdict,
    HistoryEntry,
    IntegrityRecord,
    IntegritySpec,
    IntegrityVerdict,
    Measurement,
    MetricSpec,
    ModelReleaseSpec,
    ModelReleaseStatus,
    Outcome,
    PendingDecision,
    Phase,
    QuarantineEntry,
    QuarantineMark,
    QueryErrorKind,
    RegistryStatus,
    RegistryVersion,
    RollbackMode,
    RolloutPolicySpec,
    RouteWeight,
    TimelineEntry,
    TimelineType,
    Verdict,
    Weights,
    clip,
    image_digest,
    parse_duration,
    tag_image_error,
)
from rewind.engine_plan import (
    Finish,
    Plan,
    Stage,
    StageKind,
    build_plan,
    first_release_metrics,
)
from rewind.podtemplate import unpinned_references

__all__ = [
    "Action",
    "ActionKind",
    "Archive",
    "Decision",
    "EmitEvent",
    "EnsureRevision",
    "HumanAction",
    "Inputs",
    "IntegrityResult",
    "QuarantineRule",
    "RemoveAnnotation",
    "RevisionState",
    "RouteObservation",
    "RouteProblem",
    "ScaleRevision",
    "SetRoutes",
    "SnapshotCheck",
    "SnapshotRevision",
    "SyncRegistryAlias",
    "VerifyArtifact",
    "analysis_due",
    "analysis_metrics",
    "analysis_targets",
    "breaker_due",
    "breaker_unsupported",
    "breaker_variables_targets",
    "decide",
    "drill_analysis_due",
    "drill_snapshot_due",
    "fallback_of",
    "next_analysis_at",
    "plan_for",
    "quarantine_match",
]

# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------

ActionKind = Literal[
    "approve-rollback", "reject-rollback", "rollback", "promote", "retry", "reset-breaker",
    "drill",
]

#: Who writes an action annotation's ``<annotation>-by`` stamp (see ``Inputs.actor_stamp``).
ActorStamp = Literal["server", "client"]
#: The stamp's key is the action annotation's key plus this.
ACTOR_SUFFIX = "-by"

ANNOTATION_OF: Mapping[str, str] = {
    "approve-rollback": ANNOTATION_APPROVE_ROLLBACK,
    "reject-rollback": ANNOTATION_REJECT_ROLLBACK,
    "rollback": ANNOTATION_ROLLBACK,
    "promote": ANNOTATION_PROMOTE,
    "retry": ANNOTATION_RETRY,
    "reset-breaker": ANNOTATION_RESET_BREAKER,
    "drill": ANNOTATION_DRILL,
}


@dataclass(frozen=True)
class RevisionState:
    """Observed state of one revision's workload."""

    revision: int
    available: bool  # Deployment Available with the desired replicas ready
    replicas: int  # desired replicas currently set
    exists: bool  # the Deployment exists at all
    #: The Deployment's own Available condition (its minimum of replicas answer); None:
    #: not observed, taken to be ``available``.
    min_available: bool | None = None
    #: Pods ready now; None: not observed (``replicas`` when available, else 0).
    ready_replicas: int | None = None
    name: str = ""  # namespace/name of the Deployment, for messages
    #: Its running pods and, of those, the ones without Istio's proxy (a sidecar, or ambient
    #: mode's redirection), observed only while one is expected (``Inputs.proxy_expected``).
    running_pods: int = 0
    unmeshed_pods: tuple[str, ...] = ()

    @property
    def ready(self) -> int:
        if self.ready_replicas is not None:
            return self.ready_replicas
        return self.replicas if self.available else 0

    @property
    def serving(self) -> bool:
        """Some pods answer: the revision can take its share of traffic."""
        if not self.exists or self.replicas <= 0:
            return False
        return self.available if self.min_available is None else self.min_available

    def describe(self) -> str:
        """``Deployment risk/fraud-r2 has 0/3 ready replicas``."""
        what = f"Deployment {self.name}" if self.name else f"the Deployment of r{self.revision}"
        if not self.exists:
            return f"{what} does not exist"
        return f"{what} has {self.ready}/{self.replicas} ready replicas"


@dataclass(frozen=True)
class HumanAction:
    """A ``rewind.dev/`` annotation the handler read."""

    kind: ActionKind
    value: str  # annotation value: "true" (approve, promote, retry) or a reason (reject,
    # rollback); the engine clips it, and the user, to api.MAX_HUMAN_TEXT characters
    user: str  # who set it ("" when unknown: one anonymous approver)


@dataclass(frozen=True)
class Archive:
    """The recorded revisions of this namespace/name, read by the controller while the
    status has no history (the ModelRelease was deleted and created again): snapshots and
    their history records outlive the object (see ``_adopt_archive``)."""

    entries: tuple[HistoryEntry, ...] = ()  # one per recorded revision, any order
    source: str = ""  # where they were read, for the timeline
    #: Records deleted on request (rewind.dev/forget-history) instead of adopted.
    forgotten: int = 0


@dataclass(frozen=True)
class SnapshotCheck:
    """Whether a revision could be re-created from its snapshot now: ``problem`` is ""
    (it loads and verifies), ``missing`` or ``corrupt``; ``message`` says which object."""

    revision: int
    problem: Literal["", "missing", "corrupt"] = ""
    message: str = ""


@dataclass(frozen=True)
class QuarantineRule:
    """One entry of a Quarantine of the release's namespace, as the controller read it."""

    ref: str  # <namespace>/<quarantine name>#<entry name>: how decisions name it
    entry: QuarantineEntry


@dataclass(frozen=True)
class IntegrityResult:
    """A finished verification of one revision's model artifact (policy spec.integrity),
    run by the controller in the background (``VerifyArtifact``)."""

    revision: int
    ok: bool
    at: datetime  # when it finished (tz-aware UTC)
    want: str  # the artifactDigest it was checked against
    digest: str = ""  # what the store's bytes hash to ("" when nothing could be read)
    message: str = ""  # what was checked, or which file or signature failed and why


@dataclass(frozen=True)
class Inputs:
    """Everything one decision may depend on (the engine reads nothing else)."""

    spec: ModelReleaseSpec
    spec_hash: str  # hash of the current spec (api.spec_hash)
    generation: int  # metadata.generation
    policy: RolloutPolicySpec | None  # None: policyRef points at nothing
    policy_error: str | None  # e.g. "RolloutPolicy 'x' not found"
    status: ModelReleaseStatus  # as stored in the API server (may be empty on first sight)
    revisions: Mapping[int, RevisionState]
    measurements: Sequence[Measurement] | None  # this call's analysis round; None: none ran
    actions: Sequence[HumanAction]
    now: datetime  # tz-aware UTC
    name: str = ""  # metadata.name (for the kubectl commands in messages)
    namespace: str = ""  # metadata.namespace
    #: Who writes rewind.dev/<action>-by (the chart's humanActions.stamp): "server" (an
    #: admission policy, or none at all) or "client" (the commands in messages set it).
    actor_stamp: ActorStamp = "server"
    #: The routes in effect as the router reads them back, and what makes them untrue.
    routes: RouteObservation = field(default_factory=RouteObservation)
    #: Recorded revisions to adopt when the status has no history (empty: none).
    archive: Archive = field(default_factory=Archive)
    #: This call's reading of the policy's circuit-breaker signal, judged against its
    #: thresholds (None: none taken). Its ``at`` is ignored: the reading is of ``now``.
    breaker_reading: Measurement | None = None
    #: The controller's check of the snapshot of a drill's target (``drill_snapshot_due``);
    #: None: not checked in this call.
    drill_snapshot: SnapshotCheck | None = None
    #: Every Quarantine entry of the namespace (what is known to be bad), in a stable order.
    quarantine: tuple[QuarantineRule, ...] = ()
    #: Why the API server refused the Deployment the spec would run (a server-side dry run
    #: of the new revision's Deployment: a pod template it does not accept, an admission
    #: policy); None: accepted, or not checked. A revision that starts with it fails.
    template_error: str | None = None
    #: Why the spec cannot be turned into a revision now (serving.workloadRef: the
    #: Deployment is missing or its template unusable); None: it can. Held like an unusable
    #: policy: nothing new starts, break glass still works, Stalled (WorkloadRefError).
    spec_error: str | None = None
    #: Why the pods are expected to have Istio's proxy (spec.traffic.sidecar, the
    #: namespace's labels, the policy's Istio metrics), e.g. "namespace shop is labelled
    #: istio-injection=enabled", "the policy's metric error-rate reads istio_requests_total,
    #: which only Istio's proxy reports"; "": not expected, nothing checked.
    proxy_expected: str = ""
    #: Per action annotation key: when this operator process first sent the removal of the
    #: value (and ``-by`` user) on the object now, and got an answer (success or error).
    #: Kept in memory only, and forgotten once that value is gone: an operator that died
    #: before removing an annotation it consumed starts with nothing here.
    removals_sent: Mapping[str, datetime] = field(default_factory=dict)
    #: The cluster's DNS domain (``--cluster-domain``): a fallback Service's in-mesh host
    #: ends in ``svc.<cluster_domain>``.
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    #: The latest finished artifact verification per revision this process knows of (kept
    #: in memory until the status records it; a restart verifies again).
    integrity: Mapping[int, IntegrityResult] = field(default_factory=dict)
    #: Revisions whose verification runs now.
    verifying: frozenset[int] = frozenset()
    #: The MLflow alias of ``spec.model.registry`` as last read (None: not read yet by this
    #: operator process, or no registry).
    registry: RegistryObservation | None = None


# --------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotRevision:
    """Store the current spec as revision ``revision``'s ControllerRevision (idempotent:
    create if absent; an existing snapshot with another hash is a conflict)."""

    revision: int
    spec_hash: str


@dataclass(frozen=True)
class EnsureRevision:
    """Create or scale the Deployment+Service of ``revision`` from its stored snapshot."""

    revision: int
    replicas: int


@dataclass(frozen=True)
class ScaleRevision:
    """Change only the replica count of ``revision`` (0: scale down, record stays)."""

    revision: int
    replicas: int


@dataclass(frozen=True)
class SetRoutes:
    """One router write: live weights per revision (sum 100), an optional mirror, the
    revision the spec's header routes send their callers to (None: no header routes), and
    the revision the in-cluster name's Service selects, for callers that bypass the routes
    (``primary_revision``; None: the revision with all the weight)."""

    weights: Mapping[int, int]
    mirror_revision: int | None
    mirror_percent: int
    header_revision: int | None = None
    #: The revision the umbrella Service ``<release>`` (the in-cluster name) selects; None:
    #: the revision with all the weight, if one has it.
    primary_revision: int | None = None
    #: A tripped circuit breaker: every user of the routes to this fallback (``weights``
    #: empty, no mirror, no header routes); the umbrella Service still selects
    #: ``primary_revision`` (a fallback changes no revision).
    fallback: Fallback | None = None

    def __post_init__(self) -> None:
        if self.primary_revision is None:
            full = [r for r, w in self.weights.items() if w == 100]
            if full:
                object.__setattr__(self, "primary_revision", full[0])


@dataclass(frozen=True)
class VerifyArtifact:
    """Verify ``revision``'s model artifact (and signature) against the store in the
    background, unless that already runs; the verdict comes back in ``Inputs.integrity``.
    Nothing waits on it but the route write that would give the revision traffic."""

    revision: int


@dataclass(frozen=True)
class RemoveAnnotation:
    """The annotation was acted upon: remove it from the ModelRelease."""

    key: str


@dataclass(frozen=True)
class EmitEvent:
    """A Kubernetes Event on the ModelRelease."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class SyncRegistryAlias:
    """Read the MLflow alias and, when ``version`` is set and the alias is elsewhere, move it
    there and tag that version with the move (model registry sync). Applied after the
    routes and in the background: it never blocks nor delays a reconcile."""

    tracking_uri: str  # "" the operator's default server
    name: str  # the registered model
    alias: str
    version: str  # where the alias should be; "": only read it
    revision: int  # the revision ``version`` is (0: none)
    why: str  # e.g. "r2 promoted", "rolled back to r1": for the tag


Action = (
    SnapshotRevision
    | EnsureRevision
    | ScaleRevision
    | SetRoutes
    | RemoveAnnotation
    | EmitEvent
    | VerifyArtifact
    | SyncRegistryAlias
)


@dataclass(frozen=True)
class Decision:
    """The new status and what to do, in order: snapshots, workloads, routes, scale-downs,
    annotation removals, events. ``requeue_after``: seconds until the next timer is due
    (None: nothing is scheduled)."""

    status: ModelReleaseStatus
    actions: tuple[Action, ...]
    requeue_after: float | None


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------

IN_FLIGHT = frozenset(
    {Phase.PROGRESSING, Phase.PAUSED, Phase.AWAITING_APPROVAL, Phase.PROMOTING}
)
#: Phases with nothing in flight: the stable revision (if any) serves all users.
SETTLED = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED})
ROLLING_OUT = frozenset({Phase.PROGRESSING, Phase.PAUSED})
DEFAULT_SCALE_DOWN_DELAY = 30.0
DEFAULT_PROGRESS_DEADLINE = 600.0
MIN_REQUEUE = 1.0
#: After consuming an annotation, look again this soon: the removal is then seen and the
#: ledger entry dropped before a human is likely to set the same annotation again.
CONSUMED_RECHECK = 2.0
#: While the routes the release needs are not in effect, look again this often (s).
ROUTES_RECHECK = 5.0
_MACHINE_STEPS = 64  # more than the longest plan (1 + 20 shadow/canary stages + promote)


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dur(seconds: float) -> str:
    s = int(seconds)
    if s != seconds or s == 0:
        return f"{seconds:g}s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


def _who(user: str) -> str:
    return user or "anonymous"


def _same(problem: RouteProblem, want: SetRoutes | None) -> bool:
    """The refused write was a wish for ``want`` (or says nothing of what it wished)."""
    if problem.wanted is None:
        return True
    if want is None:
        return False
    wished = problem.wanted
    return (
        {r: w for r, w in wished.weights.items() if w > 0} == dict(want.weights)
        and (wished.mirror_revision if wished.mirror_percent else None) == want.mirror_revision
        and wished.mirror_percent == want.mirror_percent
        and wished.header_revision == want.header_revision
        and wished.fallback == want.fallback
        and wished.primary_revision == want.primary_revision
    )


def _describe_routes(routes: SetRoutes | None) -> str:
    """``r1 70%, r2 30%, mirror 10% to r2, header routes to r2`` (or ``nothing``)."""
    if routes is None:
        return "nothing"
    if routes.fallback is not None:
        primary = f"r{routes.primary_revision}" if routes.primary_revision else "no revision"
        return (f"everyone to the breaker's fallback ({routes.fallback.describe()}), "
                f"in-cluster name to {primary}")
    parts = [f"r{r} {w}%" for r, w in sorted(routes.weights.items()) if w > 0]
    if routes.mirror_percent and routes.mirror_revision:
        parts.append(f"mirror {routes.mirror_percent}% to r{routes.mirror_revision}")
    if routes.header_revision:
        parts.append(f"header routes to r{routes.header_revision}")
    live = [r for r, w in routes.weights.items() if w > 0]
    if routes.primary_revision is None and live:
        parts.append("in-cluster name to no revision")
    elif routes.primary_revision is not None and dict(routes.weights) != {
        routes.primary_revision: 100
    }:
        parts.append(f"in-cluster name to r{routes.primary_revision}")
    return ", ".join(parts) or "nothing"


def plan_for(status: ModelReleaseStatus, policy: RolloutPolicySpec) -> Plan:
    """The plan ``status.currentStep`` indexes (first release: no stable revision yet;
    restore: the spec was reverted to a known-good revision)."""
    return build_plan(
        policy, first_release=status.stable_revision == 0, restore=status.restoring
    )


def next_analysis_at(status: ModelReleaseStatus, policy: RolloutPolicySpec) -> datetime | None:
    """When the next analysis round of the current stage is due (None: no stage running).

    A stage's first round comes one interval after it began, so the ``{{interval}}`` window
    of the query covers traffic of this stage only.
    """
    base = status.step_started_at
    if base is None:
        return None
    last = status.analysis.last_run_at
    if last is not None and last > base:
        base = last
    return base + timedelta(seconds=parse_duration(policy.analysis.interval))


def _active_stage(status: ModelReleaseStatus, policy: RolloutPolicySpec) -> Stage | None:
    if status.phase not in ROLLING_OUT or not status.candidate_revision:
        return None
    return plan_for(status, policy).stage(status.current_step)


def analysis_due(
    status: ModelReleaseStatus, policy: RolloutPolicySpec | None, now: datetime
) -> bool:
    """Whether the handler should run the policy's metrics before calling :func:`decide`."""
    if policy is None or not policy.analysis.metrics:
        return False
    stage = _active_stage(status, policy)
    if stage is None or not stage.analysed:
        return False
    due = next_analysis_at(status, policy)
    return due is not None and now >= due


def analysis_targets(status: ModelReleaseStatus) -> tuple[int, int] | None:
    """``(candidate, stable)`` revisions an analysis round measures, or None. A first
    release has no stable: 0 (only the metrics of :func:`analysis_metrics` run then)."""
    if status.phase not in ROLLING_OUT or not status.candidate_revision:
        return None
    return status.candidate_revision, status.stable_revision


def analysis_metrics(status: ModelReleaseStatus, policy: RolloutPolicySpec) -> list[MetricSpec]:
    """The metrics an analysis round queries: all of them, or, for a first release (no
    stable revision), those that do not use ``{{stable}}`` or ``{{stableWorkload}}``."""
    if not status.stable_revision:
        return first_release_metrics(policy)
    return list(policy.analysis.metrics)


def _round_verdict(round_: Sequence[Measurement]) -> Verdict | None:
    if not round_:
        return None
    verdicts = {m.verdict for m in round_}
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in verdicts:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


def _latest_round(status: ModelReleaseStatus) -> list[Measurement]:
    """Measurements of the candidate's most recent analysis round."""
    last = status.analysis.last_run_at
    cand = status.candidate_revision
    if last is None:
        return []
    return [m for m in status.analysis.measurements if m.at == last and m.revision == cand]


# --------------------------------------------------------------------------------------
# The working context of one decision
# --------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    inp: Inputs
    s: ModelReleaseStatus
    policy: RolloutPolicySpec | None
    policy_error: str | None
    #: The Stalled reason of ``policy_error`` (an unusable policy, or spec).
    error_reason: str = "PolicyError"
    snapshots: list[Action] = field(default_factory=list)
    scale_downs: list[ScaleRevision] = field(default_factory=list)
    annotations: list[RemoveAnnotation] = field(default_factory=list)
    events: list[EmitEvent] = field(default_factory=list)
    wakeups: list[datetime] = field(default_factory=list)
    stalled: str | None = None  # stall reason found this call (besides policy / phase)
    deferred_spec: bool = False  # the spec changed while rolling back
    #: A quarantined revision serves (or is the rollback target) and no clean known-good
    #: revision exists to go to: why the release holds (Stalled=True, QuarantineHold).
    quarantine_hold: str | None = None
    actions: tuple[HumanAction, ...] = ()  # Inputs.actions clipped, in the order acted on
    kept: set[HumanAction] = field(default_factory=set)  # left on the object for later
    #: Revisions whose artifact is to be verified (``VerifyArtifact``), in the order asked.
    verify: list[int] = field(default_factory=list)

    @property
    def now(self) -> datetime:
        return self.inp.now

    # ---- policy knobs (defaults when the policy is unusable) --------------------------

    @property
    def scale_down_delay(self) -> float:
        if self.policy is None:
            return DEFAULT_SCALE_DOWN_DELAY
        return parse_duration(self.policy.rollback.scale_down_delay)

    @property
    def progress_deadline(self) -> float:
        if self.policy is None:
            return DEFAULT_PROGRESS_DEADLINE
        return parse_duration(self.policy.progress_deadline)

    def plan(self) -> Plan | None:
        return None if self.policy is None else plan_for(self.s, self.policy)

    def stage(self) -> Stage | None:
        plan = self.plan()
        return None if plan is None else plan.stage(self.s.current_step)

    # ---- observations -----------------------------------------------------------------

    def observed(self, revision: int) -> RevisionState | None:
        return self.inp.revisions.get(revision)

    def available(self, revision: int) -> bool:
        obs = self.observed(revision)
        return obs is not None and obs.exists and obs.available and obs.replicas > 0

    def down(self, revision: int) -> RevisionState | None:
        """The revision's Deployment, when it should run but no pod answers."""
        obs = self.observed(revision)
        if obs is None or not obs.exists or obs.replicas <= 0:
            return None
        return obs if not obs.serving and obs.ready == 0 else None

    # ---- routes (what the router reads back) -----------------------------------------

    def route_problem(self, want: SetRoutes | None) -> RouteProblem | None:
        """What makes the routes read back untrue for ``want``, most serious first. A
        refused write concerns only a wish for the same routes: a different wish is
        written (and judged) afresh."""
        order = ("Refused", "Conflict", "NotAccepted", "Drift")
        problems = sorted(
            (p for p in self.inp.routes.problems if p.kind != "Refused" or _same(p, want)),
            key=lambda p: order.index(p.kind),
        )
        return problems[0] if problems else None

    def routes_match(self, want: SetRoutes | None) -> bool:
        """The router reports exactly ``want`` (None: no routes are needed)."""
        if want is None:
            return True
        obs = self.inp.routes
        seen = {r: w for r, w in obs.weights.items() if w > 0}
        mirror = (obs.mirror_revision, obs.mirror_percent) if obs.mirror_percent else (None, 0)
        return (
            seen == dict(want.weights)
            and mirror == (want.mirror_revision, want.mirror_percent)
            and obs.header_revision == want.header_revision
            and obs.fallback == want.fallback
            and obs.primary_revision == want.primary_revision
        )

    def in_effect(self, want: SetRoutes | None) -> bool:
        """``want`` is what users get: the router reports it and nothing makes it untrue."""
        return self.routes_match(want) and (want is None or self.route_problem(want) is None)

    def routes_why(self, want: SetRoutes | None) -> str:
        """Why ``want`` is not in effect, naming the route object."""
        problem = self.route_problem(want)
        if problem is not None:
            return problem.message
        held = _unverified_receivers(self, want)
        if held:
            return "; ".join(_verification_wait(self, r) for r in held)
        obs = self.inp.routes
        source = obs.source or "the router"
        if not obs.exists:
            return f"{source} does not exist yet (want {_describe_routes(want)})"
        seen = _describe_routes(_seen_routes(obs))
        return f"{source} routes {seen}, want {_describe_routes(want)}"

    def entry(self, revision: int) -> HistoryEntry | None:
        for e in self.s.history:
            if e.revision == revision:
                return e
        return None

    # ---- effects ----------------------------------------------------------------------

    def wake(self, at: datetime) -> None:
        self.wakeups.append(at)

    def scale_down(self, revision: int) -> None:
        action = ScaleRevision(revision, 0)
        if revision and action not in self.scale_downs:
            self.scale_downs.append(action)

    def ask_verify(self, revision: int) -> None:
        if revision and revision not in self.verify:
            self.verify.append(revision)

    def remove(self, action: HumanAction) -> None:
        removal = RemoveAnnotation(ANNOTATION_OF[action.kind])
        if removal not in self.annotations:
            self.annotations.append(removal)

    def _entry(self, type_: str, message: str, revision: int | None, user: str) -> TimelineEntry:
        rev = (
            revision
            if revision is not None
            else (self.s.candidate_revision or self.s.stable_revision)
        )
        # Validated on construction: the message and user are clipped to their bounds.
        return TimelineEntry(at=self.now, type=str(type_), revision=rev, message=message, user=user)

    def record(
        self,
        type_: str,
        message: str,
        *,
        revision: int | None = None,
        user: str = "",
        warning: bool = False,
    ) -> None:
        """A transition: timeline entry + Event."""
        self._append(self._entry(type_, message, revision, user), warning)

    def _append(self, entry: TimelineEntry, warning: bool) -> None:
        self.s.timeline.append(entry)
        self.events.append(EmitEvent("Warning" if warning else "Normal", entry.type, entry.message))

    def note(self, type_: str, message: str, *, user: str = "") -> None:
        """Not a transition (an ignored or waiting action): recorded once per state. During
        a rollout that is once per stage (other entries may follow it), otherwise once in a
        row."""
        new = self._entry(type_, message, None, user)
        since = self.s.step_started_at if self.s.phase in ROLLING_OUT else None
        for e in reversed(self.s.timeline):
            if (e.type, e.message, e.user) == (new.type, new.message, new.user):
                return
            if since is None or e.at is None or e.at < since:
                break
        self._append(new, warning=False)


# --------------------------------------------------------------------------------------
# Transitions shared by several states
# --------------------------------------------------------------------------------------


#: Stages whose candidate may answer the callers the spec's header routes pick (A/B):
#: never a shadow candidate, and not before it is Available.
_HEADER_ROUTED = frozenset(
    {StageKind.CANARY, StageKind.PREVIEW, StageKind.SWITCH, StageKind.POST_SWITCH,
     StageKind.POST_PROMOTION}
)


def _stage_routes(ctx: _Ctx, stage: Stage) -> SetRoutes | None:
    """The routes a rollout stage needs (None: no routes, a first release)."""
    s = ctx.s
    stable, cand = s.stable_revision, s.candidate_revision
    if not stable or not cand or cand == stable:
        return None  # first release: no traffic until it is promoted
    weights = {r: w for r, w in ((stable, 100 - stage.weight), (cand, stage.weight)) if w > 0}
    header = cand if ctx.inp.spec.traffic.header_routes and stage.kind in _HEADER_ROUTED else None
    mirror = cand if stage.mirror else None
    # Callers that bypass the routes stay on the stable revision until the promotion, even
    # when a step or a blue-green switch gives the candidate all the routed traffic.
    return SetRoutes(weights, mirror, stage.mirror, header, stable)


def _rollout_routes(ctx: _Ctx, plan: Plan) -> SetRoutes | None:
    """The routes of the current stage. A policy edited mid-rollout to fewer stages than
    ``currentStep`` assumes runs the new last stage's gates at the split in effect: the
    release never loses traffic it had, nor skips to promote."""
    s = ctx.s
    stage = plan.stage(s.current_step)
    want = _stage_routes(ctx, stage)
    if want is None or s.current_step < len(plan.stages):
        return want
    seen = {r: w for r, w in ctx.inp.routes.weights.items() if w > 0}
    if set(seen) <= {s.stable_revision, s.candidate_revision} and sum(seen.values()) == 100:
        if seen.get(s.candidate_revision):  # never mirror to a revision with live weight
            return replace(want, weights=seen, mirror_revision=None, mirror_percent=0)
        return replace(want, weights=seen)
    return want


def _desired_routes(ctx: _Ctx) -> SetRoutes | None:
    """The routes the current phase and step need: a pure function of the status (and,
    while rolling back, of whether the target is Available). None: no routes are needed,
    or traffic holds where the router has it (no usable policy, a cold rollback target)."""
    s = ctx.s
    stable, cand = s.stable_revision, s.candidate_revision
    if s.phase in (Phase.PROGRESSING, Phase.PAUSED, Phase.AWAITING_APPROVAL):
        plan = ctx.plan()
        return None if plan is None else _rollout_routes(ctx, plan)
    if s.phase == Phase.PROMOTING:
        plan = ctx.plan()
        if plan is not None and s.restoring and not cand and stable:
            return SetRoutes({stable: 100}, None, 0)  # restoring the stable in place
        if plan is None or not cand:
            return None
        if plan.finish == Finish.STOP and stable:
            return SetRoutes({stable: 100}, None, 0)
        return SetRoutes({cand: 100}, None, 0)
    if s.phase in (Phase.ROLLING_BACK, Phase.PENDING):  # Pending: restoring adopted history
        if s.phase == Phase.ROLLING_BACK and _quarantined(ctx, stable) is not None:
            return None  # a quarantined target gets no traffic: hold where it is
        return SetRoutes({stable: 100}, None, 0) if stable and ctx.available(stable) else None
    if s.phase in SETTLED and stable:
        mirror = _drill_mirror(ctx)
        if mirror is not None:
            return SetRoutes({stable: 100}, mirror[0], mirror[1])
        return SetRoutes({stable: 100}, None, 0)
    return None


def _enter_stage(ctx: _Ctx, plan: Plan, index: int) -> None:
    """Ask for the stage: its clock (pause, analysis) starts once its routes are seen in
    effect (``_stage_started``), except stage Ready, which needs no new routes."""
    s = ctx.s
    stage = plan.stages[index]
    s.current_step = index
    s.strategy = stage.strategy
    # A manual gate is Paused (waiting for a human) only once its routes are in effect.
    s.phase = Phase.PROGRESSING
    if stage.kind == StageKind.READY:
        s.step_started_at = ctx.now
        s.message = f"r{s.candidate_revision}: {stage.label}"
        return  # recorded by the caller as RevisionCreated / Retry
    s.step_started_at = None
    s.message = f"r{s.candidate_revision}: {stage.label}: waiting for its routes to take effect"


def _stage_started(ctx: _Ctx, plan: Plan, stage: Stage) -> bool:
    """Start the stage's clock once its routes are in effect; False while they are not
    (the stage holds: no pause runs out, no analysis, no next step)."""
    s = ctx.s
    if _breaker_open(ctx):
        s.step_started_at = None  # starts afresh once the model's routes are back
        s.message = (
            f"r{s.candidate_revision}: {stage.label}: holding: the circuit breaker is tripped "
            "(users on its fallback); the stage starts again once it resets"
        )
        return False
    want = _rollout_routes(ctx, plan)
    if not ctx.in_effect(want):
        why = ctx.routes_why(want)
        state = "waiting for its routes to take effect" if s.step_started_at is None else (
            "holding: its routes are no longer in effect"
        )
        s.message = f"r{s.candidate_revision}: {stage.label}: {state}: {why}"
        return False
    if s.step_started_at is None:
        s.step_started_at = ctx.now
        routes = _describe_routes(want) if want is not None else "no routes to it"
        ctx.record(
            TimelineType.STEP_STARTED,
            f"r{s.candidate_revision}: {stage.label} (in effect: {routes})",
        )
        if stage.manual:
            s.phase = Phase.PAUSED
            ctx.record(
                TimelineType.PAUSED,
                f"r{s.candidate_revision} paused at {stage.label}; to continue run: "
                f"{_kubectl(ctx, ANNOTATION_PROMOTE, 'true')}",
            )
    return True


def _advance(ctx: _Ctx, plan: Plan) -> None:
    if plan.is_last(ctx.s.current_step):
        _start_promoting(ctx, plan)
    else:
        _enter_stage(ctx, plan, ctx.s.current_step + 1)


def _start_promoting(ctx: _Ctx, plan: Plan) -> None:
    """Every stage passed: ask for the final routes; Promoted once they are in effect."""
    s = ctx.s
    s.phase = Phase.PROMOTING
    s.step_started_at = None
    s.pending_decision = None
    if s.restoring:
        s.message = f"restoring r{s.candidate_revision}: moving 100% of traffic to it"
    elif plan.finish == Finish.STOP:
        s.message = f"r{s.candidate_revision}: shadow passed: removing the mirror"
    else:
        s.message = f"promoting r{s.candidate_revision}: moving 100% of traffic to it"


def _become_stable(ctx: _Ctx, rev: int, prev: int, reason: str, replaced: str) -> str:
    """``rev`` serves 100% (read back) and becomes the stable; ``prev``, the stable it
    replaces, stops serving and stays warm for the policy's window. Returns the message's
    tail about it ("; r1 stays warm for 10m" or "")."""
    s = ctx.s
    entry = ctx.entry(rev)
    if entry is not None:
        entry.outcome = Outcome.PROMOTED
        entry.promoted_at = ctx.now  # a restore makes it the most recent promotion
        entry.finished_at = None
        entry.reason = reason
    kept = ""
    old = ctx.entry(prev) if prev else None
    if old is not None:
        old.finished_at = ctx.now  # stopped serving; retired after the keep-warm window
        old.reason = replaced if _known_good(old) else f"{old.reason}; {replaced}".lstrip("; ")
        plan = ctx.plan()
        if plan is not None:
            kept = f"; r{prev} stays warm for {_dur(plan.warm_for)}"
    s.stable_revision = rev
    s.candidate_revision = 0
    s.current_step = 0
    s.step_started_at = None
    s.pending_decision = None
    s.phase = Phase.PROMOTED
    return kept


def _promote(ctx: _Ctx) -> None:
    s = ctx.s
    cand, prev = s.candidate_revision, s.stable_revision
    kept = _become_stable(ctx, cand, prev, "", f"replaced by r{cand}")
    s.message = f"r{cand} promoted: serving 100% of traffic{kept}"
    ctx.record(TimelineType.PROMOTED, s.message, revision=cand)


def _finish_restore(ctx: _Ctx) -> None:
    """All traffic is read back on the restored revision: it is the stable again."""
    s = ctx.s
    rev = s.candidate_revision or s.stable_revision
    prev = s.stable_revision if s.candidate_revision else 0
    kept = _become_stable(
        ctx, rev, prev, f"restored at {_ts(ctx.now)}: the spec was reverted to it",
        f"replaced by r{rev} (restored)",
    )
    s.restoring = False
    s.message = f"r{rev} restored: serving 100% of traffic (the spec was reverted to it){kept}"
    ctx.record(TimelineType.RESTORED, s.message, revision=rev)


def _shadow_stop(ctx: _Ctx) -> None:
    s = ctx.s
    cand = s.candidate_revision
    entry = ctx.entry(cand)
    reason = (
        "shadow analysis passed (onSuccess: Stop): validated on mirrored traffic, "
        "never served users"
    )
    if entry is not None:
        entry.outcome = Outcome.RETIRED
        entry.finished_at = ctx.now
        entry.reason = reason
    s.candidate_revision = 0
    s.current_step = 0
    s.step_started_at = None
    s.phase = Phase.PROMOTED
    s.message = (
        f"shadow validation of r{cand} passed (onSuccess: Stop); "
        f"r{s.stable_revision} keeps serving users"
    )
    ctx.record("ShadowPassed", s.message, revision=cand)


_FINISH: Mapping[Finish, Callable[[_Ctx], None]] = {
    Finish.PROMOTE: _promote,
    Finish.STOP: _shadow_stop,
}


def _fail_candidate(ctx: _Ctx, reason: str) -> None:
    """Stop the in-flight candidate without a rollback target (stage Ready / first release)."""
    s = ctx.s
    cand = s.candidate_revision
    entry = ctx.entry(cand)
    if entry is not None:
        entry.outcome = Outcome.FAILED
        entry.finished_at = ctx.now
        entry.reason = reason
    s.pending_decision = None
    s.step_started_at = None
    s.restoring = False
    s.phase = Phase.FAILED
    s.message = f"r{cand} failed: {reason}"
    ctx.scale_down(cand)
    ctx.record(TimelineType.FAILED, s.message, revision=cand, warning=True)


def _start_rollback(ctx: _Ctx, target: int, leaving: int, reason: str) -> None:
    """Move to RollingBack towards ``target``; the machine completes it when warm.

    The one way into RollingBack: it appends the ``RollbackStarted`` entry every rollback
    has (even one that completes in this very call), which is what metrics count.
    """
    s = ctx.s
    # Whether users got answers from the revision being left, as the router reports it
    # (header routes included); a mirror only sends copies, whose answers nobody sees.
    seen = ctx.inp.routes
    live = seen.weights.get(leaving, 0) > 0 or seen.header_revision == leaving
    old = ctx.entry(s.stable_revision) if s.stable_revision not in (0, target, leaving) else None
    if old is not None and old.quarantine is not None and old.finished_at is None:
        # A quarantined stable passed over: it stops serving once the target does, and
        # is kept warm meanwhile, as a replaced stable is.
        old.finished_at = ctx.now
        old.reason = f"{old.reason}; passed over by a rollback to r{target}".lstrip("; ")
    s.pending_decision = None
    s.restoring = False
    s.stable_revision = target
    s.candidate_revision = leaving
    left = ctx.entry(leaving)
    if left is not None:
        left.outcome = Outcome.ROLLED_BACK if live else Outcome.FAILED
        left.reason = reason
    back = ctx.entry(target)
    if back is not None and back.finished_at is not None:  # warm or retired previous stable
        back.outcome = Outcome.PROMOTED
        back.finished_at = None
        back.reason = f"restored by a rollback from r{leaving}"
    s.current_step = 0
    s.step_started_at = ctx.now
    s.phase = Phase.ROLLING_BACK
    s.message = f"rolling back from r{leaving} to r{target}: {reason}"
    _bring_back(ctx, target)
    wait = _not_ready(ctx, target)
    ctx.record(
        TimelineType.ROLLBACK_STARTED,
        s.message + (f"; r{target} {wait}: traffic moves once it is Available" if wait else ""),
        revision=leaving,
        warning=True,
    )


def _not_ready(ctx: _Ctx, revision: int) -> str | None:
    """Why ``revision`` cannot take traffic yet (None: it is Available)."""
    if ctx.available(revision):
        return None
    obs = ctx.observed(revision)
    if obs is None or not obs.exists:
        return "has no Deployment (re-creating it from its snapshot)"
    if obs.replicas == 0:
        return "is scaled to zero (scaling it up)"
    return "is not Available yet"


def _resume(ctx: _Ctx) -> None:
    """Back to the current stage after a rejected or timed-out decision."""
    s = ctx.s
    s.pending_decision = None
    s.analysis.failures = 0
    s.analysis.consecutive_failures = 0
    s.analysis.inconclusive = 0
    stage = ctx.stage()
    s.phase = Phase.PAUSED if stage is not None and stage.manual else Phase.PROGRESSING
    s.message = f"r{s.candidate_revision}: rollout resumed" + (
        f" at {stage.label}" if stage is not None else ""
    )


def _kubectl(ctx: _Ctx, annotation: str, value: str) -> str:
    return annotate_command(
        ctx.inp.name, ctx.inp.namespace, annotation, value, actor_stamp=ctx.inp.actor_stamp
    )


#: The shell expression for the requesting user's name, as the API server sees it
#: (SelfSubjectReview: kubectl 1.27+, served by every Kubernetes version Rewind supports).
WHOAMI = "$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')"


def annotate_command(
    name: str, namespace: str, annotation: str, value: str, *, actor_stamp: ActorStamp = "server"
) -> str:
    """The shell command that sets an action annotation, as messages print it. With
    ``actor_stamp="client"`` (validation-only admission) it sets ``<annotation>-by`` to the
    caller's own user name too, which admission requires."""
    command = (
        f"kubectl annotate modelrelease/{name or '<name>'} -n {namespace or '<namespace>'} "
        f"{annotation}={value}"
    )
    if actor_stamp == "client":
        command += f' {annotation}{ACTOR_SUFFIX}="{WHOAMI}"'
    return command


def _back_to(ctx: _Ctx, leaving: int) -> tuple[int, str]:
    """Where a rollback from the in-flight ``leaving`` goes: the stable, unless it is
    quarantined (then the newest clean known-good revision; none: the stable all the
    same, where the release then holds), and why, for the timeline."""
    stable = ctx.s.stable_revision
    mark = _quarantined(ctx, stable)
    if mark is None:
        return stable, ""
    target, skipped = _clean_target(ctx, leaving)
    if target is None:
        return stable, ""
    why = [f"r{stable} skipped: quarantined by {mark.entry}", *skipped[1:]]
    return target, "".join(f"; {x}" for x in why)


def _decide_rollback(ctx: _Ctx, reason: str) -> None:
    s = ctx.s
    assert ctx.policy is not None
    rollback = ctx.policy.rollback
    cand, stable = s.candidate_revision, s.stable_revision
    if not stable:  # a first release failing its preview: no users, nothing to go back to
        _fail_candidate(ctx, reason)
        return
    target, skipped = _back_to(ctx, cand)
    if rollback.mode == RollbackMode.AUTOMATIC or rollback.approval is None:
        ctx.record(
            TimelineType.ROLLBACK_DECIDED,
            f"rolling back r{cand} to r{target}: {reason}{skipped}",
            revision=cand,
            warning=True,
        )
        _start_rollback(ctx, target, cand, reason)
        return
    approval = rollback.approval
    expires = ctx.now + timedelta(seconds=parse_duration(approval.timeout))
    evidence = [m for m in s.analysis.measurements if m.revision == cand][-MAX_MEASUREMENTS:]
    s.pending_decision = PendingDecision(
        action=DecisionAction.ROLLBACK,
        reason=reason,
        decided_at=ctx.now,
        expires_at=expires,
        required_approvers=approval.required_approvers,
        approvals=[],
        evidence=evidence,
        target=target if target != stable else 0,
    )
    s.phase = Phase.AWAITING_APPROVAL
    s.message = (
        f"rollback of r{cand} to r{target} proposed: {reason}{skipped}; waiting for "
        f"{approval.required_approvers} approver(s) until {_ts(expires)} "
        f"(then {approval.on_timeout.value}); traffic holds"
    )
    ctx.record(
        TimelineType.APPROVAL_REQUESTED,
        f"{s.message}. Approve: {_kubectl(ctx, ANNOTATION_APPROVE_ROLLBACK, 'true')} ; "
        f"reject: {_kubectl(ctx, ANNOTATION_REJECT_ROLLBACK, '<reason>')}",
        revision=cand,
        warning=True,
    )


def _start_revision(ctx: _Ctx, revision: int, *, fresh: bool) -> None:
    """Begin releasing ``revision`` (a new one, or the failed current one on retry)."""
    s, spec, policy = ctx.s, ctx.inp.spec, ctx.policy
    assert policy is not None
    entry = ctx.entry(revision)
    if fresh or entry is None:
        entry = HistoryEntry(
            revision=revision,
            spec_hash=ctx.inp.spec_hash,
            model_version=spec.model.version,
            model_digest=spec.model.artifact_digest,
            image_digest=image_digest(spec.code.image) or "",
            data_version=spec.data.version if spec.data is not None else "",
            dataset_ref=spec.data.dataset_ref if spec.data is not None else None,
            data_created_at=spec.data.created_at if spec.data is not None else None,
            outcome=Outcome.PROGRESSING,
            created_at=ctx.now,
        )
        rule = quarantine_match(entry, ctx.inp.quarantine)
        if rule is not None:
            entry.quarantine = QuarantineMark(
                entry=rule.ref, what=rule.entry.describe(), reason=rule.entry.reason,
                added_by=rule.entry.added_by, since=ctx.now,
            )
        s.history.append(entry)
    else:
        entry.outcome = Outcome.PROGRESSING
        entry.finished_at = None
        entry.reason = ""
    s.current_revision = revision
    s.candidate_revision = revision
    s.analysis = AnalysisStatus()
    s.pending_decision = None
    s.restoring = False
    if fresh or not entry.unpinned:
        entry.unpinned = unpinned_references(spec)
    error = tag_image_error(spec, policy) or ctx.inp.template_error
    if error is None and entry.quarantine is not None:
        error = f"refused before any traffic: quarantined by {_named(entry.quarantine)}"
    if error is not None:
        entry.outcome = Outcome.FAILED
        entry.finished_at = ctx.now
        entry.reason = error
        s.step_started_at = None
        s.phase = Phase.FAILED
        s.message = f"r{revision} failed: {error}"
        ctx.record(TimelineType.FAILED, s.message, revision=revision, warning=True)
        return
    ctx.snapshots.append(SnapshotRevision(revision, ctx.inp.spec_hash))
    base = ctx.entry(s.stable_revision) if s.stable_revision else None
    if not s.stable_revision:
        against = "first release"
    elif base is not None and not _known_good(base):
        against = (
            f"against r{s.stable_revision}, which serves users but is not known-good "
            f"({base.outcome.value})"
        )
    else:
        against = f"against stable r{s.stable_revision}"
    if fresh:
        ctx.record(
            TimelineType.REVISION_CREATED,
            f"r{revision} ({against}): model {spec.model.name} {spec.model.version} "
            f"{spec.model.artifact_digest}, image {spec.code.image}, data "
            f"{entry.data_version or '-'}, spec {ctx.inp.spec_hash}",
            revision=revision,
        )
        if entry.unpinned:
            ctx.record(
                TimelineType.UNPINNED,
                f"r{revision} reads what its snapshot cannot pin: {', '.join(entry.unpinned)}; "
                f"a rollback to r{revision} re-creates its pod template exactly, but with "
                "their contents as they are then",
                revision=revision,
            )
    plan = ctx.plan()
    assert plan is not None
    _enter_stage(ctx, plan, 0)


# --------------------------------------------------------------------------------------
# Pipeline step 0: a release created again adopts its recorded history
# --------------------------------------------------------------------------------------

#: Why an adopted revision that was in flight when its ModelRelease was deleted ended.
INTERRUPTED = "its rollout was interrupted: the ModelRelease was deleted while it was in flight"


def _last_known_good(entries: Sequence[HistoryEntry]) -> int:
    """The last known-good revision of adopted entries: the one serving as stable (outcome
    Promoted, not finished), else the one promoted most recently (0: none)."""
    serving = [e.revision for e in entries if e.outcome == Outcome.PROMOTED and not e.finished_at]
    if serving:
        return max(serving)
    good = [e for e in entries if _known_good(e)]
    return max(good, key=_promotion).revision if good else 0


def _adopt_archive(ctx: _Ctx) -> None:
    """A status without history, and recorded revisions of the same namespace/name: the
    ModelRelease was deleted and created again (a rebuilt cluster, an Argo CD app created
    again with prune). Adopt the records, so the release neither forgets what failed nor
    re-numbers revisions:

    * history = the records (outcomes, reasons, digests, times); an entry that was in flight
      is Superseded (interrupted) unless the spec still describes it, a warm previous stable
      is Retired (its Deployment went with the deleted object);
    * stable = the last known-good revision; current = the newest record if its spec hash is
      the spec's (else the spec becomes revision max+1, against that stable);
    * phase Pending until the stable, re-created from its snapshot, is Available and the
      routes to it are read back; then the current revision's recorded phase
      (``_phase_pending``). An interrupted current revision starts its rollout again.
    """
    s, archive = ctx.s, ctx.inp.archive
    if s.history:
        return
    if not archive.entries:
        if archive.forgotten:
            ctx.note(
                "HistoryForgotten",
                f"forgot {archive.forgotten} recorded revision(s) of this release "
                f"({archive.source or 'on request'}): it starts afresh",
            )
        return
    by_revision = {e.revision: e for e in archive.entries if e.revision > 0}
    if not by_revision:
        return
    entries = [by_revision[r].model_copy(deep=True) for r in sorted(by_revision)]
    newest = entries[-1]
    current = newest.revision if newest.spec_hash == ctx.inp.spec_hash else 0
    for e in entries:
        if e.outcome == Outcome.PROGRESSING and e.revision != current:
            e.outcome = Outcome.SUPERSEDED
            e.finished_at = e.finished_at or ctx.now
            e.reason = INTERRUPTED
        elif e.outcome in (Outcome.ROLLED_BACK, Outcome.FAILED) and e.finished_at is None:
            e.finished_at = ctx.now
    stable = _last_known_good(entries)
    for e in entries:
        if e.revision == stable:
            e.outcome, e.finished_at = Outcome.PROMOTED, None
        elif e.outcome == Outcome.PROMOTED:  # a previous stable kept warm
            e.outcome = Outcome.RETIRED
            e.finished_at = e.finished_at or ctx.now
    s.history = entries
    s.stable_revision, s.current_revision, s.candidate_revision = stable, current, 0
    s.phase = Phase.PENDING
    s.current_step = 0
    s.step_started_at = ctx.now  # the restore's progress deadline counts from here
    s.pending_decision = None
    outcomes = ", ".join(f"r{e.revision} {e.outcome.value}" for e in entries)
    spec = (
        f"the spec is r{current} ({newest.outcome.value})"
        if current
        else f"the spec is new: it becomes r{newest.revision + 1}"
    )
    good = f"last known-good r{stable}" if stable else "no known-good revision"
    ctx.record(
        "HistoryAdopted",
        f"adopted {len(entries)} recorded revision(s) from {archive.source or 'the archive'}: "
        f"{outcomes}; {good}; {spec}",
        revision=current or stable,
    )


def _restored_phase(entry: HistoryEntry) -> Phase:
    """The phase a restored release settles in: its current revision's recorded outcome."""
    if entry.outcome in (Outcome.PROMOTED, Outcome.RETIRED):
        return Phase.PROMOTED
    if entry.outcome == Outcome.ROLLED_BACK:
        return Phase.ROLLED_BACK
    return Phase.FAILED


def _phase_pending(ctx: _Ctx) -> None:
    """Pending: nothing released yet (a new spec starts the first revision), or restoring
    adopted history: the last known-good revision is re-created from its snapshot, gets
    the routes once it is Available, and the release settles in its recorded phase once
    they are read back."""
    s = ctx.s
    if not s.history:
        return
    current = ctx.entry(s.current_revision) if s.current_revision else None
    if current is None:
        return  # the spec is not recorded: it starts once the policy is usable
    if current.outcome in (Outcome.PROGRESSING, Outcome.SUPERSEDED):
        # In flight when the object was deleted (or recorded as superseded by a revision
        # whose record was lost): never judged, so it goes through the analysis again.
        if ctx.policy is None:
            return
        against = f" against stable r{s.stable_revision}" if s.stable_revision else ""
        ctx.record(
            "RolloutRestarted",
            f"r{current.revision} had not finished its rollout when the ModelRelease was "
            f"deleted; it starts again{against}",
            revision=current.revision,
        )
        _start_revision(ctx, current.revision, fresh=False)
        return
    target = s.stable_revision
    if target:
        want = _desired_routes(ctx)
        if not ctx.available(target) or not ctx.in_effect(want):
            why = _not_ready(ctx, target)
            wait = (
                f"r{target} {why}; it gets the routes once it is Available"
                if why
                else f"r{target} is Available, moving traffic to it: {ctx.routes_why(want)}"
            )
            s.message = f"restoring the last known-good r{target} from its snapshot: {wait}"
            since = s.step_started_at or ctx.now
            s.step_started_at = since
            deadline = since + timedelta(seconds=ctx.progress_deadline)
            if ctx.now >= deadline:
                ctx.stalled = (
                    f"restored r{target} is not Available with its routes in effect after "
                    f"{_dur(ctx.progress_deadline)} (since {_ts(since)}): {wait}"
                )
            else:
                ctx.wake(deadline)
            return
    s.phase = _restored_phase(current)
    s.step_started_at = None
    serving = f"r{target} serves 100%" if target else "nothing serves users"
    if s.phase == Phase.PROMOTED and current.revision == target:
        s.message = f"r{target} promoted: serving 100% of traffic"
    else:
        verb = "rolled back" if s.phase == Phase.ROLLED_BACK else current.outcome.value.lower()
        s.message = f"r{current.revision} {verb}; {serving}: {current.reason or 'recorded'}"
    ctx.record(
        "Restored",
        f"restored from the recorded history: {s.message}",
        revision=current.revision,
    )


# --------------------------------------------------------------------------------------
# Pipeline step 0b: quarantine (what is known to be bad)
# --------------------------------------------------------------------------------------


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _data_made_after(e: HistoryEntry, after: datetime) -> bool:
    """Whether the revision's training data was made at or after ``after``: by
    ``data.createdAt`` when recorded; else the data is older than the revision, so a
    revision first seen before ``after`` is clean, and one seen since is suspect (unknown
    is not clean)."""
    if e.data_created_at is not None:
        return _aware(e.data_created_at) >= _aware(after)
    return e.created_at is None or _aware(e.created_at) >= _aware(after)


def _matches(q: QuarantineEntry, e: HistoryEntry) -> bool:
    if q.model_digest is not None:
        return q.model_digest == e.model_digest
    if q.image_digest is not None:
        return q.image_digest == e.image_digest
    if q.data_version is not None:
        return q.data_version == e.data_version and (
            q.dataset_ref is None or q.dataset_ref == e.dataset_ref
        )
    assert q.suspect_after is not None
    return e.dataset_ref == q.dataset_ref and _data_made_after(e, q.suspect_after)


def quarantine_match(
    e: HistoryEntry, rules: Sequence[QuarantineRule]
) -> QuarantineRule | None:
    """The first Quarantine entry that matches the revision's lineage (None: clean)."""
    return next((r for r in rules if _matches(r.entry, e)), None)


def _named(mark: QuarantineMark) -> str:
    """``Quarantine risk/poison#nov-tx (data version 3f9c of s3://d: label flips; added by
    alice)``: which entry, what it matched, why, who."""
    ns_name, _, entry = mark.entry.partition("#")
    return (
        f"Quarantine {ns_name} entry {entry} ({mark.what}: {mark.reason}; added by "
        f"{_who(mark.added_by)})"
    )


def _quarantined(ctx: _Ctx, revision: int) -> QuarantineMark | None:
    e = ctx.entry(revision) if revision else None
    return e.quarantine if e is not None else None


def _mark_quarantine(ctx: _Ctx) -> None:
    """Mark every revision of the history whose lineage a Quarantine entry matches (and
    unmark the ones no entry matches any more), recording each change once."""
    s = ctx.s
    for e in s.history:
        rule = quarantine_match(e, ctx.inp.quarantine)
        old = e.quarantine
        if rule is None:
            if old is not None:
                e.quarantine = None
                ctx.record(
                    TimelineType.QUARANTINE_LIFTED,
                    f"r{e.revision} is no longer quarantined: {old.entry} no longer matches it",
                    revision=e.revision,
                )
            continue
        if old is not None and old.entry == rule.ref:
            continue
        e.quarantine = QuarantineMark(
            entry=rule.ref,
            what=rule.entry.describe(),
            reason=rule.entry.reason,
            added_by=rule.entry.added_by,
            since=ctx.now,
        )
        ctx.record(
            TimelineType.QUARANTINED,
            f"r{e.revision} is quarantined by {_named(e.quarantine)}",
            revision=e.revision,
            warning=True,
        )
    pd = s.pending_decision
    if pd is not None and pd.quarantine and _quarantined(ctx, s.stable_revision) is None:
        ctx.record(
            TimelineType.QUARANTINE_LIFTED,
            f"the proposed rollback of r{s.stable_revision} is withdrawn: it is no longer "
            "quarantined",
            revision=s.stable_revision,
        )
        s.pending_decision = None


def _summarize_quarantine(s: ModelReleaseStatus) -> None:
    s.quarantined = ",".join(
        f"r{e.revision}"
        for e in sorted(s.history, key=lambda e: -e.revision)
        if e.quarantine is not None
    )


def _failed_entry(e: HistoryEntry) -> bool:
    return e.integrity is not None and e.integrity.verdict == IntegrityVerdict.FAILED


def _clean_target(ctx: _Ctx, leaving: int) -> tuple[int | None, list[str]]:
    """The known-good revision promoted most recently that is neither quarantined nor
    (under a policy's integrity) failing its artifact's verification (``leaving`` aside),
    and why each newer known-good one was skipped."""
    good = sorted(
        (e for e in ctx.s.history if _known_good(e) and e.revision != leaving),
        key=_promotion,
        reverse=True,
    )
    checking = _integrity_spec(ctx) is not None
    skipped: list[str] = []
    for e in good:
        if e.quarantine is not None:
            skipped.append(f"r{e.revision} skipped: quarantined by {e.quarantine.entry}")
        elif checking and e.integrity is not None and _failed_entry(e):
            skipped.append(
                f"r{e.revision} skipped: its artifact failed verification ({e.integrity.message})"
            )
        else:
            return e.revision, skipped
    return None, skipped


def _retarget(
    ctx: _Ctx, target: int, skipped: list[str], given_up: str, detail: str, short: str
) -> None:
    """The rollback's target is unfit (quarantined, or its artifact failed verification):
    give it up (``given_up`` ends its record's reason) and roll back to ``target`` instead.
    ``detail`` and ``short`` follow ``r<N>`` (e.g. `` is quarantined``) in the timeline
    and in the reason; ``skipped`` says why each newer known-good revision was passed over."""
    s = ctx.s
    stable, leaving = s.stable_revision, s.candidate_revision
    left = ctx.entry(leaving)
    _give_up_target(ctx, given_up)
    ctx.record(
        TimelineType.ROLLBACK_DECIDED,
        f"rollback target r{stable}{detail}: rolling back from r{leaving} to r{target} "
        "instead" + "".join(f"; {x}" for x in skipped),
        revision=leaving,
        warning=True,
    )
    why = left.reason if left is not None and left.reason else "rollback"
    _start_rollback(ctx, target, leaving, f"{why}; r{stable}{short}")


def _hold(ctx: _Ctx, revision: int, mark: QuarantineMark, skipped: list[str]) -> None:
    """No clean known-good revision: stay where traffic is, and say so (Stalled)."""
    why = "; ".join(skipped) or "no other known-good revision"
    ctx.quarantine_hold = (
        f"r{revision} is quarantined by {_named(mark)}, and no known-good revision is "
        f"clean ({why}): holding where traffic is. Release a clean revision (a new spec), "
        f"or lift the entry if it is wrong"
    )
    prev = _condition(ctx.inp.status, ConditionType.STALLED)
    if prev is None or prev.reason != TimelineType.QUARANTINE_HOLD or (
        prev.message != ctx.quarantine_hold
    ):
        ctx.note(TimelineType.QUARANTINE_HOLD, ctx.quarantine_hold)


def _quarantine(ctx: _Ctx) -> None:
    """The effects of quarantine marks: a quarantined candidate never gets (more)
    traffic; a quarantined stable is rolled back (automatically or after approval, per
    the policy) to the newest known-good revision that is clean; a quarantined rollback
    target is replaced by the next clean one. Without one, the release holds."""
    s = ctx.s
    if ctx.policy is None:
        return  # without a usable policy only break glass moves traffic
    cand, stable = s.candidate_revision, s.stable_revision
    cmark = _quarantined(ctx, cand)
    if s.phase in IN_FLIGHT and cand and cand != stable and cmark is not None:
        if s.pending_decision is not None:
            return  # a rollback of it is already proposed
        seen = ctx.inp.routes
        live = seen.weights.get(cand, 0) > 0 or seen.header_revision == cand
        reason = f"r{cand} is quarantined by {_named(cmark)}"
        ctx.record(TimelineType.QUARANTINE_REFUSED, reason, revision=cand, warning=True)
        if live and stable:
            _decide_rollback(ctx, reason)
        else:
            _fail_candidate(ctx, reason)
        return
    smark = _quarantined(ctx, stable)
    if smark is None:
        return
    if s.phase == Phase.ROLLING_BACK:
        leaving = cand
        target, skipped = _clean_target(ctx, leaving)
        if target is None or target == stable:
            _hold(ctx, stable, smark, skipped)
            return
        _retarget(ctx, target, skipped, f"quarantined by {smark.entry}",
                  f" is quarantined by {_named(smark)}", " is quarantined")
        return
    if s.phase not in SETTLED or smark.accepted_by or s.pending_decision is not None:
        return
    target, skipped = _clean_target(ctx, stable)
    if target is None:
        _hold(ctx, stable, smark, skipped)
        return
    via = "".join(f"; {x}" for x in skipped)
    reason = f"r{stable} is quarantined by {_named(smark)}"
    rollback = ctx.policy.rollback
    if rollback.mode == RollbackMode.AUTOMATIC or rollback.approval is None:
        ctx.record(
            TimelineType.ROLLBACK_DECIDED,
            f"rolling back r{stable} to r{target}, the newest clean known-good revision: "
            f"{reason}{via}",
            revision=stable,
            warning=True,
        )
        _start_rollback(ctx, target, stable, reason)
        return
    approval = rollback.approval
    expires = ctx.now + timedelta(seconds=parse_duration(approval.timeout))
    s.pending_decision = PendingDecision(
        action=DecisionAction.ROLLBACK,
        reason=reason,
        decided_at=ctx.now,
        expires_at=expires,
        required_approvers=approval.required_approvers,
        target=target,
        quarantine=smark.entry,
    )
    s.message = (
        f"rollback of r{stable} to r{target} proposed: {reason}{via}; waiting for "
        f"{approval.required_approvers} approver(s) until {_ts(expires)} (then "
        f"{approval.on_timeout.value}); traffic stays on r{stable}"
    )
    ctx.record(
        TimelineType.APPROVAL_REQUESTED,
        f"{s.message}. Approve: {_kubectl(ctx, ANNOTATION_APPROVE_ROLLBACK, 'true')} ; "
        f"reject (keep serving r{stable}): "
        f"{_kubectl(ctx, ANNOTATION_REJECT_ROLLBACK, '<reason>')}",
        revision=stable,
        warning=True,
    )
    ctx.wake(expires)


def _quarantine_decision(ctx: _Ctx) -> PendingDecision | None:
    """The pending rollback of a quarantined stable revision on a settled release."""
    s = ctx.s
    pd = s.pending_decision
    return pd if pd is not None and pd.quarantine and s.phase in SETTLED else None


def _keep_serving(ctx: _Ctx, who: str) -> None:
    """Humans chose to keep the quarantined stable: no rollback is proposed again for
    this entry (the mark remembers who), the condition stays Degraded."""
    s = ctx.s
    e = ctx.entry(s.stable_revision)
    if e is not None and e.quarantine is not None:
        e.quarantine.accepted_by = who
    s.pending_decision = None
    s.message = f"r{s.stable_revision} keeps serving although quarantined ({who} chose so)"


# --------------------------------------------------------------------------------------
# Pipeline step 0c: artifact integrity (policy spec.integrity)
# --------------------------------------------------------------------------------------
#
# A revision gets (more) traffic only once its artifact is verified: the route write that
# would give it traffic waits (``_safe_to_write``) and asks for the verification
# (``VerifyArtifact``), which runs in the background while its Deployment scales up. A
# verdict is fresh for ``reverifyAfter``; the revision a rollback would go to is
# re-verified in the background before its verdict ages out, so a rollback to a warm,
# verified revision never waits. A failed verdict refuses a candidate (rolled back if it
# had users), makes a rollback pick the next known-good target, and fails a drill.


def _integrity_spec(ctx: _Ctx) -> IntegritySpec | None:
    return ctx.policy.integrity if ctx.policy is not None else None


def _verdict(ctx: _Ctx, revision: int) -> IntegrityRecord | None:
    e = ctx.entry(revision) if revision else None
    return e.integrity if e is not None else None


def _verdict_age_limit(spec: IntegritySpec) -> timedelta:
    return timedelta(seconds=parse_duration(spec.reverify_after))


def _fresh(ctx: _Ctx, revision: int) -> bool:
    """Verified within ``reverifyAfter``, and since its pods last came back from zero
    (always, without an integrity policy)."""
    spec = _integrity_spec(ctx)
    if spec is None:
        return True
    rec = _verdict(ctx, revision)
    return (
        rec is not None
        and rec.verdict == IntegrityVerdict.VERIFIED
        and rec.at is not None
        and ctx.now - _aware(rec.at) < _verdict_age_limit(spec)
        and not _predates_pods(ctx, revision, rec.at)
    )


def _predates_pods(ctx: _Ctx, revision: int, at: datetime) -> bool:
    """The verdict is older than the revision's last scale-up from zero: the pods since
    read the store again, maybe after it changed."""
    e = ctx.entry(revision)
    return e is not None and e.scaled_up_at is not None and _aware(at) < _aware(e.scaled_up_at)


def _bring_back(ctx: _Ctx, revision: int) -> None:
    """The revision is scaled up for traffic (or a drill): from zero, its verdicts so far
    no longer count (see ``HistoryEntry.scaledUpAt``)."""
    e = ctx.entry(revision)
    if e is not None and _integrity_spec(ctx) is not None and not ctx.available(revision):
        e.scaled_up_at = ctx.now


def _verification_failed(ctx: _Ctx, revision: int) -> str | None:
    """Why the revision's last verification failed (None: it did not, or no policy asks)."""
    if _integrity_spec(ctx) is None:
        return None
    rec = _verdict(ctx, revision)
    if rec is None or rec.verdict != IntegrityVerdict.FAILED:
        return None
    return rec.message or "no reason recorded"


def _carries(ctx: _Ctx, revision: int) -> bool:
    """The routes read back send it users, copies of them, or bypassing callers."""
    seen = ctx.inp.routes
    return revision in (seen.header_revision, seen.primary_revision) or (
        seen.weights.get(revision, 0) > 0
        or (seen.mirror_revision == revision and seen.mirror_percent > 0)
    )


def _cleared(ctx: _Ctx, revision: int) -> bool:
    """May the revision be given more traffic? Without an integrity policy, yes; with one,
    its last verdict must be a pass, fresh unless the routes already send it traffic (it
    does not lose users because time passed: it is re-verified meanwhile)."""
    if _integrity_spec(ctx) is None:
        return True
    rec = _verdict(ctx, revision)
    if rec is None or rec.verdict != IntegrityVerdict.VERIFIED:
        return False
    return _carries(ctx, revision) or _fresh(ctx, revision)


def _receivers(ctx: _Ctx, want: SetRoutes) -> list[int]:
    """The revisions ``want`` gives more than the routes read back do: live weight, the
    header routes' callers, a mirror's copies, or the callers that bypass the routes."""
    seen = ctx.inp.routes
    out = [r for r, w in want.weights.items() if w > seen.weights.get(r, 0)]
    if want.header_revision is not None and want.header_revision != seen.header_revision:
        out.append(want.header_revision)
    mirrored = seen.mirror_percent if seen.mirror_revision == want.mirror_revision else 0
    if want.mirror_revision is not None and want.mirror_percent > mirrored:
        out.append(want.mirror_revision)
    if want.primary_revision is not None and want.primary_revision != seen.primary_revision:
        out.append(want.primary_revision)
    return sorted(set(out))


def _unverified_receivers(ctx: _Ctx, want: SetRoutes | None) -> list[int]:
    if want is None or _integrity_spec(ctx) is None:
        return []
    return [r for r in _receivers(ctx, want) if not _cleared(ctx, r)]


def _verification_wait(ctx: _Ctx, revision: int) -> str:
    """Why a route write to ``revision`` waits, in words."""
    failed = _verification_failed(ctx, revision)
    if failed is not None:
        return f"r{revision} gets no traffic: its artifact failed verification: {failed}"
    rec = _verdict(ctx, revision)
    if rec is None or rec.at is None:
        when = "its artifact is not verified yet"
    elif _predates_pods(ctx, revision, rec.at):
        when = (f"its pods were started from zero after its last verification "
                f"({_ts(rec.at)}) and read the store again")
    else:
        when = f"its last verification ({_ts(rec.at)}) is older than reverifyAfter"
    doing = "verifying now" if revision in ctx.inp.verifying else "verification asked for"
    return f"r{revision} gets traffic once its artifact is verified: {when} ({doing})"


def _record_integrity(ctx: _Ctx) -> None:
    """Record the verdicts the controller brought (newer than the history's), each change
    once in the timeline and as an Event naming what was checked or what failed."""
    for rev, r in sorted(ctx.inp.integrity.items()):
        e = ctx.entry(rev)
        if e is None or r.want != e.model_digest:
            continue  # a verdict on another artifact than the revision's
        old = e.integrity
        if old is not None and old.at is not None and _aware(r.at) <= _aware(old.at):
            continue
        verdict = IntegrityVerdict.VERIFIED if r.ok else IntegrityVerdict.FAILED
        e.integrity = IntegrityRecord(
            verdict=verdict, at=r.at, digest=r.digest, message=r.message
        )
        if old is not None and old.verdict == verdict and (r.ok or old.message == r.message):
            continue  # a re-verification with the same outcome: not news
        if r.ok:
            ctx.record(
                TimelineType.ARTIFACT_VERIFIED,
                f"r{rev}'s artifact verified: {r.message}",
                revision=rev,
            )
        else:
            ctx.record(
                TimelineType.ARTIFACT_VERIFICATION_FAILED,
                f"r{rev}'s artifact failed verification, so it gets no traffic: {r.message}",
                revision=rev,
                warning=True,
            )


def _integrity(ctx: _Ctx) -> None:
    """The effects of verdicts: a failed candidate is refused (rolled back when it had
    users), a failed rollback target is replaced by the next known-good one (none: the
    release holds where traffic is). While settled, the revision a rollback would go to
    is kept verified in the background."""
    spec = _integrity_spec(ctx)
    if spec is None:
        return
    _record_integrity(ctx)
    s = ctx.s
    cand, stable = s.candidate_revision, s.stable_revision
    failed = _verification_failed(ctx, cand) if cand and cand != stable else None
    if s.phase in IN_FLIGHT and failed is not None and s.pending_decision is None:
        reason = f"r{cand}'s artifact failed verification: {failed}"
        if _carries(ctx, cand) and stable:
            _decide_rollback(ctx, reason)
        else:
            _fail_candidate(ctx, reason)
        return
    failed = _verification_failed(ctx, stable) if stable else None
    if s.phase == Phase.ROLLING_BACK and failed is not None and not _carries(ctx, stable):
        leaving = cand
        target, skipped = _clean_target(ctx, leaving)
        if target is None or target == stable:
            ctx.stalled = (
                f"rollback target r{stable}'s artifact failed verification ({failed}) and no "
                f"other known-good revision passes it"
                + "".join(f"; {x}" for x in skipped)
                + f": holding where traffic is (r{leaving}). Release a new spec, or fix the "
                "store: the target is verified again every reverifyAfter"
            )
            s.message = f"rolling back from r{leaving}: held: {ctx.stalled}"
            return
        _retarget(ctx, target, skipped, f"its artifact failed verification: {failed}",
                  f"'s artifact failed verification ({failed})", "'s artifact failed verification")
        return
    if s.phase in SETTLED and s.drill is None:
        _keep_target_verified(ctx, spec)


def _verify_early(ctx: _Ctx) -> None:
    """Verification starts with the scale-up, not at the route write: the candidate in
    flight and the rollback target are verified while they become Available."""
    if _integrity_spec(ctx) is None:
        return
    s = ctx.s
    wanted = []
    if s.phase in IN_FLIGHT:
        wanted.append(s.candidate_revision)
        if s.restoring:
            wanted.append(s.stable_revision)
    if s.phase == Phase.ROLLING_BACK:
        wanted.append(s.stable_revision)
    for rev in wanted:
        if rev and not _cleared(ctx, rev) and _verification_failed(ctx, rev) is None:
            ctx.ask_verify(rev)


def _target_unverifiable(ctx: _Ctx) -> str | None:
    """While Promoted: the newest known-good revision before the stable failed its
    artifact's verification, so a rollback now would pass it over (None: it did not)."""
    s = ctx.s
    if _integrity_spec(ctx) is None or s.phase != Phase.PROMOTED:
        return None
    newest = _previous_known_good(s)
    failed = _verification_failed(ctx, newest) if newest is not None else None
    if newest is None or failed is None:
        return None
    target = _previous_known_good(s, checking=True)
    then = f"a rollback now would go to r{target}" if target is not None else (
        "a rollback now would have no verified revision to go to"
    )
    return f"r{newest}'s artifact failed verification ({failed}): {then}"


def _keep_target_verified(ctx: _Ctx, spec: IntegritySpec) -> None:
    """Re-verify the revision a rollback would go to before its verdict ages out, so the
    rollback never waits; and, as rarely, known-good revisions that failed (a store put
    right makes them targets again)."""
    limit = _verdict_age_limit(spec)
    # Re-verified a tenth of reverifyAfter before the verdict ages out: the rollback finds
    # it fresh even if the store is slow.
    early = limit / 10
    target = _previous_known_good(ctx.s, checking=True)
    due: list[int] = []
    if target is not None:
        due.append(target)
    due += [
        e.revision for e in ctx.s.history
        if _known_good(e) and e.integrity is not None
        and e.integrity.verdict == IntegrityVerdict.FAILED
    ]
    for rev in due:
        rec = _verdict(ctx, rev)
        at = _aware(rec.at) if rec is not None and rec.at is not None else None
        lead = early if rev == target else timedelta(0)
        if at is None or ctx.now >= at + limit - lead:
            ctx.ask_verify(rev)
        else:
            ctx.wake(at + limit - lead)


# --------------------------------------------------------------------------------------
# Pipeline step 1: analysis results of this call
# --------------------------------------------------------------------------------------


def _record_analysis(ctx: _Ctx) -> None:
    s, policy, ms = ctx.s, ctx.policy, ctx.inp.measurements
    if not ms or policy is None or s.phase not in ROLLING_OUT:
        return
    stage = ctx.stage()
    if stage is None or not stage.analysed:
        return
    a = s.analysis
    if a.last_run_at is not None and ctx.now <= a.last_run_at:
        return  # this round is already recorded: never count twice
    if s.step_started_at is None or ctx.now <= s.step_started_at:
        # The stage's routes are not in effect yet, or it began this instant: the round
        # measured traffic of another split, not of this stage.
        return
    cand = s.candidate_revision
    round_ = [
        m.model_copy(update={"at": ctx.now, "revision": cand})
        for m in ms
        if m.revision in (0, cand)
    ]
    if not round_:
        return
    before = _round_verdict(_latest_round(s))
    verdict = _round_verdict(round_)
    a.last_run_at = ctx.now
    a.measurements = [*a.measurements, *round_][-MAX_MEASUREMENTS:]
    a.inconclusive += sum(1 for m in round_ if m.verdict == Verdict.INCONCLUSIVE)
    failed = [m for m in round_ if m.verdict == Verdict.FAIL]
    analysis = policy.analysis
    if verdict == Verdict.PASS:
        a.consecutive_failures = 0
        return
    if verdict == Verdict.INCONCLUSIVE:
        if before != Verdict.INCONCLUSIVE:
            ctx.record(
                "AnalysisInconclusive",
                f"r{cand} analysis inconclusive at {stage.label}: "
                + "; ".join(m.message or m.metric for m in round_ if m.verdict != Verdict.PASS)
                + " (holding: no traffic increase, no rollback)",
                revision=cand,
                warning=True,
            )
        return
    a.failures += len(failed)
    a.consecutive_failures += len(failed)
    detail = "; ".join(_describe(m) for m in failed)
    limit_hit = a.failures >= analysis.failure_limit
    consecutive_hit = (
        analysis.consecutive_failure_limit > 0
        and a.consecutive_failures >= analysis.consecutive_failure_limit
    )
    counts = f"failures {a.failures}/{analysis.failure_limit}"
    if analysis.consecutive_failure_limit:
        counts += f", consecutive {a.consecutive_failures}/{analysis.consecutive_failure_limit}"
    ctx.record(
        TimelineType.ANALYSIS_FAILED,
        f"r{cand} at {stage.label}: {detail} ({counts})",
        revision=cand,
        warning=True,
    )
    if limit_hit or consecutive_hit:
        _decide_rollback(ctx, f"{detail} ({counts})")


def _describe(m: Measurement) -> str:
    """``error-rate 0.12 > max 0.05 at <time>``: metric, value, threshold, time."""
    what = m.message
    if not what:
        bounds = " ".join(
            f"{k} {v:g}" for k, v in (("min", m.min), ("max", m.max)) if v is not None
        )
        # valueText: +Inf / -Inf are stored as text (value is null), never "no data".
        what = f"{m.metric} {m.shown} (thresholds {bounds or 'none'})"
    return f"{what} at {_ts(m.at)}" if m.at is not None else what


# --------------------------------------------------------------------------------------
# Pipeline step 2: a pending decision whose deadline passed
# --------------------------------------------------------------------------------------


def _expire_decision(ctx: _Ctx) -> None:
    s = ctx.s
    pd = s.pending_decision
    if _quarantine_decision(ctx) is not None and ctx.policy is not None:
        _expire_quarantine_decision(ctx)
        return
    if s.phase != Phase.AWAITING_APPROVAL or pd is None or ctx.policy is None:
        return
    if pd.expires_at is None or ctx.now < pd.expires_at:
        return
    approval = ctx.policy.rollback.approval
    on_timeout = approval.on_timeout if approval is not None else ApprovalTimeoutAction.ROLLBACK
    cand = s.candidate_revision
    got = f"{len(pd.approvals)}/{pd.required_approvers} approvals"
    if on_timeout == ApprovalTimeoutAction.ROLLBACK:
        ctx.record(
            TimelineType.APPROVAL_TIMED_OUT,
            f"no decision on r{cand} by {_ts(pd.expires_at)} ({got}): onTimeout Rollback",
            revision=cand,
            warning=True,
        )
        _start_rollback(
            ctx,
            _decided_target(ctx, pd),
            cand,
            f"approval timed out at {_ts(pd.expires_at)}: {pd.reason}",
        )
    else:
        ctx.record(
            TimelineType.APPROVAL_TIMED_OUT,
            f"no decision on r{cand} by {_ts(pd.expires_at)} ({got}): onTimeout Resume, "
            "the rollout continues",
            revision=cand,
            warning=True,
        )
        _resume(ctx)


def _decided_target(ctx: _Ctx, pd: PendingDecision) -> int:
    """The target of an approved (or timed-out) rollback of the in-flight candidate: the
    one proposed, unless it was quarantined since (then chosen again)."""
    target = pd.target or ctx.s.stable_revision
    if _quarantined(ctx, target) is None:
        return target
    return _back_to(ctx, ctx.s.candidate_revision)[0]


def _expire_quarantine_decision(ctx: _Ctx) -> None:
    s = ctx.s
    pd = s.pending_decision
    assert pd is not None and ctx.policy is not None
    if pd.expires_at is None or ctx.now < pd.expires_at:
        return
    approval = ctx.policy.rollback.approval
    on_timeout = approval.on_timeout if approval is not None else ApprovalTimeoutAction.ROLLBACK
    stable = s.stable_revision
    got = f"{len(pd.approvals)}/{pd.required_approvers} approvals"
    if on_timeout == ApprovalTimeoutAction.ROLLBACK:
        ctx.record(
            TimelineType.APPROVAL_TIMED_OUT,
            f"no decision on quarantined r{stable} by {_ts(pd.expires_at)} ({got}): "
            "onTimeout Rollback",
            revision=stable,
            warning=True,
        )
        _approved_quarantine_rollback(
            ctx, f"approval timed out at {_ts(pd.expires_at)}: {pd.reason}"
        )
        return
    ctx.record(
        TimelineType.APPROVAL_TIMED_OUT,
        f"no decision on quarantined r{stable} by {_ts(pd.expires_at)} ({got}): onTimeout "
        f"Resume, r{stable} keeps serving",
        revision=stable,
        warning=True,
    )
    _keep_serving(ctx, "approval.onTimeout Resume")


def _approved_quarantine_rollback(ctx: _Ctx, reason: str) -> None:
    """Roll the quarantined stable back to the newest clean known-good revision, chosen
    again now (one may have been quarantined since the decision)."""
    s = ctx.s
    stable = s.stable_revision
    mark = _quarantined(ctx, stable)
    target, skipped = _clean_target(ctx, stable)
    s.pending_decision = None
    if target is None:
        if mark is not None:
            _hold(ctx, stable, mark, skipped)
        return
    _start_rollback(ctx, target, stable, reason)


# --------------------------------------------------------------------------------------
# Pipeline step 3: human actions (annotations)
# --------------------------------------------------------------------------------------


def _last_decision_timeout(s: ModelReleaseStatus) -> TimelineEntry | None:
    """The timeout entry of the most recent decision, if that decision timed out."""
    for e in reversed(s.timeline):
        if e.type == TimelineType.APPROVAL_TIMED_OUT:
            return e
        if e.type in (TimelineType.APPROVAL_REQUESTED, TimelineType.REJECTED):
            return None
    return None


def _no_pending(ctx: _Ctx, what: str, user: str) -> None:
    timeout = _last_decision_timeout(ctx.s)
    late = ""
    if timeout is not None and timeout.at is not None:
        late = f" (the decision timed out at {_ts(timeout.at)} and was acted upon)"
    ctx.note(
        TimelineType.ACTION_IGNORED,
        f"{what} by {_who(user)} ignored: no rollback decision is pending{late}",
        user=user,
    )


def _act_rollback(ctx: _Ctx, a: HumanAction) -> bool:
    s = ctx.s
    reason = f"break glass by {_who(a.user)}: {a.value.strip()}"
    if s.phase in IN_FLIGHT and s.candidate_revision:
        ctx.record(TimelineType.BREAK_GLASS, reason, user=a.user, warning=True)
        if s.stable_revision:
            back = _back_to(ctx, s.candidate_revision)[0]
            _start_rollback(ctx, back, s.candidate_revision, reason)
        else:
            _fail_candidate(ctx, f"{reason} (first release: no known-good revision to restore)")
        return True
    serving = ctx.entry(s.stable_revision) if s.stable_revision else None
    # Settled on a revision that is not known-good (a roll-forward from a stalled rollback
    # was itself rolled back to it): break glass goes on to a known-good one.
    unproven = s.phase in SETTLED and serving is not None and not _known_good(serving)
    if s.phase == Phase.PROMOTED or unproven:
        target = _previous_known_good(s, checking=_integrity_spec(ctx) is not None)
        if target is None:
            ctx.note(
                TimelineType.ACTION_IGNORED,
                f"{reason} ignored: no known-good revision before r{s.stable_revision}",
                user=a.user,
            )
            return False
        ctx.record(
            TimelineType.BREAK_GLASS,
            f"{reason} (r{s.stable_revision} -> r{target})",
            revision=s.stable_revision,
            user=a.user,
            warning=True,
        )
        _start_rollback(ctx, target, s.stable_revision, reason)
        return True
    if s.phase == Phase.ROLLING_BACK and _rollback_stalled(ctx):
        older = _older_target(ctx)
        if older is not None:
            target, leaving = s.stable_revision, s.candidate_revision
            _give_up_target(ctx, f"{_not_in_time(ctx)}; break glass by {_who(a.user)} chose "
                            f"r{older} instead")
            ctx.record(
                TimelineType.BREAK_GLASS,
                f"{reason} (r{leaving} -> r{older}: r{target} could not be restored)",
                revision=leaving,
                user=a.user,
                warning=True,
            )
            _start_rollback(ctx, older, leaving, reason)
            return True
        ctx.note(
            TimelineType.ACTION_IGNORED,
            f"{reason} ignored: no known-good revision older than r{s.stable_revision}; "
            + _ways_out(ctx),
            user=a.user,
        )
        return False
    state = {
        Phase.ROLLING_BACK: f"already rolling back to r{s.stable_revision}",
        Phase.ROLLED_BACK: f"already rolled back: r{s.stable_revision} is the last known-good",
        Phase.FAILED: f"nothing in flight: r{s.stable_revision} is the last known-good",
    }.get(s.phase, "nothing is released yet")
    ctx.note(TimelineType.ACTION_IGNORED, f"{reason} ignored: {state}", user=a.user)
    return False


def _known_good(e: HistoryEntry) -> bool:
    """Promoted once and never rolled back (or failed) since."""
    return e.promoted_at is not None and e.outcome in (Outcome.PROMOTED, Outcome.RETIRED)


def _promotion(e: HistoryEntry) -> tuple[datetime, int]:
    """Order of promotions (a restored revision was promoted again, later)."""
    assert e.promoted_at is not None
    return e.promoted_at, e.revision


def _previous_known_good(
    s: ModelReleaseStatus,
    *,
    before: HistoryEntry | None = None,
    skip: int = 0,
    checking: bool = False,
) -> int | None:
    """The known-good revision promoted most recently, the stable (and ``skip``) aside,
    neither quarantined nor (``checking``: the policy verifies artifacts) failing its
    artifact's verification; with ``before``, only one promoted before that entry."""
    good = [
        e
        for e in s.history
        if _known_good(e) and e.revision not in (s.stable_revision, skip) and e.quarantine is None
        and not (checking and _failed_entry(e))
    ]
    if before is not None and before.promoted_at is not None:
        good = [e for e in good if _promotion(e) < _promotion(before)]
    return max(good, key=_promotion).revision if good else None


def _act_approve(ctx: _Ctx, a: HumanAction) -> bool:
    s = ctx.s
    pd = s.pending_decision
    quarantine = _quarantine_decision(ctx) is not None
    if (s.phase != Phase.AWAITING_APPROVAL and not quarantine) or pd is None:
        _no_pending(ctx, "approval", a.user)
        return False
    users = [r.user for r in pd.approvals]
    counted = a.user not in users
    if not counted:
        ctx.note(
            TimelineType.ACTION_IGNORED,
            f"duplicate approval by {_who(a.user)} counts once "
            f"({len(users)}/{pd.required_approvers})",
            user=a.user,
        )
    else:
        pd.approvals.append(ApprovalRecord(user=a.user, at=ctx.now))
        users.append(a.user)
        leaving = s.stable_revision if quarantine else s.candidate_revision
        ctx.record(
            TimelineType.APPROVED,
            f"rollback of r{leaving} approved by {_who(a.user)} "
            f"({len(users)}/{pd.required_approvers})",
            user=a.user,
        )
    if len(users) >= pd.required_approvers:
        names = ", ".join(_who(u) for u in users)
        if quarantine:
            _approved_quarantine_rollback(ctx, f"rollback approved by {names}: {pd.reason}")
            return counted
        _start_rollback(
            ctx,
            _decided_target(ctx, pd),
            s.candidate_revision,
            f"rollback approved by {names}: {pd.reason}",
        )
    return counted


def _act_reject(ctx: _Ctx, a: HumanAction) -> bool:
    s = ctx.s
    if _quarantine_decision(ctx) is not None:
        ctx.record(
            TimelineType.REJECTED,
            f"rollback of quarantined r{s.stable_revision} rejected by {_who(a.user)}: "
            f"{a.value.strip()}; it keeps serving",
            user=a.user,
        )
        _keep_serving(ctx, _who(a.user))
        return True
    if s.phase != Phase.AWAITING_APPROVAL or s.pending_decision is None:
        _no_pending(ctx, "rejection", a.user)
        return False
    ctx.record(
        TimelineType.REJECTED,
        f"rollback of r{s.candidate_revision} rejected by {_who(a.user)}: "
        f"{a.value.strip()}; rollout resumes, failure counters reset",
        user=a.user,
    )
    _resume(ctx)
    return True


def _act_promote(ctx: _Ctx, a: HumanAction) -> bool:
    s = ctx.s
    plan = ctx.plan()
    stage = None if plan is None else plan.stage(s.current_step)
    cand = s.candidate_revision
    # A manual gate, or a first release's preview: a human may vouch for a revision that
    # no user traffic can measure yet.
    gate = stage is not None and (stage.manual or stage.kind == StageKind.FIRST_PREVIEW)
    if plan is not None and stage is not None and s.phase in ROLLING_OUT and gate:
        if s.step_started_at is None:
            # Kept on the object: the gate is not in effect yet (its routes are not read
            # back), so a human cannot have seen what they pass; it passes once it is.
            ctx.note(
                "PromoteWaiting",
                f"promote by {_who(a.user)} waits: {stage.label} is not in effect yet",
                user=a.user,
            )
            ctx.kept.add(a)
            return False
        if not ctx.available(cand):
            # Kept on the object: the gate passes once the candidate is Available again.
            ctx.note(
                "PromoteWaiting",
                f"promote by {_who(a.user)} waits: r{cand} is not Available",
                user=a.user,
            )
            ctx.kept.add(a)
            return False
        what = "the manual gate" if stage.manual else "the preview (vouching for it)"
        ctx.record(
            TimelineType.PROMOTE_REQUESTED,
            f"{_who(a.user)} passed {what} of r{cand} ({stage.label})",
            user=a.user,
        )
        _advance(ctx, plan)
        return True
    if s.phase in ROLLING_OUT and stage is not None:
        why = f"r{cand} is at {stage.label}, which is not a manual gate"
    else:
        why = f"phase is {s.phase.value}" + _stalled_hint(ctx)
    ctx.note(TimelineType.ACTION_IGNORED, f"promote by {_who(a.user)} ignored: {why}", user=a.user)
    return False


def _act_retry(ctx: _Ctx, a: HumanAction) -> bool:
    s = ctx.s
    cur = ctx.entry(s.current_revision)
    if (
        s.phase in (Phase.FAILED, Phase.ROLLED_BACK)
        and cur is not None
        and cur.outcome in (Outcome.FAILED, Outcome.ROLLED_BACK)
        and cur.spec_hash == ctx.inp.spec_hash
    ):
        ctx.record(
            TimelineType.RETRY,
            f"retry by {_who(a.user)}: r{cur.revision} starts again"
            + (f" against stable r{s.stable_revision}" if s.stable_revision else ""),
            revision=cur.revision,
            user=a.user,
        )
        _start_revision(ctx, cur.revision, fresh=False)
        return True
    why = (
        "the spec changed (it becomes a new revision)"
        if cur is not None and cur.spec_hash != ctx.inp.spec_hash
        else f"phase is {s.phase.value}, only a Failed or RolledBack revision can be retried"
        + _stalled_hint(ctx)
    )
    ctx.note(TimelineType.ACTION_IGNORED, f"retry by {_who(a.user)} ignored: {why}", user=a.user)
    return False


def _target_rollback(ctx: _Ctx) -> str:
    s = ctx.s
    rolling = s.phase in IN_FLIGHT or s.phase == Phase.ROLLING_BACK
    rev = s.candidate_revision if rolling and s.candidate_revision else s.stable_revision
    return f"r{rev}" if rev else ""


def _target_decision(ctx: _Ctx) -> str:
    s = ctx.s
    pd = s.pending_decision
    if pd is None or (s.phase != Phase.AWAITING_APPROVAL and _quarantine_decision(ctx) is None):
        return ""
    when = _ts(pd.decided_at) if pd.decided_at is not None else "?"
    if pd.quarantine:
        return f"the quarantine rollback decision on r{s.stable_revision} of {when}"
    return f"the rollback decision on r{s.candidate_revision} of {when}"


def _target_gate(ctx: _Ctx) -> str:
    s = ctx.s
    stage = ctx.stage()
    if stage is None or s.phase not in ROLLING_OUT or not s.candidate_revision:
        return ""
    since = f" (since {_ts(s.step_started_at)})" if s.step_started_at is not None else ""
    return f"r{s.candidate_revision} {stage.label}{since}"


def _target_attempt(ctx: _Ctx) -> str:
    s = ctx.s
    cur = ctx.entry(s.current_revision)
    if cur is None or cur.outcome not in (Outcome.FAILED, Outcome.ROLLED_BACK):
        return ""
    when = _ts(cur.finished_at) if cur.finished_at is not None else "?"
    return f"r{cur.revision} {cur.outcome.value} at {when}"


@dataclass(frozen=True)
class _ActionRule:
    """How one kind of action annotation is handled."""

    act: Callable[[_Ctx, HumanAction], bool]  # True: it acted (False: ignored, a note)
    target: Callable[[_Ctx], str]  # what it would act on now ("": nothing)
    noun: str  # how messages name it: "promote by alice ..."
    purpose: str  # what it is for, in the how-to of a refused value
    free_text: bool  # the value is a reason (any non-empty text); else it must be "true"
    #: The same value by another user is another action (approvals: the decision's list of
    #: approvers binds them, and counts each approver once).
    per_user: bool = False


_ACTIONS: Mapping[str, _ActionRule] = {
    "rollback": _ActionRule(
        _act_rollback, _target_rollback, "break glass", "roll back now", free_text=True
    ),
    "approve-rollback": _ActionRule(
        _act_approve, _target_decision, "approval", "approve the pending rollback",
        free_text=False, per_user=True,
    ),
    "reject-rollback": _ActionRule(
        _act_reject, _target_decision, "rejection", "reject the pending rollback",
        free_text=True,
    ),
    "promote": _ActionRule(
        _act_promote, _target_gate, "promote", "pass a manual gate", free_text=False
    ),
    "retry": _ActionRule(
        _act_retry, _target_attempt, "retry", "retry the failed revision", free_text=False
    ),
    "drill": _ActionRule(
        lambda ctx, a: _act_drill(ctx, a), lambda ctx: _target_drill(ctx),
        "drill", "run a rollback drill now", free_text=False,
    ),
    "reset-breaker": _ActionRule(
        lambda ctx, a: _act_reset_breaker(ctx, a), lambda ctx: _target_breaker(ctx),
        "breaker reset", "reset the tripped circuit breaker", free_text=False,
    ),
}
# Break glass first: it must win over a promote or a gate seen in the same call.
_ACTION_ORDER = (
    "rollback", "approve-rollback", "reject-rollback", "promote", "retry", "reset-breaker",
    "drill",
)
#: ``true``, or ``true`` and a suffix after one of these (``true-2``, ``true:alice``): a
#: unique value, for acting again where the same value acted before.
_TRUE = re.compile(r"true(?:[-_.:].+)?", re.IGNORECASE | re.DOTALL)
#: A consumed annotation still there this long after its removal was first sent (its
#: removal keeps failing, or something keeps putting it back before the removal is seen) is
#: left on the object. Counted from the removal sent, not from the consumption: the time an
#: operator was down between the two proves nothing about the annotation.
REMOVAL_PATIENCE = 60.0


def _bounded_actions(actions: Sequence[HumanAction]) -> tuple[HumanAction, ...]:
    """The engine boundary: values and users clipped to what status stores, in a fixed
    order (kind, then user, then value) so the decision does not depend on input order."""
    clipped = {
        HumanAction(a.kind, clip(a.value, MAX_HUMAN_TEXT), clip(a.user, MAX_HUMAN_TEXT))
        for a in actions
    }
    return tuple(sorted(clipped, key=lambda a: (_ACTION_ORDER.index(a.kind), a.user, a.value)))


def _mark(a: HumanAction) -> tuple[str, str, str]:
    return ANNOTATION_OF[a.kind], a.value, a.user


def _scope(s: ModelReleaseStatus) -> int:
    """The revision human actions concern now: the one in flight, else the spec's."""
    return s.candidate_revision or s.current_revision


def _fresh_value(ctx: _Ctx, rule: _ActionRule) -> str:
    """A value never used before, for the how-to of an action that must act again."""
    if rule.free_text:
        return "'<a new reason>'"
    return f"true-{int(ctx.now.timestamp())}"


def _value_refused(ctx: _Ctx, a: HumanAction, rule: _ActionRule) -> bool:
    """Ignore (with a note saying how to do it) a value the action does not accept:
    ``rewind.dev/promote=false`` must never promote."""
    value = a.value.strip()
    if rule.free_text:
        if value:
            return False
        why, example = "no reason given", "'<reason>'"
    else:
        if _TRUE.fullmatch(value):
            return False
        why, example = f'the value is "{clip(value, 64)}", not "true"', "true"
    ctx.note(
        TimelineType.ACTION_IGNORED,
        f"{rule.noun} by {_who(a.user)} ignored: {why}; to {rule.purpose} run: "
        f"{_kubectl(ctx, ANNOTATION_OF[a.kind], example)}",
        user=a.user,
    )
    return True


def _left_note(ctx: _Ctx, a: HumanAction, rule: _ActionRule, why: str) -> None:
    """An annotation left on the object on purpose, and how to act for real."""
    key = ANNOTATION_OF[a.kind]
    ctx.note(
        TimelineType.ACTION_IGNORED,
        f"{rule.noun} by {_who(a.user)} ignored: {why}. {key}={clip(a.value, 64)!r} is "
        "left on the object and never acts again (it came back after it was consumed, as "
        "a GitOps tool re-applying it does; removing it again would only bring it back). "
        f"To {rule.purpose}, set a new value: "
        f"kubectl annotate --overwrite modelrelease/{ctx.inp.name or '<name>'} -n "
        f"{ctx.inp.namespace or '<namespace>'} {key}={_fresh_value(ctx, rule)}",
        user=a.user,
    )


def _returning_blocked(
    ctx: _Ctx, a: HumanAction, rule: _ActionRule, returning: Sequence[ConsumedAction]
) -> str | None:
    """Why a value that comes back (consumed before, then seen gone) must not act, or None.

    A value its author left on the object earlier in this revision never acts again in it
    (a GitOps tool's copy, put back after a human overwrote it, cannot pass the next gate);
    a reason acts once; ``true`` (or a variant) never acts again on what it acted on. An
    approval is bound by the decision's own list of approvers: the same approver counts
    once, another one counts."""
    if not returning:
        return None
    scope = _scope(ctx.s)
    if any(c.keep and c.revision == scope and c.user == a.user for c in returning):
        return f"the same value by {_who(a.user)} was left on the object during r{scope}"
    acted = [c for c in returning if c.target]
    if rule.free_text:
        if acted:
            last = acted[-1]
            at = _ts(last.at) if last.at is not None else "?"
            return f"the same reason already acted on {last.target} at {at}; a reason acts once"
        return None
    target = rule.target(ctx)
    if not rule.per_user and target and any(c.target == target for c in acted):
        return f"the same value already acted on {target}"
    return None


def _judge(ctx: _Ctx, action: HumanAction) -> ConsumedAction | None:
    """Act on (or ignore) an annotation seen for the first time and return its ledger
    entry; None: left on the object for a later call (no usable policy, or a promote
    waiting for its candidate)."""
    s = ctx.s
    rule = _ACTIONS[action.kind]
    key, value, user = _mark(action)
    # An approval is per user: the same value by another approver is another action, not
    # this one coming back (a GitOps tool puts back its own copy, under its own user).
    returning = [
        c for c in s.consumed_actions
        if c.key == key and c.value == value and c.gone_at is not None
        and (not rule.per_user or c.user == user)
    ]

    def entry(target: str, *, keep: bool) -> ConsumedAction:
        return ConsumedAction(
            key=key, value=value, user=user, at=ctx.now, target=target, revision=_scope(s),
            keep=keep,
        )

    if _value_refused(ctx, action, rule):
        return entry("", keep=bool(returning))
    if ctx.policy is None and action.kind != "rollback":
        return None  # acted on once the policy is usable again
    blocked = _returning_blocked(ctx, action, rule, returning)
    if blocked is not None:
        _left_note(ctx, action, rule, blocked)
        return entry("", keep=True)
    target = rule.target(ctx)
    acted = rule.act(ctx, action)
    if action in ctx.kept:
        return None
    if not acted and returning:
        _left_note(ctx, action, rule, "it did not act (see the note before)")
    return entry(target if acted else "", keep=bool(returning) and not acted)


def _consume_actions(ctx: _Ctx) -> None:
    """Act on each annotation at most once, whether or not its removal happens, and never
    let a value that comes back act on the same thing again.

    ``status.consumedActions`` is the ledger. An annotation still present with the key,
    value and user of an entry whose annotation was never seen gone is the same annotation
    (its removal failed, or is not seen yet): it is only removed again, with no event and
    no timeline entry. An entry whose annotation is seen gone is kept (``goneAt``), bounded:
    the same value set again later is a new action, judged by ``_returning_blocked``. A
    value that comes back and does not act is left on the object (``keep``): a GitOps tool
    that keeps it in Git then has nothing to restore, so nothing loops.
    """
    s = ctx.s
    ctx.kept.clear()
    present = {_mark(a) for a in ctx.actions}
    for c in s.consumed_actions:
        if c.gone_at is None and (c.key, c.value, c.user) not in present:
            c.gone_at = ctx.now
            if c.keep:
                c.revision = _scope(s)  # left on the object through this revision
    live = {(c.key, c.value, c.user): c for c in s.consumed_actions if c.gone_at is None}
    for action in ctx.actions:
        mark = _mark(action)
        entry = live.get(mark)
        if entry is None:
            entry = _judge(ctx, action)
            if entry is None:
                continue
            s.consumed_actions.append(entry)
            live[mark] = entry
        elif not entry.keep and _removal_given_up(ctx, entry, mark[0]):
            entry.keep = True
            ctx.note(
                TimelineType.ACTION_IGNORED,
                f"{mark[0]}={clip(mark[1], 64)!r} is still there {_dur(REMOVAL_PATIENCE)} "
                "after it was consumed (its removal keeps failing, or something puts it "
                "back at once): it is left on the object and never acts again",
                user=mark[2],
            )
        if not entry.keep:
            ctx.remove(action)


def _removal_given_up(ctx: _Ctx, entry: ConsumedAction, key: str) -> bool:
    """The annotation of ``entry`` is still there ``REMOVAL_PATIENCE`` after this operator
    first sent its removal (and after its consumption)."""
    sent = ctx.inp.removals_sent.get(key)
    if sent is None or entry.at is None:
        return False
    return ctx.now > max(sent, entry.at) + timedelta(seconds=REMOVAL_PATIENCE)


def _removals_pending(s: ModelReleaseStatus) -> bool:
    """A consumed annotation whose removal is not seen yet."""
    return any(c.gone_at is None and not c.keep for c in s.consumed_actions)


# --------------------------------------------------------------------------------------
# Pipeline step 4: the spec changed
# --------------------------------------------------------------------------------------


def _check_spec(ctx: _Ctx) -> None:
    s = ctx.s
    if ctx.policy is None:
        return
    newest = max(s.history, key=lambda e: e.revision) if s.history else None
    described = ctx.entry(s.current_revision) or newest
    if described is not None and described.spec_hash == ctx.inp.spec_hash:
        return
    restore = _restorable(ctx)
    if s.phase == Phase.ROLLING_BACK:
        if restore is not None and restore.revision == s.stable_revision:
            ctx.deferred_spec = True  # the rollback restores it; then it is the spec's
            return
        if not _rollback_stalled(ctx):
            ctx.deferred_spec = True  # noted in the message once the machine has run
            return
        # A rollback that cannot finish never blocks a roll-forward: the new spec is
        # released against what serves users now.
        _abandon_rollback(ctx, "the spec changed")
    new = 1 + max(
        [s.current_revision, s.candidate_revision, s.stable_revision]
        + [e.revision for e in s.history]
    )
    cand = s.candidate_revision
    if s.phase in IN_FLIGHT and cand and cand != s.stable_revision:
        then = f"r{restore.revision} is restored" if restore is not None else f"r{new}"
        old = ctx.entry(cand)
        if old is not None and s.restoring:
            old.outcome = Outcome.RETIRED  # still known-good: only its restore stopped
            old.finished_at = ctx.now
            old.reason = f"restore superseded: the spec changed again ({then})"
        elif old is not None:
            old.outcome = Outcome.SUPERSEDED
            old.finished_at = ctx.now
            old.reason = f"superseded by {then} (the spec changed mid-rollout)"
        ctx.scale_down(cand)
        ctx.record("Superseded", f"r{cand} superseded by {then}: the spec changed",
                   revision=cand)
    if restore is not None:
        _start_restore(ctx, restore)
        return
    _start_revision(ctx, new, fresh=True)


def _rollback_window(ctx: _Ctx) -> list[HistoryEntry]:
    """The stable revision, then the ``rollbackWindow.revisions`` revisions promoted most
    recently before it (empty: the window is off)."""
    s, policy = ctx.s, ctx.policy
    size = policy.rollback_window.revisions if policy is not None else 0
    if size <= 0:
        return []
    promoted = sorted(
        (e for e in s.history if e.promoted_at is not None), key=_promotion, reverse=True
    )
    stable = [e for e in promoted if e.revision == s.stable_revision]
    return stable + [e for e in promoted if e.revision != s.stable_revision][:size]


def _restorable(ctx: _Ctx) -> HistoryEntry | None:
    """The known-good revision in the rollback window whose spec the current spec is."""
    for e in _rollback_window(ctx):
        if e.spec_hash == ctx.inp.spec_hash and _known_good(e) and e.quarantine is None:
            return e
    return None


def _start_restore(ctx: _Ctx, entry: HistoryEntry) -> None:
    """The spec was reverted to a known-good revision: bring it back without steps or
    analysis (same revision number). A warm (or the stable) revision takes all traffic at
    once; a cold one is scaled up from its snapshot first (stage Ready)."""
    s, policy = ctx.s, ctx.policy
    assert policy is not None
    rev = entry.revision
    assert entry.promoted_at is not None
    s.current_revision = rev
    s.analysis = AnalysisStatus()
    s.pending_decision = None
    s.restoring = True
    window = policy.rollback_window.revisions
    why = (
        f"the spec equals r{rev}'s (spec {entry.spec_hash}, promoted "
        f"{_ts(entry.promoted_at)}, within rollbackWindow.revisions {window}): no steps, "
        "no analysis"
    )
    if rev == s.stable_revision:
        # It serves already: only whatever else has traffic goes (Promoting until the
        # router reports all traffic on it).
        s.candidate_revision = 0
        s.current_step = 0
        s.step_started_at = None
        s.phase = Phase.PROMOTING
        s.message = f"restoring r{rev}: moving 100% of traffic to it"
        ctx.record(TimelineType.RESTORE_STARTED, f"restoring r{rev}: {why}", revision=rev)
        return
    entry.outcome = Outcome.PROGRESSING
    entry.finished_at = None
    entry.reason = f"being restored: {why}"
    s.candidate_revision = rev
    _bring_back(ctx, rev)
    wait = _not_ready(ctx, rev)
    ctx.record(
        TimelineType.RESTORE_STARTED,
        f"restoring r{rev} (replacing r{s.stable_revision}): {why}"
        + (f"; r{rev} {wait}: traffic moves once it is Available" if wait else ""),
        revision=rev,
    )
    plan = ctx.plan()
    assert plan is not None
    _enter_stage(ctx, plan, 0)
    s.message = f"restoring r{rev}: waiting for it to become Available"


# --------------------------------------------------------------------------------------
# Pipeline step 5: the phase machine
# --------------------------------------------------------------------------------------


def _phase_idle(ctx: _Ctx) -> None:
    """Promoted / RolledBack / Failed: only humans, a new spec or a quarantine move these
    (a proposed rollback of a quarantined stable times out)."""
    pd = _quarantine_decision(ctx)
    if pd is not None and pd.expires_at is not None:
        ctx.wake(pd.expires_at)


def _phase_rollout(ctx: _Ctx) -> None:
    plan = ctx.plan()
    if plan is None:
        return  # no usable policy: hold where we are
    s = ctx.s
    stage = plan.stage(s.current_step)
    if stage.kind == StageKind.READY:
        if s.step_started_at is None:
            s.step_started_at = ctx.now
        _stage_ready(ctx, plan, stage)
        return
    if not _stage_started(ctx, plan, stage):
        return
    if _candidate_down(ctx, plan):
        return
    _STAGES[stage.kind](ctx, plan, stage)


def _candidate_down(ctx: _Ctx, plan: Plan) -> bool:
    """A candidate that answers users (weight or header routes) but has no ready pod is a
    failed release, whatever the metrics say: users get errors. Decide a rollback (at
    once, or ask for approval, per the policy), as a failed analysis would."""
    s = ctx.s
    cand = s.candidate_revision
    want = _rollout_routes(ctx, plan)
    answers = want is not None and (want.weights.get(cand, 0) > 0 or want.header_revision == cand)
    down = ctx.down(cand) if answers and s.stable_revision else None
    if down is None:
        return False
    reason = f"r{cand} is unavailable: {down.describe()}"
    ctx.record(TimelineType.CANDIDATE_UNAVAILABLE, reason, revision=cand, warning=True)
    _decide_rollback(ctx, reason)
    return True


def _phase_awaiting(ctx: _Ctx) -> None:
    s = ctx.s
    pd = s.pending_decision
    if pd is None:  # inconsistent stored status: nothing to wait for
        _resume(ctx)
        return
    if pd.expires_at is not None:
        if ctx.now >= pd.expires_at:
            _expire_decision(ctx)
            return
        ctx.wake(pd.expires_at)


def _phase_promoting(ctx: _Ctx) -> None:
    """The final routes are asked for; the release is Promoted (or, for a shadow that
    stops, done) once the router reports them. A candidate that loses every pod first is
    rolled back, as in any stage where it answers users."""
    plan = ctx.plan()
    if plan is None:
        return  # no usable policy: hold
    s = ctx.s
    want = _desired_routes(ctx)
    cand = s.candidate_revision
    down = ctx.down(cand) if plan.finish == Finish.PROMOTE and s.stable_revision else None
    if down is not None:
        reason = f"r{cand} is unavailable: {down.describe()}"
        ctx.record(TimelineType.CANDIDATE_UNAVAILABLE, reason, revision=cand, warning=True)
        _decide_rollback(ctx, reason)
        return
    if ctx.in_effect(want):
        if s.restoring:
            _finish_restore(ctx)
        else:
            _FINISH[plan.finish](ctx)
        return
    if s.restoring:
        s.message = f"restoring r{cand or s.stable_revision}: waiting for 100% to take " + (
            f"effect: {ctx.routes_why(want)}"
        )
        return
    head = (
        f"r{cand}: shadow passed: removing the mirror"
        if plan.finish == Finish.STOP
        else f"promoting r{cand}: waiting for 100% to take effect"
    )
    s.message = f"{head}: {ctx.routes_why(want)}"


def _phase_rolling_back(ctx: _Ctx) -> None:
    s = ctx.s
    target, leaving = s.stable_revision, s.candidate_revision
    left = ctx.entry(leaving)
    mark = _quarantined(ctx, target)
    if mark is not None:
        # No clean target to go to instead (``_quarantine`` would have chosen it).
        s.message = (
            f"rolling back from r{leaving}: held, target r{target} is quarantined by "
            f"{mark.entry} and no known-good revision is clean; traffic stays where it is"
        )
        if ctx.quarantine_hold is None:
            _hold(ctx, target, mark, _clean_target(ctx, leaving)[1])
        return
    if ctx.available(target):
        want = _desired_routes(ctx)
        if not ctx.in_effect(want):
            s.message = (
                f"rolling back from r{leaving} to r{target}: r{target} is Available, moving "
                f"traffic to it: {ctx.routes_why(want)}"
            )
            return
        s.step_started_at = None
        reason = left.reason if left is not None else "rollback"
        if left is not None:
            left.finished_at = ctx.now
        failed = left is not None and left.outcome == Outcome.FAILED
        s.phase = Phase.FAILED if failed else Phase.ROLLED_BACK
        verb = "stopped before serving users" if failed else "rolled back"
        s.message = f"r{leaving} {verb}; r{target} serves 100%: {reason}"
        ctx.record(
            TimelineType.FAILED if failed else TimelineType.ROLLED_BACK,
            s.message,
            revision=leaving,
            warning=True,
        )
        return
    why = _not_ready(ctx, target)
    since = s.step_started_at or ctx.now
    s.step_started_at = since
    s.message = (
        f"rolling back to r{target}: r{target} {why}; traffic stays on "
        f"r{leaving} until r{target} is Available"
    )
    deadline = since + timedelta(seconds=ctx.progress_deadline)
    if ctx.now >= deadline:
        obs = ctx.observed(target)
        detail = obs.describe() if obs is not None else f"r{target} has no Deployment"
        ctx.stalled = (
            f"rollback target r{target} is not Available after {_dur(ctx.progress_deadline)} "
            f"(since {_ts(since)}): {detail}; traffic stays on r{leaving}. {_ways_out(ctx)}"
        )
        s.message += f". Stalled: {_ways_out(ctx)}"
    else:
        ctx.wake(deadline)


def _stalled_hint(ctx: _Ctx) -> str:
    """The ways out of a stalled rollback, for an action that cannot end it."""
    return f". {_ways_out(ctx)}" if _rollback_stalled(ctx) else ""


def _rollback_stalled(ctx: _Ctx) -> bool:
    """RollingBack, and its target is still not Available after the progress deadline."""
    s = ctx.s
    if s.phase != Phase.ROLLING_BACK or ctx.available(s.stable_revision):
        return False
    since = s.step_started_at
    return since is not None and ctx.now >= since + timedelta(seconds=ctx.progress_deadline)


def _older_target(ctx: _Ctx) -> int | None:
    """A known-good revision promoted before the stalled rollback's target."""
    s = ctx.s
    return _previous_known_good(
        s, before=ctx.entry(s.stable_revision), skip=s.candidate_revision
    )


def _serving_base(ctx: _Ctx) -> int:
    """What a roll-forward from a stalled rollback is released against: the revision being
    left when it still answers users and the target cannot, else the target."""
    s = ctx.s
    target, leaving = s.stable_revision, s.candidate_revision
    seen = ctx.inp.routes
    live = seen.weights.get(leaving, 0) > 0 or seen.header_revision == leaving
    obs = ctx.observed(target)
    target_serves = obs is not None and obs.serving
    return leaving if leaving and live and not target_serves else target


def _ways_out(ctx: _Ctx) -> str:
    """What ends a rollback whose target cannot become Available, in words."""
    s = ctx.s
    target = s.stable_revision
    ways = [
        f"fix what keeps r{target} from becoming Available (quota, nodes, image: see the "
        "events of its pods and ReplicaSet) and the rollback completes by itself",
        f"apply a new spec: it supersedes this rollback and is released against "
        f"r{_serving_base(ctx)}, which serves users now",
    ]
    older = _older_target(ctx)
    if older is not None:
        ways.append(
            f"break glass again with a new reason to roll back to r{older} instead: "
            f"{_kubectl(ctx, ANNOTATION_ROLLBACK, chr(39) + '<new reason>' + chr(39))}"
        )
    return "Ways out: " + "; or ".join(ways)


def _not_in_time(ctx: _Ctx) -> str:
    return f"not Available within progressDeadline {_dur(ctx.progress_deadline)}"


def _give_up_target(ctx: _Ctx, why: str) -> None:
    """The rollback target is given up (never Available, quarantined, its artifact failed
    verification): it goes back to being retired (still known-good) and is scaled down;
    ``why`` ends its record's reason."""
    s = ctx.s
    target = s.stable_revision
    entry = ctx.entry(target)
    if entry is not None and entry.outcome == Outcome.PROMOTED:
        entry.outcome = Outcome.RETIRED
        entry.finished_at = ctx.now
        entry.reason = f"could not be restored: {why}"


def _abandon_rollback(ctx: _Ctx, why: str) -> None:
    """Leave a stalled rollback for a roll-forward: what serves now becomes the base."""
    s = ctx.s
    target, leaving = s.stable_revision, s.candidate_revision
    base = _serving_base(ctx)
    if base != target:
        _give_up_target(ctx, f"{_not_in_time(ctx)}; rollback abandoned: {why}")
    else:
        left = ctx.entry(leaving)
        if left is not None and left.finished_at is None:
            left.finished_at = ctx.now
    ctx.record(
        TimelineType.ROLLBACK_ABANDONED,
        f"rollback from r{leaving} to r{target} abandoned: r{target} is not Available after "
        f"{_dur(ctx.progress_deadline)}; {why}; r{base} keeps serving until the new "
        "revision is ready",
        revision=leaving,
        warning=True,
    )
    s.stable_revision = base
    s.candidate_revision = 0
    s.step_started_at = None
    s.pending_decision = None


_PHASES: Mapping[Phase, Callable[[_Ctx], None]] = {
    Phase.PENDING: _phase_pending,
    Phase.PROGRESSING: _phase_rollout,
    Phase.PAUSED: _phase_rollout,
    Phase.AWAITING_APPROVAL: _phase_awaiting,
    Phase.PROMOTING: _phase_promoting,
    Phase.PROMOTED: _phase_idle,
    Phase.ROLLING_BACK: _phase_rolling_back,
    Phase.ROLLED_BACK: _phase_idle,
    Phase.FAILED: _phase_idle,
}


def _stage_ready(ctx: _Ctx, plan: Plan, stage: Stage) -> None:
    s = ctx.s
    cand = s.candidate_revision
    if ctx.available(cand):
        _advance(ctx, plan)
        return
    started = s.step_started_at or ctx.now
    deadline = started + timedelta(seconds=ctx.progress_deadline)
    if ctx.now >= deadline:
        late = (
            f"not Available within progressDeadline {_dur(ctx.progress_deadline)} "
            f"(started {_ts(started)})"
        )
        _fail_candidate(ctx, f"could not be restored: {late}" if s.restoring else late)
        return
    ctx.wake(deadline)
    head = f"restoring r{cand}" if s.restoring else f"r{cand}"
    s.message = f"{head}: waiting to become Available (deadline {_ts(deadline)})"


def _stage_gate(ctx: _Ctx, plan: Plan, stage: Stage) -> None:
    s = ctx.s
    cand = s.candidate_revision
    started = s.step_started_at or ctx.now
    waits: list[str] = []
    if stage.analysed and ctx.policy is not None:
        due = next_analysis_at(s, ctx.policy)
        if due is not None:
            ctx.wake(due)
    if stage.manual:
        s.message = (
            f"r{cand}: {stage.label}; paused until: {_kubectl(ctx, ANNOTATION_PROMOTE, 'true')}"
        )
        return
    end = started + timedelta(seconds=stage.duration)
    if ctx.now < end:
        waits.append(f"holding until {_ts(end)}")
        ctx.wake(end)
    if stage.analysed:
        latest = _latest_round(s)
        fresh = bool(latest) and latest[0].at is not None and latest[0].at > started
        verdict = _round_verdict(latest) if fresh else None
        if verdict is None:
            waits.append("waiting for the first analysis at this step")
        elif verdict == Verdict.FAIL:
            waits.append("waiting for a passing analysis (the last one failed)")
        elif verdict == Verdict.INCONCLUSIVE:
            waits.append("analysis inconclusive: holding")
            if stage.kind == StageKind.FIRST_PREVIEW:
                waits.append(_first_release_hint(ctx))
    if not ctx.available(cand):
        waits.append(f"r{cand} is not Available")
    if waits:
        s.message = f"r{cand}: {stage.label}; " + "; ".join(waits)
        return
    _advance(ctx, plan)


def _first_release_hint(ctx: _Ctx) -> str:
    """What moves a first release on whose preview analysis has nothing to measure."""
    s = ctx.s
    service = f"{ctx.inp.name or '<release>'}-r{s.candidate_revision}"
    return (
        f"no user traffic reaches a first release at 0%: send smoke tests to Service "
        f"{service}, or vouch for it: {_kubectl(ctx, ANNOTATION_PROMOTE, 'true')} (or set "
        "the policy's firstRelease: Promote)"
    )


_STAGES: Mapping[StageKind, Callable[[_Ctx, Plan, Stage], None]] = {
    StageKind.READY: _stage_ready,
    StageKind.CANARY: _stage_gate,
    StageKind.PREVIEW: _stage_gate,
    StageKind.SWITCH: _stage_gate,
    StageKind.POST_SWITCH: _stage_gate,
    StageKind.POST_PROMOTION: _stage_gate,
    StageKind.SHADOW: _stage_gate,
    StageKind.FIRST_PREVIEW: _stage_gate,
    StageKind.FIRST_GATE: _stage_gate,
}


def _run_machine(ctx: _Ctx) -> None:
    """Dispatch on the phase until nothing changes, so a repeated call is a no-op."""
    for _ in range(_MACHINE_STEPS):
        ctx.wakeups.clear()  # only the timers of the state we end in matter
        s = ctx.s
        before = (s.phase, s.current_step, s.candidate_revision, s.stable_revision)
        _PHASES[s.phase](ctx)
        if (s.phase, s.current_step, s.candidate_revision, s.stable_revision) == before:
            return


# --------------------------------------------------------------------------------------
# Pipeline step 6: scale down what is no longer needed
# --------------------------------------------------------------------------------------


def _scale_down_due(ctx: _Ctx, e: HistoryEntry, warm_for: float) -> datetime | None:
    end = e.finished_at
    if end is None:
        return None
    if e.outcome == Outcome.PROMOTED:  # the previous stable, kept warm
        return end + timedelta(seconds=warm_for)
    if e.outcome in (Outcome.FAILED, Outcome.ROLLED_BACK):
        return end + timedelta(seconds=ctx.scale_down_delay)
    if e.outcome in (Outcome.SUPERSEDED, Outcome.RETIRED):
        return end
    return None


def _housekeeping(ctx: _Ctx) -> None:
    s = ctx.s
    plan = ctx.plan()
    if plan is None:
        return
    protected = {s.stable_revision}
    if s.drill is not None:
        protected.add(s.drill.target)  # scaled back by the drill itself when it ends
    if s.phase in IN_FLIGHT or s.phase == Phase.ROLLING_BACK:
        protected.add(s.candidate_revision)
    for e in s.history:
        if e.revision in protected:
            continue
        due = _scale_down_due(ctx, e, plan.warm_for)
        if due is None:
            continue
        if ctx.now < due:
            ctx.wake(due)
            continue
        if e.outcome == Outcome.PROMOTED:
            e.outcome = Outcome.RETIRED
            e.reason = f"{e.reason + '; ' if e.reason else ''}kept warm {_dur(plan.warm_for)}"
            ctx.record(
                "Retired",
                f"r{e.revision} retired (scaled to zero; its record stays for rollbacks)",
                revision=e.revision,
            )
        obs = ctx.observed(e.revision)
        if obs is not None and obs.exists and obs.replicas > 0:
            ctx.scale_down(e.revision)


def _settle(ctx: _Ctx) -> None:
    """Spec change, then the machine; a spec change deferred by a rollback that completes
    in this very call is applied at once (so calling again changes nothing)."""
    for _ in range(2):
        ctx.deferred_spec = False
        _check_spec(ctx)
        _run_machine(ctx)
        if not ctx.deferred_spec or ctx.s.phase == Phase.ROLLING_BACK:
            return


def _reconsider_kept(ctx: _Ctx) -> None:
    """Judge an annotation kept for later (a promote waiting for its candidate to be
    Available) again once the machine has settled: if it moved on (the spec changed, a new
    revision starts), the promote is ignored now rather than in the next call, so deciding
    again with the same annotations changes nothing."""
    if ctx.kept:
        _consume_actions(ctx)
        _settle(ctx)


# --------------------------------------------------------------------------------------
# Pipeline step 7: the circuit breaker
# --------------------------------------------------------------------------------------
#
# A fast signal (``RolloutPolicy.spec.breaker``), read by the controller on its own short
# interval and handed in as ``Inputs.breaker_reading``. Closed -> Tripping when the signal
# breaches for ``holdFor`` (an unbroken run of breaching readings; an inconclusive reading
# neither starts, extends nor breaks a run, and never trips); Tripping -> Tripped once the
# routes read back send every user to the fallback; Tripped -> Resetting after ``healthyFor``
# of passing readings (``reset.mode: Automatic``; an inconclusive or breaching reading
# breaks that run) or on ``rewind.dev/reset-breaker=true``; Resetting -> Closed once the
# routes the phase needs are read back. Only the routes change: no rollback, no revision
# change; a rollout in flight holds (its stage starts again, with a fresh clock and fresh
# analysis, once the model's routes are back), a rollback or promotion completes only once
# its own routes are read back after the reset. It arms once a revision serves users (a
# stable exists): before that no user reaches the model.

_OPEN = frozenset({BreakerState.TRIPPING, BreakerState.TRIPPED})


def breaker_variables_targets(status: ModelReleaseStatus) -> tuple[int, int]:
    """``(candidate, stable)`` for the breaker query's template variables: the candidate in
    flight, else the stable (so ``{{candidateWorkload}}`` names what serves users)."""
    stable = status.stable_revision
    cand = status.candidate_revision if status.phase in IN_FLIGHT else 0
    return cand or stable, stable


def breaker_due(
    status: ModelReleaseStatus,
    policy: RolloutPolicySpec | None,
    release: ModelReleaseSpec | None = None,
) -> bool:
    """Whether the controller should read the breaker's signal before :func:`decide`
    (never for a ``release`` whose router cannot carry it: see :func:`breaker_unsupported`)."""
    if release is not None and breaker_unsupported(release, policy):
        return False
    return policy is not None and policy.breaker is not None and bool(status.stable_revision)


def breaker_unsupported(release: ModelReleaseSpec, policy: RolloutPolicySpec | None) -> str:
    """Why the policy's circuit breaker cannot protect this release ("" when it can, or
    there is none). Gateway API routes (``spec.traffic.gatewayAPI``) get no fallback: Rewind
    writes the breaker's fallback into Istio routes only (Gateway API has no standard direct
    response). A RolloutPolicy serves many releases, so admission of either object cannot
    see the pair: the engine refuses it here, before a reading is taken or a route written."""
    if policy is None or policy.breaker is None or release.traffic.router == "istio":
        return ""
    return (
        "the RolloutPolicy's circuit breaker (spec.breaker) is not armed for this release: "
        "its routes are Gateway API's (spec.traffic.gatewayAPI), and Rewind writes a "
        "breaker's fallback into Istio routes only (Gateway API has no standard direct "
        "response); route it with Istio (remove spec.traffic.gatewayAPI) or use a policy "
        "without spec.breaker"
    )


def fallback_of(
    spec: BreakerSpec, namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
) -> Fallback:
    """The router's view of the policy's fallback (a Service in the release's namespace)."""
    fb = spec.fallback
    if fb.service is not None:
        return Fallback(service=f"{fb.service.name}.{namespace}.svc.{cluster_domain}",
                        port=fb.service.port or 0)
    assert fb.direct_response is not None  # the model validates exactly one
    return Fallback(status=fb.direct_response.status, body=fb.direct_response.body)


def _breaker_spec(ctx: _Ctx) -> BreakerSpec | None:
    """The policy's breaker, if it can protect this release (see breaker_unsupported)."""
    if ctx.policy is None or breaker_unsupported(ctx.inp.spec, ctx.policy):
        return None
    return ctx.policy.breaker


def _fallback_routes(ctx: _Ctx, spec: BreakerSpec) -> SetRoutes:
    """Every user to the fallback; the in-cluster name stays on the revision it serves
    without the breaker (the stable: a fallback changes no revision)."""
    model = _desired_routes(ctx)
    # No routes needed now (a cold rollback target): the in-cluster name holds where it is.
    primary = model.primary_revision if model is not None else ctx.inp.routes.primary_revision
    return SetRoutes({}, None, 0, None, primary or ctx.s.stable_revision or None,
                     fallback_of(spec, ctx.inp.namespace, ctx.inp.cluster_domain))


def _routes_wanted(ctx: _Ctx) -> SetRoutes | None:
    """What is written and reported: the fallback while the breaker is open, else what the
    phase and step need (``_desired_routes``, which the phase machine judges by: a
    promotion or rollback completes only on its own routes). Open with no usable policy:
    hold where the router has it (the fallback is not known)."""
    b = ctx.s.breaker
    if b is not None and b.state in _OPEN:
        spec = _breaker_spec(ctx)
        return None if spec is None else _fallback_routes(ctx, spec)
    return _desired_routes(ctx)


def _set_breaker(ctx: _Ctx, state: BreakerState) -> BreakerStatus:
    b = ctx.s.breaker
    assert b is not None
    b.state, b.since = state, ctx.now
    return b


def _trip(ctx: _Ctx, spec: BreakerSpec, reading: Measurement) -> None:
    s = ctx.s
    b = _set_breaker(ctx, BreakerState.TRIPPING)
    since = b.breaching_since or ctx.now
    b.tripped_at, b.trips, b.healthy_since = ctx.now, b.trips + 1, None
    b.reason = f"{_describe(reading)} since {_ts(since)} (holdFor {spec.hold_for})"
    b.reason = b.reason.replace(" at " + _ts(reading.at), "") if reading.at else b.reason
    held = ""
    if s.phase in ROLLING_OUT and s.candidate_revision:
        # The stage starts again once the model's routes are back: its pause and analysis
        # never count time its users spent on the fallback.
        s.step_started_at = None
        held = f"; r{s.candidate_revision}'s rollout holds and its stage starts again on reset"
    ctx.record(
        TimelineType.BREAKER_TRIPPED,
        f"circuit breaker tripped: {b.reason}: sending every user to {b.fallback} "
        f"(one route write; not a rollback, revisions unchanged){held}",
        warning=True,
    )


def _reset_breaker(ctx: _Ctx, why: str, *, user: str = "") -> None:
    b = _set_breaker(ctx, BreakerState.RESETTING)
    b.reset_at, b.healthy_since, b.breaching_since = ctx.now, None, None
    b.reason = why
    ctx.record(
        TimelineType.BREAKER_RESET,
        f"circuit breaker reset ({why}): moving users back from {b.fallback} to "
        f"{_describe_routes(_desired_routes(ctx))}",
        user=user,
    )


def _breaker_read_back(ctx: _Ctx, spec: BreakerSpec | None) -> None:
    """Tripping -> Tripped and Resetting -> Closed happen only on the routes read back."""
    b = ctx.s.breaker
    assert b is not None
    obs = ctx.inp.routes
    if b.state == BreakerState.TRIPPING and spec is not None:
        if ctx.in_effect(_fallback_routes(ctx, spec)):
            _set_breaker(ctx, BreakerState.TRIPPED)
            ctx.record(
                TimelineType.FALLBACK_IN_EFFECT,
                f"every user is on the fallback ({b.fallback}): read back from "
                f"{obs.source or 'the routes'}",
                warning=True,
            )
    elif b.state == BreakerState.RESETTING:
        want = _desired_routes(ctx)
        if obs.fallback is None and (want is None or ctx.in_effect(want)):
            _set_breaker(ctx, BreakerState.CLOSED)
            ctx.record(
                TimelineType.BREAKER_CLOSED,
                f"users are back on the model ({_describe_routes(want)}): read back from "
                f"{obs.source or 'the routes'}",
            )


def _run_breaker(ctx: _Ctx) -> None:
    s = ctx.s
    if ctx.policy is None:
        return  # no usable policy: the breaker and its routes hold as they are
    spec = _breaker_spec(ctx)
    b = s.breaker
    if spec is None:
        if b is None:
            return
        if b.state in _OPEN:
            _reset_breaker(ctx, "the RolloutPolicy no longer defines a breaker")
        _breaker_read_back(ctx, None)
        if b.state == BreakerState.CLOSED:
            s.breaker = None
        return
    if b is None:
        b = s.breaker = BreakerStatus(since=ctx.now)
    b.fallback = fallback_of(spec, ctx.inp.namespace, ctx.inp.cluster_domain).describe()
    if not s.stable_revision:
        return  # nothing serves users yet: not armed
    reading = ctx.inp.breaker_reading
    if reading is not None:
        reading = reading.model_copy(update={"at": ctx.now})
        if b.state in _OPEN:
            if reading.verdict == Verdict.PASS:
                b.healthy_since = b.healthy_since or ctx.now
                healthy_for = parse_duration(spec.reset.healthy_for)
                healthy = (ctx.now - b.healthy_since).total_seconds()
                if spec.reset.mode == BreakerResetMode.AUTOMATIC and healthy >= healthy_for:
                    _reset_breaker(
                        ctx, f"the signal passed for {_dur(healthy)} (healthyFor "
                        f"{spec.reset.healthy_for}): {reading.message or reading.shown}",
                    )
            else:
                b.healthy_since = None
        elif reading.verdict == Verdict.FAIL:
            b.breaching_since = b.breaching_since or ctx.now
            held = (ctx.now - b.breaching_since).total_seconds()
            if held >= parse_duration(spec.hold_for):
                _trip(ctx, spec, reading)
        elif reading.verdict == Verdict.PASS:
            b.breaching_since = None
    _breaker_read_back(ctx, spec)


def _breaker_timer(ctx: _Ctx) -> None:
    """Wake for the next reading (after the machine, which keeps only its own timers)."""
    spec = _breaker_spec(ctx)
    if spec is not None and ctx.s.stable_revision:
        ctx.wake(ctx.now + timedelta(seconds=parse_duration(spec.interval)))


def _breaker_open(ctx: _Ctx) -> bool:
    b = ctx.s.breaker
    return b is not None and b.state in _OPEN


def _act_reset_breaker(ctx: _Ctx, a: HumanAction) -> bool:
    b = ctx.s.breaker
    if b is None or b.state not in _OPEN:
        state = "no breaker is defined" if b is None else f"the breaker is {b.state.value}"
        ctx.note(
            TimelineType.ACTION_IGNORED,
            f"breaker reset by {_who(a.user)} ignored: {state}, not tripped",
            user=a.user,
        )
        return False
    _reset_breaker(ctx, f"reset by {_who(a.user)}", user=a.user)
    return True


def _target_breaker(ctx: _Ctx) -> str:
    b = ctx.s.breaker
    if b is None or b.state not in _OPEN or b.tripped_at is None:
        return ""
    return f"the breaker trip of {_ts(b.tripped_at)}"



# --------------------------------------------------------------------------------------
# Pipeline step 8: rollback drills
# --------------------------------------------------------------------------------------
#
# "Have you ever pushed it?" A drill exercises the rollback path of a Promoted release
# without touching user traffic: the revision a break glass would pick now (the known-good
# revision promoted most recently before the stable) is checked against its snapshot
# (the controller loads and verifies it: ``Inputs.drill_snapshot``), scaled up from it
# (``EnsureRevision``), timed to Available, optionally sent a mirrored share of live
# traffic and analysed with the policy's metrics, then scaled back to where it was. It
# runs only in Promoted with the breaker closed; anything else (a rollback, a new spec, a
# trip) cancels it at once. The verdict names what would have failed in a real rollback.

#: Drills on demand when the policy configures none.
_DEFAULT_DRILL = DrillSpec()


def _drill_spec(ctx: _Ctx) -> DrillSpec:
    spec = ctx.policy.drill if ctx.policy is not None else None
    return spec if spec is not None else _DEFAULT_DRILL


def _drill_mirror(ctx: _Ctx) -> tuple[int, int] | None:
    """(target, percent) a drill mirrors to now, or None."""
    d = ctx.s.drill
    spec = _drill_spec(ctx)
    if d is None or d.phase != DrillPhase.ANALYSING or not spec.mirror_percent:
        return None
    return d.target, spec.mirror_percent


def drill_snapshot_due(status: ModelReleaseStatus) -> int | None:
    """The revision whose snapshot the controller should check before :func:`decide`."""
    d = status.drill
    return d.target if d is not None and d.phase == DrillPhase.STARTING else None


def drill_analysis_due(
    status: ModelReleaseStatus, policy: RolloutPolicySpec | None, now: datetime
) -> tuple[int, int] | None:
    """``(target, stable)`` when a drill's analysis round on mirrored traffic is due: one
    analysis interval after the mirror was read back in effect (``status.routes``), then
    every interval."""
    d = status.drill
    if policy is None or d is None or d.phase != DrillPhase.ANALYSING:
        return None
    spec = policy.drill or _DEFAULT_DRILL
    if not spec.mirror_percent or not policy.analysis.metrics:
        return None
    r = status.routes
    if not (r.in_effect and r.mirror_revision == d.target) or r.since is None:
        return None
    base = max(t for t in (r.since, d.last_round_at) if t is not None)
    due = base + timedelta(seconds=parse_duration(policy.analysis.interval))
    return (d.target, status.stable_revision) if now >= due else None


def _drill_target(ctx: _Ctx) -> int | None:
    """The revision a rollback would go to now (what break glass in Promoted picks)."""
    return _previous_known_good(ctx.s, checking=_integrity_spec(ctx) is not None)


def _start_drill(ctx: _Ctx, trigger: str, user: str = "") -> None:
    s = ctx.s
    target = _drill_target(ctx)
    if target is None:
        result = DrillResult(
            started_at=ctx.now, finished_at=ctx.now, trigger=trigger,
            verdict=DrillVerdict.FAILED, failure=DrillFailure.NO_TARGET,
            message=f"a rollback now would have nowhere to go: no known-good revision before "
            f"r{s.stable_revision}",
        )
        s.last_drill = result
        ctx.record(TimelineType.DRILL_FAILED, f"rollback drill failed (NoTarget): "
                   f"{result.message}", user=user, warning=True)
        return
    obs = ctx.observed(target)
    before = obs.replicas if obs is not None and obs.exists else 0
    _bring_back(ctx, target)
    s.drill = DrillStatus(
        phase=DrillPhase.STARTING, target=target, started_at=ctx.now, replicas_before=before,
        trigger=trigger,
    )
    spec = _drill_spec(ctx)
    how = (f"mirror {spec.mirror_percent}% of live traffic to it and analyse it"
           if spec.mirror_percent else "bring it to Available")
    ctx.record(
        TimelineType.DRILL_STARTED,
        f"rollback drill ({trigger}): a rollback now would go to r{target}; checking its "
        f"snapshot, then scaling it up from it to {how} (timeout {spec.timeout}); users stay "
        f"on r{s.stable_revision}",
        revision=target, user=user,
    )
    ctx.wake(ctx.now + timedelta(seconds=MIN_REQUEUE))


def _end_drill(
    ctx: _Ctx, verdict: DrillVerdict, message: str, failure: DrillFailure = DrillFailure.NONE,
) -> None:
    s = ctx.s
    d = s.drill
    assert d is not None
    started = d.started_at or ctx.now
    ready = (d.ready_at - started).total_seconds() if d.ready_at is not None else None
    passing = (
        (ctx.now - started).total_seconds()
        if verdict == DrillVerdict.PASSED and _drill_spec(ctx).mirror_percent else None
    )
    s.last_drill = DrillResult(
        started_at=started, finished_at=ctx.now, target=d.target, trigger=d.trigger,
        verdict=verdict, failure=failure, time_to_ready_seconds=ready,
        time_to_passing_analysis_seconds=passing, message=message,
    )
    if verdict == DrillVerdict.PASSED:
        s.last_successful_drill_at = ctx.now
    s.drill = None
    # Back to where it was (a warm previous stable stays warm); never what now serves or
    # is being released (a rollback to it, which cancelled the drill, needs it up).
    if not d.replicas_before and d.target not in (s.stable_revision, s.candidate_revision):
        ctx.scale_down(d.target)
    type_ = {
        DrillVerdict.PASSED: TimelineType.DRILL_PASSED,
        DrillVerdict.FAILED: TimelineType.DRILL_FAILED,
        DrillVerdict.CANCELLED: TimelineType.DRILL_CANCELLED,
    }[verdict]
    head = {
        DrillVerdict.PASSED: "rollback drill passed",
        DrillVerdict.FAILED: f"rollback drill failed ({failure.value})",
        DrillVerdict.CANCELLED: "rollback drill cancelled",
    }[verdict]
    ctx.record(type_, f"{head}: {message}", revision=d.target,
               warning=verdict == DrillVerdict.FAILED)


def _drill_timings(ctx: _Ctx) -> str:
    d = ctx.s.drill
    assert d is not None and d.started_at is not None
    ready = f"Available after {_dur(round((d.ready_at - d.started_at).total_seconds(), 1))}" \
        if d.ready_at is not None else "never Available"
    return ready


def _drill_due_at(ctx: _Ctx) -> datetime | None:
    """When the scheduled drill is due (None: no schedule, or nothing promoted yet)."""
    spec = ctx.policy.drill if ctx.policy is not None else None
    if spec is None or spec.every is None:
        return None
    s = ctx.s
    last = s.last_drill.started_at if s.last_drill is not None else None
    stable = ctx.entry(s.stable_revision)
    base = last or (stable.promoted_at if stable is not None else None)
    return None if base is None else base + timedelta(seconds=parse_duration(spec.every))


def _drill_blocked(ctx: _Ctx) -> str | None:
    """Why no drill may run now (None: it may)."""
    s = ctx.s
    if ctx.policy is None:
        return "the RolloutPolicy is not usable"
    if s.phase != Phase.PROMOTED:
        return (f"phase is {s.phase.value}: a drill never runs while a rollout or rollback is "
                "in flight, nor on a release that is not Promoted")
    if _breaker_open(ctx):
        return "the circuit breaker is tripped"
    return None


def _run_drill(ctx: _Ctx) -> None:
    s = ctx.s
    d = s.drill
    blocked = _drill_blocked(ctx)
    if d is None:
        due = _drill_due_at(ctx)
        if due is None or blocked is not None:
            return
        if ctx.now >= due:
            _start_drill(ctx, "schedule")
        else:
            ctx.wake(due)
        return
    if blocked is not None:
        why = ("a rollback started" if s.phase == Phase.ROLLING_BACK or s.phase in (
            Phase.ROLLED_BACK, Phase.FAILED) else blocked)
        _end_drill(ctx, DrillVerdict.CANCELLED, f"{why}; r{d.target} is left to it"
                   if d.target in (s.stable_revision, s.candidate_revision) else why)
        return
    spec = _drill_spec(ctx)
    assert d.started_at is not None
    deadline = d.started_at + timedelta(seconds=parse_duration(spec.timeout))
    target = d.target
    if d.phase == DrillPhase.STARTING:
        check = ctx.inp.drill_snapshot
        if check is None or check.revision != target:
            ctx.wake(ctx.now + timedelta(seconds=MIN_REQUEUE))  # the controller checks it
            return
        if check.problem:
            failure = (DrillFailure.SNAPSHOT_MISSING if check.problem == "missing"
                       else DrillFailure.SNAPSHOT_CORRUPT)
            _end_drill(ctx, DrillVerdict.FAILED,
                       f"r{target} could not be re-created: {check.message}", failure)
            return
        d.phase = DrillPhase.WAITING_READY
    if d.phase == DrillPhase.WAITING_READY:
        if not _fresh(ctx, target):
            # A rollback to it would verify its artifact first: so does the drill, while
            # it scales up. A verdict reached before this drill began is not its answer.
            rec = _verdict(ctx, target)
            if (
                rec is not None and rec.verdict == IntegrityVerdict.FAILED
                and rec.at is not None and _aware(rec.at) >= _aware(d.started_at)
            ):
                _end_drill(ctx, DrillVerdict.FAILED,
                           f"r{target}'s artifact failed verification, so a rollback would "
                           f"pass it over: {rec.message}", DrillFailure.ARTIFACT_UNVERIFIABLE)
                return
            ctx.ask_verify(target)
            if ctx.now >= deadline:
                _end_drill(ctx, DrillVerdict.FAILED,
                           f"r{target}'s artifact was not verified within {spec.timeout}: "
                           f"{_verification_wait(ctx, target)}",
                           DrillFailure.ARTIFACT_UNVERIFIABLE)
                return
            if ctx.available(target):
                ctx.wake(deadline)
                return
        if ctx.available(target):
            d.ready_at = ctx.now
            metrics = ctx.policy is not None and bool(ctx.policy.analysis.metrics)
            if not spec.mirror_percent or not metrics:  # nothing to analyse it with
                _end_drill(ctx, DrillVerdict.PASSED,
                           f"r{target} was {_drill_timings(ctx)} from its snapshot; scaled "
                           "back")
                return
            d.phase = DrillPhase.ANALYSING
        elif ctx.now >= deadline:
            obs = ctx.observed(target)
            detail = obs.describe() if obs is not None else f"r{target} has no Deployment"
            _end_drill(ctx, DrillVerdict.FAILED,
                       f"r{target} was not Available within {spec.timeout}: {detail}",
                       DrillFailure.PODS_NEVER_READY)
            return
        else:
            ctx.wake(deadline)
            return
    # Analysing: one round per analysis interval on mirrored traffic.
    ms = ctx.inp.measurements
    if ms and (d.last_round_at is None or ctx.now > d.last_round_at):
        d.last_round_at = ctx.now
        verdict = _round_verdict(list(ms))
        detail = "; ".join(m.message or m.metric for m in ms)
        if verdict == Verdict.FAIL:
            _end_drill(ctx, DrillVerdict.FAILED,
                       f"r{target} was {_drill_timings(ctx)}, but the analysis fails on "
                       f"{spec.mirror_percent}% mirrored traffic: {detail}",
                       DrillFailure.ANALYSIS_FAILING)
            return
        d.passing_rounds = d.passing_rounds + 1 if verdict == Verdict.PASS else 0
        if d.passing_rounds >= spec.passing_rounds:
            _end_drill(ctx, DrillVerdict.PASSED,
                       f"r{target} was {_drill_timings(ctx)} from its snapshot and passed "
                       f"{d.passing_rounds} analysis round(s) on {spec.mirror_percent}% "
                       f"mirrored traffic ({detail}); mirror removed, scaled back")
            return
    if ctx.now >= deadline:
        _end_drill(ctx, DrillVerdict.FAILED,
                   f"r{target} was {_drill_timings(ctx)}, but no passing analysis on "
                   f"mirrored traffic within {spec.timeout} (no data?)",
                   DrillFailure.ANALYSIS_FAILING)
        return
    ctx.wake(deadline)
    if ctx.policy is not None:
        ctx.wake(ctx.now + timedelta(seconds=parse_duration(ctx.policy.analysis.interval)))


def _act_drill(ctx: _Ctx, a: HumanAction) -> bool:
    s = ctx.s
    blocked = _drill_blocked(ctx)
    if s.drill is not None:
        blocked = f"a drill of r{s.drill.target} is already running"
    if blocked is not None:
        ctx.note(TimelineType.ACTION_IGNORED, f"drill by {_who(a.user)} ignored: {blocked}",
                 user=a.user)
        return False
    _start_drill(ctx, f"requested by {_who(a.user)}", user=a.user)
    return True


def _target_drill(ctx: _Ctx) -> str:
    s = ctx.s
    if s.phase != Phase.PROMOTED or not s.stable_revision:
        return ""
    # Per stable revision, not per drill: a value kept in Git and put back after each
    # removal must not drill in a loop (a new value, true-<n>, drills again).
    return f"drills of r{s.stable_revision}"


_PIPELINE: tuple[Callable[[_Ctx], None], ...] = (
    _adopt_archive,
    _mark_quarantine,
    _record_analysis,
    _expire_decision,
    _consume_actions,
    _quarantine,
    _integrity,
    _run_breaker,
    _settle,
    _reconsider_kept,
    _housekeeping,
    _run_drill,
    _breaker_timer,
)


# --------------------------------------------------------------------------------------
# Model registry sync (MLflow): the alias follows the revision the routes serve
# --------------------------------------------------------------------------------------

#: While the alias is not where it should be (or cannot be read), look again this often
#: (s); the registry adapter wakes the release as soon as a read or move ends anyway.
REGISTRY_RECHECK = 5.0


def _record_registry_versions(ctx: _Ctx) -> None:
    """Each revision of the current spec is the model version its ``model.registry`` names:
    recorded in its history entry (a revision's spec never changes, so neither does it)."""
    registry = ctx.inp.spec.model.registry
    if registry is None:
        return
    for e in ctx.s.history:
        if e.spec_hash == ctx.inp.spec_hash and e.registry is None:
            e.registry = RegistryVersion(name=registry.name, version=registry.version)


def _registry_serving(ctx: _Ctx) -> tuple[int, str]:
    """The revision whose version the alias should name, and why (0: none now, and why).

    It is the stable revision while the routes read back give it users: once its
    promotion or rollback is in effect (Promoted, RolledBack, Failed with the routes in
    effect), and during a rollout while it still takes traffic. Never while a rollback's
    routes are not read back yet, nor while the breaker's fallback takes every user."""
    s = ctx.s
    stable = s.stable_revision
    if not stable:
        return 0, "no revision serves users yet"
    if s.phase in (Phase.ROLLING_BACK, Phase.PENDING):
        return 0, f"r{stable} does not serve yet ({s.phase.value})"
    seen = ctx.inp.routes
    if seen.fallback is not None or seen.weights.get(stable, 0) <= 0:
        return 0, f"the routes in effect give r{stable} no users"
    if s.phase in SETTLED and not s.routes.in_effect:
        return 0, f"the routes of r{stable} are not in effect: {s.routes.message}"
    if s.phase == Phase.ROLLED_BACK:
        return stable, f"rolled back to r{stable}"
    entry = ctx.entry(stable)
    if entry is not None and entry.reason.startswith("restored"):
        return stable, f"r{stable} restored"
    return stable, f"r{stable} promoted"


def _registry(ctx: _Ctx) -> list[Action]:
    """Keep ``spec.model.registry``'s alias on the serving revision's version: compare the
    alias as last read (``Inputs.registry``) with that version, record the moves read back
    (timeline), set ``status.registry`` and the RegistrySynced condition, and ask for a
    read, or a move when they differ (``SyncRegistryAlias``, applied after the routes).

    Only ever follows the routes: a failure or a slow MLflow changes nothing else in the
    decision (Ready, the phase and every route write are computed without it)."""
    _record_registry_versions(ctx)
    s = ctx.s
    spec = ctx.inp.spec.model.registry
    synced = ConditionType.REGISTRY_SYNCED
    if spec is None:
        s.registry = None
        s.conditions = [c for c in s.conditions if c.type != synced.value]
        return []
    obs = ctx.inp.registry
    uri = obs.tracking_uri if obs is not None else (spec.tracking_uri or "")
    st = s.registry
    if st is None or (st.name, st.alias) != (spec.name, spec.alias) or (
        obs is not None and st.tracking_uri != uri
    ):
        st = RegistryStatus(name=spec.name, alias=spec.alias)
    st.tracking_uri = uri or st.tracking_uri
    s.registry = st
    revision, why = _registry_serving(ctx)
    entry = ctx.entry(revision) if revision else None
    version = ""
    if entry is not None and entry.registry is not None and entry.registry.name == spec.name:
        version = entry.registry.version
    st.wanted_revision, st.wanted_version = revision, version
    where = f"alias {spec.alias} of MLflow model {spec.name}"
    if obs is not None:
        if obs.read_at is not None:
            st.version, st.observed_at = obs.version, obs.read_at
        st.error = obs.error
        move = obs.moved
        if move is not None and (move.at, move.to_version) != (st.moved_at, st.moved_to) and (
            st.moved_at is None or move.at >= st.moved_at
        ):
            st.moved_at, st.moved_to = move.at, move.to_version
            tag = registry_tag(spec.alias)
            ctx.record(
                TimelineType.REGISTRY_ALIAS_MOVED,
                f"{where} moved from version {move.from_version or '(unset)'} to "
                f"{move.to_version} ({move.why}); "
                + (f"version {move.to_version} tagged {tag}" if not move.tag_error else
                   f"tagging version {move.to_version} {tag} failed ({move.tag_error}): "
                   "retried"),
                revision=move.revision,
            )
    now_at = f"version {st.version}" if st.version else "no version"
    if obs is None:
        reason, message = "Reading", f"reading {where}"
    elif obs.error:
        reason = "RegistryError"
        message = (
            f"{where} at {uri or 'the default tracking server'}: {obs.error}; last read on "
            f"{now_at}" + (f", wanted on version {version} (r{revision})" if version else "")
            + "; retrying (the routes never wait for it)"
        )
    elif not revision:
        reason, message = "Waiting", f"{where} stays on {now_at}: {why}"
    elif not version:
        reason = "NoVersion"
        message = (
            f"r{revision} serves but names no version of MLflow model {spec.name} (its "
            f"spec's model.registry): {where} left on {now_at}"
        )
    elif st.version == version:
        reason, message = "InSync", f"{where} is on version {version} (r{revision} serves)"
    else:
        reason = "Moving"
        message = f"{where} is on {now_at}: moving it to version {version} ({why})"
    stored = _condition(s, synced)
    if obs is None and stored is not None:
        # Not read yet by this process (a restart): the stored condition stands meanwhile.
        stored.observed_generation = ctx.inp.generation
    else:
        _set_condition(ctx, synced, reason == "InSync", reason, message)
    if reason != "InSync":
        ctx.wake(ctx.now + timedelta(seconds=REGISTRY_RECHECK))
    return [SyncRegistryAlias(
        spec.tracking_uri or "", spec.name, spec.alias, version, revision if version else 0,
        why if version else "",
    )]


# --------------------------------------------------------------------------------------
# Desired state, conditions, bounded lists
# --------------------------------------------------------------------------------------


def _replicas_for(ctx: _Ctx, revision: int) -> int:
    if revision == ctx.s.current_revision:
        return ctx.inp.spec.serving.replicas
    obs = ctx.observed(revision)
    if obs is not None and obs.exists and obs.replicas > 0:
        return obs.replicas
    return ctx.inp.spec.serving.replicas


def _desired_state(ctx: _Ctx) -> list[Action]:
    s = ctx.s
    out: list[Action] = []
    stable, cand = s.stable_revision, s.candidate_revision
    if stable:
        out.append(EnsureRevision(stable, _replicas_for(ctx, stable)))
    seen = ctx.inp.routes
    carries = seen.weights.get(cand, 0) > 0 or seen.header_revision == cand
    if cand and cand != stable and (s.phase in IN_FLIGHT or carries):
        # The candidate in flight, or the revision a RollingBack still sends traffic to.
        out.append(EnsureRevision(cand, _replicas_for(ctx, cand)))
    drill = s.drill
    warming = (DrillPhase.WAITING_READY, DrillPhase.ANALYSING)
    if drill is not None and drill.phase in warming and drill.target not in (stable, cand):
        out.append(EnsureRevision(drill.target, _replicas_for(ctx, drill.target)))
    want = _routes_wanted(ctx)
    if want is not None and _safe_to_write(ctx, want):
        out.append(want)
    return out


def _safe_to_write(ctx: _Ctx, want: SetRoutes) -> bool:
    """Users are never moved onto a revision that is not Available: a write that adds
    live weight (or the header routes' callers) to one waits until it is (the step then
    holds, not in effect). The stable revision is exempt while the routes read back give
    it live weight: it is where traffic goes back to whatever happens. A stable with no
    live weight at all (a release created again from its records: its route objects went
    with the deleted one) gets users only once it is Available, like any revision. Under a
    policy's ``integrity``, a revision also gets more traffic only once its artifact is
    verified (``_cleared``): the write waits for the verification it asks for."""
    held = _unverified_receivers(ctx, want)
    if held:
        for rev in held:
            ctx.ask_verify(rev)
        return False
    seen = ctx.inp.routes
    stable = ctx.s.stable_revision
    for rev, weight in want.weights.items():
        exempt = rev == stable and seen.weights.get(rev, 0) > 0
        if not exempt and weight > seen.weights.get(rev, 0) and not ctx.available(rev):
            return False
    header = want.header_revision
    return not (
        header is not None
        and header != stable
        and seen.header_revision != header
        and not ctx.available(header)
    )


def _set_condition(ctx: _Ctx, type_: ConditionType, on: bool, reason: str, message: str) -> None:
    """Upsert a condition. lastTransitionTime moves when the status or the reason changes
    (so a Degraded reason such as AnalysisInconclusive carries its own start time)."""
    status = ConditionStatus.TRUE if on else ConditionStatus.FALSE
    for c in ctx.s.conditions:
        if c.type == type_.value:
            if c.status != status or c.reason != reason or c.last_transition_time is None:
                c.last_transition_time = ctx.now
            c.status, c.reason, c.message = status, reason, message
            c.observed_generation = ctx.inp.generation
            return
    ctx.s.conditions.append(
        Condition(
            type=type_.value,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=ctx.now,
            observed_generation=ctx.inp.generation,
        )
    )


def _condition(s: ModelReleaseStatus, type_: ConditionType) -> Condition | None:
    return next((c for c in s.conditions if c.type == type_.value), None)


_PROBLEM_EVENT: Mapping[str, str] = {
    "Refused": TimelineType.ROUTES_REFUSED,
    "Conflict": TimelineType.ROUTE_CONFLICT,
    "Drift": TimelineType.ROUTE_DRIFT,
}


def _route_weights(weights: Mapping[int, int]) -> list[RouteWeight]:
    return [RouteWeight(revision=r, weight=w) for r, w in sorted(weights.items()) if w > 0]


def _seen_routes(obs: RouteObservation) -> SetRoutes:
    """The routes the router reports, as a write that would produce them."""
    seen = SetRoutes(
        dict(obs.weights), obs.mirror_revision, obs.mirror_percent, obs.header_revision,
        obs.primary_revision, obs.fallback,
    )
    # As reported, even None (the umbrella Service selects no revision): not derived.
    object.__setattr__(seen, "primary_revision", obs.primary_revision)
    return seen


def _report_routes(ctx: _Ctx) -> SetRoutes | None:
    """Report the routes in effect (never the ones asked for) and whether they are the
    ones the final state needs; record a route problem, or an edit outside Rewind of
    routes that were in effect, once. Returns the routes the final state needs."""
    s = ctx.s
    stored = ctx.inp.status.routes
    obs = ctx.inp.routes
    want = _routes_wanted(ctx)
    in_effect = ctx.in_effect(want)
    problem = ctx.route_problem(want)
    seen = _route_weights(obs.weights)
    mirror = (obs.mirror_revision or 0, obs.mirror_percent) if obs.mirror_percent else (0, 0)
    header = obs.header_revision or 0
    fallback = obs.fallback.describe() if obs.fallback is not None else ""
    primary = obs.primary_revision or 0
    # Why the routes are not in effect; with nothing wanted yet, a problem the router sees
    # all the same (kept so that its Event is not repeated).
    message = ctx.routes_why(want) if not in_effect else (problem.message if problem else "")
    source = obs.source or "the routes"
    before = (stored.weights, (stored.mirror_revision, stored.mirror_percent),
              stored.header_revision, stored.primary_revision, stored.fallback)
    if stored.in_effect and (seen, mirror, header, primary, fallback) != before and (
        problem is None
    ):
        old = _describe_routes(SetRoutes({w.revision: w.weight for w in stored.weights},
                                         stored.mirror_revision or None,
                                         stored.mirror_percent, stored.header_revision or None,
                                         stored.primary_revision or None))
        if stored.fallback:
            old = f"everyone to the breaker's fallback ({stored.fallback})"
        new = _describe_routes(_seen_routes(obs))
        ctx.record(
            TimelineType.ROUTE_DRIFT,
            f"{source} was changed outside Rewind: it routes {new} instead of {old}; "
            "Rewind restores it (route options belong in spec.traffic)",
            warning=True,
        )
    elif problem is not None and problem.kind in _PROBLEM_EVENT and problem.message != (
        stored.message
    ):
        ctx.record(_PROBLEM_EVENT[problem.kind], problem.message, warning=True)
    wanted = _route_weights(want.weights) if want is not None else []
    r = s.routes
    if r.since is None or r.in_effect != in_effect or r.wanted != wanted:
        r.since = ctx.now
    r.in_effect = in_effect
    r.weights = seen
    r.mirror_revision, r.mirror_percent = mirror
    r.header_revision = header
    r.primary_revision = primary
    r.fallback = fallback
    r.wanted = wanted
    r.message = message
    stable, cand = s.stable_revision, s.candidate_revision
    s.weights = Weights(
        stable=obs.weights.get(stable, 0) if stable else 0,
        candidate=obs.weights.get(cand, 0) if cand and cand != stable else 0,
    )
    s.mirror_percent = mirror[1] if cand and mirror[0] == cand else 0
    return want


def _conditions(ctx: _Ctx, want: SetRoutes | None) -> None:
    """kstatus conditions (Ready, Reconciling, Stalled) and the legacy Progressing and
    Degraded, from the final state and what was observed. Exactly one of Ready,
    Reconciling and Stalled is True, so kstatus (Current / InProgress / Failed) and
    Argo CD's health.lua (Healthy / Progressing or Suspended / Degraded) always agree."""
    s = ctx.s
    phase = s.phase
    msg = s.message or phase.value
    inconclusive = phase in ROLLING_OUT and _round_verdict(_latest_round(s)) == Verdict.INCONCLUSIVE
    in_effect = s.routes.in_effect
    problem = ctx.route_problem(want)

    stuck: str | None = None
    if not in_effect and want is not None and s.routes.since is not None:
        deadline = s.routes.since + timedelta(seconds=ctx.progress_deadline)
        if ctx.now >= deadline:
            stuck = (
                f"the routes are not in effect after {_dur(ctx.progress_deadline)} "
                f"(since {_ts(s.routes.since)}): {s.routes.message}"
            )
        else:
            ctx.wake(deadline)
        # Routes are not watched: look again soon, to see a refusal lifted, a conflicting
        # object deleted, or a write that landed.
        ctx.wake(ctx.now + timedelta(seconds=ROUTES_RECHECK))
    stable = s.stable_revision
    obs = ctx.observed(stable) if stable else None
    stable_down: str | None = None
    if phase in SETTLED and stable and (obs is None or not obs.serving):
        stable_down = (
            f"stable r{stable} is unavailable: "
            + (obs.describe() if obs is not None else f"the Deployment of r{stable} is missing")
        )

    breaker = _breaker_condition(ctx)
    stalled: tuple[str, str] | None = None
    if ctx.policy_error:
        stalled = (ctx.error_reason, ctx.policy_error)
    elif problem is not None and problem.kind in ("Refused", "Conflict"):
        reason = TimelineType.ROUTES_REFUSED if problem.kind == "Refused" else (
            TimelineType.ROUTE_CONFLICT
        )
        stalled = (reason.value, f"{problem.message}; {msg}")
    elif ctx.stalled:
        stalled = ("RollbackStalled", ctx.stalled)
    elif ctx.quarantine_hold:
        stalled = (TimelineType.QUARANTINE_HOLD.value, ctx.quarantine_hold)
    elif stuck:
        stalled = ("RoutesNotInEffect", stuck)
    elif stable_down:
        stalled = (TimelineType.STABLE_UNAVAILABLE.value, f"{stable_down}; {msg}")
    elif breaker is not None and breaker[2]:
        stalled = (breaker[0], breaker[1])
    elif phase in (Phase.FAILED, Phase.ROLLED_BACK):
        cur = s.current_revision
        stalled = (
            phase.value,
            f"{msg}; the spec still describes r{cur}: annotate {ANNOTATION_RETRY}=true to "
            "try it again or change the spec",
        )
    deciding = _quarantine_decision(ctx)
    ready = (phase == Phase.PROMOTED and in_effect and stalled is None and breaker is None
             and deciding is None)
    if ready:
        ready_reason = phase.value
    elif stalled is not None:
        ready_reason = stalled[0]
    elif breaker is not None:
        ready_reason = breaker[0]
    elif deciding is not None:
        ready_reason = Phase.AWAITING_APPROVAL.value
    elif phase == Phase.PROMOTED:
        ready_reason = "RoutesNotInEffect"
    else:
        ready_reason = phase.value
    ready_msg = msg if ready or phase != Phase.PROMOTED or in_effect else (
        f"{msg}; routes not in effect: {s.routes.message}"
    )
    if breaker is not None and stalled is None:
        ready_msg = f"{breaker[1]}; {msg}"
    if stalled is not None and not ready:
        ready_msg = stalled[1]
    _set_condition(ctx, ConditionType.READY, ready, ready_reason, ready_msg)
    reconciling = not ready and stalled is None
    _set_condition(
        ctx,
        ConditionType.RECONCILING,
        reconciling,
        ready_reason if reconciling else "AsExpected",
        ready_msg if reconciling else "",
    )
    if stalled is not None:
        _set_condition(ctx, ConditionType.STALLED, True, stalled[0], stalled[1])
    else:
        _set_condition(ctx, ConditionType.STALLED, False, "AsExpected", "")

    progressing = phase in IN_FLIGHT or phase == Phase.ROLLING_BACK
    _set_condition(ctx, ConditionType.PROGRESSING, progressing, phase.value, msg)

    prev = _condition(ctx.inp.status, ConditionType.DEGRADED)
    unmeshed = _unmeshed(ctx)
    smark = _quarantined(ctx, stable) if phase != Phase.ROLLING_BACK else None
    if smark is not None and not stable_down:
        detail = f"r{stable} serves users and is quarantined by {_named(smark)}"
        if smark.accepted_by:
            detail += f"; {smark.accepted_by} chose to keep serving it"
        _set_condition(ctx, ConditionType.DEGRADED, True, TimelineType.QUARANTINED.value,
                       ctx.quarantine_hold or detail)
    elif stable_down:
        was_down = prev is not None and prev.reason == TimelineType.STABLE_UNAVAILABLE
        if not was_down:
            ctx.record(TimelineType.STABLE_UNAVAILABLE, stable_down, revision=stable, warning=True)
        _set_condition(ctx, ConditionType.DEGRADED, True, TimelineType.STABLE_UNAVAILABLE.value,
                       stable_down)
    elif breaker is not None:
        _set_condition(ctx, ConditionType.DEGRADED, True, breaker[0], breaker[1])
    elif unarmed := breaker_unsupported(ctx.inp.spec, ctx.policy):
        if prev is None or prev.reason != TimelineType.BREAKER_UNSUPPORTED:
            ctx.record(TimelineType.BREAKER_UNSUPPORTED, unarmed, warning=True)
        _set_condition(ctx, ConditionType.DEGRADED, True,
                       TimelineType.BREAKER_UNSUPPORTED.value, unarmed)
    elif (unsafe := _target_unverifiable(ctx)) is not None:
        _set_condition(ctx, ConditionType.DEGRADED, True,
                       TimelineType.ARTIFACT_VERIFICATION_FAILED.value, unsafe)
    elif unmeshed is not None:
        revisions, detail = unmeshed
        was = prev is not None and prev.reason == TimelineType.SIDECAR_MISSING and (
            prev.message.split(":", 1)[0] == revisions
        )
        if not was:
            ctx.record(TimelineType.SIDECAR_MISSING, detail, warning=True)
        _set_condition(ctx, ConditionType.DEGRADED, True, TimelineType.SIDECAR_MISSING.value,
                       detail)
    elif inconclusive:
        since = ctx.now
        if (
            prev is not None
            and prev.status == ConditionStatus.TRUE
            and prev.reason in ("AnalysisInconclusive", "OperatorOverloaded")
            and prev.last_transition_time is not None
        ):
            since = prev.last_transition_time
        latest = _latest_round(s)
        last = "; ".join(m.message or m.metric for m in latest if m.verdict != Verdict.PASS)
        overloaded = any(m.error_kind == QueryErrorKind.OVERLOADED for m in latest)
        why = "OperatorOverloaded" if overloaded else "AnalysisInconclusive"
        if prev is None or prev.reason != why:
            since = ctx.now
        detail = (
            f"analysis inconclusive since {_ts(since)} ({s.analysis.inconclusive} inconclusive "
            f"measurements; last: {last}): no traffic increase, no step advancement, no rollback"
        )
        stage = ctx.stage()
        if stage is not None and stage.kind == StageKind.FIRST_PREVIEW:
            detail += "; " + _first_release_hint(ctx)
        if overloaded:
            detail += (
                "; the operator is overloaded, not the model: raise --analysis-threads, "
                "lengthen analysis.interval, use fewer metrics, or shard releases across "
                "operators by namespace (more replicas do not help: one is active)"
            )
        _set_condition(ctx, ConditionType.DEGRADED, True, why, detail)
        for type_ in (ConditionType.PROGRESSING, ConditionType.RECONCILING):
            cond = _condition(s, type_)
            if cond is not None and cond.status == ConditionStatus.TRUE:
                cond.message = f"{msg}; {detail}"
    else:
        degraded_reason = {
            Phase.AWAITING_APPROVAL: "AnalysisFailed",
            Phase.ROLLING_BACK: "RollingBack",
            Phase.ROLLED_BACK: "RolledBack",
            Phase.FAILED: "Failed",
        }.get(phase)
        _set_condition(
            ctx,
            ConditionType.DEGRADED,
            degraded_reason is not None,
            degraded_reason or "AsExpected",
            msg if degraded_reason else "",
        )
    recovered = prev is not None and prev.reason == TimelineType.STABLE_UNAVAILABLE
    if recovered and not stable_down and phase in SETTLED and stable:
        ctx.record("StableAvailable", f"stable r{stable} is available again", revision=stable)


def _breaker_condition(ctx: _Ctx) -> tuple[str, str, bool] | None:
    """(reason, message, a human must act) while the breaker is not Closed, else None."""
    b = ctx.s.breaker
    if b is None or b.state == BreakerState.CLOSED:
        return None
    if b.state == BreakerState.RESETTING:
        return ("BreakerResetting", f"circuit breaker reset ({b.reason}): moving users back "
                f"from {b.fallback}: {ctx.s.routes.message or 'waiting for the routes'}", False)
    where = "every user is on" if b.state == BreakerState.TRIPPED else "sending every user to"
    text = f"circuit breaker tripped ({b.reason}): {where} {b.fallback}"
    spec = _breaker_spec(ctx)
    manual = spec is not None and spec.reset.mode == BreakerResetMode.MANUAL
    if manual:
        text += f"; reset it: {_kubectl(ctx, ANNOTATION_RESET_BREAKER, 'true')}"
    elif spec is not None:
        text += f"; resets once the signal passes for {spec.reset.healthy_for}"
    return ("BreakerTripped", text, manual)


def _unmeshed(ctx: _Ctx) -> tuple[str, str] | None:
    """The revisions that take (or are measured on) traffic whose running pods lack Istio's
    proxy while one is expected, and the Degraded message (it starts with them, e.g.
    ``r2, r3: ...``); None when there are none or nothing is expected."""
    expected = ctx.inp.proxy_expected
    s = ctx.s
    if not expected:
        return None
    wanted = {s.stable_revision}
    if s.phase in IN_FLIGHT or s.phase == Phase.ROLLING_BACK:
        wanted.add(s.candidate_revision)
    parts: list[str] = []
    revisions: list[str] = []
    for revision in sorted(r for r in wanted if r):
        obs = ctx.observed(revision)
        if obs is None or not obs.unmeshed_pods:
            continue
        pods = list(obs.unmeshed_pods)
        shown = ", ".join(pods[:3]) + (f" and {len(pods) - 3} more" if len(pods) > 3 else "")
        revisions.append(f"r{revision}")
        parts.append(
            f"{len(pods)} of {max(obs.running_pods, len(pods))} running pods of r{revision} "
            f"({shown})"
        )
    if not parts:
        return None
    names = ", ".join(revisions)
    return names, (
        f"{names}: {'; '.join(parts)} have no Istio proxy, although {expected}: the mesh "
        "neither measures them (no istio_requests_total reported by them: analysis queries "
        "on the destination find no data) nor secures them with mTLS. Have Istio inject it "
        f"(label namespace {ctx.inp.namespace} istio-injection=enabled or istio.io/rev=<its "
        "revision>, or the pod template sidecar.istio.io/inject=true; check that the "
        "injector runs) and delete those pods so they are created again with it, or set "
        "spec.traffic.sidecar: Ignore if the metrics come from elsewhere"
    )


def _deferred_note(ctx: _Ctx) -> str:
    """Why the new spec waits while rolling back, and until when."""
    s = ctx.s
    restore = _restorable(ctx)
    if restore is not None and restore.revision == s.stable_revision:
        return (
            f"; the spec is r{restore.revision}'s again: once this rollback is done, r"
            f"{restore.revision} is what the spec describes"
        )
    note = "; the spec changed: its new revision starts once the rollback is done"
    since = s.step_started_at
    if since is not None and not ctx.available(s.stable_revision):
        deadline = since + timedelta(seconds=ctx.progress_deadline)
        note += (
            f" (or at {_ts(deadline)} against r{_serving_base(ctx)} if r{s.stable_revision} "
            "is not Available by then)"
        )
    return note


def _trim(s: ModelReleaseStatus) -> None:
    s.analysis.measurements = s.analysis.measurements[-MAX_MEASUREMENTS:]
    s.timeline = s.timeline[-MAX_TIMELINE:]
    while len(s.consumed_actions) > MAX_CONSUMED_ACTIONS:
        # Forget the oldest value seen gone first: one still on the object must be known.
        gone = next((i for i, c in enumerate(s.consumed_actions) if c.gone_at is not None), 0)
        del s.consumed_actions[gone]
    if s.pending_decision is not None:
        s.pending_decision.evidence = s.pending_decision.evidence[-MAX_MEASUREMENTS:]
        s.pending_decision.approvals = s.pending_decision.approvals[-10:]
    keep = {s.stable_revision, s.candidate_revision, s.current_revision}
    previous = _previous_known_good(s)
    if previous is not None:
        keep.add(previous)
    while len(s.history) > MAX_HISTORY:
        index = next((i for i, e in enumerate(s.history) if e.revision not in keep), 0)
        del s.history[index]


def _requeue(ctx: _Ctx) -> float | None:
    if not ctx.wakeups:
        return None
    soonest = min(ctx.wakeups)
    return max(MIN_REQUEUE, (soonest - ctx.now).total_seconds())


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def _copy_status(status: ModelReleaseStatus) -> ModelReleaseStatus:
    """A deep copy the engine may mutate (dump + validate: much faster than deepcopy).

    Validating also clips every string to its schema bound (``api.StatusText``...): the
    engine copies the stored status on the way in and its own result on the way out, so it
    never writes a status the API server refuses, whatever a human wrote in an annotation.
    """
    try:
        return ModelReleaseStatus.model_validate(status.model_dump())
    except ValidationError:  # e.g. a hand-built status beyond the schema's bounds
        return status.model_copy(deep=True)


def decide(inputs: Inputs) -> Decision:
    """Compute the next status and the actions that make the world match it."""
    usable = inputs.policy_error is None and inputs.spec_error is None
    policy = inputs.policy if usable else None
    error = inputs.policy_error or inputs.spec_error
    if policy is None and error is None:
        error = f"RolloutPolicy {inputs.spec.policy_ref.name!r} not found"
    ctx = _Ctx(
        inp=inputs,
        s=_copy_status(inputs.status),
        policy=policy,
        policy_error=error,
        error_reason="PolicyError" if inputs.policy_error or not inputs.spec_error else (
            "WorkloadRefError"
        ),
        actions=_bounded_actions(inputs.actions),
    )
    for step in _PIPELINE:
        step(ctx)
    s = ctx.s
    s.observed_generation = inputs.generation
    if error is not None and s.phase == Phase.PENDING:
        what = "RolloutPolicy" if ctx.error_reason == "PolicyError" else "pod template"
        s.message = f"waiting for a usable {what}: {error}"
    if ctx.deferred_spec and s.phase == Phase.ROLLING_BACK:
        s.message += _deferred_note(ctx)
    _summarize_quarantine(s)
    want = _report_routes(ctx)
    _conditions(ctx, want)
    registry = _registry(ctx)  # after the routes and conditions it follows
    _trim(s)
    ctx.s = s = _copy_status(s)
    if _removals_pending(s):  # see the removal soon, so a re-added value is told apart
        ctx.wake(inputs.now + timedelta(seconds=CONSUMED_RECHECK))
    _verify_early(ctx)
    desired = _desired_state(ctx)
    # What the desired state keeps up (the stable, the candidate in flight, a revision the
    # routes still send users to, e.g. a first release stopped after its routes were
    # written) is never scaled down in the same decision: it is what serves.
    kept_up = {a.revision for a in desired if isinstance(a, EnsureRevision)}
    actions: list[Action] = [
        *ctx.snapshots,
        *(VerifyArtifact(r) for r in ctx.verify if r not in inputs.verifying),
        *desired,
        *registry,
        *(a for a in ctx.scale_downs if a.revision not in kept_up),
        *ctx.annotations,
        *ctx.events,
    ]
    return Decision(status=s, actions=tuple(actions), requeue_after=_requeue(ctx))
