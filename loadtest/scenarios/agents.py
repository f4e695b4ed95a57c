"""agents: agent tokens (``bay_``) subscribing to the channels their scope allows, next to
human users on the same channels; one user per channel publishes at a rate.

Needs the agents API (``POST /api/v1/agents``, ``POST /api/v1/agents/{id}/tokens``); on a
server without it the run is reported as skipped, with the reason.
"""

from __future__ import annotations

from loadtest.plan import ConnSpec, Workload
from loadtest.scenarios import Context


def build(ctx: Context, step: float | None) -> Workload:
    channels = int(ctx.params["channels"])
    humans = int(ctx.params["humans"])
    agents = int(ctx.params["agents"])
    rate = step if step is not None else ctx.params["rate"]
    names = [ctx.channel(f"lt-agents-{i}") for i in range(channels)]
    owner = ctx.owner_token()
    conns = []
    # Agents first: on a server without the API this raises Unsupported before any load.
    for i in range(agents):
        channel = names[i % channels]
        agent_id = ctx.api.create_agent(owner, f"lt-agent-{i}")
        token = ctx.api.create_agent_token(
            owner, agent_id, [{"channel": channel, "actions": ["read"]}]
        )
        conns.append(ConnSpec(token, subscribe=(channel,), kind="agent"))
    for i, token in enumerate(ctx.spread(humans)):
        conns.append(ConnSpec(token, subscribe=(names[i % channels],)))
    for channel in names:
        conns.append(ConnSpec(owner, publish=channel, rate=rate))
    per_channel = (humans + agents) / channels
    return Workload(
        "stream",
        tuple(conns),
        offered={
            "messages_per_s": channels * rate,
            "deliveries_per_s": channels * rate * per_channel,
        },
    )
