"""The server's own figures, read from its ``/metrics`` like any Prometheus scraper would,
so that its CPU and memory per unit of work are measured from outside (remote hosts too)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True, slots=True)
class ServerSample:
    at: float  # time.monotonic() of the scrape
    cpu_s: float
    rss_bytes: float
    deliveries: float
    connections: float
    pending_acks: float
    slow_consumers: float

    @classmethod
    def parse(cls, text: str, at: float) -> ServerSample:
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return cls(
            at=at,
            cpu_s=totals.get("process_cpu_seconds_total", 0.0),
            rss_bytes=totals.get("process_resident_memory_bytes", 0.0),
            deliveries=totals.get("baychat_deliveries_total", 0.0),
            connections=totals.get("baychat_connections", 0.0),
            pending_acks=totals.get("baychat_persistence_pending_acks", 0.0),
            slow_consumers=totals.get("baychat_slow_consumer_disconnects_total", 0.0),
        )


class ServerReader(Protocol):
    def sample(self) -> ServerSample | None: ...

    def close(self) -> None: ...


class MetricsReader:
    """Scrapes ``{base_url}/metrics``; returns None when the server does not expose it."""

    def __init__(self, base_url: str) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=5.0)

    def sample(self) -> ServerSample | None:
        try:
            response = self._client.get("/metrics")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return ServerSample.parse(response.text, time.monotonic())

    def close(self) -> None:
        self._client.close()


class ProcReader:
    """CPU and memory of a local server process from ``/proc``, for servers without
    ``/metrics`` (e.g. to compare with an older build). Work counters read as zero."""

    def __init__(self, pid: int) -> None:
        self._stat = Path(f"/proc/{pid}/stat")
        self._statm = Path(f"/proc/{pid}/statm")
        self._tick = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def sample(self) -> ServerSample | None:
        try:
            fields = self._stat.read_text().rsplit(")", 1)[1].split()
            rss_pages = int(self._statm.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
        return ServerSample(time.monotonic(), cpu, rss_pages * self._page, 0, 0, 0, 0)

    def close(self) -> None:
        return None
