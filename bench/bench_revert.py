"""How fast does traffic go back to stable? Two measurements, printed as a table.

approval-to-revert: from sending the approval (the merge patch `kubectl annotate ...
rewind.dev/approve-rollback=true` sends) to the VirtualService holding 100% on stable (as
seen by a watch). Target p99 <= 1 s; Flagger
polls its rollback gate once per analysis interval (60 s by default).

breach-to-revert: from the breaching value being visible in Prometheus to the same
VirtualService state, with a 5 s interval and failureLimit 1. Target <= interval + 1 s.

    .venv/bin/python bench/bench_revert.py [--approval-trials 50] [--breach-trials 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
        with vs_watch(NAMESPACE, name) as wait_weights:
            # The same merge patch `kubectl annotate` sends, timed from the moment it is
            # sent (timing from a kubectl process's exit would start after the watch may
            # already have seen the revert, and count its start-up instead).
            annotated = time.monotonic()
            api.patch_namespaced_custom_object(
                "rewind.dev", "v1alpha1", NAMESPACE, "modelreleases", name,
                {"metadata": {"annotations": {"rewind.dev/approve-rollback": "true"}}},
            )
            reverted = wait_weights(on_stable(1), 30)
        if reverted is None:
            print(f"trial {trial}: traffic did not revert within 30 s", file=sys.stderr)
            continue
        samples.append(reverted - annotated)
        wait_for("RolledBack", lambda: phase_is(api, name, "RolledBack"), 60)
        print(f"approval trial {trial + 1}/{trials}: {samples[-1]:.3f}s", file=sys.stderr)
    return samples


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
    args = parser.parse_args()
    env = sandbox_env()
    fresh_namespace(env, NAMESPACE)
    log = Path(tempfile.gettempdir()) / "rewind-bench-revert-operator.log"
    operator = Operator(env, NAMESPACE, log)
    gauges = Gauges(env, "bench-revert")
    try:
        approval = approval_trials(env, gauges, args.approval_trials)
        breach = breach_trials(env, gauges, args.breach_trials)
    finally:
        gauges.close()
        operator.stop()
        drop_namespace(env, NAMESPACE)
    table("Rollback latency (sandbox, operator as a local process)", [
        ("approval-to-revert (target p99 <= 1 s)", summary(approval)),
        ("breach-to-revert, interval 5 s (target <= 6 s)", summary(breach)),
        ("operator log", str(log)),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
