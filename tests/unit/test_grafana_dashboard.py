"""The chart's Grafana dashboard: generated, fresh, and built only from metrics the operator
exports (tests/sandbox/test_grafana_dashboard.py has Prometheus parse every expression)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

from prometheus_client import Counter, Gauge, Histogram

from rewind.metrics import OperatorMetrics
from tests.conftest import ROOT

GENERATOR = ROOT / "charts" / "rewind" / "grafana" / "generate.py"
TEMPLATE = ROOT / "charts" / "rewind" / "templates" / "grafana-dashboard.yaml"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_series() -> set[str]:
    """Every series name the operator's registry can expose."""
    names: set[str] = set()
    for family in vars(OperatorMetrics()).values():
        if isinstance(family, Counter):
            names.add(family._name + "_total")
        elif isinstance(family, Histogram):
            names |= {family._name + s for s in ("_bucket", "_sum", "_count")}
        elif isinstance(family, Gauge):
            names.add(family._name)
    return names


def test_the_shipped_dashboard_is_what_the_generator_writes() -> None:
    gen = generator()
    assert Path(gen.OUTPUT).read_text() == gen.render(), (
        "stale: run python charts/rewind/grafana/generate.py")
    assert gen.main(["--check"]) == 0


def test_every_expression_names_only_metrics_the_operator_exports() -> None:
    gen = generator()
    exported = exported_series()
    used: set[str] = set()
    for expr in gen.expressions():
        used |= set(re.findall(r"\brewind_[a-z_]+\b", expr))
    unknown = used - exported
    assert not unknown, f"the dashboard uses series the operator does not export: {unknown}"
    # What the issue asks to see: phases, weights, verdicts, rollbacks by reason,
    # decision-to-revert time, approvals waiting and for how long.
    for needed in ("rewind_release_phase", "rewind_release_candidate_weight",
                   "rewind_analysis_measurements_total", "rewind_rollbacks_total",
                   "rewind_decision_to_revert_seconds_bucket",
                   "rewind_release_approval_requested_timestamp_seconds",
                   "rewind_release_approval_deadline_timestamp_seconds"):
        assert needed in used, needed


def test_panels_have_unique_ids_titles_and_fit_the_grid() -> None:
    doc = json.loads(Path(generator().OUTPUT).read_text())
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["title"] for p in panels)
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and p["description"], p["title"]
    cells = set()
    for p in panels:
        pos = p["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
    assert doc["uid"] == "rewind-operator"
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "namespace",
                                                            "release"]


def test_the_chart_ships_it_for_the_grafana_sidecar() -> None:
    template = TEMPLATE.read_text()
    assert '.Files.Get "files/grafana-dashboard.json"' in template
    assert "{{- if .Values.grafana.dashboard.enabled }}" in template
