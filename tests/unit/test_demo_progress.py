"""The demo's live progress line shows what the status holds, infinities included."""

from __future__ import annotations

from rewind_demo.demo import progress_line


def test_an_infinite_measurement_is_shown_as_inf_not_no_data() -> None:
    at = "2025-03-01T12:00:10Z"
    body = {
        "status": {
            "phase": "Progressing",
            "stableRevision": 1,
            "candidateRevision": 2,
            "weights": {"stable": 90, "candidate": 10},
            "analysis": {
                "lastRunAt": at,
                "measurements": [
                    {"metric": "error-ratio", "valueText": "+Inf", "max": 2, "verdict": "Fail",
                     "at": at},
                    {"metric": "latency", "value": 120.5, "valueText": "120.5", "max": 300,
                     "verdict": "Pass", "at": at},
                    {"metric": "psi", "max": 0.25, "verdict": "Inconclusive", "at": at},
                ],
            },
        }
    }
    line, _ = progress_line("fraud", body, 12.0)
    assert "error-ratio +Inf (max 2) Fail" in line
    assert "latency 120 (max 300) Pass" in line
    assert "psi no data (max 0.25) Inconclusive" in line
