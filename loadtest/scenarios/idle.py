"""idle: ramp to N authenticated connections (through each ``--steps`` level), hold them,
and report the server's memory per connection and the connect rate."""

from __future__ import annotations

from loadtest.plan import ConnSpec, Workload
from loadtest.scenarios import Context


def build(ctx: Context, step: float | None) -> Workload:
    levels = ctx.levels or (int(ctx.params["connections"]),)
    top = max(levels)
    conns = tuple(ConnSpec(token) for token in ctx.spread(top))
    return Workload("idle", conns, levels=tuple(sorted(levels)), offered={"connections": top})
