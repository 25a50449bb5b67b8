"""`kubectl rewind` rendering over statuses recorded from a real run.

tests/unit/data/cli/*.json were read from the sandbox by tests/sandbox/test_cli.py (run it
with REWIND_RECORD_CLI=tests/unit/data/cli to record them again): the ModelRelease, its
RolloutPolicy, Deployments and revision snapshots at four moments of one release: r2 paused
at its manual gate, r3's rollback awaiting two approvers, one of two approvals given, and
r3 rolled back (after an approved rollback, a retry, a rejection and a break glass)."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from rewind.api import ModelReleaseStatus
from rewind.cli import main as cli_main
from rewind.cli import render, report, views

DATA = Path(__file__).parent / "data" / "cli"


@cache
def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


def last_event(body: dict[str, Any]) -> datetime:
    stamp = body["status"]["timeline"][-1]["at"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def view_of(name: str, later: float = 5.0) -> dict[str, Any]:
    data = recorded(name)
    now = last_event(data["release"]) + timedelta(seconds=later)
    return views.release_view(data["release"], data["policy"], data["deployments"], now)


def text(renderable: Any, color: bool = False) -> str:
    console = Console(width=150, record=True, no_color=not color, force_terminal=color,
                      highlight=False, file=io.StringIO())
    console.print(renderable)
    return console.export_text(styles=color)


def test_a_release_at_its_manual_gate_shows_the_split_the_clock_and_the_command() -> None:
    view = view_of("paused-at-gate")
    ns = view["namespace"]
    assert (view["phase"], view["stableRevision"], view["candidateRevision"]) == ("Paused", 1, 2)
    assert [(r["revision"], r["roles"], r["weight"]) for r in view["revisions"]] == [
        (2, ["candidate", "current"], 30), (1, ["stable"], 70)]
    assert view["revisions"][0]["pods"]["ready"] == 1
    assert view["step"]["label"] == "canary step 1/1 at 30%" and view["step"]["manual"]
    tree = text(render.release_tree(view))
    assert f"ModelRelease {ns}/chatbot  (model chatbot, policy gated, canary)" in tree
    assert "r2 candidate current  Progressing  weight 30%  pods 1/1 ready" in tree
    assert "model 2.0.0 sha256:000000000000  image sha256:cccccccccccc  data d2" in tree
    assert re.search(r"Traffic  r1 70%, r2 30%  in effect since \d\d:\d\d:\d\dZ", tree)
    assert "manual gate, waiting " in tree and f"kubectl rewind promote chatbot -n {ns}" in tree
    assert "Analysis" not in tree  # no round yet at this moment


def test_a_pending_decision_shows_its_evidence_deadline_approvals_and_commands() -> None:
    view = view_of("awaiting-approval", later=60)
    pd = view["pendingDecision"]
    assert pd["requiredApprovers"] == 2 and pd["approvals"] == []
    assert pd["onTimeout"] == "Rollback"
    assert 0 < pd["remaining"] <= 540
    assert [(m["metric"], m["valueText"], m["verdict"]) for m in pd["evidence"]] == [
        ("error-rate", "0.5", "Fail")]
    tree = text(render.release_tree(view))
    assert "Decision pending  Rollback r3 -> r2  approvals 0/2  expires " in tree
    assert ", then Rollback)" in tree
    assert "error-rate 0.5 (max 0.05) Fail" in tree
    assert f"approve: kubectl rewind approve chatbot -n {view['namespace']}" in tree
    assert "held while the decision below is pending" in tree
    assert "Degraded=True (AnalysisFailed)" in tree

    one = text(render.release_tree(view_of("one-of-two-approvals")))
    assert "approvals 1/2" in one and "approved by rewind-admin at " in one


def test_colour_only_where_asked_for() -> None:
    view = view_of("awaiting-approval")
    assert "\x1b[" not in text(render.release_tree(view))
    coloured = text(render.release_tree(view), color=True)
    assert "\x1b[" in coloured and "AwaitingApproval" in coloured


def test_history_lists_every_revision_with_its_outcome_and_times() -> None:
    data = recorded("rolled-back")
    rows = views.history_view(data["release"], data["snapshots"])
    assert [(r["revision"], r["outcome"], r["roles"]) for r in rows] == [
        (1, "Retired", []), (2, "Promoted", ["stable"]),
        (3, "RolledBack", ["candidate", "current"])]
    assert rows[2]["reason"].startswith("break glass by rewind-admin: PII in outputs")
    assert rows[1]["rolloutSeconds"] > 0
    table = text(render.history_table("chatbot", rows))
    assert re.search(r"r3 \(candidate, current\)\s+RolledBack", table), table
    # A revision the status no longer holds is still listed from its snapshot's record.
    trimmed = json.loads(json.dumps(data["release"]))
    trimmed["status"]["history"] = trimmed["status"]["history"][1:]
    again = views.history_view(trimmed, data["snapshots"])
    assert again[0]["revision"] == 1 and again[0]["source"] == "chatbot-r1"
    assert again[0]["outcome"] == "Retired"


def snapshot_spec(revision: int) -> Any:
    data = recorded("rolled-back")
    snapshot = next(s for s in data["snapshots"] if s["metadata"]["name"] == f"chatbot-r{revision}")
    return views.snapshot_spec(snapshot)


def test_diff_names_every_changed_field_and_the_sections_that_did_not_change() -> None:
    data = recorded("rolled-back")
    rows = views.history_view(data["release"], data["snapshots"])
    diff = views.diff_view("chatbot", 2, 3, snapshot_spec(2), snapshot_spec(3), rows)
    assert [(c["path"], c["from"], c["to"]) for c in diff["changes"]] == [
        ("model.artifactDigest", "sha256:" + "0" * 63 + "2", "sha256:" + "0" * 63 + "3"),
        ("model.artifactURI", "s3://models/chatbot/2.0.0/model.onnx",
         "s3://models/chatbot/3.0.0/model.onnx"),
        ("model.version", "2.0.0", "3.0.0"),
        ("data.version", "d2", "d3"),
    ]
    assert diff["from"]["outcome"] == "Promoted" and diff["to"]["outcome"] == "RolledBack"
    assert diff["unchanged"] == ["serving image, args and env", "environment", "serving",
                                 "traffic", "policy"]
    shown = text(render.diff_table(diff))
    assert "chatbot: r2 (Promoted, spec " in shown and "model.version" in shown


def test_diff_of_env_args_image_and_lineage() -> None:
    old = snapshot_spec(2)
    new = old.model_copy(deep=True)
    new.code.image = "registry.example.com/model-server@sha256:" + "d" * 64
    new.code.args = ["--workers=4"]
    new.code.env = [*old.code.env, type(old.code)(image=old.code.image,
                                                   env=[{"name": "LOG_LEVEL",
                                                         "value": "debug"}]).env[0]]
    assert new.data is not None
    new.data.lineage = {"mlflowRunId": "8f2"}
    changes = {c["path"]: (c["change"], c["from"], c["to"])
               for c in views.spec_changes(old, new)}
    assert changes["code.image"][0] == "changed"
    assert changes["code.args"] == ("changed", "[]", '["--workers=4"]')
    assert changes["code.env[LOG_LEVEL]"] == ("added", "", "debug")
    assert changes["data.lineage.mlflowRunId"] == ("added", "", "8f2")
    assert views.spec_changes(old, old) == []


def test_the_post_mortem_states_durations_decisions_evidence_and_changes() -> None:
    data = recorded("rolled-back")
    body = data["release"]
    status = ModelReleaseStatus.model_validate(body["status"])
    assert report.incident_revision(status) == 3 and report.base_revision(status, 3) == 2
    rows = views.history_view(body, data["snapshots"])
    diff = views.diff_view("chatbot", 2, 3, snapshot_spec(2), snapshot_spec(3), rows)
    now = last_event(body) + timedelta(minutes=5)
    md = report.report(body, None, diff, now)
    ns = body["metadata"]["namespace"]
    assert md.startswith(f"# Post-mortem: {ns}/chatbot r3 (RolledBack)\n")
    for heading in ("## Summary", "## Durations", "## Decisions and who made them",
                    "## Evidence", "## What changed (r2 -> r3)", "## Timeline",
                    "## Limits of this record"):
        assert heading in md
    # Three attempts: released, retried after the approved rollback, rolled back by hand.
    assert md.count("### Attempt ") == 2
    assert "### Attempt 2: Retry by `rewind-admin`" in md
    assert "| proposed -> decided (waiting for people) |" in md
    assert "| rollback decided -> traffic reverted (read back from the router) |" in md
    assert "**Approved** by `rewind-admin`: rollback of r3 approved by rewind-admin (1/2)" in md
    assert "**Approved** by `dev-user`: rollback of r3 approved by dev-user (2/2)" in md
    assert "**Rejected** by `dev-user`" in md and "**BreakGlassRollback** by `rewind-admin`" in md
    assert "| `model.version` | 2.0.0 | 3.0.0 |" in md
    assert "| error-rate | 0.5 | max 0.05 | Fail |" in md
    # Blameless and factual: no words of fault or cause.
    for word in ("fault", "blame", "caused", "mistake", "should have", "root cause"):
        assert word not in md.lower().replace("assigns no fault", "")


def test_the_report_of_a_first_revision_has_nothing_to_compare_with() -> None:
    body = recorded("paused-at-gate")["release"]
    md = report.report(body, 1, None, last_event(body))
    assert md.startswith(f"# Post-mortem: {body['metadata']['namespace']}/chatbot r1 (Promoted)")
    assert "| released against | nothing (first release) |" in md
    assert "No breach, decision or revert of this revision is in the timeline." in md


def test_an_action_is_answered_from_the_ledger_and_the_same_decision_entries() -> None:
    status = ModelReleaseStatus.model_validate(recorded("rolled-back")["release"]["status"])
    glass = next(c for c in status.consumed_actions if c.key == "rewind.dev/rollback")
    outcome = views.action_outcome(status, glass.key, glass.value)
    assert outcome is not None and outcome.state == "acted" and outcome.target == "r3"
    assert [e.type for e in outcome.entries] == [
        "BreakGlassRollback", "RollbackStarted", "RolledBack"][: len(outcome.entries)]
    assert views.action_outcome(status, glass.key, "another value") is None


def test_action_values_are_unique_and_reasons_keep_their_words() -> None:
    now = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    assert cli_main.action_value(None, now, "ab12") == f"true-{int(now.timestamp())}-ab12"
    assert cli_main.action_value(" PII, INC-4411 ", now, "ab12") == (
        f"PII, INC-4411 (ref {int(now.timestamp())}-ab12)")
    assert cli_main.action_value(None, now) != cli_main.action_value(None, now)
    assert len(cli_main.action_value("x" * 1000, now)) == 256


def test_approvals_are_checked_before_anything_is_written() -> None:
    waiting = ModelReleaseStatus.model_validate(
        recorded("one-of-two-approvals")["release"]["status"])
    assert cli_main._precheck("approve", waiting, "dev-user") is None
    assert cli_main._precheck("approve", waiting, "rewind-admin") == (
        "rewind-admin already approved this decision (1/2): another approver is needed")
    done = ModelReleaseStatus.model_validate(recorded("rolled-back")["release"]["status"])
    assert cli_main._precheck("reject", done, "x") == (
        "no rollback decision is pending (phase RolledBack)")
    assert cli_main._precheck("rollback", done, "x") is None


@pytest.mark.parametrize("command", ["get", "history", "diff", "approve", "reject",
                                     "rollback", "promote", "retry", "report"])
def test_every_command_has_help_with_examples_and_exit_codes(command: str) -> None:
    result = CliRunner().invoke(cli_main.cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output and "Exit codes:" in result.output
    for option in ("--context", "--namespace", "--kubeconfig"):
        assert option in result.output


def test_bad_arguments_exit_2() -> None:
    result = CliRunner().invoke(cli_main.cli, ["diff", "chatbot", "r2", "three"])
    assert result.exit_code == 2 and "is not a revision" in result.output
    result = CliRunner().invoke(cli_main.cli, ["rollback", "chatbot"])
    assert result.exit_code == 2 and "--reason" in result.output


def test_durations_read_as_a_human_writes_them() -> None:
    assert [views.duration(s) for s in (0.25, 9.94, 42, 130, 3900, 90000)] == [
        "0.2s", "9.9s", "42s", "2m10s", "1h05m", "1d1h"]


class _Settled:
    """A cluster whose release already settled when the plugin first reads it."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def release(self, name: str) -> dict[str, Any]:
        return self.body


def test_a_rollback_that_settled_before_the_first_read_is_reported_to_its_end() -> None:
    body = json.loads(json.dumps(recorded("rolled-back")["release"]))
    status = ModelReleaseStatus.model_validate(body["status"])
    second = [c for c in status.consumed_actions if c.key == "rewind.dev/approve-rollback"][1]
    assert second.at is not None and second.gone_at is not None
    # The status as it was once the approved rollback settled (before the later retry).
    body["status"]["timeline"] = [
        e for e in body["status"]["timeline"]
        if datetime.fromisoformat(e["at"].replace("Z", "+00:00")) <= second.gone_at]
    assert body["status"]["timeline"][-1]["type"] == "RolledBack"
    out = io.StringIO()
    console = Console(file=out, width=200, no_color=True, highlight=False)
    result: dict[str, Any] = {}
    code = cli_main._await_outcome(
        _Settled(body), "chatbot", second.key, second.value,  # type: ignore[arg-type]
        second.at - timedelta(seconds=1), 5.0, console, False, result)
    assert code == 0
    assert [e["type"] for e in result["entries"]] == ["Approved", "RollbackStarted", "RolledBack"]
    assert result["phase"] == "RolledBack"
    assert out.getvalue().count("RolledBack r3") == 1
