"""PNG plots of a ``--steps`` run: latency percentiles and achieved throughput against the
offered rate (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_PERCENTILES = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9"))


def _offered(run: dict[str, Any]) -> float:
    offered = run["offered"]
    for key in ("deliveries_per_s", "connects_per_s", "messages_per_s", "connections"):
        if key in offered:
            return float(offered[key])
    return float(run.get("step") or 0)


def _latency(run: dict[str, Any], scenario: str) -> dict[str, float]:
    if scenario == "storm":
        return dict(run["connect_latency_ms"])
    if scenario == "persist":
        return dict(run["ack_latency_ms"])
    return dict(run["latency_ms"])


def _achieved(run: dict[str, Any]) -> float:
    t = run["throughput"]
    return float(t.get("connects_per_s") or t.get("deliveries_per_s") or t.get("acks_per_s") or 0)


def plot(doc: dict[str, Any], directory: Path) -> list[Path]:
    runs = [r for r in doc["runs"] if r.get("status") != "skipped" and "throughput" in r]
    scenario = doc["scenario"]
    if len(runs) < 2 or scenario == "idle":
        return []
    offered = [_offered(r) for r in runs]
    unit = "deliveries/s" if "deliveries_per_s" in runs[0]["offered"] else "per second"
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for key, label in _PERCENTILES:
        ax.plot(
            offered, [max(_latency(r, scenario)[key], 1e-3) for r in runs], marker="o", label=label
        )
    ax.set_yscale("log")
    ax.set_xlabel(f"offered ({unit})")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{scenario}: latency percentiles")
    ax.axhline(100, color="grey", linestyle=":", linewidth=1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(directory / f"{scenario}-latency.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(offered, offered, linestyle=":", color="grey", label="offered")
    ax.plot(offered, [_achieved(r) for r in runs], marker="o", label="achieved")
    ax.set_xlabel(f"offered ({unit})")
    ax.set_ylabel(f"achieved ({unit})")
    ax.set_title(f"{scenario}: throughput")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(directory / f"{scenario}-throughput.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths
