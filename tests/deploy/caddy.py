"""The repository's Caddyfile run as a local process: ``tls internal`` on localhost, on free
unprivileged ports, in front of whatever upstreams a test gives it. Only the environment
differs from production (docker-compose.yml); the file is the same.

Caddy's state (its internal CA, certificates) lives in a temporary directory through
``HOME``/``XDG_DATA_HOME``/``XDG_CONFIG_HOME``; tests trust that CA's root with an
``ssl.SSLContext`` and nothing is installed on the machine (``skip_install_trust``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.backends import free_port, unavailable

REPO = Path(__file__).resolve().parents[2]
CADDYFILE = REPO / "Caddyfile"
HOST = "localhost"


def caddy_binary() -> str:
    """The caddy executable, or a skip (a failure under BAYCHAT_REQUIRE_BACKENDS=1)."""
    binary = shutil.which("caddy")
    if binary is None:
        unavailable("caddy binary", "not on PATH; apt-get install caddy")
        raise AssertionError("unreachable")
    return binary


def edge_env(
    state: Path, upstreams: Sequence[str], https_port: int, http_port: int, admin_port: int
) -> dict[str, str]:
    """The environment that turns the production Caddyfile into a local test edge."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(state),
        "XDG_DATA_HOME": str(state / "data"),
        "XDG_CONFIG_HOME": str(state / "config"),
        "BAYCHAT_SITE_ADDRESS": HOST,
        "BAYCHAT_TLS_ISSUER": "internal",
        "BAYCHAT_UPSTREAMS": " ".join(upstreams),
        "BAYCHAT_HTTPS_PORT": str(https_port),
        "BAYCHAT_HTTP_PORT": str(http_port),
        "BAYCHAT_BIND": "127.0.0.1",
        "BAYCHAT_CADDY_ADMIN": f"127.0.0.1:{admin_port}",
    }


@dataclass
class Edge:
    """A running Caddy; ``ssl_context`` trusts its internal CA."""

    process: subprocess.Popen[bytes]
    state: Path
    https_port: int
    http_port: int
    admin_port: int
    log: Path

    @property
    def https_url(self) -> str:
        return f"https://{HOST}:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def wss_url(self) -> str:
        return f"wss://{HOST}:{self.https_port}/ws"

    @property
    def root_cert(self) -> Path:
        return self.state / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root_cert))

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.https_url, verify=self.ssl_context(), timeout=5)

    def upstreams(self) -> list[dict[str, object]]:
        """Caddy's view of its upstreams (admin API): address, requests, failures."""
        response = httpx.get(f"http://127.0.0.1:{self.admin_port}/reverse_proxy/upstreams")
        response.raise_for_status()
        found: list[dict[str, object]] = response.json()
        return found

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def handshake(edge: Edge, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection to Caddy's HTTPS port with SNI ``localhost`` (close it)."""
    raw = socket.create_connection(("127.0.0.1", edge.https_port), timeout=5)
    try:
        return context.wrap_socket(raw, server_hostname=HOST)
    except BaseException:
        raw.close()
        raise


def _wait_ready(edge: Edge, timeout: float = 20.0) -> None:
    """Until the internal CA exists and Caddy completes a verified TLS handshake. Nothing
    goes to the upstreams, which may run on the caller's (now blocked) event loop."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if edge.process.poll() is not None:
            raise RuntimeError(f"caddy exited ({edge.process.returncode}):\n{edge.logs()}")
        if edge.root_cert.exists():
            try:
                handshake(edge, edge.ssl_context()).close()
                return
            except (ssl.SSLError, OSError) as exc:
                last = exc
        time.sleep(0.05)
    raise RuntimeError(f"caddy not serving TLS after {timeout}s ({last}):\n{edge.logs()}")


@contextlib.contextmanager
def running_edge(
    upstreams: Sequence[str], state: Path, https_port: int | None = None
) -> Iterator[Edge]:
    """Caddy with the repository's Caddyfile in front of ``upstreams`` (host:port), on
    ``https_port`` if given (a gateway's allowed Origin names it)."""
    binary = caddy_binary()
    state.mkdir(parents=True, exist_ok=True)
    https_port = https_port or free_port()
    http_port, admin_port = free_port(), free_port()
    log = state / "caddy.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [binary, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
            env=edge_env(state, upstreams, https_port, http_port, admin_port),
            cwd=state,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    edge = Edge(process, state, https_port, http_port, admin_port, log)
    try:
        _wait_ready(edge)
        yield edge
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
