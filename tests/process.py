"""Real ``baychat serve`` processes for tests that need the whole thing: the CLI's uvicorn
configuration, its logging, several gateways on one Redis."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.backends import free_port

BAYCHAT = str(Path(sys.executable).parent / "baychat")


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> dict[str, Any]:
    """Run one ``baychat`` command with ``env``; its stdout is one JSON object."""
    done = subprocess.run(
        [BAYCHAT, *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@dataclass
class ServeProcess:
    port: int
    data_dir: Path
    env: dict[str, str]
    output: Path
    process: subprocess.Popen[bytes]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def cli(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        return cli(self.env, *args, stdin=stdin)

    def logs(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.output.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def serve_env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAYCHAT_")}
    env.update({"BAYCHAT_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    env.update({f"BAYCHAT_{name.upper()}": value for name, value in settings.items()})
    return env


@contextlib.contextmanager
def serve_process(data_dir: Path, **settings: str) -> Iterator[ServeProcess]:
    """``baychat serve`` on a free port with ``BAYCHAT_<NAME>=value`` for each setting."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = serve_env(data_dir, **settings)
    port = free_port()
    output = data_dir / f"serve-{port}.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [BAYCHAT, "serve", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = ServeProcess(port, data_dir, env, output, process)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"baychat serve exited:\n{server.logs()}")
            try:
                if httpx.get(f"{server.http_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"baychat serve did not start:\n{server.logs()}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
