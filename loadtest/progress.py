"""Live progress in the terminal (rich): what the generator does and what the server spends."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from loadtest.servermetrics import ServerSample

_FIELDS = ("connected", "failed", "sent", "delivered", "acked", "storm", "errors")


class Progress:
    def __init__(self, title: str, *, enabled: bool = True) -> None:
        self.title = title
        self.phase = "starting"
        self._workers: dict[int, dict[str, int]] = {}
        self._last: tuple[float, dict[str, int]] | None = None
        self._rates: dict[str, float] = {}
        self._server: tuple[ServerSample, ServerSample] | None = None
        self._server_last: ServerSample | None = None
        self._console = Console(stderr=True)
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._enabled = enabled and self._console.is_terminal

    def __enter__(self) -> Progress:
        if self._enabled:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._enabled:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)

    def log(self, text: str) -> None:
        self._console.print(text)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._refresh()

    def worker(self, index: int, counters: dict[str, Any]) -> None:
        self._workers[index] = {k: int(counters.get(k, 0)) for k in _FIELDS}
        totals = self.totals()
        now = time.monotonic()
        if self._last is None or now - self._last[0] >= 1.0:
            if self._last is not None:
                elapsed = now - self._last[0]
                self._rates = {k: (totals[k] - self._last[1][k]) / elapsed for k in _FIELDS}
            self._last = (now, totals)
        self._refresh()

    def server(self, sample: ServerSample | None) -> None:
        if sample is None:
            return
        if self._server_last is not None and sample.at - self._server_last.at >= 0.5:
            self._server = (self._server_last, sample)
            self._server_last = sample
        elif self._server_last is None:
            self._server_last = sample
        self._refresh()

    def totals(self) -> dict[str, int]:
        return {k: sum(w.get(k, 0) for w in self._workers.values()) for k in _FIELDS}

    def _refresh(self) -> None:
        if self._enabled:
            self._live.update(self._table())

    def _table(self) -> Table:
        table = Table(title=f"{self.title} - {self.phase}", show_header=True)
        table.add_column("")
        table.add_column("total", justify="right")
        table.add_column("per second", justify="right")
        totals = self.totals()
        for name in _FIELDS:
            table.add_row(name, f"{totals[name]:,}", f"{self._rates.get(name, 0.0):,.0f}")
        if self._server is not None:
            a, b = self._server
            cores = (b.cpu_s - a.cpu_s) / max(b.at - a.at, 1e-9)
            table.add_row("server CPU (cores)", f"{cores:.2f}", "")
            table.add_row("server RSS (MiB)", f"{b.rss_bytes / 2**20:,.1f}", "")
            table.add_row("server connections", f"{b.connections:,.0f}", "")
        table.add_row("generator processes", str(len(self._workers)), "")
        return table
