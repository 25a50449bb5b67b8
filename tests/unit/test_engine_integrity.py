"""Artifact integrity in the engine (issue 13, item 1): a revision gets traffic only once its
artifact is verified, as a candidate and again as a rollback target; a failed verification
refuses a candidate and makes a rollback pick another target, never route to it anyway; a
warm, verified rollback target is never waited on; a cold one is verified while it scales
up, and only the route write waits.
"""

from __future__ import annotations

import itertools
from typing import Any

from rewind.api import DrillFailure, DrillVerdict, Phase
from rewind.engine import SetRoutes, VerifyArtifact
from tests.unit.test_engine_kit import (
    World,
    actions_of,
    at_step,
    events,
    make_policy,
    make_spec,
    promoted_world,
    routes_of,
)

INTEGRITY = {"reverifyAfter": "1h", "timeout": "10m"}
TAMPERED = "s3://models/fraud/2.0.0/model.onnx has digest sha256:ffff, want sha256:2222"


def policy(**kwargs: Any) -> Any:
    return make_policy(integrity=INTEGRITY, **kwargs)


def ever_routed(w: World, revision: int) -> bool:
    """Any route write of the run gave ``revision`` live weight, header callers or copies."""
    return any(
        revision in r.weights or revision in (r.header_revision, r.mirror_revision)
        for d in w.decisions for r in routes_of(d)
    )


def requests_for(w: World, revision: int) -> int:
    return sum(1 for rev, _ in w.verify_requests if rev == revision)


# --------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------


def test_a_candidate_gets_traffic_only_once_its_artifact_is_verified() -> None:
    w = promoted_world(policy(), verify_seconds=45.0)
    w.release(make_spec("2.0.0"))
    assert w.verifying.keys() == {2}, "verified while it scales up"
    w.run(30)
    # Available for a while, the canary step still waits for the verdict.
    assert w.weights() == {1: 100} and w.status.phase == Phase.PROGRESSING
    assert "r2 gets traffic once its artifact is verified" in w.status.message
    assert not ever_routed(w, 2)
    w.run_until(lambda x: 2 in x.weights())
    entry = next(e for e in w.status.history if e.revision == 2)
    assert entry.integrity is not None and entry.integrity.verdict == "Verified"
    assert "ArtifactVerified" in w.timeline_types()
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2
    assert requests_for(w, 2) >= 1


def test_a_tampered_candidate_is_refused_before_any_traffic_naming_the_file() -> None:
    w = promoted_world(policy(), verify_seconds=20.0, tampered={2: TAMPERED})
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.status.phase == Phase.FAILED)
    assert not ever_routed(w, 2) and w.weights() == {1: 100}
    assert w.outcome(2) == "Failed"
    failed = [e for e in events(w.decisions) if e.reason == "ArtifactVerificationFailed"]
    assert failed and failed[0].type == "Warning" and TAMPERED in failed[0].message
    assert TAMPERED in w.status.message
    entry = next(e for e in w.status.history if e.revision == 2)
    assert entry.integrity is not None and entry.integrity.verdict == "Failed"
    assert entry.integrity.message == TAMPERED


def test_a_candidate_that_fails_reverification_mid_rollout_is_rolled_back() -> None:
    w = promoted_world(policy(), verify_seconds=5.0)
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.run_until(lambda x: 2 in x.weights())
    # The store's object is replaced: the next verification (after reverifyAfter) fails.
    w.tampered[2] = TAMPERED
    w.verifying[2] = w.now  # a re-verification finishing now
    w.step()
    w.run_until(lambda x: x.status.phase in (Phase.ROLLED_BACK, Phase.FAILED))
    assert w.weights() == {1: 100}
    assert any(TAMPERED in e.message for e in w.status.timeline)


def test_without_an_integrity_policy_nothing_is_verified() -> None:
    w = promoted_world(make_policy(), releases=3)
    w.act("rollback", value="bad model")
    w.settle()
    assert w.verify_requests == []
    assert all(not actions_of(d, VerifyArtifact) for d in w.decisions)
    assert all(e.integrity is None for e in w.status.history)


# --------------------------------------------------------------------------------------
# Rollback targets
# --------------------------------------------------------------------------------------


def test_a_rollback_to_a_warm_verified_target_does_not_wait() -> None:
    w = promoted_world(policy(keep_previous_warm="2h"), releases=2, verify_seconds=120.0)
    w.run(300)  # the background verification of r1 (the rollback target) finishes
    r1 = next(e for e in w.status.history if e.revision == 1)
    assert r1.integrity is not None and r1.integrity.verdict == "Verified"
    before = len(w.verify_requests)
    d = w.act("rollback", value="drift")
    assert w.weights() == {1: 100}, "one route write, in the same reconcile"
    assert any(r.weights == {1: 100} for r in routes_of(d))
    assert w.status.phase == Phase.ROLLED_BACK
    assert len(w.verify_requests) == before, "a fresh verdict is not verified again"


def test_a_cold_target_is_verified_while_it_scales_up_and_only_the_route_waits() -> None:
    w = promoted_world(
        policy(keep_previous_warm="1m"), releases=2, verify_seconds=0.0, ready_after=20.0
    )
    w.run(7200)  # r1 is cold (scaled down) and its verdict is older than reverifyAfter
    w.verify_seconds = 60.0
    w.verified.clear()
    r1 = next(e for e in w.status.history if e.revision == 1)
    assert w.replicas(1) == 0
    w.status.history[w.status.history.index(r1)].integrity = None  # never verified
    w.act("rollback", value="drift")
    assert w.status.phase == Phase.ROLLING_BACK
    assert 1 in w.verifying, "verification starts with the scale-up, not after it"
    assert w.replicas(1) > 0
    w.run(30)  # Available after 20 s; the verdict comes at 60 s
    assert w.weights() == {2: 100}
    assert "r1 gets traffic once its artifact is verified" in w.status.message
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.weights() == {1: 100}


def test_a_tampered_rollback_target_is_passed_over_for_the_next_known_good() -> None:
    w = promoted_world(
        policy(keep_previous_warm="1m"), releases=3, verify_seconds=10.0, ready_after=5.0
    )
    w.run(600)
    # r2's object is replaced in the store after its release; its verdict is stale.
    w.tampered[2] = TAMPERED
    for e in w.status.history:
        if e.revision == 2:
            e.integrity = None
    w.verified.pop(2, None)
    since = len(w.decisions)
    w.act("rollback", value="poisoned")
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.status.stable_revision == 1 and w.weights() == {1: 100}
    assert not any(r.weights.get(2) for d in w.decisions[since:] for r in routes_of(d))
    decided = [e for e in w.status.timeline if e.type == "RollbackDecided"]
    assert decided and "rollback target r2's artifact failed verification" in decided[-1].message
    assert TAMPERED in decided[-1].message and "to r1 instead" in decided[-1].message
    assert "could not be restored: its artifact failed verification" in next(
        e for e in w.status.history if e.revision == 2
    ).reason


def test_no_verified_target_holds_where_traffic_is_and_says_so() -> None:
    w = promoted_world(policy(keep_previous_warm="1m"), releases=2, verify_seconds=10.0)
    w.run(600)
    w.tampered[1] = TAMPERED
    for e in w.status.history:
        if e.revision == 1:
            e.integrity = None
    w.verified.pop(1, None)
    since = len(w.decisions)
    w.act("rollback", value="poisoned")
    w.run(120)
    assert w.weights() == {2: 100}
    assert w.condition("Stalled")[0] == "True"
    assert "no other known-good revision passes it" in w.condition("Stalled")[2]
    assert not any(r.weights.get(1) for d in w.decisions[since:] for r in routes_of(d))


def test_the_would_be_rollback_target_is_reverified_before_its_verdict_ages_out() -> None:
    w = promoted_world(policy(keep_previous_warm="4h"), releases=2, verify_seconds=30.0)
    w.run(4 * 3600, dt=60.0)
    times = [t for rev, t in w.verify_requests if rev == 1]
    assert 4 <= len(times) <= 6, times  # about once per reverifyAfter (1h), early
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(3000 <= g <= 3600 for g in gaps), gaps
    # The stable that serves is not re-verified in the background.
    assert requests_for(w, 2) <= 1


def test_a_tampered_would_be_target_degrades_the_release_and_break_glass_skips_it() -> None:
    w = promoted_world(policy(keep_previous_warm="4h"), releases=3, verify_seconds=10.0)
    w.run(600)
    w.tampered[2] = TAMPERED
    w.run(2 * 3600, dt=60.0)  # the background re-verification of r2 fails
    assert w.condition("Degraded")[:2] == ("True", "ArtifactVerificationFailed")
    assert "a rollback now would go to r1" in w.condition("Degraded")[2]
    w.act("rollback", value="drift")
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.status.stable_revision == 1


# --------------------------------------------------------------------------------------
# Drills
# --------------------------------------------------------------------------------------


def test_a_drill_fails_when_the_target_artifact_does_not_verify() -> None:
    spec = policy(keep_previous_warm="1m")
    spec = spec.model_copy(update={"drill": spec.drill})
    w = promoted_world(spec, releases=2, verify_seconds=10.0)
    w.run(600)
    w.tampered[1] = TAMPERED
    for e in w.status.history:
        if e.revision == 1:
            e.integrity = None
    w.verified.pop(1, None)
    w.act("drill", user="alice")
    w.run_until(lambda x: x.status.drill is None and x.status.last_drill is not None)
    last = w.status.last_drill
    assert last is not None and last.verdict == DrillVerdict.FAILED
    assert last.failure == DrillFailure.ARTIFACT_UNVERIFIABLE
    assert TAMPERED in last.message and "a rollback would pass it over" in last.message
    assert w.weights() == {2: 100}
    assert isinstance(w.routes, SetRoutes)


def test_a_cold_target_is_verified_again_though_its_verdict_is_fresh() -> None:
    """Its pods come back from zero and read the store again: a verdict reached before that
    does not count, however recent (a warm target's running pods read it when verified)."""
    w = promoted_world(policy(keep_previous_warm="1m"), releases=3, verify_seconds=10.0)
    w.run(120)
    assert w.replicas(2) == 0 and w.replicas(1) == 0
    r2 = next(e for e in w.status.history if e.revision == 2)
    assert r2.integrity is not None and r2.integrity.verdict == "Verified"
    assert r2.integrity.at is not None and (w.now - r2.integrity.at).total_seconds() < 3600
    w.tampered[2] = TAMPERED
    since = len(w.decisions)
    w.act("rollback", value="drift")
    r2 = next(e for e in w.status.history if e.revision == 2)
    assert r2.scaled_up_at == w.now
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.status.stable_revision == 1 and w.weights() == {1: 100}
    assert not any(r.weights.get(2) for d in w.decisions[since:] for r in routes_of(d))
