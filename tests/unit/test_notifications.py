"""Notifications: the outbox derived from status transitions, the messages, and their
delivery to a real HTTP receiver on loopback (up, refusing, down and back, hanging)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rewind.adapters.webhooks import Deliveries, Target, parse_target, url_env
from rewind.api import (
    MAX_NOTIFICATIONS,
    ApprovalRecord,
    HistoryEntry,
    Measurement,
    ModelReleaseStatus,
    NotificationRecord,
    NotificationState,
    Outcome,
    PendingDecision,
    Phase,
    RolloutPolicySpec,
    TimelineEntry,
    Verdict,
)
from rewind.notifications import (
    Delivery,
    ReleaseRef,
    argocd_link,
    build_message,
    outbox,
    slack_body,
    targets_for,
    webhook_body,
)
from tests.receiver import Receiver

T0 = datetime(2026, 11, 27, 3, 0, 0, tzinfo=UTC)
RELEASE = ReleaseRef("ml", "chatbot", uid="uid-1",
                     annotations={"argocd.argoproj.io/tracking-id":
                                  "chat-app:rewind.dev/ModelRelease:ml/chatbot"})
EVIDENCE = [
    Measurement(metric="score-psi", value=6.879, value_text="6.879", max=0.25,
                verdict=Verdict.FAIL, at=T0, revision=2),
    Measurement(metric="error-rate", value=0.001, value_text="0.001", max=0.05,
                verdict=Verdict.PASS, at=T0, revision=2),
]
POLICY = RolloutPolicySpec.model_validate({
    "strategy": {"blueGreen": {"previewDuration": "1m"}},
    "rollback": {"mode": "approval",
                 "approval": {"requiredApprovers": 2, "timeout": "5m", "onTimeout": "Rollback"}},
    "notifications": {"targets": ["oncall-slack", "audit"]},
})


def entry(kind: str, seconds: float = 0, revision: int = 2, message: str = "") -> TimelineEntry:
    return TimelineEntry(at=T0 + timedelta(seconds=seconds), type=kind, revision=revision,
                         message=message or f"{kind} of r{revision}")


def awaiting() -> ModelReleaseStatus:
    return ModelReleaseStatus(
        phase=Phase.AWAITING_APPROVAL, stable_revision=1, candidate_revision=2,
        timeline=[entry("RevisionCreated", -60), entry("AnalysisFailed"),
                  entry("ApprovalRequested", message="rollback of r2 to r1 proposed: "
                        "score-psi 6.879 > max 0.25 ... Approve: kubectl annotate ...")],
        pending_decision=PendingDecision(
            reason="score-psi 6.879 > max 0.25", decided_at=T0,
            expires_at=T0 + timedelta(minutes=5), required_approvers=2,
            approvals=[ApprovalRecord(user="rewind-admin", at=T0 + timedelta(seconds=3))],
            evidence=EVIDENCE,
        ),
        history=[HistoryEntry(revision=2, model_version="2.0.0", model_digest="sha256:" + "a" * 64,
                              data_version="5b0e7c2", outcome=Outcome.PROGRESSING)],
    )


# -- the outbox ---------------------------------------------------------------------------


def test_a_notified_entry_becomes_one_pending_message_per_target_and_only_once() -> None:
    before = ModelReleaseStatus(timeline=awaiting().timeline[:2])
    after = awaiting()
    records, dropped = outbox(before, after, uid="uid-1", targets=("oncall-slack", "audit"),
                              delivered={})
    assert dropped == []
    assert [(r.target, r.type, r.state) for r in records] == [
        ("oncall-slack", "ApprovalRequested", NotificationState.PENDING),
        ("audit", "ApprovalRequested", NotificationState.PENDING),
    ]
    assert len({r.id for r in records}) == 2
    # The stored status seen again (next reconcile, or after a restart): nothing new.
    stored = after.model_copy(update={"notifications": records})
    again, _ = outbox(stored, stored, uid="uid-1", targets=("oncall-slack", "audit"),
                      delivered={})
    assert again == records
    # The ids do not depend on the process: the same entry always gives the same id.
    twice, _ = outbox(before, after, uid="uid-1", targets=("oncall-slack", "audit"),
                      delivered={})
    assert [r.id for r in twice] == [r.id for r in records]


def test_entries_that_are_not_worth_a_message_make_none() -> None:
    before = ModelReleaseStatus()
    after = ModelReleaseStatus(timeline=[entry("RevisionCreated"), entry("StepStarted")])
    assert outbox(before, after, uid="u", targets=("a",), delivered={}) == ([], [])


def test_a_delivery_marks_its_record_and_finished_records_make_room_for_pending_ones() -> None:
    before = ModelReleaseStatus(timeline=awaiting().timeline[:2])
    records, _ = outbox(before, awaiting(), uid="u", targets=("a",), delivered={})
    stored = awaiting().model_copy(update={"notifications": records})
    done = {records[0].id: Delivery(NotificationState.SENT, T0 + timedelta(seconds=1))}
    marked, _ = outbox(stored, stored, uid="u", targets=("a",), delivered=done)
    assert marked[0].state == NotificationState.SENT
    assert marked[0].finished_at == T0 + timedelta(seconds=1)

    many = [NotificationRecord(id=f"sent-{i}", state=NotificationState.SENT)
            for i in range(MAX_NOTIFICATIONS)]
    full = ModelReleaseStatus(notifications=many, timeline=[])
    grown = ModelReleaseStatus(notifications=many, timeline=[entry("RolledBack")])
    kept, dropped = outbox(full, grown, uid="u", targets=("a",), delivered={})
    assert dropped == [] and len(kept) == MAX_NOTIFICATIONS
    assert kept[-1].state == NotificationState.PENDING and kept[0].id == "sent-1"


def test_pending_messages_beyond_the_bound_drop_the_oldest() -> None:
    pending = [NotificationRecord(id=f"p-{i}") for i in range(MAX_NOTIFICATIONS)]
    full = ModelReleaseStatus(notifications=pending)
    grown = ModelReleaseStatus(notifications=pending, timeline=[entry("Failed")])
    kept, dropped = outbox(full, grown, uid="u", targets=("a",), delivered={})
    assert [r.id for r in dropped] == ["p-0"]
    assert len(kept) == MAX_NOTIFICATIONS and kept[-1].type == "Failed"


def test_the_policy_names_its_targets_else_the_operator_defaults() -> None:
    assert targets_for(POLICY, ("default",)) == ("oncall-slack", "audit")
    none = POLICY.model_copy(update={"notifications": None})
    assert targets_for(none, ("default",)) == ("default",)
    quiet = RolloutPolicySpec.model_validate({**POLICY.model_dump(by_alias=True),
                                              "notifications": {"targets": []}})
    assert targets_for(quiet, ("default",)) == ()
    with pytest.raises(ValueError, match="twice"):
        RolloutPolicySpec.model_validate({**POLICY.model_dump(by_alias=True),
                                          "notifications": {"targets": ["a", "a"]}})


# -- messages ------------------------------------------------------------------------------


def approval_message() -> Any:
    status = awaiting()
    records, _ = outbox(ModelReleaseStatus(timeline=status.timeline[:2]), status, uid="uid-1",
                        targets=("oncall-slack",), delivered={})
    return build_message(records[0], RELEASE, status, POLICY,
                         argocd_url="https://argocd.example.com/")


def test_an_approval_request_carries_evidence_deadline_commands_and_the_argocd_link() -> None:
    body = webhook_body(approval_message())
    assert body["kind"] == "ApprovalRequested" and body["severity"] == "critical"
    assert body["title"] == "ml/chatbot: rollback of r2 to r1 awaits approval"
    assert body["decision"]["expiresAt"] == "2026-11-27T03:05:00Z"
    assert body["decision"]["onTimeout"] == "Rollback"
    assert body["decision"]["requiredApprovers"] == 2
    assert body["decision"]["approvals"] == [{"user": "rewind-admin", "at": "2026-11-27T03:00:03Z"}]
    assert [(m["metric"], m["valueText"], m["max"], m["verdict"]) for m in body["evidence"]] == [
        ("score-psi", "6.879", 0.25, "Fail"), ("error-rate", "0.001", 0.05, "Pass")]
    assert body["commands"]["approve"] == "kubectl rewind approve chatbot -n ml"
    assert body["commands"]["reject"] == "kubectl rewind reject chatbot -n ml --reason '<why>'"
    assert body["links"]["Argo CD"] == (
        "https://argocd.example.com/applications/chat-app?resource=&node="
        "rewind.dev%2FModelRelease%2Fml%2Fchatbot%2F0")
    assert body["facts"]["model"].startswith("2.0.0 sha256:aaaa")


def test_slack_gets_blocks_with_the_same_facts_and_a_plain_fallback() -> None:
    body = slack_body(approval_message())
    assert body["text"].startswith("ml/chatbot: rollback of r2 to r1 awaits approval: ")
    text = str(body["blocks"])
    assert "`score-psi` = 6.879 (max 0.25): *Fail*" in text
    assert "`kubectl rewind approve chatbot -n ml`" in text
    assert "<https://argocd.example.com/applications/chat-app?" in text
    assert body["blocks"][0]["type"] == "header"


def test_a_late_approval_request_says_the_decision_is_no_longer_pending() -> None:
    status = awaiting()
    records, _ = outbox(ModelReleaseStatus(timeline=status.timeline[:2]), status, uid="u",
                        targets=("a",), delivered={})
    later = status.model_copy(update={"phase": Phase.ROLLED_BACK, "pending_decision": None})
    body = webhook_body(build_message(records[0], RELEASE, later, POLICY))
    assert "decision" not in body and body["evidence"] == []
    assert body["facts"]["decision"] == "no longer pending (see the phase)"
    assert body["text"].startswith("rollback of r2 to r1 proposed")


def test_argocd_links_follow_label_tracking_and_apps_in_other_namespaces() -> None:
    labelled = ReleaseRef("ml", "chat", labels={"app.kubernetes.io/instance": "chat"})
    assert argocd_link("https://cd", labelled).startswith("https://cd/applications/chat?")
    anywhere = ReleaseRef("ml", "chat", annotations={
        "argocd.argoproj.io/tracking-id": "team-a_chat:rewind.dev/ModelRelease:ml/chat"})
    assert argocd_link("https://cd", anywhere).startswith("https://cd/applications/team-a/chat?")
    assert argocd_link("", labelled) == "" and argocd_link("https://cd", RELEASE.__class__(
        "ml", "x")) == ""


def test_targets_are_configured_by_name_and_kind_with_the_url_in_the_environment() -> None:
    env = {url_env("oncall-slack"): "https://hooks.example.com/T/B/x"}
    assert url_env("oncall-slack") == "REWIND_NOTIFIER_URL_ONCALL_SLACK"
    target = parse_target("oncall-slack=slack", env)
    assert (target.name, target.kind) == ("oncall-slack", "slack")
    assert "hooks.example.com" not in repr(target)
    for bad, why in (("oncall-slack", "NAME=KIND"), ("x=teams", "not one of"),
                     ("other=webhook", "REWIND_NOTIFIER_URL_OTHER")):
        with pytest.raises(ValueError, match=why):
            parse_target(bad, env)


# -- delivery to a live receiver -----------------------------------------------------------


def record(ident: str = "id-1", at: datetime | None = None) -> NotificationRecord:
    return NotificationRecord(id=ident, target="hook", type="RolledBack", revision=2,
                              at=at or datetime.now(UTC), message="r2 rolled back")


async def settle(deliveries: Deliveries, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {timeout}s: "
                                 f"{deliveries.finished('ml', 'chatbot')}")
        await asyncio.sleep(0.02)


def deliveries_to(receiver: Receiver, kind: str = "webhook", **options: Any) -> tuple[
        Deliveries, list[tuple[str, str]]]:
    woken: list[tuple[str, str]] = []
    options = {"first_backoff": 0.1, "max_backoff": 0.4, "timeout": 2.0, **options}
    target = Target("hook", kind, receiver.url)  # type: ignore[arg-type]
    return Deliveries({"hook": target}, on_done=lambda ns, n: woken.append((ns, n)),
                      **options), woken


def message_for(rec: NotificationRecord) -> Any:
    status = ModelReleaseStatus(phase=Phase.ROLLED_BACK, stable_revision=1,
                                timeline=[entry("RolledBack")])
    return build_message(rec, RELEASE, status, None)


def test_a_message_is_posted_once_with_its_id_as_idempotency_key() -> None:
    receiver = Receiver().start()

    async def run() -> None:
        deliveries, woken = deliveries_to(receiver)
        rec = record()
        assert deliveries.submit("ml", "chatbot", rec, message_for(rec))
        # Submitting again while in flight (the next reconcile) starts nothing.
        assert not deliveries.submit("ml", "chatbot", rec, message_for(rec))
        await settle(deliveries, lambda: bool(deliveries.finished("ml", "chatbot")), 5)
        assert deliveries.finished("ml", "chatbot")["id-1"].state == NotificationState.SENT
        assert woken == [("ml", "chatbot")]
        # Its outcome is waiting to be stored: still not sent again.
        assert not deliveries.submit("ml", "chatbot", rec, message_for(rec))
        deliveries.acknowledge("ml", "chatbot", {"id-1"})
        assert deliveries.finished("ml", "chatbot") == {}
        await deliveries.close()

    try:
        asyncio.run(run())
    finally:
        receiver.stop()
    [request] = receiver.received()
    assert request.headers["idempotency-key"] == "id-1"
    assert request.headers["content-type"] == "application/json"
    assert request.json()["id"] == "id-1" and request.json()["kind"] == "RolledBack"


def test_a_receiver_that_is_down_gets_the_message_once_it_is_back() -> None:
    receiver = Receiver()  # not started: the port refuses connections

    async def run() -> None:
        deliveries, _ = deliveries_to(receiver)
        rec = record()
        started = time.monotonic()
        deliveries.submit("ml", "chatbot", rec, message_for(rec))
        assert time.monotonic() - started < 0.1  # submit never waits for the receiver
        await asyncio.sleep(1.0)  # a few refused attempts
        assert deliveries.finished("ml", "chatbot") == {}
        assert deliveries.in_flight("ml", "chatbot") == {"id-1"}
        receiver.start()
        await settle(deliveries, lambda: bool(deliveries.finished("ml", "chatbot")), 5)
        assert deliveries.finished("ml", "chatbot")["id-1"].state == NotificationState.SENT
        await deliveries.close()

    try:
        asyncio.run(run())
    finally:
        receiver.stop()
    assert len(receiver.received()) == 1


def test_busy_answers_are_retried_and_refusals_are_final() -> None:
    receiver = Receiver().start()
    answers = iter([503, 429, 200])
    receiver.status = lambda request: 404 if "refused" in request.body.decode() else next(answers)

    async def run() -> None:
        deliveries, _ = deliveries_to(receiver, kind="slack")
        busy, refused = record("busy"), record("refused")
        refused = refused.model_copy(update={"message": "refused"})
        for rec in (busy, refused):
            deliveries.submit("ml", "chatbot", rec, message_for(rec))
        await settle(deliveries, lambda: len(deliveries.finished("ml", "chatbot")) == 2, 10)
        done = deliveries.finished("ml", "chatbot")
        assert done["busy"].state == NotificationState.SENT
        assert done["refused"].state == NotificationState.FAILED
        assert done["refused"].error == "refused: HTTP 404: no such hook"
        await deliveries.close()

    try:
        asyncio.run(run())
    finally:
        receiver.stop()
    bodies = [r.json() for r in receiver.received()]
    assert sum(1 for b in bodies if "refused" in b["text"]) == 1  # never retried
    assert sum(1 for b in bodies if "refused" not in b["text"]) == 3  # 503, 429, 200
    assert all("blocks" in b for b in bodies)


def test_a_hanging_receiver_times_out_and_a_message_too_old_is_given_up() -> None:
    receiver = Receiver().start()
    receiver.delay = 1.0

    async def run() -> None:
        deliveries, _ = deliveries_to(receiver, timeout=0.3, give_up_after=1.5)
        rec = record()
        deliveries.submit("ml", "chatbot", rec, message_for(rec))
        await settle(deliveries, lambda: bool(deliveries.finished("ml", "chatbot")), 10)
        done = deliveries.finished("ml", "chatbot")["id-1"]
        assert done.state == NotificationState.FAILED
        assert done.error.startswith("gave up after ") and "no answer within 0.3s" in done.error
        stale = record("stale", at=datetime.now(UTC) - timedelta(hours=2))
        deliveries.submit("ml", "chatbot", stale, message_for(stale))
        await settle(deliveries, lambda: "stale" in deliveries.finished("ml", "chatbot"), 5)
        gone = deliveries.finished("ml", "chatbot")["stale"]
        assert gone.state == NotificationState.FAILED
        assert gone.error == "not delivered within 1.5s of its event"
        await deliveries.close()

    try:
        asyncio.run(run())
    finally:
        receiver.stop()


def test_an_unknown_target_fails_at_once_naming_the_configured_ones() -> None:
    async def run() -> None:
        deliveries = Deliveries({})
        rec = record().model_copy(update={"target": "pager"})
        assert not deliveries.submit("ml", "chatbot", rec, message_for(rec))
        done = deliveries.finished("ml", "chatbot")["id-1"]
        assert done.state == NotificationState.FAILED
        assert done.error == ("no notifier target named 'pager' is configured in the "
                              "operator (configured: none)")

    asyncio.run(run())
