"""How fast does the circuit breaker move users? Two measurements, printed as a table.

breach-to-fallback: from the breaching value being visible in Prometheus to the
VirtualService sending every user to the fallback (its only route ``rewind-breaker``, as
seen by a watch). Target <= the breaker's interval + 1 s (``holdFor: 0s``).

recovery-to-model: from the healthy value being visible in Prometheus to the same
VirtualService routing 100% to the model again. Target <= interval + 1 s (``healthyFor:
0s``; with a longer healthyFor, add it).

    .venv/bin/python bench/bench_breaker.py [--trials 8] [--interval 2s]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
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
    object_watch,
    policy,
    release,
    sandbox_env,
    status_of,
    summary,
    table,
    wait_for,
)

from rewind.api import parse_duration
from rewind_demo import targets

NAMESPACE = "rewind-bench-breaker"
NAME = "guarded"
SIGNAL = f"signal-{NAME}"

#: What one VirtualService version says: "fallback", or the weights per revision (``r<N>``).
Seen = str | dict[str, int]


def routing(vs: dict[str, Any]) -> Seen:
    http = vs.get("spec", {}).get("http") or []
    if len(http) == 1 and http[0].get("name") == "rewind-breaker":
        return "fallback"
    route = next((r for r in http if r.get("name") == "rewind"), http[-1] if http else {})
    return {_revision_key(r["destination"]): int(r.get("weight", 100))
            for r in route.get("route") or []}


def _revision_key(destination: dict[str, Any]) -> str:
    """``r<N>``: the revision's own Service ``<release>-r<N>`` (per-revision routing), or a
    subset ``r<N>`` of routes written before it; anything else by its host."""
    if destination.get("subset"):
        return str(destination["subset"])
    host = str(destination.get("host", ""))
    prefix, sep, number = host.split(".", 1)[0].rpartition("-r")
    return f"r{number}" if sep and prefix == NAME and number.isdigit() else host


def vs_watch(namespace: str, name: str) -> contextlib.AbstractContextManager[
        Callable[[Callable[[Seen], bool], float], float | None]]:
    """A watch on one VirtualService, each version read by ``routing``."""
    return object_watch(namespace, name, routing)


def visible(prometheus_url: str, breaching: bool) -> float | None:
    """The moment Prometheus answers with a breaching (or a healthy) signal."""
    promql = f'max(rewind_bench_error_rate{{workload="{SIGNAL}"}})'
    for sample in targets.query(prometheus_url, promql):
        if (float(sample["value"][1]) > 0.05) == breaching:
            return time.monotonic()
    return None


def breaker_policy(interval: str) -> dict[str, Any]:
    p = policy("guarded", interval="5s", mode="automatic",
               steps=[{"weight": 20, "pause": {"duration": "1h"}}])
    p["spec"]["breaker"] = {
        "query": f'max(rewind_bench_error_rate{{workload="{SIGNAL}"}})',
        "thresholds": {"max": 0.05},
        "interval": interval,
        "holdFor": "0s",
        "fallback": {"directResponse": {"status": 503, "body": "degraded: try again soon"}},
        "reset": {"mode": "Automatic", "healthyFor": "0s"},
    }
    return p


def trials(env: dict[str, str], gauges: Gauges, n: int, interval: str
           ) -> tuple[list[float], list[float]]:
    api = custom_api()
    gauges.set(SIGNAL, 0.0)
    apply(env, NAMESPACE, breaker_policy(interval))
    apply(env, NAMESPACE, release(NAME, "guarded", 1))
    wait_for("r1 promoted", lambda: status_of(api, NAMESPACE, NAME).get("stableRevision") == 1,
             120)

    def breaker() -> str:
        return str((status_of(api, NAMESPACE, NAME).get("breaker") or {}).get("state"))

    wait_for("the breaker armed", lambda: breaker() == "Closed", 60)
    trip: list[float] = []
    back: list[float] = []
    for trial in range(n):
        with vs_watch(NAMESPACE, NAME) as wait:
            gauges.set(SIGNAL, 0.5)
            breach = wait_for("the breach in Prometheus",
                              lambda: visible(env["PROMETHEUS_URL"], True), 30)
            fallback = wait(lambda seen: seen == "fallback", 30)
            if fallback is None:
                print(f"trial {trial}: no fallback within 30 s", file=sys.stderr)
                continue
            trip.append(fallback - breach)
            wait_for("Tripped", lambda: breaker() == "Tripped", 30)
            gauges.set(SIGNAL, 0.0)
            healthy = wait_for("the recovery in Prometheus",
                               lambda: visible(env["PROMETHEUS_URL"], False), 30)
            model = wait(lambda seen: seen == {"r1": 100}, 30)
            if model is None:
                print(f"trial {trial}: not back on the model within 30 s", file=sys.stderr)
                continue
            back.append(model - healthy)
        wait_for("Closed", lambda: breaker() == "Closed", 30)
        print(f"trial {trial + 1}/{n}: trip {trip[-1]:.3f}s, back {back[-1]:.3f}s",
              file=sys.stderr)
    return trip, back


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--interval", default="2s")
    args = parser.parse_args()
    target = parse_duration(args.interval) + 1.0
    env = sandbox_env()
    fresh_namespace(env, NAMESPACE)
    log = Path(tempfile.gettempdir()) / "rewind-bench-breaker-operator.log"
    operator = Operator(env, NAMESPACE, log)
    gauges = Gauges(env, "bench-breaker")
    try:
        trip, back = trials(env, gauges, args.trials, args.interval)
    finally:
        gauges.close()
        operator.stop()
        drop_namespace(env, NAMESPACE)
    met = all(v <= target for v in trip + back) and trip and back
    table(f"Circuit breaker (sandbox, operator as a local process, interval {args.interval})", [
        (f"breach-to-fallback (target <= {target:g} s)", summary(trip)),
        (f"recovery-to-model, healthyFor 0s (target <= {target:g} s)", summary(back)),
        ("every sample within target", "yes" if met else "NO"),
        ("operator log", str(log)),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
