"""`rewind-operator`: run the operator against $KUBECONFIG (or in-cluster credentials).

A thin front over `kopf.run` so the container, `make run` and the tests start it the same
way, with flags that say what they do instead of Kopf's generic ones.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys

import kopf

import rewind.handlers  # noqa: F401 - registers the handlers with Kopf
from rewind.adapters.prometheus import DEFAULT_THREADS
from rewind.adapters.webhooks import parse_target
from rewind.api import DEFAULT_CLUSTER_DOMAIN, parse_duration
from rewind.handlers import DEFAULT_HISTORY_RETENTION, RuntimeConfig


def _timeout(text: str) -> float:
    """A positive duration (``10s``, ``1m30s``, ``500ms``) in seconds, for argparse."""
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0s")
    return seconds


def _threads(text: str) -> int:
    """A thread count from 1 to 1024, for argparse."""
    try:
        count = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from err
    if not 1 <= count <= 1024:
        raise argparse.ArgumentTypeError(f"{count} is not between 1 and 1024")
    return count


_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")


def _domain(text: str) -> str:
    """A DNS domain such as cluster.local (lowercase labels, no trailing dot), for argparse."""
    domain = text.strip().lower().rstrip(".")
    if not _DOMAIN.match(domain) or len(domain) > 200:
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS domain such as cluster.local")
    return domain


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rewind-operator",
        description="Progressive delivery and trustworthy rollback for ML models.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable); default: all namespaces")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default)")
    parser.add_argument("--prometheus-url", default=os.environ.get("PROMETHEUS_URL"),
                        help="Prometheus base URL for analysis (env PROMETHEUS_URL)")
    parser.add_argument("--prometheus-timeout", type=_timeout, metavar="DURATION",
                        default=os.environ.get("PROMETHEUS_TIMEOUT", "10s"),
                        help="how long an analysis query may run when its metric sets no "
                        "timeout, e.g. 30s for Thanos; also Prometheus' own query timeout "
                        "(env PROMETHEUS_TIMEOUT, default 10s)")
    parser.add_argument("--analysis-threads", type=_threads, metavar="N",
                        default=os.environ.get("REWIND_ANALYSIS_THREADS", str(DEFAULT_THREADS)),
                        help="analysis queries in flight at once. A query that finds no free "
                        "thread within its timeout is Inconclusive (overloaded), never a "
                        f"failure (env REWIND_ANALYSIS_THREADS, default {DEFAULT_THREADS})")
    parser.add_argument("--history-retention", type=_timeout, metavar="DURATION",
                        default=os.environ.get("REWIND_HISTORY_RETENTION",
                                               DEFAULT_HISTORY_RETENTION),
                        help="how long the revision records (snapshots and history) of a "
                        "deleted ModelRelease are kept: one applied again within it adopts "
                        "them; also how long records a live release no longer refers to "
                        "are kept (env REWIND_HISTORY_RETENTION, default "
                        f"{DEFAULT_HISTORY_RETENTION})")
    parser.add_argument("--cluster-domain", type=_domain, metavar="DOMAIN",
                        default=os.environ.get("REWIND_CLUSTER_DOMAIN", DEFAULT_CLUSTER_DOMAIN),
                        help="the cluster's DNS domain: Rewind routes the in-cluster name "
                        "<release>.<namespace>.svc.<DOMAIN> and sends traffic to "
                        "<release>-r<N>.<namespace>.svc.<DOMAIN> (env REWIND_CLUSTER_DOMAIN, "
                        f"default {DEFAULT_CLUSTER_DOMAIN})")
    parser.add_argument("--metrics-port", type=int,
                        default=int(os.environ.get("REWIND_METRICS_PORT", "9090")),
                        help="port of the operator's own /metrics (0 = off)")
    parser.add_argument("--liveness", default=os.environ.get("REWIND_LIVENESS"),
                        help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--trust-actor-annotations", action="store_true",
                        default=os.environ.get("REWIND_TRUST_ACTOR_ANNOTATIONS") == "true",
                        help="record rewind.dev/<action>-by as the approver: only with the "
                        "admission policies of charts/rewind/files/human-actions.yaml installed")
    parser.add_argument("--actor-stamp", choices=("server", "client"),
                        default=os.environ.get("REWIND_ACTOR_STAMP", "server"),
                        help="who writes rewind.dev/<action>-by: server (the chart's "
                        "MutatingAdmissionPolicy, or no policies) or client (validation-only "
                        "admission: the kubectl commands in Events and the timeline set it "
                        "with `kubectl auth whoami`); the chart passes its humanActions.stamp")
    notify = parser.add_argument_group(
        "notifications", "messages to webhooks and Slack beside the Kubernetes Events")
    notify.add_argument("--notifier", action="append", default=[], metavar="NAME=KIND",
                        help="a notifier target RolloutPolicies may name in "
                        "spec.notifications.targets; KIND is webhook (generic JSON) or slack "
                        "(incoming webhook). Its URL is read from the environment variable "
                        "REWIND_NOTIFIER_URL_<NAME> (upper case, - as _), never from "
                        "arguments. Repeatable")
    notify.add_argument("--notify-default", action="append", default=[], metavar="NAME",
                        help="a target for releases whose RolloutPolicy has no "
                        "spec.notifications (repeatable)")
    notify.add_argument("--argocd-url", default=os.environ.get("REWIND_ARGOCD_URL", ""),
                        help="Argo CD's URL: messages link to the release in its Application "
                        "(env REWIND_ARGOCD_URL)")
    notify.add_argument("--notify-max-backoff", type=_timeout, metavar="DURATION",
                        default="5m", help="longest pause between two delivery attempts "
                        "(exponential backoff with jitter from 1s; default 5m)")
    notify.add_argument("--notify-give-up", type=_timeout, metavar="DURATION", default="24h",
                        help="a message still undelivered this long after its event is "
                        "marked Failed in status.notifications (default 24h)")
    parser.add_argument("--log-format", choices=("plain", "full", "json"), default="full")
    parser.add_argument("--peering", default=None,
                        help="Kopf peering object name for HA; default: standalone")
    parser.add_argument("--priority", type=int, default=0,
                        help="peering priority: the highest live replica is active")
    parser.add_argument("--peering-lifetime", type=int, default=30,
                        help="seconds a replica's keep-alive lives: a standby takes over "
                        "this long after the active replica dies (default 30)")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    return parser.parse_args(argv)


def own_identity() -> str:
    """The name of this replica's keep-alive entry: the pod name in a cluster (POD_ID, as
    Kopf reads it), else host and pid, so local replicas never share one."""
    return os.environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peering is not None:
        patterns = [ns for ns in args.namespace if any(c in ns for c in "*?[!, \t")]
        if patterns:
            sys.exit(f"rewind-operator: --peering needs plain namespace names, got "
                     f"{', '.join(patterns)}: list the namespaces one by one")
        if args.peering_lifetime < 10:
            sys.exit("rewind-operator: --peering-lifetime must be at least 10 seconds "
                     "(Kopf renews the keep-alive 5-10 s before it expires)")
    log_format = {
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
        "json": kopf.LogFormat.JSON,
    }[args.log_format]
    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=log_format)
    if not args.verbose and not args.debug:
        logging.getLogger("kubernetes").setLevel(logging.WARNING)
    try:
        targets = {t.name: t for t in map(parse_target, args.notifier)}
    except ValueError as err:
        sys.exit(f"rewind-operator: {err}")
    if len(targets) != len(args.notifier):
        sys.exit("rewind-operator: --notifier names a target twice")
    unknown = sorted(set(args.notify_default) - set(targets))
    if unknown:
        sys.exit(f"rewind-operator: --notify-default {', '.join(unknown)}: no such --notifier")
    identity = own_identity()
    runtime = RuntimeConfig(metrics_port=args.metrics_port,
                            trust_actor_annotations=args.trust_actor_annotations,
                            actor_stamp=args.actor_stamp,
                            peering_name=args.peering, peering_priority=args.priority,
                            peering_lifetime=args.peering_lifetime, identity=identity,
                            namespaces=args.namespace or None,
                            prometheus_timeout=args.prometheus_timeout,
                            analysis_threads=args.analysis_threads,
                            history_retention=args.history_retention,
                            cluster_domain=args.cluster_domain,
                            notifier_targets=targets, notify_defaults=args.notify_default,
                            argocd_url=args.argocd_url,
                            notify_max_backoff=args.notify_max_backoff,
                            notify_give_up=args.notify_give_up)
    if args.prometheus_url:
        runtime.prometheus_url = args.prometheus_url
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority,
        identity=identity,  # type: ignore[arg-type]  # Kopf's NewType of str
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(config=runtime),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
