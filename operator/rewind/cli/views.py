"""What ``kubectl rewind`` shows, computed from the objects it read (pure: no I/O, no clock).

Every command first builds a plain view (JSON-ready dicts and lists) from the ModelRelease,
its RolloutPolicy, its Deployments and its revision snapshots; ``--output json`` prints
that view, the terminal renderer (:mod:`rewind.cli.render`) and the post-mortem
(:mod:`rewind.cli.report`) draw it. So what a script reads and what a human sees are the
same facts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from rewind.adapters.archive import parse_stored
from rewind.adapters.workloads import observe_deployment, spec_from_snapshot
from rewind.api import (
    HistoryEntry,
    Measurement,
    ModelReleaseSpec,
    ModelReleaseStatus,
    Phase,
    RolloutPolicySpec,
    TimelineEntry,
    workload_name,
)
from rewind.engine import plan_for
from rewind.engine_plan import StageKind

#: Phases a release passes through on its own, soon: an action's outcome is followed
#: until the release leaves them.
TRANSIENT = frozenset({Phase.ROLLING_BACK.value, Phase.PROMOTING.value})


def stamp(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at is not None else ""


def parse_time(text: object) -> datetime | None:
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def duration(seconds: float | None) -> str:
    """``4.2s``, ``2m10s``, ``1h05m``, ``3d4h``: short and exact enough for a human."""
    if seconds is None or math.isnan(seconds):
        return ""
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 10:
        return f"{sign}{s:.1f}s"
    whole = round(s)
    if whole < 60:
        return f"{sign}{whole}s"
    if whole < 3600:
        return f"{sign}{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{sign}{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{sign}{whole // 86400}d{whole % 86400 // 3600}h"


def short_digest(digest: str, keep: int = 12) -> str:
    """``sha256:b7994d38b4eb`` from a full digest (or an image pinned by one)."""
    if "@" in digest:
        digest = digest.rsplit("@", 1)[1]
    algo, sep, hexa = digest.partition(":")
    return f"{algo}:{hexa[:keep]}" if sep else digest[:keep]


def _measurement(m: Measurement) -> dict[str, Any]:
    return {
        "metric": m.metric,
        "value": m.value,
        "valueText": m.shown,
        "min": m.min,
        "max": m.max,
        "verdict": m.verdict.value,
        "at": stamp(m.at),
        "revision": m.revision,
        "message": m.message,
        "errorKind": m.error_kind,
    }


def threshold(m: Mapping[str, Any]) -> str:
    bounds = [f"{k} {m[k]:g}" for k in ("min", "max") if m.get(k) is not None]
    return ", ".join(bounds) or "no threshold"


def _entry(e: TimelineEntry) -> dict[str, Any]:
    return {"at": stamp(e.at), "type": e.type, "revision": e.revision, "message": e.message,
            "user": e.user}


def _history(h: HistoryEntry) -> dict[str, Any]:
    return {
        "revision": h.revision,
        "outcome": h.outcome.value,
        "modelVersion": h.model_version,
        "modelDigest": h.model_digest,
        "imageDigest": h.image_digest,
        "dataVersion": h.data_version,
        "specHash": h.spec_hash,
        "createdAt": stamp(h.created_at),
        "promotedAt": stamp(h.promoted_at),
        "finishedAt": stamp(h.finished_at),
        "reason": h.reason,
    }


@dataclass(frozen=True)
class Release:
    """A ModelRelease as read, parsed once."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: ModelReleaseSpec | None
    status: ModelReleaseStatus
    raw: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Release:
        meta = body.get("metadata") or {}
        try:
            spec: ModelReleaseSpec | None = ModelReleaseSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            spec = None
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            spec=spec,
            status=ModelReleaseStatus.model_validate(body.get("status") or {}),
            raw=body,
        )

    @property
    def annotations(self) -> Mapping[str, str]:
        return dict((self.raw.get("metadata") or {}).get("annotations") or {})

    @property
    def policy_name(self) -> str:
        return self.spec.policy_ref.name if self.spec is not None else ""


def parse_policy(body: Mapping[str, Any] | None) -> RolloutPolicySpec | None:
    if not body:
        return None
    try:
        return RolloutPolicySpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None


def _latest_round(status: ModelReleaseStatus) -> list[Measurement]:
    last = status.analysis.last_run_at
    if last is None:
        return []
    rev = status.candidate_revision or status.current_revision
    return [m for m in status.analysis.measurements if m.at == last and m.revision == rev]


def _step(status: ModelReleaseStatus, policy: RolloutPolicySpec | None,
          now: datetime) -> dict[str, Any] | None:
    """The current stage of the rollout and its clock (None when nothing is rolling out)."""
    if policy is None or status.phase.value not in (
        Phase.PROGRESSING.value, Phase.PAUSED.value, Phase.AWAITING_APPROVAL.value,
    ):
        return None
    plan = plan_for(status, policy)
    stage = plan.stage(status.current_step)
    started = status.step_started_at
    elapsed = (now - started).total_seconds() if started is not None else None
    remaining = None
    if elapsed is not None and stage.duration and not stage.manual:
        remaining = max(0.0, stage.duration - elapsed)
    return {
        "index": status.current_step,
        "total": len(plan.stages) - 1,
        "kind": stage.kind.value,
        "label": "waiting for the candidate to become Available"
        if stage.kind == StageKind.READY else stage.label,
        "weight": stage.weight,
        "mirror": stage.mirror,
        "manual": stage.manual,
        "analysed": stage.analysed,
        "duration": stage.duration,
        "startedAt": stamp(started),
        "elapsed": elapsed,
        "remaining": remaining,
        "inEffect": started is not None,
    }


def _pods(deployments: Iterable[Mapping[str, Any]], uid: str) -> dict[int, dict[str, Any]]:
    pods: dict[int, dict[str, Any]] = {}
    for d in deployments:
        seen = observe_deployment(d)
        if seen is None or (seen.owner_uids and uid and uid not in seen.owner_uids):
            continue
        pods[seen.revision] = {
            "ready": seen.ready_replicas,
            "desired": seen.replicas,
            "available": seen.available,
            "deployment": seen.name,
        }
    return pods


def release_view(
    body: Mapping[str, Any],
    policy_body: Mapping[str, Any] | None,
    deployments: Sequence[Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """Everything ``kubectl rewind get`` shows, as data."""
    rel = Release.from_body(body)
    s = rel.status
    policy = parse_policy(policy_body)
    pods = _pods(deployments, rel.uid)
    weights = {w.revision: w.weight for w in s.routes.weights}
    roles: dict[int, list[str]] = {}
    for rev, role in ((s.stable_revision, "stable"), (s.candidate_revision, "candidate"),
                      (s.current_revision, "current")):
        if rev:
            roles.setdefault(rev, []).append(role)
    shown = {*roles, *(r for r, w in weights.items() if w), *(r for r, p in pods.items()
                                                              if p["desired"])}
    if s.routes.mirror_revision:
        shown.add(s.routes.mirror_revision)
    revisions = []
    for h in sorted(s.history, key=lambda h: -h.revision):
        if h.revision not in shown:
            continue
        row = _history(h)
        row.update(
            roles=roles.get(h.revision, []),
            weight=weights.get(h.revision, 0),
            mirror=s.routes.mirror_percent if s.routes.mirror_revision == h.revision else 0,
            headerRoutes=s.routes.header_revision == h.revision,
            pods=pods.get(h.revision),
            workload=workload_name(rel.name, h.revision),
        )
        revisions.append(row)
    pd = s.pending_decision
    decision: dict[str, Any] | None = None
    if pd is not None:
        approval = policy.rollback.approval if policy is not None else None
        decision = {
            "action": pd.action.value,
            "reason": pd.reason,
            "decidedAt": stamp(pd.decided_at),
            "expiresAt": stamp(pd.expires_at),
            "remaining": (pd.expires_at - now).total_seconds() if pd.expires_at else None,
            "onTimeout": approval.on_timeout.value if approval is not None else "",
            "requiredApprovers": pd.required_approvers,
            "approvals": [{"user": a.user or "(unknown)", "at": stamp(a.at)}
                          for a in pd.approvals],
            "evidence": [_measurement(m) for m in pd.evidence],
            "commands": {
                "approve": f"kubectl rewind approve {rel.name} -n {rel.namespace}",
                "reject": f"kubectl rewind reject {rel.name} -n {rel.namespace} "
                          "--reason '<why>'",
            },
        }
    a = s.analysis
    return {
        "namespace": rel.namespace,
        "name": rel.name,
        "model": rel.spec.model.name if rel.spec is not None else "",
        "policy": rel.policy_name,
        "strategy": s.strategy.value if s.strategy is not None else "",
        "phase": s.phase.value,
        "message": s.message,
        "generation": rel.generation,
        "observedGeneration": s.observed_generation,
        "stableRevision": s.stable_revision,
        "candidateRevision": s.candidate_revision,
        "currentRevision": s.current_revision,
        "weights": {"stable": s.weights.stable, "candidate": s.weights.candidate,
                    "mirror": s.mirror_percent},
        "routes": {
            "inEffect": s.routes.in_effect,
            "since": stamp(s.routes.since),
            "weights": [{"revision": w.revision, "weight": w.weight} for w in s.routes.weights],
            "wanted": [{"revision": w.revision, "weight": w.weight} for w in s.routes.wanted],
            "mirrorRevision": s.routes.mirror_revision,
            "mirrorPercent": s.routes.mirror_percent,
            "headerRevision": s.routes.header_revision,
            "message": s.routes.message,
        },
        "revisions": revisions,
        "step": _step(s, policy, now),
        "analysis": {
            "lastRunAt": stamp(a.last_run_at),
            "failures": a.failures,
            "failureLimit": policy.analysis.failure_limit if policy is not None else None,
            "consecutiveFailures": a.consecutive_failures,
            "inconclusive": a.inconclusive,
            "lastRound": [_measurement(m) for m in _latest_round(s)],
        },
        "pendingDecision": decision,
        "conditions": [
            {"type": c.type, "status": c.status.value, "reason": c.reason, "message": c.message,
             "since": stamp(c.last_transition_time)}
            for c in s.conditions
        ],
        "notifications": [
            {"target": n.target, "type": n.type, "revision": n.revision, "state": n.state.value,
             "at": stamp(n.at), "finishedAt": stamp(n.finished_at), "error": n.error}
            for n in s.notifications
        ],
        "recent": [_entry(e) for e in s.timeline[-5:]],
        "now": stamp(now),
    }


# -- history ----------------------------------------------------------------------------


def history_view(body: Mapping[str, Any], snapshots: Sequence[Mapping[str, Any]]) -> list[
        dict[str, Any]]:
    """Every revision: the status's history, and the records on snapshots the status has
    trimmed (it keeps the newest 20; records outlive it)."""
    rel = Release.from_body(body)
    rows = {h.revision: {**_history(h), "source": "status"} for h in rel.status.history}
    for snap in snapshots:
        stored = parse_stored(snap)
        if stored is None or stored.release != rel.name or stored.entry is None:
            continue
        if stored.revision not in rows:
            rows[stored.revision] = {**_history(stored.entry), "source": stored.name}
    for rev, row in rows.items():
        started, ended = parse_time(row["createdAt"]), parse_time(row["finishedAt"])
        promoted = parse_time(row["promotedAt"])
        stop = promoted or ended
        row["roles"] = [role for role, r in (("stable", rel.status.stable_revision),
                                              ("candidate", rel.status.candidate_revision),
                                              ("current", rel.status.current_revision))
                        if r == rev]
        row["rolloutSeconds"] = (
            (stop - started).total_seconds() if started is not None and stop is not None
            else None)
    return [rows[r] for r in sorted(rows)]


# -- diff --------------------------------------------------------------------------------

#: Sections of a spec in the order a diff shows them, with what each is about.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("model", "model artifact"),
    ("data", "training data and lineage"),
    ("code", "serving image, args and env"),
    ("environment", "environment"),
    ("serving", "serving"),
    ("traffic", "traffic"),
    ("policyRef", "policy"),
)


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value):
            _flatten(value[key], f"{path}.{key}" if path else str(key), out)
        return
    if isinstance(value, list) and value and all(
        isinstance(v, Mapping) and "name" in v for v in value
    ):
        for item in value:
            rest = {k: v for k, v in item.items() if k != "name"}
            key = f"{path}[{item['name']}]"
            if set(rest) == {"value"}:
                out[key] = rest["value"]
            else:
                _flatten(rest, key, out)
        return
    out[path] = value


def flatten_spec(spec: ModelReleaseSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _flatten(spec.model_dump(mode="json", by_alias=True, exclude_none=True), "", out)
    return out


def _shown(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def spec_changes(old: ModelReleaseSpec, new: ModelReleaseSpec) -> list[dict[str, str]]:
    """Field by field, what differs between two revisions' specs (env and other named lists
    by name, so a reordered env is no change)."""
    a, b = flatten_spec(old), flatten_spec(new)
    order = {name: i for i, (name, _) in enumerate(SECTIONS)}
    changes = []
    for path in sorted(set(a) | set(b),
                       key=lambda p: (order.get(p.split(".")[0].split("[")[0], 99), p)):
        before, after = a.get(path), b.get(path)
        if before == after:
            continue
        kind = "added" if path not in a else "removed" if path not in b else "changed"
        changes.append({"section": path.split(".")[0].split("[")[0], "path": path,
                        "change": kind, "from": _shown(before), "to": _shown(after)})
    return changes


def snapshot_spec(snapshot: Mapping[str, Any]) -> ModelReleaseSpec:
    """A revision's spec from its ControllerRevision, verified against its recorded hash."""
    return spec_from_snapshot(snapshot)


def diff_view(
    name: str,
    rev_a: int,
    rev_b: int,
    spec_a: ModelReleaseSpec,
    spec_b: ModelReleaseSpec,
    history: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    outcomes = {int(h["revision"]): h for h in history}
    changes = spec_changes(spec_a, spec_b)
    return {
        "release": name,
        "from": {"revision": rev_a, "outcome": outcomes.get(rev_a, {}).get("outcome", ""),
                 "specHash": outcomes.get(rev_a, {}).get("specHash", "")},
        "to": {"revision": rev_b, "outcome": outcomes.get(rev_b, {}).get("outcome", ""),
               "specHash": outcomes.get(rev_b, {}).get("specHash", "")},
        "identical": not changes,
        "changes": changes,
        "unchanged": [label for section, label in SECTIONS
                      if not any(c["section"] == section for c in changes)],
    }


# -- actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionOutcome:
    """What the operator did with one action annotation value."""

    state: str  # "acted", "ignored", "waiting"
    entries: tuple[TimelineEntry, ...]
    target: str = ""


def action_outcome(status: ModelReleaseStatus, key: str, value: str,
                   written_at: datetime | None = None) -> ActionOutcome | None:
    """How the operator answered ``key=value``, from its ledger (``consumedActions``) and the
    timeline entries of the same decision; None: not seen yet."""
    for c in reversed(status.consumed_actions):
        if c.key != key or c.value != value:
            continue
        same = tuple(e for e in status.timeline if c.at is not None and e.at == c.at)
        if c.target:
            return ActionOutcome("acted", same, c.target)
        notes = tuple(e for e in same if e.type == "ActionIgnored") or same
        return ActionOutcome("ignored", notes)
    if written_at is not None:
        waiting = [e for e in status.timeline
                   if e.type == "PromoteWaiting" and e.at is not None and e.at >= written_at]
        if waiting:
            return ActionOutcome("waiting", (waiting[-1],))
    return None
