"""Revision records on the snapshots (rewind.adapters.archive), checked without a cluster:
how a status.history entry is stored on its ControllerRevision and read back, and the one
rule that deletes records (the retention sweep)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rewind.adapters.archive import (
    ORPHANED_AT_ANNOTATION,
    OUTCOME_LABEL,
    RECORD_ANNOTATION,
    RELEASE_UID_ANNOTATION,
    StoredRevision,
    archive_entries,
    claim_patch,
    decode_record,
    describe_source,
    encode_record,
    parse_stored,
    record_patch,
    referenced_revisions,
    sweep_plan,
    watched,
)
from rewind.adapters.base import OwnerRef
from rewind.adapters.workloads import build_snapshot
from rewind.api import HistoryEntry, ModelReleaseSpec, Outcome, spec_hash

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
OLD_UID = "11111111-aaaa-bbbb-cccc-000000000001"
NEW_UID = "22222222-aaaa-bbbb-cccc-000000000002"
DAY = 24 * 3600.0


def make_spec(version: str) -> ModelReleaseSpec:
    return ModelReleaseSpec.model_validate({
        "policyRef": {"name": "p"},
        "model": {"name": "fraud", "version": version, "artifactURI": f"s3://m/{version}",
                  "artifactDigest": "sha256:" + "a" * 64, "format": "onnx"},
        "code": {"image": "registry.example.com/fraud@sha256:" + "b" * 64},
        "data": {"datasetRef": "s3://d", "version": f"d-{version}"},
        "traffic": {"hosts": ["fraud.example.com"]},
    })


def entry_for(revision: int, spec: ModelReleaseSpec, outcome: Outcome, **kw: Any) -> HistoryEntry:
    return HistoryEntry(
        revision=revision, spec_hash=spec_hash(spec), model_version=spec.model.version,
        model_digest=spec.model.artifact_digest, image_digest="sha256:" + "b" * 64,
        data_version=spec.data.version if spec.data else "", outcome=outcome,
        created_at=NOW - timedelta(days=40), **kw,
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def stored_snapshot(revision: int, spec: ModelReleaseSpec, **meta: Any) -> dict[str, Any]:
    """A snapshot as the API server returns it (uid, resourceVersion, creation time)."""
    body = build_snapshot("fraud", "risk", OwnerRef("fraud", OLD_UID), revision, spec)
    body["metadata"].update(uid=f"cr-{revision}", resourceVersion=str(100 + revision),
                            creationTimestamp="2025-04-01T00:00:00Z", **meta)
    return body


V1, V2 = make_spec("1.0.0"), make_spec("2.0.0")
R1 = entry_for(1, V1, Outcome.PROMOTED, promoted_at=NOW - timedelta(days=39))
R2 = entry_for(2, V2, Outcome.ROLLED_BACK, finished_at=NOW - timedelta(days=39),
               reason="error-rate 0.5 > max 0.05 at 2025-04-22T12:00:00Z (failures 1/1)")


# -- encoding --------------------------------------------------------------------------


def test_a_record_is_the_history_entry_as_canonical_json_and_reads_back_equal() -> None:
    text = encode_record(R2)
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    document = json.loads(text)
    assert document["outcome"] == "RolledBack" and document["specHash"] == spec_hash(V2)
    assert document["finishedAt"] == "2025-04-23T12:00:00Z"
    assert "promotedAt" not in document  # absent times are left out
    assert decode_record(text, 2, spec_hash(V2)) == R2
    # Equal entries are equal strings, whatever order the fields were given in.
    assert encode_record(HistoryEntry.model_validate(json.loads(text))) == text


def test_unpinned_references_are_recorded_and_an_empty_list_is_left_out() -> None:
    """A record written before history entries named unpinned references is still up to
    date (no rewrite of every record on upgrade); a revision's references are recorded."""
    assert "unpinned" not in json.loads(encode_record(R2))
    pinned = R2.model_copy(update={"unpinned": ["Secret hf-token"]})
    text = encode_record(pinned)
    assert json.loads(text)["unpinned"] == ["Secret hf-token"]
    assert decode_record(text, 2, spec_hash(V2)) == pinned


@pytest.mark.parametrize(
    ("text", "revision", "digest"),
    [
        ("not json", 2, spec_hash(V2)),
        ('{"revision": "two"}', 2, spec_hash(V2)),
        (encode_record(R2), 3, spec_hash(V2)),  # about another revision
        (encode_record(R2), 2, spec_hash(V1)),  # about another spec than the snapshot's
    ],
)
def test_a_record_is_only_believed_about_the_snapshot_it_sits_on(
    text: str, revision: int, digest: str
) -> None:
    assert decode_record(text, revision, digest) is None


def test_record_patch_stores_the_entry_its_outcome_label_and_clears_the_orphan_mark() -> None:
    snapshot = stored_snapshot(2, V2)
    snapshot["metadata"]["annotations"][ORPHANED_AT_ANNOTATION] = "2025-05-01T00:00:00Z"
    patched = merge_patch(snapshot, record_patch(R2, NEW_UID, NOW, drop_owners=False))
    meta = patched["metadata"]
    assert meta["annotations"][RECORD_ANNOTATION] == encode_record(R2)
    assert meta["annotations"][RELEASE_UID_ANNOTATION] == NEW_UID
    assert meta["annotations"]["rewind.dev/recorded-at"] == "2025-06-01T12:00:00Z"
    assert ORPHANED_AT_ANNOTATION not in meta["annotations"]
    assert meta["labels"][OUTCOME_LABEL] == "RolledBack"
    assert meta["annotations"]["rewind.dev/spec-hash"] == spec_hash(V2)  # untouched
    assert patched["data"] == snapshot["data"]  # the spec is immutable: never patched
    stored = parse_stored(patched)
    assert stored is not None and stored.entry == R2 and stored.up_to_date(R2, NEW_UID)
    assert not stored.up_to_date(R2, OLD_UID)


def test_record_patch_drops_the_owner_of_a_snapshot_an_older_operator_saved() -> None:
    snapshot = stored_snapshot(1, V1)
    snapshot["metadata"]["ownerReferences"] = [OwnerRef("fraud", OLD_UID).to_k8s()]
    stored = parse_stored(snapshot)
    assert stored is not None and stored.owned and not stored.up_to_date(R1, OLD_UID)
    patched = merge_patch(snapshot, record_patch(R1, OLD_UID, NOW, drop_owners=True))
    assert "ownerReferences" not in patched["metadata"]
    again = parse_stored(patched)
    assert again is not None and again.up_to_date(R1, OLD_UID)
    assert "ownerReferences" not in record_patch(R1, OLD_UID, NOW, drop_owners=False)["metadata"]


def test_a_claim_is_conditional_on_the_version_read() -> None:
    patch = claim_patch(NEW_UID, "107")
    assert patch["metadata"]["resourceVersion"] == "107"
    assert patch["metadata"]["annotations"] == {
        RELEASE_UID_ANNOTATION: NEW_UID, ORPHANED_AT_ANNOTATION: None,
    }


def test_parse_stored_reads_a_saved_snapshot_without_a_record() -> None:
    stored = parse_stored(stored_snapshot(3, V2))
    assert stored is not None
    assert (stored.name, stored.namespace, stored.release, stored.revision) == (
        "fraud-r3", "risk", "fraud", 3,
    )
    assert stored.entry is None and stored.record == ""
    assert stored.release_uid == OLD_UID and stored.spec_hash == spec_hash(V2)
    assert stored.last_written == datetime(2025, 4, 1, tzinfo=UTC)
    assert not stored.owned


@pytest.mark.parametrize(
    "labels",
    [
        {"rewind.dev/release": "fraud", "rewind.dev/revision": "1"},  # not managed by Rewind
        {"app.kubernetes.io/managed-by": "rewind", "rewind.dev/revision": "1"},
        {"app.kubernetes.io/managed-by": "rewind", "rewind.dev/release": "fraud",
         "rewind.dev/revision": "one"},
    ],
)
def test_parse_stored_ignores_what_is_not_a_rewind_snapshot(labels: dict[str, str]) -> None:
    snapshot = stored_snapshot(1, V1)
    snapshot["metadata"]["labels"] = labels
    assert parse_stored(snapshot) is None


def recorded(revision: int, spec: ModelReleaseSpec, entry: HistoryEntry | None,
             **annotations: str) -> StoredRevision:
    body = stored_snapshot(revision, spec)
    if entry is not None:
        body = merge_patch(body, record_patch(entry, OLD_UID, NOW - timedelta(days=39),
                                              drop_owners=False))
    body["metadata"]["annotations"].update(annotations)
    stored = parse_stored(body)
    assert stored is not None
    return stored


def test_archive_entries_are_the_records_by_revision_and_name_their_source() -> None:
    stored = [recorded(2, V2, R2), recorded(3, V1, None), recorded(1, V1, R1)]
    assert archive_entries(stored) == (R1, R2)
    source = describe_source("fraud", "risk", stored)
    assert source == (
        f"ControllerRevisions fraud-r1, fraud-r2 in risk (rewind.dev/release=fraud, "
        f"recorded by ModelRelease uid {OLD_UID})"
    )


# -- retention: the one rule that deletes records ----------------------------------------


def steps(stored: list[StoredRevision], releases: Any, retention: float = 30 * DAY,
          now: datetime = NOW) -> list[tuple[str, str]]:
    return [(s.kind, s.stored.name) for s in sweep_plan(stored, releases, retention, now)]


def test_records_of_a_deleted_release_are_marked_then_deleted_after_the_retention() -> None:
    stored = [recorded(1, V1, R1), recorded(2, V2, R2)]
    # First sweep without the release: marked, not deleted (promoted 39 days ago or not).
    assert steps(stored, {}) == [("mark", "fraud-r1"), ("mark", "fraud-r2")]
    marked_29d = (NOW - timedelta(days=29)).strftime("%Y-%m-%dT%H:%M:%SZ")
    marked_31d = (NOW - timedelta(days=31)).strftime("%Y-%m-%dT%H:%M:%SZ")
    young = [recorded(1, V1, R1, **{ORPHANED_AT_ANNOTATION: marked_29d})]
    assert steps(young, {}) == []
    old = [recorded(1, V1, R1, **{ORPHANED_AT_ANNOTATION: marked_31d})]
    plan = sweep_plan(old, {}, 30 * DAY, NOW)
    assert [(s.kind, s.stored.name) for s in plan] == [("delete", "fraud-r1")]
    assert "no ModelRelease fraud since" in plan[0].why and "retention" in plan[0].why


def test_a_release_that_exists_without_history_keeps_every_record_for_its_adoption() -> None:
    stored = [recorded(1, V1, R1, **{ORPHANED_AT_ANNOTATION: "2024-01-01T00:00:00Z"}),
              recorded(2, V2, None)]
    assert steps(stored, {("risk", "fraud"): None}) == []


def test_a_live_release_keeps_what_its_status_refers_to_and_ages_out_the_rest() -> None:
    fresh = recorded(3, V1, None)
    fresh = StoredRevision(**{**fresh.__dict__, "created": NOW - timedelta(minutes=1)})
    stored = [recorded(1, V1, R1), recorded(2, V2, R2), fresh]
    live = {("risk", "fraud"): frozenset({2})}
    # r1 was recorded 39 days ago and the status no longer holds it; r3 was just saved
    # (its status write may be under way): kept.
    assert steps(stored, live) == [("delete", "fraud-r1")]
    assert steps(stored, {("risk", "fraud"): frozenset({1, 2, 3})}) == []


def test_another_release_or_namespace_is_not_this_release() -> None:
    stored = [recorded(1, V1, R1)]
    assert steps(stored, {("other", "fraud"): None, ("risk", "fraudster"): None}) == [
        ("mark", "fraud-r1"),
    ]


def test_referenced_revisions_of_a_stored_status() -> None:
    assert referenced_revisions({"status": {}}) is None
    assert referenced_revisions({}) is None
    body = {"status": {"history": [{"revision": 4}, {"revision": 5}], "stableRevision": 3,
                       "candidateRevision": 5, "currentRevision": 6}}
    assert referenced_revisions(body) == frozenset({3, 4, 5, 6})


@pytest.mark.parametrize(
    ("namespace", "patterns", "expected"),
    [
        ("risk", ["risk"], True),
        ("risk", ["shop"], False),
        ("team-a", ["team-*"], True),
        ("team-a", ["team-*, !team-a"], False),
        ("team-b", ["team-*, !team-a"], True),
        ("other", ["!team-a"], True),  # a leading negation implies a catch-all (Kopf)
        ("team-a", ["!team-a"], False),
        ("team-a", ["shop", "team-*"], True),  # any value
    ],
)
def test_the_sweep_covers_only_the_watched_namespaces(
    namespace: str, patterns: list[str], expected: bool
) -> None:
    """Records of namespaces another operator watches are never touched."""
    assert watched(namespace, patterns) is expected
