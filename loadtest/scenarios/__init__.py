"""The scenarios. Each module builds a ``Workload`` for one run (one ``--steps`` value)
from a ``Context``; running and measuring it is common to all (``loadtest.runner``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import cycle, islice

from loadtest.credentials import Api, Credentials
from loadtest.plan import Workload


@dataclass
class Context:
    api: Api
    credentials: Credentials
    params: dict[str, float]  # the scenario's options (counts and rates)
    levels: tuple[int, ...] = ()  # idle: the --steps connection counts
    _tokens: list[str] = field(default_factory=list)

    def tokens(self) -> list[str]:
        """One fresh access token per account (logins are slow by design: argon2)."""
        if not self._tokens:
            creds = self.credentials
            self._tokens = [self.api.login(creds.tenant, user) for user in creds.users]
        return self._tokens

    def owner_token(self) -> str:
        return self.tokens()[0]

    def spread(self, count: int) -> list[str]:
        """``count`` tokens, cycling over the accounts."""
        return list(islice(cycle(self.tokens()), count))

    def channel(self, name: str) -> str:
        self.api.ensure_channel(self.owner_token(), name)
        return name


Builder = Callable[[Context, float | None], Workload]
