"""Agent scopes: per channel or pattern, per action; wildcards never reach private
channels; no scopes given means read-only."""

from __future__ import annotations

import pytest

from server.auth.scopes import READ_ONLY, ScopeError, mentions, normalise, permits
from storage.agents import Grant


def test_no_scopes_means_read_and_history_on_public_channels() -> None:
    grants = normalise(None)
    assert grants == READ_ONLY == normalise([])
    assert permits(grants, "general", "read", private=False)
    assert permits(grants, "general", "history", private=False)
    assert not permits(grants, "general", "write", private=False)
    assert not permits(grants, "general", "presence", private=False)
    assert not permits(grants, "secret", "read", private=True)


def test_a_scope_for_one_channel_gives_nothing_on_another() -> None:
    grants = normalise([Grant("x", ("read", "write"))])
    assert permits(grants, "x", "write", private=False)
    assert not mentions(grants, "y")
    for action in ("read", "history", "write", "presence"):
        assert not permits(grants, "y", action, private=False)


def test_patterns_match_public_channels_only() -> None:
    grants = normalise([Grant("support-*", ("read", "write"))])
    assert permits(grants, "support-eu", "write", private=False)
    assert not permits(grants, "sales", "write", private=False)
    assert not permits(grants, "support-vip", "read", private=True)
    exact = normalise([Grant("support-vip", ("read",))])
    assert permits(exact, "support-vip", "read", private=True)


def test_actions_are_canonicalised() -> None:
    [grant] = normalise([Grant("a", ("write", "read", "write"))])
    assert grant.actions == ("read", "write")


@pytest.mark.parametrize(
    "grant",
    [
        Grant("", ("read",)),
        Grant("UPPER", ("read",)),
        Grant("[abc]", ("read",)),
        Grant("a", ()),
        Grant("a", ("delete",)),
    ],
)
def test_invalid_scopes_are_refused(grant: Grant) -> None:
    with pytest.raises(ScopeError):
        normalise([grant])
