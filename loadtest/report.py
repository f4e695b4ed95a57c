"""Turning an ``Outcome`` into figures: the JSON result document and its Markdown summary."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections import Counter
from pathlib import Path
from typing import Any

from loadtest.plan import Workload
from loadtest.runner import Outcome, Timing
from loadtest.stats import merge, summarize, tally

SCHEMA = "baychat-loadtest/1"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    with contextlib.suppress(ValueError, OSError):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def summarize_run(
    scenario: str, step: float | None, workload: Workload, outcome: Outcome, timing: Timing
) -> dict[str, Any]:
    results = outcome.results
    errors: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    for result in results:
        errors.update(result.errors)
        closed.update({str(k): v for k, v in result.closed.items()})
    acked: dict[str, list[int]] = {}
    for result in results:
        for channel, seqs in result.acked.items():
            acked.setdefault(channel, []).extend(seqs)
    subscribers = [s for r in results for s in r.subscribers]
    counts = tally(acked, subscribers)
    by_kind = {
        kind: tally(acked, [s for s in subscribers if s.kind == kind]).as_dict()
        for kind in sorted({s.kind for s in subscribers})
    }
    window = timing.duration_s
    delivered = sum(r.delivered_in_window for r in results)
    generator_cpu = sum(r.cpu_s for r in results)
    run: dict[str, Any] = {
        "scenario": scenario,
        "step": step,
        "offered": workload.offered,
        "window_s": window,
        "connections": {
            "planned": len(workload.conns),
            "connected": sum(r.connected for r in results),
            "failed": sum(r.failed_connects for r in results),
        },
        "messages": {"published": sum(r.published for r in results), **counts.as_dict()},
        "by_kind": by_kind,
        "throughput": {
            "deliveries_per_s": delivered / window,
            "acks_per_s": sum(r.acked_in_window for r in results) / window,
        },
        "latency_ms": summarize(merge(r.latency for r in results)).as_dict(),
        "ack_latency_ms": summarize(merge(r.ack_latency for r in results)).as_dict(),
        "connect_latency_ms": summarize(merge(r.connect_latency for r in results)).as_dict(),
        "generator": {
            "processes": len(results),
            "cpu_s": generator_cpu,
            "cpu_cores": generator_cpu / window,
        },
        "errors": dict(errors),
        "closed": dict(closed),
        "server": _server(outcome, delivered),
        # Other work on the host skews every figure: say how busy it was.
        "host_load_average": os.getloadavg()[0],
    }
    if workload.mode == "storm":
        connects = sum(r.connected for r in results)
        run["throughput"]["connects_per_s"] = connects / window
        server_cpu = run["server"].get("cpu_s")
        if server_cpu is not None and connects:
            run["server"]["cpu_us_per_connect"] = server_cpu / connects * 1e6
    if workload.mode == "idle":
        run["levels"] = _levels(outcome)
    run["status"] = "ok" if counts.lost == 0 and counts.duplicated == 0 else "loss"
    return run


def _server(outcome: Outcome, delivered: int) -> dict[str, Any]:
    a, b = outcome.before, outcome.after
    if a is None or b is None:
        return {"available": False}
    cpu = b.cpu_s - a.cpu_s
    counted = b.deliveries - a.deliveries
    # The server's own count covers exactly the window; without /metrics, the generator's.
    per = counted if counted > 0 else delivered
    return {
        "available": True,
        "cpu_s": cpu,
        "cpu_cores": cpu / max(b.at - a.at, 1e-9),
        "deliveries": counted,
        "cpu_us_per_delivery": cpu / per * 1e6 if per else None,
        "rss_mib": b.rss_bytes / 2**20,
        "slow_consumer_disconnects": b.slow_consumers - a.slow_consumers,
        "peak_pending_acks": outcome.peak_pending_acks,
    }


def _levels(outcome: Outcome) -> list[dict[str, Any]]:
    base = outcome.baseline
    rows = []
    previous = 0
    for level in outcome.levels:
        row: dict[str, Any] = {
            "target": level.target,
            "connected": level.connected,
            "connect_s": level.connect_s,
            "connects_per_s": (level.connected - previous) / level.connect_s
            if level.connect_s > 0
            else None,
        }
        if base is not None and level.server is not None and level.connected:
            grown = level.server.rss_bytes - base.rss_bytes
            row["server_rss_mib"] = level.server.rss_bytes / 2**20
            row["server_kib_per_connection"] = grown / level.connected / 1024
        rows.append(row)
        previous = level.connected
    return rows


def document(
    scenario: str, target: str, options: dict[str, Any], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "scenario": scenario,
        "target": target,
        "machine": machine(),
        "options": options,
        "runs": runs,
    }


def write(doc: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    result = directory / "result.json"
    result.write_text(json.dumps(doc, indent=2, sort_keys=True))
    summary = directory / "summary.md"
    summary.write_text(markdown(doc))
    return result, summary


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"# {doc['scenario']} against {doc['target']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{m['memory_bytes'] / 2**30:.1f} GiB, Python {m['python']}.",
        "",
        "Options: " + ", ".join(f"`{k}={v}`" for k, v in sorted(doc["options"].items())),
        "",
    ]
    runs = doc["runs"]
    if doc["scenario"] == "idle":
        lines += [
            "| connections | server RSS MiB | KiB / connection | connects/s |",
            "|---|---|---|---|",
        ]
        for run in runs:
            for level in run.get("levels", []):
                lines.append(
                    f"| {_fmt(level['connected'])} | {_fmt(level.get('server_rss_mib'))} "
                    f"| {_fmt(level.get('server_kib_per_connection'))} "
                    f"| {_fmt(level.get('connects_per_s'), 0)} |"
                )
        return "\n".join(lines) + "\n"
    lines += [
        "| step | offered | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
        "| lost | dup | server µs/delivery | server cores | generator cores | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        if run.get("status") == "skipped":
            lines.append(f"| {_fmt(run.get('step'))} | skipped: {run.get('reason')} |")
            continue
        offered = ", ".join(f"{k}={_fmt(v, 0)}" for k, v in run["offered"].items())
        t = run["throughput"]
        achieved = t.get("connects_per_s") or t.get("deliveries_per_s") or t.get("acks_per_s")
        lat = run["latency_ms"] if run["latency_ms"]["count"] else run["ack_latency_ms"]
        if doc["scenario"] == "storm":
            lat = run["connect_latency_ms"]
        server = run["server"]
        lines.append(
            f"| {_fmt(run['step'])} | {offered} | {_fmt(achieved, 0)} | {_fmt(lat['p50'], 2)} "
            f"| {_fmt(lat['p90'], 2)} | {_fmt(lat['p99'], 2)} | {_fmt(lat['p99_9'], 2)} "
            f"| {_fmt(lat['max'], 2)} | {_fmt(run['messages']['lost'])} "
            f"| {_fmt(run['messages']['duplicated'])} "
            f"| {_fmt(server.get('cpu_us_per_delivery'))} | {_fmt(server.get('cpu_cores'), 2)} "
            f"| {_fmt(run['generator']['cpu_cores'], 2)} | {run['status']} |"
        )
    lines += [
        "",
        "Latency: from the time a message was scheduled to be sent to its arrival "
        "(storm: to `ready`; persist: to `ack`). Loss and duplicates are counted per "
        "subscriber against the messages the server acked.",
    ]
    return "\n".join(lines) + "\n"
