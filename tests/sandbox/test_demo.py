"""`make demo` end to end: the whole story against the sandbox, then a re-run in place.

The demo runs as a subprocess exactly as `make demo` runs it (its own operator, revision
runner and traffic generators), in a namespace of its own so a demo someone is watching in
`rewind-demo` is left alone. Its exit code says whether it verified the story; this test
checks the outcomes again from the API server and that no process outlives the demo.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Kubectl, Sandbox
from tests.sandbox.operator_helpers import revision_of

# The demo (re)applies the chart's admission policies, cluster-wide; the human_actions
# fixture applies the same ones and no test removes them, so this needs no exclusive run.
pytestmark = pytest.mark.sandbox

APPROVE = "$ kubectl rewind approve chatbot -n {ns} --context alice"
REFUSED = "user dana may not approve-rollback on modelrelease/chatbot"


def run_demo(sandbox: Sandbox, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **sandbox.env, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rewind_demo.demo", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def release(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        kubectl("get", "modelrelease", name, "-n", ns, "-o", "json").stdout
    )
    return out


def outcomes(body: dict[str, Any]) -> dict[int, str]:
    return {h["revision"]: h["outcome"] for h in body["status"].get("history", [])}


def types(body: dict[str, Any], revision: int) -> list[str]:
    return [e["type"] for e in body["status"].get("timeline", []) if e["revision"] == revision]


def routes(kubectl: Kubectl, ns: str, name: str) -> tuple[dict[str, int], Any]:
    vs = json.loads(kubectl("get", "virtualservice", name, "-n", ns, "-o", "json").stdout)
    rule = vs["spec"]["http"][0]
    weights = {f"r{revision_of(r['destination'])}": r.get("weight", 100) for r in rule["route"]}
    return {s: w for s, w in weights.items() if w > 0}, rule.get("mirror")


def http_routes(kubectl: Kubectl, ns: str, name: str) -> tuple[dict[str, int], Any]:
    """The same from the HTTPRoute of a release on Gateway API (revision Services
    ``<name>-r<N>`` as ``r<N>``), and whether every parent accepted its generation."""
    route = json.loads(kubectl("get", "httproute", name, "-n", ns, "-o", "json").stdout)
    rule = route["spec"]["rules"][-1]
    weights = {b["name"].removeprefix(f"{name}-"): b.get("weight", 1)
               for b in rule["backendRefs"]}
    mirror = [f for f in rule.get("filters") or [] if f["type"] == "RequestMirror"]
    generation = route["metadata"]["generation"]
    accepted = all(
        c["status"] == "True" and c["observedGeneration"] == generation
        for p in route["status"]["parents"] for c in p["conditions"]
    )
    assert accepted, route["status"]
    return {s: w for s, w in weights.items() if w > 0}, mirror or None


def demo_processes(ns: str) -> list[str]:
    """Live processes whose command line names the demo's namespace (its operator)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if ns in cmdline and "rewind" in cmdline and "pytest" not in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.fixture()
def demo_namespace(sandbox: Sandbox, kubectl: Kubectl) -> Iterator[str]:
    ns = f"t-demo-{uuid.uuid4().hex[:6]}"
    yield ns
    run_demo(sandbox, "--down", "--namespace", ns, timeout=120)
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_demo_plays_the_story_and_can_run_again(
    sandbox: Sandbox, kubectl: Kubectl, demo_namespace: str
) -> None:
    ns = demo_namespace
    full = run_demo(sandbox, "--namespace", ns, "--timeout", "420", timeout=480)
    log = f"--- stdout ---\n{full.stdout[-15000:]}\n--- stderr ---\n{full.stderr[-5000:]}"
    assert full.returncode == 0, log
    assert "The story played as expected" in full.stdout, log
    # The human steps go through `kubectl rewind` as real users: dana (no approval verb)
    # is refused by the admission policy, alice and bob approve; the post-mortem follows.
    assert APPROVE.format(ns=ns) in full.stdout, log
    assert REFUSED in full.stdout and "[exit 4]" in full.stdout, log
    assert "The API server recorded the actor: bob" in full.stdout, log
    assert f"# Post-mortem: {ns}/chatbot r2 (RolledBack)" in full.stdout, log
    assert "[FAIL]" not in full.stdout, log

    # v2 promoted through every step, v3 rolled back to it automatically.
    fraud = release(kubectl, ns, "fraud")
    assert fraud["status"]["phase"] == "RolledBack"
    assert fraud["status"]["stableRevision"] == 2
    assert outcomes(fraud)[2] == "Promoted" and outcomes(fraud)[3] == "RolledBack"
    assert types(fraud, 2).count("StepStarted") == 2 and "AnalysisFailed" not in types(fraud, 2)
    assert "RollbackDecided" in types(fraud, 3) and "Approved" not in types(fraud, 3)
    assert routes(kubectl, ns, "fraud") == ({"r2": 100}, None)

    # Have you ever pushed it? A scheduled drill brought v1 (r1, what a rollback would go to)
    # back from its snapshot and passed on mirrored traffic; with that snapshot deleted, the
    # next drill failed and says why.
    timeline = fraud["status"]["timeline"]
    drills = [e for e in timeline if e["type"].startswith("Drill")]
    assert [(e["type"], e["revision"]) for e in drills] == [
        ("DrillStarted", 1), ("DrillPassed", 1), ("DrillStarted", 1), ("DrillFailed", 1)], drills
    assert "(schedule)" in drills[0]["message"] and "mirrored traffic" in drills[1]["message"]
    assert fraud["status"]["lastSuccessfulDrillAt"] == drills[1]["at"]
    last = fraud["status"]["lastDrill"]
    assert (last["verdict"], last["failure"], last["target"]) == ("Failed", "SnapshotMissing", 1)
    assert "could not be re-created" in last["message"]
    assert last["trigger"].startswith("requested by")
    # The breaker tripped on v2's outage, users were on the fallback (read back from the
    # VirtualService), and it reset by itself; never a rollback, r2 stayed the stable.
    breaker = fraud["status"]["breaker"]
    assert (breaker["state"], breaker["trips"]) == ("Closed", 1), breaker
    assert breaker["fallback"] == f"Service fraud-rules.{ns}.svc.cluster.local:8080"
    trips = [e for e in timeline if e["type"].startswith(("Breaker", "Fallback"))]
    assert [(e["type"], e["revision"]) for e in trips] == [
        ("BreakerTripped", 2), ("FallbackInEffect", 2), ("BreakerReset", 2),
        ("BreakerClosed", 2)], trips
    assert "the signal passed" in trips[2]["message"]
    v3 = next(e for e in timeline if e["type"] == "RevisionCreated" and e["revision"] == 3)
    assert drills[-1]["at"] <= trips[0]["at"] and trips[-1]["at"] <= v3["at"]
    assert "RollbackStarted" not in types(fraud, 2)
    # As kubectl showed it while tripped (the BREAKER column), and as Events.
    assert re.search(r"^ +fraud +Promoted +canary +2 +0 +0 +Tripped ", full.stdout, re.M), log
    events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    reasons = {(e["reason"], e["type"]) for e in events
               if e["involvedObject"]["kind"] == "ModelRelease"
               and e["involvedObject"]["name"] == "fraud"}
    assert {("DrillPassed", "Normal"), ("DrillFailed", "Warning"),
            ("BreakerTripped", "Warning"), ("BreakerReset", "Normal")} <= reasons, reasons

    # The drift waited for a human, who approved.
    chatbot = release(kubectl, ns, "chatbot")
    assert chatbot["status"]["phase"] == "RolledBack"
    assert chatbot["status"]["stableRevision"] == 1
    assert outcomes(chatbot)[2] == "RolledBack"
    assert {"ApprovalRequested", "Approved"} <= set(types(chatbot, 2))
    # Two people, by the names the API server authenticated (client certificates).
    assert [e["user"] for e in chatbot["status"]["timeline"] if e["type"] == "Approved"] == [
        "alice", "bob"]
    asked = next(e for e in chatbot["status"]["timeline"] if e["type"] == "ApprovalRequested")
    assert "score-psi" in asked["message"]
    assert "rewind.dev/approve-rollback" not in chatbot["metadata"].get("annotations", {})
    assert routes(kubectl, ns, "chatbot") == ({"r1": 100}, None)

    # The shadow, on Gateway API, never served users and was rejected.
    recommender = release(kubectl, ns, "recommender")
    assert recommender["status"]["phase"] == "Failed"
    assert recommender["status"]["stableRevision"] == 1
    assert outcomes(recommender)[2] == "Failed"
    assert http_routes(kubectl, ns, "recommender") == ({"r1": 100}, None)
    assert "HTTPRoute sends 100% to r1" in full.stdout
    assert "never answered a user" in full.stdout

    # A rollback target you can trust: credit rolled back past r3 (quarantined: trained on
    # the poisoned export) and r2 (its file replaced in the store) to r1, and said why.
    credit = release(kubectl, ns, "credit")
    assert credit["status"]["phase"] == "RolledBack"
    assert credit["status"]["stableRevision"] == 1
    assert credit["status"]["quarantined"] == "r4,r3"
    assert routes(kubectl, ns, "credit") == ({"r1": 100}, None)
    r2 = next(h for h in credit["status"]["history"] if h["revision"] == 2)
    assert r2["integrity"]["verdict"] == "Failed" and "has digest" in r2["integrity"]["message"]
    decided = " ".join(e["message"] for e in credit["status"]["timeline"]
                       if e["type"] == "RollbackDecided")
    assert f"r3 skipped: quarantined by {ns}/poison-nov#nov-export" in decided
    assert "rollback target r2's artifact failed verification" in decided
    assert "rolling back from r4 to r1 instead" in decided
    assert "credit r2's tampered artifact was refused as a rollback target" in full.stdout
    # Its MLflow alias followed the routes back to version 1 (read from MLflow by the demo's
    # own check, and by the operator into the status).
    assert "[ok] credit: MLflow's production alias names version 1 again" in full.stdout
    assert credit["status"]["registry"]["version"] == "1"
    assert any(e["type"] == "RegistryAliasMoved" and e["revision"] == 1
               for e in credit["status"]["timeline"])

    # The sandbox has no mesh data plane: the traffic generator reports Istio's metrics, and
    # the demo's releases say so (traffic.sidecar: Ignore), so none is reported unmeasured.
    for body in (fraud, chatbot, recommender):
        assert body["spec"]["traffic"]["sidecar"] == "Ignore"
        assert "SidecarMissing" not in {e["type"] for e in body["status"].get("timeline", [])}
        assert not any(c["reason"] == "SidecarMissing" for c in body["status"]["conditions"])

    # Nothing outlives the demo: operator gone, every model server stopped.
    assert demo_processes(ns) == []
    runner_pids = Path(sandbox.env["SANDBOX_DIR"]) / "demo" / ns / "runner-pids.json"
    assert json.loads(runner_pids.read_text()) == {}
    leftover = [p.name for p in sandbox.targets_dir.glob("*.json") if ns in p.name]
    assert leftover == []

    # Safe to run twice: the quick story in the same namespace starts from scratch.
    again = run_demo(sandbox, "--namespace", ns, "--quick", "--timeout", "300", timeout=360)
    log = f"--- stdout ---\n{again.stdout[-15000:]}\n--- stderr ---\n{again.stderr[-5000:]}"
    assert again.returncode == 0, log
    assert "deleting the previous demo's objects" in again.stdout, log
    fraud = release(kubectl, ns, "fraud")
    assert fraud["status"]["phase"] == "RolledBack"
    assert fraud["status"]["stableRevision"] == 1
    assert outcomes(fraud) == {1: "Promoted", 2: "RolledBack"}
    chatbot = release(kubectl, ns, "chatbot")
    assert chatbot["status"]["phase"] == "RolledBack"
    assert [e["user"] for e in chatbot["status"]["timeline"] if e["type"] == "Approved"] == [
        "alice", "bob"]
    assert demo_processes(ns) == []
