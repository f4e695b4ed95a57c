"""The parent side of a run: spawns the generator processes, keeps them in step, samples
the server's ``/metrics`` at the edges of the measurement window, and gathers results."""

from __future__ import annotations

import multiprocessing
import queue
import time
from dataclasses import dataclass, field
from typing import Any

from loadtest import worker
from loadtest.plan import Window, WorkerPlan, WorkerResult, Workload, split
from loadtest.progress import Progress
from loadtest.servermetrics import MetricsReader, ProcReader, ServerReader, ServerSample

SAMPLE_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Timing:
    ws_url: str
    http_url: str
    processes: int
    body_size: int
    connect_rate: float  # per second, all processes together (0: unpaced)
    warmup_s: float
    duration_s: float
    drain_s: float
    settle_s: float = 1.0
    server_pid: int | None = None  # read the server's CPU/memory from /proc, not /metrics


@dataclass(slots=True)
class Level:
    """Idle: the server at one connection count."""

    target: int
    connected: int
    connect_s: float
    server: ServerSample | None


@dataclass(slots=True)
class Outcome:
    results: list[WorkerResult]
    window: Window | None = None
    before: ServerSample | None = None  # server at the start of the measurement window
    after: ServerSample | None = None  # ... and at its end
    baseline: ServerSample | None = None  # idle: before any connection
    levels: list[Level] = field(default_factory=list)
    peak_pending_acks: float = 0.0  # the most unstored messages seen during the run


class Runner:
    def __init__(self, timing: Timing, progress: Progress) -> None:
        self.timing = timing
        self.progress = progress
        self.metrics: ServerReader = (
            ProcReader(timing.server_pid) if timing.server_pid else MetricsReader(timing.http_url)
        )
        self._ctx = multiprocessing.get_context("spawn")
        self._events: Any = self._ctx.Queue()
        self._controls: list[Any] = []
        self._procs: list[Any] = []
        self._last_sample = 0.0
        self._peak_pending = 0.0

    def run(self, workload: Workload) -> Outcome:
        try:
            self._start(workload)
            if workload.mode == "idle":
                return self._idle(workload)
            return self._timed()
        finally:
            self._stop()

    # -- processes ------------------------------------------------------------------------

    def _start(self, workload: Workload) -> None:
        t = self.timing
        processes = max(1, t.processes)
        shares = split(workload.conns, processes)
        for index, conns in enumerate(shares):
            plan = WorkerPlan(
                index=index,
                ws_url=t.ws_url,
                mode=workload.mode,
                conns=conns,
                body_size=t.body_size,
                connect_rate=t.connect_rate / processes,
                storm_tokens=workload.storm_tokens,
                storm_rate=workload.storm_rate / processes,
            )
            control = self._ctx.Queue()
            proc = self._ctx.Process(
                target=worker.run, args=(plan, control, self._events), daemon=True
            )
            proc.start()
            self._controls.append(control)
            self._procs.append(proc)

    def _stop(self) -> None:
        for control in self._controls:
            control.put(("stop",))
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        self.metrics.close()

    def _broadcast(self, *command: Any) -> None:
        for control in self._controls:
            control.put(command)

    def _wait(self, kind: str, timeout: float) -> dict[int, tuple[Any, ...]]:
        """Handle events until every process has sent one of ``kind``."""
        got: dict[int, tuple[Any, ...]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self._procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"generator processes did not report {kind!r} in time")
            if any(not p.is_alive() for p in self._procs) and kind != "result":
                dead = [p.exitcode for p in self._procs if not p.is_alive()]
                raise RuntimeError(f"a generator process died (exit codes {dead})")
            event = self._next_event(0.1)
            if event is not None and event[0] == kind:
                got[event[1]] = event
        return got

    def _next_event(self, timeout: float) -> tuple[Any, ...] | None:
        now = time.monotonic()
        if now - self._last_sample >= SAMPLE_EVERY_S:
            self._last_sample = now
            sample = self.metrics.sample()
            if sample is not None:
                self._peak_pending = max(self._peak_pending, sample.pending_acks)
            self.progress.server(sample)
        try:
            event: tuple[Any, ...] = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event[0] == "progress":
            self.progress.worker(event[1], event[2])
        return event

    # -- stream and storm -----------------------------------------------------------------

    def _timed(self) -> Outcome:
        t = self.timing
        self.progress.set_phase("connecting")
        self._wait("ready", 120 + len(self._procs) * 60)
        start = time.monotonic_ns() + 300_000_000
        measure = start + int(t.warmup_s * 1e9)
        stop = measure + int(t.duration_s * 1e9)
        window = Window(start, measure, stop, stop + int(t.drain_s * 1e9))
        self._broadcast("go", window)
        self.progress.set_phase("warming up")
        before = self._sample_at(window.measure)
        self.progress.set_phase("measuring")
        after = self._sample_at(window.stop)
        self.progress.set_phase("draining")
        results = self._wait("result", t.drain_s + worker.SETTLE_MAX_S + 120)
        outcome = Outcome([e[2] for _, e in sorted(results.items())], window, before, after)
        outcome.peak_pending_acks = self._peak_pending
        return outcome

    def _sample_at(self, when_ns: int) -> ServerSample | None:
        while time.monotonic_ns() < when_ns:
            self._next_event(min(0.05, max((when_ns - time.monotonic_ns()) / 1e9, 0.0)))
        return self.metrics.sample()

    # -- idle -----------------------------------------------------------------------------

    def _idle(self, workload: Workload) -> Outcome:
        t = self.timing
        processes = len(self._procs)
        baseline = self.metrics.sample()
        levels: list[Level] = []
        for target in workload.levels:
            self.progress.set_phase(f"ramping to {target:,} connections")
            for index, control in enumerate(self._controls):
                control.put(
                    ("level", target // processes + (1 if index < target % processes else 0))
                )
            reached = self._wait("reached", 120 + target / 50)
            connected = sum(int(e[2]) for e in reached.values())
            connect_s = max(float(e[3]) for e in reached.values())
            self._hold(t.settle_s)
            levels.append(Level(target, connected, connect_s, self.metrics.sample()))
        self.progress.set_phase("holding")
        self._hold(t.duration_s)
        after = self.metrics.sample()
        self._broadcast("stop")
        results = self._wait("result", 120)
        return Outcome(
            [e[2] for _, e in sorted(results.items())], None, baseline, after, baseline, levels
        )

    def _hold(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._next_event(min(0.1, max(deadline - time.monotonic(), 0.0)))
