"""Loss and duplicates are counted per subscriber against what was acked."""

from __future__ import annotations

from array import array

from loadtest.plan import SubscriberRecord
from loadtest.stats import Recorder, merge, summarize, tally


def record(channel: str, seqs: list[int], kind: str = "user") -> SubscriberRecord:
    return SubscriberRecord(channel, array("q", seqs), kind)


def test_every_acked_message_once_is_clean() -> None:
    counts = tally({"a": [1, 2, 3]}, [record("a", [1, 2, 3]), record("a", [1, 2, 3])])
    assert counts.expected == counts.delivered == 6
    assert (counts.lost, counts.duplicated, counts.unacked, counts.out_of_order) == (0, 0, 0, 0)


def test_a_dropped_message_is_lost_for_that_subscriber_only() -> None:
    counts = tally({"a": [1, 2, 3, 4]}, [record("a", [1, 2, 4]), record("a", [1, 2, 3, 4])])
    assert counts.expected == 8
    assert counts.delivered == 7
    assert counts.lost == 1
    assert counts.duplicated == 0


def test_a_duplicated_message_is_counted_once_per_extra_copy() -> None:
    counts = tally({"a": [1, 2, 3]}, [record("a", [1, 2, 2, 2, 3])])
    assert counts.delivered == 3
    assert counts.duplicated == 2
    assert counts.lost == 0
    assert counts.out_of_order == 0  # a repeated seq is a duplicate, not a reordering


def test_unacked_deliveries_are_not_loss_and_channels_are_separate() -> None:
    counts = tally(
        {"a": [1, 2], "b": [1]},
        [record("a", [1, 2, 3]), record("b", [1]), record("c", [7])],
    )
    assert counts.unacked == 2  # seq 3 on a (ack not seen) and seq 7 on c (nothing acked)
    assert counts.lost == 0
    assert counts.expected == counts.delivered == 3


def test_reordering_is_reported() -> None:
    counts = tally({"a": [1, 2, 3]}, [record("a", [1, 3, 2])])
    assert counts.out_of_order == 1
    assert counts.lost == counts.duplicated == 0


def test_latency_percentiles_from_merged_histograms() -> None:
    first, second = Recorder(), Recorder()
    first.values.extend([1000] * 90)  # 1 ms
    second.values.extend([100_000] * 10)  # 100 ms
    summary = summarize(merge([first.encoded(), second.encoded(), ""]))
    assert summary.count == 100
    assert 0.99 <= summary.p50 <= 1.01
    assert 99 <= summary.p99 <= 101
    assert 99 <= summary.max <= 101
    assert summarize(merge([])).count == 0
