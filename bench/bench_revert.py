"""How fast does traffic go back to stable? Two measurements, printed as a table.

approval-to-revert: from sending the approval (the merge patch `kubectl annotate ...
rewind.dev/approve-rollback=true` sends) to the VirtualService holding 100% on stable (as
seen by a watch). Target p99 <= 1 s; Flagger
polls its rollback gate once per analysis interval (60 s by default).

breach-to-revert: from the breaching value being visible in Prometheus to the same
VirtualService state, with a 5 s interval and failureLimit 1. Target <= interval + 1 s.

With ``--integrity-mb N``, break-glass-to-revert under a policy that verifies artifacts
(``spec.integrity``), every revision's model an N MB file: from a promoted revision back to
the previous stable, warm and verified, which must not wait for a verification (issue 13);
the table also gives how long one verification of N MB took (RevisionCreated to
ArtifactVerified of each new revision, which waits for it before any traffic).

    .venv/bin/python bench/bench_revert.py [--approval-trials 50] [--breach-trials 8]
    .venv/bin/python bench/bench_revert.py --approval-trials 0 --breach-trials 0 \
        --integrity-mb 512 --integrity-trials 20
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    Gauges,
    Operator,
    WeightsPredicate,
    apply,
    custom_api,
    drop_namespace,
    fresh_namespace,
    policy,
    release,
    sandbox_env,
    status_of,
    summary,
    table,
    vs_watch,
    wait_for,
)

from rewind_demo import targets

NAMESPACE = "rewind-bench-revert"


def on_stable(stable: int) -> WeightsPredicate:
    return lambda weights: weights.get(stable) == 100 and sum(
        1 for w in weights.values() if w > 0) == 1


def candidate_passing(api: Any, name: str, revision: int) -> bool:
    status = status_of(api, NAMESPACE, name)
    return status.get("candidateRevision") == revision and any(
        m.get("verdict") == "Pass" and m.get("revision") == revision
        for m in status.get("analysis", {}).get("measurements", []))


def breach_visible(prometheus_url: str, workload: str) -> float | None:
    """The moment Prometheus answers with the breaching value (None while it doesn't)."""
    promql = f'max(rewind_bench_error_rate{{workload="{workload}"}})'
    for sample in targets.query(prometheus_url, promql):
        if float(sample["value"][1]) > 0.05:
            return time.monotonic()
    return None


def phase_is(api: Any, name: str, phase: str) -> bool:
    return status_of(api, NAMESPACE, name).get("phase") == phase


def timed_revert(api: Any, name: str, annotation: str, value: str, stable: int
                 ) -> float | None:
    """Set ``annotation`` with the merge patch `kubectl annotate` sends and return the
    seconds until a watch sees the VirtualService all on ``stable`` (None: not within 30 s),
    then wait for RolledBack. Timed from the moment the patch is sent: timing from a kubectl
    process's exit would start after the watch may already have seen the revert."""
    with vs_watch(NAMESPACE, name) as wait_weights:
        annotated = time.monotonic()
        api.patch_namespaced_custom_object(
            "rewind.dev", "v1alpha1", NAMESPACE, "modelreleases", name,
            {"metadata": {"annotations": {annotation: value}}},
        )
        reverted = wait_weights(on_stable(stable), 30)
    if reverted is None:
        return None
    wait_for("RolledBack", lambda: phase_is(api, name, "RolledBack"), 60)
    return reverted - annotated


def approval_trials(env: dict[str, str], gauges: Gauges, trials: int) -> list[float]:
    api = custom_api()
    name = "approve"
    apply(env, NAMESPACE, policy("approval", interval="1s", mode="approval",
                                 steps=[{"weight": 50, "pause": {"duration": "1h"}}]))
    apply(env, NAMESPACE, release(name, "approval", 1))
    wait_for("r1 promoted", lambda: status_of(api, NAMESPACE, name).get("stableRevision") == 1,
             120)
    samples: list[float] = []
    for trial in range(trials):
        revision = trial + 2
        gauges.set(f"{name}-r{revision}", 0.5)  # bad from birth: analysis fails at once
        apply(env, NAMESPACE, release(name, "approval", revision))
        wait_for(f"r{revision} awaiting approval",
                 lambda: phase_is(api, name, "AwaitingApproval"), 120)
        took = timed_revert(api, name, "rewind.dev/approve-rollback", "true", stable=1)
        if took is None:
            print(f"trial {trial}: traffic did not revert within 30 s", file=sys.stderr)
            continue
        samples.append(took)
        print(f"approval trial {trial + 1}/{trials}: {samples[-1]:.3f}s", file=sys.stderr)
    return samples


def artifact(directory: Path, name: str, megabytes: int) -> tuple[str, str]:
    """An N MB model file and its digest (written once, in 1 MB chunks)."""
    path = directory / f"{name}.bin"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(megabytes):
            chunk = hashlib.sha256(f"{name}/{i}".encode()).digest() * (1 << 15)
            f.write(chunk)
            digest.update(chunk)
    return path.as_uri(), "sha256:" + digest.hexdigest()


def _at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(entry["at"]).replace("Z", "+00:00"))


def integrity_trials(
    env: dict[str, str], gauges: Gauges, trials: int, megabytes: int, store: Path
) -> tuple[list[float], list[float]]:
    """(break-glass-to-revert samples to a warm verified target, seconds per verification).

    Each trial releases a new revision (verified before any traffic, then promoted), then
    breaks glass: the rollback goes to the previous stable, warm and verified."""
    api = custom_api()
    name = "verified"
    model = artifact(store, "model", megabytes)
    body = policy("verified", interval="1s", mode="automatic",
                  steps=[{"weight": 50, "pause": {"duration": "1s"}}])
    body["spec"]["integrity"] = {"reverifyAfter": "1h", "timeout": "10m"}
    apply(env, NAMESPACE, body)

    def release_of(revision: int) -> dict[str, Any]:
        manifest = release(name, "verified", revision)
        manifest["spec"]["model"]["artifactURI"], manifest["spec"]["model"][
            "artifactDigest"] = model
        gauges.set(f"{name}-r{revision}", 0.0)
        return manifest

    apply(env, NAMESPACE, release_of(1))
    wait_for("r1 promoted", lambda: status_of(api, NAMESPACE, name).get("stableRevision") == 1,
             300)
    samples: list[float] = []
    stable = 1
    for trial in range(trials):
        revision = trial + 2
        apply(env, NAMESPACE, release_of(revision))
        wait_for(f"r{revision} promoted",
                 lambda: status_of(api, NAMESPACE, name).get("stableRevision") == revision  # noqa: B023
                 and phase_is(api, name, "Promoted"), 300)
        took = timed_revert(api, name, "rewind.dev/rollback", f"bench trial {trial}", stable)
        if took is None:
            print(f"trial {trial}: traffic did not revert within 30 s", file=sys.stderr)
            continue
        samples.append(took)
        print(f"integrity trial {trial + 1}/{trials}: {samples[-1]:.3f}s", file=sys.stderr)
    timeline = status_of(api, NAMESPACE, name).get("timeline", [])
    created = {e["revision"]: _at(e) for e in timeline if e["type"] == "RevisionCreated"}
    verified = {e["revision"]: _at(e) for e in timeline if e["type"] == "ArtifactVerified"}
    seconds = [(verified[r] - created[r]).total_seconds()
               for r in sorted(set(created) & set(verified))]
    return samples, seconds


def breach_trials(env: dict[str, str], gauges: Gauges, trials: int) -> list[float]:
    api = custom_api()
    name = "breach"
    apply(env, NAMESPACE, policy("breach", interval="5s", mode="automatic",
                                 steps=[{"weight": 20, "pause": {"duration": "1h"}}]))
    apply(env, NAMESPACE, release(name, "breach", 1))
    wait_for("r1 promoted", lambda: status_of(api, NAMESPACE, name).get("stableRevision") == 1,
             120)
    samples: list[float] = []
    for trial in range(trials):
        revision = trial + 2
        workload = f"{name}-r{revision}"
        gauges.set(workload, 0.0)
        apply(env, NAMESPACE, release(name, "breach", revision))
        wait_for(f"r{revision} analysed and passing",
                 lambda: candidate_passing(api, name, revision), 120)  # noqa: B023
        with vs_watch(NAMESPACE, name) as wait_weights:
            gauges.set(workload, 0.5)
            visible = wait_for("the breach in Prometheus",
                               lambda: breach_visible(env["PROMETHEUS_URL"], workload),  # noqa: B023
                               30)
            reverted = wait_weights(on_stable(1), 60)
        if reverted is None:
            print(f"trial {trial}: no revert within 60 s", file=sys.stderr)
            continue
        samples.append(reverted - visible)
        print(f"breach trial {trial + 1}/{trials}: {samples[-1]:.3f}s", file=sys.stderr)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--approval-trials", type=int, default=50)
    parser.add_argument("--breach-trials", type=int, default=8)
    parser.add_argument("--integrity-mb", type=int, default=0,
                        help="also time approval-to-revert with N MB verified artifacts")
    parser.add_argument("--integrity-trials", type=int, default=20)
    args = parser.parse_args()
    env = sandbox_env()
    fresh_namespace(env, NAMESPACE)
    log = Path(tempfile.gettempdir()) / "rewind-bench-revert-operator.log"
    operator = Operator(env, NAMESPACE, log)
    gauges = Gauges(env, "bench-revert")
    verified: tuple[list[float], list[float]] = ([], [])
    try:
        approval = approval_trials(env, gauges, args.approval_trials)
        breach = breach_trials(env, gauges, args.breach_trials)
        if args.integrity_mb > 0:
            with tempfile.TemporaryDirectory(prefix="rewind-bench-artifacts-") as store:
                verified = integrity_trials(env, gauges, args.integrity_trials,
                                            args.integrity_mb, Path(store))
    finally:
        gauges.close()
        operator.stop()
        drop_namespace(env, NAMESPACE)
    rows = [
        ("approval-to-revert (target p99 <= 1 s)", summary(approval)),
        ("breach-to-revert, interval 5 s (target <= 6 s)", summary(breach)),
    ]
    if args.integrity_mb > 0:
        rows += [
            (f"break-glass-to-revert, {args.integrity_mb} MB artifacts verified, to a warm "
             "verified previous stable", summary(verified[0])),
            (f"one verification of {args.integrity_mb} MB (candidate created to verified)",
             summary(verified[1])),
        ]
    table("Rollback latency (sandbox, operator as a local process)",
          [*rows, ("operator log", str(log))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
