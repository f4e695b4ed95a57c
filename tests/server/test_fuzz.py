"""Property-based fuzzing of the WebSocket protocol against a real ``baychat serve``.

Hypothesis generates batches of frames — valid, near-valid (one mutation away from valid)
and garbage — and sends thousands of them over one real socket. After each batch a ping
with a fresh id marks the end; every reply up to its pong must be a documented server frame
(``protocol.frames.ServerFrame``), every error must carry a documented code and no internals,
every close must use a documented close code. Meanwhile a well-behaved client keeps chatting
on the same channel and must see every one of its messages acknowledged.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from protocol.codes import CloseCode, ErrorCode
from protocol.frames import ErrorOut, Pong, ServerFrame
from tests.process import ServeProcess, serve_process

PASSWORD = "fuzzing password 1234"
EXAMPLES = 600  # batches of 1-8 frames: ~2,400 frames and 600 pings
_server_frames = msgspec.json.Decoder(ServerFrame)
_error_codes = {code.value for code in ErrorCode} - {ErrorCode.INTERNAL.value}
# documented close codes, plus the RFC's "normal" and "message too big" (frame size limit);
# TRY_AGAIN is what an internal error would close with: never expected here.
_close_codes = ({int(code) for code in CloseCode} - {int(CloseCode.TRY_AGAIN)}) | {1000, 1009}
_LEAKS = ("Traceback", "Error:", "Exception", ".py", "line ", "msgspec", "starlette")


@dataclass
class Account:
    access: str


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServeProcess, Account, Account]]:
    relaxed = "100000/minute"
    with serve_process(
        tmp_path_factory.mktemp("fuzz"),
        rate_ws_frames=relaxed,
        rate_publish_connection=relaxed,
        rate_publish_user=relaxed,
        rate_ws_connect=relaxed,
        max_connections_per_user="1000",
    ) as server:
        server.cli("tenant", "create", "fuzz")
        accounts = []
        for email in ("fuzzer@example.com", "good@example.com"):
            server.cli("user", "create", "fuzz", email, "--password-stdin", stdin=PASSWORD)
            tokens = httpx.post(
                f"{server.http_url}/api/v1/auth/login",
                json={"tenant": "fuzz", "email": email, "password": PASSWORD},
            ).json()
            accounts.append(Account(tokens["access_token"]))
        for name in ("general", "other"):
            created = httpx.post(
                f"{server.http_url}/api/v1/channels",
                json={"name": name},
                headers={"Authorization": f"Bearer {accounts[1].access}"},
            )
            assert created.status_code == 201
        yield server, accounts[0], accounts[1]


def check_reply(raw: str | bytes) -> Any:
    """A reply must be one of the documented server frames, with no internals in it."""
    assert isinstance(raw, str), "the server sends text frames only"
    frame = _server_frames.decode(raw)
    if isinstance(frame, ErrorOut):
        assert frame.code in _error_codes, frame
        assert not any(leak in frame.message for leak in _LEAKS), frame
        assert (frame.retry_after is not None) == (frame.code == "rate_limited"), frame
    return frame


def _open(server: ServeProcess, token: str, stack: contextlib.ExitStack) -> ClientConnection:
    ws = stack.enter_context(
        connect(
            server.ws_url,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=10,
            close_timeout=1,
            max_size=None,
        )
    )
    assert check_reply(ws.recv(10)).__class__.__name__ == "Ready"
    return ws


# -- strategies ------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
channels = st.sampled_from(["general", "other", "missing", "a", "general2"]) | st.from_regex(
    r"[a-z0-9][a-z0-9_.\-]{0,20}", fullmatch=True
)
request_ids = st.one_of(st.none(), st.text(max_size=64), st.integers(0, 2**53))
seqs = st.integers(0, 200)


def valid_frames(token: str) -> st.SearchStrategy[dict[str, Any]]:
    def frame(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        optional_id = st.fixed_dictionaries({}, optional={"id": request_ids})
        return st.tuples(st.fixed_dictionaries(fields), optional_id).map(
            lambda parts: {"type": kind, **parts[0], **parts[1]}
        )

    return st.one_of(
        frame("ping"),
        frame("subscribe", channel=channels),
        frame("subscribe", channel=channels, since=seqs),
        frame("unsubscribe", channel=channels),
        frame("publish", channel=channels, body=st.text(max_size=200)),
        frame(
            "publish",
            channel=channels,
            body=st.text(max_size=50),
            client_msg_id=st.text(min_size=1, max_size=64),
        ),
        frame("history", channel=channels, before=seqs, limit=st.integers(1, 200)),
        frame("history", channel=channels),
        frame("typing", channel=channels),
        frame("auth", token=st.just(token)),
        frame("refresh", token=st.just(token)),
    )


wrong_values = st.one_of(
    json_values,
    st.integers(min_value=2**53 + 1, max_value=2**80),
    st.integers(max_value=-1),
    st.text(min_size=65, max_size=300),
    st.just("general\n"),
    st.just("x" * 20_000),  # a body above max_body_bytes, a frame below max_frame_bytes
)


@st.composite
def near_valid(draw: st.DrawFn, token: str) -> dict[str, Any]:
    frame = dict(draw(valid_frames(token)))
    mutation = draw(st.sampled_from(["drop", "add", "retype", "tag"]))
    keys = sorted(frame)
    if mutation == "drop":
        frame.pop(draw(st.sampled_from(keys)))
    elif mutation == "add":
        frame[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    elif mutation == "retype":
        frame[draw(st.sampled_from(keys))] = draw(wrong_values)
    else:
        frame["type"] = draw(
            st.sampled_from(["PING", "Publish", "", "message", "error", "ready"])
            | st.text(max_size=10)
        )
    return frame


def garbage() -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        json_values.map(json.dumps),
        st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
        st.integers(1, 3000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
        st.sampled_from(
            ['{"type": "ping", "id": 1e999}', '{"type": NaN}', "\ufeff{}", '{"type":"ping"}{}']
        ),
    )


# Above max_frame_bytes: the server closes with 1009. It ends a batch: anything sent after
# it would meet a closed socket, and TCP may then reset the connection before the client
# has read the close frame.
OVERSIZED = "x" * 70_000


def batches(token: str) -> st.SearchStrategy[list[str | bytes]]:
    as_text = st.one_of(valid_frames(token), near_valid(token)).map(json.dumps)
    frames = st.lists(st.one_of(as_text, as_text, garbage()), min_size=1, max_size=8)
    return st.tuples(frames, st.integers(0, 19)).map(
        lambda parts: [*parts[0], OVERSIZED] if parts[1] == 0 else parts[0]
    )


def _close_code(ws: ClientConnection) -> int | None:
    """The code the server closed with (a send may fail before the close frame is read)."""
    deadline = time.monotonic() + 5
    while ws.protocol.close_rcvd is None and time.monotonic() < deadline:
        time.sleep(0.01)
    received = ws.protocol.close_rcvd
    return received.code if received is not None else None


# -- the well-behaved client -----------------------------------------------------------------


@dataclass
class Chatter:
    server: ServeProcess
    token: str
    stop: threading.Event = field(default_factory=threading.Event)
    acked: int = 0
    failures: list[str] = field(default_factory=list)

    def run(self) -> None:
        try:
            with contextlib.ExitStack() as stack:
                ws = _open(self.server, self.token, stack)
                ws.send(json.dumps({"type": "subscribe", "channel": "general", "id": "s"}))
                for n in itertools.count():
                    if self.stop.is_set():
                        return
                    ws.send(
                        json.dumps(
                            {"type": "publish", "channel": "general", "body": f"good {n}", "id": n}
                        )
                    )
                    deadline = time.monotonic() + 10
                    while True:
                        frame = check_reply(ws.recv(max(0.1, deadline - time.monotonic())))
                        if getattr(frame, "id", None) == n:
                            assert frame.__class__.__name__ == "Ack", frame
                            self.acked += 1
                            break
                    time.sleep(0.02)
        except Exception as exc:  # reported by the test
            self.failures.append(repr(exc))


# -- the test ---------------------------------------------------------------------------------


# A failing example may hold a 70 kB frame: let hypothesis print it without a warning.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_fuzzed_frames_get_documented_replies_and_never_disturb_other_clients(
    served: tuple[ServeProcess, Account, Account],
) -> None:
    server, fuzzer, good = served
    chatter = Chatter(server, good.access)
    thread = threading.Thread(target=chatter.run, daemon=True)
    thread.start()
    sent = itertools.count()
    pings = itertools.count()
    state: dict[str, ClientConnection | None] = {"ws": None}
    stack = contextlib.ExitStack()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batches(fuzzer.access))
    def fuzz(batch: list[str | bytes]) -> None:
        ws = state["ws"] or _open(server, fuzzer.access, stack)
        state["ws"] = ws
        marker = f"end-{next(pings)}"
        try:
            for raw in batch:
                ws.send(raw)
                next(sent)
            if batch[-1] is not OVERSIZED:
                ws.send(json.dumps({"type": "ping", "id": marker}))
            while True:
                frame = check_reply(ws.recv(10))
                if isinstance(frame, Pong) and frame.id == marker:
                    return
        except ConnectionClosed:
            state["ws"] = None
            code = _close_code(ws)
            assert code in _close_codes, f"closed with {code}"

    try:
        fuzz()
    finally:
        chatter.stop.set()
        thread.join(15)
        stack.close()

    total = next(sent)
    print(f"fuzzer sent {total} frames; the good client got {chatter.acked} acks")
    assert total >= 2000, "the fuzzer should have sent thousands of frames"
    assert chatter.failures == []
    assert chatter.acked >= 10
    assert httpx.get(f"{server.http_url}/healthz").status_code == 200
    logs = server.logs()
    assert "Traceback" not in logs
    assert '"ws.error"' not in logs
