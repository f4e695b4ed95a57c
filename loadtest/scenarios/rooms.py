"""rooms: R channels of M members each; every member publishes at a rate and receives
everything said in its room (its own messages included).

Offered deliveries per second = R x M x M x rate. ``--steps`` values are per-member rates.
"""

from __future__ import annotations

from loadtest.plan import ConnSpec, Workload
from loadtest.scenarios import Context


def build(ctx: Context, step: float | None) -> Workload:
    rooms = int(ctx.params["rooms"])
    members = int(ctx.params["members"])
    rate = step if step is not None else ctx.params["rate"]
    tokens = ctx.spread(rooms * members)
    conns = []
    for room in range(rooms):
        channel = ctx.channel(f"lt-room-{room}")
        for member in range(members):
            token = tokens[room * members + member]
            conns.append(ConnSpec(token, subscribe=(channel,), publish=channel, rate=rate))
    return Workload(
        "stream",
        tuple(conns),
        offered={
            "messages_per_s": rooms * members * rate,
            "deliveries_per_s": rooms * members * members * rate,
        },
    )
