"""How long is a rollback held up when the active operator replica dies? Printed as a table.

Two operator processes share a KopfPeering. A candidate waits for approval; the active
replica is SIGKILLed and, at the same moment, an on-call engineer approves the rollback.
Measured: SIGKILL to the standby reporting itself active, and SIGKILL to the
VirtualService back on stable (seen by a watch). Target: within the keep-alive lifetime
plus one 1 s poll, plus the approval-to-revert time (well under 1 s). Then the killed
replica is started again and takes the lead back, ready for the next trial.

    .venv/bin/python bench/bench_failover.py [--trials 5] [--lifetime 10]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    Gauges,
    Operator,
    apply,
    custom_api,
    drop_namespace,
    fresh_namespace,
    kubectl,
    policy,
    release,
    sandbox_env,
    status_of,
    summary,
    table,
    vs_watch,
    wait_for,
)

NAMESPACE = "rewind-bench-failover"
PEERING = "rewind-bench"
NAME = "failover"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Replica:
    def __init__(self, env: dict[str, str], priority: int, lifetime: int, log: Path) -> None:
        self.env, self.priority, self.lifetime, self.log = env, priority, lifetime, log
        self.port = free_port()
        self.operator: Operator | None = None

    def start(self) -> None:
        self.operator = Operator(self.env, NAMESPACE, self.log, extra=[
            "--peering", PEERING, "--priority", str(self.priority),
            "--peering-lifetime", str(self.lifetime), "--metrics-port", str(self.port)])

    def active(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return False
        return "\nrewind_operator_active 1.0" in "\n" + text

    def kill(self) -> None:
        assert self.operator is not None
        self.operator.kill()

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()


def on_stable(weights: dict[int, int]) -> bool:
    return weights.get(1) == 100 and sum(1 for w in weights.values() if w > 0) == 1


def phase_is(api: Any, phase: str) -> bool:
    return status_of(api, NAMESPACE, NAME).get("phase") == phase


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--lifetime", type=int, default=10,
                        help="keep-alive lifetime in seconds (the chart's default is 30)")
    args = parser.parse_args()
    env = sandbox_env()
    fresh_namespace(env, NAMESPACE)
    kubectl(env, "apply", "--server-side", "-f",
            str(Path(__file__).resolve().parent.parent / "charts/rewind/crds"))
    kubectl(env, "wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev")
    kubectl(env, "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}))
    log = Path(tempfile.gettempdir()) / "rewind-bench-failover-operator.log"
    log.unlink(missing_ok=True)
    high = Replica(env, 2, args.lifetime, log)
    low = Replica(env, 1, args.lifetime, log)
    gauges = Gauges(env, "bench-failover")
    api = custom_api()
    to_active: list[float] = []
    to_revert: list[float] = []
    try:
        low.start()
        high.start()
        wait_for("the high-priority replica active", high.active, 60)
        apply(env, NAMESPACE, policy("approval", interval="1s", mode="approval",
                                     steps=[{"weight": 50, "pause": {"duration": "1h"}}]))
        apply(env, NAMESPACE, release(NAME, "approval", 1))
        wait_for("r1 promoted", lambda: status_of(api, NAMESPACE, NAME).get(
            "stableRevision") == 1, 120)
        for trial in range(args.trials):
            revision = trial + 2
            gauges.set(f"{NAME}-r{revision}", 0.5)  # bad from birth: analysis fails at once
            apply(env, NAMESPACE, release(NAME, "approval", revision))
            wait_for(f"r{revision} awaiting approval", lambda: phase_is(api, "AwaitingApproval"),
                     120)
            with vs_watch(NAMESPACE, NAME) as wait_weights:
                high.kill()
                killed = time.monotonic()
                kubectl(env, "annotate", "-n", NAMESPACE, f"modelrelease/{NAME}",
                        "rewind.dev/approve-rollback=true")
                wait_for("the standby active", low.active, args.lifetime + 30)
                to_active.append(time.monotonic() - killed)
                reverted = wait_weights(on_stable, 60)
            if reverted is None:
                print(f"trial {trial}: no revert within 60 s of the takeover", file=sys.stderr)
            else:
                to_revert.append(reverted - killed)
                print(f"trial {trial + 1}/{args.trials}: active after {to_active[-1]:.2f}s, "
                      f"reverted after {to_revert[-1]:.2f}s", file=sys.stderr)
            wait_for("RolledBack", lambda: phase_is(api, "RolledBack"), 60)
            high.start()  # the lead comes back for the next trial
            wait_for("the returning replica active", high.active, 60)
            wait_for("the other replica on standby", lambda: not low.active(), 30)
    finally:
        gauges.close()
        high.stop()
        low.stop()
        drop_namespace(env, NAMESPACE)
    target = args.lifetime + 1
    table(f"Failover (two replicas, keep-alive lifetime {args.lifetime}s, SIGKILL)", [
        (f"SIGKILL to standby active (target <= {target} s)", summary(to_active)),
        (f"SIGKILL to traffic on stable, approval sent at the kill (target <= {target + 1} s)",
         summary(to_revert)),
        ("operator logs", str(log)),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
