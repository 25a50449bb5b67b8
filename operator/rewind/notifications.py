"""What to notify, derived from status transitions, and what the messages say.

Pure: no I/O, no clock. The controller calls :func:`outbox` with the stored status and the
one the engine decided, and stores the result as ``status.notifications`` **in the same
status write** that stores the timeline entries it reports. So a message exists exactly
when its entry does: killed before that write, neither exists and the next reconcile
decides again; killed after it, the outbox holds the message as Pending and whichever
replica runs the release next delivers it (:mod:`rewind.adapters.webhooks`). Once a
delivery ends, the next status write marks the record Sent (or Failed): a restart after that
never sends it again. The only window left is between the receiver's answer and that write
(a fraction of a second: the deliverer wakes the release's loop at once); a message caught
in it is sent again with the same ``id``, which webhook receivers can use to drop the copy.

As :mod:`rewind.metrics` counts rollbacks from new timeline entries, this module derives
messages from them: one per configured target for each new entry of a notified type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from rewind.api import (
    MAX_NOTIFICATIONS,
    Measurement,
    ModelReleaseStatus,
    NotificationRecord,
    NotificationState,
    PendingDecision,
    RolloutPolicySpec,
    TimelineEntry,
    TimelineType,
)

#: Timeline entry types that are worth a message, and how urgent each is.
NOTIFIED: Mapping[str, Literal["info", "warning", "critical"]] = {
    TimelineType.APPROVAL_REQUESTED.value: "critical",
    TimelineType.ROLLED_BACK.value: "warning",
    TimelineType.FAILED.value: "warning",
    TimelineType.PROMOTED.value: "info",
}
#: Types of later features (fire drills, circuit breakers) notified by prefix.
NOTIFIED_PREFIXES = ("Drill", "Breaker")

#: Argo CD's annotation tracking a resource to its Application: ``<app>:<group>/<kind>:...``
ARGOCD_TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"
#: Argo CD's default tracking label (label tracking): the Application's name.
ARGOCD_INSTANCE_LABEL = "app.kubernetes.io/instance"


def notified(entry_type: str) -> bool:
    return entry_type in NOTIFIED or entry_type.startswith(NOTIFIED_PREFIXES)


def severity(entry_type: str) -> Literal["info", "warning", "critical"]:
    return NOTIFIED.get(entry_type, "warning")


def _stamp(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at is not None else ""


def message_id(uid: str, entry: TimelineEntry, target: str) -> str:
    """Stable across restarts and replicas: the same entry to the same target, same id."""
    raw = f"{uid}|{_stamp(entry.at)}|{entry.type}|{entry.revision}|{target}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _key(entry: TimelineEntry) -> tuple[object, ...]:
    return (entry.at, entry.type, entry.revision, entry.message, entry.user)


def new_entries(old: ModelReleaseStatus, new: ModelReleaseStatus) -> list[TimelineEntry]:
    """Timeline entries the decision appended (the timeline only grows at the end)."""
    seen = {_key(e) for e in old.timeline}
    return [e for e in new.timeline if _key(e) not in seen]


@dataclass(frozen=True)
class Delivery:
    """How one delivery ended, as the deliverer reports it."""

    state: NotificationState  # Sent or Failed
    at: datetime
    error: str = ""


def targets_for(
    policy: RolloutPolicySpec | None, defaults: Sequence[str]
) -> tuple[str, ...]:
    """The policy's targets, or the operator's defaults when the policy names none."""
    if policy is not None and policy.notifications is not None:
        return tuple(policy.notifications.targets)
    return tuple(defaults)


def outbox(
    old: ModelReleaseStatus,
    new: ModelReleaseStatus,
    *,
    uid: str,
    targets: Sequence[str],
    delivered: Mapping[str, Delivery],
) -> tuple[list[NotificationRecord], list[NotificationRecord]]:
    """The ``status.notifications`` to store with ``new``, and the records dropped to fit.

    Starts from the stored outbox (``old``: the engine does not touch the field), applies
    the deliveries that ended, and adds one Pending record per target for each notified
    entry the decision appended. Every Pending record is kept unless more than
    ``MAX_NOTIFICATIONS`` are pending (a receiver down for long): then the oldest go first.
    Finished records fill what room is left, newest kept."""
    records: list[NotificationRecord] = []
    for stored in old.notifications:
        record = stored.model_copy()
        done = delivered.get(record.id)
        if record.state == NotificationState.PENDING and done is not None:
            record.state = done.state
            record.finished_at = done.at
            record.error = done.error
        records.append(record)
    known = {r.id for r in records}
    for entry in new_entries(old, new):
        if not notified(entry.type):
            continue
        for target in targets:
            ident = message_id(uid, entry, target)
            if ident in known:
                continue
            known.add(ident)
            records.append(
                NotificationRecord(
                    id=ident, target=target, type=entry.type, revision=entry.revision,
                    at=entry.at, message=entry.message,
                )
            )
    pending = [r for r in records if r.state == NotificationState.PENDING]
    finished = [r for r in records if r.state != NotificationState.PENDING]
    dropped = pending[:-MAX_NOTIFICATIONS] if len(pending) > MAX_NOTIFICATIONS else []
    pending = pending[len(dropped):]
    room = MAX_NOTIFICATIONS - len(pending)
    finished = finished[-room:] if room > 0 else []
    keep = {id(r) for r in (*pending, *finished)}
    return [r for r in records if id(r) in keep], dropped


# ---------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseRef:
    """The ModelRelease a message is about."""

    namespace: str
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """One notification, before it is shaped for a receiver (webhook JSON, Slack)."""

    id: str
    kind: str  # the timeline entry type
    severity: str
    title: str
    text: str  # the timeline entry's message, as the operator recorded it
    release: ReleaseRef
    revision: int
    stable_revision: int
    phase: str
    at: datetime | None
    user: str = ""
    facts: tuple[tuple[str, str], ...] = ()
    evidence: tuple[Measurement, ...] = ()
    decision: PendingDecision | None = None
    on_timeout: str = ""
    commands: tuple[tuple[str, str], ...] = ()
    links: tuple[tuple[str, str], ...] = ()


def argocd_link(argocd_url: str, release: ReleaseRef) -> str:
    """A link to the release in its Argo CD Application, when it is tracked by one."""
    if not argocd_url:
        return ""
    app = ""
    tracking = release.annotations.get(ARGOCD_TRACKING_ANNOTATION, "")
    if ":" in tracking:
        app = tracking.split(":", 1)[0]
    elif release.labels.get(ARGOCD_INSTANCE_LABEL):
        app = release.labels[ARGOCD_INSTANCE_LABEL]
    if not app:
        return ""
    # Applications outside Argo CD's own namespace are tracked as <namespace>_<name>.
    path = "/".join(quote(part, safe="") for part in app.split("_", 1))
    node = quote(f"rewind.dev/ModelRelease/{release.namespace}/{release.name}/0", safe="")
    return f"{argocd_url.rstrip('/')}/applications/{path}?resource=&node={node}"


def _plugin(verb: str, release: ReleaseRef, extra: str = "") -> str:
    return f"kubectl rewind {verb} {release.name} -n {release.namespace}{extra}"


def _title(record: NotificationRecord, release: ReleaseRef, stable: int) -> str:
    where = f"{release.namespace}/{release.name}"
    rev = f"r{record.revision}"
    return {
        TimelineType.APPROVAL_REQUESTED.value: (
            f"{where}: rollback of {rev} to r{stable} awaits approval"
        ),
        TimelineType.ROLLED_BACK.value: f"{where}: {rev} rolled back, r{stable} serves",
        TimelineType.FAILED.value: f"{where}: {rev} failed",
        TimelineType.PROMOTED.value: f"{where}: {rev} promoted",
    }.get(record.type, f"{where}: {record.type} ({rev})")


def build_message(
    record: NotificationRecord,
    release: ReleaseRef,
    status: ModelReleaseStatus,
    policy: RolloutPolicySpec | None,
    *,
    argocd_url: str = "",
) -> Message:
    """The message for one outbox record, with what the status says now.

    Built when the record is handed to the deliverer: at once for a new record (the status
    that holds its entry), or from the status read after a restart. The entry's own message
    (evidence, deadline and the annotate command, as the engine wrote them) is always in;
    an approval request also carries the pending decision while it is still pending."""
    entry = next(
        (e for e in reversed(status.timeline)
         if (e.at, e.type, e.revision) == (record.at, record.type, record.revision)),
        None,
    )
    stable = status.stable_revision
    facts: list[tuple[str, str]] = [
        ("release", f"{release.namespace}/{release.name}"),
        ("revision", f"r{record.revision}"),
        ("stable", f"r{stable}" if stable else "none"),
        ("phase now", status.phase.value),
    ]
    revision = next((h for h in status.history if h.revision == record.revision), None)
    if revision is not None:
        model = revision.model_version or "?"
        facts.append(("model", f"{model} {revision.model_digest[:19]}".strip()))
        if revision.data_version:
            facts.append(("data", revision.data_version))
    decision: PendingDecision | None = None
    evidence: tuple[Measurement, ...] = ()
    on_timeout = ""
    commands: list[tuple[str, str]] = []
    if record.type == TimelineType.APPROVAL_REQUESTED.value:
        pd = status.pending_decision
        if pd is not None and pd.decided_at == record.at:
            decision = pd
            evidence = tuple(pd.evidence)
            facts.append(("deadline", _stamp(pd.expires_at)))
            facts.append(("approvals", f"{len(pd.approvals)}/{pd.required_approvers}"))
        else:
            facts.append(("decision", "no longer pending (see the phase)"))
        approval = policy.rollback.approval if policy is not None else None
        if approval is not None:
            on_timeout = approval.on_timeout.value
            facts.append(("on timeout", on_timeout))
        commands += [
            ("approve", _plugin("approve", release)),
            ("reject", _plugin("reject", release, " --reason '<why>'")),
            ("inspect", _plugin("get", release)),
        ]
    elif record.type in (TimelineType.ROLLED_BACK.value, TimelineType.FAILED.value):
        commands += [
            ("report", _plugin("report", release, f" --revision {record.revision}")),
            ("retry", _plugin("retry", release)),
        ]
    else:
        commands += [("inspect", _plugin("get", release))]
    links: list[tuple[str, str]] = []
    link = argocd_link(argocd_url, release)
    if link:
        links.append(("Argo CD", link))
    return Message(
        id=record.id,
        kind=record.type,
        severity=severity(record.type),
        title=_title(record, release, stable),
        text=record.message or (entry.message if entry is not None else ""),
        release=release,
        revision=record.revision,
        stable_revision=stable,
        phase=status.phase.value,
        at=record.at,
        user=entry.user if entry is not None else "",
        facts=tuple(facts),
        evidence=evidence,
        decision=decision,
        on_timeout=on_timeout,
        commands=tuple(commands),
        links=tuple(links),
    )


def _measurement(m: Measurement) -> dict[str, Any]:
    return {
        "metric": m.metric,
        "value": m.value,
        "valueText": m.shown,
        "min": m.min,
        "max": m.max,
        "verdict": m.verdict.value,
        "at": _stamp(m.at),
        "revision": m.revision,
        "message": m.message,
    }


def _threshold(m: Measurement) -> str:
    bounds = [f"{k} {v:g}" for k, v in (("min", m.min), ("max", m.max)) if v is not None]
    return ", ".join(bounds) or "no threshold"


def webhook_body(message: Message) -> dict[str, Any]:
    """The generic webhook's JSON document (schema ``rewind.dev/notification/v1``)."""
    body: dict[str, Any] = {
        "schema": "rewind.dev/notification/v1",
        "id": message.id,
        "kind": message.kind,
        "severity": message.severity,
        "title": message.title,
        "text": message.text,
        "at": _stamp(message.at),
        "release": {
            "namespace": message.release.namespace,
            "name": message.release.name,
            "uid": message.release.uid,
        },
        "revision": message.revision,
        "stableRevision": message.stable_revision,
        "phase": message.phase,
        "user": message.user,
        "facts": dict(message.facts),
        "evidence": [_measurement(m) for m in message.evidence],
        "commands": dict(message.commands),
        "links": dict(message.links),
    }
    if message.decision is not None:
        pd = message.decision
        body["decision"] = {
            "action": pd.action.value,
            "reason": pd.reason,
            "decidedAt": _stamp(pd.decided_at),
            "expiresAt": _stamp(pd.expires_at),
            "onTimeout": message.on_timeout,
            "requiredApprovers": pd.required_approvers,
            "approvals": [{"user": a.user, "at": _stamp(a.at)} for a in pd.approvals],
        }
    return body


_SLACK_ICON = {"info": ":white_check_mark:", "warning": ":warning:", "critical": ":rotating_light:"}


def _mrkdwn(text: str) -> str:
    """Slack's three escaped characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(message: Message) -> dict[str, Any]:
    """A Slack incoming-webhook message (Block Kit, with a plain ``text`` fallback)."""
    icon = _SLACK_ICON.get(message.severity, ":bell:")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": message.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(message.text)[:3000]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{_mrkdwn(k)}*\n{_mrkdwn(v)}"}
                for k, v in message.facts[:10]
            ],
        },
    ]
    if message.evidence:
        lines = [
            f"• `{_mrkdwn(m.metric)}` = {_mrkdwn(m.shown or 'no data')} "
            f"({_threshold(m)}): *{m.verdict.value}* at {_stamp(m.at)}"
            for m in message.evidence[-8:]
        ]
        blocks.append({"type": "section",
                       "text": {"type": "mrkdwn", "text": "*Evidence*\n" + "\n".join(lines)}})
    if message.commands:
        text = "\n".join(f"{_mrkdwn(k)}: `{_mrkdwn(v)}`" for k, v in message.commands)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    if message.links:
        text = "  ".join(f"<{url}|{_mrkdwn(name)}>" for name, url in message.links)
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
    blocks.append({
        "type": "context",
        "elements": [{"type": "mrkdwn",
                      "text": f"{icon} Rewind · {message.kind} · {_stamp(message.at)} · "
                              f"id {message.id}"}],
    })
    return {"text": f"{message.title}: {message.text}"[:3000], "blocks": blocks}
