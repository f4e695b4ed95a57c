"""A load-generator process: runs one ``WorkerPlan`` on its own event loop (uvloop).

The parent talks to it over two queues. Stream and storm plans: the worker connects, says
``ready``, waits for ``go`` with the shared ``Window``, runs, and sends its ``result``.
Idle plans: the worker opens connections up to each ``level`` it is sent and reports when
it has reached it, until ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from multiprocessing.queues import Queue
from typing import Any

from loadtest.client import Client, ConnectError, Tracker, open_client, publish_prefix
from loadtest.plan import ConnSpec, SubscriberRecord, Window, WorkerPlan, WorkerResult
from loadtest.stats import Recorder
from loadtest.stormconnect import StormTarget, storm_connect

CONNECT_CONCURRENCY = 64
STORM_CONCURRENCY = 256
PROGRESS_EVERY_S = 0.5
TIMEOUT_S = 15.0
SETTLE_QUIET_S = 0.5
SETTLE_MAX_S = 60.0
PUBLISH_TICK_NS = 1_000_000


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(plan: WorkerPlan, control: Queue[Any], events: Queue[Any]) -> None:
    """Process entry point."""
    raise_fd_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency of the loadtest extra
        pass
    asyncio.run(_Worker(plan, control, events).main())


async def sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


class _Schedule:
    """Where one publisher is in its schedule."""

    __slots__ = ("client", "due", "interval", "prefix", "request_id")

    def __init__(self, client: Client, prefix: bytes, interval: int, due: int) -> None:
        self.client = client
        self.prefix = prefix
        self.interval = interval
        self.due = due
        self.request_id = 0


class _Worker:
    def __init__(self, plan: WorkerPlan, control: Queue[Any], events: Queue[Any]) -> None:
        self.plan = plan
        self.control = control
        self.events = events
        self.tracker = Tracker()
        self.result = WorkerResult(plan.index)
        self.clients: list[tuple[ConnSpec, Client]] = []
        self.connect_latency = Recorder()

    async def command(self) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, self.control.get)

    async def main(self) -> None:
        progress = asyncio.create_task(self.report_progress())
        try:
            if self.plan.mode == "idle":
                await self.idle()
            else:
                if self.plan.mode == "stream":
                    await self.connect(self.plan.conns)
                self.events.put(("ready", self.plan.index, self.result.connected))
                command = await self.command()
                if command[0] == "go":
                    await self.stream(
                        command[1]
                    ) if self.plan.mode == "stream" else await self.storm(command[1])
            self.finish()
        finally:
            progress.cancel()
            for _, client in self.clients:
                client.close()
        self.events.put(("result", self.plan.index, self.result))

    async def report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            tracker = self.tracker
            self.events.put(
                (
                    "progress",
                    self.plan.index,
                    {
                        "connected": self.result.connected,
                        "failed": self.result.failed_connects,
                        "sent": tracker.sent,
                        "delivered": tracker.delivered,
                        "acked": sum(len(a) for a in tracker.acked.values()),
                        "storm": self.result.storm_completed,
                        "errors": sum(tracker.errors.values()),
                    },
                )
            )

    # -- connections ----------------------------------------------------------------------

    async def connect(self, specs: tuple[ConnSpec, ...]) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        interval = 1 / self.plan.connect_rate if self.plan.connect_rate > 0 else 0.0
        started = time.monotonic()

        async def one(spec: ConnSpec) -> None:
            async with gate:
                t0 = time.monotonic_ns()
                try:
                    client = await open_client(
                        self.plan.ws_url, spec.token, self.tracker, TIMEOUT_S
                    )
                    for channel in spec.subscribe:
                        await client.subscribe(channel, TIMEOUT_S)
                except (ConnectError, TimeoutError) as exc:
                    self.result.failed_connects += 1
                    self.tracker.error(getattr(exc, "reason", "timeout"))
                    return
                self.connect_latency.values.append((time.monotonic_ns() - t0) // 1000)
                self.clients.append((spec, client))
                self.result.connected += 1

        tasks = []
        for i, spec in enumerate(specs):
            if interval:
                await asyncio.sleep(max(started + i * interval - time.monotonic(), 0))
            tasks.append(asyncio.create_task(one(spec)))
        await asyncio.gather(*tasks)

    async def idle(self) -> None:
        opened = 0
        while True:
            command = await self.command()
            if command[0] != "level":
                return
            target = min(int(command[1]), len(self.plan.conns))
            t0 = time.monotonic()
            await self.connect(self.plan.conns[opened:target])
            opened = max(opened, target)
            self.events.put(
                (
                    "reached",
                    self.plan.index,
                    self.result.connected,
                    time.monotonic() - t0,
                )
            )

    # -- streaming ------------------------------------------------------------------------

    async def stream(self, window: Window) -> None:
        self.tracker.window.measure = window.measure
        self.tracker.window.stop = window.stop
        senders = [(s, c) for s, c in self.clients if s.publish is not None and s.rate > 0]
        publishing = asyncio.create_task(self.publish(senders, window))
        await self.measure_cpu(window)
        await publishing
        await sleep_until(window.end)
        await self.settle()

    async def settle(self) -> None:
        """After the drain, keep waiting while messages or acks still arrive: a message
        that is late is slow, not lost (up to ``SETTLE_MAX_S``)."""
        deadline = time.monotonic() + SETTLE_MAX_S
        tracker = self.tracker
        while time.monotonic() < deadline:
            seen = (tracker.delivered, sum(len(a) for a in tracker.acked.values()))
            await asyncio.sleep(SETTLE_QUIET_S)
            if seen == (tracker.delivered, sum(len(a) for a in tracker.acked.values())):
                return

    async def measure_cpu(self, window: Window) -> None:
        await sleep_until(window.measure)
        before = cpu_seconds()
        await sleep_until(window.stop)
        self.result.cpu_s = cpu_seconds() - before

    async def publish(self, senders: list[tuple[ConnSpec, Client]], window: Window) -> None:
        """Open loop: every message is due at a fixed time; late ones go out at once.

        One schedule for all the publishers of the process rather than a task each: a
        wake-up (timer, future, task step) per message cost about as much generator CPU
        as sending it. The loop's timers only resolve milliseconds anyway, so a wake-up
        sends what every publisher has due by then, and wake-ups are at least a
        millisecond apart: a message may go out up to about a millisecond after its due
        time, which the latency (measured from the due time) includes."""
        size = self.plan.body_size
        schedule: list[_Schedule] = []
        for i, (spec, client) in enumerate(senders):
            assert spec.publish is not None
            interval = int(1e9 / spec.rate)
            # Publishers are spread over one interval, not all at once.
            due = window.start + int(i / len(senders) * interval)
            schedule.append(_Schedule(client, publish_prefix(spec.publish), interval, due))
        everyone = list(schedule)
        stop = window.stop
        while schedule:
            # At least one tick: the loop rounds a timer to whole milliseconds, so a shorter
            # sleep would wake at once and spin until the next publisher's due time.
            delay = min(item.due for item in schedule) - time.monotonic_ns()
            await asyncio.sleep(max(delay, PUBLISH_TICK_NS) / 1e9)
            now = time.monotonic_ns()
            for item in schedule:
                client, due = item.client, item.due
                if due > now:
                    continue
                if client.transport is None or client.transport.is_disconnected:
                    item.due = stop
                    continue
                request_id = item.request_id
                while due <= now and due < stop:
                    request_id += 1
                    client.publish(item.prefix, request_id, due, size)
                    due += item.interval
                item.request_id, item.due = request_id, due
            schedule = [item for item in schedule if item.due < stop]
        self.result.published += sum(item.request_id for item in everyone)

    # -- storm ----------------------------------------------------------------------------

    async def storm(self, window: Window) -> None:
        tokens = self.plan.storm_tokens
        rate = self.plan.storm_rate
        if not tokens or rate <= 0:
            return
        gate = asyncio.Semaphore(STORM_CONCURRENCY)
        interval = int(1e9 / rate)
        tasks: set[asyncio.Task[None]] = set()
        url = self.plan.ws_url
        target = StormTarget(url) if url.startswith("ws://") else None

        async def one(token: str, due: int) -> None:
            client: Client | None = None
            try:
                if target is not None:
                    await storm_connect(target, token, TIMEOUT_S)  # closes once ready
                else:
                    client = await open_client(url, token, self.tracker, TIMEOUT_S)
            except ConnectError as exc:
                self.result.failed_connects += 1
                self.tracker.error(exc.reason)
                return
            finally:
                gate.release()
            done = time.monotonic_ns()
            if client is not None:
                client.close()
            self.result.storm_completed += 1
            if window.measure <= due < window.stop:
                self.result.connected += 1
                self.connect_latency.values.append((done - due) // 1000)

        measuring = asyncio.create_task(self.measure_cpu(window))
        due = window.start
        i = 0
        while due < window.stop:
            await sleep_until(due)
            now = time.monotonic_ns()
            while due <= now and due < window.stop:
                if gate.locked():
                    self.tracker.error("generator_behind")  # open loop: never queue up
                else:
                    await gate.acquire()
                    task = asyncio.create_task(one(tokens[i % len(tokens)], due))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                i += 1
                due += interval
        await measuring
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)
        await sleep_until(window.end)

    # -- results --------------------------------------------------------------------------

    def finish(self) -> None:
        tracker, result = self.tracker, self.result
        result.errors = dict(tracker.errors)
        result.acked = {channel: list(seqs) for channel, seqs in tracker.acked.items()}
        result.subscribers = [
            SubscriberRecord(channel, seqs, spec.kind)
            for spec, client in self.clients
            for channel, seqs in client.seqs.items()
        ]
        result.latency = tracker.latency.encoded()
        result.ack_latency = tracker.ack_latency.encoded()
        result.connect_latency = self.connect_latency.encoded()
        result.delivered_in_window = tracker.delivered_in_window
        result.acked_in_window = tracker.acked_in_window
        result.closed = dict(tracker.closed)
