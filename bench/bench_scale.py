"""N ModelReleases under analysis at once, against a Prometheus that answers slowly.

Creates N releases and promotes r1 of each, then starts r2 of each on a canary step held
for an hour, analysed every ``--interval`` with two metrics (error rate and latency, both
healthy), ``queryError: Fail`` and ``failureLimit: 1``: the worst case for a false
rollback, since any query error would roll a release back. Every query goes through
``slow_prometheus.py``, a loopback proxy that holds each one ``--query-delay`` seconds.
While all N are analysing, it watches for ``--observe`` seconds and prints:

- the gap between consecutive analyses of each release (median, p99, max) against the
  interval, and how many releases saw a gap over 1.5 x interval;
- the operator's RSS and CPU (from /proc): total, in the window, and per release per
  analysis interval; and the CPU of each sandbox component (API server, etcd, Prometheus,
  ...) in the window and during the r2 ramp, to tell which part is the limit;
- how late rounds started after they were due (the operator's
  ``rewind_analysis_lag_seconds``); measurements by verdict, the overloaded ones (never
  sent: no free analysis thread), rollbacks (must be 0) and releases that ended outside
  the expected phase.

The sandbox brings Deployments up at a limited rate, so releases are created in a ramp: at
most a backlog of releases created and not yet done, sized from the rate measured so far
so that none waits more than about ``--ramp-window`` seconds, well inside the policy's
progress deadline (``--progress-deadline``, at least 4 x that window). Every wait is
bounded: a ramp that stops making progress, or a release that fails, ends the run with
what did not finish and how many were left (exit 2) instead of hanging. The namespace is
deleted at the end.

    .venv/bin/python bench/bench_scale.py                       # 200 releases, ~6 min
    .venv/bin/python bench/bench_scale.py --releases 1000 --observe 120
    .venv/bin/python bench/bench_scale.py --releases 1000 --ramp-interval 60s --observe 120
    .venv/bin/python bench/bench_scale.py --analysis-threads 16 # the operator's default
    .venv/bin/python bench/bench_scale.py --profile /tmp/rewind.txt   # py-spy, see README

``--analysis-threads auto`` sizes the operator's query threads for the load (queries per
second x the longest delay, plus a quarter); with fewer, queries wait for a thread, and
those that wait their whole timeout are Inconclusive (``overloaded``), never failures.
Exit status: 0 when every release stayed healthy, 1 on a rollback or a release outside the
expected phase, 2 when the run could not finish.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    ERROR_RATE_METRIC,
    LATENCY_METRIC,
    ROOT,
    Gauges,
    Operator,
    apply,
    custom_api,
    drop_namespace,
    free_port,
    fresh_namespace,
    percentile,
    policy,
    release,
    sandbox_cpu_seconds,
    sandbox_env,
    table,
)

from rewind.api import parse_duration

NAMESPACE = "rewind-bench-scale"
METRICS = (ERROR_RATE_METRIC, LATENCY_METRIC)
#: Measurements a status keeps (api.MAX_MEASUREMENTS): the lists must come more often.
KEPT_MEASUREMENTS = 20
#: Releases per kubectl apply.
CHUNK = 50


class UnfinishedError(Exception):
    """A bounded wait ran out: the message says what did not finish and how many were left."""


def uptime() -> str:
    return "load average " + ", ".join(Path("/proc/loadavg").read_text().split()[:3])


def list_releases(api: Any) -> list[dict[str, Any]]:
    """Every ModelRelease of the namespace, one list call decoded straight from JSON, served
    from the API server's watch cache (resourceVersion 0): a list of a thousand releases is
    megabytes, and the benchmark must not be what loads the API server."""
    answer = api.list_namespaced_custom_object(
        "rewind.dev", "v1alpha1", NAMESPACE, "modelreleases", resource_version="0",
        _preload_content=False, _request_timeout=120)
    return list(json.loads(answer.data)["items"])


def status(item: dict[str, Any]) -> dict[str, Any]:
    return dict(item.get("status") or {})


def failed(item: dict[str, Any]) -> str | None:
    """Why a release will never get where the benchmark waits for it, or None."""
    phase = status(item).get("phase")
    if phase in ("Failed", "RolledBack", "RollingBack", "AwaitingApproval"):
        return f"{item['metadata']['name']}: {phase}: {status(item).get('message', '')}"
    return None


def names_left(left: Sequence[str]) -> str:
    shown = ", ".join(sorted(left)[:8])
    return f"{shown}, ..." if len(left) > 8 else shown


@dataclass
class Ramp:
    """How one ramp went."""

    seconds: float = 0.0
    rate: float = 0.0  # releases done per second, overall
    max_backlog: int = 0
    backlogs: list[int] = field(default_factory=list)


def ramp(
    what: str,
    names: Sequence[str],
    create: Callable[[Sequence[str]], None],
    done: Callable[[dict[str, Any]], bool],
    lister: Callable[[], list[dict[str, Any]]],
    *,
    window: float,
    stall: float,
) -> Ramp:
    """Create the releases in chunks while at most a backlog of them is created and not
    done; the backlog is the rate measured so far times ``window`` seconds (10 to 300).
    Raises UnfinishedError when a release fails, or when none gets done for ``stall`` seconds."""
    started = last_progress = time.monotonic()
    poll = max(2.0, len(names) / 200)  # seconds between two lists
    created = 0
    finished: set[str] = set()
    backlog = 10
    result = Ramp()
    while len(finished) < len(names):
        room = backlog - (created - len(finished))
        while created < len(names) and room > 0:
            chunk = names[created:created + min(CHUNK, room)]
            create(chunk)
            created += len(chunk)
            room -= len(chunk)
        result.max_backlog = max(result.max_backlog, created - len(finished))
        items = lister()
        broken = [reason for item in items if (reason := failed(item))]
        if broken:
            raise UnfinishedError(
                f"{what}: {len(broken)} release(s) failed, e.g. {broken[0]}; "
                f"{len(names) - len(finished)} of {len(names)} not done")
        now_done = {i["metadata"]["name"] for i in items if done(status(i))} & set(names)
        now = time.monotonic()
        if len(now_done) > len(finished):
            last_progress = now
        finished = now_done
        if finished:
            rate = len(finished) / (now - started)
            backlog = max(10, min(300, round(rate * window)))
            result.backlogs.append(backlog)
        if now - last_progress > stall:
            left = [n for n in names[:created] if n not in finished]
            raise UnfinishedError(
                f"{what}: no release got there for {stall:.0f}s; {len(names) - len(finished)} "
                f"of {len(names)} left ({len(left)} created and waiting: {names_left(left)})")
        print(f"  {what}: {len(finished)}/{len(names)} done, {created - len(finished)} "
              f"waiting, backlog {backlog}, {now - started:.0f}s", flush=True)
        time.sleep(poll)
    result.seconds = time.monotonic() - started
    result.rate = len(names) / result.seconds
    return result


class SlowPrometheus:
    """bench/slow_prometheus.py as a process in front of the sandbox's Prometheus."""

    def __init__(self, upstream: str, delay: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "slow_prometheus.py"), "--upstream", upstream,
             "--delay", delay], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # the proxy prints it once it listens
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"slow_prometheus.py did not start: {line!r}")
        self.url = "http://" + line.removeprefix("listening on ")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/-/proxy-stats", timeout=10) as answer:
            return dict(json.loads(answer.read()))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def auto_threads(releases: int, interval: float, delay: str) -> int:
    """Enough query threads for the load: queries per second x the longest delay, + 25 %."""
    longest = float(delay.partition("-")[2] or delay)
    needed = releases * len(METRICS) / interval * longest * 1.25
    return max(16, min(1024, math.ceil(needed)))


@dataclass
class Observation:
    """What the observation window saw."""

    rounds: dict[str, set[str]] = field(default_factory=dict)  # release -> round times
    verdicts: dict[tuple[str, str, str], str] = field(default_factory=dict)
    error_kinds: dict[tuple[str, str, str], str] = field(default_factory=dict)
    rss: list[float] = field(default_factory=list)
    lists: int = 0

    def record(self, items: list[dict[str, Any]], since: datetime) -> None:
        self.lists += 1
        for item in items:
            name = item["metadata"]["name"]
            for m in status(item).get("analysis", {}).get("measurements", []):
                at = m.get("at")
                if m.get("revision") != 2 or not at or parse_time(at) < since:
                    continue
                self.rounds.setdefault(name, set()).add(at)
                self.verdicts[(name, at, m.get("metric", ""))] = m.get("verdict", "")
                self.error_kinds[(name, at, m.get("metric", ""))] = m.get("errorKind", "")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def gaps_of(observation: Observation) -> tuple[list[float], list[float]]:
    """Every gap between consecutive rounds, and each release's largest."""
    gaps: list[float] = []
    worst: list[float] = []
    for times in observation.rounds.values():
        ordered = sorted(parse_time(t) for t in times)
        own = [(b - a).total_seconds() for a, b in itertools.pairwise(ordered)]
        gaps += own
        if own:
            worst.append(max(own))
    return gaps, worst


def rollbacks_in(items: list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for i in items
            if any(e.get("type") == "RollbackStarted" for e in status(i).get("timeline", []))]


def outside_expected(items: list[dict[str, Any]]) -> list[str]:
    """Releases not Progressing with r2 at 10 % on top of r1."""
    out = []
    for item in items:
        s = status(item)
        if (s.get("phase"), s.get("stableRevision"), s.get("candidateRevision"),
                (s.get("weights") or {}).get("candidate")) != ("Progressing", 1, 2, 10):
            out.append(f"{item['metadata']['name']} ({s.get('phase')}: {s.get('message', '')})")
    return out


def lag_row(before: dict[str, float], after: dict[str, float]) -> str:
    """Rounds started in the window and how late after they were due, from the operator's
    ``rewind_analysis_lag_seconds`` (mean, and the share over 5 s from its buckets)."""
    family = "rewind_analysis_lag_seconds"

    def delta(sample: str) -> float:
        return after.get(sample, 0.0) - before.get(sample, 0.0)

    rounds = delta(f"{family}_count")
    if not rounds:
        return "no rounds"
    within_5s = delta(f'{family}_bucket{{le="5.0"}}')
    return (f"{rounds:.0f} rounds, mean {delta(f'{family}_sum') / rounds:.2f}s late, "
            f"{100 * (rounds - within_5s) / rounds:.0f}% over 5s")


def cpu_shares(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    """Each process's CPU between two readings as a percentage of one core, busiest first."""
    used = {name: after[name] - before[name] for name in after if name in before}
    return ", ".join(f"{name} {100 * cpu / seconds:.0f}%"
                     for name, cpu in sorted(used.items(), key=lambda kv: -kv[1]))


def profile(pid: int, seconds: float, output: str) -> subprocess.Popen[bytes] | None:
    """py-spy record on the operator for the observation window (pip install py-spy)."""
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        print("--profile: py-spy not found; `.venv/bin/pip install py-spy`", flush=True)
        return None
    formats = {".svg": "flamegraph", ".json": "speedscope"}
    fmt = formats.get(Path(output).suffix, "raw")
    # --gil: only the thread holding the GIL, i.e. where the operator's Python spends CPU
    # (threads blocked on a socket would otherwise dominate); --nonblocking: never pause it.
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "20",
         "--gil", "--nonblocking", "--format", fmt, "--output", output],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen[bytes]) -> None:
    """py-spy writes its output when its duration is over, or on SIGINT."""
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=200)
    parser.add_argument("--interval", default="10s")
    parser.add_argument("--observe", type=float, default=60.0, help="seconds to observe")
    parser.add_argument("--query-delay", default="1-3",
                        help="seconds the slow proxy holds each query: N or MIN-MAX")
    parser.add_argument("--analysis-threads", default="auto",
                        help="the operator's --analysis-threads, or auto (sized for the load)")
    parser.add_argument("--ramp-interval", default="",
                        help="the analysis interval while the releases ramp up (default: "
                        "--interval); the policy is set to --interval once every r2 is at "
                        "10 %%, so a machine that cannot ramp N releases up under the full "
                        "load still observes N at --interval")
    parser.add_argument("--ramp-window", type=float, default=30.0,
                        help="seconds a release may wait behind the others while ramping up")
    parser.add_argument("--progress-deadline", type=float, default=0.0,
                        help="the policy's progressDeadline in seconds (default: 4 x the "
                        "ramp window, at least 120)")
    parser.add_argument("--profile", default="",
                        help="py-spy record of the operator in the window to this file "
                        "(.svg flamegraph, .json speedscope, else collapsed stacks)")
    parser.add_argument("--operator-arg", action="append", default=[],
                        help="extra rewind-operator flag (repeatable)")
    args = parser.parse_args()
    wall = time.monotonic()
    interval = parse_duration(args.interval)
    ramp_interval = args.ramp_interval or args.interval
    threads = (auto_threads(args.releases, interval, args.query_delay)
               if args.analysis_threads == "auto" else int(args.analysis_threads))
    deadline = args.progress_deadline or max(120.0, 4 * args.ramp_window)
    load_before = uptime()
    env = sandbox_env()
    fresh_namespace(env, NAMESPACE, timeout=900)
    log = Path(tempfile.gettempdir()) / "rewind-bench-scale-operator.log"
    log.unlink(missing_ok=True)
    gauges = Gauges(env, "bench-scale")
    slow = SlowPrometheus(env["PROMETHEUS_URL"], args.query_delay)
    operator = Operator(env, NAMESPACE, log, extra=[
        "--analysis-threads", str(threads), *args.operator_arg,
    ], prometheus_url=slow.url, metrics_port=free_port())
    api = custom_api()
    names = [f"s{i:04d}" for i in range(args.releases)]
    rows: list[tuple[str, str]] = [
        ("releases", f"{args.releases}, canary at 10 %, interval {args.interval}, "
         f"{len(METRICS)} metrics each, queryError Fail, failureLimit 1"),
        ("Prometheus", f"behind a proxy holding each query {args.query_delay}s"),
        ("operator", f"--analysis-threads {threads} {' '.join(args.operator_arg)}".rstrip()),
        ("progress deadline", f"{deadline:.0f}s; ramp window {args.ramp_window:.0f}s"),
        ("machine", f"{os.cpu_count()} cores; before: {load_before}"),
    ]
    unfinished: str | None = None
    observation = Observation()
    final: list[dict[str, Any]] = []
    metrics_before: dict[str, float] = {}
    metrics_after: dict[str, float] = {}
    cpu_window = main_window = window_seconds = 0.0
    sandbox_window = ""
    proxy: dict[str, Any] = {}
    code = 0
    try:
        def scale_policy(every: str) -> dict[str, Any]:
            return policy(
                "scale", interval=every, mode="automatic",
                steps=[{"weight": 10, "pause": {"duration": "1h"}}], metrics=METRICS,
                query_error="Fail", progress_deadline=f"{deadline:.0f}s")

        apply(env, NAMESPACE, scale_policy(ramp_interval))
        if ramp_interval != args.interval:
            rows.append(("ramp", f"analysis every {ramp_interval} while ramping up, then "
                         f"{args.interval}"))

        def create(version: int) -> Callable[[Sequence[str]], None]:
            return lambda chunk: apply(env, NAMESPACE, *(release(n, "scale", version)
                                                         for n in chunk))

        stall = deadline + 60
        r1 = ramp("r1 promoted", names, create(1), lambda s: s.get("stableRevision") == 1,
                  lambda: list_releases(api), window=args.ramp_window, stall=stall)
        rows.append(("r1 of all promoted in",
                     f"{r1.seconds:.0f}s ({r1.rate:.1f} releases/s, backlog at most "
                     f"{r1.max_backlog})"))
        for name in names:
            gauges.set(f"{name}-r2", 0.0)
            gauges.set_latency(f"{name}-r2", 120.0)
        ramp_cpu = {"operator": operator.cpu_seconds(), **sandbox_cpu_seconds()}
        r2 = ramp("r2 at 10%", names, create(2),
                  lambda s: s.get("candidateRevision") == 2
                  and (s.get("weights") or {}).get("candidate") == 10,
                  lambda: list_releases(api), window=args.ramp_window, stall=stall)
        rows.append(("r2 of all at 10 % in",
                     f"{r2.seconds:.0f}s ({r2.rate:.1f} releases/s, backlog at most "
                     f"{r2.max_backlog})"))
        rows.append(("CPU during the r2 ramp", cpu_shares(
            ramp_cpu, {"operator": operator.cpu_seconds(), **sandbox_cpu_seconds()},
            r2.seconds)))
        if ramp_interval != args.interval:
            # Each release re-decides as the policy changes; its next round is due one
            # (new) interval after its last, so rounds at the ramp's interval end within it.
            apply(env, NAMESPACE, scale_policy(args.interval))
            time.sleep(parse_duration(ramp_interval))
        time.sleep(2 * interval)  # every release has had its first round
        since = datetime.now(UTC)
        metrics_before = operator.metrics()
        cpu_before, start = operator.cpu_seconds(), time.monotonic()
        sandbox_before = sandbox_cpu_seconds()
        main_before = operator.main_thread_cpu_seconds()
        spy = profile(operator.proc.pid, args.observe, args.profile) if args.profile else None
        # Lists often enough that no round falls out of the kept measurements in between.
        every = min(60.0, 0.5 * KEPT_MEASUREMENTS / len(METRICS) * interval)
        next_list = start + every
        while (left := args.observe - (time.monotonic() - start)) > 0:
            observation.rss.append(operator.rss_mib())
            if operator.proc.poll() is not None:
                raise UnfinishedError(
                    f"the operator exited ({operator.proc.returncode}); see {log}")
            if time.monotonic() >= next_list:
                observation.record(list_releases(api), since)
                next_list += every
            time.sleep(min(5.0, left))
        cpu_window = operator.cpu_seconds() - cpu_before
        main_window = operator.main_thread_cpu_seconds() - main_before
        window_seconds = time.monotonic() - start
        sandbox_window = cpu_shares(sandbox_before, sandbox_cpu_seconds(), window_seconds)
        metrics_after = operator.metrics()
        final = list_releases(api)
        observation.record(final, since)
        proxy = slow.stats()
        if spy is not None:
            stop_profile(spy)
    except (UnfinishedError, TimeoutError) as err:
        unfinished = str(err)
    except KeyboardInterrupt:
        unfinished = f"interrupted after {time.monotonic() - wall:.0f}s"
    finally:
        total_cpu = operator.cpu_seconds() if operator.proc.poll() is None else float("nan")
        gauges.close()
        operator.stop()
        slow.stop()
        drop_namespace(env, NAMESPACE)
    if final:
        gaps, worst = gaps_of(observation)
        late = sum(1 for g in worst if g > 1.5 * interval)
        verdicts = list(observation.verdicts.values())
        overloaded = sum(1 for k in observation.error_kinds.values() if k == "overloaded")
        errors = sum(1 for k in observation.error_kinds.values() if k)
        rolled_back = rollbacks_in(final)
        outside = outside_expected(final)
        rounds_expected = window_seconds / interval
        per_release = cpu_window / (args.releases * rounds_expected) * 1000
        rows += [
            ("observed", f"{window_seconds:.0f}s ({observation.lists} status lists)"),
            ("gap between analyses",
             f"n={len(gaps)} median={statistics.median(gaps):.2f}s "
             f"p99={percentile(gaps, 99):.2f}s max={max(gaps):.2f}s (interval "
             f"{interval:g}s)" if gaps else "no samples"),
            ("releases with a gap > 1.5 x interval", f"{late} of {len(worst)}"),
            ("measurements in the window",
             f"{len(verdicts)}: Pass {verdicts.count('Pass')}, Fail {verdicts.count('Fail')}, "
             f"Inconclusive {verdicts.count('Inconclusive')} (overloaded {overloaded}, "
             f"other query errors {errors - overloaded})"),
            ("overloaded (operator counter)",
             f"{metrics_after.get('rewind_analysis_overloaded_total', 0):.0f} in the run, "
             f"{metrics_after.get('rewind_analysis_overloaded_total', 0) - metrics_before.get('rewind_analysis_overloaded_total', 0):.0f} in the window"),  # noqa: E501
            ("analysis lag (operator histogram)", lag_row(metrics_before, metrics_after)),
            ("rollbacks (must be 0)",
             f"{len(rolled_back)} ({names_left(rolled_back)})" if rolled_back else
             f"0 (operator counter: "
             f"{metrics_after.get('rewind_rollbacks_total', 0):.0f})"),
            ("releases outside Progressing at 10 %",
             f"{len(outside)}: {names_left(outside)}" if outside else "0"),
            ("operator RSS", f"max {max(observation.rss):.0f} MiB, "
             f"mean {statistics.fmean(observation.rss):.0f} MiB"),
            ("operator CPU in the window",
             f"{cpu_window:.1f}s in {window_seconds:.0f}s = {100 * cpu_window / window_seconds:.0f}"
             f"% of one core; {per_release:.2f} ms per release per interval; event loop "
             f"thread {100 * main_window / window_seconds:.0f}% of one core"),
            ("operator CPU, whole run", f"{total_cpu:.0f}s"),
            ("sandbox CPU in the window", sandbox_window),
            ("slow proxy", f"{proxy.get('forwarded', 0)} queries, mean delay "
             f"{proxy.get('mean_delay', 0):.2f}s, at most {proxy.get('max_in_flight', 0)} "
             f"held at once"),
        ]
        if rolled_back or outside:
            code = 1
    if unfinished:
        rows.append(("DID NOT FINISH", unfinished))
        code = 2
    rows += [
        ("machine after", uptime()),
        ("benchmark took", f"{time.monotonic() - wall:.0f}s"),
        ("operator log", str(log)),
    ]
    if args.profile:
        rows.append(("profile", args.profile))
    table(f"{args.releases} ModelReleases under analysis against a slow Prometheus", rows)
    return code


if __name__ == "__main__":
    sys.exit(main())
