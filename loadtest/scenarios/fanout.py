"""fanout: one channel, N subscribers, one publisher at an offered rate (open loop).

Offered deliveries per second = rate x subscribers. ``--steps`` values are publish rates.
"""

from __future__ import annotations

from loadtest.plan import ConnSpec, Workload
from loadtest.scenarios import Context

CHANNEL = "lt-fanout"


def build(ctx: Context, step: float | None) -> Workload:
    subscribers = int(ctx.params["subscribers"])
    rate = step if step is not None else ctx.params["rate"]
    channel = ctx.channel(CHANNEL)
    conns = [ConnSpec(token, subscribe=(channel,)) for token in ctx.spread(subscribers)]
    # The publisher does not subscribe: its acks are what deliveries are checked against.
    conns.append(ConnSpec(ctx.owner_token(), publish=channel, rate=rate))
    return Workload(
        "stream",
        tuple(conns),
        offered={"messages_per_s": rate, "deliveries_per_s": rate * subscribers},
    )
