"""The server's figures are read from Prometheus text, as any scraper would."""

from __future__ import annotations

from loadtest.servermetrics import ServerSample
from server import metrics

TEXT = """\
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.048576e+08
# TYPE baychat_connections gauge
baychat_connections{kind="user"} 10.0
baychat_connections{kind="agent"} 2.0
# TYPE baychat_deliveries_total counter
baychat_deliveries_total 5000.0
"""


def test_parse_sums_labels_and_reads_process_figures() -> None:
    sample = ServerSample.parse(TEXT, at=1.0)
    assert sample.cpu_s == 12.5
    assert sample.rss_bytes == 104857600
    assert sample.connections == 12
    assert sample.deliveries == 5000
    assert sample.slow_consumers == 0


def test_parses_what_the_server_renders() -> None:
    sample = ServerSample.parse(metrics.render().decode(), at=0.0)
    assert sample.cpu_s > 0
    assert sample.rss_bytes > 0


def test_proc_reader_reads_a_local_process() -> None:
    import os

    from loadtest.servermetrics import ProcReader

    sample = ProcReader(os.getpid()).sample()
    assert sample is not None
    assert sample.cpu_s > 0
    assert sample.rss_bytes > 1_000_000
    assert ProcReader(2**22 + 1).sample() is None  # no such process
