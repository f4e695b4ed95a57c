"""Work is dealt evenly over the generator processes."""

from __future__ import annotations

from loadtest.plan import ConnSpec, split


def test_split_deals_round_robin() -> None:
    conns = tuple(ConnSpec(f"t{i}") for i in range(7))
    shares = split(conns, 3)
    assert [len(s) for s in shares] == [3, 2, 2]
    assert sorted(c.token for s in shares for c in s) == sorted(c.token for c in conns)
    assert split((), 2) == [(), ()]
