"""Counting what arrived against what was acked, and latency histograms (HDR).

``tally`` is pure: tests feed it fabricated records to prove that loss and duplicates are
counted right.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from hdrh.histogram import HdrHistogram

from loadtest.plan import SubscriberRecord

HIGHEST_US = 3_600_000_000  # one hour: anything slower is recorded as this
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, 3)


class Recorder:
    """Collects microsecond samples cheaply on the hot path; builds the histogram later
    (recording each value into an HDR histogram in Python costs a few microseconds, so
    equal values are grouped first)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: array[int] = array("q")

    def histogram(self) -> HdrHistogram:
        histogram = new_histogram()
        for value, count in Counter(self.values).items():
            histogram.record_value(min(max(value, 1), HIGHEST_US), count)
        return histogram

    def encoded(self) -> str:
        return encode(self.histogram())


def encode(histogram: HdrHistogram) -> str:
    raw = histogram.encode()
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def merge(encoded: Iterable[str]) -> HdrHistogram:
    total = new_histogram()
    for item in encoded:
        if item:
            total.add(HdrHistogram.decode(item))
    return total


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50: float
    p90: float
    p99: float
    p99_9: float
    max: float
    mean: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(histogram: HdrHistogram, scale: float = 1000.0) -> LatencySummary:
    """Percentiles in milliseconds (from microsecond samples) by default."""
    count = int(histogram.get_total_count())
    if count == 0:
        return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    values = {name: histogram.get_value_at_percentile(p) / scale for name, p in PERCENTILES}
    return LatencySummary(
        count=count,
        p50=values["p50"],
        p90=values["p90"],
        p99=values["p99"],
        p99_9=values["p99_9"],
        max=histogram.get_max_value() / scale,
        mean=histogram.get_mean_value() / scale,
    )


@dataclass(frozen=True, slots=True)
class Tally:
    """Deliveries counted per subscriber against the acked messages of its channel.

    ``expected``: acked messages times the subscribers of their channel. ``delivered``:
    of those, how many arrived (once or more). ``lost``: expected but never arrived.
    ``duplicated``: arrivals beyond the first of the same seq. ``unacked``: arrivals of
    messages whose ack the publisher never saw (not an error: e.g. acks still in flight).
    """

    subscribers: int
    acked: int
    expected: int
    delivered: int
    lost: int
    duplicated: int
    unacked: int
    out_of_order: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def tally(acked: Mapping[str, Iterable[int]], subscribers: Iterable[SubscriberRecord]) -> Tally:
    acked_sets = {channel: set(seqs) for channel, seqs in acked.items()}
    count = expected = delivered = lost = duplicated = unacked = out_of_order = 0
    for record in subscribers:
        count += 1
        want = acked_sets.get(record.channel, set())
        seen = Counter(record.seqs)
        expected += len(want)
        got = sum(1 for seq in want if seq in seen)
        delivered += got
        lost += len(want) - got
        duplicated += sum(n - 1 for n in seen.values() if n > 1)
        unacked += sum(1 for seq in seen if seq not in want)
        out_of_order += sum(1 for a, b in zip(record.seqs, record.seqs[1:], strict=False) if b < a)
    return Tally(
        subscribers=count,
        acked=sum(len(s) for s in acked_sets.values()),
        expected=expected,
        delivered=delivered,
        lost=lost,
        duplicated=duplicated,
        unacked=unacked,
        out_of_order=out_of_order,
    )
