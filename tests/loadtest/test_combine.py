"""Repeated runs are reported as per-step medians."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.combine import combine


def doc(p99s: list[float], lost: int = 0) -> dict[str, Any]:
    return {
        "scenario": "fanout",
        "runs": [
            {
                "step": float(i),
                "status": "ok" if not lost else "loss",
                "latency_ms": {"p99": p99},
                "messages": {"lost": lost},
            }
            for i, p99 in enumerate(p99s)
        ],
    }


def test_medians_per_step_and_status_of_all_repeats() -> None:
    merged = combine([doc([1.0, 10.0]), doc([3.0, 30.0]), doc([2.0, 20.0], lost=5)])
    assert [r["latency_ms"]["p99"] for r in merged["runs"]] == [2.0, 20.0]
    assert [r["repeats"] for r in merged["runs"]] == [3, 3]
    assert merged["runs"][0]["status"] == "loss/ok"
    assert merged["combined_from"] == 3


def test_different_scenarios_are_refused() -> None:
    other = doc([1.0])
    other["scenario"] = "rooms"
    with pytest.raises(ValueError, match="different scenarios"):
        combine([doc([1.0]), other])
