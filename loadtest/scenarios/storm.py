"""storm: connections opened, authenticated (access token in the ``auth`` frame, verified
by the server) and closed again, at an offered rate per second. ``--steps`` values are
connect rates."""

from __future__ import annotations

from loadtest.plan import Workload
from loadtest.scenarios import Context


def build(ctx: Context, step: float | None) -> Workload:
    rate = step if step is not None else ctx.params["rate"]
    return Workload(
        "storm",
        storm_tokens=tuple(ctx.tokens()),
        storm_rate=rate,
        offered={"connects_per_s": rate},
    )
