"""Notifications from the real operator to a real HTTP receiver on loopback: what is sent,
and that a receiver outage and an operator killed mid-delivery neither lose nor repeat a
message (the outbox is in the status, stored with the entries it reports)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from rewind.adapters.webhooks import url_env
from tests.conftest import OperatorProcess, wait_for
from tests.receiver import Receiver
from tests.sandbox.operator_helpers import (
    ANNOTATION_APPROVE,
    BROKEN,
    Rewind,
    canary,
    policy_manifest,
    release_manifest,
)

pytestmark = pytest.mark.sandbox

NAME = "chatbot"
ARGS = ("--notifier", "oncall=webhook", "--notify-max-backoff", "1s",
        "--argocd-url", "https://argocd.example.com")


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    hook = Receiver().start()
    yield hook
    hook.stop()


def start(operator: OperatorProcess) -> None:
    operator.stop()
    operator.start(*ARGS)


def manifest(version: int) -> dict[str, Any]:
    """Tracked by an Argo CD Application named chat (label tracking, Argo CD's default)."""
    body = release_manifest(NAME, "notify", version=version)
    return {**body, "metadata": {"name": NAME, "labels": {"app.kubernetes.io/instance": "chat"}}}


def kinds(receiver: Receiver) -> list[tuple[str, int]]:
    return [(b["kind"], b["revision"]) for b in receiver.bodies()]


def records(rw: Rewind) -> list[dict[str, Any]]:
    return list(rw.status(NAME).get("notifications") or [])


def test_messages_survive_a_receiver_outage_and_an_operator_killed_while_delivering(
    rw: Rewind, operator: OperatorProcess, receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(url_env("oncall"), receiver.url)
    start(operator)
    policy = policy_manifest("notify", canary((30, "1h")), mode="approval",
                             approval_timeout="10m")
    policy["spec"]["notifications"] = {"targets": ["oncall", "nowhere"]}
    rw.apply(policy)
    rw.apply(manifest(1))
    rw.wait_phase(NAME, "Promoted", stable=1, timeout=60)
    wait_for("the Promoted message", lambda: kinds(receiver) == [("Promoted", 1)], 30)
    wait_for("its delivery recorded", lambda: [
        (r["target"], r["state"]) for r in records(rw)] == [
        ("oncall", "Sent"), ("nowhere", "Failed")], 30)
    failed = records(rw)[1]
    assert failed["error"] == ("no notifier target named 'nowhere' is configured in the "
                               "operator (configured: oncall)")

    # r2 is broken: the approval request carries the evidence, deadline and commands.
    rw.set_error_rate(NAME, 2, BROKEN)
    rw.apply(manifest(2))
    rw.wait_phase(NAME, "AwaitingApproval", candidate=2, timeout=60)
    wait_for("the approval request", lambda: ("ApprovalRequested", 2) in kinds(receiver), 30)
    asked = next(b for b in receiver.bodies() if b["kind"] == "ApprovalRequested")
    assert asked["severity"] == "critical"
    assert asked["decision"]["requiredApprovers"] == 1 and asked["decision"]["expiresAt"]
    assert asked["evidence"][0]["metric"] == "error-rate"
    assert asked["evidence"][0]["verdict"] == "Fail" and asked["evidence"][0]["max"] == 0.05
    assert asked["commands"]["approve"] == f"kubectl rewind approve {NAME} -n {rw.namespace}"
    assert asked["links"]["Argo CD"].startswith(
        "https://argocd.example.com/applications/chat?")
    request = next(r for r in receiver.received() if r.json()["kind"] == "ApprovalRequested")
    assert request.headers["idempotency-key"] == asked["id"]

    # The receiver goes down; the rollback's message waits in the outbox, in the status.
    receiver.stop()
    rw.annotate(NAME, ANNOTATION_APPROVE, "true")
    rw.wait_phase(NAME, "RolledBack", stable=1, timeout=30)
    pending = wait_for("the RolledBack message pending in the status", lambda: [
        r for r in records(rw) if r["type"] == "RolledBack" and r["state"] == "Pending"], 30)
    assert pending[0]["target"] == "oncall" and pending[0]["revision"] == 2
    time.sleep(2)  # a few refused attempts
    operator.kill()  # SIGKILL mid-retry: nothing in memory survives
    receiver.start()
    time.sleep(2)
    assert ("RolledBack", 2) not in kinds(receiver)  # nobody left to send it
    start(operator)
    wait_for("the RolledBack message after the restart",
             lambda: ("RolledBack", 2) in kinds(receiver), 30)
    wait_for("its delivery recorded", lambda: all(
        r["state"] != "Pending" for r in records(rw)), 30)

    # Restarted again: everything is recorded as sent, nothing goes out twice.
    start(operator)
    rw.wait_status(NAME, "the restarted operator has reconciled",
                   lambda s: s.get("observedGeneration") == 2, 30)
    time.sleep(3)
    ids = Counter(b["id"] for b in receiver.bodies())
    assert ids and set(ids.values()) == {1}, ids
    assert kinds(receiver) == [("Promoted", 1), ("ApprovalRequested", 2), ("RolledBack", 2)]
    sent = [(r["type"], r["revision"], r["state"]) for r in records(rw)
            if r["target"] == "oncall"]
    assert sent == [("Promoted", 1, "Sent"), ("ApprovalRequested", 2, "Sent"),
                    ("RolledBack", 2, "Sent")]
