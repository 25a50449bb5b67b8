"""``kubectl rewind report``: a post-mortem of one revision, in Markdown.

Facts only, from what the API server holds: the ModelRelease's status (timeline, analysis,
history, notifications) and the revisions' snapshots. Blameless: actions are attributed
to the identity the API server recorded, as what happened and when, never as causes or
faults; the report draws no conclusions the status does not state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rewind.api import ModelReleaseStatus, Outcome, TimelineEntry
from rewind.cli.views import Release, duration, short_digest, stamp, threshold

#: Timeline types that are decisions, and who takes them when no user is recorded.
HUMAN_TYPES = frozenset({"Approved", "Rejected", "BreakGlassRollback", "PromoteRequested",
                         "Retry", "ActionIgnored", "PromoteWaiting"})
OPERATOR_DECISIONS = frozenset({"RollbackDecided", "ApprovalRequested", "ApprovalTimedOut",
                                "RollbackStarted", "Failed", "Promoted", "RolledBack"})
_AGAINST = re.compile(r"against (?:stable )?r(\d+)")
_BACK_TO = re.compile(r"rolling back from r\d+ to r(\d+)")


def incident_revision(status: ModelReleaseStatus) -> int:
    """The revision a report is about by default: the newest rolled back or failed, else
    the one in flight, else the current one."""
    ended = [h.revision for h in status.history
             if h.outcome in (Outcome.ROLLED_BACK, Outcome.FAILED)]
    if ended:
        return max(ended)
    return status.candidate_revision or status.current_revision or status.stable_revision


def base_revision(status: ModelReleaseStatus, revision: int) -> int:
    """The revision ``revision`` was released against (what users went back to)."""
    for e in status.timeline:
        if e.revision == revision and e.type == "RollbackStarted":
            m = _BACK_TO.search(e.message)
            if m:
                return int(m.group(1))
    for e in status.timeline:
        if e.revision == revision and e.type in ("RevisionCreated", "Retry"):
            m = _AGAINST.search(e.message)
            if m:
                return int(m.group(1))
    promoted = [h.revision for h in status.history
                if h.revision < revision and h.promoted_at is not None]
    return max(promoted) if promoted else 0


def _first(entries: Sequence[TimelineEntry], *types: str) -> TimelineEntry | None:
    return next((e for e in entries if e.type in types), None)


def _between(a: TimelineEntry | None, b: TimelineEntry | None) -> float | None:
    if a is None or b is None or a.at is None or b.at is None:
        return None
    return (b.at - a.at).total_seconds()


def _cell(text: str) -> str:
    """A Markdown table cell: no pipes or line breaks."""
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _who(user: str) -> str:
    return f"`{user}`" if user else "an unrecorded identity"


def _time(at: datetime | None) -> str:
    return stamp(at).replace("T", " ").replace("Z", "") if at is not None else ""


#: Entries that start an attempt at releasing a revision.
ATTEMPT_STARTS = frozenset({"RevisionCreated", "Retry", "RolloutRestarted", "RestoreStarted"})


def _attempts(timeline: Sequence[TimelineEntry], rev: int) -> list[list[TimelineEntry]]:
    """The revision's entries split at each (re)start of its rollout."""
    attempts: list[list[TimelineEntry]] = []
    for e in timeline:
        if e.revision != rev:
            continue
        if e.type in ATTEMPT_STARTS or not attempts:
            attempts.append([])
        attempts[-1].append(e)
    return attempts


def _marks(attempt: Sequence[TimelineEntry]) -> list[tuple[str, TimelineEntry]]:
    marks = [
        ("breach seen", _first(attempt, "AnalysisFailed", "CandidateUnavailable")),
        ("rollback proposed", _first(attempt, "ApprovalRequested")),
        ("rollback decided", _first(attempt, "RollbackStarted")),
        ("traffic reverted", _first(attempt, "RolledBack", "Failed")),
    ]
    return [(what, e) for what, e in marks if e is not None]


def _durations(attempt: Sequence[TimelineEntry]) -> list[tuple[str, float]]:
    """From one attempt: when the breach was seen, decided, and traffic reverted."""
    started = attempt[0] if attempt and attempt[0].type in ATTEMPT_STARTS else None
    breach = _first(attempt, "AnalysisFailed", "CandidateUnavailable")
    proposed = _first(attempt, "ApprovalRequested")
    decided = _first(attempt, "RollbackStarted")
    reverted = _first(attempt, "RolledBack", "Failed")
    rows = [
        ("rollout started -> first breach seen", _between(started, breach)),
        ("first breach seen -> rollback proposed for approval", _between(breach, proposed)),
        ("proposed -> decided (waiting for people)", _between(proposed, decided)),
        ("first breach seen -> rollback decided", _between(breach, decided)),
        ("rollback decided -> traffic reverted (read back from the router)",
         _between(decided, reverted)),
        ("first breach seen -> traffic reverted", _between(breach, reverted)),
    ]
    return [(what, secs) for what, secs in rows if secs is not None]


def report(
    body: Mapping[str, Any],
    revision: int | None,
    diff: Mapping[str, Any] | None,
    now: datetime,
    policy_name: str = "",
) -> str:
    """The post-mortem of ``revision`` (default: :func:`incident_revision`)."""
    rel = Release.from_body(body)
    s = rel.status
    rev = revision or incident_revision(s)
    entry = next((h for h in s.history if h.revision == rev), None)
    base = base_revision(s, rev)
    start = entry.created_at if entry is not None else None
    end = entry.finished_at if entry is not None else None
    timeline = [e for e in s.timeline
                if e.revision == rev or (start is not None and e.at is not None
                                         and e.at >= start and (end is None or e.at <= end))]
    model = rel.spec.model.name if rel.spec is not None else ""
    out: list[str] = []
    w = out.append
    outcome = entry.outcome.value if entry is not None else "unknown"
    w(f"# Post-mortem: {rel.namespace}/{rel.name} r{rev} ({outcome})")
    w("")
    w(f"_Generated {_time(now)} UTC by `kubectl rewind report` from the ModelRelease's status "
      "and its revision snapshots. Times are the operator's, in UTC. This report states what "
      "the system recorded; it draws no conclusions and assigns no fault._")
    w("")

    w("## Summary")
    w("")
    w("| | |")
    w("| --- | --- |")
    w(f"| release | `{rel.namespace}/{rel.name}` (model `{model}`, policy "
      f"`{policy_name or rel.policy_name}`, strategy {s.strategy.value if s.strategy else '?'}) |")
    if entry is not None:
        digest = short_digest(entry.model_digest, 16)
        w(f"| revision | r{rev}: model {entry.model_version} `{digest}`"
          f", data `{entry.data_version or '-'}`, image "
          f"`{short_digest(entry.image_digest, 16) if entry.image_digest else '-'}` |")
        w(f"| outcome | {outcome}" + (f": {_cell(entry.reason)}" if entry.reason else "") + " |")
    w(f"| released against | {'r' + str(base) if base else 'nothing (first release)'} |")
    w(f"| phase now | {s.phase.value}: {_cell(s.message)} |")
    w(f"| serving now | r{s.stable_revision} |" if s.stable_revision else "| serving now | - |")
    w("")

    w("## Durations")
    w("")
    attempts = _attempts(timeline, rev)
    if not any(_durations(a) for a in attempts):
        w("No breach, decision or revert of this revision is in the timeline.")
        w("")
    for number, attempt in enumerate(attempts, 1):
        rows = _durations(attempt)
        if not rows:
            continue
        if len(attempts) > 1:
            opened = attempt[0]
            by = f" by `{opened.user}`" if opened.user else ""
            w(f"### Attempt {number}: {opened.type}{by} at {_time(opened.at)}")
            w("")
        w("| interval | duration |")
        w("| --- | --- |")
        for what, secs in rows:
            w(f"| {what} | {duration(secs)} |")
        w("")
        for what, mark in _marks(attempt):
            w(f"- {what}: {_time(mark.at)}")
        w("")

    w("## Decisions and who made them")
    w("")
    decisions = [e for e in timeline if e.type in HUMAN_TYPES | OPERATOR_DECISIONS]
    if not decisions:
        w("No decisions recorded for this revision.")
    for e in decisions:
        who = _who(e.user) if e.type in HUMAN_TYPES else "the operator (policy)"
        w(f"- {_time(e.at)} **{e.type}** by {who}: {_cell(e.message)}")
    w("")

    w("## Evidence")
    w("")
    measured = [m for m in s.analysis.measurements if m.revision == rev]
    failed = [e for e in timeline if e.type in ("AnalysisFailed", "AnalysisInconclusive",
                                                 "CandidateUnavailable")]
    if measured:
        w("| time | metric | value | threshold | verdict |")
        w("| --- | --- | --- | --- | --- |")
        for m in measured:
            bound = threshold({"min": m.min, "max": m.max})
            w(f"| {_time(m.at)} | {_cell(m.metric)} | {_cell(m.shown)} | {bound} | "
              f"{m.verdict.value} |")
        w("")
    for e in failed:
        w(f"- {_time(e.at)} {e.type}: {_cell(e.message)}")
    if not measured and not failed:
        w("No analysis measurements of this revision are in the status.")
    w("")

    w(f"## What changed (r{base} -> r{rev})" if base else "## What changed")
    w("")
    if diff is None:
        w("No earlier revision to compare with, or its snapshot could not be read.")
    elif diff["identical"]:
        w("The two specs are identical.")
    else:
        w("| field | before | after |")
        w("| --- | --- | --- |")
        for c in diff["changes"]:
            w(f"| `{c['path']}` | {_cell(c['from']) or '(none)'} | {_cell(c['to']) or '(none)'} |")
        w("")
        w("Unchanged: " + ", ".join(diff["unchanged"]) + ".")
    w("")

    w("## Timeline")
    w("")
    w("| time (UTC) | +s | event | rev | who | what |")
    w("| --- | --- | --- | --- | --- | --- |")
    origin = timeline[0].at if timeline and timeline[0].at else None
    for e in timeline:
        offset = f"{(e.at - origin).total_seconds():.1f}" if origin and e.at else ""
        w(f"| {_time(e.at)} | {offset} | {e.type} | r{e.revision} | {_cell(e.user)} | "
          f"{_cell(e.message)} |")
    w("")
    drills = [e for e in timeline if e.type.startswith(("Drill", "Breaker"))]
    if drills:
        w("## Drills and breaker trips")
        w("")
        for e in drills:
            w(f"- {_time(e.at)} {e.type}: {_cell(e.message)}")
        w("")
    sent = [n for n in s.notifications if n.revision == rev]
    if sent:
        w("## Notifications")
        w("")
        for n in sent:
            when = f" at {_time(n.finished_at)}" if n.finished_at else ""
            w(f"- {n.type} to `{n.target}`: {n.state.value}{when}"
              + (f" ({_cell(n.error)})" if n.error else ""))
        w("")
    w("## Limits of this record")
    w("")
    oldest = s.timeline[0].at if s.timeline else None
    if start is not None and oldest is not None and oldest > start:
        w(f"- The status keeps the newest 50 timeline entries: entries before {_time(oldest)} "
          "are no longer in it (see `kubectl get events` while they last).")
    w("- Measurements: the status keeps the newest 20; older ones are summarised in the "
      "AnalysisFailed entries above.")
    w("- Identities are those the API server recorded (the rewind.dev/*-by stamps of its "
      "admission policy); without the policy they are not recorded.")
    return "\n".join(out) + "\n"
