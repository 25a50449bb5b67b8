"""Operator memory with N ModelReleases under analysis at once, and whether intervals hold.

Creates N releases, promotes r1 of each, then starts r2 of each on a canary step held for
an hour with one metric analysed every `--interval`. While all N are analysing it samples
the operator's RSS, then reads every release's measurement times from its status and
reports the gaps between consecutive analyses against the configured interval.

    .venv/bin/python bench/bench_scale.py [--releases 200] [--interval 10s] [--observe 60]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
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
    apply,
    custom_api,
    drop_namespace,
    fresh_namespace,
    percentile,
    policy,
    release,
    sandbox_env,
    table,
    wait_for,
)

from rewind.api import parse_duration

NAMESPACE = "rewind-bench-scale"


def releases_in(api: Any) -> list[dict[str, Any]]:
    items = api.list_namespaced_custom_object("rewind.dev", "v1alpha1", NAMESPACE,
                                              "modelreleases")["items"]
    return list(items)


def count(api: Any, predicate: Any) -> int:
    return sum(1 for item in releases_in(api) if predicate(item.get("status") or {}))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--releases", type=int, default=200)
    parser.add_argument("--interval", default="10s")
    parser.add_argument("--observe", type=float, default=60.0, help="seconds to observe")
    args = parser.parse_args()
    interval = parse_duration(args.interval)
    env = sandbox_env()
    fresh_namespace(env, NAMESPACE)
    log = Path(tempfile.gettempdir()) / "rewind-bench-scale-operator.log"
    operator = Operator(env, NAMESPACE, log)
    gauges = Gauges(env, "bench-scale")
    api = custom_api()
    names = [f"s{i:03d}" for i in range(args.releases)]
    rss: list[float] = []
    try:
        apply(env, NAMESPACE, policy("scale", interval=args.interval, mode="automatic",
                                     steps=[{"weight": 10, "pause": {"duration": "1h"}}]))
        started = time.monotonic()
        for chunk in range(0, len(names), 50):
            apply(env, NAMESPACE, *(release(n, "scale", 1) for n in names[chunk:chunk + 50]))
        wait_for("every r1 promoted",
                 lambda: count(api, lambda s: s.get("stableRevision") == 1) == len(names), 600)
        promoted_in = time.monotonic() - started
        for name in names:
            gauges.set(f"{name}-r2", 0.0)
        started = time.monotonic()
        for chunk in range(0, len(names), 50):
            apply(env, NAMESPACE, *(release(n, "scale", 2) for n in names[chunk:chunk + 50]))
        wait_for("every r2 at 10%", lambda: count(
            api, lambda s: s.get("candidateRevision") == 2
            and s.get("weights", {}).get("candidate") == 10) == len(names), 600)
        canary_in = time.monotonic() - started
        observe_from = time.monotonic()
        while time.monotonic() - observe_from < args.observe:
            rss.append(operator.rss_mib())
            time.sleep(min(5.0, max(0.0, args.observe - (time.monotonic() - observe_from))))
        gaps: list[float] = []
        per_release_max: list[float] = []
        for item in releases_in(api):
            times = sorted(
                datetime.fromisoformat(m["at"].replace("Z", "+00:00"))
                for m in (item.get("status") or {}).get("analysis", {}).get("measurements", [])
                if m.get("revision") == 2 and m.get("at")
            )
            distinct = sorted(set(times))
            own = [(b - a).total_seconds() for a, b in itertools.pairwise(distinct)]
            gaps += own
            if own:
                per_release_max.append(max(own))
        late = sum(1 for g in per_release_max if g > 1.5 * interval)
    finally:
        gauges.close()
        operator.stop()
        drop_namespace(env, NAMESPACE)
    table(f"{args.releases} ModelReleases under analysis (interval {args.interval})", [
        ("r1 of all promoted in", f"{promoted_in:.1f}s"),
        ("r2 of all at 10% in", f"{canary_in:.1f}s"),
        ("operator RSS", f"max {max(rss):.0f} MiB, mean {statistics.fmean(rss):.0f} MiB"),
        ("gap between analyses",
         f"n={len(gaps)} median={statistics.median(gaps):.2f}s p99={percentile(gaps, 99):.2f}s "
         f"max={max(gaps):.2f}s" if gaps else "no samples"),
        ("releases with a gap > 1.5 x interval", f"{late} of {len(per_release_max)}"),
        ("operator log", str(log)),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
