"""Events about a release's workloads: shape, API limits and best-effort delivery."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime

import pytest
from kubernetes import client

from rewind.adapters.base import OwnerRef
from rewind.adapters.events import EventRecorder, build_event, truncate_message

OWNER = OwnerRef(name="fraud", uid="0b7c6a2e-1111-2222-3333-444455556666")
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_event_involves_the_release_and_names_the_reporter() -> None:
    event = build_event(OWNER, "shop", "Warning", "RollbackDecided", "error-rate 0.12", NOW)
    assert event["involvedObject"] == {
        "apiVersion": "rewind.dev/v1alpha1",
        "kind": "ModelRelease",
        "name": "fraud",
        "namespace": "shop",
        "uid": OWNER.uid,
    }
    assert event["metadata"] == {"generateName": "fraud.", "namespace": "shop"}
    assert (event["type"], event["reason"], event["message"]) == (
        "Warning",
        "RollbackDecided",
        "error-rate 0.12",
    )
    assert event["source"] == {"component": "rewind-operator"}
    assert event["reportingComponent"] == "rewind-operator"
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2025-01-02T03:04:05Z"


def test_bad_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="Normal or Warning"):
        build_event(OWNER, "shop", "Error", "R", "m", NOW)  # type: ignore[arg-type]


def test_messages_are_cut_to_the_api_limit_in_bytes_without_splitting_characters() -> None:
    assert truncate_message("short") == "short"
    cut = truncate_message("é" * 1000)  # 2000 bytes
    assert len(cut.encode()) <= 1024 and cut.endswith("...")
    assert cut.rstrip(".").strip("é") == ""
    assert build_event(OWNER, "shop", "Normal", "R" * 300, "m", NOW)["reason"] == "R" * 128


def test_recorder_swallows_delivery_failures(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{port}"
    config.retries = 0
    recorder = EventRecorder(client.ApiClient(config), instance="test", request_timeout=2)
    with caplog.at_level(logging.WARNING):
        asyncio.run(recorder.post(OWNER, "shop", "Normal", "Promoted", "r3 is stable"))
    assert "could not record event Promoted" in caplog.text
