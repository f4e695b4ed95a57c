"""Agent scopes: which actions a token allows on which channels. Pure functions, no I/O.

A grant names a channel or an fnmatch-style pattern (``support-*``, ``team-?``) and a set of
actions (read, history, write, presence). Patterns match public channels only; a private
channel is reachable only through a grant that names it exactly, so that a wildcard never
opens a private conversation by accident. A token created without scopes gets
``READ_ONLY``: read and history on every public channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

from storage.agents import Grant

ACTIONS: tuple[str, ...] = ("read", "history", "write", "presence")
READ_ONLY: tuple[Grant, ...] = (Grant("*", ("read", "history")),)
MAX_GRANTS = 50
# Channel-name characters plus the two wildcards; no character classes.
PATTERN = r"^[a-z0-9_.\-*?]{1,64}$"
_PATTERN = re.compile(PATTERN)
_WILDCARDS = frozenset("*?")


class ScopeError(ValueError):
    pass


def normalise(grants: Iterable[Grant] | None) -> tuple[Grant, ...]:
    """Validate grants and put them in a canonical order; None or empty means READ_ONLY."""
    result: list[Grant] = []
    for grant in grants or ():
        if not _PATTERN.match(grant.channel):
            raise ScopeError("a scope channel is a channel name or a pattern using * and ?")
        if not grant.actions or not set(grant.actions) <= set(ACTIONS):
            raise ScopeError(f"scope actions are a non-empty subset of {', '.join(ACTIONS)}")
        actions = tuple(a for a in ACTIONS if a in grant.actions)
        result.append(Grant(grant.channel, actions))
    if len(result) > MAX_GRANTS:
        raise ScopeError(f"at most {MAX_GRANTS} scopes per token")
    return tuple(result) if result else READ_ONLY


def _covers(grant: Grant, channel: str, private: bool) -> bool:
    if private or not _WILDCARDS.isdisjoint(channel):
        return grant.channel == channel and _WILDCARDS.isdisjoint(grant.channel)
    return fnmatchcase(channel, grant.channel)


def mentions(grants: Iterable[Grant], channel: str, *, private: bool = False) -> bool:
    """Whether any grant reaches ``channel`` at all (for any action)."""
    return any(_covers(g, channel, private) for g in grants)


def permits(grants: Iterable[Grant], channel: str, action: str, *, private: bool) -> bool:
    return any(action in g.actions and _covers(g, channel, private) for g in grants)
