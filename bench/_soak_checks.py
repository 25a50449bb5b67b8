"""The crash soak's invariants, judged on every stored version of the objects (pure: no I/O).

`bench_soak.py` watches VirtualServices, Services, Deployments and ModelReleases,
turns each stored version into a compact record (``*_version`` below) and runs these checks
over all of them, ordered by resourceVersion (the etcd revision of the write, which orders
writes across kinds). Each check returns violations keyed so that judging the same records
twice reports a violation once.

(1) ``check_routes``: every VirtualService version routes weights summing to 100, only to
    revisions whose Deployment exists and whose own Service (``<release>-r<N>``, the host
    a destination names) exists at that resourceVersion; every status reports routes
    summing to 100 (or none).
(2) ``check_traffic``: traffic never goes to a revision with no available pods. At every
    resourceVersion, each revision the VirtualService gives weight > 0 has a Deployment with
    replicas > 0 and ready pods. A version that adds or increases a revision's weight has no
    exemption. A revision that keeps its weight while its pods go has one exemption: it is
    the release's stable revision and its Deployment still asks for replicas (its pods were
    lost, nothing scaled it down); then there is nowhere better to send users, and traffic
    staying there is what the operator must do. The soak never kills pods, so the exemption
    is counted and expected to stay at 0. Mirrored copies are not user traffic.
(3) ``check_promotions``: a revision promoted over a previous stable (a ``Promoted`` or
    ``ShadowPassed`` entry) had, in its latest attempt, a passing analysis round recorded
    after its final stage began (the stage count comes from the soak's own policies, not
    from the operator's plan), or, when that stage is a manual gate, a human promote there.
(4) ``check_decisions``: every annotation the soak set has exactly one timeline entry under
    the soak's user for it (approvals: each distinct user counted once, a rollback approved
    only with the required number of distinct approvers); every entry into RollingBack
    stores exactly one new RollbackStarted, every RollbackStarted a rollback, every
    RolledBack finishes a started one; per attempt of a revision at most one RollbackStarted,
    RolledBack, Promoted and ApprovalTimedOut; never two Promoted entries for the same
    revision in a row.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RELEASE_LABEL = "rewind.dev/release"
REVISION_LABEL = "rewind.dev/revision"
ACTION_PREFIX = "rewind.dev/"
ACTIONS = ("approve-rollback", "reject-rollback", "rollback", "promote", "retry")
ROLLING_OUT = ("Progressing", "Paused")
ROUTE_NAME = "rewind"
HEADER_ROUTE_NAME = "rewind-headers"


# -- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One timeline entry (identical in every version that still holds it)."""

    at: str
    type: str
    revision: int
    message: str
    user: str


@dataclass(frozen=True)
class RouteVersion:
    """One stored VirtualService: every destination of the main route with its weight."""

    rv: int
    release: str
    weights: tuple[tuple[int, int], ...]  # (revision, weight) per route entry, 0 = not rN
    mirror: int = 0
    mirror_percent: float = 0.0
    header: int = 0

    @property
    def total(self) -> int:
        return sum(w for _, w in self.weights)

    @property
    def live(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for revision, weight in self.weights:
            if weight > 0:
                out[revision] = out.get(revision, 0) + weight
        return out


@dataclass(frozen=True)
class ServiceVersion:
    """A revision's own Service (the host its route destinations name)."""

    rv: int
    release: str
    revision: int
    deleted: bool = False


@dataclass(frozen=True)
class DeploymentVersion:
    rv: int
    release: str
    revision: int
    replicas: int
    ready: int
    deleted: bool = False

    @property
    def serving(self) -> bool:
        return not self.deleted and self.replicas > 0 and self.ready > 0


@dataclass(frozen=True)
class ReleaseVersion:
    """One stored ModelRelease, reduced to what the checks and the flows read."""

    rv: int
    release: str
    phase: str
    stable: int
    candidate: int
    current: int
    step: int
    step_started: str | None
    last_run: str | None
    #: (revision, verdict) of the measurements of the latest analysis round.
    round: tuple[tuple[int, str], ...]
    timeline: tuple[Entry, ...]
    #: (revision, outcome, modelVersion, promoted) per history entry.
    history: tuple[tuple[int, str, str, bool], ...]
    approvals: tuple[str, ...]
    annotations: tuple[tuple[str, str], ...]  # rewind.dev/ action annotations (and -by)
    #: Ledger entries (status.consumedActions) whose annotation is not seen gone: a removal
    #: pending, or a value left on the object. Entries seen gone stay (bounded): they are
    #: how the operator recognises a value that comes back, so the ledger never empties.
    pending: int
    #: When the newest ledger entry was made ("" for none): a new one is a consumption even
    #: once the bounded ledger drops its oldest entry for it.
    last_consumed: str
    routes_total: int | None
    status_hash: str
    message: str = ""

    def model_version(self, revision: int) -> str | None:
        return next((v for r, _, v, _ in self.history if r == revision), None)

    def outcome(self, revision: int) -> str | None:
        return next((o for r, o, _, _ in self.history if r == revision), None)


@dataclass(frozen=True)
class Violation:
    invariant: int  # 1..4 as in the module docstring
    key: str  # identifies the violation: judging the same records again gives the same key
    message: str


def _destination_revision(release: str, destination: Mapping[str, Any] | None) -> int:
    """The revision whose own Service a destination names: host ``<release>-r<N>``, short or
    qualified. A subset (no DestinationRule defines one: Istio answers 503) or any other
    host is no revision: 0."""
    destination = destination or {}
    if destination.get("subset"):
        return 0
    name = str(destination.get("host", "")).split(".", 1)[0]
    prefix, sep, number = name.rpartition("-r")
    if sep and prefix == release and number.isdigit() and not number.startswith("0"):
        return int(number)
    return 0  # routes to nothing the release has


def route_version(obj: Mapping[str, Any]) -> RouteVersion:
    """Read the VirtualService as Istio would (independently of the operator's parser): a
    lone destination without a weight gets 100, others 0; a mirror without a percentage
    mirrors 100%."""
    meta = obj["metadata"]
    release = str(meta["name"])
    http = list((obj.get("spec") or {}).get("http") or [])
    route = next((r for r in http if r.get("name") == ROUTE_NAME), http[-1] if http else {})
    entries = list(route.get("route") or [])
    weights = tuple(
        (_destination_revision(release, e.get("destination")),
         int(e.get("weight", 100 if len(entries) == 1 else 0)))
        for e in entries
    )
    mirror = _destination_revision(release, route.get("mirror")) if route.get("mirror") else 0
    percent = float((route.get("mirrorPercentage") or {}).get("value", 100.0)) if mirror else 0.0
    header = 0
    for r in http:
        if r.get("name") == HEADER_ROUTE_NAME and len(r.get("route") or []) == 1:
            header = _destination_revision(release, r["route"][0].get("destination"))
    return RouteVersion(int(meta["resourceVersion"]), release, weights, mirror, percent,
                        header)


def service_version(obj: Mapping[str, Any], deleted: bool = False) -> ServiceVersion | None:
    """None for a Service that is not a release revision's (the umbrella Service)."""
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    if RELEASE_LABEL not in labels or not str(labels.get(REVISION_LABEL, "")).isdigit():
        return None
    return ServiceVersion(int(meta["resourceVersion"]), str(labels[RELEASE_LABEL]),
                          int(labels[REVISION_LABEL]), deleted)


def deployment_version(obj: Mapping[str, Any], deleted: bool = False) -> DeploymentVersion | None:
    """None for a Deployment that is not a release revision's."""
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    if RELEASE_LABEL not in labels or not str(labels.get(REVISION_LABEL, "")).isdigit():
        return None
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    replicas = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    return DeploymentVersion(int(meta["resourceVersion"]), str(labels[RELEASE_LABEL]),
                             int(labels[REVISION_LABEL]), replicas,
                             int(status.get("readyReplicas") or 0), deleted)


class EntryCache:
    """Shares identical timeline entries (and history rows) between versions: they repeat in
    every version, and the checks tell entries apart by identity, which is fast."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, int, str, str], Entry] = {}
        self._rows: dict[tuple[int, str, str, bool], tuple[int, str, str, bool]] = {}

    def get(self, raw: Mapping[str, Any]) -> Entry:
        key = (str(raw.get("at", "")), str(raw.get("type", "")), int(raw.get("revision") or 0),
               str(raw.get("message", "")), str(raw.get("user", "")))
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = Entry(*key)
        return found

    def row(self, row: tuple[int, str, str, bool]) -> tuple[int, str, str, bool]:
        return self._rows.setdefault(row, row)


def release_version(obj: Mapping[str, Any], cache: EntryCache) -> ReleaseVersion:
    meta = obj["metadata"]
    s: Mapping[str, Any] = obj.get("status") or {}
    analysis = s.get("analysis") or {}
    last_run = analysis.get("lastRunAt")
    round_ = tuple(
        (int(m.get("revision") or 0), str(m.get("verdict", "")))
        for m in analysis.get("measurements") or []
        if last_run is not None and m.get("at") == last_run
    )
    history = tuple(
        cache.row((int(h.get("revision") or 0), str(h.get("outcome", "")),
                   str(h.get("modelVersion", "")), h.get("promotedAt") is not None))
        for h in s.get("history") or []
    )
    routes = s.get("routes") or {}
    weights = routes.get("weights") or []
    annotations = tuple(sorted(
        (k, str(v)) for k, v in (meta.get("annotations") or {}).items()
        if k.startswith(ACTION_PREFIX) and k[len(ACTION_PREFIX):].removesuffix("-by") in ACTIONS
    ))
    pending = s.get("pendingDecision") or {}
    return ReleaseVersion(
        rv=int(meta["resourceVersion"]),
        release=str(meta["name"]),
        phase=str(s.get("phase", "")),
        stable=int(s.get("stableRevision") or 0),
        candidate=int(s.get("candidateRevision") or 0),
        current=int(s.get("currentRevision") or 0),
        step=int(s.get("currentStep") or 0),
        step_started=s.get("stepStartedAt"),
        last_run=last_run,
        round=round_,
        timeline=tuple(cache.get(e) for e in s.get("timeline") or []),
        history=history,
        approvals=tuple(str(a.get("user", "")) for a in pending.get("approvals") or []),
        annotations=annotations,
        pending=sum(1 for c in s.get("consumedActions") or [] if not c.get("goneAt")),
        last_consumed=max((str(c.get("at") or "") for c in s.get("consumedActions") or []),
                          default=""),
        routes_total=sum(int(w.get("weight") or 0) for w in weights) if weights else None,
        status_hash=hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest(),
        message=str(s.get("message", "")),
    )


def _time(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# -- (1) weights ----------------------------------------------------------------------------


def _merged(*streams: Iterable[Any]) -> list[Any]:
    """Records of several kinds in resourceVersion order (a kind's own order on ties)."""
    out: list[tuple[int, int, int, Any]] = []
    for kind, stream in enumerate(streams):
        for i, record in enumerate(stream):
            out.append((record.rv, kind, i, record))
    out.sort(key=lambda x: (x[0], x[1], x[2]))
    return [x[3] for x in out]


def _by_release(records: Iterable[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        out[record.release].append(record)
    return out


def check_routes(
    routes: Sequence[RouteVersion],
    services: Sequence[ServiceVersion],
    deployments: Sequence[DeploymentVersion],
    releases: Sequence[ReleaseVersion],
) -> list[Violation]:
    out: list[Violation] = []
    vs, svc, dep = _by_release(routes), _by_release(services), _by_release(deployments)
    for release in sorted(vs):
        existing: set[int] = set()
        hosts: set[int] = set()  # revisions whose own Service exists
        for record in _merged(vs[release], svc.get(release, []), dep.get(release, [])):
            if isinstance(record, DeploymentVersion | ServiceVersion):
                seen = existing if isinstance(record, DeploymentVersion) else hosts
                if record.deleted:
                    seen.discard(record.revision)
                else:
                    seen.add(record.revision)
            else:
                key = f"routes:{release}:{record.rv}"
                if record.total != 100 or any(not 0 <= w <= 100 for _, w in record.weights):
                    out.append(Violation(1, key, (
                        f"VirtualService {release} at rv {record.rv} routes weights "
                        f"{list(record.weights)} summing to {record.total}, not 100")))
                routed = set(record.live) | {r for r in (record.mirror, record.header) if r}
                if record.mirror_percent and not record.mirror:
                    routed.add(0)
                for revision in sorted(routed):
                    if revision == 0 or revision not in existing:
                        what = f"r{revision}" if revision else "a destination that is no revision"
                        out.append(Violation(1, f"{key}:r{revision}:exists", (
                            f"VirtualService {release} at rv {record.rv} routes to {what}, "
                            "which has no Deployment")))
                    elif revision not in hosts:
                        out.append(Violation(1, f"{key}:r{revision}:service", (
                            f"VirtualService {release} at rv {record.rv} routes to r{revision}, "
                            "which has no Service")))
    for record in releases:
        if record.routes_total not in (None, 100):
            out.append(Violation(1, f"status:{record.release}:{record.rv}", (
                f"ModelRelease {record.release} at rv {record.rv} reports routes summing to "
                f"{record.routes_total}")))
    return out


# -- (2) traffic only to revisions with available pods -------------------------------------


@dataclass
class TrafficReport:
    violations: list[Violation] = field(default_factory=list)
    #: Times a stable revision kept its traffic while its pods were gone (see above).
    exemptions: int = 0


def check_traffic(
    routes: Sequence[RouteVersion],
    deployments: Sequence[DeploymentVersion],
    releases: Sequence[ReleaseVersion],
) -> TrafficReport:
    report = TrafficReport()
    vs, dep, mr = _by_release(routes), _by_release(deployments), _by_release(releases)
    for release in sorted(vs):
        live: dict[int, int] = {}
        state: dict[int, DeploymentVersion] = {}
        stable = 0
        for record in _merged(vs[release], dep.get(release, []), mr.get(release, [])):
            if isinstance(record, ReleaseVersion):
                stable = record.stable
            elif isinstance(record, DeploymentVersion):
                state[record.revision] = record
                weight = live.get(record.revision, 0)
                if weight > 0 and not record.serving:
                    if _exempt(state, stable, record.revision):
                        report.exemptions += 1
                        continue
                    report.violations.append(Violation(2, f"dep:{release}:{record.rv}", (
                        f"at rv {record.rv} the Deployment of {release} r{record.revision} "
                        f"{_describe(state, record.revision)} while the VirtualService sends "
                        f"it {weight}%")))
            else:
                before, live = live, record.live
                for revision, weight in sorted(live.items()):
                    found = state.get(revision)
                    if found is not None and found.serving:
                        continue
                    key = f"vs:{release}:{record.rv}:{revision}"
                    if weight > before.get(revision, 0):
                        report.violations.append(Violation(2, key, (
                            f"VirtualService {release} at rv {record.rv} moves traffic onto "
                            f"r{revision} ({before.get(revision, 0)}% -> {weight}%), whose "
                            f"Deployment {_describe(state, revision)}")))
                    elif _exempt(state, stable, revision):
                        report.exemptions += 1
                    else:
                        report.violations.append(Violation(2, key, (
                            f"VirtualService {release} at rv {record.rv} keeps {weight}% on "
                            f"r{revision}, whose Deployment {_describe(state, revision)}")))
    return report


def _describe(state: Mapping[int, DeploymentVersion], revision: int) -> str:
    d = state.get(revision)
    if d is None or d.deleted:
        return "does not exist"
    return f"has {d.ready} ready of {d.replicas} replicas"


def _exempt(state: Mapping[int, DeploymentVersion], stable: int, revision: int) -> bool:
    """The stable revision whose Deployment still asks for pods keeps its traffic."""
    d = state.get(revision)
    return revision == stable and d is not None and not d.deleted and d.replicas > 0


# -- (3) no promotion without its analysis ------------------------------------------------

#: (release, modelVersion) -> (index of the final stage, whether it is a manual gate);
#: None when the soak does not know the revision (a violation: it made every revision).
FinalStage = Callable[[str, str], tuple[int, bool] | None]


def _new_entries(versions: Sequence[ReleaseVersion]) -> list[tuple[ReleaseVersion, ReleaseVersion
                                                                    | None, list[Entry]]]:
    """Each version with the one before it and the timeline entries it added. Entries are
    told apart by identity: versions must come from one ``EntryCache`` (as the soak's do)."""
    seen: set[int] = set()
    out: list[tuple[ReleaseVersion, ReleaseVersion | None, list[Entry]]] = []
    previous: ReleaseVersion | None = None
    for version in versions:
        added = [e for e in version.timeline if id(e) not in seen]
        seen.update(id(e) for e in added)
        out.append((version, previous, added))
        previous = version
    return out


def check_promotions(
    releases: Sequence[ReleaseVersion], final_stage: FinalStage
) -> list[Violation]:
    out: list[Violation] = []
    for release, versions in sorted(_by_release(releases).items()):
        final_start: dict[int, datetime | None] = {}
        promoted_at_gate: dict[int, bool] = {}
        for version, previous, added in _new_entries(versions):
            cand = version.candidate
            mv = version.model_version(cand) if cand else None
            final = final_stage(release, mv) if mv is not None else None
            if cand and final is not None and version.phase in ROLLING_OUT:
                last, _ = final
                if version.step < last:
                    final_start[cand] = None  # before the final stage: a new attempt
                    promoted_at_gate[cand] = False
                elif version.step_started is not None:
                    final_start[cand] = _time(version.step_started)
            for entry in added:
                n = entry.revision
                if entry.type == "PromoteRequested" and previous is not None:
                    pmv = previous.model_version(n)
                    pfinal = final_stage(release, pmv) if pmv is not None else None
                    if (pfinal is not None and previous.candidate == n
                            and previous.phase == "Paused" and previous.step >= pfinal[0]):
                        promoted_at_gate[n] = True
                if entry.type not in ("Promoted", "ShadowPassed"):
                    continue
                before = previous.stable if previous is not None else 0
                if before in (0, n):
                    continue  # a first release: nothing to compare against
                key = f"promoted:{release}:{n}:{entry.at}"
                model = version.model_version(n)
                known = final_stage(release, model) if model is not None else None
                if known is None:
                    out.append(Violation(3, key, (
                        f"{release} r{n} {entry.type} at {entry.at}: the soak does not know "
                        f"its policy (modelVersion {model})")))
                    continue
                _, manual = known
                if manual:
                    if not promoted_at_gate.get(n):
                        out.append(Violation(3, key, (
                            f"{release} r{n} {entry.type} at {entry.at} without a human "
                            "promote at its final (manual) stage")))
                    continue
                started = final_start.get(n)
                run = _time(version.last_run)
                verdicts = [v for r, v in version.round if r == n]
                if started is None or run is None or run <= started:
                    out.append(Violation(3, key, (
                        f"{release} r{n} {entry.type} at {entry.at} with no analysis round "
                        f"recorded at its final stage (stage began {started}, last round "
                        f"{version.last_run})")))
                elif not verdicts or any(v != "Pass" for v in verdicts):
                    out.append(Violation(3, key, (
                        f"{release} r{n} {entry.type} at {entry.at} after a final-stage round "
                        f"that did not pass: {verdicts}")))
    return out


# -- (4) decisions: never lost, never taken twice -----------------------------------------


@dataclass(frozen=True)
class SoakAction:
    """An annotation the soak set, under ``user``: acted on exactly once, as one of
    ``types``. Each action has its own user, except a repeated approval, which reuses the
    first one's: a user's entries must then match that user's actions one for one."""

    release: str
    user: str
    annotation: str
    types: frozenset[str]


#: Entries that say an action waits, not that it was taken (a promote kept on the object
#: while its candidate is not Available is acted on later, under the same user).
NOTES = frozenset({"PromoteWaiting"})


#: (release, modelVersion) -> distinct approvers a rollback needs (0: automatic).
RequiredApprovers = Callable[[str, str], int]


def ordered_entries(versions: Sequence[ReleaseVersion]) -> list[Entry]:
    """Every timeline entry a release ever stored, once, in the order stored."""
    return [e for _, _, added in _new_entries(versions) for e in added]


def check_decisions(
    releases: Sequence[ReleaseVersion],
    actions: Sequence[SoakAction],
    required_approvers: RequiredApprovers,
) -> list[Violation]:
    out: list[Violation] = []
    by_release = _by_release(releases)
    entries = {release: ordered_entries(v) for release, v in by_release.items()}
    expected: dict[tuple[str, str], list[SoakAction]] = defaultdict(list)
    for action in actions:
        expected[(action.release, action.user)].append(action)
    for (release, user), mine in sorted(expected.items()):
        got = [e for e in entries.get(release, []) if e.user == user and e.type not in NOTES]
        what = ", ".join(f"{a.annotation}" for a in mine)
        key = f"action:{release}:{user}"
        if len(got) < len(mine):
            out.append(Violation(4, key, (
                f"{what} set on {release} by {user}: {len(mine)} action(s), acted on "
                f"{len(got)} time(s) ({[e.type for e in got]}): a decision was lost")))
        elif len(got) > len(mine):
            out.append(Violation(4, key, (
                f"{what} set on {release} by {user}: {len(mine)} action(s), acted on "
                f"{len(got)} times ({[e.type for e in got]}): taken twice")))
        else:
            for action, entry in zip(mine, got, strict=True):
                if entry.type not in action.types:
                    out.append(Violation(4, f"{key}:{entry.at}", (
                        f"{action.annotation} set on {release} by {user} gave {entry.type} "
                        f"({entry.message[:200]}), expected {' or '.join(sorted(action.types))}"
                    )))
    for release, versions in sorted(by_release.items()):
        out += _check_rollback_writes(release, versions)
        out += _check_attempts(release, entries[release])
        out += _check_approvals(release, versions, entries[release], required_approvers)
    return out


def _check_rollback_writes(release: str, versions: Sequence[ReleaseVersion]) -> list[Violation]:
    """Status by status: entering RollingBack stores exactly one RollbackStarted, which only
    comes with a rollback; RolledBack only finishes one."""
    out: list[Violation] = []
    for version, previous, added in _new_entries(versions):
        if previous is None:
            continue  # the first version seen: its entries are history
        was = previous.phase
        started = [e for e in added if e.type == "RollbackStarted"]
        key = f"rollback:{release}:{version.rv}"
        if version.phase == "RollingBack" and was != "RollingBack" and len(started) != 1:
            out.append(Violation(4, key, (
                f"{release} entered RollingBack at rv {version.rv} (from {was}) with "
                f"{len(started)} new RollbackStarted entries")))
        if len(started) > 1:
            out.append(Violation(4, key + ":many", (
                f"{release} stored {len(started)} RollbackStarted entries at once (rv "
                f"{version.rv})")))
        if started and version.phase not in ("RollingBack", "RolledBack", "Failed"):
            out.append(Violation(4, key + ":phase", (
                f"{release} stored RollbackStarted at rv {version.rv} in phase {version.phase}")))
        finished = [e for e in added if e.type == "RolledBack"]
        if finished and was != "RollingBack" and not started:
            out.append(Violation(4, key + ":finished", (
                f"{release} stored RolledBack at rv {version.rv} coming from {was} without a "
                "RollbackStarted")))
    return out


def _check_attempts(release: str, entries: Sequence[Entry]) -> list[Violation]:
    """Per attempt of a revision (from RevisionCreated or Retry): at most one RollbackStarted,
    RolledBack, Failed, Promoted and ApprovalTimedOut (the soak's timeouts roll back);
    RolledBack only after RollbackStarted; never two Promoted entries in a row for the same
    revision."""
    out: list[Violation] = []
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    attempt: dict[int, int] = defaultdict(int)
    last_promoted: int | None = None
    for entry in entries:
        n = entry.revision
        if entry.type in ("RevisionCreated", "Retry"):
            counts[n] = defaultdict(int)
            attempt[n] += 1
            continue
        if entry.type not in ("RollbackStarted", "RolledBack", "Failed", "Promoted",
                              "ApprovalTimedOut"):
            continue
        counts[n][entry.type] += 1
        key = f"attempt:{release}:{n}:{attempt[n]}:{entry.type}"
        if counts[n][entry.type] > 1:
            out.append(Violation(4, key, (
                f"{release} r{n} has {counts[n][entry.type]} {entry.type} entries in one "
                f"attempt (the last at {entry.at})")))
        if entry.type == "RolledBack" and not counts[n]["RollbackStarted"]:
            out.append(Violation(4, key + ":unstarted", (
                f"{release} r{n} RolledBack at {entry.at} without a RollbackStarted")))
        if entry.type == "Promoted":
            if last_promoted == n:
                out.append(Violation(4, f"promoted-twice:{release}:{n}:{entry.at}", (
                    f"{release} r{n} has two Promoted entries in a row (the second at "
                    f"{entry.at})")))
            last_promoted = n
    return out


def _check_approvals(
    release: str,
    versions: Sequence[ReleaseVersion],
    entries: Sequence[Entry],
    required_approvers: RequiredApprovers,
) -> list[Violation]:
    """Each decision counts each distinct approver once, and a rollback approved by humans
    starts only with the required number of them."""
    out: list[Violation] = []
    models: dict[int, str] = {}
    for version in versions:
        for revision, _, model, _ in version.history:
            models[revision] = model
    approvers: dict[int, list[str]] = defaultdict(list)
    for entry in entries:
        n = entry.revision
        if entry.type == "ApprovalRequested":
            approvers[n] = []
        elif entry.type == "Approved":
            if entry.user in approvers[n]:
                out.append(Violation(4, f"approved-twice:{release}:{n}:{entry.at}", (
                    f"{release} r{n}: {entry.user} approved twice in one decision")))
            approvers[n].append(entry.user)
        elif entry.type == "RollbackStarted" and "rollback approved by" in entry.message:
            need = required_approvers(release, models.get(n, ""))
            got = len(set(approvers[n]))
            if got < need:
                out.append(Violation(4, f"approvals:{release}:{n}:{entry.at}", (
                    f"{release} r{n} rollback started at {entry.at} with {got} distinct "
                    f"approvers, {need} required")))
    return out
