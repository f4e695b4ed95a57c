"""Real OS processes for end-to-end tests: start a command with an environment, wait until
it answers ``/healthz`` or ``/readyz``, stop it politely or kill it. Each process writes to
its own log file; ``Processes`` prints the tails of those logs when a test fails, so a
dead gateway explains itself.

    async with Processes(tmp_path) as procs:
        gateway = procs.gateway("a", env)            # `baychat serve` on a free port
        worker = procs.worker("w1", env)             # `baychat worker`
        await gateway.wait_ready()
        gateway.kill()                               # SIGKILL
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

from tests.backends import free_port

START_TIMEOUT = 30.0


def baychat_command() -> list[str]:
    """The ``baychat`` entry point of the environment running the tests."""
    script = Path(sys.executable).parent / "baychat"
    if script.exists():
        return [str(script)]
    found = shutil.which("baychat")
    if found:
        return [found]
    return [sys.executable, "-c", "from server.cli import main; main()"]


class Service:
    """One process. ``port`` is set for processes that serve HTTP."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_path: Path,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Service:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            log.write(f"--- start {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to it never reaches the test runner
            )
        return self

    async def wait_http(self, path: str = "/healthz", timeout: float = START_TIMEOUT) -> None:
        """Until ``path`` answers 200. Fails at once if the process died."""
        if self.port is None:
            raise RuntimeError(f"{self.name} serves no HTTP")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(base_url=self.http_url, timeout=2.0) as http:
            while True:
                if not self.alive:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                try:
                    if (await http.get(path)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"{self.name}: {path} not 200 in {timeout}s")
                await asyncio.sleep(0.05)

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        await self.wait_http("/readyz", timeout)

    async def status(self, path: str) -> int | None:
        """The HTTP status of ``path`` now, None if nothing answers."""
        try:
            async with httpx.AsyncClient(base_url=self.http_url, timeout=2.0) as http:
                return (await http.get(path)).status_code
        except httpx.HTTPError:
            return None

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, like a crashed machine."""
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout``. The exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        return process.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """The processes of one test; all stopped on exit, their logs shown on failure."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.services: list[Service] = []

    def spawn(
        self, name: str, argv: list[str], env: Mapping[str, str], port: int | None = None
    ) -> Service:
        service = Service(name, argv, env, self.directory / f"{name}.log", port)
        self.services.append(service)
        return service.start()

    def gateway(self, name: str, env: Mapping[str, str], port: int | None = None) -> Service:
        port = port or free_port()
        argv = [*baychat_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
        return self.spawn(name, argv, env, port)

    def worker(self, name: str, env: Mapping[str, str], http_port: int | None = None) -> Service:
        """`baychat worker`; with ``http_port``, also its /healthz, /readyz and /metrics."""
        argv = [*baychat_command(), "worker"]
        if http_port is not None:
            argv += ["--http-port", str(http_port)]
        return self.spawn(name, argv, env, http_port)

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for service in self.services:
            service.signal(signal.SIGTERM)
        for service in self.services:
            await asyncio.to_thread(service.stop)
        if exc is not None:
            for service in self.services:
                print(f"\n===== {service.name} ({service.log_path}) =====\n{service.log_tail()}")
