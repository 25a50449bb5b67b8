"""Writes files/grafana-dashboard.json: Rewind's Grafana dashboard, from the operator's own
metrics (operator/rewind/metrics.py). This script is the source; the JSON is generated.

    python charts/rewind/grafana/generate.py           # rewrite the dashboard
    python charts/rewind/grafana/generate.py --check   # exit 1 if it is stale

The chart ships it as a ConfigMap for the Grafana sidecar (grafana.dashboard.enabled).
tests/unit/test_grafana_dashboard.py checks that every expression names only metrics the
operator exports, and tests/sandbox/test_grafana_dashboard.py that Prometheus parses each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent / "files" / "grafana-dashboard.json"

#: Every series is filtered by the dashboard's namespace and release variables.
SEL = 'namespace=~"$namespace", release=~"$release"'
DS = {"type": "prometheus", "uid": "${datasource}"}


def _target(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
            fmt: str = "time_series") -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DS, "expr": expr, "refId": ref,
                              "legendFormat": legend, "format": fmt}
    if instant:
        target.update(instant=True, range=False)
    return target


class Layout:
    """Panels placed left to right on a 24-column grid, ids in order."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False,
                            "id": len(self.panels) + 1, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x, self.row_height = 0, 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel.update(id=len(self.panels) + 1, datasource=DS,
                     gridPos={"h": h, "w": w, "x": self.x, "y": self.y})
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)


def _panel(kind: str, title: str, description: str, targets: list[dict[str, Any]],
           unit: str = "short", **options: Any) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "type": kind, "title": title, "description": description, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": options,
    }
    return panel


def dashboard() -> dict[str, Any]:
    g = Layout()
    g.row("Now")
    g.add(_panel(
        "bargauge", "Releases by phase",
        "How many releases are in each phase now (rewind_release_phase).",
        [_target(f"sum by (phase) (rewind_release_phase{{{SEL}}})", "{{phase}}",
                 instant=True)],
        displayMode="basic", orientation="horizontal",
        reduceOptions={"calcs": ["lastNotNull"], "values": False}), 8, 8)
    g.add(_panel(
        "table", "Approvals waiting",
        "Rollback decisions waiting for people: how long they have waited, how long is left "
        "before the policy's onTimeout applies, approvals received and required.",
        [
            _target(f"time() - rewind_release_approval_requested_timestamp_seconds{{{SEL}}}",
                    ref="A", instant=True, fmt="table"),
            _target(f"rewind_release_approval_deadline_timestamp_seconds{{{SEL}}} - time()",
                    ref="B", instant=True, fmt="table"),
            _target(f'rewind_release_approvals{{{SEL}, state="received"}}', ref="C",
                    instant=True, fmt="table"),
            _target(f'rewind_release_approvals{{{SEL}, state="required"}}', ref="D",
                    instant=True, fmt="table"),
        ],
        unit="s", showHeader=True), 10, 8)
    g.add(_panel(
        "stat", "Stalled releases",
        "Releases a human must look at (Stalled=True: refused or conflicting routes, a "
        "rollback that cannot finish, no ready stable pods, rolled back, failed).",
        [_target(f'sum(rewind_release_condition{{{SEL}, type="Stalled"}}) or vector(0)',
                 instant=True)],
        colorMode="background", graphMode="none",
        reduceOptions={"calcs": ["lastNotNull"], "values": False}), 3, 4)
    g.add(_panel(
        "stat", "Active operator replicas",
        "Replicas running reconcile loops (Kopf peering: exactly one should be).",
        [_target("sum(rewind_operator_active)", instant=True)],
        colorMode="background", graphMode="none",
        reduceOptions={"calcs": ["lastNotNull"], "values": False}), 3, 4)

    g.row("Traffic")
    g.add(_panel(
        "timeseries", "Candidate weight",
        "Percent of user traffic on each release's candidate, as the router reports it.",
        [_target(f"rewind_release_candidate_weight{{{SEL}}}", "{{namespace}}/{{release}}")],
        unit="percent"), 12, 8)
    g.add(_panel(
        "timeseries", "Mirrored traffic (shadow)",
        "Percent of requests copied to a shadow candidate.",
        [_target(f"rewind_release_mirror_percent{{{SEL}}}", "{{namespace}}/{{release}}")],
        unit="percent"), 6, 8)
    g.add(_panel(
        "timeseries", "Routes not in effect",
        "1 while the routes read back differ from what the release needs (refused, "
        "conflicting, edited by hand, not seen yet).",
        [_target(f"1 - rewind_release_routes_in_effect{{{SEL}}}",
                 "{{namespace}}/{{release}}")]), 6, 8)

    g.row("Analysis")
    g.add(_panel(
        "timeseries", "Analysis verdicts",
        "Measurements per second by verdict: Fail counts toward a rollback, Inconclusive "
        "holds (no data, Prometheus errors).",
        [_target(f"sum by (verdict) (rate(rewind_analysis_measurements_total{{{SEL}}}"
                 "[$__rate_interval]))", "{{verdict}}")],
        unit="ops"), 12, 8)
    g.add(_panel(
        "table", "Failing metrics",
        "Failed measurements in the selected range, by release and metric.",
        [_target(f'sum by (namespace, release, metric) (increase('
                 f'rewind_analysis_measurements_total{{{SEL}, verdict="Fail"}}[$__range])) > 0',
                 instant=True, fmt="table")]), 8, 8)
    g.add(_panel(
        "timeseries", "Queries never sent (operator overloaded)",
        "Analysis queries that found no free thread: raise --analysis-threads.",
        [_target(f"sum(rate(rewind_analysis_overloaded_total{{{SEL}}}[$__rate_interval]))",
                 "overloaded")],
        unit="ops"), 4, 8)
    g.add(_panel(
        "timeseries", "Analysis rounds started late (operator)",
        "How late analysis rounds start after they are due, over all releases (the "
        "operator's own delay, never judged as a model's failure). Near the analysis "
        "interval: the operator or its API server is overloaded.",
        [_target("histogram_quantile(0.5, sum by (le) "
                 "(rate(rewind_analysis_lag_seconds_bucket[$__rate_interval])))", "median"),
         _target("histogram_quantile(0.99, sum by (le) "
                 "(rate(rewind_analysis_lag_seconds_bucket[$__rate_interval])))", "p99")],
        unit="s"), 12, 8)

    g.row("Rollbacks")
    g.add(_panel(
        "bargauge", "Rollbacks by reason",
        "Rollbacks started in the selected range, by what triggered them (analysis, "
        "approved, approval-timeout, break-glass).",
        [_target(f"sum by (reason) (increase(rewind_rollbacks_total{{{SEL}}}[$__range]))",
                 "{{reason}}", instant=True)],
        displayMode="basic", orientation="horizontal",
        reduceOptions={"calcs": ["lastNotNull"], "values": False}), 6, 8)
    g.add(_panel(
        "bargauge", "Rollouts finished",
        "Rollouts that ended in the selected range, by outcome.",
        [_target(f"sum by (outcome) (increase(rewind_rollouts_finished_total{{{SEL}}}"
                 "[$__range]))", "{{outcome}}", instant=True)],
        displayMode="basic", orientation="horizontal",
        reduceOptions={"calcs": ["lastNotNull"], "values": False}), 6, 8)
    g.add(_panel(
        "timeseries", "Decision to revert",
        "From the rollback decision (or the last approval) to traffic read back on the "
        "stable revision.",
        [
            _target("histogram_quantile(0.5, sum by (le) (rate("
                    f"rewind_decision_to_revert_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "p50", ref="A"),
            _target("histogram_quantile(0.95, sum by (le) (rate("
                    f"rewind_decision_to_revert_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "p95", ref="B"),
            _target(f"sum(rate(rewind_decision_to_revert_seconds_sum{{{SEL}}}"
                    "[$__rate_interval])) / sum(rate("
                    f"rewind_decision_to_revert_seconds_count{{{SEL}}}[$__rate_interval]))",
                    "mean", ref="C"),
        ],
        unit="s"), 6, 8)
    g.add(_panel(
        "timeseries", "Time waiting for approvers",
        "From a rollback proposed for approval to its end, p95 by how it ended.",
        [_target("histogram_quantile(0.95, sum by (le, outcome) (rate("
                 f"rewind_approval_wait_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                 "{{outcome}}")],
        unit="s"), 6, 8)

    g.row("Notifications")
    g.add(_panel(
        "bargauge", "Notifications delivered",
        "Webhook and Slack messages whose delivery ended in the selected range.",
        [_target(f"sum by (target, result) (increase(rewind_notifications_total{{{SEL}}}"
                 "[$__range]))", "{{target}} {{result}}", instant=True)],
        displayMode="basic", orientation="horizontal",
        reduceOptions={"calcs": ["lastNotNull"], "values": False}), 12, 6)
    g.add(_panel(
        "timeseries", "Notifications pending",
        "Messages in the releases' outboxes not delivered yet (retried with backoff).",
        [_target(f"sum by (namespace, release) (rewind_notifications_pending{{{SEL}}})",
                 "{{namespace}}/{{release}}")]), 12, 6)

    def variable(name: str, query: str) -> dict[str, Any]:
        return {"name": name, "label": name, "type": "query", "datasource": DS,
                "query": {"query": query, "refId": name}, "definition": query,
                "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
                "current": {"text": "All", "value": "$__all"}, "sort": 1}

    return {
        "title": "Rewind",
        "uid": "rewind-operator",
        "description": "Progressive delivery and rollback of ML models (Rewind operator).",
        "tags": ["rewind", "ml", "progressive-delivery"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            variable("namespace", "label_values(rewind_release_phase, namespace)"),
            variable("release",
                     'label_values(rewind_release_phase{namespace=~"$namespace"}, release)'),
        ]},
        "annotations": {"list": []},
        "panels": g.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def expressions(doc: dict[str, Any] | None = None) -> list[str]:
    """Every PromQL expression in the dashboard (targets and variable queries)."""
    doc = doc or dashboard()
    out = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            out.append(v["query"]["query"])
    return out


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
