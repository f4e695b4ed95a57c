"""``baychat-loadtest`` / ``python -m loadtest``: one command per scenario.

Every scenario speaks only the public protocol: the HTTP API to log in and make channels
(and agents), ``/ws`` for the load, ``/metrics`` for the server's own CPU and memory.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from loadtest import plots, report
from loadtest.combine import combine
from loadtest.credentials import Api, Credentials, Unsupported, provision_local
from loadtest.progress import Progress
from loadtest.runner import Runner, Timing
from loadtest.scenarios import (
    Builder,
    Context,
    agents,
    fanout,
    idle,
    persist,
    rooms,
    storm,
)

DEFAULT_CREDENTIALS = Path("loadtest-results/credentials.json")


def _steps(value: str | None) -> list[float] | None:
    if not value:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of numbers") from None


def common(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--target",
            default="http://127.0.0.1:8000",
            show_default=True,
            help="Base URL of the server (HTTP API, /ws and /metrics).",
        ),
        click.option(
            "--credentials",
            type=click.Path(path_type=Path),
            default=DEFAULT_CREDENTIALS,
            show_default=True,
            help="Accounts file; created with the local `baychat` CLI if missing.",
        ),
        click.option(
            "--users",
            default=8,
            show_default=True,
            help="Accounts to create when provisioning (connections share them).",
        ),
        click.option(
            "--processes",
            default=2,
            show_default=True,
            help="Load-generator processes.",
        ),
        click.option("--size", default=200, show_default=True, help="Message body bytes."),
        click.option(
            "--duration",
            default=10.0,
            show_default=True,
            help="Measurement window, seconds.",
        ),
        click.option(
            "--warmup",
            default=2.0,
            show_default=True,
            help="Seconds of load before measuring.",
        ),
        click.option(
            "--drain",
            default=2.0,
            show_default=True,
            help="Seconds to wait for in-flight messages after the window.",
        ),
        click.option(
            "--connect-rate",
            default=0.0,
            show_default=True,
            help="Connections opened per second while connecting (0: unpaced).",
        ),
        click.option(
            "--steps",
            default=None,
            help="Comma-separated values of the "
            "scenario's main knob, one run each (e.g. 20,50,100).",
        ),
        click.option(
            "--out",
            type=click.Path(path_type=Path),
            default=None,
            help="Result directory (default loadtest-results/SCENARIO-TIME).",
        ),
        click.option("--live/--no-live", default=True, help="Live progress in the terminal."),
        click.option(
            "--server-pid",
            type=int,
            default=None,
            help="Local server process to read CPU/memory from /proc instead of "
            "/metrics (for servers without it).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group()
def main() -> None:
    """Load-test a BayChat server through its public protocol."""


def _credentials(path: Path, users: int, progress: Progress) -> Credentials:
    if path.exists():
        return Credentials.load(path)
    progress.log(f"provisioning {users} accounts with the local baychat CLI -> {path}")
    creds = provision_local(users)
    creds.save(path)
    return creds


def _execute(scenario: str, build: Builder, params: dict[str, float], opts: dict[str, Any]) -> None:
    target = opts["target"].rstrip("/")
    ws_url = target.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
    steps = _steps(opts["steps"])
    out = opts["out"] or Path("loadtest-results") / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    timing = Timing(
        ws_url=ws_url,
        http_url=target,
        processes=opts["processes"],
        body_size=opts["size"],
        connect_rate=opts["connect_rate"],
        warmup_s=opts["warmup"],
        duration_s=opts["duration"],
        drain_s=opts["drain"],
        server_pid=opts["server_pid"],
    )
    runs: list[dict[str, Any]] = []
    api = Api(target)
    try:
        with Progress(scenario, enabled=opts["live"]) as progress:
            ctx = Context(api, _credentials(opts["credentials"], opts["users"], progress), params)
            plan: list[float | None] = list(steps) if steps and scenario != "idle" else [None]
            if scenario == "idle" and steps:
                ctx.levels = tuple(int(v) for v in steps)
            for step in plan:
                try:
                    workload = build(ctx, step)
                except Unsupported as exc:
                    progress.log(f"[yellow]skipped[/]: {exc}")
                    runs.append(
                        {
                            "scenario": scenario,
                            "step": step,
                            "status": "skipped",
                            "reason": str(exc),
                        }
                    )
                    break
                progress.set_phase(f"step {step}" if step is not None else "run")
                outcome = Runner(timing, progress).run(workload)
                run = report.summarize_run(scenario, step, workload, outcome, timing)
                runs.append(run)
                progress.log(_line(run))
                if run["errors"].get("rate_limited") or "4502" in run["closed"]:
                    progress.log(
                        "[yellow]the server rate-limited the generator[/]: run it with the "
                        "limits of a benchmark server (docs/BENCHMARKS.md)"
                    )
    finally:
        api.close()
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}
    doc = report.document(scenario, target, {**options, **params}, runs)
    result, summary = report.write(doc, out)
    pngs = plots.plot(doc, out)
    click.echo(f"result: {result}\nsummary: {summary}")
    for png in pngs:
        click.echo(f"plot: {png}")
    if any(r.get("status") == "loss" for r in runs):
        # Loss or duplicates are a failed run: say so to scripts and CI.
        click.get_current_context().exit(1)


def _line(run: dict[str, Any]) -> str:
    t, m, s = run["throughput"], run["messages"], run["server"]
    lat = run["latency_ms"] if run["latency_ms"]["count"] else run["ack_latency_ms"]
    storm = f"connects/s={t['connects_per_s']:,.0f} " if "connects_per_s" in t else ""
    if storm:
        lat = run["connect_latency_ms"]
    return (
        f"step={run['step']} {storm}deliveries/s={t['deliveries_per_s']:,.0f} "
        f"acks/s={t['acks_per_s']:,.0f} p50={lat['p50']:.2f}ms p99={lat['p99']:.2f}ms "
        f"lost={m['lost']} dup={m['duplicated']} "
        f"server_us/delivery={s.get('cpu_us_per_delivery') or 0:.1f} "
        f"server_cores={s.get('cpu_cores', 0):.2f} "
        f"generator_cores={run['generator']['cpu_cores']:.2f} status={run['status']}"
    )


def _command(name: str, build: Builder, **knobs: tuple[float, str]) -> None:
    def command(**opts: Any) -> None:
        params = {key: float(opts.pop(key)) for key in knobs}
        _execute(name, build, params, opts)

    command.__doc__ = sys.modules[build.__module__].__doc__
    wrapped = common(functools.wraps(command)(command))
    for key, (default, help_text) in reversed(knobs.items()):
        wrapped = click.option(
            f"--{key.replace('_', '-')}",
            key,
            default=default,
            show_default=True,
            help=help_text,
        )(wrapped)
    main.command(name)(wrapped)


_command(
    "fanout",
    fanout.build,
    subscribers=(500, "Subscribers of the channel."),
    rate=(100, "Messages per second published (--steps values)."),
)
_command(
    "rooms",
    rooms.build,
    rooms=(10, "Channels."),
    members=(10, "Members per channel, each publishing."),
    rate=(1, "Messages per second per member (--steps values)."),
)
_command(
    "idle",
    idle.build,
    connections=(1000, "Connections to hold (--steps: levels to ramp through)."),
)
_command("storm", storm.build, rate=(200, "Connects per second offered (--steps values)."))
_command(
    "persist",
    persist.build,
    publishers=(10, "Publishers, each on its own channel."),
    rate=(100, "Messages per second per publisher (--steps values)."),
)
_command(
    "agents",
    agents.build,
    channels=(4, "Channels."),
    humans=(40, "User subscribers, spread over the channels."),
    agents=(8, "Agents, each with a read token scoped to one channel."),
    rate=(20, "Messages per second per channel (--steps values)."),
)


@main.command()
@common
def provision(**opts: Any) -> None:
    """Create the accounts file with the local `baychat` CLI (same BAYCHAT_* environment)."""
    path: Path = opts["credentials"]
    creds = provision_local(opts["users"])
    creds.save(path)
    click.echo(f"{len(creds.users)} accounts of tenant {creds.tenant} -> {path}")


@main.command("combine")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
def combine_command(results: tuple[Path, ...], out: Path) -> None:
    """Merge result.json files of repeated runs into their per-step medians (+ plots)."""
    docs = [json.loads(path.read_text()) for path in results]
    doc = combine(docs)
    result, summary = report.write(doc, out)
    click.echo(f"result: {result}\nsummary: {summary}")
    for png in plots.plot(doc, out):
        click.echo(f"plot: {png}")
