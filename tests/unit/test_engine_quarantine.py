"""Quarantine (issue 13, item 2): lineage-aware rollback.

A Quarantine lists what is known to be bad (training data versions, exact or by dataset and
time; model artifact digests; serving image digests). A candidate that matches never gets
traffic; a serving revision that matches is rolled back to the newest known-good revision
that is clean, skipping newer ones that are not; with no clean one the release holds and
says so. Every decision names the entry.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from rewind.api import HistoryEntry, Phase, QuarantineEntry, QuarantineSpec
from rewind.engine import QuarantineRule, SetRoutes, quarantine_match
from tests.unit.test_engine_kit import (
    FAIL,
    T0,
    World,
    at_step,
    digest,
    make_policy,
    make_spec,
    promoted_world,
)

APPROVAL = {"requiredApprovers": 1, "timeout": "5m", "onTimeout": "Rollback"}
DATASET = "s3://datasets/fraud"


def rule(name: str, **fields: Any) -> QuarantineRule:
    body = {"name": name, "reason": "label flips in the November export", "addedBy": "alice"}
    return QuarantineRule(f"risk/poison#{name}", QuarantineEntry.model_validate(body | fields))


def data(rev: int) -> QuarantineRule:
    """Quarantine the data version of revision ``rev`` of a promoted_world (make_spec)."""
    return rule(f"data-r{rev}", dataVersion=f"data-{rev}.0.0" if rev > 1 else "data-1.0.0")


def entry(**fields: Any) -> HistoryEntry:
    base: dict[str, Any] = {
        "revision": 3,
        "modelDigest": digest("a"),
        "imageDigest": digest("c"),
        "dataVersion": "v7",
        "datasetRef": DATASET,
        "createdAt": T0,
    }
    return HistoryEntry.model_validate(base | fields)


# --------------------------------------------------------------------------------------
# The entry and what it matches
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, "exactly one"),
        ({"dataVersion": "v1", "modelDigest": digest("a")}, "exactly one"),
        ({"suspectAfter": "2025-03-01T00:00:00Z"}, "needs datasetRef"),
        ({"datasetRef": DATASET}, "exactly one"),
        ({"datasetRef": DATASET, "modelDigest": digest("a")}, "only qualifies"),
        ({"modelDigest": "sha256:short"}, "pattern"),
    ],
)
def test_an_entry_names_exactly_one_kind_of_thing(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        QuarantineEntry.model_validate({"name": "x", "reason": "r", "addedBy": "a"} | fields)


def test_an_entry_needs_a_reason_and_who_added_it_and_names_are_unique() -> None:
    with pytest.raises(ValidationError):
        QuarantineEntry.model_validate({"name": "x", "dataVersion": "v1", "addedBy": "a"})
    with pytest.raises(ValidationError):
        QuarantineEntry.model_validate({"name": "x", "dataVersion": "v1", "reason": "r"})
    one = {"name": "x", "dataVersion": "v1", "reason": "r", "addedBy": "a"}
    with pytest.raises(ValidationError, match="unique"):
        QuarantineSpec.model_validate({"entries": [one, one]})


@pytest.mark.parametrize(
    ("fields", "matched"),
    [
        ({"modelDigest": digest("a")}, True),
        ({"modelDigest": digest("b")}, False),
        ({"imageDigest": digest("c")}, True),
        ({"imageDigest": digest("d")}, False),
        ({"dataVersion": "v7"}, True),
        ({"dataVersion": "v7", "datasetRef": DATASET}, True),
        ({"dataVersion": "v7", "datasetRef": "s3://datasets/other"}, False),
        ({"dataVersion": "v8"}, False),
        # By time: the revision was first seen at T0, so its data is older than T0.
        ({"datasetRef": DATASET, "suspectAfter": "2025-03-01T13:00:00Z"}, False),
        ({"datasetRef": DATASET, "suspectAfter": "2025-03-01T12:00:00Z"}, True),
        ({"datasetRef": DATASET, "suspectAfter": "2025-02-01T00:00:00Z"}, True),
        ({"datasetRef": "s3://datasets/other", "suspectAfter": "2025-02-01T00:00:00Z"}, False),
    ],
)
def test_what_an_entry_matches(fields: dict[str, Any], matched: bool) -> None:
    got = quarantine_match(entry(), [rule("e", **fields)])
    assert (got is not None) == matched


def test_suspect_after_uses_the_data_versions_own_time_when_the_spec_gives_it() -> None:
    after = {"datasetRef": DATASET, "suspectAfter": "2025-02-15T00:00:00Z"}
    old_data = entry(dataCreatedAt="2025-02-01T00:00:00Z")  # released later, data older
    new_data = entry(dataCreatedAt="2025-02-20T00:00:00Z")
    assert quarantine_match(old_data, [rule("e", **after)]) is None
    assert quarantine_match(new_data, [rule("e", **after)]) is not None
    # Unknown times are not clean: a revision with neither is suspect.
    assert quarantine_match(entry(createdAt=None), [rule("e", **after)]) is not None


def test_the_first_matching_entry_is_named() -> None:
    rules = [rule(n, dataVersion=v) for n, v in (("a", "nope"), ("b", "v7"), ("c", "v7"))]
    got = quarantine_match(entry(), rules)
    assert got is not None and got.ref == "risk/poison#b"


# --------------------------------------------------------------------------------------
# Target selection: the newest known-good revision that is clean
# --------------------------------------------------------------------------------------


def four() -> World:
    """r1..r4 promoted in turn: r4 serves, r3 is warm, r1 and r2 are retired (cold)."""
    w = promoted_world(make_policy(keep_previous_warm="10m"), releases=4)
    assert w.status.stable_revision == 4
    return w


@pytest.mark.parametrize(
    "older",
    [set(c) for n in range(4) for c in itertools.combinations((1, 2, 3), n)],
    ids=lambda s: "quarantined=" + ",".join(f"r{r}" for r in sorted({4, *s})),
)
def test_a_quarantined_stable_rolls_back_to_the_newest_clean_known_good(older: set[int]) -> None:
    w = four()
    bad = {4, *older}
    w.quarantine = tuple(data(r) for r in sorted(bad))
    w.step()
    clean = [r for r in (3, 2, 1) if r not in bad]
    s = w.status
    assert s.quarantined == ",".join(f"r{r}" for r in sorted(bad, reverse=True))
    for r in bad:
        mark = next(e for e in s.history if e.revision == r).quarantine
        assert mark is not None and mark.entry == f"risk/poison#data-r{r}"
        assert mark.added_by == "alice"
    if not clean:
        # Nothing clean to go to: hold where traffic is, and page.
        assert s.phase == Phase.PROMOTED and w.weights() == {4: 100}
        assert w.condition("Stalled")[:2] == ("True", "QuarantineHold")
        assert w.condition("Ready")[0] == "False"
        msg = w.condition("Stalled")[2]
        assert "risk/poison#data-r4" in msg or "entry data-r4" in msg
        assert all(f"r{r} skipped: quarantined by risk/poison#data-r{r}" in msg for r in older)
        assert "QuarantineHold" in w.timeline_types()
        w.run(60)  # nothing changes, the note is not repeated
        assert w.timeline_types().count("QuarantineHold") == 1
        assert w.weights() == {4: 100}
        return
    target = clean[0]
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    s = w.status
    assert s.stable_revision == target and w.weights() == {target: 100}
    decided = next(e for e in s.timeline if e.type == "RollbackDecided")
    assert f"rolling back r4 to r{target}" in decided.message
    assert "Quarantine risk/poison entry data-r4" in decided.message
    assert "label flips" in decided.message and "added by alice" in decided.message
    for r in older:
        if r > target:
            assert f"r{r} skipped: quarantined by risk/poison#data-r{r}" in decided.message
    assert w.outcome(4) == "RolledBack"
    # The history keeps the marks; the spec still describes r4: a human changes it.
    assert all(e.quarantine is not None for e in s.history if e.revision in bad)
    assert w.condition("Stalled")[:2] == ("True", "RolledBack")
    assert w.condition("Degraded")[1] == "RolledBack"
    assert w.timeline_types().count("RollbackStarted") == 1


def test_a_quarantined_serving_revision_in_approval_mode_waits_for_a_human() -> None:
    w = promoted_world(make_policy(approval=APPROVAL), releases=3)
    w.quarantine = (data(3), data(2))
    w.step()
    s = w.status
    assert s.phase == Phase.PROMOTED and w.weights() == {3: 100}
    pd = s.pending_decision
    assert pd is not None and pd.target == 1 and pd.quarantine == "risk/poison#data-r3"
    assert w.condition("Ready")[0] == "False"
    assert w.condition("Reconciling")[:2] == ("True", "AwaitingApproval")
    assert w.condition("Degraded")[:2] == ("True", "Quarantined")
    assert "r2 skipped: quarantined by risk/poison#data-r2" in s.message
    w.act("approve-rollback", user="bob")
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.status.stable_revision == 1 and w.weights() == {1: 100}
    approved = next(e for e in w.status.timeline if e.type == "Approved")
    assert approved.user == "bob" and "rollback of r3" in approved.message


def test_a_rejected_quarantine_rollback_keeps_serving_and_is_not_proposed_again() -> None:
    w = promoted_world(make_policy(approval=APPROVAL), releases=2)
    w.quarantine = (data(2),)
    w.step()
    assert w.status.pending_decision is not None
    w.act("reject-rollback", value="false positive, verified by hand", user="carol")
    s = w.status
    assert s.pending_decision is None and s.phase == Phase.PROMOTED
    mark = s.history[-1].quarantine
    assert mark is not None and mark.accepted_by == "carol"
    w.run(600)
    assert w.status.pending_decision is None and w.weights() == {2: 100}
    assert w.condition("Degraded")[:2] == ("True", "Quarantined")
    assert "carol chose to keep serving it" in w.condition("Degraded")[2]
    assert w.condition("Ready")[0] == "True"


@pytest.mark.parametrize(("on_timeout", "rolled"), [("Rollback", True), ("Resume", False)])
def test_a_quarantine_decision_nobody_takes_follows_on_timeout(
    on_timeout: str, rolled: bool
) -> None:
    w = promoted_world(make_policy(approval=APPROVAL | {"onTimeout": on_timeout}), releases=2)
    w.quarantine = (data(2),)
    d = w.step()
    assert d.requeue_after is not None and d.requeue_after <= 300
    w.run(310)
    assert "ApprovalTimedOut" in w.timeline_types()
    if rolled:
        assert w.status.phase == Phase.ROLLED_BACK and w.weights() == {1: 100}
    else:
        assert w.status.phase == Phase.PROMOTED and w.weights() == {2: 100}
        mark = w.status.history[-1].quarantine
        assert mark is not None and mark.accepted_by == "approval.onTimeout Resume"


def test_lifting_the_entry_withdraws_the_proposed_rollback() -> None:
    w = promoted_world(make_policy(approval=APPROVAL), releases=2)
    w.quarantine = (data(2),)
    w.step()
    assert w.status.pending_decision is not None
    w.quarantine = ()
    w.step()
    s = w.status
    assert s.pending_decision is None and s.quarantined == ""
    assert s.history[-1].quarantine is None
    assert w.timeline_types()[-2:] == ["QuarantineLifted", "QuarantineLifted"]
    assert w.condition("Ready")[0] == "True"


# --------------------------------------------------------------------------------------
# Candidates: refused before any traffic
# --------------------------------------------------------------------------------------


def test_a_new_revision_whose_data_is_quarantined_is_refused_before_any_traffic() -> None:
    w = promoted_world(releases=1)
    w.quarantine = (rule("nov", dataVersion="data-2.0.0"),)
    d = w.release(make_spec("2.0.0"))
    s = w.status
    assert s.phase == Phase.FAILED and w.weights() == {1: 100}
    assert s.stable_revision == 1 and w.outcome(2) == "Failed"
    assert "refused before any traffic: quarantined by Quarantine risk/poison entry nov" in (
        s.history[-1].reason
    )
    assert 2 not in w.deployments and not [a for a in d.actions if isinstance(a, SetRoutes)
                                            and 2 in a.weights]
    assert s.quarantined == "r2"
    # A retry is refused again for the same reason.
    w.act("retry", user="dave")
    assert w.status.phase == Phase.FAILED and 2 not in w.deployments


@pytest.mark.parametrize(
    "fields",
    [
        {"modelDigest": make_spec("2.0.0").model.artifact_digest},
        {"imageDigest": digest("e")},
        {"datasetRef": DATASET, "suspectAfter": "2025-03-01T12:00:05Z"},
    ],
    ids=["model", "image", "dataset-time"],
)
def test_every_kind_of_entry_refuses_a_candidate(fields: dict[str, Any]) -> None:
    w = promoted_world(releases=1)
    w.quarantine = (rule("x", **fields),)
    spec = make_spec("2.0.0", image=f"registry.example.com/fraud@{digest('e')}")
    w.release(spec)
    assert w.status.phase == Phase.FAILED and w.weights() == {1: 100}


def test_a_candidate_quarantined_mid_canary_is_rolled_back() -> None:
    w = promoted_world(releases=1)
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    assert w.weights().get(2, 0) > 0
    w.quarantine = (rule("nov", dataVersion="data-2.0.0"),)
    w.step()
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.weights() == {1: 100} and w.outcome(2) == "RolledBack"
    refused = next(e for e in w.status.timeline if e.type == "QuarantineRefused")
    assert "entry nov" in refused.message


def test_a_candidate_quarantined_before_it_has_traffic_fails_without_a_rollback() -> None:
    w = promoted_world(releases=1, ready_after=30)
    w.release(make_spec("2.0.0"))
    assert w.status.current_step == 0  # waiting for Available: no traffic yet
    w.quarantine = (rule("nov", dataVersion="data-2.0.0"),)
    w.step()
    assert w.status.phase == Phase.FAILED and w.weights() == {1: 100}
    assert "RollbackStarted" not in w.timeline_types()


def test_a_git_revert_to_a_quarantined_revision_is_not_restored() -> None:
    w = promoted_world(make_policy(rollback_window=3), releases=2)
    w.quarantine = (rule("old", dataVersion="data-1.0.0"),)
    w.step()
    w.release(make_spec("1.0.0"))  # Git revert to r1's spec
    s = w.status
    assert not s.restoring and s.phase == Phase.FAILED and s.current_revision == 3
    assert w.weights() == {2: 100}


# --------------------------------------------------------------------------------------
# Rollbacks under way, break glass
# --------------------------------------------------------------------------------------


def test_a_rollback_target_quarantined_meanwhile_is_replaced_by_the_next_clean_one() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=3, ready_after=60)
    w.run(120)  # r1 and r2 retired: a rollback must scale them up
    w.act("rollback", value="bad answers", user="oncall")
    assert w.status.phase == Phase.ROLLING_BACK and w.status.stable_revision == 2
    w.quarantine = (data(2),)
    w.step()
    s = w.status
    assert s.phase == Phase.ROLLING_BACK and s.stable_revision == 1
    assert w.weights() == {3: 100}  # nothing moved to r2
    decided = [e for e in s.timeline if e.type == "RollbackDecided"][-1]
    assert "rollback target r2 is quarantined by Quarantine risk/poison entry data-r2" in (
        decided.message
    )
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.weights() == {1: 100}


def test_a_rollback_whose_only_target_is_quarantined_holds_where_traffic_is() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=60)
    w.run(120)
    w.act("rollback", value="bad answers", user="oncall")
    w.quarantine = (data(1),)
    w.run(300)
    s = w.status
    assert s.phase == Phase.ROLLING_BACK and w.weights() == {2: 100}
    assert w.condition("Stalled")[:2] == ("True", "QuarantineHold")
    assert "held, target r1 is quarantined" in s.message


def test_break_glass_skips_quarantined_revisions() -> None:
    w = promoted_world(releases=3)
    w.quarantine = (rule("two", modelDigest=make_spec("2.0.0").model.artifact_digest),)
    w.step()
    w.act("rollback", value="r3 answers wrong", user="oncall")
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.status.stable_revision == 1 and w.weights() == {1: 100}


def test_a_candidate_failing_analysis_goes_back_to_the_stable_then_on_to_a_clean_one() -> None:
    """The stable being quarantined mid-rollout does not stop the rollout (the candidate
    replaces it); a failing candidate returns to it, then the quarantine moves on."""
    w = promoted_world(releases=2)
    w.release(make_spec("3.0.0"))
    at_step(w, 1)
    w.quarantine = (data(2),)
    w.step()
    assert w.status.phase in (Phase.PROGRESSING, Phase.PAUSED)
    assert w.condition("Degraded")[:2] == ("True", "Quarantined")
    w.verdicts = lambda _r, _t: FAIL
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK and x.status.stable_revision == 1)
    assert w.weights() == {1: 100}


def test_marks_survive_in_history_and_suspect_after_is_judged_by_time() -> None:
    w = promoted_world(releases=1)
    w.run(3600)
    cut = w.now
    w.run(3600)
    for n in (2, 3):
        w.release(make_spec(f"{n}.0.0"))
        w.settle()
    after = (cut - timedelta(seconds=0)).isoformat()
    w.quarantine = (rule("since", datasetRef=DATASET, suspectAfter=after),)
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.status.stable_revision == 1 and w.status.quarantined == "r3,r2"
    assert isinstance(w.status.history[0].created_at, datetime)
