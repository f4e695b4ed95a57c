"""persist: P publishers, each on its own channel, at a rate; measures the time from the
scheduled send to the ``ack`` (stored, encrypted) and the server's backlog of unstored
messages. ``--steps`` values are per-publisher rates."""

from __future__ import annotations

from loadtest.plan import ConnSpec, Workload
from loadtest.scenarios import Context


def build(ctx: Context, step: float | None) -> Workload:
    publishers = int(ctx.params["publishers"])
    rate = step if step is not None else ctx.params["rate"]
    tokens = ctx.spread(publishers)
    conns = [
        ConnSpec(token, publish=ctx.channel(f"lt-persist-{i}"), rate=rate)
        for i, token in enumerate(tokens)
    ]
    return Workload("stream", tuple(conns), offered={"messages_per_s": publishers * rate})
