"""Revision records that outlive their ModelRelease.

Each revision's snapshot, the ControllerRevision ``<release>-r<N>``, carries no
ownerReference: deleting the ModelRelease does not garbage-collect it. It is found by its
labels (``rewind.dev/release``, ``rewind.dev/revision``, ``app.kubernetes.io/managed-by``)
and, besides the immutable ``data`` (the full spec), holds in its metadata the revision's
history record, the ``status.history`` entry of the release that recorded it:

``rewind.dev/record``
    the entry as canonical JSON (revision, spec hash, model/data/image digests, outcome,
    createdAt, promotedAt, finishedAt, reason), written only *after* a status holding that
    entry was stored, so a record never claims more than the status did;
``rewind.dev/outcome`` (label)
    the outcome, for ``kubectl get controllerrevisions -l rewind.dev/outcome=Promoted``;
``rewind.dev/release-uid``
    the uid of the ModelRelease that saved or last recorded it;
``rewind.dev/recorded-at``
    when the record was last written;
``rewind.dev/orphaned-at``
    when the operator first saw no ModelRelease of that name (set by the sweep, removed
    when a ModelRelease of that name adopts the record).

A ModelRelease whose status has no history adopts the records of its namespace and name
(:func:`archive_entries`). Records are deleted by one explicit rule (:func:`sweep_plan`),
never by garbage collection; see docs/design.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kubernetes import client
from pydantic import ValidationError

from rewind import API_GROUP, API_VERSION
from rewind.adapters import _kube
from rewind.adapters.base import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RELEASE_LABEL,
    REVISION_LABEL,
    SPEC_HASH_ANNOTATION,
    AdapterError,
)
from rewind.api import MODELRELEASE_PLURAL, HistoryEntry

RECORD_ANNOTATION = f"{API_GROUP}/record"
OUTCOME_LABEL = f"{API_GROUP}/outcome"
RELEASE_UID_ANNOTATION = f"{API_GROUP}/release-uid"
RECORDED_AT_ANNOTATION = f"{API_GROUP}/recorded-at"
ORPHANED_AT_ANNOTATION = f"{API_GROUP}/orphaned-at"

#: On a ModelRelease whose status has no history yet (in the manifest that creates it):
#: delete the records of its namespace/name instead of adopting them. Value ``true``.
FORGET_HISTORY_ANNOTATION = f"{API_GROUP}/forget-history"

#: Every Rewind snapshot, of every release.
SNAPSHOT_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{REVISION_LABEL}"


class LegacySnapshotError(AdapterError):
    """A snapshot saved by an operator before history records: the API server refuses any
    change to its metadata (it re-serializes the ``data`` bytes differently and calls that
    a change of an immutable field), so it keeps its ownerReference and gets no record."""


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def encode_record(entry: HistoryEntry) -> str:
    """The record annotation's value: the history entry as canonical JSON (keys sorted, no
    blanks, absent times and an empty ``unpinned`` left out), so equal entries are equal
    strings, and a record written before ``unpinned`` existed is still up to date."""
    document = entry.model_dump(mode="json", by_alias=True, exclude_none=True)
    if not document.get("unpinned"):
        document.pop("unpinned", None)
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def decode_record(text: str, revision: int, spec_hash: str) -> HistoryEntry | None:
    """The history entry of a record, or None when it is not one this snapshot can hold:
    not JSON, not an entry, or naming another revision or another spec hash than the
    snapshot's (a record is only believed about the snapshot it sits on)."""
    try:
        entry = HistoryEntry.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return None
    if entry.revision != revision or entry.spec_hash != spec_hash:
        return None
    return entry


def record_patch(
    entry: HistoryEntry, release_uid: str, now: datetime, *, drop_owners: bool
) -> dict[str, Any]:
    """A JSON merge patch that stores ``entry`` as the snapshot's record, for
    ``release_uid``, and clears an orphan mark. ``drop_owners`` removes ownerReferences a
    snapshot saved by an older operator has (so deleting the release no longer collects
    it)."""
    metadata: dict[str, Any] = {
        "annotations": {
            RECORD_ANNOTATION: encode_record(entry),
            RELEASE_UID_ANNOTATION: release_uid,
            RECORDED_AT_ANNOTATION: timestamp(now),
            ORPHANED_AT_ANNOTATION: None,
        },
        "labels": {OUTCOME_LABEL: entry.outcome.value},
    }
    if drop_owners:
        metadata["ownerReferences"] = None
    return {"metadata": metadata}


def claim_patch(release_uid: str, resource_version: str) -> dict[str, Any]:
    """A merge patch that hands a record to the ModelRelease about to adopt it: its uid,
    no orphan mark. Conditional on the version read, so a sweep that decided to delete
    the record from that version fails instead (and the other way round)."""
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {RELEASE_UID_ANNOTATION: release_uid, ORPHANED_AT_ANNOTATION: None},
        }
    }


@dataclass(frozen=True)
class StoredRevision:
    """One Rewind snapshot as stored, with its record."""

    namespace: str
    name: str  # the ControllerRevision's name, <release>-r<N>
    release: str
    revision: int
    uid: str  # the ControllerRevision's own uid
    resource_version: str
    created: datetime | None
    spec_hash: str
    #: The record (None: saved but never recorded, or a record that does not parse).
    entry: HistoryEntry | None
    record: str  # the record annotation as stored ("" when absent)
    release_uid: str
    recorded_at: datetime | None
    orphaned_at: datetime | None
    #: ownerReferences as stored (a snapshot saved by an operator before records).
    owned: bool

    @property
    def last_written(self) -> datetime | None:
        """When the record was last written, or the snapshot saved."""
        return self.recorded_at or self.created

    def up_to_date(self, entry: HistoryEntry, release_uid: str) -> bool:
        """The record already says ``entry`` for ``release_uid``, with nothing to clean."""
        return (
            self.record == encode_record(entry)
            and self.release_uid == release_uid
            and self.orphaned_at is None
            and not self.owned
        )


def parse_stored(obj: Mapping[str, Any]) -> StoredRevision | None:
    """A ControllerRevision as a Rewind snapshot, or None when it is not one (no release
    or revision label, not managed by Rewind)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or not labels.get(RELEASE_LABEL):
        return None
    try:
        revision = int(labels.get(REVISION_LABEL, ""))
    except ValueError:
        return None
    spec_hash = str(annotations.get(SPEC_HASH_ANNOTATION, ""))
    record = str(annotations.get(RECORD_ANNOTATION, ""))
    return StoredRevision(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        release=str(labels[RELEASE_LABEL]),
        revision=revision,
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        created=_parse_time(meta.get("creationTimestamp")),
        spec_hash=spec_hash,
        entry=decode_record(record, revision, spec_hash) if record else None,
        record=record,
        release_uid=str(annotations.get(RELEASE_UID_ANNOTATION, "")),
        recorded_at=_parse_time(annotations.get(RECORDED_AT_ANNOTATION)),
        orphaned_at=_parse_time(annotations.get(ORPHANED_AT_ANNOTATION)),
        owned=bool(meta.get("ownerReferences")),
    )


def archive_entries(stored: Iterable[StoredRevision]) -> tuple[HistoryEntry, ...]:
    """The recorded history entries, by revision (snapshots without a record left out)."""
    entries = [s.entry for s in stored if s.entry is not None]
    return tuple(sorted(entries, key=lambda e: e.revision))


def describe_source(release: str, namespace: str, stored: Sequence[StoredRevision]) -> str:
    """Where adopted records came from, for the timeline and the Event."""
    recorded = sorted((s for s in stored if s.entry is not None), key=lambda s: s.revision)
    names = ", ".join(s.name for s in recorded)
    uids = sorted({s.release_uid for s in recorded if s.release_uid})
    by = f", recorded by ModelRelease uid {', '.join(uids)}" if uids else ""
    return f"ControllerRevisions {names} in {namespace} (rewind.dev/release={release}{by})"


# --------------------------------------------------------------------------------------
# Retention: the one rule that deletes records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepStep:
    """What the sweep does to one snapshot: mark it orphaned, or delete it."""

    kind: Literal["mark", "delete"]
    stored: StoredRevision
    why: str


#: Per existing ModelRelease (namespace, name): the revisions its status refers to, or
#: None when its status has no history yet (it is about to adopt the records).
Releases = Mapping[tuple[str, str], frozenset[int] | None]


def sweep_plan(
    stored: Iterable[StoredRevision],
    releases: Releases,
    retention: float,
    now: datetime,
) -> list[SweepStep]:
    """Which snapshots (and their records) to mark or delete, ``retention`` in seconds.

    * A ModelRelease of that namespace/name exists and its status has no history yet: keep
      them all (it adopts them in its next reconcile).
    * It exists: keep what its status refers to (history, stable, candidate, current);
      delete the others once they were last written ``retention`` ago (revisions trimmed
      out of the status history, a snapshot a crash left unrecorded).
    * None exists: mark each ``orphaned-at`` now; delete it ``retention`` after that.
      Retention counts from the deletion as the operator saw it, not from when a revision
      was promoted: a release promoted a year ago and created again a minute after its
      deletion still finds its last known-good revision.
    """
    keep_for = timedelta(seconds=retention)
    steps: list[SweepStep] = []
    for s in sorted(stored, key=lambda x: (x.namespace, x.release, x.revision)):
        key = (s.namespace, s.release)
        if key in releases:
            referenced = releases[key]
            if referenced is None or s.revision in referenced:
                continue
            written = s.last_written
            if written is not None and now - written >= keep_for:
                steps.append(SweepStep(
                    "delete", s,
                    f"not referenced by ModelRelease {s.release}'s status since "
                    f"{timestamp(written)} (retention {retention:g}s)",
                ))
            continue
        if s.orphaned_at is None:
            steps.append(SweepStep("mark", s, f"no ModelRelease {s.release} exists"))
        elif now - s.orphaned_at >= keep_for:
            steps.append(SweepStep(
                "delete", s,
                f"no ModelRelease {s.release} since {timestamp(s.orphaned_at)} "
                f"(retention {retention:g}s)",
            ))
    return steps


def referenced_revisions(body: Mapping[str, Any]) -> frozenset[int] | None:
    """The revisions a ModelRelease's stored status refers to (None: no history yet)."""
    status = body.get("status") or {}
    history = status.get("history") or []
    if not history:
        return None
    revisions = {int(h.get("revision") or 0) for h in history}
    for key in ("stableRevision", "candidateRevision", "currentRevision"):
        revisions.add(int(status.get(key) or 0))
    revisions.discard(0)
    return frozenset(revisions)


class KubeArchive:
    """Reads, records, claims and deletes revision records through the Kubernetes API."""

    def __init__(self, api_client: client.ApiClient, *, request_timeout: float = 30.0) -> None:
        self._apps = client.AppsV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._timeout = request_timeout

    async def read(self, release: str, namespace: str) -> list[StoredRevision]:
        """Every Rewind snapshot of ``namespace/release``, by revision."""
        listing = await _kube.call(
            self._apps.list_namespaced_controller_revision,
            namespace,
            label_selector=f"{SNAPSHOT_SELECTOR},{RELEASE_LABEL}={release}",
            timeout=self._timeout,
        )
        return _parse_listing(listing, release)

    async def record(
        self,
        namespace: str,
        name: str,
        entry: HistoryEntry,
        release_uid: str,
        now: datetime,
        *,
        drop_owners: bool = False,
    ) -> bool:
        """Write ``entry`` as the record of snapshot ``name``; False when it is gone."""
        patch = record_patch(entry, release_uid, now, drop_owners=drop_owners)
        return await self._patch(namespace, name, patch)

    async def claim(self, stored: StoredRevision, release_uid: str) -> bool:
        """Hand a record to the ModelRelease adopting it; False when it was deleted or
        changed meanwhile (a sweep got there first: it is not adopted)."""
        patch = claim_patch(release_uid, stored.resource_version)
        return await self._patch(stored.namespace, stored.name, patch)

    async def mark_orphaned(self, stored: StoredRevision, now: datetime) -> bool:
        patch = {
            "metadata": {
                "resourceVersion": stored.resource_version,
                "annotations": {ORPHANED_AT_ANNOTATION: timestamp(now)},
            }
        }
        return await self._patch(stored.namespace, stored.name, patch)

    async def delete(self, stored: StoredRevision) -> bool:
        """Delete the snapshot if it is still the version read; False otherwise."""
        preconditions = {"uid": stored.uid, "resourceVersion": stored.resource_version}
        try:
            await _kube.call(
                self._apps.delete_namespaced_controller_revision,
                stored.name,
                stored.namespace,
                body={"preconditions": preconditions},
                timeout=self._timeout,
            )
        except client.ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def _patch(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        """A merge patch; False when the snapshot is gone (404) or, for a patch
        conditional on a resourceVersion, changed meanwhile (409)."""
        try:
            await _kube.call(
                self._apps.patch_namespaced_controller_revision,
                name,
                namespace,
                patch,
                _content_type=_kube.MERGE_PATCH,
                timeout=self._timeout,
            )
        except client.ApiException as exc:
            if exc.status in (404, 409):
                return False
            if exc.status == 422 and "immutable" in (exc.body or ""):
                raise LegacySnapshotError(
                    f"ControllerRevision {namespace}/{name} was saved by an operator without "
                    "history records: the API server refuses any change to it (its data "
                    "would be re-serialized), so it keeps its ownerReference and no record"
                ) from exc
            raise
        return True

    async def sweep(
        self, namespaces: Sequence[str] | None, retention: float, now: datetime
    ) -> list[SweepStep]:
        """Apply :func:`sweep_plan` to the watched namespaces (None: all; globs and
        ``!`` negations as ``--namespace`` takes them); returns the steps that took
        effect. Snapshots are listed before releases: a release created in between adopts
        (claims) its records, which fails the sweep's conditional delete of the version
        it listed."""
        scopes: list[str | None] = [None]
        if namespaces is not None and not any(_is_pattern(n) for n in namespaces):
            scopes = list(namespaces)
        stored: list[StoredRevision] = []
        releases: dict[tuple[str, str], frozenset[int] | None] = {}
        for namespace in scopes:
            stored += await self._list_snapshots(namespace)
        for namespace in scopes:
            for body in await self._list_releases(namespace):
                meta = body.get("metadata") or {}
                key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
                releases[key] = referenced_revisions(body)
        if namespaces is not None and scopes == [None]:
            stored = [s for s in stored if watched(s.namespace, namespaces)]
        done: list[SweepStep] = []
        for step in sweep_plan(stored, releases, retention, now):
            try:
                if step.kind == "delete":
                    applied = await self.delete(step.stored)
                else:
                    applied = await self.mark_orphaned(step.stored, now)
            except LegacySnapshotError:
                continue  # owned by its release: the garbage collector takes it
            if applied:
                done.append(step)
        return done

    async def _list_snapshots(self, namespace: str | None) -> list[StoredRevision]:
        if namespace is None:
            listing = await _kube.call(
                self._apps.list_controller_revision_for_all_namespaces,
                label_selector=SNAPSHOT_SELECTOR,
                timeout=self._timeout,
            )
        else:
            listing = await _kube.call(
                self._apps.list_namespaced_controller_revision,
                namespace,
                label_selector=SNAPSHOT_SELECTOR,
                timeout=self._timeout,
            )
        return _parse_listing(listing, None)

    async def _list_releases(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            listing = await _kube.call(
                self._custom.list_cluster_custom_object,
                API_GROUP,
                API_VERSION,
                MODELRELEASE_PLURAL,
                timeout=self._timeout,
            )
        else:
            listing = await _kube.call(
                self._custom.list_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                namespace,
                MODELRELEASE_PLURAL,
                timeout=self._timeout,
            )
        items: list[dict[str, Any]] = listing.get("items") or []
        return items


def _is_pattern(namespace: str) -> bool:
    return any(c in namespace for c in "*?[!,")


def watched(namespace: str, patterns: Sequence[str]) -> bool:
    """Whether the ``--namespace`` values (names, globs, ``!`` negations) cover
    ``namespace``, by Kopf's own rule, so the sweep touches exactly the namespaces whose
    releases this operator reconciles."""
    from kopf._cogs.structs.references import NamespaceName, match_namespace

    return any(match_namespace(NamespaceName(namespace), p) for p in patterns)


def _parse_listing(listing: Mapping[str, Any], release: str | None) -> list[StoredRevision]:
    out = []
    for item in listing.get("items") or []:
        stored = parse_stored(item)
        if stored is not None and (release is None or stored.release == release):
            out.append(stored)
    return sorted(out, key=lambda s: (s.namespace, s.release, s.revision))
