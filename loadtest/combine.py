"""The median of several runs: result documents of the same scenario merged step by step,
every numeric figure replaced by its median (benchmarks report medians, not best runs)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def median_of(items: Sequence[Any]) -> Any:
    first = items[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, int | float) and all(
        isinstance(i, int | float) and not isinstance(i, bool) for i in items
    ):
        return statistics.median(items)
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(i, dict) and k in i for i in items)]
        return {k: median_of([i[k] for i in items]) for k in keys}
    if isinstance(first, list) and all(isinstance(i, list) and len(i) == len(first) for i in items):
        return [median_of(list(group)) for group in zip(*items, strict=True)]
    return first


def combine(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One document whose runs are the per-step medians of ``docs`` (same scenario)."""
    if not docs:
        raise ValueError("nothing to combine")
    scenarios = {d["scenario"] for d in docs}
    if len(scenarios) != 1:
        raise ValueError(f"cannot combine different scenarios: {sorted(scenarios)}")
    by_step: dict[Any, list[dict[str, Any]]] = {}
    for doc in docs:
        for run in doc["runs"]:
            by_step.setdefault(run.get("step"), []).append(run)
    runs = []
    for step, group in by_step.items():
        run = median_of(group)
        run["step"] = step
        run["repeats"] = len(group)
        statuses = {r.get("status") for r in group}
        run["status"] = "ok" if statuses == {"ok"} else "/".join(sorted(str(s) for s in statuses))
        runs.append(run)
    merged = dict(docs[0])
    merged["runs"] = runs
    merged["combined_from"] = len(docs)
    return merged
