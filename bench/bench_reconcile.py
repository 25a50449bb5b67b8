"""CPU of one reconcile: what the operator pays per release per analysis interval.

bench_scale.py measures the whole operator under load on a busy shared machine, where
timings move by tens of percent from one run to the next. This one isolates the reconcile:
it brings one release to a canary step under analysis (two metrics), then calls
``ReleaseController.reconcile`` ``--rounds`` times in a row, in process, with a clock that
moves one analysis interval per call, so each call is a full round: read the release and
its policy, observe workloads and routes, query Prometheus twice, decide, write the status.
The CPU counted (``time.process_time``: every thread of the process) is the reconcile's own,
with the real Kubernetes client against the sandbox's API server; Kopf's handling of the
watch event each status write causes is not in it (bench_scale.py shows that).

    .venv/bin/python bench/bench_reconcile.py [--rounds 300] [--repeat 3]
    .venv/bin/python bench/bench_reconcile.py --profile /tmp/reconcile.txt   # py-spy

Prints CPU ms per reconcile (each repeat, and the best: the least disturbed by the rest of
the machine) and wall ms per reconcile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    ERROR_RATE_METRIC,
    LATENCY_METRIC,
    ROOT,
    Gauges,
    apply,
    drop_namespace,
    fresh_namespace,
    policy,
    release,
    sandbox_env,
    table,
)
from kubernetes import client, config

from rewind.adapters.events import EventRecorder
from rewind.adapters.prometheus import PrometheusProvider
from rewind.adapters.router import IstioRouter
from rewind.adapters.workloads import KubeWorkloads
from rewind.controller import ReleaseController

NAMESPACE = "rewind-bench-reconcile"
NAME = "cpu"
INTERVAL = 10.0


class Clock:
    """Real time until frozen; then moved by hand."""

    def __init__(self) -> None:
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen if self.frozen is not None else datetime.now(UTC)


def controller(env: dict[str, str], clock: Clock) -> ReleaseController:
    configuration = client.Configuration()
    config.load_kube_config(config_file=env["KUBECONFIG"],  # type: ignore[no-untyped-call]
                            client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    api_client = client.ApiClient(configuration)
    return ReleaseController(
        api_client,
        router=IstioRouter(api_client),
        workloads=KubeWorkloads(api_client),
        metrics=PrometheusProvider(env["PROMETHEUS_URL"]),
        notifier=EventRecorder(api_client),
        clock=clock,
    )


async def bring_up(ctl: ReleaseController, env: dict[str, str], gauges: Gauges) -> None:
    """r1 promoted, then r2 at its canary step with its routes in effect."""
    for revision in (1, 2):
        gauges.set(f"{NAME}-r{revision}", 0.0)
        gauges.set_latency(f"{NAME}-r{revision}", 120.0)
        apply(env, NAMESPACE, release(NAME, "cpu", revision))
        deadline = time.monotonic() + 120
        while True:
            result = await ctl.reconcile(NAMESPACE, NAME)
            status = result.decision.status if result.decision else None
            if status is not None and (
                (revision == 1 and status.stable_revision == 1)
                or (revision == 2 and status.step_started_at is not None
                    and status.weights.candidate == 10)
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"r{revision} not in place in 120s: "
                                   f"{status.message if status else result.error}")
            await asyncio.sleep(0.3)


async def rounds(ctl: ReleaseController, clock: Clock, count: int) -> tuple[float, float]:
    """CPU and wall seconds of ``count`` reconciles, each one analysis round."""
    assert clock.frozen is not None
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        clock.frozen += timedelta(seconds=INTERVAL)
        result = await ctl.reconcile(NAMESPACE, NAME)
        if result.error or not result.decision or not result.decision.status.analysis:
            raise RuntimeError(f"reconcile failed: {result.error}")
    return time.process_time() - cpu, time.perf_counter() - wall


async def run(args: argparse.Namespace, env: dict[str, str], gauges: Gauges) -> list[
        tuple[str, str]]:
    clock = Clock()
    ctl = controller(env, clock)
    await bring_up(ctl, env, gauges)
    clock.frozen = datetime.now(UTC)
    await rounds(ctl, clock, 20)  # warm: connections, caches, imports
    spy = None
    if args.profile:
        spy = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid", str(os.getpid()),
             "--rate", "200", "--gil", "--nonblocking", "--format", "raw", "--output",
             args.profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)
    results = [await rounds(ctl, clock, args.rounds) for _ in range(args.repeat)]
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)
    status = (await ctl.reconcile(NAMESPACE, NAME)).decision
    verdicts = [m.verdict.value for m in status.status.analysis.measurements] if status else []
    cpu_ms = [1000 * cpu / args.rounds for cpu, _ in results]
    wall_ms = [1000 * wall / args.rounds for _, wall in results]
    return [
        ("reconciles", f"{args.repeat} x {args.rounds}, each an analysis round of 2 metrics "
         "and a status write"),
        ("CPU per reconcile", f"best {min(cpu_ms):.2f} ms; "
         + ", ".join(f"{c:.2f}" for c in cpu_ms)),
        ("wall per reconcile", f"median {statistics.median(wall_ms):.1f} ms"),
        ("last measurements", f"{verdicts.count('Pass')} Pass of {len(verdicts)}"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", default="", help="py-spy record (collapsed stacks) here")
    args = parser.parse_args()
    env = sandbox_env()
    fresh_namespace(env, NAMESPACE)
    gauges = Gauges(env, "bench-reconcile")
    load = "load average " + ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        apply(env, NAMESPACE, policy(
            "cpu", interval=f"{INTERVAL:g}s", mode="automatic",
            steps=[{"weight": 10, "pause": {"duration": "24h"}}],
            metrics=(ERROR_RATE_METRIC, LATENCY_METRIC), query_error="Fail"))
        rows = asyncio.run(run(args, env, gauges))
    finally:
        gauges.close()
        drop_namespace(env, NAMESPACE)
    rows.append(("machine", f"before: {load}; after: load average "
                 + ", ".join(Path("/proc/loadavg").read_text().split()[:3])))
    table("CPU of one reconcile (in process, real API server and Prometheus)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
